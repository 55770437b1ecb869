//! The GICv3 system registers the hypervisor uses at EL2: its physical CPU interface (ICC_*)
//! and the guest's virtual interface (ICH_*). Register accesses only; `crate::gic` decides.

use core::arch::asm;

/// INTID values ICC_IAR1_EL1 returns when nothing is pending (1023) or for special cases.
pub const SPURIOUS: u32 = 1020;

/// Acknowledges the highest-priority pending Group 1 interrupt: its INTID (1020..1023 when
/// none).
#[must_use]
pub fn acknowledge() -> u32 {
    let intid: u64;
    // SAFETY: reading ICC_IAR1_EL1 acknowledges an interrupt at the physical CPU interface,
    // which the hypervisor owns (the guest has the virtual one); the caller ends it.
    unsafe {
        asm!("mrs {}, icc_iar1_el1", out(reg) intid, options(nomem, nostack, preserves_flags))
    };
    #[allow(
        clippy::cast_possible_truncation,
        reason = "INTIDs are 24 bits at most"
    )]
    let intid = (intid & 0xff_ffff) as u32;
    intid
}

/// Drops the running priority of `intid` (with EOImode = 1 it stays active).
pub fn priority_drop(intid: u32) {
    // SAFETY: ends the priority of an interrupt this CPU acknowledged.
    unsafe {
        asm!("msr icc_eoir1_el1, {}", in(reg) u64::from(intid), options(nomem, nostack, preserves_flags))
    };
}

/// Deactivates `intid`.
pub fn deactivate(intid: u32) {
    // SAFETY: deactivates an interrupt this CPU acknowledged and the hypervisor handled itself
    // (not one linked to a guest's virtual interrupt).
    unsafe {
        asm!("msr icc_dir_el1, {}", "isb", in(reg) u64::from(intid), options(nomem, nostack, preserves_flags))
    };
}

/// Sends an SGI as ICC_SGI1R_EL1 encodes it.
pub fn send_sgi(value: u64) {
    // SAFETY: generates a Group 1 SGI at the CPUs the value names; it only makes an interrupt
    // pending there.
    unsafe {
        asm!("msr icc_sgi1r_el1, {}", "isb", in(reg) value, options(nomem, nostack, preserves_flags))
    };
}

/// Sets up this CPU's physical and virtual CPU interfaces: system-register access, split
/// priority drop and deactivation (so a guest's deactivation of a virtual interrupt is what
/// deactivates the physical one), every priority unmasked, Group 1 on; the virtual interface
/// on with empty list registers.
pub fn configure_cpu_interfaces(list_registers: usize) {
    // SAFETY: these registers configure this CPU's interrupt interfaces, which the hypervisor
    // owns; the guest is not running on this CPU yet.
    unsafe {
        asm!(
            "mov {t}, #0xf",
            "msr icc_sre_el2, {t}",
            "isb",
            "mrs {t}, icc_ctlr_el1",
            "orr {t}, {t}, #2", // EOImode
            "msr icc_ctlr_el1, {t}",
            "mov {t}, #0xff",
            "msr icc_pmr_el1, {t}",
            "mov {t}, #1",
            "msr icc_igrpen1_el1, {t}",
            "msr ich_vmcr_el2, xzr",
            "msr ich_ap1r0_el2, xzr",
            "msr ich_ap0r0_el2, xzr",
            "msr ich_hcr_el2, {t}", // En
            "isb",
            t = out(reg) _,
            options(nomem, nostack, preserves_flags),
        );
    }
    for n in 0..list_registers {
        write_list_register(n, 0);
    }
}

/// How many list registers this CPU has (ICH_VTR_EL2.ListRegs + 1).
#[must_use]
pub fn list_register_count() -> usize {
    let vtr: u64;
    // SAFETY: reading an ID register of the virtual interface has no side effects.
    unsafe { asm!("mrs {}, ich_vtr_el2", out(reg) vtr, options(nomem, nostack, preserves_flags)) };
    (vtr & 0x1f) as usize + 1
}

/// ICH_ELRSR_EL2: bit n set when list register n is empty.
#[must_use]
pub fn empty_list_registers() -> u64 {
    let value: u64;
    // SAFETY: reading the empty-LR status has no side effects.
    unsafe {
        asm!("mrs {}, ich_elrsr_el2", out(reg) value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Sets ICH_HCR_EL2.UIE (a maintenance interrupt when at most one list register is in use).
pub fn set_underflow_interrupt(enabled: bool) {
    // SAFETY: changes only when the virtual interface raises its maintenance interrupt.
    unsafe {
        asm!(
            "mrs {t}, ich_hcr_el2",
            "bic {t}, {t}, #2",
            "orr {t}, {t}, {uie}",
            "msr ich_hcr_el2, {t}",
            "isb",
            t = out(reg) _,
            uie = in(reg) u64::from(enabled) << 1,
            options(nomem, nostack, preserves_flags),
        );
    }
}

macro_rules! list_register_access {
    ($n:expr, $value:ident, $op:ident) => {
        match $n {
            0 => list_register_access!(@$op "ich_lr0_el2", $value),
            1 => list_register_access!(@$op "ich_lr1_el2", $value),
            2 => list_register_access!(@$op "ich_lr2_el2", $value),
            3 => list_register_access!(@$op "ich_lr3_el2", $value),
            4 => list_register_access!(@$op "ich_lr4_el2", $value),
            5 => list_register_access!(@$op "ich_lr5_el2", $value),
            6 => list_register_access!(@$op "ich_lr6_el2", $value),
            7 => list_register_access!(@$op "ich_lr7_el2", $value),
            8 => list_register_access!(@$op "ich_lr8_el2", $value),
            9 => list_register_access!(@$op "ich_lr9_el2", $value),
            10 => list_register_access!(@$op "ich_lr10_el2", $value),
            11 => list_register_access!(@$op "ich_lr11_el2", $value),
            12 => list_register_access!(@$op "ich_lr12_el2", $value),
            13 => list_register_access!(@$op "ich_lr13_el2", $value),
            14 => list_register_access!(@$op "ich_lr14_el2", $value),
            15 => list_register_access!(@$op "ich_lr15_el2", $value),
            _ => {}
        }
    };
    (@read $name:literal, $value:ident) => {
        // SAFETY: reading a list register of this CPU's virtual interface has no side effects.
        unsafe { asm!(concat!("mrs {}, ", $name), out(reg) $value, options(nomem, nostack, preserves_flags)) }
    };
    (@write $name:literal, $value:ident) => {
        // SAFETY: a list register holds a virtual interrupt for the guest on this CPU; the
        // caller writes a value `crate::gic::list_registers` encoded.
        unsafe { asm!(concat!("msr ", $name, ", {}"), in(reg) $value, options(nomem, nostack, preserves_flags)) }
    };
}

/// Reads list register `n` (0 for one that does not exist).
#[must_use]
pub fn read_list_register(n: usize) -> u64 {
    let mut value: u64 = 0;
    list_register_access!(n, value, read);
    value
}

/// Writes list register `n` (nothing for one that does not exist).
pub fn write_list_register(n: usize, value: u64) {
    list_register_access!(n, value, write);
}

/// The EL2 physical timer (CNTHP): fires its PPI at `deadline` (the physical counter's value).
pub fn arm_el2_timer(deadline: u64) {
    // SAFETY: the EL2 physical timer is the hypervisor's; programming it only makes its PPI
    // pending at the deadline.
    unsafe {
        asm!(
            "msr cnthp_cval_el2, {deadline}",
            "mov {t}, #1",
            "msr cnthp_ctl_el2, {t}",
            "isb",
            deadline = in(reg) deadline,
            t = out(reg) _,
            options(nomem, nostack, preserves_flags),
        );
    }
}

/// Stops the EL2 physical timer (its PPI deasserts).
pub fn disarm_el2_timer() {
    // SAFETY: as `arm_el2_timer`.
    unsafe {
        asm!(
            "msr cnthp_ctl_el2, xzr",
            "isb",
            options(nomem, nostack, preserves_flags)
        )
    };
}

/// The EL2 physical timer's deadline, if it is armed and has not fired.
pub fn el2_timer_deadline() -> Option<u64> {
    let (control, deadline): (u64, u64);
    // SAFETY: reads of the hypervisor's own timer registers.
    unsafe {
        asm!(
            "mrs {c}, cnthp_ctl_el2",
            "mrs {d}, cnthp_cval_el2",
            c = out(reg) control,
            d = out(reg) deadline,
            options(nomem, nostack, preserves_flags),
        );
    }
    // ENABLE set, ISTATUS clear.
    (control & 0b101 == 0b001).then_some(deadline)
}
