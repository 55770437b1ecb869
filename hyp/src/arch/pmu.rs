//! Counting retired instructions at EL2 with the PMU, for the hypervisor's own cost figures.
//!
//! Under QEMU with `-icount shift=0` the count is exact and identical from run to run, which is
//! why the project reports costs in instructions rather than time.

use core::arch::asm;

/// INST_RETIRED. Counter 0 is used: these figures are taken before any guest runs (which then
/// owns the PMU), and the counter is disabled again afterwards.
const EVENT_INST_RETIRED: u64 = 0x08;
/// PMEVTYPER<n>_EL0: count at EL2 (NSH), not at EL1 (P) nor EL0 (U).
const FILTER_EL2_ONLY: u64 = 1 << 31 | 1 << 30 | 1 << 27;

/// Instructions retired at EL2 while `f` runs `iterations` times, divided by `iterations`.
pub fn instructions_per_iteration(iterations: u64, mut f: impl FnMut()) -> u64 {
    let (start, end): (u64, u64);
    // SAFETY: programs and reads PMU counter 0 of this CPU; no guest runs yet, and no memory is
    // touched.
    unsafe {
        asm!(
            "msr pmevtyper0_el0, {t}",
            "mov {tmp}, #1",
            "msr pmcntenset_el0, {tmp}",
            "mrs {tmp}, pmcr_el0",
            "orr {tmp}, {tmp}, #1",
            "msr pmcr_el0, {tmp}",
            "isb",
            "mrs {start}, pmevcntr0_el0",
            t = in(reg) FILTER_EL2_ONLY | EVENT_INST_RETIRED,
            tmp = out(reg) _,
            start = out(reg) start,
            options(nostack),
        );
    }
    for _ in 0..iterations {
        f();
    }
    // SAFETY: reads the counter programmed above, then disables it again.
    unsafe {
        asm!(
            "isb",
            "mrs {end}, pmevcntr0_el0",
            "mov {tmp}, #1",
            "msr pmcntenclr_el0, {tmp}",
            end = out(reg) end,
            tmp = out(reg) _,
            options(nostack),
        );
    }
    (end.wrapping_sub(start) & 0xffff_ffff) / iterations.max(1)
}
