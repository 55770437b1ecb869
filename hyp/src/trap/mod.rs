//! The trap path: what happens between a guest's exception reaching EL2 and the guest
//! resuming. The assembly in `arch::vectors` only saves a [`frame::TrapFrame`] and branches
//! here (through `crate::entry`); everything decided here is a plain function of the frame,
//! tested on the host:
//!
//! - [`syndrome`]: the syndrome, decoded once ([`syndrome::Trap::decode`]);
//! - [`handler`]: the answer to each kind of trap (calls, MMIO, aborts, the rest), with every
//!   effect on the CPU or a device asked of a [`handler::TrapHost`];
//! - [`inject`]: the exception a guest is made to take (ESR, vector, state);
//! - [`frame`]: the saved registers, as the assembly lays them out.

pub mod frame;
pub mod handler;
pub mod inject;
pub mod syndrome;

/// Which of the sixteen vectors was taken (the assembly passes its index).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
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
    /// The vector with index `index` (its offset in the table divided by 0x80).
    #[must_use]
    pub fn from_index(index: u64) -> Self {
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
