//! EL2's configuration for running a guest, and the registers the trap path reads and writes
//! on the guest's behalf: nothing here decides anything (the trap path in `crate::trap` does).
//!
//! The guest owns its CPUs' EL1 state outright (one guest, one vCPU per physical CPU, no EL1
//! context switching): EL2 is configured once per CPU, the guest entered, and from then on EL2
//! runs only when the guest traps or a physical interrupt arrives: every physical IRQ and FIQ
//! is taken at EL2 (HCR_EL2.IMO/FMO), and the guest's CPU interface is the virtual one.

use core::arch::asm;

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
    const FMO: u64 = 1 << 3; // physical FIQs to EL2; EL1's ICC_* become the virtual ICV_*
    const IMO: u64 = 1 << 4; // physical IRQs to EL2 (SGI register writes trap)
    VM | SWIO | FMO | IMO | FB | BSU_INNER | TSC | TIDCP | RW | APK | API
};

/// SCTLR_EL1 as the guest expects it on entry: MMU and caches off, RES1 bits set.
const SCTLR_EL1_RESET: u64 = 0x30d0_0800;

/// MDCR_EL2 for a running guest. The guest owns every PMU counter (HPMN = PMCR_EL0.N) and the
/// debug features, but EL2 is invisible to the PMU unless benchmarking: HPMD (FEAT_PMUv3p1)
/// stops the event counters at EL2, HCCD (FEAT_PMUv3p5) the cycle counter. Without them a
/// guest counts the hypervisor's instructions or cycles with an EL2 filter.
pub fn mdcr_el2(pmu_counts_el2: bool) -> u64 {
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

/// VTCR_EL2 for a stage 2 of `t0sz` walked from `sl0` with the 4 KiB granule: inner-shareable
/// write-back walks, 16-bit VMIDs when the CPU has them.
pub fn vtcr_el2(t0sz: u64, sl0: u64) -> u64 {
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
    t0sz
        | sl0 << 6
        | 1 << 8 // IRGN0: write-back read/write-allocate
        | 1 << 10 // ORGN0: write-back read/write-allocate
        | 3 << 12 // SH0: inner shareable
        | pa_range << 16
        | vmid16 << 19
        | RES1
}

/// What EL2 is set to for a running guest, the same on every CPU.
#[derive(Clone, Copy, Debug)]
pub struct GuestEl2 {
    /// VTTBR_EL2: the stage-2 root and the VMID.
    pub vttbr: u64,
    /// VTCR_EL2 ([`vtcr_el2`]).
    pub vtcr: u64,
    /// MDCR_EL2 ([`mdcr_el2`]).
    pub mdcr: u64,
}

/// Configures this CPU's EL2 to run the guest. Every CPU calls it before entering the guest.
pub fn configure(config: &GuestEl2) {
    let GuestEl2 { vttbr, vtcr, mdcr } = *config;
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

/// Enters the guest at `entry` in state `spsr` with `x0`, resetting this CPU's EL2 stack to
/// `stack_top`.
pub fn enter_guest(entry: u64, spsr: u64, x0: u64, stack_top: u64) -> ! {
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
            in("x11") spsr,
            options(noreturn),
        );
    }
}

/// HPFAR_EL2: the IPA page of the stage-2 fault being handled.
#[must_use]
pub fn hpfar() -> u64 {
    let value: u64;
    // SAFETY: reading HPFAR_EL2 has no side effects; it describes the abort being handled.
    unsafe { asm!("mrs {}, hpfar_el2", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// The guest's VBAR_EL1.
#[must_use]
pub fn guest_vector_base() -> u64 {
    let value: u64;
    // SAFETY: reading the guest's VBAR_EL1 (the guest is stopped in this trap) has no effect.
    unsafe { asm!("mrs {}, vbar_el1", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Writes the guest's EL1 exception registers, as taking an exception at EL1 would have.
pub fn set_guest_exception_registers(esr: u64, far: u64, elr: u64, spsr: u64) {
    // SAFETY: these EL1 registers belong to the guest, which is stopped in this trap; writing
    // them is exactly what taking the exception at EL1 would have done.
    unsafe {
        asm!(
            "msr esr_el1, {esr}",
            "msr far_el1, {far}",
            "msr elr_el1, {elr}",
            "msr spsr_el1, {spsr}",
            esr = in(reg) esr,
            far = in(reg) far,
            elr = in(reg) elr,
            spsr = in(reg) spsr,
            options(nomem, nostack, preserves_flags),
        );
    }
}

/// Waits for an interrupt.
pub fn wait_for_interrupt() {
    // SAFETY: waiting for an interrupt changes no state; any pending interrupt (even masked at
    // EL2) ends it, after which the guest takes it at EL1.
    unsafe { asm!("dsb sy", "wfi", options(nomem, nostack, preserves_flags)) };
}

/// Records this CPU's index (its EL2 stack slot) in TPIDR_EL2, for the trap path.
pub fn set_cpu_index(index: usize) {
    // SAFETY: TPIDR_EL2 is a software thread ID register the hypervisor alone uses.
    unsafe { asm!("msr tpidr_el2, {}", in(reg) index, options(nomem, nostack, preserves_flags)) };
}

/// This CPU's index, as [`set_cpu_index`] recorded it.
#[must_use]
pub fn cpu_index() -> usize {
    let value: usize;
    // SAFETY: reading TPIDR_EL2 has no side effects.
    unsafe { asm!("mrs {}, tpidr_el2", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}
