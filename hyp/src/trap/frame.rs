//! The registers the exception vectors save, in the order they save them.
//!
//! `arch::vectors` stores this frame on the EL2 stack with `stp`s at the offsets below and
//! hands its address to the trap path; nothing else about the assembly is known here.

/// Words in a [`TrapFrame`]: x0..x30, ELR, SPSR, ESR, FAR, and one to keep SP 16-byte aligned.
pub const FRAME_WORDS: usize = 36;

/// The registers saved on exception entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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
    pub padding: u64,
}

const _: () = assert!(size_of::<TrapFrame>() == FRAME_WORDS * 8);
const _: () = assert!(core::mem::offset_of!(TrapFrame, elr) == 31 * 8);
const _: () = assert!(core::mem::offset_of!(TrapFrame, far) == 34 * 8);

impl TrapFrame {
    /// General-purpose register `n` (31 reads as zero: XZR).
    #[must_use]
    pub fn register(&self, n: u8) -> u64 {
        self.registers.get(usize::from(n)).copied().unwrap_or(0)
    }

    /// Sets general-purpose register `n` (31, XZR, ignores the write).
    pub fn set_register(&mut self, n: u8, value: u64) {
        if let Some(register) = self.registers.get_mut(usize::from(n)) {
            *register = value;
        }
    }
}
