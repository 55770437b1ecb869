//! The guest's device tree, built from real QEMU virt blobs and from hostile ones.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use board::guest_tree::{MAX_REMOVED_NODES, MAX_REMOVED_PHANDLES};
use board::{
    BlobError, GuestTreeEdits, GuestTreeError, IpaRange, PsciConduit, build_guest_tree, discover,
};
use dtoolkit::fdt::Fdt;
use dtoolkit::{Node, Property};
use proptest::prelude::*;
use smmu::PhysRange;

const QEMU_VIRT_DTB: &[u8] = include_bytes!("../testdata/qemu-virt.dtb");
const QEMU_ONE_UART: &[u8] = include_bytes!("../testdata/qemu-virt-one-uart.dtb");
const QEMU_NO_SMMU: &[u8] = include_bytes!("../testdata/qemu-virt-no-smmu.dtb");
const QEMU_HIGHMEM_OFF: &[u8] = include_bytes!("../testdata/qemu-virt-highmem-off.dtb");
const FVP_DTB: &[u8] = include_bytes!("../testdata/fvp-base-revc.dtb");
const EXPECTED_DTS: &str = include_str!("../testdata/qemu-virt-guest.dts");

const GUEST_RAM: [IpaRange; 1] = [IpaRange::new(0x4000_0000, 0x2000_0000)];
const REMOVED: [&str; 2] = ["/pl011@9040000", "/smmuv3@9050000"];
const BOOTARGS: &str = "console=ttyAMA0 root=/dev/vda rw";
const INITRD: IpaRange = IpaRange::new(0x4800_0000, 0x10_0000);

fn edits() -> GuestTreeEdits<'static> {
    GuestTreeEdits::new(&GUEST_RAM)
        .remove(&REMOVED)
        .bootargs(BOOTARGS)
        .initrd(INITRD)
}

fn build(source: &[u8], edits: &GuestTreeEdits<'_>) -> Result<Vec<u8>, GuestTreeError> {
    let mut out = vec![0; source.len() + 4096];
    let length = build_guest_tree(source, edits, &mut out)?;
    out.truncate(length);
    Ok(out)
}

fn read_u32(blob: &[u8], offset: usize) -> u32 {
    u32::from_be_bytes(blob[offset..offset + 4].try_into().unwrap())
}

fn write_u32(blob: &mut [u8], offset: usize, value: u32) {
    blob[offset..offset + 4].copy_from_slice(&value.to_be_bytes());
}

fn property<'a>(fdt: &Fdt<'a>, path: &str, name: &str) -> Option<&'a [u8]> {
    let node = fdt.find_node(path)?;
    node.property(name)
        .and_then(|property| property.value_as::<&'a [u8]>().ok())
}

fn node_names(fdt: &Fdt<'_>) -> Vec<String> {
    fdt.root()
        .children()
        .map(|child| child.name().to_owned())
        .collect()
}

#[test]
fn the_qemu_virt_guest_tree_has_the_guest_ram_and_none_of_the_hypervisors_devices() {
    let guest = build(QEMU_VIRT_DTB, &edits()).unwrap();
    let found = discover(&guest).unwrap();
    let host = discover(QEMU_VIRT_DTB).unwrap();

    assert_eq!(
        found.memory.as_slice(),
        [PhysRange::new(0x4000_0000, 0x2000_0000)]
    );
    assert_eq!(
        found.uarts.as_slice(),
        [PhysRange::new(0x0900_0000, 0x1000)]
    );
    assert_eq!(found.smmu, None);
    assert_eq!(found.gic, host.gic);
    let pcie = found.pcie.as_ref().unwrap();
    let host_pcie = host.pcie.as_ref().unwrap();
    assert_eq!(pcie.ecam, host_pcie.ecam);
    assert_eq!(pcie.mmio64, host_pcie.mmio64);
    assert!(pcie.iommu_map.is_empty());
    assert_eq!(found.rtc, host.rtc);
    assert_eq!(found.fw_cfg, host.fw_cfg);
    assert_eq!(found.psci, Some(PsciConduit::Smc));
    assert_eq!(found.cpu_count, 2);
    assert_eq!(found.bootargs, Some(BOOTARGS));

    let fdt = Fdt::new(&guest).unwrap();
    let names = node_names(&fdt);
    assert!(names.iter().any(|name| name == "memory@40000000"));
    assert!(!names.iter().any(|name| name == "pl011@9040000"));
    assert!(!names.iter().any(|name| name == "smmuv3@9050000"));
    assert!(names.iter().any(|name| name == "pl011@9000000"));
    assert_eq!(
        names
            .iter()
            .filter(|name| name.starts_with("memory"))
            .count(),
        1
    );
    // The memory node keeps the first one's place.
    assert_eq!(
        names.iter().position(|name| name.starts_with("memory")),
        node_names(&Fdt::new(QEMU_VIRT_DTB).unwrap())
            .iter()
            .position(|name| name.starts_with("memory"))
    );
    // The dangling iommu-map goes; the msi-map, naming the ITS that stays, does not.
    assert_eq!(property(&fdt, "/pcie@10000000", "iommu-map"), None);
    assert!(property(&fdt, "/pcie@10000000", "msi-map").is_some());
    assert_eq!(
        property(&fdt, "/chosen", "linux,initrd-start"),
        Some(&0x4800_0000u64.to_be_bytes()[..])
    );
    assert_eq!(
        property(&fdt, "/chosen", "linux,initrd-end"),
        Some(&0x4810_0000u64.to_be_bytes()[..])
    );
    // Untouched /chosen properties stay.
    assert_eq!(
        property(&fdt, "/chosen", "stdout-path"),
        Some(&b"/pl011@9000000\0"[..])
    );
    assert_eq!(
        property(&fdt, "/chosen", "rng-seed"),
        property(&Fdt::new(QEMU_VIRT_DTB).unwrap(), "/chosen", "rng-seed")
    );
    assert!(property(&fdt, "/chosen", "kaslr-seed").is_some());
    // serial1 named the removed UART.
    assert_eq!(
        property(&fdt, "/aliases", "serial0"),
        Some(&b"/pl011@9000000\0"[..])
    );
    assert_eq!(property(&fdt, "/aliases", "serial1"), None);
}

#[test]
fn the_header_is_version_17_with_aligned_blocks() {
    let guest = build(QEMU_VIRT_DTB, &edits()).unwrap();
    assert_eq!(read_u32(&guest, 0), 0xd00d_feed);
    assert_eq!(read_u32(&guest, 4) as usize, guest.len());
    let (structure, strings, reservations) = (
        read_u32(&guest, 8) as usize,
        read_u32(&guest, 12) as usize,
        read_u32(&guest, 16) as usize,
    );
    assert_eq!(reservations % 8, 0);
    assert_eq!(structure % 4, 0);
    assert_eq!(read_u32(&guest, 20), 17);
    assert_eq!(read_u32(&guest, 24), 16);
    assert_eq!(read_u32(&guest, 28), read_u32(QEMU_VIRT_DTB, 28));
    assert_eq!(strings + read_u32(&guest, 32) as usize, guest.len());
    assert_eq!(structure + read_u32(&guest, 36) as usize, strings);
    // The source's strings come first, unchanged.
    let source_strings = read_u32(QEMU_VIRT_DTB, 12) as usize;
    let source_size = read_u32(QEMU_VIRT_DTB, 32) as usize;
    assert_eq!(
        guest[strings..strings + source_size],
        QEMU_VIRT_DTB[source_strings..source_strings + source_size]
    );
}

#[test]
fn memory_reservations_are_kept() {
    // The fixture with two reservations spliced in.
    let mut blob = QEMU_VIRT_DTB[..40].to_vec();
    blob.extend_from_slice(&0x4000_0000u64.to_be_bytes());
    blob.extend_from_slice(&0x1000u64.to_be_bytes());
    blob.extend_from_slice(&0x5000_0000u64.to_be_bytes());
    blob.extend_from_slice(&0x2000u64.to_be_bytes());
    let reservations = read_u32(QEMU_VIRT_DTB, 16) as usize;
    blob.extend_from_slice(&QEMU_VIRT_DTB[reservations..]);
    for word in [2, 3] {
        let value = read_u32(&blob, word * 4) + 32;
        write_u32(&mut blob, word * 4, value);
    }
    let total = blob.len() as u32;
    write_u32(&mut blob, 4, total);
    let guest = build(&blob, &edits()).unwrap();
    let kept: Vec<_> = Fdt::new(&guest)
        .unwrap()
        .memory_reservations()
        .map(|r| (r.address(), r.size()))
        .collect();
    assert_eq!(kept, [(0x4000_0000, 0x1000), (0x5000_0000, 0x2000)]);
}

#[test]
fn building_from_a_built_tree_gives_the_same_bytes() {
    for source in [
        QEMU_VIRT_DTB,
        QEMU_ONE_UART,
        QEMU_NO_SMMU,
        QEMU_HIGHMEM_OFF,
        FVP_DTB,
    ] {
        for edits in [
            edits(),
            GuestTreeEdits::new(&GUEST_RAM),
            GuestTreeEdits::new(&GUEST_RAM).bootargs("quiet"),
        ] {
            let once = build(source, &edits).unwrap();
            let twice = build(&once, &edits).unwrap();
            assert_eq!(once, twice);
        }
    }
}

#[test]
fn every_output_buffer_smaller_than_the_tree_is_refused() {
    let needed = build(QEMU_VIRT_DTB, &edits()).unwrap().len();
    let mut out = vec![0; needed];
    for size in 0..needed {
        assert_eq!(
            build_guest_tree(QEMU_VIRT_DTB, &edits(), &mut out[..size]),
            Err(GuestTreeError::OutputTooSmall),
            "size {size}"
        );
    }
    assert_eq!(
        build_guest_tree(QEMU_VIRT_DTB, &edits(), &mut out),
        Ok(needed)
    );
}

#[test]
fn dtc_accepts_the_guest_tree_and_it_matches_the_committed_dts() {
    let guest = build(QEMU_VIRT_DTB, &edits()).unwrap();
    let dir = std::env::temp_dir().join(format!("board-guest-tree-{}", std::process::id()));
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
    assert!(
        output.status.success(),
        "dtc refused the guest tree: {stderr}"
    );
    assert!(stderr.is_empty(), "dtc warned: {stderr}");
    let dts = String::from_utf8(output.stdout).unwrap();
    if std::env::var_os("BOARD_BLESS").is_some() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/qemu-virt-guest.dts");
        std::fs::write(path, &dts).unwrap();
        return;
    }
    assert_eq!(
        dts, EXPECTED_DTS,
        "rerun with BOARD_BLESS=1 to rewrite testdata/qemu-virt-guest.dts, then review its diff"
    );
}

#[test]
fn one_cell_roots_get_one_cell_memory_and_missing_nodes_are_created() {
    let mut fdt = common::FdtBuilder::new();
    fdt.begin("")
        .cells("#address-cells", &[1])
        .cells("#size-cells", &[1])
        .strings("compatible", &["test"]);
    fdt.begin("uart@1000").cells("reg", &[0x1000, 0x100]).end();
    fdt.end();
    let source = fdt.finish();
    let ram = [
        IpaRange::new(0x8000_0000, 0x1000_0000),
        IpaRange::new(0x2000_0000, 0x1000),
    ];
    let guest = build(&source, &GuestTreeEdits::new(&ram).bootargs("x")).unwrap();
    let fdt = Fdt::new(&guest).unwrap();
    assert_eq!(node_names(&fdt), ["uart@1000", "memory@80000000", "chosen"]);
    let reg: Vec<u8> = [0x8000_0000u32, 0x1000_0000, 0x2000_0000, 0x1000]
        .iter()
        .flat_map(|c| c.to_be_bytes())
        .collect();
    assert_eq!(property(&fdt, "/memory@80000000", "reg"), Some(&reg[..]));
    assert_eq!(
        property(&fdt, "/memory@80000000", "device_type"),
        Some(&b"memory\0"[..])
    );
    assert_eq!(property(&fdt, "/chosen", "bootargs"), Some(&b"x\0"[..]));
    // Above 4 GiB does not fit one cell.
    let high = [IpaRange::new(0x1_0000_0000, 0x1000)];
    assert_eq!(
        build(&source, &GuestTreeEdits::new(&high)),
        Err(GuestTreeError::GuestMemoryRange(high[0]))
    );
}

#[test]
fn every_memory_node_is_replaced_by_one() {
    let mut fdt = common::FdtBuilder::new();
    fdt.begin("")
        .cells("#address-cells", &[2])
        .cells("#size-cells", &[2]);
    for base in [0x4000_0000u32, 0x8000_0000] {
        fdt.begin(&format!("memory@{base:x}"))
            .strings("device_type", &["memory"])
            .cells("reg", &[0, base, 0, 0x1000_0000])
            .cells("numa-node-id", &[0])
            .end();
    }
    fdt.begin("chosen").strings("bootargs", &["host"]).end();
    fdt.end();
    let source = fdt.finish();
    let ram = [IpaRange::new(0x1_0000_0000, 0x4000_0000)];
    let guest = build(&source, &GuestTreeEdits::new(&ram)).unwrap();
    let fdt = Fdt::new(&guest).unwrap();
    assert_eq!(node_names(&fdt), ["memory@100000000", "chosen"]);
    assert_eq!(
        discover(&guest).unwrap().memory.as_slice(),
        [PhysRange::new(0x1_0000_0000, 0x4000_0000)]
    );
    // Bootargs not edited: the source's stay.
    assert_eq!(property(&fdt, "/chosen", "bootargs"), Some(&b"host\0"[..]));
}

#[test]
fn nodes_are_matched_by_full_path_only() {
    let mut fdt = common::FdtBuilder::new();
    fdt.begin("")
        .cells("#address-cells", &[2])
        .cells("#size-cells", &[2]);
    fdt.begin("bus")
        .begin("dev@1")
        .end()
        .begin("dev@2")
        .end()
        .end();
    fdt.begin("dev@1").end();
    fdt.end();
    let source = fdt.finish();
    let guest = build(
        &source,
        &GuestTreeEdits::new(&GUEST_RAM).remove(&["/bus/dev@1"]),
    )
    .unwrap();
    let fdt = Fdt::new(&guest).unwrap();
    assert!(fdt.find_node("/bus/dev@2").is_some());
    assert!(fdt.find_node("/dev@1").is_some());
    assert_eq!(
        fdt.find_node("/bus").unwrap().children().count(),
        1,
        "only /bus/dev@1 goes"
    );
    // No unit-address wildcards: "/dev" names no node.
    let guest = build(
        &source,
        &GuestTreeEdits::new(&GUEST_RAM).remove(&["/dev", "/bus/dev"]),
    )
    .unwrap();
    assert_eq!(
        Fdt::new(&guest)
            .unwrap()
            .find_node("/bus")
            .unwrap()
            .children()
            .count(),
        2
    );
    // A whole subtree goes with its root.
    let guest = build(&source, &GuestTreeEdits::new(&GUEST_RAM).remove(&["/bus"])).unwrap();
    assert_eq!(
        node_names(&Fdt::new(&guest).unwrap()),
        ["dev@1", "memory@40000000", "chosen"]
    );
}

#[test]
fn references_into_removed_subtrees_are_dropped_and_others_kept() {
    let mut fdt = common::FdtBuilder::new();
    fdt.begin("")
        .cells("#address-cells", &[2])
        .cells("#size-cells", &[2]);
    fdt.begin("iommu@1")
        .cells("#iommu-cells", &[1])
        .cells("phandle", &[10])
        .begin("msi@2")
        .prop("msi-controller", &[])
        .cells("phandle", &[11])
        .end()
        .end();
    fdt.begin("iommu@3")
        .cells("#iommu-cells", &[2])
        .cells("phandle", &[12])
        .end();
    fdt.begin("its@4")
        .cells("#msi-cells", &[1])
        .cells("phandle", &[13])
        .end();
    fdt.begin("a")
        .cells("iommus", &[12, 10, 0]) // names the kept IOMMU with a 10 in its specifier
        .cells("msi-parent", &[11])
        .end();
    fdt.begin("b")
        .cells("iommus", &[12, 0, 0, 10, 5])
        .cells("iommu-map-mask", &[0xfff8])
        .cells("iommu-map", &[0, 12, 0, 0, 0x100, 0x100, 10, 0, 0x100])
        .cells("msi-map", &[0, 13, 0, 0x100])
        .cells("msi-map-mask", &[0xff])
        .end();
    fdt.begin("c")
        .cells("iommu-map", &[0, 12, 10, 0, 0x100])
        .cells("msi-map", &[0, 99, 11, 0x100]) // unknown target: judged by any cell
        .cells("msi-map-mask", &[0xff])
        .end();
    fdt.begin("aliases")
        .strings("msi", &["/iommu@1/msi@2"])
        .strings("iommu", &["/iommu@1"])
        .strings("other", &["/iommu@3"])
        .strings("similar", &["/iommu@10"])
        .end();
    fdt.begin("chosen")
        .strings("stdout-path", &["msi:115200n8"])
        .end();
    fdt.end();
    let source = fdt.finish();
    let edits = GuestTreeEdits::new(&GUEST_RAM).remove(&["/iommu@1"]);
    let guest = build(&source, &edits).unwrap();
    let fdt = Fdt::new(&guest).unwrap();
    let has = |path: &str, name: &str| property(&fdt, path, name).is_some();
    assert!(has("/a", "iommus"));
    assert!(!has("/a", "msi-parent"));
    assert!(!has("/b", "iommus"));
    assert!(!has("/b", "iommu-map"));
    assert!(!has("/b", "iommu-map-mask"));
    assert!(has("/b", "msi-map"));
    assert!(has("/b", "msi-map-mask"));
    assert!(has("/c", "iommu-map"));
    assert!(!has("/c", "msi-map"));
    assert!(!has("/c", "msi-map-mask"));
    assert!(!has("/aliases", "msi"));
    assert!(!has("/aliases", "iommu"));
    assert!(has("/aliases", "other"));
    assert!(has("/aliases", "similar"));
    assert!(!has("/chosen", "stdout-path"));
}

#[test]
fn impossible_edits_are_refused() {
    let nine = [IpaRange::new(0, 1); 9];
    let empty = [IpaRange::new(0x1000, 0)];
    let wrapping = [IpaRange::new(u64::MAX, 2)];
    let overlapping = [IpaRange::new(0, 0x2000), IpaRange::new(0x1000, 0x2000)];
    let cases: [(GuestTreeEdits<'_>, GuestTreeError); 9] = [
        (GuestTreeEdits::new(&[]), GuestTreeError::GuestMemoryCount),
        (GuestTreeEdits::new(&nine), GuestTreeError::GuestMemoryCount),
        (
            GuestTreeEdits::new(&empty),
            GuestTreeError::GuestMemoryRange(IpaRange::new(0x1000, 0)),
        ),
        (
            GuestTreeEdits::new(&wrapping),
            GuestTreeError::GuestMemoryRange(IpaRange::new(u64::MAX, 2)),
        ),
        (
            GuestTreeEdits::new(&overlapping),
            GuestTreeError::GuestMemoryRange(IpaRange::new(0x1000, 0x2000)),
        ),
        (
            GuestTreeEdits::new(&GUEST_RAM).bootargs("a\0b"),
            GuestTreeError::Bootargs,
        ),
        (
            GuestTreeEdits::new(&GUEST_RAM).initrd(IpaRange::new(u64::MAX, 1)),
            GuestTreeError::Initrd,
        ),
        (
            GuestTreeEdits::new(&GUEST_RAM).remove(&["/ok", "pl011@9040000"]),
            GuestTreeError::RemovedPath(1),
        ),
        (
            GuestTreeEdits::new(&GUEST_RAM).remove(&["/"]),
            GuestTreeError::RemovedPath(0),
        ),
    ];
    for (edits, error) in cases {
        assert_eq!(build(QEMU_VIRT_DTB, &edits), Err(error), "{edits:?}");
    }
    let long = "x".repeat(2049);
    assert_eq!(
        build(
            QEMU_VIRT_DTB,
            &GuestTreeEdits::new(&GUEST_RAM).bootargs(&long)
        ),
        Err(GuestTreeError::Bootargs)
    );
    let many = ["/a"; MAX_REMOVED_NODES + 1];
    assert_eq!(
        build(
            QEMU_VIRT_DTB,
            &GuestTreeEdits::new(&GUEST_RAM).remove(&many)
        ),
        Err(GuestTreeError::TooManyRemovedNodes)
    );
    let all = ["/a"; MAX_REMOVED_NODES];
    assert!(build(QEMU_VIRT_DTB, &GuestTreeEdits::new(&GUEST_RAM).remove(&all)).is_ok());
}

#[test]
fn bounds_on_the_source_are_errors() {
    let deep = common::tree(|fdt| {
        for level in 0..100 {
            fdt.begin(&format!("n{level}"));
        }
        for _ in 0..100 {
            fdt.end();
        }
    });
    assert_eq!(build(&deep, &edits()), Err(GuestTreeError::TooDeep));
    let phandles = common::tree(|fdt| {
        fdt.begin("big");
        for index in 0..=MAX_REMOVED_PHANDLES as u32 {
            fdt.begin(&format!("n{index}"))
                .cells("phandle", &[100 + index])
                .end();
        }
        fdt.end();
    });
    assert_eq!(
        build(
            &phandles,
            &GuestTreeEdits::new(&GUEST_RAM).remove(&["/big"])
        ),
        Err(GuestTreeError::TooManyRemovedPhandles)
    );
    let three_cells = common::tree(|_| {});
    let mut three_cells = three_cells;
    // The root's `#address-cells` is the first property: patch its value to 3.
    let structure = read_u32(&three_cells, 8) as usize;
    assert_eq!(read_u32(&three_cells, structure + 8), 3);
    write_u32(&mut three_cells, structure + 20, 3);
    assert_eq!(
        build(&three_cells, &edits()),
        Err(GuestTreeError::RootCells)
    );
}

const FIXTURES: &[&[u8]] = &[QEMU_VIRT_DTB, FVP_DTB];

#[test]
fn every_truncation_is_an_error() {
    for fixture in FIXTURES {
        for length in 0..fixture.len() {
            let truncated = &fixture[..length];
            assert!(build(truncated, &edits()).is_err(), "length {length}");
            if length >= 8 {
                let mut lying = truncated.to_vec();
                write_u32(&mut lying, 4, length as u32);
                assert!(
                    build(&lying, &edits()).is_err(),
                    "length {length}, totalsize fixed"
                );
            }
        }
    }
}

#[test]
fn every_single_byte_corruption_is_survived() {
    let mut out = vec![0; 16 << 10];
    for fixture in FIXTURES {
        for offset in 0..fixture.len() {
            for pattern in [0xff, 0x01] {
                let mut corrupted = fixture.to_vec();
                corrupted[offset] ^= pattern;
                if let Ok(length) = build_guest_tree(&corrupted, &edits(), &mut out) {
                    // Whatever is accepted gives a blob dtoolkit can read.
                    Fdt::new(&out[..length]).unwrap();
                }
            }
        }
    }
}

#[test]
fn a_size_dt_struct_shorter_than_the_walk_is_malformed() {
    let mut blob = QEMU_VIRT_DTB.to_vec();
    let size = read_u32(&blob, 36);
    write_u32(&mut blob, 36, size - 4);
    assert_eq!(
        build(&blob, &edits()),
        Err(GuestTreeError::Source(BlobError::Structure))
    );
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut out = [0u8; 4096];
        let _ = build_guest_tree(&bytes, &edits(), &mut out);
    }

    #[test]
    fn random_word_overwrites_of_real_dtbs_never_panic(
        fixture in 0..FIXTURES.len(),
        writes in proptest::collection::vec((any::<prop::sample::Index>(), any::<u32>()), 1..8),
        out_size in 0usize..(16 << 10),
    ) {
        let mut blob = FIXTURES[fixture].to_vec();
        for (index, value) in writes {
            let offset = index.index(blob.len() / 4) * 4;
            write_u32(&mut blob, offset, value);
        }
        let mut out = vec![0; out_size];
        if let Ok(length) = build_guest_tree(&blob, &edits(), &mut out) {
            prop_assert!(Fdt::new(&out[..length]).is_ok());
        }
    }

    #[test]
    fn any_guest_ram_is_exactly_what_discovery_reads_back(
        banks in proptest::collection::vec((0u64..0x100, 1u64..0x10), 1..=8),
    ) {
        // Non-overlapping banks at 1 GiB steps, sizes in MiB.
        let mut ram: Vec<IpaRange> = banks
            .iter()
            .enumerate()
            .map(|(index, &(offset, size))| {
                IpaRange::new(((index as u64) << 30) + (offset << 20), size << 20)
            })
            .collect();
        ram.reverse();
        let guest = build(QEMU_VIRT_DTB, &GuestTreeEdits::new(&ram)).unwrap();
        let mut expected: Vec<_> = ram.iter().map(|r| PhysRange::new(r.base.0, r.size)).collect();
        expected.sort_unstable_by_key(|r| r.base);
        let found = discover(&guest).unwrap();
        prop_assert_eq!(found.memory.as_slice(), expected.as_slice());
        let again = build(&guest, &GuestTreeEdits::new(&ram)).unwrap();
        prop_assert_eq!(&again, &guest);
    }
}
