//! The guest proper (aarch64 only).

mod containment;
mod interrupts;
mod vsmmu;

use aarch64_paging::descriptor::El1Attributes;
use aarch64_rt::{
    ExceptionHandlers, InitialPagetable, RegisterStateRef, entry, exception_handlers,
    initial_pagetable,
};
use arm_pl011_uart::{
    DataBits, LineConfig, PL011Registers, Parity, StopBits, Uart, UniqueMmioPointer,
};
use core::arch::asm;
use core::fmt::Write;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use smccc::{Hvc, Smc};

const DEVICE: usize = El1Attributes::VALID
    .union(El1Attributes::ATTRIBUTE_INDEX_0)
    .union(El1Attributes::ACCESSED)
    .union(El1Attributes::UXN)
    .union(El1Attributes::PXN)
    .bits();
const NORMAL: usize = El1Attributes::VALID
    .union(El1Attributes::ATTRIBUTE_INDEX_1)
    .union(El1Attributes::INNER_SHAREABLE)
    .union(El1Attributes::ACCESSED)
    .bits();

initial_pagetable!({
    let mut table = [0; 512];
    table[0] = DEVICE; // devices, including the hypervisor's (which stage 2 withholds)
    table[1] = NORMAL | 0x4000_0000; // RAM, including the hypervisor's carve-out
    table[256] = DEVICE | 0x40_0000_0000; // PCIe ECAM
    InitialPagetable(table)
});

exception_handlers!(Handlers);
entry!(main, 8);

/// The guest console (UART0 on QEMU virt, passed through by the hypervisor).
const UART0: usize = 0x0900_0000;
/// Where QEMU puts the device tree for an ELF it loads itself: the start of RAM.
const QEMU_TREE: u64 = 0x4000_0000;

/// The last synchronous exception taken: ESR_EL1 (0 = none since `take_exception`).
static LAST_ESR: AtomicU64 = AtomicU64::new(0);
static LAST_FAR: AtomicU64 = AtomicU64::new(0);
static SECONDARY_RAN: AtomicBool = AtomicBool::new(false);
/// The device tree's PSCI conduit is HVC (QEMU without EL2 or EL3, running this guest alone).
static PSCI_HVC: AtomicBool = AtomicBool::new(false);

struct Handlers;

impl ExceptionHandlers for Handlers {
    extern "C" fn sync_current(mut state: RegisterStateRef<'_>) {
        let (esr, far): (u64, u64);
        // SAFETY: reading the syndrome registers of the exception being handled.
        unsafe {
            asm!("mrs {}, esr_el1", out(reg) esr, options(nomem, nostack));
            asm!("mrs {}, far_el1", out(reg) far, options(nomem, nostack));
        }
        LAST_ESR.store(esr, Ordering::SeqCst);
        LAST_FAR.store(far, Ordering::SeqCst);
        if esr >> 26 == 0x25 {
            containment::note_abort();
        }
        // Every check that faults does so on purpose, with a 4-byte instruction: step over it.
        // SAFETY: skipping one instruction of a check that expects to be skipped.
        unsafe { state.get_mut().elr += 4 };
    }
}

struct Console(Uart<'static>);

impl Write for Console {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for byte in s.bytes() {
            if byte == b'\n' {
                self.0.write_word(b'\r');
            }
            while self.0.is_tx_fifo_full() {}
            self.0.write_word(byte);
        }
        Ok(())
    }
}

/// What one check found.
type Outcome = Result<(), &'static str>;

/// Runs `access` expecting it to fault with a synchronous external abort on a data access.
fn expect_external_abort(access: impl FnOnce()) -> Outcome {
    LAST_ESR.store(0, Ordering::SeqCst);
    access();
    let esr = LAST_ESR.load(Ordering::SeqCst);
    if esr == 0 {
        return Err("no exception: the access went through");
    }
    let class = esr >> 26;
    let status = esr & 0x3f;
    if class != 0x25 {
        return Err("an exception, but not a data abort");
    }
    if status != 0x10 {
        return Err("a data abort, but not a synchronous external abort");
    }
    Ok(())
}

fn read_u64(address: usize) {
    // SAFETY: deliberately touches an address the hypervisor must refuse; the abort is caught
    // by `Handlers` and the load is skipped.
    unsafe { asm!("ldr {tmp}, [{a}]", a = in(reg) address, tmp = out(reg) _, options(nostack)) };
}

fn write_u32(address: usize, value: u32) {
    // SAFETY: as `read_u64`, for a store.
    unsafe { asm!("str {v:w}, [{a}]", a = in(reg) address, v = in(reg) value, options(nostack)) };
}

fn load_pair(address: usize) {
    // SAFETY: as `read_u64`; a load pair has no valid syndrome (ISV = 0) at EL2.
    unsafe {
        asm!("ldp {x}, {y}, [{a}]", a = in(reg) address, x = out(reg) _, y = out(reg) _, options(nostack))
    };
}

fn check_ram(ram: smmu::PhysRange) -> Outcome {
    let image_end = 0x4260_0000usize;
    let last = (ram.end() as usize) - 8;
    let middle = ((ram.base.get() + ram.size / 2) as usize) & !7;
    for (i, address) in [image_end, middle, last].into_iter().enumerate() {
        let pattern = 0x5a5a_0000_0000_0000u64 | (address as u64) ^ i as u64;
        // SAFETY: inside this guest's RAM (from its device tree) and outside its image and
        // stack; nothing else uses these words.
        let back = unsafe {
            core::ptr::write_volatile(address as *mut u64, pattern);
            core::ptr::read_volatile(address as *const u64)
        };
        if back != pattern {
            return Err("RAM did not read back what was written");
        }
    }
    Ok(())
}

fn hvc(function: u64) -> u64 {
    let result: u64;
    // SAFETY: an SMCCC call; the hypervisor answers it and returns here.
    unsafe {
        asm!("hvc #0", inout("x0") function => result, out("x1") _, out("x2") _, out("x3") _, options(nostack))
    };
    result
}

fn check_unknown_hypercall() -> Outcome {
    // An SMCCC "vendor hypervisor service" ID nobody implements.
    if hvc(0xc600_1234) == u64::MAX {
        Ok(())
    } else {
        Err("an unknown hypercall did not return NOT_SUPPORTED")
    }
}

fn check_undefined_trap() -> Outcome {
    LAST_ESR.store(0, Ordering::SeqCst);
    // SAFETY: reads an IMPLEMENTATION DEFINED register; the hypervisor traps it (HCR_EL2.TIDCP)
    // and must answer UNDEFINED, which the handler catches and skips.
    unsafe { asm!("mrs {}, s3_0_c15_c0_0", out(reg) _, options(nostack)) };
    let esr = LAST_ESR.load(Ordering::SeqCst);
    if esr == 0 {
        return Err("no exception");
    }
    if esr >> 26 != 0 {
        Err("an exception, but not UNDEFINED")
    } else {
        Ok(())
    }
}

fn check_psci_version() -> Outcome {
    match smccc::psci::version::<Smc>() {
        Ok(version) if version.major >= 1 => Ok(()),
        Ok(_) => Err("PSCI older than 1.0"),
        Err(_) => Err("PSCI_VERSION failed"),
    }
}

fn check_secondary_vcpu() -> Outcome {
    static mut STACK: aarch64_rt::Stack<4> = aarch64_rt::Stack::new();
    // SAFETY: the stack is used only by CPU 1, started once, here.
    let result = unsafe {
        aarch64_rt::start_core::<Smc, _, 4>(1, &raw mut STACK, || {
            SECONDARY_RAN.store(true, Ordering::SeqCst);
            let _ = smccc::psci::cpu_off::<Smc>();
            loop {
                core::hint::spin_loop();
            }
        })
    };
    if result.is_err() {
        return Err("CPU_ON failed");
    }
    for _ in 0..50_000_000u64 {
        if SECONDARY_RAN.load(Ordering::SeqCst) {
            return Ok(());
        }
        core::hint::spin_loop();
    }
    Err("the second vCPU never ran")
}

fn check_cpu_on_outside_ram() -> Outcome {
    // CPU_ON with an entry point in the hypervisor's memory must be refused.
    let result = smccc::smc64(0xc400_0003, {
        let mut args = [0u64; 17];
        args[0] = 1;
        args[1] = 0x4020_0000;
        args
    });
    if result[0] == (-2i64) as u64 {
        Ok(())
    } else {
        Err("CPU_ON into hypervisor memory was not refused")
    }
}

/// PCIe configuration space (QEMU virt's high ECAM), passed through to the guest.
const ECAM: usize = 0x40_1000_0000;
/// The `edu` device at 00:01.0 (stream ID 8), when the machine has one.
const EDU_CONFIG: usize = ECAM + (1 << 15);
/// Where this guest places edu's BAR0: the start of QEMU virt's 32-bit PCIe window.
const EDU_BAR0: usize = 0x1000_0000;
/// edu's internal DMA buffer, as the device addresses it.
const EDU_BUFFER: u64 = 0x4_0000;

fn mmio_read32(address: usize) -> u32 {
    // SAFETY: a device register passed through to this guest (ECAM or edu's BAR), mapped as
    // device memory by the initial page table.
    unsafe { core::ptr::read_volatile(address as *const u32) }
}

fn mmio_write32(address: usize, value: u32) {
    // SAFETY: as `mmio_read32`.
    unsafe { core::ptr::write_volatile(address as *mut u32, value) }
}

fn mmio_write64(address: usize, value: u64) {
    // SAFETY: as `mmio_read32`.
    unsafe { core::ptr::write_volatile(address as *mut u64, value) }
}

/// Finds and enables edu: BAR0, memory decoding and bus mastering.
fn edu_present() -> bool {
    if mmio_read32(EDU_CONFIG) != 0x11e8_1234 {
        return false;
    }
    mmio_write32(EDU_CONFIG + 0x10, EDU_BAR0 as u32);
    mmio_write32(EDU_CONFIG + 0x04, 0x0006); // memory space, bus master
    mmio_read32(EDU_BAR0) == 0x0100_00ed
}

/// One edu DMA transfer of `count` bytes; `to_ram` is the device-to-RAM direction.
fn edu_dma(source: u64, destination: u64, count: u64, to_ram: bool) -> Outcome {
    mmio_write64(EDU_BAR0 + 0x80, source);
    mmio_write64(EDU_BAR0 + 0x88, destination);
    mmio_write64(EDU_BAR0 + 0x90, count);
    mmio_write32(EDU_BAR0 + 0x98, 1 | if to_ram { 2 } else { 0 });
    // A transfer takes about 100 ms of virtual time; poll the "running" bit with a bound.
    for _ in 0..200_000_000u64 {
        if mmio_read32(EDU_BAR0 + 0x98) & 1 == 0 {
            return Ok(());
        }
        core::hint::spin_loop();
    }
    Err("the DMA transfer never completed")
}

const DMA_SOURCE: usize = 0x4300_0000;
const DMA_TARGET: usize = 0x4300_2000;

fn fill(address: usize, words: usize, seed: u64) {
    for i in 0..words {
        // SAFETY: inside this guest's RAM, above its image; used only by these checks.
        unsafe { core::ptr::write_volatile((address + i * 8) as *mut u64, seed ^ (i as u64) << 8) };
    }
}

fn matches(address: usize, words: usize, seed: u64) -> bool {
    // SAFETY: as `fill`.
    (0..words).all(|i| unsafe { core::ptr::read_volatile((address + i * 8) as *const u64) } == seed ^ (i as u64) << 8)
}

fn check_edu_dma_into_guest_ram() -> Outcome {
    let seed = 0x0123_4567_89ab_cdef;
    fill(DMA_SOURCE, 512, seed);
    fill(DMA_TARGET, 512, 0);
    edu_dma(DMA_SOURCE as u64, EDU_BUFFER, 4096, false)?;
    edu_dma(EDU_BUFFER, DMA_TARGET as u64, 4096, true)?;
    if matches(DMA_TARGET, 512, seed) {
        Ok(())
    } else {
        Err("the data did not arrive through the SMMU")
    }
}

/// The hypervisor's boot device tree and the start of its image (its code): both are
/// fingerprinted by the hypervisor, which checks them at power-off, so a DMA write that reached
/// either fails the run there (`hypervisor memory check: 6 regions intact` is required).
const HYPERVISOR_TREE: u64 = 0x4000_0000;
const HYPERVISOR_IMAGE: u64 = 0x4020_0000;

/// Bytes of each DMA aimed at hypervisor memory. QEMU records one stage-2 fault per 4 bytes,
/// so each such transfer gives 16 records, far inside the SMMU's 1024-entry event queue (a
/// 4 KiB one would fill it and lose the records after; only `flood` does that, on purpose).
const BLOCKED_DMA_BYTES: u64 = 64;

/// What edu's buffer holds for the bytes a blocked read could not fetch: QEMU completes the
/// transfer, and a read the SMMU refuses returns zeros.
const BLOCKED_READ_LEAVES: u64 = 0;

/// The seed of the pattern edu's buffer holds before each blocked read.
const DEVICE_FILL: u64 = 0x5555_5555_5555_5555;

fn check_edu_cannot_read_hypervisor_memory() -> Outcome {
    for target in [HYPERVISOR_TREE, HYPERVISOR_IMAGE] {
        // The whole device buffer gets a known pattern, then a blocked read into its start.
        fill(DMA_SOURCE, 512, DEVICE_FILL);
        edu_dma(DMA_SOURCE as u64, EDU_BUFFER, 4096, false)?;
        edu_dma(target, EDU_BUFFER, BLOCKED_DMA_BYTES, false)?;
        // Out again, whole, over a different pattern (so a copy that did not happen shows).
        fill(DMA_TARGET, 512, 0xeeee_eeee_eeee_eeee);
        edu_dma(EDU_BUFFER, DMA_TARGET as u64, 4096, true)?;
        let blocked_words = (BLOCKED_DMA_BYTES / 8) as usize;
        for word in 0..512 {
            // SAFETY: as `fill`.
            let got = unsafe { core::ptr::read_volatile((DMA_TARGET + word * 8) as *const u64) };
            if word < blocked_words && got != BLOCKED_READ_LEAVES {
                return Err("a blocked read brought data into the device's buffer");
            }
            if word >= blocked_words && got != DEVICE_FILL ^ (word as u64) << 8 {
                return Err("the device's buffer changed beyond the blocked read");
            }
        }
    }
    Ok(())
}

fn check_edu_cannot_write_hypervisor_memory() -> Outcome {
    // The device's buffer gets the fill pattern first: what it writes must differ from what
    // is there (after a read that was not blocked, it would hold the target's own bytes, and
    // writing them back would change nothing). The hypervisor checks its side (the
    // fingerprints of its device tree and image) at power-off.
    fill(DMA_SOURCE, 512, DEVICE_FILL);
    edu_dma(DMA_SOURCE as u64, EDU_BUFFER, 4096, false)?;
    edu_dma(EDU_BUFFER, HYPERVISOR_TREE, BLOCKED_DMA_BYTES, true)?;
    edu_dma(EDU_BUFFER, HYPERVISOR_IMAGE, BLOCKED_DMA_BYTES, true)
}

/// Instruction counting with the PMU (event 0x08, INST_RETIRED), for `bench` mode.
///
/// Under QEMU with `-icount shift=0` the count is exact and identical from run to run. The
/// filter picks the exception levels counted: the guest's EL1, the hypervisor's EL2, or both
/// (PMEVTYPER<n>_EL0: P, bit 31, excludes EL1; U, bit 30, excludes EL0; NSH, bit 27, includes
/// EL2).
mod pmu {
    use core::arch::asm;

    /// Which levels to count.
    #[derive(Clone, Copy)]
    pub(super) enum Levels {
        /// EL1 and EL2: the whole cost as the guest experiences it.
        GuestAndHypervisor,
        /// EL2 only: the hypervisor's share.
        Hypervisor,
    }

    /// Counts retired instructions while `f` runs, `iterations` times; returns the total.
    pub(super) fn count(levels: Levels, iterations: u64, mut f: impl FnMut()) -> u64 {
        let filter: u64 = match levels {
            Levels::GuestAndHypervisor => 1 << 30 | 1 << 27,
            Levels::Hypervisor => 1 << 31 | 1 << 30 | 1 << 27,
        };
        let (start, end): (u64, u64);
        // SAFETY: programs counter 0 of this CPU's PMU, which the hypervisor leaves to the
        // guest (MDCR_EL2.HPMN covers all counters); no memory is touched.
        unsafe {
            asm!(
                "msr pmevtyper0_el0, {t}",
                "mov {tmp}, #1",
                "msr pmcntenset_el0, {tmp}",
                "mrs {tmp}, pmcr_el0",
                "orr {tmp}, {tmp}, #1",
                "msr pmcr_el0, {tmp}",
                "isb",
                t = in(reg) filter | 0x08,
                tmp = out(reg) _,
                options(nostack),
            );
            asm!("isb", "mrs {}, pmevcntr0_el0", out(reg) start, options(nostack));
        }
        for _ in 0..iterations {
            f();
        }
        // SAFETY: reads the counter programmed above.
        unsafe { asm!("isb", "mrs {}, pmevcntr0_el0", out(reg) end, options(nostack)) };
        end.wrapping_sub(start) & 0xffff_ffff
    }
}

/// `bench` mode: the instruction cost of each kind of trap, printed as `BENCH` lines.
fn run_bench(out: &mut Console, platform: &vsmmu::Platform) {
    use pmu::Levels;
    const N: u64 = 1000;
    let cases: [(&str, &dyn Fn()); 4] = [
        ("hvc-unknown-call (NOT_SUPPORTED)", &|| {
            let _ = hvc(0xc600_1234);
        }),
        ("smc-psci-version (forwarded to firmware)", &|| {
            let _ = smccc::psci::version::<Smc>();
        }),
        ("stage2-abort-injected (read of hypervisor memory)", &|| {
            read_u64(0x4020_0000);
        }),
        ("impdef-register-undefined-injected", &|| {
            // SAFETY: as in `check_undefined_trap`: trapped, answered UNDEFINED, skipped.
            unsafe { asm!("mrs {}, s3_0_c15_c0_0", out(reg) _, options(nostack)) };
        }),
    ];
    let _ = writeln!(out, "BENCH iterations={N}");
    // The floor: the hypervisor's benchmark-only vectors, which answer HVC #0 with no work at
    // all (or only saving and restoring x0-x30), measured the same way as the traps below.
    for (name, function) in [
        ("floor-empty-vector (checks ESR, ERET)", 0xc600_0f10u64),
        (
            "floor-save-all-vector (saves and restores x0-x30)",
            0xc600_0f11,
        ),
    ] {
        let mut counts = [0u64; 2];
        for (levels, count) in [Levels::GuestAndHypervisor, Levels::Hypervisor]
            .into_iter()
            .zip(counts.iter_mut())
        {
            if hvc(function) != 0 {
                let _ = writeln!(out, "BENCH {name}: not available (benchmark mode off?)");
                break;
            }
            *count = pmu::count(levels, N, || {
                // SAFETY: HVC #0 under the floor vectors returns at once, registers unchanged.
                unsafe { asm!("hvc #0", options(nostack)) };
            });
            // SAFETY: HVC #1 switches back to the hypervisor's vectors and returns.
            unsafe { asm!("hvc #1", options(nostack)) };
        }
        let _ = writeln!(
            out,
            "BENCH {name}: {} instructions per trap, {} of them at EL2",
            counts[0] / N,
            counts[1] / N
        );
    }
    for (name, case) in cases {
        let total = pmu::count(Levels::GuestAndHypervisor, N, case);
        let el2 = pmu::count(Levels::Hypervisor, N, case);
        let _ = writeln!(
            out,
            "BENCH {name}: {} instructions per trap, {} of them at EL2",
            total / N,
            el2 / N
        );
    }
    // Interrupts, end to end: each case's count covers the trap (if any), the physical
    // interrupt taken at EL2, its injection and the guest's acknowledge and end.
    interrupts::bench::prepare();
    let edu = edu_present();
    let interrupt_cases: [(&str, &dyn Fn(), bool); 4] = [
        (
            "vsmmu-register-read (IDR0, emulated)",
            &|| {
                let _ = mmio_read32(0x0905_0000);
            },
            true,
        ),
        (
            "gicd-write-emulated (GICD_ISENABLER of a guest SPI)",
            &interrupts::bench::distributor_write,
            true,
        ),
        (
            "sgi-to-self (trapped send, taken at EL2, injected, acknowledged, ended)",
            &interrupts::bench::sgi_to_self,
            true,
        ),
        (
            "device-interrupt (edu raises, taken at EL2, injected HW=1, acknowledged, ended)",
            &|| interrupts::bench::device_interrupt(EDU_BAR0),
            edu,
        ),
    ];
    for (name, case, available) in interrupt_cases {
        if !available {
            let _ = writeln!(out, "BENCH {name}: not available (no edu device)");
            continue;
        }
        let total = pmu::count(Levels::GuestAndHypervisor, N, case);
        let el2 = pmu::count(Levels::Hypervisor, N, case);
        let _ = writeln!(
            out,
            "BENCH {name}: {} instructions each, {} of them at EL2",
            total / N,
            el2 / N
        );
    }
    // The vSMMU's command queue, as Linux drives it (100 iterations: each is a whole batch).
    const BATCHES: u64 = 100;
    let outcome = vsmmu::bench(platform, &mut |name, case| {
        let total = pmu::count(Levels::GuestAndHypervisor, BATCHES, &mut *case);
        let el2 = pmu::count(Levels::Hypervisor, BATCHES, &mut *case);
        let _ = writeln!(
            out,
            "BENCH {name}: {} instructions each, {} of them at EL2",
            total / BATCHES,
            el2 / BATCHES
        );
    });
    if let Err(why) = outcome {
        let _ = writeln!(out, "BENCH vsmmu-cmdq: not available ({why})");
    }
    let baseline = pmu::count(Levels::GuestAndHypervisor, N, || core::hint::black_box(()));
    let _ = writeln!(
        out,
        "BENCH empty-loop baseline: {} instructions per iteration",
        baseline / N
    );
}

fn check_cpu_on_running_cpu_refused() -> Outcome {
    // CPU_ON for this very CPU (MPIDR 0), which is running: the hypervisor must answer
    // ALREADY_ON without touching the CPU's EL2 stack (which a second start would overwrite).
    let result = smccc::smc64(0xc400_0003, {
        let mut args = [0u64; 17];
        args[0] = 0;
        args[1] = 0x4220_0000;
        args
    });
    if result[0] == (-4i64) as u64 {
        Ok(())
    } else {
        Err("CPU_ON for a running CPU was not ALREADY_ON")
    }
}

/// The `gic` mode's checks (see `interrupts`), with their own verdict.
fn gic_checks(out: &mut impl Write) {
    let mut failed = 0u32;
    let mut report = |name: &str, outcome: Outcome| match outcome {
        Ok(()) => {
            let _ = writeln!(out, "GUEST: PASS {name}");
        }
        Err(why) => {
            failed += 1;
            let _ = writeln!(out, "GUEST: FAIL {name}: {why}");
        }
    };
    report("virtual-timer-arrives", interrupts::virtual_timer_arrives());
    report("own-sgi-arrives", interrupts::own_sgi_arrives());
    report(
        "list-register-overflow-loses-nothing",
        interrupts::list_register_overflow_loses_nothing(),
    );
    report(
        "hypervisors-sgi-refused",
        interrupts::hypervisors_sgi_refused(),
    );
    let edu = edu_present();
    report(
        "device-interrupt-arrives",
        if edu {
            interrupts::device_interrupt_arrives(EDU_BAR0)
        } else {
            Err("no edu device at 00:01.0")
        },
    );
    interrupts::sgi_to_another_cpu();
    report(
        "hypervisor-interrupts-untouchable",
        interrupts::hypervisor_interrupts_untouchable(),
    );
    report(
        "smmu-interrupt-fires-while-masked",
        if edu {
            interrupts::smmu_interrupt_fires_while_masked(|| {
                edu_dma(EDU_BUFFER, 0x4000_0000, 64, true)
            })
        } else {
            Err("no edu device at 00:01.0")
        },
    );
    if failed == 0 {
        let _ = writeln!(out, "GUEST VERDICT: PASS 7 checks");
    } else {
        let _ = writeln!(out, "GUEST VERDICT: FAIL {failed} of 7 checks failed");
    }
}

fn main(x0: u64, _x1: u64, _x2: u64, _x3: u64) -> ! {
    // SAFETY: UART0 is this guest's console, mapped as device memory above and used by nothing
    // else in the guest.
    let uart = unsafe {
        UniqueMmioPointer::new(
            NonNull::new(UART0 as *mut PL011Registers).unwrap_or(NonNull::dangling()),
        )
    };
    let mut uart = Uart::new(uart);
    let config = LineConfig {
        data_bits: DataBits::Bits8,
        parity: Parity::None,
        stop_bits: StopBits::One,
    };
    let _ = uart.enable(config, 115_200, 24_000_000);
    let mut out = Console(uart);
    let _ = writeln!(out, "GUEST: test guest at EL1, device tree at {x0:#x}");

    // The hypervisor passes a device tree at x0. QEMU, loading this ELF itself (no
    // hypervisor), passes x0 = 0 and puts the tree at the start of RAM, where this guest's
    // initial page table maps normal memory: it is used when its magic is there.
    let qemu_alone = x0 == 0;
    let x0 = if x0 == 0 {
        // SAFETY: the start of QEMU virt's RAM, mapped by the initial page table and below
        // this image; only read.
        let magic = unsafe { core::ptr::read_volatile(QEMU_TREE as *const u32) };
        if u32::from_be(magic) == 0xd00d_feed {
            let _ = writeln!(
                out,
                "GUEST: no device tree at x0, using QEMU's at {QEMU_TREE:#x}"
            );
            QEMU_TREE
        } else {
            0
        }
    } else {
        x0
    };
    let (ram, ram_end, smmu, mode) = if x0 == 0 {
        (None, None, None, None)
    } else {
        // SAFETY: a device tree in this guest's RAM (from the hypervisor at x0, or QEMU's);
        // its header's total size (bounded to the 2 MiB window it lives in) gives the length.
        let tree = unsafe {
            let size = u32::from_be(core::ptr::read_volatile((x0 + 4) as *const u32)).min(2 << 20);
            core::slice::from_raw_parts(x0 as *const u8, size as usize)
        };
        match board::discover(tree) {
            Ok(found) => {
                PSCI_HVC.store(
                    found.psci == Some(board::PsciConduit::Hvc),
                    Ordering::SeqCst,
                );
                (
                    found.memory.first().copied(),
                    found.memory.last().map(|bank| bank.end()),
                    found.smmu.map(|smmu| smmu.registers.base.get()),
                    found
                        .bootargs
                        .and_then(|a| a.split(' ').find(|w| !w.is_empty())),
                )
            }
            Err(_) => (None, None, None, None),
        }
    };
    match mode {
        Some("vsmmu") => {
            let platform = vsmmu::Platform {
                smmu,
                ram_base: ram.map(|bank| bank.base.get()),
                ram_end,
                qemu_alone,
            };
            vsmmu::run(&mut out, &platform);
            power_off();
        }
        Some("bench") => {
            let platform = vsmmu::Platform {
                smmu,
                ram_base: ram.map(|bank| bank.base.get()),
                ram_end,
                qemu_alone,
            };
            run_bench(&mut out, &platform);
            power_off();
        }
        Some("pmu") => {
            match containment::pmu_blind_to_el2() {
                Ok(()) => {
                    let _ = writeln!(out, "GUEST: PASS pmu-blind-to-el2");
                    let _ = writeln!(out, "GUEST VERDICT: PASS 1 checks");
                }
                Err(why) => {
                    let _ = writeln!(out, "GUEST: FAIL pmu-blind-to-el2: {why}");
                    let _ = writeln!(out, "GUEST VERDICT: FAIL 1 of 1 checks failed");
                }
            }
            power_off();
        }
        Some("flood") => {
            flood(&mut out);
            power_off();
        }
        Some("gic") => {
            gic_checks(&mut out);
            power_off();
        }
        _ => {}
    }

    let mut passed = 0u32;
    let mut failed = 0u32;
    let mut report = |name: &str, outcome: Outcome| match outcome {
        Ok(()) => {
            passed += 1;
            let _ = writeln!(out, "GUEST: PASS {name}");
        }
        Err(why) => {
            failed += 1;
            let _ = writeln!(out, "GUEST: FAIL {name}: {why}");
        }
    };
    report(
        "device-tree-ram",
        match ram {
            Some(ram) if ram.base.get() == 0x4200_0000 => Ok(()),
            Some(_) => Err("RAM does not start after the hypervisor's carve-out"),
            None => Err("no memory node"),
        },
    );
    if let Some(ram) = ram {
        report("ram-reads-back", check_ram(ram));
    }
    report(
        "hypervisor-image-aborts",
        expect_external_abort(|| read_u64(0x4020_0000)),
    );
    report(
        "hypervisor-dtb-aborts",
        expect_external_abort(|| read_u64(0x4000_0000)),
    );
    report(
        "hypervisor-uart-aborts",
        expect_external_abort(|| write_u32(0x0904_0000, 0x41)),
    );
    // The SMMU's address holds the guest's virtual SMMU: stage 1 only (IDR0.S1P = 1,
    // S2P = 0), where the physical SMMU has both.
    report("smmu-registers-are-virtual", {
        let idr0 = mmio_read32(0x0905_0000);
        if idr0 & 0b11 == 0b10 {
            Ok(())
        } else {
            Err("IDR0 at the SMMU's address is not a stage-1-only SMMU's")
        }
    });
    report(
        "isv0-access-aborts",
        expect_external_abort(|| load_pair(0x0905_0000)),
    );
    // The GIC ITS is a DMA master outside the SMMU: withheld from the guest.
    report(
        "its-withheld-aborts",
        expect_external_abort(|| read_u64(0x0808_0000)),
    );
    report("unknown-hypercall-not-supported", check_unknown_hypercall());
    report("impdef-register-undefined", check_undefined_trap());
    report("psci-version", check_psci_version());
    report("cpu-on-outside-ram-refused", check_cpu_on_outside_ram());
    report("secondary-vcpu-runs", check_secondary_vcpu());
    report(
        "cpu-on-running-cpu-refused",
        check_cpu_on_running_cpu_refused(),
    );
    let edu = edu_present();
    if edu {
        report("edu-dma-into-guest-ram", check_edu_dma_into_guest_ram());
        report(
            "edu-cannot-read-hypervisor-memory",
            check_edu_cannot_read_hypervisor_memory(),
        );
        report(
            "edu-dma-at-hypervisor-memory-completes",
            check_edu_cannot_write_hypervisor_memory(),
        );
    }
    // DMA around the SMMU, and CPU state shared with EL2.
    report("fw-cfg-dma-refused", containment::fw_cfg_dma());
    report("virtio-mmio-dma-refused", containment::virtio_mmio_dma());
    report("lpi-tables-confined", containment::lpi_tables());
    if edu {
        report(
            "fp-simd-preserved-across-traps",
            containment::fp_simd_across_traps(|| edu_dma(EDU_BUFFER, HYPERVISOR_TREE, 8, true)),
        );
    }
    if !edu {
        let _ = writeln!(out, "GUEST: SKIP edu-*: no edu device at 00:01.0");
    }

    if failed == 0 {
        let _ = writeln!(out, "GUEST VERDICT: PASS {passed} checks");
    } else {
        let _ = writeln!(
            out,
            "GUEST VERDICT: FAIL {failed} of {} checks failed",
            passed + failed
        );
    }
    power_off();
}

fn power_off() -> ! {
    if PSCI_HVC.load(Ordering::SeqCst) {
        let _ = smccc::psci::system_off::<Hvc>();
    }
    let _ = smccc::psci::system_off::<Smc>();
    loop {
        core::hint::spin_loop();
    }
}

/// `flood` mode: every kind of guest-caused event the hypervisor might log, many times over.
/// The hypervisor's log must stay short (the scenario counts its lines), and the calls must
/// still be answered.
fn flood(out: &mut Console) {
    const N: usize = 1000;
    let mut refused = 0;
    for _ in 0..64 {
        let result = smccc::smc64(0xc400_0003, {
            let mut args = [0u64; 17];
            args[0] = 1;
            args[1] = 0x4020_0000;
            args
        });
        refused += usize::from(result[0] == (-2i64) as u64);
    }
    let mut aborts = 0;
    for _ in 0..N {
        aborts += usize::from(expect_external_abort(|| read_u64(0x4020_0000)).is_ok());
        aborts += usize::from(expect_external_abort(|| load_pair(0x4020_0000)).is_ok());
    }
    let mut unsupported = 0;
    let mut undefined = 0;
    for _ in 0..N {
        unsupported += usize::from(hvc(0xc600_1234) == u64::MAX);
        undefined += usize::from(check_undefined_trap().is_ok());
    }
    // Blocked DMA, four times what the SMMU's 1024-entry event queue holds: 4096 stage-2 fault
    // records, in transfers of 1024 each. The hypervisor drains the queue on the SMMU's
    // interrupt between transfers, so none is lost (the scenario counts them all).
    let mut dma = 0;
    if edu_present() {
        for _ in 0..4 {
            dma += usize::from(edu_dma(EDU_BUFFER, HYPERVISOR_TREE, 4096, true).is_ok());
        }
    }
    let _ = writeln!(
        out,
        "GUEST: flood: {refused} CPU_ON refused, {aborts} aborts, {unsupported} unsupported calls, {undefined} undefined, {dma} blocked DMAs"
    );
    let ok = refused == 64 && aborts == 2 * N && unsupported == N && undefined == N && dma == 4;
    let _ = writeln!(
        out,
        "GUEST VERDICT: {}",
        if ok {
            "PASS flood answered"
        } else {
            "FAIL flood not answered as expected"
        }
    );
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    let _ = smccc::psci::system_off::<Smc>();
    loop {
        core::hint::spin_loop();
    }
}
