//! Making a guest take an exception at its own EL1, as if its EL1 had taken it: the values of
//! ESR_EL1, FAR_EL1, ELR_EL1 and SPSR_EL1, and where the guest resumes (its vector for the
//! exception's source), computed from the trapped state alone.
//!
//! The vector offset depends on where the exception came from (ARM DDI 0487, "Exception
//! vectors"): the current EL with SP_EL0 (EL1t, +0x000), the current EL with SP_ELx (EL1h,
//! +0x200), a lower EL in AArch64 (EL0, +0x400), a lower EL in AArch32 (EL0, +0x600). A guest
//! runs AArch32 only at EL0 (HCR_EL2.RW = 1).

use super::syndrome::IL;

/// An exception the hypervisor makes the guest take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum Exception {
    /// Synchronous external abort on a data access (a write when `write`).
    DataAbort {
        /// WnR of the access.
        write: bool,
    },
    /// Synchronous external abort on an instruction fetch.
    InstructionAbort,
    /// Undefined instruction.
    Undefined,
}

/// SPSR for the guest's EL1 entering an exception handler: EL1h with D, A, I and F masked.
pub const SPSR_EL1H_MASKED: u64 = 0x3c5;

/// What the injection writes: the guest's EL1 exception registers, and where it resumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Injection {
    /// ESR_EL1.
    pub esr_el1: u64,
    /// FAR_EL1 (the trapped FAR_EL2: the guest's virtual address).
    pub far_el1: u64,
    /// ELR_EL1: the instruction that took the exception.
    pub elr_el1: u64,
    /// SPSR_EL1: the state the guest was in.
    pub spsr_el1: u64,
    /// Where `eret` from EL2 goes: the guest's vector.
    pub resume_at: u64,
    /// The state `eret` from EL2 restores: EL1h, masked.
    pub resume_spsr: u64,
}

/// SPSR.M[4]: the exception came from AArch32.
const SPSR_AARCH32: u64 = 1 << 4;
const MODE_MASK: u64 = 0xf;
const EL1T: u64 = 0b0100;
const EL1H: u64 = 0b0101;

/// Where the exception came from, from the trapped SPSR_EL2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    El1WithSpEl0,
    El1WithSpEl1,
    El0Aarch64,
    El0Aarch32,
}

impl Source {
    fn from_spsr(spsr: u64) -> Self {
        if spsr & SPSR_AARCH32 != 0 {
            return Self::El0Aarch32;
        }
        match spsr & MODE_MASK {
            EL1T => Self::El1WithSpEl0,
            EL1H => Self::El1WithSpEl1,
            // EL0t; an EL2 or EL3 mode cannot trap from a guest.
            _ => Self::El0Aarch64,
        }
    }

    fn vector_offset(self) -> u64 {
        match self {
            Self::El1WithSpEl0 => 0x000,
            Self::El1WithSpEl1 => 0x200,
            Self::El0Aarch64 => 0x400,
            Self::El0Aarch32 => 0x600,
        }
    }

    fn is_lower_el(self) -> bool {
        matches!(self, Self::El0Aarch64 | Self::El0Aarch32)
    }
}

/// DFSC/IFSC: synchronous external abort, not on a table walk.
const SYNCHRONOUS_EXTERNAL_ABORT: u64 = 0x10;

/// The injection of `exception` for a trap with syndrome `esr` taken at `elr` in state `spsr`,
/// with FAR_EL2 `far`, into a guest whose VBAR_EL1 is `vbar`.
#[must_use]
pub fn inject(
    exception: Exception,
    esr: u64,
    elr: u64,
    spsr: u64,
    far: u64,
    vbar: u64,
) -> Injection {
    let source = Source::from_spsr(spsr);
    let lower = source.is_lower_el();
    let (class, iss, il) = match exception {
        Exception::DataAbort { write } => (
            if lower { 0x24 } else { 0x25 },
            SYNCHRONOUS_EXTERNAL_ABORT | u64::from(write) << 6,
            esr & IL,
        ),
        Exception::InstructionAbort => (
            if lower { 0x20 } else { 0x21 },
            SYNCHRONOUS_EXTERNAL_ABORT,
            esr & IL,
        ),
        // EC 0 ("unknown reason") has IL = 1.
        Exception::Undefined => (0x00, 0, IL),
    };
    Injection {
        esr_el1: class << 26 | il | iss,
        far_el1: far,
        elr_el1: elr,
        spsr_el1: spsr,
        resume_at: vbar.wrapping_add(source.vector_offset()),
        resume_spsr: SPSR_EL1H_MASKED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VBAR: u64 = 0xffff_8000_1001_0000;
    const EL1H_SPSR: u64 = 0x3c5;
    const EL1T_SPSR: u64 = 0x3c4;
    const EL0_SPSR: u64 = 0x0;
    /// AArch32 user mode (M = 0b10000), T32.
    const AARCH32_USR_SPSR: u64 = 0x30;

    #[test]
    fn each_source_gets_its_own_vector() {
        for (spsr, offset) in [
            (EL1T_SPSR, 0x000),
            (EL1H_SPSR, 0x200),
            (EL0_SPSR, 0x400),
            (AARCH32_USR_SPSR, 0x600),
        ] {
            let injection = inject(Exception::Undefined, IL, 0x1000, spsr, 0, VBAR);
            assert_eq!(injection.resume_at, VBAR + offset, "SPSR {spsr:#x}");
            assert_eq!(injection.resume_spsr, SPSR_EL1H_MASKED);
            assert_eq!((injection.elr_el1, injection.spsr_el1), (0x1000, spsr));
        }
    }

    #[test]
    fn aborts_say_where_they_came_from_and_keep_the_length_of_the_instruction() {
        let from_el1 = inject(
            Exception::DataAbort { write: true },
            IL,
            0,
            EL1H_SPSR,
            0x42,
            VBAR,
        );
        assert_eq!(from_el1.esr_el1, 0x25 << 26 | IL | 1 << 6 | 0x10);
        assert_eq!(from_el1.far_el1, 0x42);
        let from_el0 = inject(
            Exception::DataAbort { write: false },
            IL,
            0,
            EL0_SPSR,
            0,
            VBAR,
        );
        assert_eq!(from_el0.esr_el1, 0x24 << 26 | IL | 0x10);
        // A 16-bit T32 load at AArch32 EL0: IL = 0, as the trapped syndrome said.
        let thumb = inject(
            Exception::DataAbort { write: false },
            0,
            0,
            AARCH32_USR_SPSR,
            0,
            VBAR,
        );
        assert_eq!(thumb.esr_el1, 0x24 << 26 | 0x10);
        let fetch = inject(Exception::InstructionAbort, IL, 0, EL1H_SPSR, 0, VBAR);
        assert_eq!(fetch.esr_el1, 0x21 << 26 | IL | 0x10);
        let fetch_el0 = inject(Exception::InstructionAbort, IL, 0, EL0_SPSR, 0, VBAR);
        assert_eq!(fetch_el0.esr_el1, 0x20 << 26 | IL | 0x10);
    }

    #[test]
    fn undefined_has_class_zero_and_il_set() {
        let injection = inject(Exception::Undefined, 0, 0, AARCH32_USR_SPSR, 0, VBAR);
        assert_eq!(injection.esr_el1, IL);
    }
}
