//! The EL2 exception vector tables.
//!
//! The hypervisor's table saves the complete general-purpose register file plus
//! ELR/SPSR/ESR/FAR into a [`crate::trap::frame::TrapFrame`] on the current stack and calls
//! `hyp_handle_exception` (defined by `crate::entry`) with the frame and the vector's index;
//! it restores the frame and returns with `eret`. Nothing else happens in assembly. Saving all
//! 31 registers (not just the caller-saved ones) is what lets a trap handler read and write any
//! guest register a syndrome names, e.g. the transfer register of an MMIO access.
//!
//! Two more tables exist for benchmark mode only: the trap *floor*. Their lower-EL synchronous
//! vector answers an `HVC #0` with the least possible work (the "empty" table checks the
//! syndrome and returns; the "save all" table also saves and restores x0-x30), so the cost of
//! a real trap can be reported beside the cost of no work at all. `HVC #N` with N != 0 switches
//! back to the hypervisor's table; any other exception switches back and is handled as usual.

use crate::trap::frame::FRAME_WORDS;
use core::arch::global_asm;

global_asm!(
    r#"
.macro hyp_vector index
    .balign 0x80
    sub sp, sp, #({frame_bytes})
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
    add sp, sp, #({frame_bytes})
    eret

// The floor tables: every vector but the lower-EL synchronous one is the hypervisor's own.
.macro floor_forward index
    .balign 0x80
    b hyp_vector_table + \index * 0x80
.endm

.balign 0x800
.global hyp_floor_vectors_empty
hyp_floor_vectors_empty:
    floor_forward 0
    floor_forward 1
    floor_forward 2
    floor_forward 3
    floor_forward 4
    floor_forward 5
    floor_forward 6
    floor_forward 7
    .balign 0x80
    stp x0, x1, [sp, #-16]!
    mrs x0, esr_el2
    lsr x1, x0, #26
    cmp x1, #0x16
    b.ne hyp_floor_leave_and_forward
    tst x0, #0xffff
    b.ne hyp_floor_leave
    ldp x0, x1, [sp], #16
    eret
    floor_forward 9
    floor_forward 10
    floor_forward 11
    floor_forward 12
    floor_forward 13
    floor_forward 14
    floor_forward 15

.balign 0x800
.global hyp_floor_vectors_save_all
hyp_floor_vectors_save_all:
    floor_forward 0
    floor_forward 1
    floor_forward 2
    floor_forward 3
    floor_forward 4
    floor_forward 5
    floor_forward 6
    floor_forward 7
    .balign 0x80
    b hyp_floor_save_all
    floor_forward 9
    floor_forward 10
    floor_forward 11
    floor_forward 12
    floor_forward 13
    floor_forward 14
    floor_forward 15

hyp_floor_save_all:
    sub sp, sp, #(32 * 8)
    stp x0, x1, [sp, #(0 * 8)]
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
    str x30, [sp, #(30 * 8)]
    mrs x0, esr_el2
    lsr x1, x0, #26
    cmp x1, #0x16
    b.ne 1f
    tst x0, #0xffff
    b.ne 1f
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
    add sp, sp, #(32 * 8)
    eret
1:  // Not HVC #0: restore x0/x1 as the empty floor leaves them, then leave the floor.
    ldp x0, x1, [sp, #(0 * 8)]
    add sp, sp, #(32 * 8)
    stp x0, x1, [sp, #-16]!
    mrs x0, esr_el2
    lsr x1, x0, #26
    cmp x1, #0x16
    b.ne hyp_floor_leave_and_forward
    // HVC #N, N != 0: fall through.

// HVC #N (N != 0) in a floor table: back to the hypervisor's table, the call answered.
hyp_floor_leave:
    adr x0, hyp_vector_table
    msr vbar_el2, x0
    isb
    ldp x0, x1, [sp], #16
    eret

// Any other exception in a floor table: back to the hypervisor's table, which handles it.
hyp_floor_leave_and_forward:
    adr x0, hyp_vector_table
    msr vbar_el2, x0
    isb
    ldp x0, x1, [sp], #16
    b hyp_vector_table + 8 * 0x80
"#,
    frame_bytes = const FRAME_WORDS * 8,
);

unsafe extern "C" {
    /// The hypervisor's table; 2 KiB aligned as VBAR_EL2 requires.
    static hyp_vector_table: [u8; 0x800];
    /// The floor table that only checks the syndrome.
    static hyp_floor_vectors_empty: [u8; 0x800];
    /// The floor table that also saves and restores x0-x30.
    static hyp_floor_vectors_save_all: [u8; 0x800];
}

/// Which vector table this CPU uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// The hypervisor's.
    Hypervisor,
    /// Benchmark mode: the floor that only checks ESR.
    FloorEmpty,
    /// Benchmark mode: the floor that saves and restores all 31 registers.
    FloorSaveAll,
}

/// Points VBAR_EL2 at `table`.
pub fn install(table: Table) {
    let base = match table {
        Table::Hypervisor => &raw const hyp_vector_table,
        Table::FloorEmpty => &raw const hyp_floor_vectors_empty,
        Table::FloorSaveAll => &raw const hyp_floor_vectors_save_all,
    };
    // SAFETY: each table is 2 KiB aligned (defined above) and mapped executable in every EL2
    // map the hypervisor uses (it lives in `.text`); every vector of a floor table returns to
    // the guest or hands the exception to the hypervisor's table.
    unsafe {
        core::arch::asm!(
            "msr vbar_el2, {table}",
            "isb",
            table = in(reg) base,
            options(nostack, preserves_flags),
        );
    }
}
