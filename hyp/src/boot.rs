//! The primary CPU's boot sequence, from the entry point to the end of the run.
//!
//! 1. Find the device tree (x0, or the platform's default load address when x0 is 0, as QEMU
//!    leaves it for an ELF image) and check its header.
//! 2. Discover the platform from it, start the log on the hypervisor's UART, cross-check the
//!    board data against the device tree and stop with a clear error when they disagree.
//! 3. Replace `aarch64-rt`'s coarse initial map with the fine-grained EL2 map of [`layout`].
//! 4. Judge every device of the tree against the board's allow-list (which devices the guest
//!    gets), and name each device an operator attached outside the SMMU: it is refused.
//! 5. Probe the physical SMMU and log its decoded ID registers.
//! 6. Run a self-test if the command line asks for one, or boot the guest.

use crate::arch::{
    log,
    mmio::DeviceWindow,
    power::{ExitStatus, exit},
    sysreg, vectors,
};
use crate::cmdline::CommandLine;
use crate::layout::{
    self, GUEST_BOOT_WINDOW_SIZE, HYPERVISOR_CARVE_OUT, ImageLayout, PlatformWindows,
};
use crate::page_pool::{PagePool, StaticFrames};
use aarch64_paging::{Mapping, paging::El2};
use smmu::PhysRange;

/// The largest device tree the hypervisor accepts (QEMU's is at most 1 MiB).
const MAX_DEVICE_TREE_SIZE: u64 = 2 << 20;

/// Tables for the EL2 map. The map covers a handful of regions; 16 tables leave ample room.
const EL2_TABLE_POOL_PAGES: usize = 16;

static EL2_TABLES: StaticFrames<EL2_TABLE_POOL_PAGES> = StaticFrames::new();

unsafe extern "C" {
    // Section boundaries defined by `aarch64-rt`'s `image.ld`; each is page-aligned there.
    static text_begin: u8;
    static rodata_begin: u8;
    static data_begin: u8;
    /// The end of the image: after `.bss` and the stacks, page-aligned.
    static dma_region: u8;
    /// The lowest address of the boot CPU's stack (`aarch64-rt`'s `image.ld`).
    static boot_stack_begin: u8;
}

fn image_layout() -> ImageLayout {
    let text = &raw const text_begin as u64;
    let rodata = &raw const rodata_begin as u64;
    let data = &raw const data_begin as u64;
    let end = &raw const dma_region as u64;
    ImageLayout {
        text: PhysRange::new(text, rodata - text),
        rodata: PhysRange::new(rodata, data - rodata),
        writable: PhysRange::new(data, end - data),
    }
}

/// Reads the flattened device tree header at `address` and returns the tree as a byte slice.
fn device_tree_at(address: u64) -> Result<&'static [u8], &'static str> {
    if address == 0 || address % 8 != 0 {
        return Err("device tree address is null or misaligned");
    }
    // The initial map covers RAM as normal memory, so the header can be read in place.
    // SAFETY: `address` is 8-aligned and inside RAM mapped by the initial page table (the boot
    // protocol puts the tree there); the header is 40 bytes and nothing writes it concurrently.
    let header = unsafe { core::ptr::read_volatile(address as *const [u32; 2]) };
    if u32::from_be(header[0]) != 0xd00d_feed {
        return Err("no device tree magic at the boot address");
    }
    let size = u64::from(u32::from_be(header[1]));
    if !(40..=MAX_DEVICE_TREE_SIZE).contains(&size) {
        return Err("device tree size out of bounds");
    }
    // SAFETY: the range [address, address + size) is RAM in the hypervisor's carve-out, mapped
    // by the initial table and later read-only by the EL2 map; nothing writes it after boot.
    Ok(unsafe { core::slice::from_raw_parts(address as *const u8, size as usize) })
}

/// The primary CPU's entry from `aarch64-rt`, with the MMU on and the boot stack set.
pub fn primary_main(x0: u64) -> ! {
    vectors::install(vectors::Table::Hypervisor);
    crate::cpus::start::claim_boot_cpu(&crate::vm::TRAP_STATE.slots);
    // Until the device tree names the platform, QEMU virt's data is the best guess: it gives
    // the device tree's default address and the UART on which to report a bad tree.
    let fallback = &board::QEMU_VIRT;
    let dtb_address = if x0 != 0 {
        x0
    } else {
        fallback.ram_base().get()
    };
    let tree = device_tree_at(dtb_address);
    let discovered = tree.map(|tree| board::discover(tree));
    let platform = match &discovered {
        Ok(Ok(discovered)) => board::identify(discovered).ok(),
        _ => None,
    };
    let log_uart = platform.unwrap_or(fallback).uart1;
    // SAFETY: UART1 is the hypervisor's own log UART on every supported platform, mapped as
    // device memory by the initial map (first GiB) and by the EL2 map built below; nothing else
    // drives it.
    unsafe { log::init(log_uart.base.get() as usize) };
    defmt::info!("hypervisor starting at EL{=u64}", sysreg::current_el());

    let (tree, discovered) = match (tree, discovered) {
        (Ok(tree), Ok(Ok(discovered))) => (tree, discovered),
        (Err(reason), _) | (_, Err(reason)) => {
            defmt::error!("device tree at {=u64:#x}: {=str}", dtb_address, reason);
            exit(ExitStatus::Failure);
        }
        (_, Ok(Err(error))) => {
            defmt::error!(
                "device tree at {=u64:#x} unreadable: {}",
                dtb_address,
                error
            );
            exit(ExitStatus::Failure);
        }
    };
    let platform = match board::identify(&discovered) {
        Ok(platform) => platform,
        Err(error) => {
            defmt::error!("unknown platform: {}", error);
            exit(ExitStatus::Failure);
        }
    };
    defmt::info!(
        "device tree at {=u64:#x} ({=usize} bytes): {=usize} CPUs, {=usize} RAM banks",
        dtb_address,
        tree.len(),
        discovered.cpu_count as usize,
        discovered.memory.len()
    );
    let mut mismatches = 0u32;
    board::for_each_mismatch(platform, &discovered, |mismatch| {
        mismatches += 1;
        defmt::error!(
            "board data for {=str} does not match the device tree: {}",
            platform.name,
            mismatch
        );
    });
    if mismatches != 0 {
        exit(ExitStatus::Failure);
    }
    defmt::info!("board {=str} matches the device tree", platform.name);

    let command_line = match CommandLine::parse(discovered.bootargs.unwrap_or("")) {
        Ok(line) => line,
        Err(error) => {
            defmt::error!("hypervisor command line refused: {}", error);
            exit(ExitStatus::Failure);
        }
    };
    let Some(&first_bank) = discovered.memory.first() else {
        defmt::error!("no RAM in the device tree");
        exit(ExitStatus::Failure);
    };
    let guest_ram = guest_ram(first_bank);
    if let Some(ram) = guest_ram
        && ram.end() < first_bank.end()
    {
        defmt::warn!(
            "guest RAM limited to {=u64} MiB (the SMMU stage-2 pools are sized for it); {=u64} MiB of the bank unused",
            ram.size >> 20,
            (first_bank.end() - ram.end()) >> 20
        );
    }
    // Before the EL2 map replaces the initial one (which maps every device in the first GiB):
    // withheld devices are looked at once, to name what an operator attached to them.
    if command_line.guest.is_some() {
        plan_guest_devices(platform, tree);
    }
    let windows = PlatformWindows {
        log_uart: platform.uart1,
        smmu: platform.smmu.registers,
        gic_distributor: platform.gic.distributor,
        gic_redistributor: platform.gic.redistributors,
        device_tree: PhysRange::new(dtb_address, tree.len() as u64),
        guest_boot: command_line
            .guest
            .and(guest_ram)
            .map(|ram| PhysRange::new(ram.base.get(), GUEST_BOOT_WINDOW_SIZE)),
    };
    let (mut el2_map, el2_regions) = install_el2_map(&windows);

    let _features = probe_smmu(platform.smmu.registers);
    // From here on no stream bypasses: GBPA aborts and every STE is invalid until a stream is
    // given to a guest.
    if let Err(error) = crate::arch::smmu::bring_up(platform.smmu.registers) {
        defmt::error!("SMMU bring-up failed: {}", error);
        exit(ExitStatus::Failure);
    }

    if let Some(test) = command_line.selftest {
        // Issue 3 item 5: self-tests may map their own device windows into the EL2 map.
        run_self_test(test, platform, &mut el2_map);
    }
    let Some(guest) = command_line.guest else {
        defmt::info!("no guest on the command line (hyp.guest=...): done");
        exit(ExitStatus::Success);
    };
    let Some(guest_ram) = guest_ram else {
        defmt::error!("RAM bank {} leaves no room for a guest", first_bank);
        exit(ExitStatus::Failure);
    };
    crate::guest_boot::boot(crate::guest_boot::GuestBoot {
        kind: guest,
        command_line: &command_line,
        platform,
        discovered: &discovered,
        devices: GUEST_DEVICES.get().unwrap_or(&EMPTY_PLAN),
        source_tree: tree,
        hypervisor_memory: hypervisor_memory(PhysRange::new(dtb_address, tree.len() as u64)),
        ram: guest_ram,
        hypervisor_carve_out: PhysRange::new(first_bank.base.get(), HYPERVISOR_CARVE_OUT),
        el2_map: &mut el2_map,
        el2_regions: &el2_regions,
    })
}

/// What of the hypervisor's own memory must not change while a guest runs: its code, its
/// read-only data, its EL2 tables and the boot device tree (see [`crate::integrity`]).
fn hypervisor_memory(boot_tree: PhysRange) -> [(&'static str, PhysRange); 4] {
    let image = image_layout();
    [
        ("text", image.text),
        ("rodata", image.rodata),
        ("EL2 page tables", EL2_TABLES.range()),
        ("boot device tree", boot_tree),
    ]
}

/// What the guest is given, judged once at boot.
static GUEST_DEVICES: spin::Once<board::guest_devices::GuestDevicePlan> = spin::Once::new();
static EMPTY_PLAN: board::guest_devices::GuestDevicePlan = board::guest_devices::GuestDevicePlan {
    removed: heapless::Vec::new(),
    granted: heapless::Vec::new(),
};

/// Judges the tree's devices against the allow-list, logs the outcome and keeps the plan.
/// Runs under the initial map: a withheld virtio-mmio transport's device ID is read to name an
/// attached device.
fn plan_guest_devices(platform: &'static board::Platform, tree: &[u8]) {
    use board::guest_devices::{Safety, Withheld, plan};
    let plan = match plan(platform, tree) {
        Ok(plan) => plan,
        Err(error) => {
            defmt::error!("guest devices: {}", error);
            exit(ExitStatus::Failure);
        }
    };
    for device in &plan.granted {
        let how = match device.safety {
            Safety::NoDma => "masters no memory",
            Safety::ThroughSmmu => "masters memory only through the SMMU",
            Safety::Trapped => "every register trapped",
        };
        defmt::info!(
            "guest gets {=str} at {} ({=str}: {=str})",
            device.name,
            device.range,
            how,
            device.why
        );
    }
    // One line per kind of withheld node, in tree order.
    let mut index = 0;
    while let Some(node) = plan.removed.get(index) {
        let same = plan.removed[index..]
            .iter()
            .take_while(|other| other.compatible == node.compatible && other.reason == node.reason)
            .count();
        match node.reason {
            Withheld::Hypervisor => defmt::info!(
                "guest does not get {=str} ({=str}): the hypervisor's own",
                node.path.as_str(),
                node.compatible.as_str()
            ),
            Withheld::Known(known) => defmt::info!(
                "guest does not get {=usize} x {=str} (first {=str}): {=str}",
                same,
                node.compatible.as_str(),
                node.path.as_str(),
                known.why
            ),
            Withheld::NotAllowed => defmt::info!(
                "guest does not get {=usize} x {=str} (first {=str}): not on the allow-list",
                same,
                node.compatible.as_str(),
                node.path.as_str()
            ),
            Withheld::Unplaceable => defmt::info!(
                "guest does not get {=str}: its registers are not in the CPU's address space",
                node.path.as_str()
            ),
        }
        index += same.max(1);
    }
    for node in &plan.removed {
        let Withheld::Known(known) = node.reason else {
            continue;
        };
        if !known.masters_memory {
            continue;
        }
        if node.devices_inside > 0 {
            defmt::warn!(
                "refused: {=u16} device(s) attached to {=str} master memory around the SMMU; the guest does not get them",
                node.devices_inside,
                node.path.as_str()
            );
        }
        if known.compatible == "virtio,mmio"
            && let Some(device_id) = node.registers.and_then(virtio_device_id)
        {
            defmt::warn!(
                "refused: a virtio device (ID {=u32}) attached to {=str} masters memory around the SMMU; the guest does not get it",
                device_id,
                node.path.as_str()
            );
        }
    }
    GUEST_DEVICES.call_once(|| plan);
}

/// The device ID of the virtio-mmio transport at `registers`, if a device is attached (0 means
/// none). Only transports in the first GiB, which the initial map covers, are looked at.
fn virtio_device_id(registers: PhysRange) -> Option<u32> {
    const MAGIC: u32 = 0x7472_6976;
    if registers.end() > 1 << 30 || registers.size < 0x100 || !registers.base.is_aligned(4) {
        return None;
    }
    // SAFETY: the initial map covers the first GiB as device memory; the transport's magic
    // and device-ID registers are read-only and reading them has no effect on the device.
    let window = unsafe { DeviceWindow::new(registers.base.get() as usize, 0x100) };
    let id = window.read32(0x8)?;
    (window.read32(0)? == MAGIC && id != 0).then_some(id)
}

/// The guest's RAM: the first bank minus the hypervisor's carve-out, at most
/// [`MAX_GUEST_RAM`](crate::layout::MAX_GUEST_RAM), if anything is left.
fn guest_ram(bank: PhysRange) -> Option<PhysRange> {
    let start = bank.base.get().checked_add(HYPERVISOR_CARVE_OUT)?;
    (bank.end() > start + GUEST_BOOT_WINDOW_SIZE).then(|| {
        PhysRange::new(
            start,
            (bank.end() - start).min(crate::layout::MAX_GUEST_RAM),
        )
    })
}

/// Self-tests that prove the hypervisor's own protections, selected by `hyp.selftest=NAME`.
/// They exist to be run by `cargo xtask test`; the command line comes from the platform's boot
/// chain, never from a guest.
fn run_self_test(name: &str, platform: &board::Platform, el2_map: &mut Mapping<PagePool, El2>) {
    match name {
        // Issue 3 item 5: the SMMU conformance cases, with `edu` DMA (see `crate::selftest`).
        "smmu-conformance" => crate::selftest::smmu::run(platform, el2_map),
        // The `smmu-conformance` crate's whole suite on the physical SMMU (its QEMU column).
        "conformance-suite" => crate::selftest::conformance::run(platform, el2_map),
        // The hypervisor's own costs in instructions (`cargo xtask bench`, under -icount).
        "bench" => {
            crate::bench::run();
            exit(ExitStatus::Success);
        }
        "el2-stack-overflow" => {
            // Recurse until the stack runs into its guard page: the data abort must be
            // reported, not the statics below the stack silently overwritten.
            defmt::warn!("self-test: overflowing the boot stack");
            let depth = recurse(0);
            defmt::error!("self-test: recursed {=u64} deep without a fault", depth);
        }
        "el2-unmapped-read" => {
            // Guest RAM is deliberately absent from the EL2 map: this must fault.
            let address = platform.ram_base().get() + (256 << 20);
            defmt::warn!("self-test: reading unmapped address {=u64:#x}", address);
            // SAFETY: deliberately unsound-looking but harmless: the address is unmapped at EL2,
            // so the load faults before any memory is read, and the fault handler ends the run.
            let value = unsafe { core::ptr::read_volatile(address as *const u64) };
            defmt::error!(
                "self-test: read {=u64:#x} from an address that should be unmapped",
                value
            );
        }
        other => defmt::error!("unknown self-test `{=str}`", other),
    }
    exit(ExitStatus::Failure);
}

/// Uses 1 KiB of stack per level, forever (until the guard page stops it).
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let mut frame = [0u8; 1024];
    frame[0] = depth as u8;
    let frame = core::hint::black_box(frame);
    if depth > 1 << 20 {
        return depth;
    }
    recurse(depth + 1) + u64::from(frame[0])
}

/// Builds the EL2 map and switches to it.
/// Builds, activates and returns the EL2 map, with the regions it identity-maps (which the guest
/// RAM alias, mapped later, must not meet).
fn install_el2_map(windows: &PlatformWindows) -> (Mapping<PagePool, El2>, layout::Regions) {
    let image = image_layout();
    // The lowest page of every EL2 stack stays unmapped: an overflow faults.
    let boot_guard = PhysRange::new(&raw const boot_stack_begin as u64, layout::PAGE_SIZE);
    let mut guards: heapless::Vec<PhysRange, { layout::MAX_GUARDS }> = heapless::Vec::new();
    for guard in core::iter::once(boot_guard).chain(crate::cpus::start::stack_guards()) {
        let _ = guards.push(guard);
    }
    let regions = match layout::el2_regions(&image, windows, &guards) {
        Ok(regions) => regions,
        Err(error) => {
            defmt::error!("EL2 layout refused: {}", error);
            exit(ExitStatus::Failure);
        }
    };
    let Some(pool) = EL2_TABLES.take() else {
        defmt::error!("EL2 table pool already taken");
        exit(ExitStatus::Failure);
    };
    let map = match layout::build_map(pool, &regions) {
        Ok(map) => map,
        Err(error) => {
            defmt::error!("EL2 map: {}", error);
            exit(ExitStatus::Failure);
        }
    };
    // SAFETY: the new map is an identity map of every region the hypervisor uses from here on
    // (its image, stacks, log UART, SMMU, GIC and device tree) with the same memory types as
    // the initial map, so no live reference loses its mapping or changes attributes.
    unsafe { map.activate() };
    sysreg::invalidate_el2_tlb();
    for region in &regions {
        defmt::debug!("EL2 map: {}", region);
    }
    defmt::info!(
        "EL2 map active: {=usize} regions, {=usize} of {=usize} tables",
        regions.len(),
        map.translation().used(),
        map.translation().capacity()
    );
    crate::cpus::start::set_el2_root(map.root_address().0 as u64);
    (map, regions)
}

/// Reads, decodes and logs the physical SMMU's ID registers; stops if they make no sense.
fn probe_smmu(registers: PhysRange) -> smmu::registers::Features {
    // SAFETY: the SMMU's register pages are mapped as device memory by the EL2 map, are owned by
    // the hypervisor alone, and the probe only reads ID registers, which have no side effects.
    let window =
        unsafe { DeviceWindow::new(registers.base.get() as usize, registers.size as usize) };
    let smmu = crate::arch::smmu::SmmuRegisters(window);
    let ids = smmu::hardware::read_id_registers(&smmu);
    defmt::info!(
        "SMMU at {=u64:#x}: IDR0={=u32:#010x} IDR1={=u32:#010x} IDR3={=u32:#010x} IDR5={=u32:#010x}",
        registers.base.get(),
        ids.idr0,
        ids.idr1,
        ids.idr3,
        ids.idr5
    );
    let features = match smmu::registers::Features::decode(&ids) {
        Ok(features) => features,
        Err(error) => {
            defmt::error!("SMMU refused at probe: {}", error);
            exit(ExitStatus::Failure);
        }
    };
    let stages = match (features.s1p, features.s2p) {
        (true, true) => "stage-1 and stage-2 (nesting possible)",
        (true, false) => "stage-1 only",
        (false, true) => "stage-2 only",
        (false, false) => "no translation stages",
    };
    let table = match features.st_level {
        smmu::registers::StreamTableFormat::Linear => "linear",
        smmu::registers::StreamTableFormat::TwoLevel => "2-level",
    };
    defmt::info!(
        "SMMU translation: {=str}; {=str} stream table; OAS {=u8} bits; granules 4K {=bool} 16K {=bool} 64K {=bool}; ASID16 {=bool} VMID16 {=bool}; entries output up to {=u8} bits",
        stages,
        table,
        features.reported_oas_bits,
        features.gran4k,
        features.gran16k,
        features.gran64k,
        features.asid16,
        features.vmid16,
        features.oas.bits()
    );
    defmt::info!(
        "SMMU sizes: SIDSIZE {=u8} SSIDSIZE {=u8}; queues (log2) CMDQS {=u8} EVTQS {=u8} PRIQS {=u8}",
        features.sidsize,
        features.ssidsize,
        features.cmdqs,
        features.evtqs,
        features.priqs
    );
    defmt::info!(
        "SMMU features: ATS {=bool} PRI {=bool} MSI {=bool} stall {} HTTU {} COHACC {=bool} BTM {=bool} RIL {=bool} FWB {=bool} BBML {}",
        features.ats,
        features.pri,
        features.msi,
        features.stall_model,
        features.httu,
        features.cohacc,
        features.btm,
        features.ril,
        features.fwb,
        features.bbml
    );
    features
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    defmt::error!("panic: {}", defmt::Display2Format(info));
    exit(ExitStatus::Panic);
}
