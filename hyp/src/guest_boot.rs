//! Booting the guest: its device tree, its stage 2, then entry on the boot CPU.
//!
//! 1. The guest's device tree is derived from the platform's (`board::build_guest_tree`): RAM
//!    limited to the guest's, the hypervisor's devices (its UART, the SMMU) removed with every
//!    reference to them, `/chosen` set from the command line. It is written at the start of
//!    guest RAM through the EL2 map's guest boot window, which is then unmapped.
//! 2. The CPU's stage 2 is built (`crate::stage2`): guest RAM and the passed-through devices.
//! 3. The boot CPU enters the guest at EL1: a Linux `Image` with x0 = the device tree, or a
//!    bare-metal ELF with the same convention. Secondary vCPUs come later, by PSCI `CPU_ON`.

use crate::arch::{
    guest,
    power::{ExitStatus, exit},
};
use crate::boot::GUEST_BOOT_WINDOW_SIZE;
use crate::cmdline::{CommandLine, GuestKind};
use crate::mmio::MmioRegistry;
use crate::page_pool::{PagePool, StaticFrames};
use crate::stage2::{self, GuestPlatform};
use aarch64_paging::{
    Mapping,
    descriptor::{El23Attributes, PhysicalAddress},
    paging::{Constraints, El2, MemoryRegion},
};
use board::{GuestTreeEdits, IpaRange, build_guest_tree};
use smmu::PhysRange;

/// Tables for the guest's CPU stage 2: a few per device hole plus 2 MiB-block RAM.
const GUEST_STAGE2_POOL_PAGES: usize = 64;
static GUEST_STAGE2_TABLES: StaticFrames<GUEST_STAGE2_POOL_PAGES> = StaticFrames::new();
/// Tables for the SMMU's stage 2 of the guest's devices: RAM only, in 2 MiB blocks.
const SMMU_STAGE2_POOL_PAGES: usize = 16;
static SMMU_STAGE2_TABLES: StaticFrames<SMMU_STAGE2_POOL_PAGES> = StaticFrames::new();

/// Everything needed to boot the guest.
#[allow(
    missing_debug_implementations,
    reason = "holds the EL2 map, which is not Debug"
)]
pub struct GuestBoot<'a> {
    /// Linux or bare metal, and where.
    pub kind: GuestKind,
    /// The hypervisor's command line (guest arguments, initrd, vCPU count).
    pub command_line: &'a CommandLine<'a>,
    /// The platform the device tree named.
    pub platform: &'static board::Platform,
    /// What the device tree says.
    pub discovered: &'a board::Discovered<'a>,
    /// The platform's device tree, the source of the guest's.
    pub source_tree: &'a [u8],
    /// Guest RAM (IPA == PA).
    pub ram: PhysRange,
    /// The hypervisor's carve-out at the start of RAM.
    pub hypervisor_carve_out: PhysRange,
    /// The EL2 map, to close the guest boot window.
    pub el2_map: &'a mut Mapping<PagePool, El2>,
}

unsafe extern "C" {
    /// The top of the boot CPU's stack (`aarch64-rt`'s `image.ld`).
    static boot_stack_end: u8;
}

fn fail(what: &str) -> ! {
    defmt::error!("guest boot: {=str}", what);
    exit(ExitStatus::Failure);
}

/// Device-tree paths of the nodes the guest must not see, per platform.
fn hypervisor_nodes(platform: &board::Platform) -> &'static [&'static str] {
    match platform.name {
        // The ITS is withheld too: it is a DMA master outside the SMMU that reads and writes
        // tables at addresses its programmer chooses, so a guest owning it could aim it at
        // hypervisor memory. Until it is emulated, the guest's PCI devices use wired
        // interrupts (INTx through the host bridge's interrupt-map), and the guest tree loses
        // the msi-map that named it.
        "qemu-virt" => &[
            "/pl011@9040000",
            "/smmuv3@9050000",
            "/intc@8000000/its@8080000",
        ],
        // FVP's UART1 sits under the motherboard bus; its SMMU at the root.
        "fvp-base" => &[
            "/bus@8000000/motherboard-bus@8000000/iofpga-bus@300000000/uart@a0000",
            "/iommu@2b400000",
        ],
        _ => &[],
    }
}

/// Boots the guest on this (the boot) CPU. Never returns: the guest runs until it powers off.
pub fn boot(boot: GuestBoot<'_>) -> ! {
    let GuestBoot {
        kind,
        command_line,
        platform,
        discovered,
        ram,
        hypervisor_carve_out,
        ..
    } = boot;
    let entry = match kind {
        GuestKind::Linux { image } => {
            // The arm64 boot protocol: a 2 MiB-aligned Image inside RAM.
            if image % (2 << 20) != 0 {
                fail("the Linux Image must be 2 MiB aligned");
            }
            image
        }
        GuestKind::BareMetal { entry } => entry,
    };
    if !ram.contains(smmu::PhysAddr(entry)) || entry < ram.base.get() + GUEST_BOOT_WINDOW_SIZE {
        defmt::error!(
            "guest entry {=u64:#x} is not in guest RAM above the device-tree window {}",
            entry,
            ram
        );
        fail("bad entry point");
    }

    let tree_size = write_guest_tree(&boot);
    close_boot_window(boot.el2_map, ram.base.get());
    defmt::info!(
        "guest device tree: {=usize} bytes at {=u64:#x}",
        tree_size,
        ram.base.get()
    );

    let high_devices: heapless::Vec<PhysRange, 2> = discovered
        .pcie
        .iter()
        .flat_map(|pcie| [Some(pcie.ecam), pcie.mmio64])
        .flatten()
        .collect();
    let hypervisor_windows = [
        hypervisor_carve_out,
        platform.uart1,
        platform.smmu.registers,
    ];
    // The ITS (if any) is the hypervisor's to keep from the guest: see `hypervisor_nodes`.
    let its = discovered.gic.as_ref().and_then(|gic| gic.its);
    let hypervisor_windows: heapless::Vec<PhysRange, 4> =
        hypervisor_windows.iter().copied().chain(its).collect();
    let hypervisor_windows = &hypervisor_windows[..];
    // No MSI doorbell for devices while the ITS is withheld; when it is emulated, its
    // GITS_TRANSLATER page (second 64 KiB frame) goes here, the only device page DMA may reach.
    let doorbells: [PhysRange; 0] = [];
    let guest_platform = GuestPlatform {
        ram,
        device_space: PhysRange::new(0, ram.base.get().min(hypervisor_carve_out.base.get())),
        high_devices: &high_devices,
        hypervisor_windows,
        msi_doorbells: &doorbells,
    };
    let regions = match stage2::cpu_regions(&guest_platform) {
        Ok(regions) => regions,
        Err(error) => {
            defmt::error!("guest stage 2 refused: {}", error);
            fail("stage 2");
        }
    };
    let Some(pool) = GUEST_STAGE2_TABLES.take() else {
        fail("stage-2 pool already taken")
    };
    let map = match stage2::build(pool, &regions) {
        Ok(map) => map,
        Err(error) => {
            defmt::error!("guest stage 2: {}", error);
            fail("stage 2");
        }
    };
    for region in &regions {
        defmt::debug!("guest stage 2: {}", region);
    }
    defmt::info!(
        "guest stage 2: {=usize} regions, {=usize} of {=usize} tables, VMID {=u16}",
        regions.len(),
        map.translation().used(),
        map.translation().capacity(),
        guest::GUEST_VMID
    );

    confine_guest_devices(&guest_platform, discovered);

    let vcpus = command_line
        .smp
        .map_or(discovered.cpu_count as usize, |n| n as usize);
    guest::set_vm(map.root_address().0 as u64, ram, vcpus, MmioRegistry::new());
    guest::configure_cpu();
    match kind {
        GuestKind::Linux { .. } => defmt::info!(
            "entering Linux at {=u64:#x}, {=usize} vCPUs allowed",
            entry,
            vcpus
        ),
        GuestKind::BareMetal { .. } => {
            defmt::info!("entering the bare-metal guest at {=u64:#x}", entry)
        }
    }
    // The stage-2 table lives as long as the guest: `enter_guest` never returns, so `map` is
    // never dropped, and VTTBR_EL2 names its root from here on.
    let stack_top = &raw const boot_stack_end as u64;
    guest::enter_guest(entry, ram.base.get(), stack_top);
}

/// Writes the guest's device tree at the start of guest RAM; returns its size.
fn write_guest_tree(boot: &GuestBoot<'_>) -> usize {
    let ram = boot.ram;
    let memory = [IpaRange::new(ram.base.get(), ram.size)];
    let mut edits = GuestTreeEdits::new(&memory).remove(hypervisor_nodes(boot.platform));
    if !boot.command_line.guest_args.is_empty() {
        edits = edits.bootargs(boot.command_line.guest_args);
    }
    if let Some((start, end)) = boot.command_line.initrd {
        if !ram.contains(smmu::PhysAddr(start)) || !ram.contains(smmu::PhysAddr(end - 1)) {
            fail("the initrd is not in guest RAM");
        }
        edits = edits.initrd(IpaRange::new(start, end - start));
    }
    let window = ram.base.get() as usize;
    // SAFETY: the EL2 map has the guest boot window [ram.base, + GUEST_BOOT_WINDOW_SIZE) mapped
    // read-write (layout's guest boot window); it is guest RAM no guest code runs on yet, and
    // nothing else references it.
    let out = unsafe {
        core::slice::from_raw_parts_mut(window as *mut u8, GUEST_BOOT_WINDOW_SIZE as usize)
    };
    match build_guest_tree(boot.source_tree, &edits, out) {
        Ok(size) => size,
        Err(error) => {
            defmt::error!("guest device tree: {}", error);
            fail("device tree");
        }
    }
}

/// Unmaps the guest boot window from the EL2 map: after boot the hypervisor reaches guest RAM
/// only through explicit, checked copies.
fn close_boot_window(map: &mut Mapping<PagePool, El2>, base: u64) {
    let start = base as usize;
    let region = MemoryRegion::new(start, start + GUEST_BOOT_WINDOW_SIZE as usize);
    // Clean the tree to the point of coherency: the guest starts with its MMU and caches off.
    crate::arch::sysreg::clean_dcache_range(start, GUEST_BOOT_WINDOW_SIZE as usize);
    if map
        .map_range(
            &region,
            PhysicalAddress(start),
            El23Attributes::empty(),
            Constraints::empty(),
        )
        .is_err()
    {
        fail("could not close the guest boot window");
    }
    crate::arch::sysreg::invalidate_el2_tlb();
}

/// Gives every stream ID of the guest's PCIe host a stage-2-only STE over the SMMU's stage 2
/// for the guest: the guest's devices reach the guest's RAM and the MSI doorbell, nothing else. Until
/// the virtual SMMU exists, this is what a guest's "DMA" means, as pKVM does for its host.
fn confine_guest_devices(guest_platform: &GuestPlatform<'_>, discovered: &board::Discovered<'_>) {
    let Some(pcie) = discovered.pcie.as_ref() else {
        defmt::info!("no PCIe host: no guest streams to confine");
        return;
    };
    let streams = match pcie.stream_id_range() {
        Ok(streams) => streams,
        Err(error) => {
            defmt::error!("PCIe stream IDs: {}", error);
            fail("stream IDs");
        }
    };
    let regions = match stage2::dma_regions(guest_platform) {
        Ok(regions) => regions,
        Err(error) => {
            defmt::error!("SMMU stage 2 refused: {}", error);
            fail("SMMU stage 2");
        }
    };
    let Some(pool) = SMMU_STAGE2_TABLES.take() else {
        fail("SMMU stage-2 pool already taken")
    };
    let map = match stage2::build(pool, &regions) {
        Ok(map) => map,
        Err(error) => {
            defmt::error!("SMMU stage 2: {}", error);
            fail("SMMU stage 2");
        }
    };
    let root = smmu::PhysAddr(map.root_address().0 as u64);
    match crate::arch::smmu::confine_streams(
        streams.first,
        streams.last,
        root,
        smmu::Vmid(guest::GUEST_VMID),
    ) {
        Ok(count) => defmt::info!(
            "SMMU: {=u32} guest streams {=u32:#x} to {=u32:#x} translate through stage 2 (guest RAM only, VMID {=u16})",
            count,
            streams.first.get(),
            streams.last.get(),
            guest::GUEST_VMID
        ),
        Err(error) => {
            defmt::error!("SMMU: confining guest streams: {}", error);
            fail("SMMU stream table");
        }
    }
    // The SMMU walks this table for as long as the guest runs: it is never dropped.
    core::mem::forget(map);
}
