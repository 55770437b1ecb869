//! The hypervisor's own EL2 address space: what it maps, with which permissions.
//!
//! The map is an identity map built once at boot from the image's sections (known from the
//! linker) and the devices the platform data names. It follows three rules, each checked here
//! before anything is mapped and pinned down by host tests:
//!
//! - **W^X**: code is read-only and executable; everything else is execute-never, and only the
//!   image's data, stack and table pool are writable.
//! - **Least mapping**: guest RAM is not mapped at all. The hypervisor reaches guest memory only
//!   through explicit, checked windows (the device tree it boots from is mapped read-only), so a
//!   stray pointer faults instead of corrupting a guest.
//! - **No overlap**: two regions never share a page, so no address has two sets of attributes.
//! - **Guarded stacks**: the lowest page of every EL2 stack is left unmapped, so a stack that
//!   overflows takes a data abort (reported, the run stops) instead of silently writing the
//!   statics below it.

use crate::page_pool::PagePool;
use aarch64_paging::{
    MapError, Mapping,
    descriptor::El23Attributes,
    paging::{El2, MemoryRegion},
};
use smmu::PhysRange;

/// The translation granule.
pub const PAGE_SIZE: u64 = 4096;

/// The hypervisor's carve-out at the start of RAM: the boot device tree, the image and its
/// pools (see `hyp/build.rs`). Guest RAM starts right after it.
pub const HYPERVISOR_CARVE_OUT: u64 = 32 << 20;

/// The guest boot window's size: the guest's device tree goes there.
pub const GUEST_BOOT_WINDOW_SIZE: u64 = 2 << 20;

/// The most RAM a guest is given: the SMMU's stage-2 tables and DMA pin counts for its RAM are
/// static, sized at build time for this much (see `crate::vsmmu`). RAM beyond it is left out of
/// the guest's device tree and both stage 2s.
pub const MAX_GUEST_RAM: u64 = 2 << 30;

/// Where guest RAM appears in the EL2 map, after boot: at its physical address plus this
/// offset (a whole number of GiB, so block mappings stay possible), read-write and
/// execute-never. The identity map still leaves guest RAM out, so a stray identity pointer
/// faults; only `crate::guest_memory` computes addresses in the alias.
pub const GUEST_RAM_ALIAS_OFFSET: u64 = 0x30_0000_0000;

/// The name of the guest RAM alias's region.
pub const GUEST_RAM_ALIAS: &str = "guest RAM alias";

/// Root level of the EL2 table: with the 4 KiB granule and T0SZ = 25 (512 GiB of VA, what
/// `aarch64-rt` programs into TCR_EL2), the walk starts at level 1. 512 GiB reaches QEMU virt's
/// high PCIe ECAM at 0x40_1000_0000.
pub const ROOT_LEVEL: usize = 1;

/// The highest address (exclusive) the EL2 map can cover with [`ROOT_LEVEL`].
pub const VA_LIMIT: u64 = 1 << 39;

/// Memory attribute indices: MAIR_EL2 as `aarch64-rt` programs it (`DEFAULT_MAIR`).
const ATTR_DEVICE_NGNRE: El23Attributes = El23Attributes::ATTRIBUTE_INDEX_0;
const ATTR_NORMAL_WRITE_BACK: El23Attributes = El23Attributes::ATTRIBUTE_INDEX_1;

/// What a region holds, which decides its permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum RegionKind {
    /// The image's code: read-only, executable.
    Code,
    /// Constants and anything else only read: read-only, execute-never.
    ReadOnly,
    /// Data, bss, stacks, page-table pool: read-write, execute-never.
    ReadWrite,
    /// A device's registers: Device-nGnRE, read-write, execute-never.
    Device,
}

impl RegionKind {
    /// The EL2 stage-1 attributes for this kind of region.
    #[must_use]
    pub fn attributes(self) -> El23Attributes {
        let normal = El23Attributes::VALID
            | ATTR_NORMAL_WRITE_BACK
            | El23Attributes::INNER_SHAREABLE
            | El23Attributes::ACCESSED;
        match self {
            Self::Code => normal | El23Attributes::READ_ONLY,
            Self::ReadOnly => normal | El23Attributes::READ_ONLY | El23Attributes::XN,
            Self::ReadWrite => normal | El23Attributes::XN,
            Self::Device => {
                El23Attributes::VALID
                    | ATTR_DEVICE_NGNRE
                    | El23Attributes::ACCESSED
                    | El23Attributes::XN
            }
        }
    }
}

/// One region of the EL2 map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub struct Region {
    /// A name for logs and errors.
    pub name: &'static str,
    /// The addresses, page-aligned.
    pub range: PhysRange,
    /// What it holds.
    pub kind: RegionKind,
}

/// The hypervisor image's sections, as the linker placed them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageLayout {
    /// `.init` and `.text`.
    pub text: PhysRange,
    /// `.rodata` and `.got`.
    pub rodata: PhysRange,
    /// `.data`, `.bss`, the stacks and the page-table pool: everything written at run time.
    pub writable: PhysRange,
}

/// The devices the hypervisor itself drives, and the read-only boot inputs it must see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlatformWindows {
    /// The UART the hypervisor logs on.
    pub log_uart: PhysRange,
    /// The physical SMMUv3's register pages.
    pub smmu: PhysRange,
    /// The GIC distributor.
    pub gic_distributor: PhysRange,
    /// The GIC redistributors.
    pub gic_redistributor: PhysRange,
    /// The flattened device tree the hypervisor was booted with.
    pub device_tree: PhysRange,
    /// A window of guest RAM the hypervisor writes the guest's boot inputs into (its device
    /// tree), read-write, unmapped again before the guest runs.
    pub guest_boot: Option<PhysRange>,
}

/// Why a layout was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum LayoutError {
    /// A region is empty.
    Empty(&'static str),
    /// A region runs past the end of the address space or past what the EL2 table covers.
    OutOfRange(&'static str),
    /// A stack guard page is not a page of the image's writable region, or there are more
    /// than [`MAX_GUARDS`].
    BadGuard,
    /// A code or data section does not start on a page boundary (a linker-script bug: it would
    /// make two kinds of data share a page).
    Misaligned(&'static str),
    /// Two regions share a page.
    Overlap(&'static str, &'static str),
    /// The table builder refused a range.
    Map(&'static str),
    /// More regions than [`MAX_REGIONS`].
    TooManyRegions,
}

/// The name of the guest boot window's region.
pub const GUEST_BOOT_WINDOW: &str = "guest boot window";

/// The most regions the map can hold.
pub const MAX_REGIONS: usize = 24;

/// The most stack guard pages.
pub const MAX_GUARDS: usize = 10;

/// The list of regions, checked.
pub type Regions = heapless::Vec<Region, MAX_REGIONS>;

/// Computes the EL2 map and checks it against the rules in the module docs.
///
/// Image sections must already be page-aligned (the linker script guarantees it); device and
/// device-tree windows are widened to whole pages, since a device smaller than a page still
/// occupies one for the MMU.
///
/// `guards` are pages of the image's writable region left unmapped: the lowest page of each
/// EL2 stack.
pub fn el2_regions(
    image: &ImageLayout,
    windows: &PlatformWindows,
    guards: &[PhysRange],
) -> Result<Regions, LayoutError> {
    let mut regions = Regions::new();
    let image_regions = [
        ("text", image.text, RegionKind::Code),
        ("rodata", image.rodata, RegionKind::ReadOnly),
    ];
    for (name, range, kind) in image_regions {
        if !range.base.is_aligned(PAGE_SIZE) {
            return Err(LayoutError::Misaligned(name));
        }
        push(&mut regions, name, range, kind)?;
    }
    if !image.writable.base.is_aligned(PAGE_SIZE) {
        return Err(LayoutError::Misaligned("data"));
    }
    push_guarded(&mut regions, image.writable, guards)?;
    let window_regions = [
        ("log UART", windows.log_uart, RegionKind::Device),
        ("SMMU", windows.smmu, RegionKind::Device),
        (
            "GIC distributor",
            windows.gic_distributor,
            RegionKind::Device,
        ),
        (
            "GIC redistributor",
            windows.gic_redistributor,
            RegionKind::Device,
        ),
        ("device tree", windows.device_tree, RegionKind::ReadOnly),
    ];
    for (name, range, kind) in window_regions {
        push(&mut regions, name, range, kind)?;
    }
    if let Some(window) = windows.guest_boot {
        push(
            &mut regions,
            GUEST_BOOT_WINDOW,
            window,
            RegionKind::ReadWrite,
        )?;
    }
    for (index, a) in regions.iter().enumerate() {
        for b in regions.iter().skip(index + 1) {
            if a.range.overlaps(&b.range) {
                return Err(LayoutError::Overlap(a.name, b.name));
            }
        }
    }
    Ok(regions)
}

/// Adds the image's writable region as read-write pieces around the guard pages.
fn push_guarded(
    regions: &mut Regions,
    writable: PhysRange,
    guards: &[PhysRange],
) -> Result<(), LayoutError> {
    let mut sorted: heapless::Vec<PhysRange, MAX_GUARDS> =
        heapless::Vec::from_slice(guards).map_err(|_| LayoutError::BadGuard)?;
    sorted.sort_unstable_by_key(|guard| guard.base.get());
    let mut start = writable.base.get();
    for guard in &sorted {
        let inside = guard.base.get() >= start && guard.end() <= writable.end();
        if !inside || guard.size != PAGE_SIZE || !guard.base.is_aligned(PAGE_SIZE) {
            return Err(LayoutError::BadGuard);
        }
        if guard.base.get() > start {
            push(
                regions,
                "data",
                PhysRange::new(start, guard.base.get() - start),
                RegionKind::ReadWrite,
            )?;
        }
        start = guard.end();
    }
    if writable.end() > start {
        push(
            regions,
            "data",
            PhysRange::new(start, writable.end() - start),
            RegionKind::ReadWrite,
        )?;
    }
    Ok(())
}

/// Adds `range`, widened to whole pages, after checking it is non-empty and mappable.
fn push(
    regions: &mut Regions,
    name: &'static str,
    range: PhysRange,
    kind: RegionKind,
) -> Result<(), LayoutError> {
    if range.size == 0 {
        return Err(LayoutError::Empty(name));
    }
    let start = range.base.get() & !(PAGE_SIZE - 1);
    let end = range
        .base
        .get()
        .checked_add(range.size)
        .and_then(|end| end.checked_add(PAGE_SIZE - 1))
        .map(|end| end & !(PAGE_SIZE - 1))
        .filter(|&end| end <= VA_LIMIT)
        .ok_or(LayoutError::OutOfRange(name))?;
    let region = Region {
        name,
        range: PhysRange::new(start, end - start),
        kind,
    };
    regions
        .push(region)
        .map_err(|_| LayoutError::OutOfRange(name))
}

/// The guest RAM alias for `ram`: the virtual addresses [`GUEST_RAM_ALIAS_OFFSET`] above it,
/// read-write and execute-never, checked against the identity `regions` (no shared page) and
/// the EL2 address space.
///
/// # Errors
///
/// [`LayoutError::OutOfRange`] if the alias passes [`VA_LIMIT`] or `ram` is not page-aligned;
/// [`LayoutError::Overlap`] if it meets an identity region.
pub fn guest_ram_alias(ram: PhysRange, regions: &Regions) -> Result<Region, LayoutError> {
    if !ram.base.is_aligned(PAGE_SIZE) || !ram.size.is_multiple_of(PAGE_SIZE) || ram.size == 0 {
        return Err(LayoutError::OutOfRange(GUEST_RAM_ALIAS));
    }
    let start = ram
        .base
        .get()
        .checked_add(GUEST_RAM_ALIAS_OFFSET)
        .ok_or(LayoutError::OutOfRange(GUEST_RAM_ALIAS))?;
    let alias = PhysRange::new(start, ram.size);
    if start.checked_add(ram.size).is_none_or(|end| end > VA_LIMIT) {
        return Err(LayoutError::OutOfRange(GUEST_RAM_ALIAS));
    }
    if let Some(other) = regions.iter().find(|r| r.range.overlaps(&alias)) {
        return Err(LayoutError::Overlap(GUEST_RAM_ALIAS, other.name));
    }
    Ok(Region {
        name: GUEST_RAM_ALIAS,
        range: alias,
        kind: RegionKind::ReadWrite,
    })
}

/// Builds the identity map of `regions` with tables from `pool`.
///
/// The result is not yet active: the caller installs it in TTBR0_EL2 and invalidates the TLB.
pub fn build_map(pool: PagePool, regions: &Regions) -> Result<Mapping<PagePool, El2>, LayoutError> {
    let mut map = Mapping::new(pool, ROOT_LEVEL, El2);
    for region in regions {
        let (Ok(start), Ok(end)) = (
            usize::try_from(region.range.base.get()),
            usize::try_from(region.range.end()),
        ) else {
            return Err(LayoutError::OutOfRange(region.name));
        };
        map.map_range(
            &MemoryRegion::new(start, end),
            aarch64_paging::descriptor::PhysicalAddress(start),
            region.kind.attributes(),
            aarch64_paging::paging::Constraints::empty(),
        )
        .map_err(|error: MapError| {
            let _ = error;
            LayoutError::Map(region.name)
        })?;
    }
    Ok(map)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::page_pool::PageFrame;

    fn image() -> ImageLayout {
        ImageLayout {
            text: PhysRange::new(0x4020_0000, 0x2_0000),
            rodata: PhysRange::new(0x4022_0000, 0x1_0000),
            writable: PhysRange::new(0x4023_0000, 0x8_0000),
        }
    }

    fn windows() -> PlatformWindows {
        PlatformWindows {
            log_uart: PhysRange::new(0x0904_0000, 0x1000),
            smmu: PhysRange::new(0x0905_0000, 0x2_0000),
            gic_distributor: PhysRange::new(0x0800_0000, 0x1_0000),
            gic_redistributor: PhysRange::new(0x080a_0000, 0xf6_0000),
            device_tree: PhysRange::new(0x4000_0000, 0x1_2345),
            guest_boot: Some(PhysRange::new(0x4200_0000, 0x20_0000)),
        }
    }

    fn pool(pages: usize) -> PagePool {
        PagePool::new(Vec::leak(vec![PageFrame::ZEROED; pages]))
    }

    /// The attributes of the page holding `addr`, or `None` when it is unmapped.
    fn lookup(map: &Mapping<PagePool, El2>, addr: u64) -> Option<El23Attributes> {
        let addr = usize::try_from(addr).unwrap();
        let mut found = None;
        map.walk_range(
            &MemoryRegion::new(addr, addr + 1),
            &mut |_, descriptor, level| {
                // A leaf is a page at level 3 or a block (no TABLE bit) above it.
                if descriptor.is_valid() && (level == 3 || !descriptor.is_table_or_page()) {
                    found = Some(descriptor.flags());
                }
                Ok(())
            },
        )
        .unwrap();
        found
    }

    #[test]
    fn stack_guard_pages_are_left_unmapped_and_the_rest_of_the_data_is_not() {
        let guards = [
            PhysRange::new(0x4024_0000, 0x1000),
            PhysRange::new(0x4023_0000, 0x1000),
        ];
        let regions = el2_regions(&image(), &windows(), &guards).unwrap();
        let map = build_map(pool(16), &regions).unwrap();
        for guard in guards {
            assert_eq!(lookup(&map, guard.base.get()), None, "{guard:?}");
        }
        let rw = RegionKind::ReadWrite.attributes();
        for addr in [0x4023_1000, 0x4023_ffff, 0x4024_1000, 0x402a_ffff] {
            let got = lookup(&map, addr).map(|a| a & !El23Attributes::TABLE_OR_PAGE);
            assert_eq!(got, Some(rw), "{addr:#x}");
        }
        // A guard outside the writable region, or not a page, is refused.
        for bad in [
            PhysRange::new(0x4020_0000, 0x1000),
            PhysRange::new(0x4024_0000, 0x2000),
            PhysRange::new(0x4024_0800, 0x1000),
        ] {
            assert_eq!(
                el2_regions(&image(), &windows(), &[bad]),
                Err(LayoutError::BadGuard),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn every_region_gets_the_attributes_of_its_kind_and_nothing_else_is_mapped() {
        let regions = el2_regions(&image(), &windows(), &[]).unwrap();
        let map = build_map(pool(16), &regions).unwrap();
        for region in &regions {
            let attributes = region.kind.attributes();
            for addr in [region.range.base.get(), region.range.end() - 1] {
                let got = lookup(&map, addr).unwrap_or_else(|| panic!("{} unmapped", region.name));
                assert_eq!(
                    got & !El23Attributes::TABLE_OR_PAGE,
                    attributes,
                    "{}",
                    region.name
                );
            }
        }
        // Guest RAM beyond the image, a hole between devices, and the top of the table's reach.
        for addr in [
            0x4100_0000,
            0x4023_0000 + 0x8_0000,
            0x0903_0000,
            VA_LIMIT - 1,
        ] {
            assert_eq!(lookup(&map, addr), None, "{addr:#x} should be unmapped");
        }
    }

    #[test]
    fn no_region_is_both_writable_and_executable() {
        let regions = el2_regions(&image(), &windows(), &[]).unwrap();
        for region in &regions {
            let attributes = region.kind.attributes();
            let writable = !attributes.contains(El23Attributes::READ_ONLY);
            let executable = !attributes.contains(El23Attributes::XN);
            assert!(!(writable && executable), "{} is W+X", region.name);
        }
        assert!(regions.iter().any(|r| r.kind == RegionKind::Code));
    }

    #[test]
    fn devices_are_device_memory_and_never_executable() {
        let attributes = RegionKind::Device.attributes();
        assert!(attributes.contains(El23Attributes::XN));
        assert_eq!(
            attributes & El23Attributes::ATTRIBUTE_INDEX_7,
            ATTR_DEVICE_NGNRE
        );
    }

    #[test]
    fn a_partial_page_window_is_widened_to_whole_pages() {
        let regions = el2_regions(&image(), &windows(), &[]).unwrap();
        let dt = regions.iter().find(|r| r.name == "device tree").unwrap();
        assert_eq!(dt.range, PhysRange::new(0x4000_0000, 0x1_3000));
        assert_eq!(dt.kind, RegionKind::ReadOnly);
    }

    #[test]
    fn overlapping_regions_are_refused_by_name() {
        let mut windows = windows();
        windows.device_tree = PhysRange::new(0x4020_1000, 0x1000);
        assert_eq!(
            el2_regions(&image(), &windows, &[]),
            Err(LayoutError::Overlap("text", "device tree"))
        );
        let mut windows = self::windows();
        windows.smmu = PhysRange::new(0x0904_0800, 0x1000);
        assert_eq!(
            el2_regions(&image(), &windows, &[]),
            Err(LayoutError::Overlap("log UART", "SMMU"))
        );
    }

    #[test]
    fn misaligned_sections_empty_windows_and_out_of_range_windows_are_refused() {
        let mut bad = image();
        bad.rodata.base = smmu::PhysAddr(0x4022_0800);
        assert_eq!(
            el2_regions(&bad, &windows(), &[]),
            Err(LayoutError::Misaligned("rodata"))
        );
        let mut w = windows();
        w.smmu.size = 0;
        assert_eq!(
            el2_regions(&image(), &w, &[]),
            Err(LayoutError::Empty("SMMU"))
        );
        let mut w = windows();
        w.gic_redistributor = PhysRange::new(VA_LIMIT - 0x1000, 0x2000);
        assert_eq!(
            el2_regions(&image(), &w, &[]),
            Err(LayoutError::OutOfRange("GIC redistributor"))
        );
        let mut w = windows();
        w.log_uart = PhysRange::new(u64::MAX - 10, 100);
        assert_eq!(
            el2_regions(&image(), &w, &[]),
            Err(LayoutError::OutOfRange("log UART"))
        );
    }

    #[test]
    fn guest_ram_is_aliased_execute_never_away_from_every_identity_region() {
        let regions = el2_regions(&image(), &windows(), &[]).unwrap();
        let ram = PhysRange::new(0x4200_0000, MAX_GUEST_RAM);
        let alias = guest_ram_alias(ram, &regions).unwrap();
        assert_eq!(alias.range.base.get(), 0x30_4200_0000);
        assert_eq!(alias.range.size, MAX_GUEST_RAM);
        assert!(alias.kind.attributes().contains(El23Attributes::XN));
        assert!(!alias.kind.attributes().contains(El23Attributes::READ_ONLY));
        // Every identity region (QEMU virt's high ECAM included) is elsewhere.
        let ecam = PhysRange::new(0x40_1000_0000, 0x1000_0000);
        assert!(!alias.range.overlaps(&ecam));
        // RAM whose alias would pass the EL2 address space, or meet a region, is refused.
        assert_eq!(
            guest_ram_alias(PhysRange::new(0x50_0000_0000, 0x4000_0000), &regions),
            Err(LayoutError::OutOfRange(GUEST_RAM_ALIAS))
        );
        let mut crowded = regions.clone();
        crowded
            .push(Region {
                name: "high device",
                range: PhysRange::new(0x30_5000_0000, 0x1000),
                kind: RegionKind::Device,
            })
            .unwrap();
        assert_eq!(
            guest_ram_alias(ram, &crowded),
            Err(LayoutError::Overlap(GUEST_RAM_ALIAS, "high device"))
        );
        assert!(guest_ram_alias(PhysRange::new(0x4200_0800, 0x1000), &regions).is_err());
    }

    #[test]
    fn the_map_fits_in_a_small_fixed_pool() {
        let regions = el2_regions(&image(), &windows(), &[]).unwrap();
        // One root plus level-2 and level-3 tables for each cluster of regions.
        let map = build_map(pool(8), &regions).unwrap();
        assert!(map.translation().used() <= 8);
    }
}
