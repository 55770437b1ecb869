//! Running a guest at EL1: EL2 configuration, entry, trap handling, PSCI proxying and
//! secondary vCPUs.
//!
//! The guest owns its CPUs' EL1 state outright (one guest, one vCPU per physical CPU, no EL1
//! context switching): the hypervisor configures EL2 once per CPU, enters the guest, and from
//! then on runs only when the guest traps. Interrupts, the GIC's CPU interface and the timers
//! stay with the guest (HCR_EL2.IMO/FMO/AMO = 0); the guest's devices are passed through by
//! stage 2 (see [`crate::stage2`]).

use super::power::{ExitStatus, exit};
use super::vectors::TrapFrame;
use crate::exception::{DataAbort, ExceptionClass};
use crate::mmio::{MmioAccess, MmioRegistry};
use crate::psci::{self, GuestCall};
use crate::stats::{self, ExitReason, GuestNoise};
use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use smmu::PhysRange;

/// HCR_EL2 for a running guest.
const HCR_EL2_GUEST: u64 = {
    const VM: u64 = 1 << 0; // stage 2 on
    const SWIO: u64 = 1 << 1; // set/way invalidation by data cache clean-invalidate
    const FB: u64 = 1 << 9; // broadcast TLB and cache maintenance to the inner shareable domain
    const BSU_INNER: u64 = 1 << 10;
    const TSC: u64 = 1 << 19; // trap SMC: PSCI goes through the hypervisor
    const TIDCP: u64 = 1 << 20; // trap IMPLEMENTATION DEFINED registers: the guest gets UNDEFINED
    const RW: u64 = 1 << 31; // EL1 is AArch64
    const APK: u64 = 1 << 40; // pointer authentication keys and instructions are the guest's
    const API: u64 = 1 << 41;
    VM | SWIO | FB | BSU_INNER | TSC | TIDCP | RW | APK | API
};

/// SMMU event records handled per guest trap, at most.
const EVENTS_PER_TRAP: u32 = 8;

/// SPSR for entering the guest: EL1h with D, A, I and F masked, as the boot protocols require.
const SPSR_EL1H_MASKED: u64 = 0x3c5;

/// SCTLR_EL1 as the guest expects it on entry: MMU and caches off, RES1 bits set.
const SCTLR_EL1_RESET: u64 = 0x30d0_0800;

/// The VM every CPU runs: set once by the primary CPU before any guest code runs.
struct VmState {
    vttbr: AtomicU64,
    vtcr: AtomicU64,
    ram_start: AtomicU64,
    ram_end: AtomicU64,
    max_vcpus: AtomicUsize,
    pmu_counts_el2: AtomicBool,
}

static VM: VmState = VmState {
    vttbr: AtomicU64::new(0),
    vtcr: AtomicU64::new(0),
    ram_start: AtomicU64::new(0),
    ram_end: AtomicU64::new(0),
    max_vcpus: AtomicUsize::new(1),
    pmu_counts_el2: AtomicBool::new(false),
};

static MMIO: spin::Once<MmioRegistry> = spin::Once::new();

/// The VMID of the (single) guest.
pub const GUEST_VMID: u16 = 1;

/// What every CPU needs to run the VM.
#[allow(
    missing_debug_implementations,
    reason = "holds the MMIO registry of trait objects"
)]
pub struct VmConfig {
    /// The root of the CPU's stage-2 table.
    pub stage2_root: u64,
    /// Guest RAM.
    pub ram: PhysRange,
    /// The most vCPUs the guest may start.
    pub max_vcpus: usize,
    /// The emulated devices.
    pub mmio: MmioRegistry,
    /// Benchmark mode: the guest's PMU may count at EL2.
    pub pmu_counts_el2: bool,
}

/// Records the VM every CPU will run and the emulated devices. Called once, before entry.
pub fn set_vm(config: VmConfig) {
    let vtcr = vtcr_el2();
    VM.vttbr.store(
        config.stage2_root | u64::from(GUEST_VMID) << 48,
        Ordering::Relaxed,
    );
    VM.vtcr.store(vtcr, Ordering::Relaxed);
    VM.ram_start.store(config.ram.base.get(), Ordering::Relaxed);
    VM.ram_end.store(config.ram.end(), Ordering::Relaxed);
    VM.max_vcpus
        .store(config.max_vcpus.clamp(1, MAX_CPUS), Ordering::Relaxed);
    VM.pmu_counts_el2
        .store(config.pmu_counts_el2, Ordering::Relaxed);
    MMIO.call_once(|| config.mmio);
}

/// MDCR_EL2 for a running guest. The guest owns every PMU counter (HPMN = PMCR_EL0.N) and the
/// debug features, but EL2 is invisible to the PMU unless benchmarking: HPMD (FEAT_PMUv3p1)
/// stops the event counters at EL2, HCCD (FEAT_PMUv3p5) the cycle counter. Without them a
/// guest counts the hypervisor's instructions or cycles with an EL2 filter.
fn mdcr_el2(pmu_counts_el2: bool) -> u64 {
    const HPMD: u64 = 1 << 17;
    const HCCD: u64 = 1 << 23;
    let (pmcr, dfr0): (u64, u64);
    // SAFETY: reading PMCR_EL0 (at EL2) and an ID register has no side effects.
    unsafe {
        asm!("mrs {}, pmcr_el0", out(reg) pmcr, options(nomem, nostack, preserves_flags));
        asm!("mrs {}, id_aa64dfr0_el1", out(reg) dfr0, options(nomem, nostack, preserves_flags));
    }
    let hpmn = (pmcr >> 11) & 0x1f;
    let pmu_version = (dfr0 >> 8) & 0xf;
    if pmu_counts_el2 || pmu_version == 0xf {
        return hpmn;
    }
    let hpmd = if pmu_version >= 4 { HPMD } else { 0 };
    let hccd = if pmu_version >= 6 { HCCD } else { 0 };
    hpmn | hpmd | hccd
}

/// Sets the fine-grained trap registers (FEAT_FGT, FEAT_FGT2) to a known value where the CPU
/// has them: their reset values are UNKNOWN on hardware. Zero traps nothing the positive bits
/// name, and traps what the negative ("n") bits name: registers of features the hypervisor
/// does not offer. Also keeps the statistical profiler and trace from sampling EL2.
fn set_fine_grained_traps_and_el2_observability() {
    let (mmfr0, pfr0, dfr0): (u64, u64, u64);
    // SAFETY: reading ID registers has no side effects.
    unsafe {
        asm!("mrs {}, id_aa64mmfr0_el1", out(reg) mmfr0, options(nomem, nostack, preserves_flags));
        asm!("mrs {}, id_aa64pfr0_el1", out(reg) pfr0, options(nomem, nostack, preserves_flags));
        asm!("mrs {}, id_aa64dfr0_el1", out(reg) dfr0, options(nomem, nostack, preserves_flags));
    }
    let fgt = (mmfr0 >> 56) & 0xf;
    let amu = (pfr0 >> 44) & 0xf != 0;
    let spe = (dfr0 >> 32) & 0xf != 0;
    let trace_filter = (dfr0 >> 40) & 0xf != 0;
    // SAFETY: each register written exists (its feature is in the ID registers read above) and
    // only controls traps of, or what is observable at, lower ELs; the guest is not running
    // on this CPU yet.
    unsafe {
        if fgt >= 1 {
            asm!(
                "msr S3_4_C1_C1_4, xzr", // HFGRTR_EL2
                "msr S3_4_C1_C1_5, xzr", // HFGWTR_EL2
                "msr S3_4_C1_C1_6, xzr", // HFGITR_EL2
                "msr S3_4_C3_C1_4, xzr", // HDFGRTR_EL2
                "msr S3_4_C3_C1_5, xzr", // HDFGWTR_EL2
                options(nomem, nostack, preserves_flags),
            );
            if amu {
                asm!(
                    "msr S3_4_C3_C1_6, xzr",
                    options(nomem, nostack, preserves_flags)
                ); // HAFGRTR_EL2
            }
        }
        if fgt >= 2 {
            asm!(
                "msr S3_4_C3_C1_2, xzr", // HFGRTR2_EL2
                "msr S3_4_C3_C1_3, xzr", // HFGWTR2_EL2
                "msr S3_4_C3_C1_7, xzr", // HFGITR2_EL2
                "msr S3_4_C3_C1_0, xzr", // HDFGRTR2_EL2
                "msr S3_4_C3_C1_1, xzr", // HDFGWTR2_EL2
                options(nomem, nostack, preserves_flags),
            );
        }
        if spe {
            // PMSCR_EL2: no statistical profiling at EL2.
            asm!(
                "msr S3_4_C9_C9_0, xzr",
                options(nomem, nostack, preserves_flags)
            );
        }
        if trace_filter {
            // TRFCR_EL2: no trace at EL2.
            asm!(
                "msr S3_4_C1_C2_1, xzr",
                options(nomem, nostack, preserves_flags)
            );
        }
        asm!("isb", options(nomem, nostack, preserves_flags));
    }
}

/// VTCR_EL2: 4 KiB granule, 44-bit IPA walked from level 0, inner-shareable write-back walks,
/// 16-bit VMIDs when the CPU has them.
fn vtcr_el2() -> u64 {
    let mmfr0: u64;
    let mmfr1: u64;
    // SAFETY: reading ID registers has no side effects.
    unsafe {
        asm!("mrs {}, id_aa64mmfr0_el1", out(reg) mmfr0, options(nomem, nostack, preserves_flags));
        asm!("mrs {}, id_aa64mmfr1_el1", out(reg) mmfr1, options(nomem, nostack, preserves_flags));
    }
    // PS: the CPU's physical address size, at least the 44 bits the IPA space needs.
    let pa_range = (mmfr0 & 0xf).clamp(4, 6);
    let vmid16 = u64::from((mmfr1 >> 4) & 0xf == 2);
    const RES1: u64 = 1 << 31;
    crate::stage2::T0SZ
        | crate::stage2::SL0_LEVEL0 << 6
        | 1 << 8 // IRGN0: write-back read/write-allocate
        | 1 << 10 // ORGN0: write-back read/write-allocate
        | 3 << 12 // SH0: inner shareable
        | pa_range << 16
        | vmid16 << 19
        | RES1
}

/// Configures this CPU's EL2 to run the guest. Every CPU calls it before entering the guest.
pub fn configure_cpu() {
    let vttbr = VM.vttbr.load(Ordering::Relaxed);
    let vtcr = VM.vtcr.load(Ordering::Relaxed);
    let mdcr = mdcr_el2(VM.pmu_counts_el2.load(Ordering::Relaxed));
    set_fine_grained_traps_and_el2_observability();
    // SAFETY: these registers configure how EL1/EL0 run and are translated; the guest is not
    // running on this CPU yet, and the stage-2 table named by VTTBR is complete and lives for
    // the rest of the run. The TLB invalidation drops anything cached for this VMID.
    unsafe {
        asm!(
            "msr vtcr_el2, {vtcr}",
            "msr vttbr_el2, {vttbr}",
            "isb",
            "tlbi vmalls12e1",
            "dsb nsh",
            // The guest sees its own MIDR and MPIDR.
            "mrs {tmp}, midr_el1",
            "msr vpidr_el2, {tmp}",
            "mrs {tmp}, mpidr_el1",
            "msr vmpidr_el2, {tmp}",
            // EL1 may use the physical timer and counter; no virtual offset.
            "mov {tmp}, #3",
            "msr cnthctl_el2, {tmp}",
            "msr cntvoff_el2, xzr",
            // GICv3: EL1 uses the system-register interface (SRE) and may enable it (Enable).
            "mov {tmp}, #0xf",
            "msr icc_sre_el2, {tmp}",
            "isb",
            // No FP/SIMD/SVE trapping: those are the guest's (TFP = TZ = 0, RES1 bits set;
            // bit 12, TSM, stays set: SME is not offered).
            "mov {tmp}, #0x32ff",
            "msr cptr_el2, {tmp}",
            "isb",
            // Performance monitors and debug stay the guest's, EL2 hidden from the PMU.
            "msr mdcr_el2, {mdcr}",
            "msr sctlr_el1, {sctlr}",
            "msr hcr_el2, {hcr}",
            "isb",
            vtcr = in(reg) vtcr,
            vttbr = in(reg) vttbr,
            sctlr = in(reg) SCTLR_EL1_RESET,
            hcr = in(reg) HCR_EL2_GUEST,
            mdcr = in(reg) mdcr,
            tmp = out(reg) _,
            options(nostack, preserves_flags),
        );
        // FEAT_HCX: HCRX_EL2 gates some EL1 features. Enable memory copy/set instructions
        // (FEAT_MOPS, HCRX_EL2.MSCEn) when present: a kernel that sees MOPS in its ID registers
        // uses them, and they are UNDEFINED at EL1 otherwise.
        let (mmfr1, isar2): (u64, u64);
        asm!("mrs {}, id_aa64mmfr1_el1", out(reg) mmfr1, options(nomem, nostack, preserves_flags));
        asm!("mrs {}, id_aa64isar2_el1", out(reg) isar2, options(nomem, nostack, preserves_flags));
        if (mmfr1 >> 40) & 0xf != 0 {
            let mops = u64::from((isar2 >> 16) & 0xf != 0);
            asm!("msr S3_4_C1_C2_2, {}", "isb", in(reg) mops << 11, options(nostack, preserves_flags));
        }
        // SVE: let the guest use the largest vector length, when the CPU has SVE.
        let pfr0: u64;
        asm!("mrs {}, id_aa64pfr0_el1", out(reg) pfr0, options(nomem, nostack, preserves_flags));
        if (pfr0 >> 32) & 0xf != 0 {
            asm!("msr S3_4_C1_C2_0, {}", "isb", in(reg) 0x1ffu64, options(nostack, preserves_flags));
        }
    }
}

/// Enters the guest at `entry` with `x0`, resetting this CPU's EL2 stack to `stack_top`.
pub fn enter_guest(entry: u64, x0: u64, stack_top: u64) -> ! {
    // SAFETY: EL2 is configured for the guest (`configure_cpu`); `stack_top` is the top of this
    // CPU's own EL2 stack, which nothing on it still uses (this function never returns). The
    // guest starts with every other general-purpose register zero, as boot protocols require.
    unsafe {
        asm!(
            "mov sp, x9",
            "msr elr_el2, x10",
            "msr spsr_el2, x11",
            "mov x1, xzr", "mov x2, xzr", "mov x3, xzr", "mov x4, xzr", "mov x5, xzr",
            "mov x6, xzr", "mov x7, xzr", "mov x8, xzr", "mov x9, xzr", "mov x10, xzr",
            "mov x11, xzr", "mov x12, xzr", "mov x13, xzr", "mov x14, xzr", "mov x15, xzr",
            "mov x16, xzr", "mov x17, xzr", "mov x18, xzr", "mov x19, xzr", "mov x20, xzr",
            "mov x21, xzr", "mov x22, xzr", "mov x23, xzr", "mov x24, xzr", "mov x25, xzr",
            "mov x26, xzr", "mov x27, xzr", "mov x28, xzr", "mov x29, xzr", "mov x30, xzr",
            "eret",
            in("x0") x0,
            in("x9") stack_top,
            in("x10") entry,
            in("x11") SPSR_EL1H_MASKED,
            options(noreturn),
        );
    }
}

/// Handles a synchronous exception from the guest. Returning resumes the guest at `frame.elr`.
pub fn handle_sync_lower(frame: &mut TrapFrame) {
    // The guest owns the interrupt controller, so the SMMU's event queue is looked at when the
    // hypervisor runs anyway: a bounded number of records per trap.
    super::smmu::drain_events(EVENTS_PER_TRAP);
    match ExceptionClass::from_esr(frame.esr) {
        // HVC: ELR already points past the instruction.
        ExceptionClass::Hvc64 => {
            let _ = stats::count(ExitReason::Hvc);
            handle_call(frame);
        }
        // A trapped SMC: ELR points at the SMC itself.
        ExceptionClass::Smc64 => {
            let _ = stats::count(ExitReason::Smc);
            frame.elr += 4;
            handle_call(frame);
        }
        ExceptionClass::DataAbortLower => handle_data_abort(frame),
        ExceptionClass::InstructionAbortLower => {
            if stats::count(ExitReason::InstructionAbort) {
                defmt::warn!(
                    "guest instruction abort at {=u64:#x}: external abort injected",
                    frame.far
                );
            }
            inject(frame, Injected::InstructionAbort);
        }
        class => {
            if stats::count(ExitReason::UndefinedInjected) {
                defmt::warn!(
                    "guest trap {} (ESR {=u64:#010x}) at {=u64:#x}: undefined instruction injected",
                    class,
                    frame.esr,
                    frame.elr
                );
            }
            inject(frame, Injected::Undefined);
        }
    }
}

/// Handles an IRQ, FIQ or SError routed to EL2 from the guest. With IMO/FMO/AMO clear none
/// should arrive; count and return.
pub fn handle_async_lower() {
    let _ = stats::count(ExitReason::Asynchronous);
}

fn handle_data_abort(frame: &mut TrapFrame) {
    let hpfar: u64;
    // SAFETY: reading HPFAR_EL2 has no side effects; it describes the abort being handled.
    unsafe { asm!("mrs {}, hpfar_el2", out(reg) hpfar, options(nomem, nostack, preserves_flags)) };
    let access = MmioAccess::from_syndrome(frame.esr, hpfar, frame.far);
    let handled = access.and_then(|access| {
        let (handler, offset) = MMIO.get()?.find(&access)?;
        if access.write {
            let value = access.store_value(&frame.registers);
            handler.write(offset, &access, value).ok()
        } else {
            let value = handler.read(offset, &access).ok()?;
            access.complete_load(&mut frame.registers, value);
            Some(())
        }
    });
    if handled.is_some() {
        let _ = stats::count(ExitReason::MmioHandled);
        // ESR.IL: a 32-bit instruction, or a 16-bit T32 one from an AArch32 EL0.
        frame.elr += if frame.esr & 1 << 25 != 0 { 4 } else { 2 };
        return;
    }
    let abort = DataAbort::from_esr(frame.esr);
    if stats::count(ExitReason::ExternalAbortInjected) {
        defmt::warn!(
            "guest {=str} at IPA {=u64:#x} (VA {=u64:#x}, PC {=u64:#x}, ISV {=bool}): external abort injected",
            if abort.write { "write" } else { "read" },
            crate::exception::fault_ipa(hpfar, frame.far),
            frame.far,
            frame.elr,
            abort.syndrome_valid
        );
    }
    inject(frame, Injected::DataAbort { write: abort.write });
}

/// An exception the hypervisor makes the guest take.
#[derive(Clone, Copy)]
enum Injected {
    /// Synchronous external abort on a data access.
    DataAbort { write: bool },
    /// Synchronous external abort on an instruction fetch.
    InstructionAbort,
    /// Undefined instruction.
    Undefined,
}

/// Makes the guest take `exception` as if its own EL1 had taken it at `frame.elr`.
fn inject(frame: &mut TrapFrame, exception: Injected) {
    const IL: u64 = 1 << 25;
    const SYNCHRONOUS_EXTERNAL_ABORT: u64 = 0x10;
    // SPSR.M: bit 4 set means the guest was in AArch32 (which only EL0 can be, HCR_EL2.RW = 1).
    let aarch32 = frame.spsr & 0x10 != 0;
    let mode = frame.spsr & 0xf;
    let from_el0 = aarch32 || mode == 0;
    let (class, iss) = match exception {
        Injected::DataAbort { write } => (
            if from_el0 { 0x24 } else { 0x25 },
            SYNCHRONOUS_EXTERNAL_ABORT | u64::from(write) << 6,
        ),
        Injected::InstructionAbort => (
            if from_el0 { 0x20 } else { 0x21 },
            SYNCHRONOUS_EXTERNAL_ABORT,
        ),
        Injected::Undefined => (0x00, 0),
    };
    // Vector offset: current EL with SP_ELx (EL1h), current EL with SP_EL0 (EL1t), lower EL
    // in AArch64, lower EL in AArch32.
    let offset = match (aarch32, mode) {
        (true, _) => 0x600,
        (false, 0b0101) => 0x200,
        (false, 0b0100) => 0x000,
        (false, _) => 0x400,
    };
    let vbar: u64;
    // SAFETY: these EL1 registers belong to the guest, which is stopped in this trap; writing
    // them is exactly what taking the exception at EL1 would have done.
    unsafe {
        asm!("mrs {}, vbar_el1", out(reg) vbar, options(nomem, nostack, preserves_flags));
        asm!(
            "msr esr_el1, {esr}",
            "msr far_el1, {far}",
            "msr elr_el1, {elr}",
            "msr spsr_el1, {spsr}",
            esr = in(reg) class << 26 | IL | iss,
            far = in(reg) frame.far,
            elr = in(reg) frame.elr,
            spsr = in(reg) frame.spsr,
            options(nomem, nostack, preserves_flags),
        );
    }
    frame.elr = vbar + offset;
    frame.spsr = SPSR_EL1H_MASKED;
}

/// An SMCCC call (HVC or SMC) from the guest: PSCI is proxied, everything else refused.
fn handle_call(frame: &mut TrapFrame) {
    let [x0, x1, x2, x3, ..] = frame.registers;
    let result = match psci::decode(x0, x1, x2, x3) {
        GuestCall::Forward => {
            #[allow(
                clippy::cast_possible_truncation,
                reason = "decode checked the upper half is zero"
            )]
            let function = x0 as u32;
            let mut args = [0u64; 17];
            args[0] = x1;
            args[1] = x2;
            args[2] = x3;
            let out = smccc::smc64(function, args);
            frame.registers[1] = out[1];
            frame.registers[2] = out[2];
            frame.registers[3] = out[3];
            out[0]
        }
        GuestCall::CpuSuspend => {
            // SAFETY: waiting for an interrupt changes no state; any pending interrupt (even
            // masked at EL2) ends it, after which the guest takes it at EL1.
            unsafe { asm!("dsb sy", "wfi", options(nomem, nostack, preserves_flags)) };
            0
        }
        GuestCall::CpuOn {
            target,
            entry,
            context,
        } => start_vcpu(target, entry, context),
        GuestCall::SystemOff | GuestCall::SystemReset => {
            defmt::info!(
                "guest asked for system {=str}",
                if x0 == 0x8400_0008 { "off" } else { "reset" }
            );
            super::smmu::drain_events(64);
            super::smmu::report_events();
            report_statistics();
            if !crate::boot::memory_intact() {
                exit(ExitStatus::Failure);
            }
            exit(ExitStatus::Success);
        }
        GuestCall::NotSupported => {
            if stats::count(ExitReason::UnsupportedCall) {
                defmt::info!("guest call {=u64:#x}: not supported", x0);
            }
            psci::NOT_SUPPORTED
        }
    };
    frame.registers[0] = result;
}

/// Prints the exit counters, and how often each kind of guest-caused log line happened.
pub fn report_statistics() {
    for reason in ExitReason::ALL {
        defmt::info!("exits: {} {=u64}", reason, stats::get(reason));
    }
    for kind in GuestNoise::ALL {
        let count = stats::noise_count(kind);
        if count > stats::LOGGED_PER_REASON {
            defmt::info!(
                "guest-caused {}: {=u64}, the first {=u64} logged",
                kind,
                count,
                stats::LOGGED_PER_REASON
            );
        }
    }
}

/// The most CPUs the hypervisor runs a vCPU on.
pub const MAX_CPUS: usize = 8;
const SECONDARY_STACK_PAGES: usize = 8;

/// EL2 stacks for secondary CPUs, one per slot.
struct SecondaryStacks(
    core::cell::UnsafeCell<[aarch64_rt::Stack<SECONDARY_STACK_PAGES>; MAX_CPUS]>,
);
// SAFETY: each stack is used by at most one CPU: slots are claimed through `SLOT_OWNERS`.
unsafe impl Sync for SecondaryStacks {}
static SECONDARY_STACKS: SecondaryStacks = SecondaryStacks(core::cell::UnsafeCell::new(
    [const { aarch64_rt::Stack::new() }; MAX_CPUS],
));
/// The MPIDR (+1, so that 0 means free) of the CPU that owns each stack slot.
static SLOT_OWNERS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// The root of the EL2 map, for secondary CPUs to switch to.
static EL2_ROOT: AtomicU64 = AtomicU64::new(0);

/// Records the EL2 map's root for secondary CPUs.
pub fn set_el2_root(root: u64) {
    EL2_ROOT.store(root, Ordering::Release);
}

/// Why a CPU_ON cannot have a stack slot.
#[derive(Clone, Copy)]
enum SlotRefusal {
    /// The target already has one: it runs (or ran) a vCPU. Its stack is live and must not be
    /// written, so the call is answered ALREADY_ON without asking firmware.
    AlreadyOn,
    /// Every slot is taken.
    NoFreeSlot,
}

/// Claims a free stack slot for `mpidr`, which must not own one yet; slot 0 is the boot CPU's.
///
/// A slot is never given back once its CPU started: a CPU that turned itself off may still be
/// on its stack until firmware powers it down, so reusing the stack could corrupt a CPU that
/// is still executing. The cost is that a vCPU turned off (CPU_OFF) cannot be turned on again.
fn claim_slot(mpidr: u64) -> Result<usize, SlotRefusal> {
    let key = mpidr + 1;
    if SLOT_OWNERS
        .iter()
        .any(|owner| owner.load(Ordering::Acquire) == key)
    {
        return Err(SlotRefusal::AlreadyOn);
    }
    SLOT_OWNERS
        .iter()
        .position(|owner| {
            owner
                .compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })
        .ok_or(SlotRefusal::NoFreeSlot)
}

/// Claims slot 0 for the boot CPU.
pub fn claim_boot_cpu() {
    let _ = SLOT_OWNERS[0].compare_exchange(
        0,
        super::sysreg::cpu_affinity() + 1,
        Ordering::AcqRel,
        Ordering::Acquire,
    );
}

/// The guest's PSCI CPU_ON: the new CPU enters the hypervisor first, then the guest.
fn start_vcpu(target: u64, entry: u64, context: u64) -> u64 {
    let ram_start = VM.ram_start.load(Ordering::Relaxed);
    let ram_end = VM.ram_end.load(Ordering::Relaxed);
    if !(ram_start..ram_end).contains(&entry) || entry % 4 != 0 {
        if stats::noise(GuestNoise::CpuOnRefused) {
            defmt::warn!(
                "guest CPU_ON {=u64:#x}: entry {=u64:#x} outside guest RAM",
                target,
                entry
            );
        }
        return psci::INVALID_PARAMETERS;
    }
    let slot = match claim_slot(target & 0xff_00ff_ffff) {
        Ok(slot) => slot,
        Err(SlotRefusal::AlreadyOn) => return psci::ALREADY_ON,
        Err(SlotRefusal::NoFreeSlot) => return psci::INVALID_PARAMETERS,
    };
    if slot >= VM.max_vcpus.load(Ordering::Relaxed) {
        // Never started: nothing runs on this slot's stack, so it can be given back.
        SLOT_OWNERS[slot].store(0, Ordering::Release);
        if stats::noise(GuestNoise::CpuOnRefused) {
            defmt::warn!("guest CPU_ON {=u64:#x}: beyond the vCPU limit", target);
        }
        return psci::INVALID_PARAMETERS;
    }
    // SAFETY: the slot was free and is now claimed for `target` alone, and no CPU has ever run
    // on it (slots are never reused); `start_core` writes the entry closure into it before the
    // CPU runs, and the CPU then owns it.
    let stack = unsafe { (*SECONDARY_STACKS.0.get()).as_mut_ptr().add(slot) };
    let stack_top = stack.wrapping_add(1) as u64;
    // SAFETY: the stack is reserved for this CPU (see above), and it lies in the image's
    // writable region, mapped identically by the initial and the EL2 page tables.
    let result = unsafe {
        aarch64_rt::start_core::<smccc::Smc, _, SECONDARY_STACK_PAGES>(target, stack, move || {
            secondary_main(entry, context, stack_top)
        })
    };
    match result {
        Ok(()) => {
            // At most MAX_CPUS lines: a started slot is never given back.
            defmt::info!("vCPU {=u64:#x} starting at {=u64:#x}", target, entry);
            0
        }
        Err(error) => {
            // Firmware refused (a bad MPIDR, a CPU already on): no CPU runs on the stack, so
            // the slot goes back, and a guest cannot use up slots with bogus targets.
            SLOT_OWNERS[slot].store(0, Ordering::Release);
            i64::from(error) as u64
        }
    }
}

/// A secondary CPU, coming from `aarch64-rt`'s entry with its initial page table.
fn secondary_main(entry: u64, context: u64, stack_top: u64) {
    let root = EL2_ROOT.load(Ordering::Acquire);
    // SAFETY: `root` is the EL2 map the boot CPU built and activated: an identity map of
    // everything the hypervisor uses, with the initial map's memory types.
    unsafe {
        asm!("msr ttbr0_el2, {}", "isb", in(reg) root, options(nostack, preserves_flags));
    }
    super::sysreg::invalidate_el2_tlb();
    super::vectors::install();
    configure_cpu();
    enter_guest(entry, context, stack_top);
}
