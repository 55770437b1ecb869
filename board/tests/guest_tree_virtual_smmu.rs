//! The guest's device tree describes the virtual SMMU: an `arm,smmu-v3` node at an IPA that
//! traps, its interrupts, and the PCIe host bridge's `iommu-map` pointing at it.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::collections::BTreeSet;

use board::guest_tree::MAX_VIRTUAL_SMMU_INTERRUPTS;
use board::{
    GuestTreeEdits, GuestTreeError, Interrupt, IommuMapEntry, IpaRange, QEMU_VIRT,
    SmmuInterruptName, SmmuInterrupts, StreamIdRange, Trigger, VirtualSmmuNode, build_guest_tree,
    discover, guest_devices,
};
use dtoolkit::fdt::{Fdt, FdtNode};
use dtoolkit::{Node, Property};
use proptest::prelude::*;
use smmu::{PhysRange, StreamId};

const QEMU_VIRT_DTB: &[u8] = include_bytes!("../testdata/qemu-virt.dtb");
const FVP_DTB: &[u8] = include_bytes!("../testdata/fvp-base-revc.dtb");

/// Where the physical SMMU was: withheld from the guest's stage 2, so an access traps.
const VSMMU_IPA: u64 = 0x0905_0000;
/// `nested::config::REGISTER_WINDOW_SIZE`.
const VSMMU_WINDOW: u64 = 0x2_0000;
const GUEST_RAM: [IpaRange; 1] = [IpaRange::new(0x4200_0000, 0x3e00_0000)];

const fn edge(spi: u32) -> Interrupt {
    Interrupt::spi(spi, Trigger::EdgeRising)
}

const INTERRUPTS: [(SmmuInterruptName, Interrupt); 4] = [
    (SmmuInterruptName::EventQueue, edge(74)),
    (SmmuInterruptName::PriQueue, edge(75)),
    (SmmuInterruptName::CommandSync, edge(76)),
    (SmmuInterruptName::GlobalError, edge(77)),
];
const IDENTITY: [IommuMapEntry; 1] = [IommuMapEntry::IDENTITY_16_BITS];

const VSMMU: VirtualSmmuNode<'static> = VirtualSmmuNode {
    registers: IpaRange::new(VSMMU_IPA, VSMMU_WINDOW),
    interrupts: &INTERRUPTS,
    iommu_map: &IDENTITY,
    iommu_map_mask: None,
};

fn build(source: &[u8], edits: &GuestTreeEdits<'_>) -> Result<Vec<u8>, GuestTreeError> {
    let mut out = vec![0; source.len() + 4096];
    let length = build_guest_tree(source, edits, &mut out)?;
    out.truncate(length);
    Ok(out)
}

/// The allow-list plan's removals for `source` on QEMU virt; on FVP, only the physical SMMU
/// (FVP's plan withholds the GIC node today, whose GICv2 windows no entry covers, and a
/// guest tree without a GIC has nothing for the virtual SMMU's interrupts).
fn plan_removals(source: &[u8]) -> Vec<String> {
    if source == FVP_DTB {
        return vec!["/iommu@2b400000".to_owned()];
    }
    let plan = guest_devices::plan(&QEMU_VIRT, source).unwrap();
    plan.removed_paths()
        .iter()
        .map(|path| (*path).to_owned())
        .collect()
}

/// Builds `source` with the plan's removals, and the virtual SMMU if given.
fn build_with(source: &[u8], smmu: Option<&VirtualSmmuNode<'_>>) -> Vec<u8> {
    let removals = plan_removals(source);
    let paths: Vec<&str> = removals.iter().map(String::as_str).collect();
    let mut edits = GuestTreeEdits::new(&GUEST_RAM).remove(&paths);
    if let Some(smmu) = smmu {
        edits = edits.virtual_smmu(smmu);
    }
    build(source, &edits).unwrap()
}

fn cells(values: &[u32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|value| value.to_be_bytes())
        .collect()
}

fn property<'a>(fdt: &Fdt<'a>, path: &str, name: &str) -> Option<&'a [u8]> {
    fdt.find_node(path)?
        .property(name)
        .and_then(|property| property.value_as::<&'a [u8]>().ok())
}

/// Every node in tree order: its path and its properties in order.
type Flat = Vec<(String, Vec<(String, Vec<u8>)>)>;

fn flatten(blob: &[u8]) -> Flat {
    fn walk(node: &FdtNode<'_>, path: &str, out: &mut Flat) {
        let properties = node
            .properties()
            .map(|p| (p.name().to_owned(), p.value().to_vec()))
            .collect();
        out.push((path.to_owned(), properties));
        for child in node.children() {
            walk(&child, &format!("{path}/{}", child.name()), out);
        }
    }
    let fdt = Fdt::new(blob).unwrap();
    let mut out = Vec::new();
    walk(&fdt.root(), "", &mut out);
    out
}

/// Every `phandle` and `linux,phandle` value, one per property.
fn phandles(blob: &[u8]) -> Vec<u32> {
    flatten(blob)
        .into_iter()
        .flat_map(|(_, properties)| properties)
        .filter(|(name, _)| name == "phandle" || name == "linux,phandle")
        .map(|(_, value)| u32::from_be_bytes(value.try_into().unwrap()))
        .collect()
}

fn phandle_of(blob: &[u8], path: &str) -> u32 {
    let fdt = Fdt::new(blob).unwrap();
    u32::from_be_bytes(property(&fdt, path, "phandle").unwrap().try_into().unwrap())
}

#[test]
fn discovery_finds_one_smmu_at_the_trapped_ipa_with_its_interrupts_and_the_host_maps_to_it() {
    let guest = build_with(QEMU_VIRT_DTB, Some(&VSMMU));
    let found = discover(&guest).unwrap();

    let smmu = found.smmu.unwrap();
    assert_eq!(smmu.registers, PhysRange::new(VSMMU_IPA, VSMMU_WINDOW));
    assert_eq!(
        smmu.interrupts,
        SmmuInterrupts {
            eventq: Some(edge(74)),
            priq: Some(edge(75)),
            cmdq_sync: Some(edge(76)),
            gerror: Some(edge(77)),
            combined: None,
        }
    );
    let pcie = found.pcie.as_ref().unwrap();
    assert_eq!(pcie.iommu_map.as_slice(), IDENTITY);
    assert_eq!(pcie.iommu_map_mask, u32::MAX);
    assert_eq!(
        pcie.stream_id_range(),
        Ok(StreamIdRange {
            first: StreamId(0),
            last: StreamId(0xffff)
        })
    );

    // What discovery does not read, and Linux needs.
    let fdt = Fdt::new(&guest).unwrap();
    let node = "/smmuv3@9050000";
    let smmus = flatten(&guest)
        .iter()
        .filter(|(_, properties)| {
            properties
                .iter()
                .any(|(name, value)| name == "compatible" && value.starts_with(b"arm,smmu-v3\0"))
        })
        .count();
    assert_eq!(smmus, 1);
    assert_eq!(
        property(&fdt, node, "compatible"),
        Some(&b"arm,smmu-v3\0"[..])
    );
    assert_eq!(property(&fdt, node, "#iommu-cells"), Some(&cells(&[1])[..]));
    assert_eq!(property(&fdt, node, "dma-coherent"), Some(&[][..]));
    // The GIC's phandle, named explicitly rather than inherited from the root.
    let gic = phandle_of(QEMU_VIRT_DTB, "/intc@8000000");
    assert_eq!(
        property(&fdt, node, "interrupt-parent"),
        Some(&cells(&[gic])[..])
    );
    let smmu_phandle = phandle_of(&guest, node);
    assert_eq!(
        property(&fdt, "/pcie@10000000", "iommu-map"),
        Some(&cells(&[0, smmu_phandle, 0, 0x1_0000])[..])
    );
    assert_eq!(property(&fdt, "/pcie@10000000", "iommu-map-mask"), None);
}

#[test]
fn dtc_reads_the_virtual_smmu_node_without_a_warning() {
    let guest = build_with(QEMU_VIRT_DTB, Some(&VSMMU));
    let dir = std::env::temp_dir().join(format!("board-vsmmu-tree-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dtb = dir.join("guest.dtb");
    std::fs::write(&dtb, &guest).unwrap();
    let output = std::process::Command::new("dtc")
        .args(["-I", "dtb", "-O", "dts"])
        .arg(&dtb)
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let Ok(output) = output else {
        eprintln!("dtc is not on PATH: skipping the dtc check");
        return;
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "dtc refused the tree: {stderr}");
    assert!(stderr.is_empty(), "dtc warned: {stderr}");
    let dts = String::from_utf8(output.stdout).unwrap();
    let expected = "
\tsmmuv3@9050000 {
\t\tcompatible = \"arm,smmu-v3\";
\t\treg = <0x00 0x9050000 0x00 0x20000>;
\t\tinterrupt-parent = <0x8003>;
\t\tinterrupts = <0x00 0x4a 0x01 0x00 0x4b 0x01 0x00 0x4c 0x01 0x00 0x4d 0x01>;
\t\tinterrupt-names = \"eventq\\0priq\\0cmdq-sync\\0gerror\";
\t\t#iommu-cells = <0x01>;
\t\tdma-coherent;
\t\tphandle = <0x8007>;
\t};
";
    assert!(dts.contains(expected), "{dts}");
    assert!(
        dts.contains("\t\tiommu-map = <0x00 0x8007 0x00 0x10000>;\n"),
        "{dts}"
    );
}

#[test]
fn the_new_phandle_names_no_node_of_the_source() {
    // QEMU virt (the node replaces the physical SMMU's), FVP (it is added at the end).
    let fvp_smmu = VirtualSmmuNode {
        registers: IpaRange::new(0x2b40_0000, VSMMU_WINDOW),
        ..VSMMU
    };
    for (source, smmu, path) in [
        (QEMU_VIRT_DTB, &VSMMU, "/smmuv3@9050000"),
        (FVP_DTB, &fvp_smmu, "/smmuv3@2b400000"),
    ] {
        let guest = build_with(source, Some(smmu));
        let new = phandle_of(&guest, path);
        let old = phandles(source);
        assert_eq!(new, old.iter().max().unwrap() + 1, "{path}");
        let all = phandles(&guest);
        let unique: BTreeSet<_> = all.iter().collect();
        assert_eq!(unique.len(), all.len(), "{path}: {all:x?}");
    }
    // The physical SMMU it replaces (not listed for removal) holds the highest phandle: its
    // number is not reused, and what named it is dropped as dangling.
    let source = common::tree(|fdt| {
        fdt.begin("pcie@10000000")
            .strings("compatible", &["pci-host-ecam-generic"])
            .strings("device_type", &["pci"])
            .cells("iommu-map", &[0, 2, 0, 0x1_0000])
            .end();
        fdt.begin("dma@1000")
            .cells("iommus", &[2, 0x10])
            .cells("reg", &[0, 0x1000, 0, 0x1000])
            .end();
    });
    assert_eq!(phandles(&source), [1, 2]);
    let edits = GuestTreeEdits::new(&GUEST_RAM).virtual_smmu(&VSMMU);
    let guest = build(&source, &edits).unwrap();
    assert_eq!(phandle_of(&guest, "/smmuv3@9050000"), 3);
    assert_eq!(phandles(&guest), [1, 3]);
    let fdt = Fdt::new(&guest).unwrap();
    assert_eq!(property(&fdt, "/dma@1000", "iommus"), None);
    assert!(property(&fdt, "/dma@1000", "reg").is_some());
}

#[test]
fn everything_but_the_new_node_and_the_host_bridges_iommu_map_is_unchanged() {
    let without = build_with(QEMU_VIRT_DTB, None);
    let with = build_with(QEMU_VIRT_DTB, Some(&VSMMU));
    let without = flatten(&without);
    assert!(!without.iter().any(|(_, properties)| {
        properties
            .iter()
            .any(|(name, value)| name == "compatible" && value.starts_with(b"arm,smmu-v3"))
    }));
    let mut with = flatten(&with);
    let before = with.len();
    with.retain(|(path, _)| path != "/smmuv3@9050000");
    assert_eq!(with.len(), before - 1);
    for (path, properties) in &mut with {
        if path == "/pcie@10000000" {
            let before = properties.len();
            properties.retain(|(name, _)| name != "iommu-map");
            assert_eq!(properties.len(), before - 1);
        }
    }
    assert_eq!(with.len(), without.len());
    for (with, without) in with.iter().zip(&without) {
        assert_eq!(with, without);
    }
}

#[test]
fn the_node_takes_the_replaced_nodes_place_or_ends_the_roots_children() {
    let children = |blob: &[u8]| -> Vec<String> {
        Fdt::new(blob)
            .unwrap()
            .root()
            .children()
            .map(|child| child.name().to_owned())
            .collect()
    };
    let source = children(QEMU_VIRT_DTB);
    let guest = children(&build_with(QEMU_VIRT_DTB, Some(&VSMMU)));
    let position = |names: &[String], name: &str| names.iter().position(|n| n == name);
    // The nodes between the physical SMMU and the host bridge are all kept: the new node
    // sits right before the host bridge, as the physical one did.
    assert_eq!(
        position(&source, "smmuv3@9050000").unwrap() + 1,
        position(&source, "pcie@10000000").unwrap()
    );
    assert_eq!(
        position(&guest, "smmuv3@9050000").unwrap() + 1,
        position(&guest, "pcie@10000000").unwrap()
    );
    // Nothing to replace: after every child of the source, before a /chosen created.
    let source = common::tree(|_| {});
    let smmu = VirtualSmmuNode {
        registers: IpaRange::new(0x0906_0000, VSMMU_WINDOW),
        iommu_map: &[],
        ..VSMMU
    };
    let guest = build(
        &source,
        &GuestTreeEdits::new(&GUEST_RAM).virtual_smmu(&smmu),
    )
    .unwrap();
    assert_eq!(
        children(&guest),
        [
            "memory@42000000",
            "intc@8000000",
            "smmuv3@9050000",
            "smmuv3@9060000",
            "chosen"
        ]
    );
}

#[test]
fn building_from_a_built_tree_with_the_virtual_smmu_gives_the_same_bytes() {
    let fvp_smmu = VirtualSmmuNode {
        registers: IpaRange::new(0x2b40_0000, VSMMU_WINDOW),
        ..VSMMU
    };
    let masked = VirtualSmmuNode {
        iommu_map_mask: Some(0xffff),
        ..VSMMU
    };
    let unmapped = VirtualSmmuNode {
        iommu_map: &[],
        ..VSMMU
    };
    let elsewhere = VirtualSmmuNode {
        registers: IpaRange::new(0x0906_0000, VSMMU_WINDOW),
        ..VSMMU
    };
    for (source, smmu) in [
        (QEMU_VIRT_DTB, &VSMMU),
        (QEMU_VIRT_DTB, &masked),
        (QEMU_VIRT_DTB, &unmapped),
        (QEMU_VIRT_DTB, &elsewhere),
        (FVP_DTB, &fvp_smmu),
    ] {
        let removals = plan_removals(source);
        let paths: Vec<&str> = removals.iter().map(String::as_str).collect();
        let edits = GuestTreeEdits::new(&GUEST_RAM)
            .remove(&paths)
            .bootargs("console=ttyAMA0")
            .virtual_smmu(smmu);
        let once = build(source, &edits).unwrap();
        assert_eq!(
            build(source, &edits).unwrap(),
            once,
            "{smmu:?}: deterministic"
        );
        let twice = build(&once, &edits).unwrap();
        assert_eq!(twice, once, "{smmu:?}");
    }
}

#[test]
fn an_empty_iommu_map_leaves_the_host_bridge_without_one_and_a_mask_follows_the_map() {
    let unmapped = VirtualSmmuNode {
        iommu_map: &[],
        ..VSMMU
    };
    let guest = build_with(QEMU_VIRT_DTB, Some(&unmapped));
    let found = discover(&guest).unwrap();
    assert!(found.smmu.is_some());
    assert!(found.pcie.as_ref().unwrap().iommu_map.is_empty());
    let fdt = Fdt::new(&guest).unwrap();
    assert_eq!(property(&fdt, "/pcie@10000000", "iommu-map"), None);

    // A map that needs two entries and a mask (the source's strings lack the mask's name).
    let map = [
        IommuMapEntry {
            rid_base: 0,
            sid_base: StreamId(0x100),
            length: 0x100,
        },
        IommuMapEntry {
            rid_base: 0x100,
            sid_base: StreamId(0x200),
            length: 0x100,
        },
    ];
    let masked = VirtualSmmuNode {
        iommu_map: &map,
        iommu_map_mask: Some(0xffff),
        ..VSMMU
    };
    let guest = build_with(QEMU_VIRT_DTB, Some(&masked));
    let pcie = discover(&guest).unwrap().pcie.unwrap();
    assert_eq!(pcie.iommu_map.as_slice(), map);
    assert_eq!(pcie.iommu_map_mask, 0xffff);
    let fdt = Fdt::new(&guest).unwrap();
    let pcie_properties: Vec<_> = fdt
        .find_node("/pcie@10000000")
        .unwrap()
        .properties()
        .map(|p| p.name().to_owned())
        .collect();
    assert_eq!(
        pcie_properties[pcie_properties.len() - 2..],
        ["iommu-map", "iommu-map-mask"]
    );
}

/// A small source: GIC (phandle 1), physical SMMU (phandle 2), then `extra`.
fn host_bridge(fdt: &mut common::FdtBuilder, name: &str, status: Option<&str>) {
    fdt.begin(name)
        .strings("compatible", &["pci-host-ecam-generic"])
        .strings("device_type", &["pci"]);
    if let Some(status) = status {
        fdt.strings("status", &[status]);
    }
    fdt.end();
}

/// A root with one-cell addresses and sizes, a GIC and a host bridge.
fn one_cell_tree() -> Vec<u8> {
    let mut fdt = common::FdtBuilder::new();
    fdt.begin("")
        .cells("#address-cells", &[1])
        .cells("#size-cells", &[1]);
    fdt.begin("intc@8000000")
        .strings("compatible", &["arm,gic-v3"])
        .cells("#interrupt-cells", &[3])
        .cells("phandle", &[1])
        .end();
    host_bridge(&mut fdt, "pcie@10000000", None);
    fdt.end();
    fdt.finish()
}

#[test]
fn impossible_virtual_smmu_edits_are_refused() {
    let base = common::tree(|fdt| host_bridge(fdt, "pcie@10000000", None));
    let no_host = common::tree(|_| {});
    let two_hosts = common::tree(|fdt| {
        host_bridge(fdt, "pcie@10000000", None);
        host_bridge(fdt, "pcie@20000000", Some("okay"));
    });
    let mut no_gic = common::FdtBuilder::new();
    no_gic
        .begin("")
        .cells("#address-cells", &[2])
        .cells("#size-cells", &[2]);
    host_bridge(&mut no_gic, "pcie@10000000", None);
    no_gic.end();
    let no_gic = no_gic.finish();
    let gic_without_phandle = gic_variant(&[("#interrupt-cells", &[3])], "");
    let gic_two_cells = gic_variant(&[("#interrupt-cells", &[2]), ("phandle", &[1])], "");
    let two_gics = gic_variant(
        &[("#interrupt-cells", &[3]), ("phandle", &[1])],
        "arm,gic-v3",
    );
    let highest_phandle = common::tree(|fdt| {
        host_bridge(fdt, "pcie@10000000", None);
        fdt.begin("last").cells("phandle", &[0xffff_fffe]).end();
    });
    let one_cell = one_cell_tree();

    let eight: Vec<_> = (0..8)
        .map(|index| (SmmuInterruptName::EventQueue, edge(74 + index)))
        .collect();
    let five = [
        INTERRUPTS.as_slice(),
        &[(SmmuInterruptName::Combined, edge(78))],
    ]
    .concat();
    let repeated = [
        (SmmuInterruptName::EventQueue, edge(74)),
        (SmmuInterruptName::EventQueue, edge(75)),
    ];
    let combined_and_more = [
        (SmmuInterruptName::Combined, edge(74)),
        (SmmuInterruptName::GlobalError, edge(75)),
    ];
    let spi_988 = [(SmmuInterruptName::Combined, edge(988))];
    let nine_entries = [IommuMapEntry::IDENTITY_16_BITS; 9];
    let empty_entry = [
        IommuMapEntry::IDENTITY_16_BITS,
        IommuMapEntry {
            rid_base: 0,
            sid_base: StreamId(0),
            length: 0,
        },
    ];
    let rids_wrap = [IommuMapEntry {
        rid_base: u32::MAX,
        sid_base: StreamId(0),
        length: 2,
    }];
    let sids_wrap = [IommuMapEntry {
        rid_base: 0,
        sid_base: StreamId(u32::MAX - 0xff),
        length: 0x1_0000,
    }];
    let with = |change: &dyn Fn(&mut VirtualSmmuNode<'static>)| {
        let mut node = VSMMU;
        change(&mut node);
        node
    };
    let high = IpaRange::new(0x1_0000_0000, VSMMU_WINDOW);
    let huge = IpaRange::new(0x1000_0000, 0x1_0000_0000);

    let cases: Vec<(&str, &[u8], VirtualSmmuNode<'_>, GuestTreeError)> = vec![
        (
            "no PCIe host bridge for a map",
            &no_host,
            VSMMU,
            GuestTreeError::NoPcieHost,
        ),
        (
            "two host bridges",
            &two_hosts,
            VSMMU,
            GuestTreeError::PcieHostAmbiguous,
        ),
        ("no GIC", &no_gic, VSMMU, GuestTreeError::NoGic),
        (
            "a GIC without a phandle",
            &gic_without_phandle,
            VSMMU,
            GuestTreeError::NoGic,
        ),
        (
            "a GIC with two interrupt cells",
            &gic_two_cells,
            VSMMU,
            GuestTreeError::GicInterruptCells,
        ),
        ("two GICs", &two_gics, VSMMU, GuestTreeError::GicAmbiguous),
        (
            "a base above 4 GiB on a one-cell root",
            &one_cell,
            with(&|node| node.registers = high),
            GuestTreeError::VirtualSmmuRegisters(high),
        ),
        (
            "a 4 GiB window on a one-cell root",
            &one_cell,
            with(&|node| node.registers = huge),
            GuestTreeError::VirtualSmmuRegisters(huge),
        ),
        (
            "an empty window",
            &base,
            with(&|node| node.registers = IpaRange::new(VSMMU_IPA, 0)),
            GuestTreeError::VirtualSmmuRegisters(IpaRange::new(VSMMU_IPA, 0)),
        ),
        (
            "a wrapping window",
            &base,
            with(&|node| node.registers = IpaRange::new(u64::MAX - 0xfff, VSMMU_WINDOW)),
            GuestTreeError::VirtualSmmuRegisters(IpaRange::new(u64::MAX - 0xfff, VSMMU_WINDOW)),
        ),
        (
            "eight interrupts",
            &base,
            VirtualSmmuNode {
                interrupts: &eight,
                ..VSMMU
            },
            GuestTreeError::VirtualSmmuInterruptCount,
        ),
        (
            "five interrupts",
            &base,
            VirtualSmmuNode {
                interrupts: &five,
                ..VSMMU
            },
            GuestTreeError::VirtualSmmuInterruptCount,
        ),
        (
            "no interrupt",
            &base,
            with(&|node| node.interrupts = &[]),
            GuestTreeError::VirtualSmmuInterruptCount,
        ),
        (
            "a name twice",
            &base,
            VirtualSmmuNode {
                interrupts: &repeated,
                ..VSMMU
            },
            GuestTreeError::VirtualSmmuInterruptNames,
        ),
        (
            "combined with another",
            &base,
            VirtualSmmuNode {
                interrupts: &combined_and_more,
                ..VSMMU
            },
            GuestTreeError::VirtualSmmuInterruptNames,
        ),
        (
            "SPI 988",
            &base,
            VirtualSmmuNode {
                interrupts: &spi_988,
                ..VSMMU
            },
            GuestTreeError::VirtualSmmuInterrupt(edge(988)),
        ),
        (
            "nine map entries",
            &base,
            VirtualSmmuNode {
                iommu_map: &nine_entries,
                ..VSMMU
            },
            GuestTreeError::TooManyIommuMapEntries,
        ),
        (
            "an empty map entry",
            &base,
            VirtualSmmuNode {
                iommu_map: &empty_entry,
                ..VSMMU
            },
            GuestTreeError::IommuMapEntry(1),
        ),
        (
            "requester IDs past 2^32",
            &base,
            VirtualSmmuNode {
                iommu_map: &rids_wrap,
                ..VSMMU
            },
            GuestTreeError::IommuMapEntry(0),
        ),
        (
            "stream IDs past 2^32",
            &base,
            VirtualSmmuNode {
                iommu_map: &sids_wrap,
                ..VSMMU
            },
            GuestTreeError::IommuMapEntry(0),
        ),
        (
            "a mask without a map",
            &base,
            with(&|node| {
                node.iommu_map = &[];
                node.iommu_map_mask = Some(0xffff);
            }),
            GuestTreeError::IommuMapMaskWithoutMap,
        ),
        (
            "phandle 0xfffffffe taken",
            &highest_phandle,
            VSMMU,
            GuestTreeError::PhandlesExhausted,
        ),
    ];
    for (what, source, node, error) in cases {
        let edits = GuestTreeEdits::new(&GUEST_RAM).virtual_smmu(&node);
        assert_eq!(build(source, &edits), Err(error), "{what}");
    }
    // The base tree itself is fine.
    let edits = GuestTreeEdits::new(&GUEST_RAM).virtual_smmu(&VSMMU);
    assert!(build(&base, &edits).is_ok());
}

/// A root with two-cell addresses, a host bridge, a GIC with `gic_properties`, and a second
/// node compatible with `second` (none if empty).
fn gic_variant(gic_properties: &[(&str, &[u32])], second: &str) -> Vec<u8> {
    let mut fdt = common::FdtBuilder::new();
    fdt.begin("")
        .cells("#address-cells", &[2])
        .cells("#size-cells", &[2]);
    fdt.begin("intc@8000000")
        .strings("compatible", &["arm,gic-v3"]);
    for (name, value) in gic_properties {
        fdt.cells(name, value);
    }
    fdt.end();
    if !second.is_empty() {
        fdt.begin("intc@9000000")
            .strings("compatible", &[second])
            .cells("#interrupt-cells", &[3])
            .cells("phandle", &[7])
            .end();
    }
    host_bridge(&mut fdt, "pcie@10000000", None);
    fdt.end();
    fdt.finish()
}

#[test]
fn what_is_not_left_to_the_guest_or_is_disabled_does_not_count() {
    // A second GIC and a second host bridge, one removed and one disabled: no ambiguity.
    let source = common::tree(|fdt| {
        host_bridge(fdt, "pcie@10000000", None);
        host_bridge(fdt, "pcie@20000000", Some("disabled"));
        host_bridge(fdt, "pcie@30000000", None);
        fdt.begin("intc@9000000")
            .strings("compatible", &["arm,gic-v3"])
            .strings("status", &["disabled"])
            .cells("phandle", &[9])
            .end();
    });
    let edits = GuestTreeEdits::new(&GUEST_RAM)
        .remove(&["/pcie@30000000"])
        .virtual_smmu(&VSMMU);
    let guest = build(&source, &edits).unwrap();
    let fdt = Fdt::new(&guest).unwrap();
    // The disabled GIC is not the parent, and only the enabled host bridge gets the map.
    assert_eq!(
        property(&fdt, "/smmuv3@9050000", "interrupt-parent"),
        Some(&cells(&[1])[..])
    );
    assert!(property(&fdt, "/pcie@10000000", "iommu-map").is_some());
    assert!(property(&fdt, "/pcie@20000000", "iommu-map").is_none());
    // The only GIC removed: none left for the interrupts.
    let edits = GuestTreeEdits::new(&GUEST_RAM)
        .remove(&["/intc@8000000", "/pcie@30000000"])
        .virtual_smmu(&VSMMU);
    assert_eq!(build(&source, &edits), Err(GuestTreeError::NoGic));
}

#[test]
fn without_a_host_bridge_an_empty_map_still_gives_the_node() {
    let source = common::tree(|_| {});
    let smmu = VirtualSmmuNode {
        iommu_map: &[],
        ..VSMMU
    };
    let guest = build(
        &source,
        &GuestTreeEdits::new(&GUEST_RAM).virtual_smmu(&smmu),
    )
    .unwrap();
    let found = discover(&guest).unwrap();
    assert_eq!(
        found.smmu.unwrap().registers,
        PhysRange::new(VSMMU_IPA, VSMMU_WINDOW)
    );
    assert!(found.pcie.is_none());
}

#[test]
fn a_one_cell_root_gets_one_cell_registers_and_a_four_cell_gic_four_cell_interrupts() {
    let one_cell = one_cell_tree();
    let guest = build(
        &one_cell,
        &GuestTreeEdits::new(&GUEST_RAM).virtual_smmu(&VSMMU),
    )
    .unwrap();
    let fdt = Fdt::new(&guest).unwrap();
    assert_eq!(
        property(&fdt, "/smmuv3@9050000", "reg"),
        Some(&cells(&[0x0905_0000, 0x2_0000])[..])
    );
    let four_cells = gic_variant(&[("#interrupt-cells", &[4]), ("phandle", &[1])], "");
    let combined = [(
        SmmuInterruptName::Combined,
        Interrupt::ppi(9, Trigger::LevelHigh),
    )];
    let smmu = VirtualSmmuNode {
        interrupts: &combined,
        ..VSMMU
    };
    let guest = build(
        &four_cells,
        &GuestTreeEdits::new(&GUEST_RAM).virtual_smmu(&smmu),
    )
    .unwrap();
    let fdt = Fdt::new(&guest).unwrap();
    assert_eq!(
        property(&fdt, "/smmuv3@9050000", "interrupts"),
        Some(&cells(&[1, 9, 4, 0])[..])
    );
    assert_eq!(
        property(&fdt, "/smmuv3@9050000", "interrupt-names"),
        Some(&b"combined\0"[..])
    );
}

#[test]
fn a_node_already_as_the_edit_writes_it_keeps_its_phandle_only_above_every_other() {
    let source = common::tree(|fdt| host_bridge(fdt, "pcie@10000000", None));
    let edits = GuestTreeEdits::new(&GUEST_RAM)
        .remove(&["/smmuv3@9050000"])
        .virtual_smmu(&VSMMU);
    let once = build(&source, &edits).unwrap();
    assert_eq!(phandle_of(&once, "/smmuv3@9050000"), 3);
    // Now the node exists as written, phandle 3. A node with a higher phandle appears: 3 is
    // still unique, but the rule is "above every other", so the next free one is taken.
    let mut with_higher = flatten(&once);
    with_higher.push((
        "/extra".to_owned(),
        vec![("phandle".to_owned(), cells(&[5]))],
    ));
    let rebuilt = rebuild_flat(&with_higher);
    let again = build(&rebuilt, &edits).unwrap();
    assert_eq!(phandle_of(&again, "/smmuv3@9050000"), 6);
    // The node differs in one property (not dma-coherent): a new phandle.
    let mut changed = flatten(&once);
    for (path, properties) in &mut changed {
        if path == "/smmuv3@9050000" {
            properties.retain(|(name, _)| name != "dma-coherent");
        }
    }
    let again = build(&rebuild_flat(&changed), &edits).unwrap();
    assert_eq!(phandle_of(&again, "/smmuv3@9050000"), 4);
    // Unchanged: the same phandle, the same bytes.
    assert_eq!(build(&once, &edits).unwrap(), once);
}

/// A blob from a flattened tree (every node a direct child of its path's parent).
fn rebuild_flat(flat: &Flat) -> Vec<u8> {
    let mut fdt = common::FdtBuilder::new();
    let mut open: Vec<String> = Vec::new();
    for (path, properties) in flat {
        let depth = if path.is_empty() {
            0
        } else {
            path.matches('/').count()
        };
        while open.len() > depth {
            fdt.end();
            open.pop();
        }
        fdt.begin(path.rsplit('/').next().unwrap_or(""));
        for (name, value) in properties {
            fdt.prop(name, value);
        }
        open.push(path.clone());
    }
    for _ in open {
        fdt.end();
    }
    fdt.finish()
}

fn interrupt_name() -> impl Strategy<Value = Vec<SmmuInterruptName>> {
    let separate = Just(vec![
        SmmuInterruptName::EventQueue,
        SmmuInterruptName::PriQueue,
        SmmuInterruptName::CommandSync,
        SmmuInterruptName::GlobalError,
    ])
    .prop_shuffle()
    .prop_flat_map(|names| {
        (1..=MAX_VIRTUAL_SMMU_INTERRUPTS).prop_map(move |n| names[..n].to_vec())
    });
    prop_oneof![Just(vec![SmmuInterruptName::Combined]), separate]
}

fn trigger() -> impl Strategy<Value = Trigger> {
    prop_oneof![
        Just(Trigger::EdgeRising),
        Just(Trigger::EdgeFalling),
        Just(Trigger::LevelHigh),
        Just(Trigger::LevelLow),
    ]
}

fn map_entry() -> impl Strategy<Value = IommuMapEntry> {
    (0u32..0x1_0000, 0u32..0x10_0000, 1u32..0x1_0000).prop_map(|(rid_base, sid_base, length)| {
        IommuMapEntry {
            rid_base,
            sid_base: StreamId(sid_base),
            length,
        }
    })
}

proptest! {
    #[test]
    fn any_valid_virtual_smmu_is_what_discovery_reads_back(
        page in 0x1_0000u64..0x100_0000,
        names in interrupt_name(),
        spis in proptest::collection::vec((0u32..988, trigger()), 4),
        map in proptest::collection::vec(map_entry(), 0..=8),
        mask in proptest::option::of(any::<u32>()),
    ) {
        let interrupts: Vec<_> = names
            .iter()
            .zip(&spis)
            .map(|(name, &(spi, trigger))| (*name, Interrupt::spi(spi, trigger)))
            .collect();
        let mask = mask.filter(|_| !map.is_empty());
        let node = VirtualSmmuNode {
            registers: IpaRange::new(page << 12, VSMMU_WINDOW),
            interrupts: &interrupts,
            iommu_map: &map,
            iommu_map_mask: mask,
        };
        let guest = build_with(QEMU_VIRT_DTB, Some(&node));
        let found = discover(&guest).unwrap();
        let smmu = found.smmu.unwrap();
        prop_assert_eq!(smmu.registers, PhysRange::new(page << 12, VSMMU_WINDOW));
        let mut expected = SmmuInterrupts::default();
        for (name, interrupt) in &interrupts {
            let slot = match name {
                SmmuInterruptName::EventQueue => &mut expected.eventq,
                SmmuInterruptName::PriQueue => &mut expected.priq,
                SmmuInterruptName::CommandSync => &mut expected.cmdq_sync,
                SmmuInterruptName::GlobalError => &mut expected.gerror,
                SmmuInterruptName::Combined => &mut expected.combined,
            };
            *slot = Some(*interrupt);
        }
        prop_assert_eq!(smmu.interrupts, expected);
        let pcie = found.pcie.unwrap();
        prop_assert_eq!(pcie.iommu_map.as_slice(), map.as_slice());
        prop_assert_eq!(pcie.iommu_map_mask, mask.unwrap_or(u32::MAX));
        let removals = plan_removals(QEMU_VIRT_DTB);
        let paths: Vec<&str> = removals.iter().map(String::as_str).collect();
        let edits = GuestTreeEdits::new(&GUEST_RAM).remove(&paths).virtual_smmu(&node);
        let again = build(&guest, &edits).unwrap();
        prop_assert!(again == guest, "a rebuild changed the bytes");
    }

    #[test]
    fn random_word_overwrites_never_panic_with_the_virtual_smmu(
        fixture in 0usize..2,
        writes in proptest::collection::vec((any::<prop::sample::Index>(), any::<u32>()), 1..8),
        out_size in 0usize..(16 << 10),
    ) {
        let mut blob = [QEMU_VIRT_DTB, FVP_DTB][fixture].to_vec();
        for (index, value) in writes {
            let offset = index.index(blob.len() / 4) * 4;
            blob[offset..offset + 4].copy_from_slice(&value.to_be_bytes());
        }
        let edits = GuestTreeEdits::new(&GUEST_RAM)
            .remove(&["/pl011@9040000", "/smmuv3@9050000"])
            .virtual_smmu(&VSMMU);
        let mut out = vec![0; out_size];
        if let Ok(length) = build_guest_tree(&blob, &edits, &mut out) {
            prop_assert!(Fdt::new(&out[..length]).is_ok());
        }
    }
}

#[test]
fn every_single_byte_corruption_is_survived_with_the_virtual_smmu() {
    let edits = GuestTreeEdits::new(&GUEST_RAM)
        .remove(&["/pl011@9040000", "/smmuv3@9050000"])
        .virtual_smmu(&VSMMU);
    let mut out = vec![0; 16 << 10];
    for offset in 0..QEMU_VIRT_DTB.len() {
        let mut corrupted = QEMU_VIRT_DTB.to_vec();
        corrupted[offset] ^= 0xff;
        if let Ok(length) = build_guest_tree(&corrupted, &edits, &mut out) {
            Fdt::new(&out[..length]).unwrap();
        }
    }
}

#[test]
fn the_host_bridges_own_map_is_replaced_even_when_it_names_a_kept_iommu() {
    // The physical SMMU stays (phandle 2) and the virtual one goes elsewhere: the source's
    // map does not dangle, and must still give way, mask and all.
    let source = common::tree(|fdt| {
        fdt.begin("pcie@10000000")
            .cells("iommu-map", &[0, 2, 0, 0x100])
            .cells("iommu-map-mask", &[0xff])
            .strings("compatible", &["pci-host-ecam-generic"])
            .end();
    });
    let smmu = VirtualSmmuNode {
        registers: IpaRange::new(0x0906_0000, VSMMU_WINDOW),
        ..VSMMU
    };
    let guest = build(
        &source,
        &GuestTreeEdits::new(&GUEST_RAM).virtual_smmu(&smmu),
    )
    .unwrap();
    let flat = flatten(&guest);
    let (_, pcie) = flat
        .iter()
        .find(|(path, _)| path == "/pcie@10000000")
        .unwrap();
    let new = phandle_of(&guest, "/smmuv3@9060000");
    assert_eq!(new, 3);
    assert_eq!(
        pcie.as_slice(),
        [
            ("compatible".to_owned(), b"pci-host-ecam-generic\0".to_vec()),
            ("iommu-map".to_owned(), cells(&[0, new, 0, 0x1_0000])),
        ]
    );
}
