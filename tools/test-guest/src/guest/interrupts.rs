//! `gic` mode: the guest's interrupts arrive as virtual interrupts, and nothing the guest
//! does to the GIC reaches the hypervisor's own interrupts.
//!
//! Run with `hyp.smp=1` on a two-CPU machine, so that CPU 1 is not the guest's. The hypervisor
//! owns the SMMU's SPIs (INTIDs 106..=109), the maintenance interrupt (PPI 25) and its EL2
//! timers (PPIs 26, 28).

use super::{Outcome, mmio_read32, mmio_write32};
use core::arch::asm;

const GICD: usize = 0x0800_0000;
/// CPU 0's SGI_base frame.
const GICR_SGI: usize = 0x080b_0000;
/// CPU 0's RD_base frame.
const GICR_RD: usize = 0x080a_0000;

/// The hypervisor's SPIs: bits 10..=13 of the registers for INTIDs 96..=127.
const SMMU_BITS: u32 = 0b1111 << 10;
/// The hypervisor's PPIs: the maintenance interrupt and the EL2 timer.
const HYPERVISOR_PPIS: u32 = 1 << 25 | 1 << 26 | 1 << 28;

fn write64(address: usize, value: u64) {
    // SAFETY: a GIC register the hypervisor emulates for this guest.
    unsafe { core::ptr::write_volatile(address as *mut u64, value) }
}

fn read64(address: usize) -> u64 {
    // SAFETY: as `write64`.
    unsafe { core::ptr::read_volatile(address as *const u64) }
}

fn write8(address: usize, value: u8) {
    // SAFETY: as `write64`.
    unsafe { core::ptr::write_volatile(address as *mut u8, value) }
}

/// Turns this guest's (virtual) CPU interface on: every priority, Group 1.
fn enable_cpu_interface() {
    // SAFETY: the guest's own CPU interface (ICV_* with HCR_EL2.IMO); PSTATE.I stays masked,
    // so interrupts are only ever read from ICC_IAR1_EL1, never taken.
    unsafe {
        asm!(
            "mrs {t}, icc_sre_el1",
            "orr {t}, {t}, #7",
            "msr icc_sre_el1, {t}",
            "isb",
            "mov {t}, #0xff",
            "msr icc_pmr_el1, {t}",
            "mov {t}, #1",
            "msr icc_igrpen1_el1, {t}",
            "isb",
            t = out(reg) _,
            options(nostack),
        );
    }
}

/// Acknowledges the highest-priority pending virtual interrupt: its INTID, or `None` if none
/// is pending (a spurious INTID).
fn acknowledge() -> Option<u64> {
    let got: u64;
    // SAFETY: reads this guest's own virtual CPU interface (ICV_IAR1_EL1).
    unsafe { asm!("mrs {}, icc_iar1_el1", out(reg) got, options(nostack)) };
    let got = got & 0xff_ffff;
    (got < 1020).then_some(got)
}

/// Ends `intid`, which [`acknowledge`] returned.
fn end(intid: u64) {
    // SAFETY: ends the interrupt just acknowledged at this guest's virtual CPU interface.
    unsafe { asm!("msr icc_eoir1_el1, {}", "isb", in(reg) intid, options(nostack)) };
}

/// Writes ICC_SGI1R_EL1 (which traps to the hypervisor).
fn send_sgi(value: u64) {
    // SAFETY: asks for an SGI; the hypervisor decides where it goes.
    unsafe { asm!("msr icc_sgi1r_el1, {}", "isb", in(reg) value, options(nostack)) };
}

/// Waits (bounded) for `intid` at the virtual CPU interface, acknowledges and ends it.
fn wait_for(intid: u64) -> bool {
    wait_for_then(intid, || {})
}

/// As `wait_for`, calling `quiesce` between acknowledging `intid` and ending it (to lower a
/// level-sensitive line first).
fn wait_for_then(intid: u64, quiesce: impl Fn()) -> bool {
    for _ in 0..20_000_000u64 {
        if let Some(got) = acknowledge() {
            if got == intid {
                quiesce();
            }
            end(got);
            if got == intid {
                return true;
            }
        }
        core::hint::spin_loop();
    }
    false
}

/// edu's legacy interrupt (INTA of slot 1): QEMU virt swizzles it to SPI 4, INTID 36.
const EDU_INTID: u64 = 36;

/// Enables the guest's distributor (affinity routing, Group 1) and edu's interrupt in it.
fn enable_edu_interrupt() {
    enable_cpu_interface();
    mmio_write32(GICD, 1 << 4 | 1 << 1);
    mmio_write32(GICD + 0x104, 1 << (EDU_INTID - 32));
}

/// edu raises its (level-sensitive) interrupt, which the guest acknowledges, lowers at the
/// device and ends: the whole path of a device interrupt through the hypervisor.
fn edu_interrupt_round_trip(edu_bar: usize) -> bool {
    mmio_write32(edu_bar + 0x60, 1);
    wait_for_then(EDU_INTID, || mmio_write32(edu_bar + 0x64, 1))
}

/// A device's interrupt arrives, and again after the guest ended it: the guest's end of a
/// hardware-backed virtual interrupt deactivated the physical one (else the second never
/// comes).
pub(super) fn device_interrupt_arrives(edu_bar: usize) -> Outcome {
    enable_edu_interrupt();
    for _ in 0..2 {
        if !edu_interrupt_round_trip(edu_bar) {
            return Err("edu's interrupt never arrived");
        }
    }
    if mmio_read32(edu_bar + 0x24) != 0 {
        return Err("edu's interrupt status did not clear");
    }
    Ok(())
}

/// Benchmark cases: what one interrupt costs, end to end.
pub(super) mod bench {
    use super::*;

    /// Sets up the CPU interface and the interrupts the cases below use.
    pub(in super::super) fn prepare() {
        enable_edu_interrupt();
        mmio_write32(GICR_SGI + 0x100, 1 << 5);
    }

    /// One emulated distributor write (GICD_ISENABLER for a guest SPI).
    pub(in super::super) fn distributor_write() {
        mmio_write32(GICD + 0x104, 1 << (EDU_INTID - 32));
    }

    /// One SGI the guest sends itself: the trapped ICC_SGI1R write, the physical SGI taken at
    /// EL2 and injected, the guest's acknowledge and end (these two without a trap).
    pub(in super::super) fn sgi_to_self() {
        send_sgi(5u64 << 24 | 1); // SGI 5, TargetList: this CPU (Aff0 0)
        let _ = wait_for(5);
    }

    /// One device interrupt: edu raises it, the hypervisor takes and injects it (HW = 1), the
    /// guest acknowledges it, lowers it at the device and ends it (deactivating the physical
    /// one, without a trap).
    pub(in super::super) fn device_interrupt(edu_bar: usize) {
        let _ = edu_interrupt_round_trip(edu_bar);
    }
}

/// The guest's virtual timer fires and arrives as virtual PPI 27.
pub(super) fn virtual_timer_arrives() -> Outcome {
    enable_cpu_interface();
    mmio_write32(GICR_SGI + 0x100, 1 << 27);
    // SAFETY: programs this guest's own virtual timer to fire soon.
    unsafe {
        asm!(
            "mov {t}, #1000",
            "msr cntv_tval_el0, {t}",
            "mov {t}, #1",
            "msr cntv_ctl_el0, {t}",
            "isb",
            t = out(reg) _,
            options(nostack),
        );
    }
    let arrived = wait_for(27);
    // SAFETY: stops the timer again.
    unsafe { asm!("msr cntv_ctl_el0, xzr", "isb", options(nostack)) };
    if arrived {
        Ok(())
    } else {
        Err("the virtual timer's interrupt never arrived")
    }
}

/// An SGI the guest sends itself arrives.
pub(super) fn own_sgi_arrives() -> Outcome {
    enable_cpu_interface();
    mmio_write32(GICR_SGI + 0x100, 1 << 5);
    send_sgi(5u64 << 24 | 1); // SGI 5, TargetList: this CPU (Aff0 0)
    if wait_for(5) {
        Ok(())
    } else {
        Err("the SGI sent to itself never arrived")
    }
}

/// More interrupts pending at once than the virtual CPU interface has list registers (QEMU
/// has 4): eight SGIs sent to itself with every interrupt masked, then acknowledged one by one.
/// Each must arrive exactly once: the ones that found no free list register waited in the
/// hypervisor and came in as list registers emptied (the maintenance interrupt).
pub(super) fn list_register_overflow_loses_nothing() -> Outcome {
    enable_cpu_interface();
    mmio_write32(GICR_SGI + 0x100, 0xff);
    // SAFETY: PSTATE.I masks the virtual interrupts this guest takes at EL1 (they stay pending
    // at its CPU interface); the hypervisor's are taken at EL2 regardless.
    unsafe { asm!("msr daifset, #2", "isb", options(nostack)) };
    for sgi in 0..8u64 {
        send_sgi(sgi << 24 | 1); // to this CPU
    }
    let mut seen = 0u32;
    for _ in 0..2_000_000u64 {
        if let Some(got) = acknowledge() {
            end(got);
            if got < 8 {
                if seen & 1 << got != 0 {
                    return Err("an SGI arrived twice");
                }
                seen |= 1 << got;
            }
            if seen == 0xff {
                return Ok(());
            }
        }
        core::hint::spin_loop();
    }
    Err("not every SGI arrived")
}

/// SGI 15 is the hypervisor's: the guest cannot enable it, and sending it to itself is
/// refused (counted); it never arrives.
pub(super) fn hypervisors_sgi_refused() -> Outcome {
    enable_cpu_interface();
    mmio_write32(GICR_SGI + 0x100, 1 << 15);
    if mmio_read32(GICR_SGI + 0x100) & 1 << 15 != 0 {
        return Err("SGI 15 reads as enabled");
    }
    send_sgi(15u64 << 24 | 1); // SGI 15 to this CPU: refused by the hypervisor
    for _ in 0..100_000u64 {
        if let Some(got) = acknowledge() {
            end(got);
            if got == 15 {
                return Err("SGI 15 arrived");
            }
        }
    }
    Ok(())
}

/// An SGI to CPU 1, which is not the guest's: the hypervisor drops it (and counts it).
pub(super) fn sgi_to_another_cpu() {
    send_sgi(6u64 << 24 | 0b10); // SGI 6 to CPU 1 (TargetList bit 1)
}

/// Every register a guest could use on the hypervisor's interrupts, written, then read back.
/// Its PPIs (maintenance, EL2 timer) must read as an unimplemented interrupt's would. The
/// physical SMMU's SPIs are, in the guest's view, its vSMMU's virtual SPIs: what it writes
/// there is its own virtual state (read back as written), except what the GIC would refuse
/// (Group 0, a route to a CPU it does not have, level-sensitive). That none of it reaches the
/// physical interrupts is shown by the next check, whose SMMU interrupt must still fire.
pub(super) fn hypervisor_interrupts_untouchable() -> Outcome {
    // Disable, clear pending, set pending, set and clear active, Group 0.
    for register in [0x18c, 0x28c, 0x20c, 0x30c, 0x38c] {
        mmio_write32(GICD + register, SMMU_BITS);
    }
    mmio_write32(GICD + 0x8c, 0);
    for intid in 106..=109 {
        write8(GICD + 0x400 + intid, 0xff); // lowest priority
        write64(GICD + 0x6000 + 8 * intid, 1); // route to CPU 1
    }
    mmio_write32(GICD + 0xc18, 0); // level-sensitive
    mmio_write32(GICD, 0); // disable the distributor
    for register in [0x180, 0x280, 0x200, 0x300, 0x380] {
        mmio_write32(GICR_SGI + register, HYPERVISOR_PPIS);
    }
    mmio_write32(GICR_SGI + 0x80, 0);
    write8(GICR_SGI + 0x400 + 25, 0xff);
    write8(GICR_SGI + 0x400 + 26, 0xff);
    mmio_write32(GICR_RD + 0x14, 0b10); // put the redistributor to sleep

    let enables = mmio_read32(GICD + 0x10c) & SMMU_BITS;
    let groups = mmio_read32(GICD + 0x8c) & SMMU_BITS;
    let route = read64(GICD + 0x6000 + 8 * 106);
    let priority = mmio_read32(GICD + 0x400 + 104) >> 16;
    let edge = mmio_read32(GICD + 0xc18) >> 20 & 0xff;
    let private = mmio_read32(GICR_SGI + 0x100) & HYPERVISOR_PPIS;
    if private != 0 {
        return Err("the hypervisor's PPIs are visible to the guest");
    }
    if enables != 0 || groups != SMMU_BITS || route != 0 || priority != 0xffff || edge != 0xaa {
        return Err("the vSMMU's virtual SPIs do not read back as the GIC would have them");
    }
    Ok(())
}

/// Masks everything at its own CPU interface, makes a device fault (an `edu` write into
/// hypervisor memory, which the SMMU blocks and reports), then spins without a single trap:
/// the hypervisor must learn of the fault from the SMMU's interrupt, during the spin. A marker
/// call after the spin lets the scenario check the order in the hypervisor's log.
pub(super) fn smmu_interrupt_fires_while_masked(dma: impl FnOnce() -> Outcome) -> Outcome {
    // SAFETY: masks this guest's own virtual interrupts; the hypervisor's are physical.
    unsafe {
        asm!(
            "msr icc_pmr_el1, xzr",
            "msr icc_igrpen1_el1, xzr",
            "msr daifset, #0xf",
            "isb",
            options(nostack),
        );
    }
    dma()?;
    for _ in 0..20_000_000u64 {
        core::hint::spin_loop();
    }
    let _ = super::hvc(0xc600_0bad);
    Ok(())
}
