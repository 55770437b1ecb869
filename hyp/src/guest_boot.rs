//! Booting the guest: its device tree, its stage 2, then entry on the boot CPU.
//!
//! 1. The guest's device tree is derived from the platform's (`board::build_guest_tree`): RAM
//!    limited to the guest's, every device the allow-list withholds (the hypervisor's UART and
//!    SMMU, and anything that masters memory around the SMMU) removed with every reference to
//!    it, the vSMMU's `arm,smmu-v3` node added (the PCIe host's `iommu-map` pointing at it),
//!    `/chosen` set from the command line. It is written at the start of guest RAM through
//!    the EL2 map's guest boot window, which is then unmapped.
//! 2. The CPU's stage 2 is built (`crate::stage2`): guest RAM and the granted devices; the
//!    GIC's distributor and redistributors are left unmapped and emulated (`crate::gic`,
//!    `crate::interrupts`). The SMMU's stage 2, the streams and the vSMMU are set up by
//!    `crate::vsmmu`, whose register window is left unmapped too; guest RAM is aliased in the
//!    EL2 map for `crate::guest_memory`'s copies.
//! 3. The boot CPU enters the guest at EL1: a Linux `Image` with x0 = the device tree, or a
//!    bare-metal ELF with the same convention. Secondary vCPUs come later, by PSCI `CPU_ON`.

use crate::arch::{
    el2,
    power::{ExitStatus, exit},
};
use crate::cmdline::{CommandLine, GuestKind};
use crate::layout::GUEST_BOOT_WINDOW_SIZE;
use crate::mmio::MmioRegistry;
use crate::page_pool::{PagePool, StaticFrames};
use crate::stage2::{self, GuestPlatform};
use crate::trap::handler::VmConfig;
use crate::vm::GUEST_VMID;
use aarch64_paging::{
    Mapping,
    descriptor::{El23Attributes, PhysicalAddress},
    paging::{Constraints, El2, MemoryRegion},
};
use board::guest_devices::{GuestDevicePlan, GuestMapping};
use board::{GuestTreeEdits, IpaRange, SmmuInterruptName, VirtualSmmuNode, build_guest_tree};
use smmu::PhysRange;

/// Tables for the guest's CPU stage 2: a few per device hole plus 2 MiB-block RAM.
const GUEST_STAGE2_POOL_PAGES: usize = 64;
static GUEST_STAGE2_TABLES: StaticFrames<GUEST_STAGE2_POOL_PAGES> = StaticFrames::new();

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
    /// What the guest is given, and what it is not.
    pub devices: &'a GuestDevicePlan,
    /// The platform's device tree, the source of the guest's.
    pub source_tree: &'a [u8],
    /// The hypervisor's own memory that must not change while the guest runs.
    pub hypervisor_memory: [(&'static str, PhysRange); 4],
    /// Guest RAM (IPA == PA).
    pub ram: PhysRange,
    /// The hypervisor's carve-out at the start of RAM.
    pub hypervisor_carve_out: PhysRange,
    /// The EL2 map, to close the guest boot window and open the guest RAM alias.
    pub el2_map: &'a mut Mapping<PagePool, El2>,
    /// The regions the EL2 map identity-maps: the guest RAM alias must meet none of them.
    pub el2_regions: &'a crate::layout::Regions,
}

unsafe extern "C" {
    /// The top of the boot CPU's stack (`aarch64-rt`'s `image.ld`).
    static boot_stack_end: u8;
}

fn fail(what: &str) -> ! {
    defmt::error!("guest boot: {=str}", what);
    exit(ExitStatus::Failure);
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
    open_guest_ram_alias(boot.el2_map, boot.el2_regions, ram);
    defmt::info!(
        "guest device tree: {=usize} bytes at {=u64:#x}",
        tree_size,
        ram.base.get()
    );

    let vcpus = command_line
        .smp
        .map_or(discovered.cpu_count as usize, |n| n as usize)
        .clamp(1, crate::cpus::MAX_CPUS);
    // The guest's devices: the allow-list's granted windows, mapped; the GIC's distributor and
    // redistributors, trapped and emulated (see `crate::gic`).
    let mut devices: heapless::Vec<PhysRange, { stage2::MAX_STAGE2_REGIONS }> =
        heapless::Vec::new();
    let mut registry = MmioRegistry::new();
    let vsmmu_interrupts = crate::vsmmu::VsmmuInterrupts::from_platform(&platform.smmu.interrupts);
    let gic = match crate::interrupts::set_up(
        platform.gic.distributor,
        platform.gic.redistributors,
        &platform.smmu.interrupts,
        crate::arch::sysreg::cpu_affinity(),
        vcpus,
        &vsmmu_interrupts.intids().collect::<heapless::Vec<u32, 4>>(),
    ) {
        Ok(gic) => gic,
        Err(error) => {
            defmt::error!("GIC: {}", error);
            fail("GIC");
        }
    };
    for device in &boot.devices.granted {
        let window = smmu::IpaRange::new(smmu::Ipa(device.range.base.get()), device.range.size);
        let registered = match device.mapping {
            GuestMapping::Passthrough => {
                if devices.push(device.range).is_err() {
                    fail("too many guest devices");
                }
                continue;
            }
            GuestMapping::EmulatedGicDistributor => registry.register(window, gic.distributor),
            GuestMapping::EmulatedGicRedistributors => {
                registry.register(window, gic.redistributors)
            }
        };
        if registered.is_err() {
            fail("emulated GIC device");
        }
    }
    defmt::info!(
        "guest GIC: distributor and {=usize} redistributors emulated (LPIs hidden, the hypervisor's INTIDs withheld); interrupts taken at EL2 and injected",
        gic.count
    );
    // Everything the guest must never reach, checked again against each window above: the
    // hypervisor's carve-out, UART and SMMU, and every withheld device.
    let mut hypervisor_windows: heapless::Vec<
        PhysRange,
        { board::guest_tree::MAX_REMOVED_NODES + 3 },
    > = heapless::Vec::new();
    let own = [
        hypervisor_carve_out,
        platform.uart1,
        platform.smmu.registers,
    ];
    let withheld = boot
        .devices
        .removed
        .iter()
        .filter_map(|node| node.registers);
    for window in own.into_iter().chain(withheld) {
        if hypervisor_windows.push(window).is_err() {
            fail("too many withheld windows");
        }
    }
    // No MSI doorbell for devices while the ITS is withheld; when it is emulated, its
    // GITS_TRANSLATER page (second 64 KiB frame) goes here, the only device page DMA may reach.
    let doorbells: [PhysRange; 0] = [];
    let guest_platform = GuestPlatform {
        ram,
        devices: &devices,
        hypervisor_windows: &hypervisor_windows,
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
        GUEST_VMID
    );

    let dma = match stage2::dma_regions(&guest_platform) {
        Ok(regions) => regions,
        Err(error) => {
            defmt::error!("SMMU stage 2 refused: {}", error);
            fail("SMMU stage 2");
        }
    };
    let vsmmu = set_up_vsmmu(&boot, discovered, &dma, vsmmu_interrupts);
    if registry.register(vsmmu.registers, vsmmu.device).is_err() {
        fail("vSMMU register window");
    }

    crate::vm::set_vm(
        VmConfig {
            ram: smmu::IpaRange::new(smmu::Ipa(ram.base.get()), ram.size),
            max_vcpus: vcpus,
            mmio: registry,
            bench_mode: command_line.pmu_counts_el2,
        },
        map.root_address().0 as u64,
    );
    if command_line.pmu_counts_el2 {
        defmt::warn!(
            "benchmark mode (hyp.pmu=el2-visible): the guest's PMU counts at EL2, so it can measure the hypervisor"
        );
    }
    crate::vm::configure_cpu();
    // Nothing the hypervisor set up for the guest changes from here on: fingerprint it.
    let [text, rodata, el2_tables, boot_tree] = boot.hypervisor_memory;
    crate::integrity::seal(&[
        text,
        rodata,
        el2_tables,
        boot_tree,
        ("guest stage-2 tables (CPU)", GUEST_STAGE2_TABLES.range()),
        ("guest stage-2 tables (SMMU)", crate::vsmmu::stage2_tables()),
    ]);
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
    el2::enter_guest(
        entry,
        crate::trap::inject::SPSR_EL1H_MASKED,
        ram.base.get(),
        stack_top,
    );
}

/// Writes the guest's device tree at the start of guest RAM; returns its size.
fn write_guest_tree(boot: &GuestBoot<'_>) -> usize {
    let ram = boot.ram;
    let memory = [IpaRange::new(ram.base.get(), ram.size)];
    let removed = boot.devices.removed_paths();
    let smmu = &boot.platform.smmu;
    let mut interrupts: heapless::Vec<(SmmuInterruptName, board::Interrupt), 4> =
        heapless::Vec::new();
    // No `priq`: the vSMMU advertises no PRI on a physical SMMU without it.
    for (name, line) in [
        (SmmuInterruptName::EventQueue, smmu.interrupts.eventq),
        (SmmuInterruptName::GlobalError, smmu.interrupts.gerror),
        (SmmuInterruptName::CommandSync, smmu.interrupts.cmdq_sync),
    ] {
        if let Some(line) = line {
            let _ = interrupts.push((name, line));
        }
    }
    let iommu_map = [board::IommuMapEntry {
        rid_base: 0,
        sid_base: smmu::StreamId(0),
        length: crate::vsmmu::VSMMU_STREAMS as u32,
    }];
    let node = VirtualSmmuNode {
        registers: IpaRange::new(
            smmu.registers.base.get(),
            nested::config::REGISTER_WINDOW_SIZE,
        ),
        interrupts: &interrupts,
        iommu_map: &iommu_map,
        iommu_map_mask: None,
    };
    let mut edits = GuestTreeEdits::new(&memory)
        .remove(&removed)
        .virtual_smmu(&node);
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

/// Maps guest RAM at its alias in the EL2 map (read-write, execute-never; see
/// `crate::guest_memory`): the only way the hypervisor reaches guest RAM after boot.
fn open_guest_ram_alias(
    map: &mut Mapping<PagePool, El2>,
    regions: &crate::layout::Regions,
    ram: PhysRange,
) {
    let alias = match crate::layout::guest_ram_alias(ram, regions) {
        Ok(alias) => alias,
        Err(error) => {
            defmt::error!("guest RAM alias: {}", error);
            fail("guest RAM alias");
        }
    };
    let (Ok(start), Ok(size), Ok(physical)) = (
        usize::try_from(alias.range.base.get()),
        usize::try_from(alias.range.size),
        usize::try_from(ram.base.get()),
    ) else {
        fail("guest RAM alias");
    };
    if map
        .map_range(
            &MemoryRegion::new(start, start + size),
            PhysicalAddress(physical),
            alias.kind.attributes(),
            Constraints::empty(),
        )
        .is_err()
    {
        fail("could not map the guest RAM alias");
    }
    crate::arch::sysreg::invalidate_el2_tlb();
}

/// The guest's SMMU: its stage 2 (a `smmu::domain` over guest RAM), every stream of its PCIe
/// host confined to it, and the vSMMU over the first bus's streams (`crate::vsmmu`).
fn set_up_vsmmu(
    boot: &GuestBoot<'_>,
    discovered: &board::Discovered<'_>,
    dma: &stage2::Stage2Regions,
    interrupts: crate::vsmmu::VsmmuInterrupts,
) -> crate::vsmmu::VsmmuSetup {
    let Some(pcie) = discovered.pcie.as_ref() else {
        fail("no PCIe host: the vSMMU has no streams");
    };
    let streams = match pcie.stream_id_range() {
        Ok(streams) => streams,
        Err(error) => {
            defmt::error!("PCIe stream IDs: {}", error);
            fail("stream IDs");
        }
    };
    match crate::vsmmu::set_up(
        boot.ram,
        dma,
        boot.hypervisor_carve_out,
        (streams.first, streams.last),
        boot.platform.smmu.registers,
        interrupts,
        GUEST_VMID,
    ) {
        Ok(setup) => {
            defmt::info!(
                "SMMU: {=u32} guest streams {=u32:#x} to {=u32:#x} translate through stage 2 (guest RAM only, VMID {=u16})",
                setup.confined,
                streams.first.get(),
                streams.last.get(),
                GUEST_VMID
            );
            defmt::info!(
                "vSMMU at {=u64:#x}: streams {=u32:#x} to {=u32:#x} (guest stream ID = physical), nested over that stage 2",
                setup.registers.base.0,
                setup.owned.0.get(),
                setup.owned.1.get()
            );
            setup
        }
        Err(error) => {
            defmt::error!("vSMMU: {}", error);
            fail("vSMMU");
        }
    }
}
