//! Discovery on built trees: the bounds, the duplicates and the hostile shapes that real
//! firmware would not produce but a hypervisor must survive.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

mod common;

use board::{DiscoveryError, IommuMapEntry, NodeKind, discover};
use common::{FdtBuilder, tree};
use smmu::{PhysRange, StreamId};

fn pcie(fdt: &mut FdtBuilder, iommu_map: &[u32]) {
    fdt.begin("pcie@10000000")
        .strings("compatible", &["pci-host-ecam-generic"])
        .cells("#address-cells", &[3])
        .cells("#size-cells", &[2])
        .cells("reg", &[0x40, 0x1000_0000, 0, 0x1000_0000])
        .cells("bus-range", &[0, 0x7f])
        .cells(
            "ranges",
            &[0x0200_0000, 0, 0x1000_0000, 0, 0x1000_0000, 0, 0x2eff_0000],
        )
        .cells("iommu-map", iommu_map)
        .end();
}

#[test]
fn the_base_tree_discovers_cleanly() {
    let dtb = tree(|fdt| pcie(fdt, &[0, 2, 0, 0x8000]));
    let found = discover(&dtb).unwrap();
    let host = found.pcie.unwrap();
    assert_eq!(host.mmio32, Some(PhysRange::new(0x1000_0000, 0x2eff_0000)));
    assert_eq!(
        host.iommu_map.as_slice(),
        [IommuMapEntry {
            rid_base: 0,
            sid_base: StreamId(0),
            length: 0x8000
        }]
    );
    let range = host.stream_id_range().unwrap();
    assert_eq!((range.first, range.last), (StreamId(0), StreamId(0x7fff)));
    assert!(found.smmu.is_some());
}

#[test]
fn an_iommu_map_naming_another_iommu_is_refused() {
    let dtb = tree(|fdt| pcie(fdt, &[0, 1, 0, 0x10000]));
    assert_eq!(discover(&dtb), Err(DiscoveryError::UnknownIommu));
}

#[test]
fn a_malformed_iommu_map_is_refused() {
    let dtb = tree(|fdt| pcie(fdt, &[0, 2, 0]));
    assert_eq!(
        discover(&dtb),
        Err(DiscoveryError::BadProperty {
            node: NodeKind::PcieHost,
            property: "iommu-map"
        })
    );
}

#[test]
fn a_second_smmu_is_refused() {
    let dtb = tree(|fdt| {
        fdt.begin("smmuv3@9070000")
            .strings("compatible", &["arm,smmu-v3"])
            .cells("reg", &[0, 0x0907_0000, 0, 0x2_0000])
            .end();
    });
    assert_eq!(
        discover(&dtb),
        Err(DiscoveryError::Duplicate(NodeKind::Smmu))
    );
}

#[test]
fn a_disabled_node_is_not_there() {
    let dtb = tree(|fdt| {
        fdt.begin("smmuv3@9070000")
            .strings("compatible", &["arm,smmu-v3"])
            .strings("status", &["disabled"])
            .cells("reg", &[0, 0x0907_0000, 0, 0x2_0000])
            .end();
        fdt.begin("pl011@9000000")
            .strings("compatible", &["arm,pl011", "arm,primecell"])
            .strings("status", &["fail"])
            .cells("reg", &[0, 0x0900_0000, 0, 0x1000])
            .end();
    });
    let found = discover(&dtb).unwrap();
    assert_eq!(
        found.smmu.unwrap().registers,
        PhysRange::new(0x0905_0000, 0x2_0000)
    );
    assert!(found.uarts.is_empty());
}

#[test]
fn smmu_interrupts_routed_elsewhere_than_the_gic_are_refused() {
    let mut fdt = FdtBuilder::new();
    fdt.begin("")
        .cells("interrupt-parent", &[1])
        .cells("#size-cells", &[2])
        .begin("memory@0")
        .strings("device_type", &["memory"])
        .cells("reg", &[0, 0, 0, 0x1000])
        .end()
        .begin("intc")
        .strings("compatible", &["arm,gic-v3"])
        .cells("#interrupt-cells", &[3])
        .cells(
            "reg",
            &[0, 0x0800_0000, 0, 0x1_0000, 0, 0x080a_0000, 0, 0xf6_0000],
        )
        .cells("phandle", &[1])
        .end()
        .begin("smmu")
        .strings("compatible", &["arm,smmu-v3"])
        .cells("reg", &[0, 0x0905_0000, 0, 0x2_0000])
        .cells("interrupt-parent", &[7])
        .cells("interrupts", &[0, 74, 1])
        .end()
        .end();
    assert_eq!(
        discover(&fdt.finish()),
        Err(DiscoveryError::InterruptParent(NodeKind::Smmu))
    );
}

#[test]
fn smmu_interrupts_need_matching_names() {
    for names in [
        &["eventq", "priq"][..],
        &["eventq", "priq", "cmdq-sync", "bogus"],
        &["eventq"; 4],
    ] {
        let mut fdt = FdtBuilder::new();
        fdt.begin("")
            .cells("interrupt-parent", &[1])
            .cells("#size-cells", &[2])
            .begin("memory@0")
            .strings("device_type", &["memory"])
            .cells("reg", &[0, 0, 0, 0x1000])
            .end()
            .begin("intc")
            .strings("compatible", &["arm,gic-v3"])
            .cells("#interrupt-cells", &[3])
            .cells(
                "reg",
                &[0, 0x0800_0000, 0, 0x1_0000, 0, 0x080a_0000, 0, 0xf6_0000],
            )
            .cells("phandle", &[1])
            .end()
            .begin("smmu")
            .strings("compatible", &["arm,smmu-v3"])
            .cells("reg", &[0, 0x0905_0000, 0, 0x2_0000])
            .cells("interrupts", &[0, 74, 1, 0, 75, 1, 0, 76, 1, 0, 77, 1])
            .strings("interrupt-names", names)
            .end()
            .end();
        assert_eq!(
            discover(&fdt.finish()),
            Err(DiscoveryError::BadProperty {
                node: NodeKind::Smmu,
                property: "interrupt-names"
            }),
            "{names:?}"
        );
    }
}

#[test]
fn nesting_deeper_than_the_bound_is_refused() {
    let dtb = tree(|fdt| {
        for level in 0..40 {
            fdt.begin(&format!("bus{level}"));
        }
        for _ in 0..40 {
            fdt.end();
        }
    });
    assert_eq!(discover(&dtb), Err(DiscoveryError::TooDeep));
}

#[test]
fn more_nodes_than_the_bound_are_refused() {
    let dtb = tree(|fdt| {
        for index in 0..5000 {
            fdt.begin(&format!("n{index}")).end();
        }
    });
    assert_eq!(discover(&dtb), Err(DiscoveryError::TooManyNodes));
}

#[test]
fn more_uarts_than_fit_are_refused() {
    let dtb = tree(|fdt| {
        for index in 0..9u32 {
            fdt.begin(&format!("pl011@{index:x}"))
                .strings("compatible", &["arm,pl011"])
                .cells("reg", &[0, 0x0900_0000 + index * 0x1000, 0, 0x1000])
                .end();
        }
    });
    assert_eq!(discover(&dtb), Err(DiscoveryError::TooMany(NodeKind::Uart)));
}

#[test]
fn bootargs_are_bounded() {
    let long = "x".repeat(3000);
    let dtb = tree(|fdt| {
        fdt.begin("chosen").strings("bootargs", &[&long]).end();
    });
    assert_eq!(discover(&dtb), Err(DiscoveryError::BootargsTooLong(3000)));
    let dtb = tree(|fdt| {
        fdt.begin("chosen").prop("bootargs", b"no terminator").end();
    });
    assert_eq!(
        discover(&dtb),
        Err(DiscoveryError::BadProperty {
            node: NodeKind::Chosen,
            property: "bootargs"
        })
    );
}

#[test]
fn overlapping_memory_banks_are_refused() {
    let dtb = tree(|fdt| {
        fdt.begin("memory@7f000000")
            .strings("device_type", &["memory"])
            .cells("reg", &[0, 0x7f00_0000, 0, 0x0200_0000])
            .end();
    });
    assert_eq!(discover(&dtb), Err(DiscoveryError::OverlappingMemory));
}

#[test]
fn a_device_behind_a_bus_without_ranges_is_untranslatable() {
    let dtb = tree(|fdt| {
        fdt.begin("bus")
            .cells("#address-cells", &[1])
            .cells("#size-cells", &[1])
            .begin("serial@1000")
            .strings("compatible", &["arm,pl011"])
            .cells("reg", &[0x1000, 0x1000])
            .end()
            .end();
    });
    assert_eq!(
        discover(&dtb),
        Err(DiscoveryError::Untranslatable(NodeKind::Uart))
    );
}

#[test]
fn wide_or_malformed_reg_is_refused() {
    let dtb = tree(|fdt| {
        fdt.begin("bus")
            .cells("#address-cells", &[3])
            .prop("ranges", &[])
            .begin("serial@1000")
            .strings("compatible", &["arm,pl011"])
            .cells("reg", &[0, 0, 0x1000, 0x1000])
            .end()
            .end();
    });
    assert_eq!(
        discover(&dtb),
        Err(DiscoveryError::BadProperty {
            node: NodeKind::Uart,
            property: "reg"
        })
    );
    let dtb = tree(|fdt| {
        fdt.begin("pl011@9000000")
            .strings("compatible", &["arm,pl011"])
            .cells("reg", &[0, 0x0900_0000, 0])
            .end();
    });
    assert_eq!(
        discover(&dtb),
        Err(DiscoveryError::BadProperty {
            node: NodeKind::Uart,
            property: "reg"
        })
    );
}

#[test]
fn a_bad_bus_range_is_refused() {
    for bus_range in [&[0x10u32, 0x0][..], &[0, 0x100], &[0]] {
        let dtb = tree(|fdt| {
            fdt.begin("pcie@10000000")
                .strings("compatible", &["pci-host-ecam-generic"])
                .cells("#address-cells", &[3])
                .cells("reg", &[0x40, 0x1000_0000, 0, 0x1000_0000])
                .cells("bus-range", bus_range)
                .end();
        });
        assert_eq!(
            discover(&dtb),
            Err(DiscoveryError::BadProperty {
                node: NodeKind::PcieHost,
                property: "bus-range"
            }),
            "{bus_range:?}"
        );
    }
}

#[test]
fn an_unknown_psci_method_is_refused() {
    let dtb = tree(|fdt| {
        fdt.begin("psci")
            .strings("compatible", &["arm,psci-1.0"])
            .strings("method", &["svc"])
            .end();
    });
    assert_eq!(
        discover(&dtb),
        Err(DiscoveryError::BadProperty {
            node: NodeKind::Psci,
            property: "method"
        })
    );
}

#[test]
fn too_many_root_compatible_strings_are_refused() {
    let mut fdt = FdtBuilder::new();
    fdt.begin("").strings("compatible", &["a"; 9]).end();
    assert_eq!(
        discover(&fdt.finish()),
        Err(DiscoveryError::TooMany(NodeKind::Root))
    );
}
