//! Every node of the tree that may describe a device, with its full path, its `compatible`
//! list and its registers in the CPU's physical address space.
//!
//! This is what the allow-list ([`crate::guest_devices`]) judges: a node it does not grant is
//! withheld from the guest. The walk is as bounded as [`super::discover`]'s (depth, node count),
//! skips what is not a device (`/cpus`, `/chosen`, `/aliases`, memory nodes) and never descends
//! into a PCI host bridge, whose children have PCI addresses, not CPU ones.

use dtoolkit::Node;
use dtoolkit::fdt::{Fdt, FdtNode};
use heapless::{String, Vec};
use smmu::PhysRange;

use super::cells::{Ancestry, Cells, MAX_CELLS};
use super::{
    BlobError, DiscoveryError, MAX_DEPTH, MAX_NODES, bus, children_interrupt_parent,
    device_type_is, is_enabled, property, u32_property,
};

/// The longest node path [`for_each_device`] builds.
pub const MAX_PATH_LEN: usize = 160;
/// The most `reg` entries of one device node that are reported.
pub const MAX_DEVICE_REGISTERS: usize = 8;

/// One device node.
#[derive(Debug, Clone, Copy)]
pub struct DeviceNode<'a> {
    /// The full path, such as `/intc@8000000/its@8080000`.
    pub path: &'a str,
    /// The `compatible` strings, NUL-separated as in the blob (empty when absent).
    pub compatible: &'a [u8],
    /// Whether the node has a `reg` property (a bus or a binding node has none).
    pub has_reg: bool,
    /// Every `reg` entry, translated to the CPU's physical address space; empty when there is
    /// no `reg`, or some entry cannot be translated (a bus without `ranges`) or is malformed.
    pub registers: &'a [PhysRange],
    /// `status` is absent, `"okay"` or `"ok"`.
    pub enabled: bool,
}

impl DeviceNode<'_> {
    /// The `compatible` strings, most specific first (entries that are not UTF-8 are skipped).
    pub fn compatibles(&self) -> impl Iterator<Item = &str> {
        self.compatible
            .split(|&byte| byte == 0)
            .filter(|item| !item.is_empty())
            .filter_map(|item| core::str::from_utf8(item).ok())
    }

    /// Whether one of the `compatible` strings is `name`.
    #[must_use]
    pub fn is_compatible(&self, name: &str) -> bool {
        self.compatibles().any(|item| item == name)
    }
}

/// What to do after visiting a device node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Descend {
    /// Visit the devices below it too (it is kept).
    Yes,
    /// Leave its subtree alone (it is withheld whole).
    No,
}

/// Calls `visit` for every node of `dtb` that may describe a device (all but `/cpus`,
/// `/chosen`, `/aliases`, `/__symbols__` and memory nodes, and a PCI host's children), parents
/// before children, in tree order.
///
/// # Errors
///
/// [`DiscoveryError`] if the blob is malformed, nests deeper than [`MAX_DEPTH`], has more
/// than [`MAX_NODES`] nodes, or a path is longer than [`MAX_PATH_LEN`].
pub fn for_each_device(
    dtb: &[u8],
    mut visit: impl FnMut(&DeviceNode<'_>) -> Descend,
) -> Result<(), DiscoveryError> {
    let fdt = Fdt::new(dtb).map_err(|error| DiscoveryError::Blob(BlobError::from(&error.kind)))?;
    let root = fdt.root();
    let own_interrupt_parent = u32_property(&root, "interrupt-parent").ok().flatten();
    let frame = Ancestry {
        bus: bus(&root),
        interrupt_parent: children_interrupt_parent(&root, own_interrupt_parent),
        parent: None,
    };
    let mut walk = DeviceWalk {
        path: String::new(),
        nodes: 0,
    };
    walk.children(&root, &frame, 1, &mut visit)
}

struct DeviceWalk {
    path: String<MAX_PATH_LEN>,
    nodes: u32,
}

impl DeviceWalk {
    fn children<'dtb>(
        &mut self,
        node: &FdtNode<'dtb>,
        frame: &Ancestry<'_, 'dtb>,
        depth: u32,
        visit: &mut impl FnMut(&DeviceNode<'_>) -> Descend,
    ) -> Result<(), DiscoveryError> {
        if depth > MAX_DEPTH {
            return Err(DiscoveryError::TooDeep);
        }
        for child in node.children() {
            self.nodes += 1;
            if self.nodes > MAX_NODES {
                return Err(DiscoveryError::TooManyNodes);
            }
            let name = child.name();
            let not_a_device = depth == 1
                && (matches!(name, "chosen" | "aliases" | "__symbols__")
                    || child.name_without_address() == "cpus"
                    || device_type_is(&child, "memory"));
            if not_a_device {
                continue;
            }
            let parent_length = self.path.len();
            if self.path.push('/').is_err() || self.path.push_str(name).is_err() {
                return Err(DiscoveryError::PathTooLong);
            }
            let reg = property(&child, "reg");
            let registers = reg.map(|reg| registers(reg, frame)).unwrap_or_default();
            let descend = visit(&DeviceNode {
                path: &self.path,
                compatible: property(&child, "compatible").unwrap_or(&[]),
                has_reg: reg.is_some(),
                registers: &registers,
                enabled: is_enabled(&child),
            });
            // A PCI host's children are functions with PCI addresses: never CPU devices.
            if descend == Descend::Yes && !device_type_is(&child, "pci") {
                let child_frame = Ancestry {
                    bus: bus(&child),
                    interrupt_parent: None,
                    parent: Some(frame),
                };
                self.children(&child, &child_frame, depth + 1, visit)?;
            }
            self.path.truncate(parent_length);
        }
        Ok(())
    }
}

/// Every entry of `reg`, translated; empty if any is malformed or untranslatable (the caller
/// then cannot place the device, and withholds it).
fn registers(reg: &[u8], frame: &Ancestry<'_, '_>) -> Vec<PhysRange, MAX_DEVICE_REGISTERS> {
    let (address_cells, size_cells) = (frame.bus.address_cells, frame.bus.size_cells);
    let mut out = Vec::new();
    if address_cells == 0 || address_cells > MAX_CELLS || size_cells > MAX_CELLS || reg.is_empty() {
        return out;
    }
    let mut cells = Cells::new(reg);
    // Each entry consumes at least one cell, so this ends with the property.
    while !cells.is_empty() {
        let entry = cells.number(address_cells).zip(cells.number(size_cells));
        let translated = entry.and_then(|(address, size)| {
            frame
                .translate(address, size)
                .map(|base| PhysRange::new(base, size))
        });
        match translated {
            Some(range) if out.push(range).is_ok() => {}
            _ => {
                out.clear();
                return out;
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::vec::Vec as StdVec;

    fn devices(dtb: &[u8]) -> StdVec<(std::string::String, StdVec<PhysRange>)> {
        let mut found = StdVec::new();
        for_each_device(dtb, |node| {
            if node.has_reg {
                found.push((node.path.to_string(), node.registers.to_vec()));
            }
            Descend::Yes
        })
        .unwrap();
        found
    }

    #[test]
    fn qemu_virt_devices_are_listed_with_cpu_addresses_and_full_paths() {
        let found = devices(include_bytes!("../../testdata/qemu-virt.dtb"));
        let find = |path: &str| {
            found
                .iter()
                .find(|(p, _)| p == path)
                .map(|(_, r)| r.clone())
        };
        assert_eq!(
            find("/pl011@9000000"),
            Some(vec![PhysRange::new(0x0900_0000, 0x1000)])
        );
        assert_eq!(
            find("/intc@8000000/its@8080000"),
            Some(vec![PhysRange::new(0x0808_0000, 0x2_0000)])
        );
        assert_eq!(
            find("/intc@8000000"),
            Some(vec![
                PhysRange::new(0x0800_0000, 0x1_0000),
                PhysRange::new(0x080a_0000, 0xf6_0000)
            ])
        );
        assert_eq!(
            find("/pcie@10000000"),
            Some(vec![PhysRange::new(0x40_1000_0000, 0x1000_0000)])
        );
        // Not devices: memory, CPUs, /chosen.
        assert!(find("/memory@40000000").is_none());
        assert!(!found.iter().any(|(p, _)| p.starts_with("/cpus")));
        assert_eq!(
            found
                .iter()
                .filter(|(p, _)| p.starts_with("/virtio_mmio@"))
                .count(),
            32
        );
    }

    #[test]
    fn fvp_devices_behind_nested_buses_are_translated() {
        let found = devices(include_bytes!("../../testdata/fvp-base-revc.dtb"));
        let uart = found
            .iter()
            .find(|(p, _)| p.ends_with("/serial@90000"))
            .unwrap();
        assert_eq!(uart.1, vec![PhysRange::new(0x1c09_0000, 0x1000)]);
        assert!(uart.0.starts_with("/bus@8000000/motherboard-bus@8000000/"));
    }

    #[test]
    fn a_withheld_node_hides_its_subtree() {
        let mut paths = StdVec::new();
        for_each_device(include_bytes!("../../testdata/qemu-virt.dtb"), |node| {
            paths.push(node.path.to_string());
            if node.path == "/intc@8000000" {
                Descend::No
            } else {
                Descend::Yes
            }
        })
        .unwrap();
        assert!(paths.iter().any(|p| p == "/intc@8000000"));
        assert!(!paths.iter().any(|p| p.starts_with("/intc@8000000/")));
    }
}
