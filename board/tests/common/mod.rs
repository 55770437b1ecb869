//! A minimal flattened-device-tree writer, so tests can build trees `dtc` would refuse or
//! that would be tedious as fixtures (very deep, very wide, hostile).

#![allow(dead_code, clippy::cast_possible_truncation, clippy::unwrap_used)]

/// Builds a DTB token by token.
#[derive(Default)]
pub(crate) struct FdtBuilder {
    structure: Vec<u8>,
    strings: Vec<u8>,
}

impl FdtBuilder {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn cell(&mut self, value: u32) {
        self.structure.extend_from_slice(&value.to_be_bytes());
    }

    fn pad(&mut self) {
        while !self.structure.len().is_multiple_of(4) {
            self.structure.push(0);
        }
    }

    /// `FDT_BEGIN_NODE name`.
    pub(crate) fn begin(&mut self, name: &str) -> &mut Self {
        self.cell(1);
        self.structure.extend_from_slice(name.as_bytes());
        self.structure.push(0);
        self.pad();
        self
    }

    /// `FDT_END_NODE`.
    pub(crate) fn end(&mut self) -> &mut Self {
        self.cell(2);
        self
    }

    /// `FDT_PROP name value`.
    pub(crate) fn prop(&mut self, name: &str, value: &[u8]) -> &mut Self {
        let mut key = name.as_bytes().to_vec();
        key.push(0);
        let offset = match self
            .strings
            .windows(key.len())
            .position(|window| window == key)
        {
            Some(offset) => offset,
            None => {
                self.strings.extend_from_slice(&key);
                self.strings.len() - key.len()
            }
        };
        self.cell(3);
        self.cell(value.len() as u32);
        self.cell(offset as u32);
        self.structure.extend_from_slice(value);
        self.pad();
        self
    }

    pub(crate) fn cells(&mut self, name: &str, cells: &[u32]) -> &mut Self {
        let bytes: Vec<u8> = cells.iter().flat_map(|c| c.to_be_bytes()).collect();
        self.prop(name, &bytes)
    }

    pub(crate) fn strings(&mut self, name: &str, values: &[&str]) -> &mut Self {
        let mut bytes = Vec::new();
        for value in values {
            bytes.extend_from_slice(value.as_bytes());
            bytes.push(0);
        }
        self.prop(name, &bytes)
    }

    /// The blob: header, an empty memory reservation map, the structure and strings.
    pub(crate) fn finish(&self) -> Vec<u8> {
        let mut structure = self.structure.clone();
        structure.extend_from_slice(&9u32.to_be_bytes());
        let off_struct = 40 + 16;
        let off_strings = off_struct + structure.len();
        let total = off_strings + self.strings.len();
        let header = [
            0xd00d_feed,
            total as u32,
            off_struct as u32,
            off_strings as u32,
            40,
            17,
            16,
            0,
            self.strings.len() as u32,
            structure.len() as u32,
        ];
        let mut blob: Vec<u8> = header.iter().flat_map(|c: &u32| c.to_be_bytes()).collect();
        blob.extend_from_slice(&[0; 16]);
        blob.extend_from_slice(&structure);
        blob.extend_from_slice(&self.strings);
        blob
    }
}

/// A small QEMU-virt-like tree: root with RAM, a GIC (phandle 1), an SMMU (phandle 2),
/// a PCIe host mapping through it and a UART. `extra` adds nodes under the root.
pub(crate) fn tree(extra: impl FnOnce(&mut FdtBuilder)) -> Vec<u8> {
    let mut fdt = FdtBuilder::new();
    fdt.begin("")
        .cells("#address-cells", &[2])
        .cells("#size-cells", &[2])
        .cells("interrupt-parent", &[1])
        .strings("compatible", &["linux,dummy-virt"]);
    fdt.begin("memory@40000000")
        .strings("device_type", &["memory"])
        .cells("reg", &[0, 0x4000_0000, 0, 0x4000_0000])
        .end();
    fdt.begin("intc@8000000")
        .strings("compatible", &["arm,gic-v3"])
        .cells("#interrupt-cells", &[3])
        .cells(
            "reg",
            &[0, 0x0800_0000, 0, 0x1_0000, 0, 0x080a_0000, 0, 0xf6_0000],
        )
        .cells("phandle", &[1])
        .end();
    fdt.begin("smmuv3@9050000")
        .strings("compatible", &["arm,smmu-v3"])
        .cells("reg", &[0, 0x0905_0000, 0, 0x2_0000])
        .cells("interrupts", &[0, 74, 1, 0, 75, 1, 0, 76, 1, 0, 77, 1])
        .strings(
            "interrupt-names",
            &["eventq", "priq", "cmdq-sync", "gerror"],
        )
        .cells("#iommu-cells", &[1])
        .cells("phandle", &[2])
        .end();
    extra(&mut fdt);
    fdt.end();
    fdt.finish()
}
