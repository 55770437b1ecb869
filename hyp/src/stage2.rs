//! A guest's stage-2 address space: which of its intermediate physical addresses reach memory
//! or devices, with which attributes.
//!
//! Guests run with IPA == PA (an identity stage 2): guest RAM is the platform's RAM minus the
//! hypervisor's carve-out, and the guest's devices are passed through at their real addresses.
//! Devices come from an allow-list ([`board::guest_devices`]): only what the board data says
//! cannot master memory around the SMMU (or whose memory-touching registers the hypervisor
//! traps) is mapped, page by page, and nothing else. Everything unmapped (the hypervisor's own
//! windows, withheld devices, holes) faults to EL2, where the MMIO handler registry (the GIC
//! distributor and redistributors, the vSMMU) or an injected external abort answers it.
//!
//! Two stage-2 tables are built from this module, deliberately separate:
//! - the **CPU's** (VTTBR_EL2): RAM and the granted devices;
//! - the **SMMU's** (STE.S2TTB for the guest's streams; a `smmu::domain` of 4 KiB pages built
//!   by `crate::vsmmu` from [`dma_regions`]): RAM, plus the one kind of device page
//!   a device must write to, an MSI doorbell (the GIC ITS's GITS_TRANSLATER frame), when the
//!   guest has one (not today: the ITS is withheld until it is emulated, see `guest_boot`). A
//!   device has no other business reaching MMIO through DMA, and keeping the tables apart
//!   means a CPU-side change (such as trapping a page) never needs SMMU invalidation, and DMA
//!   pinning (see `smmu`) concerns only the SMMU's table.
//!
//! Geometry, shared by both: 4 KiB granule, 44-bit IPA (T0SZ = 20), walk from level 0. 44 bits
//! is QEMU's SMMU OAS (stage-2 input size may not exceed it) and covers QEMU virt's high ECAM;
//! starting at level 0 avoids concatenated root tables, which `aarch64-paging` does not build.

use crate::page_pool::PagePool;
use aarch64_paging::{
    Mapping,
    descriptor::{PhysicalAddress, Stage2Attributes},
    paging::{Constraints, MemoryRegion, Stage2},
};
use smmu::PhysRange;

/// IPA size in bits.
pub const IPA_BITS: u32 = 44;
/// VTCR_EL2.T0SZ / STE.S2T0SZ.
pub const T0SZ: u64 = 64 - IPA_BITS as u64;
/// The level the walk starts at.
pub const ROOT_LEVEL: usize = 0;
/// VTCR_EL2.SL0 / STE.S2SL0 encoding for "start at level 0" with the 4 KiB granule.
pub const SL0_LEVEL0: u64 = 2;

/// The stage-2 half of an STE for a table of this module's geometry rooted at `root`: what the
/// SMMU needs to walk it. The one place the hypervisor chooses those fields (walk attributes for
/// a coherent SMMU; stage-2 faults recorded, since a device leaving its guest is the
/// hypervisor's news); `smmu::entry::make` validates them and makes the STE.
#[must_use]
#[allow(clippy::cast_possible_truncation, reason = "T0SZ is 20")]
pub fn smmu_stage2_parameters(
    root: smmu::PhysAddr,
    vmid: smmu::Vmid,
) -> smmu::entry::make::Stage2Parameters {
    use smmu::translation::{AddressSize, Cacheability, Granule, Shareability};
    smmu::entry::make::Stage2Parameters {
        vmid,
        s2ttb: root,
        s2t0sz: T0SZ as u8,
        s2sl0: smmu::entry::make::StartLevel::Level0,
        s2tg: Granule::Size4K,
        s2ps: AddressSize::Bits44,
        s2ir0: Cacheability::WriteBackWriteAllocate,
        s2or0: Cacheability::WriteBackWriteAllocate,
        s2sh0: Shareability::InnerShareable,
        s2r: true,
        s2affd: false,
        s2ptw: false,
    }
}

/// What a stage-2 region holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum Stage2Kind {
    /// Guest RAM: normal write-back memory, read/write/execute.
    Ram,
    /// A passed-through device: Device-nGnRE, read/write, execute-never.
    Device,
}

impl Stage2Kind {
    /// The stage-2 descriptor attributes.
    #[must_use]
    pub fn attributes(self) -> Stage2Attributes {
        let common = Stage2Attributes::VALID
            | Stage2Attributes::ACCESS_FLAG
            | Stage2Attributes::S2AP_ACCESS_RW;
        match self {
            Self::Ram => {
                common
                    | Stage2Attributes::MEMATTR_NORMAL_INNER_WB
                    | Stage2Attributes::MEMATTR_NORMAL_OUTER_WB
                    | Stage2Attributes::SH_INNER
            }
            Self::Device => common | Stage2Attributes::MEMATTR_DEVICE_nGnRE | Stage2Attributes::XN,
        }
    }
}

/// One region of a guest's stage 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub struct Stage2Region {
    /// The addresses (IPA == PA), page-aligned.
    pub range: PhysRange,
    /// What they hold.
    pub kind: Stage2Kind,
}

/// The most regions a stage 2 holds: RAM, a dozen granted devices, and one SGI_base frame per
/// CPU's redistributor.
pub const MAX_STAGE2_REGIONS: usize = 32;
/// A list of stage-2 regions.
pub type Stage2Regions = heapless::Vec<Stage2Region, MAX_STAGE2_REGIONS>;

/// Why a stage-2 plan was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum Stage2Error {
    /// A range is not page-aligned.
    Misaligned,
    /// A range lies beyond the IPA size.
    BeyondIpaSize,
    /// More regions than [`MAX_STAGE2_REGIONS`].
    TooManyRegions,
    /// Guest RAM overlaps something the hypervisor keeps.
    RamOverlapsHypervisor,
    /// A device window overlaps something the hypervisor keeps, or guest RAM.
    DeviceOverlapsHypervisor,
    /// The table builder refused a range.
    Map,
}

/// What the guest is given and what the hypervisor keeps.
#[derive(Clone, Copy, Debug)]
pub struct GuestPlatform<'a> {
    /// The guest's RAM.
    pub ram: PhysRange,
    /// The device windows the guest is given, mapped whole (page-aligned): the allow-list's
    /// granted entries, and each redistributor's SGI_base frame.
    pub devices: &'a [PhysRange],
    /// What the guest must never reach (the hypervisor's image and carve-out, its UART, the
    /// SMMU, withheld devices): checked against every window above, as a second line behind the
    /// allow-list.
    pub hypervisor_windows: &'a [PhysRange],
    /// MSI doorbells the guest's devices write to (the ITS's GITS_TRANSLATER page).
    pub msi_doorbells: &'a [PhysRange],
}

const PAGE: u64 = 4096;

fn check(range: PhysRange) -> Result<PhysRange, Stage2Error> {
    if !range.base.is_aligned(PAGE) || !range.size.is_multiple_of(PAGE) {
        return Err(Stage2Error::Misaligned);
    }
    if range.end() > 1 << IPA_BITS || range.base.get().checked_add(range.size).is_none() {
        return Err(Stage2Error::BeyondIpaSize);
    }
    Ok(range)
}

fn push(
    regions: &mut Stage2Regions,
    range: PhysRange,
    kind: Stage2Kind,
) -> Result<(), Stage2Error> {
    if range.size == 0 {
        return Ok(());
    }
    regions
        .push(Stage2Region {
            range: check(range)?,
            kind,
        })
        .map_err(|_| Stage2Error::TooManyRegions)
}

/// The CPU's stage 2 for a guest: RAM plus the granted devices.
pub fn cpu_regions(platform: &GuestPlatform<'_>) -> Result<Stage2Regions, Stage2Error> {
    let mut regions = ram_regions(platform)?;
    for &device in platform.devices {
        let touches_hypervisor = platform
            .hypervisor_windows
            .iter()
            .any(|w| w.overlaps(&device));
        if touches_hypervisor || device.overlaps(&platform.ram) {
            return Err(Stage2Error::DeviceOverlapsHypervisor);
        }
        push(&mut regions, device, Stage2Kind::Device)?;
    }
    Ok(regions)
}

/// The SMMU's stage 2 for a guest's devices: RAM and the MSI doorbells.
pub fn dma_regions(platform: &GuestPlatform<'_>) -> Result<Stage2Regions, Stage2Error> {
    let mut regions = ram_regions(platform)?;
    for &doorbell in platform.msi_doorbells {
        if platform
            .hypervisor_windows
            .iter()
            .any(|w| w.overlaps(&doorbell))
        {
            return Err(Stage2Error::RamOverlapsHypervisor);
        }
        push(&mut regions, doorbell, Stage2Kind::Device)?;
    }
    Ok(regions)
}

/// Guest RAM alone, after checking it overlaps nothing the hypervisor keeps.
fn ram_regions(platform: &GuestPlatform<'_>) -> Result<Stage2Regions, Stage2Error> {
    if platform
        .hypervisor_windows
        .iter()
        .any(|w| w.overlaps(&platform.ram))
    {
        return Err(Stage2Error::RamOverlapsHypervisor);
    }
    let mut regions = Stage2Regions::new();
    push(&mut regions, platform.ram, Stage2Kind::Ram)?;
    Ok(regions)
}

/// Builds the identity stage-2 table for `regions` from `pool`.
pub fn build(
    pool: PagePool,
    regions: &Stage2Regions,
) -> Result<Mapping<PagePool, Stage2>, Stage2Error> {
    let mut map = Mapping::new(pool, ROOT_LEVEL, Stage2);
    for region in regions {
        let (Ok(start), Ok(end)) = (
            usize::try_from(region.range.base.get()),
            usize::try_from(region.range.end()),
        ) else {
            return Err(Stage2Error::BeyondIpaSize);
        };
        map.map_range(
            &MemoryRegion::new(start, end),
            PhysicalAddress(start),
            region.kind.attributes(),
            Constraints::empty(),
        )
        .map_err(|_| Stage2Error::Map)?;
    }
    Ok(map)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::page_pool::PageFrame;

    const HYP: [PhysRange; 3] = [
        PhysRange::new(0x4000_0000, 0x200_0000), // carve-out
        PhysRange::new(0x0904_0000, 0x1000),     // log UART
        PhysRange::new(0x0905_0000, 0x2_0000),   // SMMU
    ];
    const DOORBELL: [PhysRange; 1] = [PhysRange::new(0x0809_0000, 0x1000)];
    /// QEMU virt's allow-list as `guest_boot` turns it into windows: the passed-through
    /// entries, and the SGI_base frames of two CPUs' redistributors.
    const DEVICES: [PhysRange; 10] = [
        PhysRange::new(0x0900_0000, 0x1000),            // UART0
        PhysRange::new(0x0901_0000, 0x1000),            // RTC
        PhysRange::new(0x0903_0000, 0x1000),            // GPIO
        PhysRange::new(0x0800_0000, 0x1_0000),          // GIC distributor
        PhysRange::new(0x080b_0000, 0x1_0000),          // CPU 0's SGI_base
        PhysRange::new(0x080d_0000, 0x1_0000),          // CPU 1's SGI_base
        PhysRange::new(0x40_1000_0000, 0x1000_0000),    // PCIe ECAM
        PhysRange::new(0x3eff_0000, 0x1_0000),          // PCIe I/O
        PhysRange::new(0x1000_0000, 0x2eff_0000),       // PCIe 32-bit
        PhysRange::new(0x80_0000_0000, 0x80_0000_0000), // PCIe 64-bit
    ];

    fn qemu_virt() -> GuestPlatform<'static> {
        GuestPlatform {
            ram: PhysRange::new(0x4200_0000, 0x3e00_0000),
            devices: &DEVICES,
            hypervisor_windows: &HYP,
            msi_doorbells: &DOORBELL,
        }
    }

    fn lookup(map: &Mapping<PagePool, Stage2>, addr: u64) -> Option<Stage2Attributes> {
        let addr = usize::try_from(addr).unwrap();
        let mut found = None;
        map.walk_range(&MemoryRegion::new(addr, addr + 1), &mut |_, d, level| {
            if d.is_valid() && (level == 3 || !d.is_table_or_page()) {
                found = Some(d.flags() & !Stage2Attributes::TABLE_OR_PAGE);
            }
            Ok(())
        })
        .unwrap();
        found
    }

    fn pool() -> PagePool {
        PagePool::new(Vec::leak(vec![PageFrame::ZEROED; 64]))
    }

    #[test]
    fn the_guest_reaches_its_ram_and_granted_devices_and_nothing_else() {
        let regions = cpu_regions(&qemu_virt()).unwrap();
        let map = build(pool(), &regions).unwrap();
        let ram = Stage2Kind::Ram.attributes();
        let device = Stage2Kind::Device.attributes();
        for addr in [0x4200_0000, 0x6000_0000, 0x7fff_f000] {
            assert_eq!(lookup(&map, addr), Some(ram), "RAM {addr:#x}");
        }
        for addr in [
            0x0800_0000,    // GIC distributor
            0x080b_0000,    // an SGI_base frame
            0x0900_0000,    // UART0
            0x0901_0000,    // RTC
            0x1000_0000,    // PCIe 32-bit window
            0x40_1000_0000, // PCIe ECAM
        ] {
            assert_eq!(lookup(&map, addr), Some(device), "device {addr:#x}");
        }
        for addr in [
            0x0,         // flash: the platform's firmware
            0x0808_0000, // GIC ITS
            0x080a_0000, // CPU 0's RD_base frame: trapped
            0x080c_0000, // CPU 1's RD_base frame: trapped
            0x0902_0000, // fw_cfg: DMA around the SMMU
            0x0904_0000, // the hypervisor's UART
            0x0905_0000, // the SMMU
            0x0906_f000,
            0x0a00_0000, // virtio-mmio transports
            0x0a00_3e00,
            0x0c00_0000, // the platform bus
            0x4000_0000, // the hypervisor's carve-out
            0x4020_0000,
            0x41ff_f000,
            0x8000_0000, // past guest RAM
        ] {
            assert_eq!(lookup(&map, addr), None, "{addr:#x} must be unmapped");
        }
    }

    #[test]
    fn a_device_window_touching_the_hypervisor_or_guest_ram_is_refused() {
        for bad in [
            PhysRange::new(0x0905_0000, 0x1000), // the SMMU
            PhysRange::new(0x4000_0000, 0x1000), // the carve-out
            PhysRange::new(0x4300_0000, 0x1000), // guest RAM
        ] {
            let devices = [DEVICES[0], bad];
            let platform = GuestPlatform {
                devices: &devices,
                ..qemu_virt()
            };
            assert_eq!(
                cpu_regions(&platform),
                Err(Stage2Error::DeviceOverlapsHypervisor),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_smmu_stage2_maps_ram_and_the_msi_doorbell_only() {
        let regions = dma_regions(&qemu_virt()).unwrap();
        assert_eq!(regions.len(), 2);
        let map = build(pool(), &regions).unwrap();
        assert_eq!(
            lookup(&map, 0x4200_0000),
            Some(Stage2Kind::Ram.attributes())
        );
        assert_eq!(
            lookup(&map, 0x0809_0000),
            Some(Stage2Kind::Device.attributes())
        );
        // The rest of the ITS (its command queue registers), the GIC, UART0, ECAM: unreachable.
        for addr in [
            0x0808_0000,
            0x0809_1000,
            0x0800_0000,
            0x0900_0000,
            0x40_1000_0000,
        ] {
            assert_eq!(lookup(&map, addr), None, "{addr:#x}");
        }
    }

    #[test]
    fn a_doorbell_inside_hypervisor_memory_is_refused() {
        let mut platform = qemu_virt();
        let inside = [PhysRange::new(0x0905_0000, 0x1000)];
        platform.msi_doorbells = &inside;
        assert_eq!(
            dma_regions(&platform),
            Err(Stage2Error::RamOverlapsHypervisor)
        );
    }

    #[test]
    fn the_smmu_stage2_parameters_make_a_valid_ste_on_qemu_virt() {
        use smmu::entry::{install::check_physical_ste, make};
        use smmu::registers::{Features, IdRegisters};
        let features = Features::decode(&IdRegisters::QEMU_VIRT).unwrap();
        // A root in the hypervisor's carve-out, where its table pools live.
        let root = smmu::PhysAddr(0x4030_0000);
        let parameters = smmu_stage2_parameters(root, smmu::Vmid(1));
        let ste =
            make::make_stage2_ste(&make::Stage2Translation::new(parameters, &features).unwrap());
        assert_eq!(check_physical_ste(&ste), Ok(()));
        assert!(ste.s2aa64() && ste.s2r());
        assert_eq!(u64::from(ste.s2t0sz()), T0SZ);
        assert_eq!(ste.s2ttb(), root);
    }

    #[test]
    fn devices_never_execute_and_ram_is_normal_write_back() {
        assert!(
            Stage2Kind::Device
                .attributes()
                .contains(Stage2Attributes::XN)
        );
        assert!(!Stage2Kind::Ram.attributes().contains(Stage2Attributes::XN));
        assert!(
            Stage2Kind::Ram
                .attributes()
                .contains(Stage2Attributes::MEMATTR_NORMAL_INNER_WB)
        );
    }

    #[test]
    fn the_regions_are_ram_then_the_devices_in_the_order_given() {
        let regions = cpu_regions(&qemu_virt()).unwrap();
        let ranges: Vec<_> = regions.iter().map(|r| (r.range, r.kind)).collect();
        let mut expected = vec![(PhysRange::new(0x4200_0000, 0x3e00_0000), Stage2Kind::Ram)];
        expected.extend(DEVICES.iter().map(|&d| (d, Stage2Kind::Device)));
        assert_eq!(ranges, expected);
    }

    #[test]
    fn ram_overlapping_the_hypervisor_or_beyond_the_ipa_size_is_refused() {
        let mut platform = qemu_virt();
        platform.ram = PhysRange::new(0x4100_0000, 0x100_0000);
        assert_eq!(
            cpu_regions(&platform),
            Err(Stage2Error::RamOverlapsHypervisor)
        );
        let mut platform = qemu_virt();
        platform.ram = PhysRange::new(1 << 44, 0x1000);
        assert_eq!(cpu_regions(&platform), Err(Stage2Error::BeyondIpaSize));
        let mut platform = qemu_virt();
        platform.ram = PhysRange::new(0x4200_0800, 0x1000);
        assert_eq!(cpu_regions(&platform), Err(Stage2Error::Misaligned));
    }
}
