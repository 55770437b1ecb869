//! The EL2 exception vector table and the frame it saves.
//!
//! Every vector saves the complete general-purpose register file plus ELR/SPSR/ESR/FAR into a
//! [`TrapFrame`] on the current stack and calls [`handle_exception`]. Saving all 31 registers
//! (not just the caller-saved ones) is what later lets a trap handler read and write any guest
//! register named by a syndrome, e.g. the transfer register of an MMIO access.

use super::power::{ExitStatus, exit};
use crate::exception::{DataAbort, ExceptionClass};
use core::arch::global_asm;

/// The registers saved on exception entry, in the order the assembly stores them.
#[derive(Debug)]
#[repr(C)]
pub struct TrapFrame {
    /// x0 to x30.
    pub registers: [u64; 31],
    /// ELR_EL2: where `eret` returns to.
    pub elr: u64,
    /// SPSR_EL2: the state `eret` restores.
    pub spsr: u64,
    /// ESR_EL2: the syndrome.
    pub esr: u64,
    /// FAR_EL2: the faulting virtual address, when the syndrome says it is valid.
    pub far: u64,
    /// Keeps the frame a multiple of 16 bytes, as SP must stay aligned.
    _padding: u64,
}

const _: () = assert!(size_of::<TrapFrame>() == 36 * 8);

/// Which of the sixteen vectors was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, defmt::Format)]
pub enum VectorKind {
    /// Synchronous, from EL2 itself.
    SyncCurrent,
    /// IRQ, from EL2.
    IrqCurrent,
    /// FIQ, from EL2.
    FiqCurrent,
    /// SError, from EL2.
    SErrorCurrent,
    /// Synchronous, from a lower EL (a guest).
    SyncLower,
    /// IRQ, from a lower EL.
    IrqLower,
    /// FIQ, from a lower EL.
    FiqLower,
    /// SError, from a lower EL.
    SErrorLower,
    /// Any vector from EL2 using SP_EL0, or from AArch32: never expected.
    Unsupported,
}

impl VectorKind {
    fn from_index(index: u64) -> Self {
        match index {
            4 => Self::SyncCurrent,
            5 => Self::IrqCurrent,
            6 => Self::FiqCurrent,
            7 => Self::SErrorCurrent,
            8 => Self::SyncLower,
            9 => Self::IrqLower,
            10 => Self::FiqLower,
            11 => Self::SErrorLower,
            _ => Self::Unsupported,
        }
    }
}

global_asm!(
    r#"
.macro hyp_vector index
    .balign 0x80
    sub sp, sp, #(36 * 8)
    stp x0, x1, [sp, #(0 * 8)]
    mov x1, #\index
    b hyp_exception_common
.endm

.section .text.hyp_vectors, "ax"
.balign 0x800
.global hyp_vector_table
hyp_vector_table:
    hyp_vector 0
    hyp_vector 1
    hyp_vector 2
    hyp_vector 3
    hyp_vector 4
    hyp_vector 5
    hyp_vector 6
    hyp_vector 7
    hyp_vector 8
    hyp_vector 9
    hyp_vector 10
    hyp_vector 11
    hyp_vector 12
    hyp_vector 13
    hyp_vector 14
    hyp_vector 15

hyp_exception_common:
    stp x2, x3, [sp, #(2 * 8)]
    stp x4, x5, [sp, #(4 * 8)]
    stp x6, x7, [sp, #(6 * 8)]
    stp x8, x9, [sp, #(8 * 8)]
    stp x10, x11, [sp, #(10 * 8)]
    stp x12, x13, [sp, #(12 * 8)]
    stp x14, x15, [sp, #(14 * 8)]
    stp x16, x17, [sp, #(16 * 8)]
    stp x18, x19, [sp, #(18 * 8)]
    stp x20, x21, [sp, #(20 * 8)]
    stp x22, x23, [sp, #(22 * 8)]
    stp x24, x25, [sp, #(24 * 8)]
    stp x26, x27, [sp, #(26 * 8)]
    stp x28, x29, [sp, #(28 * 8)]
    mrs x2, elr_el2
    stp x30, x2, [sp, #(30 * 8)]
    mrs x2, spsr_el2
    mrs x3, esr_el2
    stp x2, x3, [sp, #(32 * 8)]
    mrs x2, far_el2
    str x2, [sp, #(34 * 8)]
    mov x0, sp
    bl hyp_handle_exception
    ldp x2, x3, [sp, #(31 * 8)]
    msr elr_el2, x2
    msr spsr_el2, x3
    ldp x0, x1, [sp, #(0 * 8)]
    ldp x2, x3, [sp, #(2 * 8)]
    ldp x4, x5, [sp, #(4 * 8)]
    ldp x6, x7, [sp, #(6 * 8)]
    ldp x8, x9, [sp, #(8 * 8)]
    ldp x10, x11, [sp, #(10 * 8)]
    ldp x12, x13, [sp, #(12 * 8)]
    ldp x14, x15, [sp, #(14 * 8)]
    ldp x16, x17, [sp, #(16 * 8)]
    ldp x18, x19, [sp, #(18 * 8)]
    ldp x20, x21, [sp, #(20 * 8)]
    ldp x22, x23, [sp, #(22 * 8)]
    ldp x24, x25, [sp, #(24 * 8)]
    ldp x26, x27, [sp, #(26 * 8)]
    ldp x28, x29, [sp, #(28 * 8)]
    ldr x30, [sp, #(30 * 8)]
    add sp, sp, #(36 * 8)
    eret
"#
);

unsafe extern "C" {
    /// The vector table above; 2 KiB aligned as VBAR_EL2 requires.
    static hyp_vector_table: [u8; 0x800];
}

/// Points VBAR_EL2 at the hypervisor's vector table.
pub fn install() {
    // SAFETY: `hyp_vector_table` is the 2 KiB-aligned table defined above, mapped executable in
    // every EL2 map the hypervisor uses (it lives in `.text`).
    unsafe {
        core::arch::asm!(
            "msr vbar_el2, {table}",
            "isb",
            table = in(reg) &raw const hyp_vector_table,
            options(nostack, preserves_flags),
        );
    }
}

/// Called by the vectors with the saved frame. Returning resumes at `frame.elr`.
#[unsafe(no_mangle)]
extern "C" fn hyp_handle_exception(frame: &mut TrapFrame, index: u64) {
    let kind = VectorKind::from_index(index);
    match kind {
        VectorKind::SyncLower => super::guest::handle_sync_lower(frame),
        VectorKind::IrqLower | VectorKind::FiqLower | VectorKind::SErrorLower => {
            super::guest::handle_async_lower()
        }
        // Anything taken at EL2 itself is a hypervisor bug: report it fully and stop.
        _ => {
            report_unexpected(kind, frame);
            exit(ExitStatus::UnexpectedException);
        }
    }
}

/// Logs an exception with its decoded syndrome.
fn report_unexpected(kind: VectorKind, frame: &TrapFrame) {
    let class = ExceptionClass::from_esr(frame.esr);
    defmt::error!(
        "unexpected exception {}: {} ESR={=u64:#010x} FAR={=u64:#x} ELR={=u64:#x} SPSR={=u64:#x}",
        kind,
        class,
        frame.esr,
        frame.far,
        frame.elr,
        frame.spsr
    );
    if matches!(
        class,
        ExceptionClass::DataAbortCurrent | ExceptionClass::DataAbortLower
    ) {
        let abort = DataAbort::from_esr(frame.esr);
        let access = if abort.write { "write" } else { "read" };
        if abort.syndrome_valid {
            defmt::error!(
                "data abort: {} on {=str} of {=u8} bytes via x{=u8} at {=u64:#x}",
                abort.status,
                access,
                1u8 << abort.access_size_log2,
                abort.register,
                frame.far
            );
        } else {
            // ISV=0: the syndrome does not describe the access (size, register).
            defmt::error!(
                "data abort: {} on {=str} at {=u64:#x} (ISV=0)",
                abort.status,
                access,
                frame.far
            );
        }
    }
}
