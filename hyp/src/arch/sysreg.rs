//! The few system-register reads and writes the runtime needs, each a named function.

use core::arch::asm;

/// The current exception level (CurrentEL.EL).
#[must_use]
pub fn current_el() -> u64 {
    let value: u64;
    // SAFETY: reading CurrentEL has no side effects.
    unsafe { asm!("mrs {}, CurrentEL", out(reg) value, options(nomem, nostack, preserves_flags)) };
    (value >> 2) & 0b11
}

/// This CPU's affinity (MPIDR_EL1 with the RES1 and MT/U bits cleared).
#[must_use]
pub fn cpu_affinity() -> u64 {
    let value: u64;
    // SAFETY: reading MPIDR_EL1 has no side effects.
    unsafe { asm!("mrs {}, mpidr_el1", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value & 0xff_00ff_ffff
}

/// The physical counter (CNTPCT_EL0) and its frequency (CNTFRQ_EL0).
#[must_use]
pub fn counter() -> (u64, u64) {
    let (count, frequency): (u64, u64);
    // SAFETY: reading the generic timer's counter and frequency has no side effects.
    unsafe {
        asm!(
            "isb",
            "mrs {count}, cntpct_el0",
            "mrs {frequency}, cntfrq_el0",
            count = out(reg) count,
            frequency = out(reg) frequency,
            options(nomem, nostack, preserves_flags),
        );
    }
    (count, frequency)
}

/// The physical counter (CNTPCT_EL0), unordered: for rate limits, not for measurements.
#[must_use]
pub fn counter_now() -> u64 {
    let count: u64;
    // SAFETY: reading the generic timer's counter has no side effects.
    unsafe { asm!("mrs {}, cntpct_el0", out(reg) count, options(nomem, nostack, preserves_flags)) };
    count
}

/// Masks IRQ, FIQ, SError and debug exceptions and returns the previous DAIF.
#[must_use]
pub fn mask_interrupts() -> u64 {
    let daif: u64;
    // SAFETY: masking exceptions at the current EL cannot break memory safety; the caller
    // restores the returned value with `restore_interrupts`.
    unsafe {
        asm!("mrs {}, daif", "msr daifset, #0xf", out(reg) daif, options(nomem, nostack, preserves_flags));
    }
    daif
}

/// Restores a DAIF value returned by [`mask_interrupts`].
pub fn restore_interrupts(daif: u64) {
    // SAFETY: `daif` came from `mask_interrupts`, so this returns to a state the CPU was in.
    unsafe { asm!("msr daif, {}", in(reg) daif, options(nomem, nostack, preserves_flags)) };
}

/// Invalidates every EL2 TLB entry on this CPU and waits for completion.
pub fn invalidate_el2_tlb() {
    // SAFETY: TLB invalidation only drops cached translations; the tables in memory stay valid.
    unsafe {
        asm!(
            "dsb ishst",
            "tlbi alle2",
            "dsb ish",
            "isb",
            options(nostack, preserves_flags)
        )
    };
}

/// Cleans and invalidates the data cache over `[start, start + size)` to the point of
/// coherency, so that an observer with caches off (a guest booting with its MMU off) sees it.
pub fn clean_dcache_range(start: usize, size: usize) {
    let line = {
        let ctr: u64;
        // SAFETY: reading CTR_EL0 has no side effects.
        unsafe { asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack, preserves_flags)) };
        4usize << ((ctr >> 16) & 0xf)
    };
    let mut address = start & !(line - 1);
    while address < start + size {
        // SAFETY: data cache maintenance by address changes no memory contents; the range is
        // mapped (the caller's window) so the operation cannot fault.
        unsafe { asm!("dc civac, {}", in(reg) address, options(nostack, preserves_flags)) };
        address += line;
    }
    // SAFETY: a barrier has no effect on memory contents.
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}
