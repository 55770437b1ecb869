//! Decoding of exception syndromes (ESR_EL2), once per trap: [`Trap::decode`] is the only
//! place the trap path reads the syndrome's bits, and reports use the same types.
//!
//! Pure functions over the raw register values: the vectors in `arch` capture ESR_EL2, FAR_EL2,
//! ELR_EL2 (and the trap path HPFAR_EL2), and everything that interprets them lives here, where
//! it is tested on the host.

/// The exception class, ESR_ELx.EC (bits 31:26), for the classes the hypervisor distinguishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum ExceptionClass {
    /// 0x00: unknown reason (e.g. an undefined instruction).
    Unknown,
    /// 0x01: a trapped WFI or WFE.
    WaitForInterrupt,
    /// 0x16: HVC from AArch64.
    Hvc64,
    /// 0x17: SMC from AArch64.
    Smc64,
    /// 0x18: a trapped MSR, MRS or system instruction.
    SystemRegister,
    /// 0x20: instruction abort from a lower exception level.
    InstructionAbortLower,
    /// 0x21: instruction abort taken without a change of exception level.
    InstructionAbortCurrent,
    /// 0x22: PC alignment fault.
    PcAlignment,
    /// 0x24: data abort from a lower exception level.
    DataAbortLower,
    /// 0x25: data abort taken without a change of exception level.
    DataAbortCurrent,
    /// 0x26: SP alignment fault.
    SpAlignment,
    /// 0x2F: SError.
    SError,
    /// 0x3C: BRK instruction.
    Brk64,
    /// Any other class, with its raw value.
    Other(u8),
}

impl ExceptionClass {
    /// Decodes the EC field of a syndrome.
    #[must_use]
    pub fn from_esr(esr: u64) -> Self {
        match (esr >> 26) & 0x3f {
            0x00 => Self::Unknown,
            0x01 => Self::WaitForInterrupt,
            0x16 => Self::Hvc64,
            0x17 => Self::Smc64,
            0x18 => Self::SystemRegister,
            0x20 => Self::InstructionAbortLower,
            0x21 => Self::InstructionAbortCurrent,
            0x22 => Self::PcAlignment,
            0x24 => Self::DataAbortLower,
            0x25 => Self::DataAbortCurrent,
            0x26 => Self::SpAlignment,
            0x2f => Self::SError,
            0x3c => Self::Brk64,
            #[allow(clippy::cast_possible_truncation, reason = "masked to 6 bits")]
            other => Self::Other(other as u8),
        }
    }
}

/// The fault status code of an abort (DFSC/IFSC, ISS bits 5:0), as far as reports need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum FaultStatus {
    /// Translation fault at the given lookup level.
    Translation(u8),
    /// Access-flag fault at the given level.
    AccessFlag(u8),
    /// Permission fault at the given level.
    Permission(u8),
    /// Synchronous external abort, not on a table walk.
    SynchronousExternal,
    /// Alignment fault.
    Alignment,
    /// Any other code, raw.
    Other(u8),
}

impl FaultStatus {
    /// Decodes ISS bits 5:0 of an instruction or data abort.
    #[must_use]
    #[allow(clippy::cast_possible_truncation, reason = "masked to 6 bits")]
    pub fn from_iss(iss: u64) -> Self {
        let code = (iss & 0x3f) as u8;
        let level = code & 0b11;
        match code >> 2 {
            0b0001 => Self::Translation(level),
            0b0010 => Self::AccessFlag(level),
            0b0011 => Self::Permission(level),
            _ if code == 0b01_0000 => Self::SynchronousExternal,
            _ if code == 0b10_0001 => Self::Alignment,
            _ => Self::Other(code),
        }
    }
}

/// The syndrome of a data abort (ESR_ELx.ISS for EC 0x24/0x25).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub struct DataAbort {
    /// ISV: the fields below describing the access (size, register) are valid.
    pub syndrome_valid: bool,
    /// SAS: access size as log2 of bytes (0..=3).
    pub access_size_log2: u8,
    /// SSE: the loaded value must be sign-extended.
    pub sign_extend: bool,
    /// SRT: the transfer register, 0..=30 (31 is XZR/WZR).
    pub register: u8,
    /// SF: the register is 64-bit wide.
    pub sixty_four_bit_register: bool,
    /// FnV: FAR is not valid.
    pub far_not_valid: bool,
    /// S1PTW: the fault happened on a stage-1 table walk (through stage 2).
    pub stage1_walk: bool,
    /// WnR: the access was a write.
    pub write: bool,
    /// DFSC.
    pub status: FaultStatus,
}

impl DataAbort {
    /// Decodes the ISS of a data abort syndrome.
    #[must_use]
    #[allow(
        clippy::cast_possible_truncation,
        reason = "each field is masked to its width"
    )]
    pub fn from_esr(esr: u64) -> Self {
        let bit = |n: u32| (esr >> n) & 1 == 1;
        Self {
            syndrome_valid: bit(24),
            access_size_log2: ((esr >> 22) & 0b11) as u8,
            sign_extend: bit(21),
            register: ((esr >> 16) & 0x1f) as u8,
            sixty_four_bit_register: bit(15),
            far_not_valid: bit(10),
            stage1_walk: bit(7),
            write: bit(6),
            status: FaultStatus::from_iss(esr),
        }
    }
}

/// The guest-physical (IPA) address of a stage-2 fault: HPFAR_EL2.FIPA (bits 47:4 hold IPA
/// bits 51:12) joined with the page offset from FAR_EL2.
#[must_use]
pub fn fault_ipa(hpfar: u64, far: u64) -> smmu::Ipa {
    smmu::Ipa(((hpfar >> 4) & ((1 << 40) - 1)) << 12 | (far & 0xfff))
}

/// ESR_ELx.IL: the trapped instruction was 32 bits long (otherwise a 16-bit T32 one, which only
/// an AArch32 EL0 can run).
pub const IL: u64 = 1 << 25;

/// The length in bytes of the instruction a syndrome describes: what a handled access steps
/// ELR over.
#[must_use]
pub const fn instruction_length(esr: u64) -> u64 {
    if esr & IL != 0 { 4 } else { 2 }
}

/// A trap from a guest, its syndrome decoded once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum Trap {
    /// HVC from AArch64 (ELR already points past it), with its immediate.
    Hvc {
        /// The instruction's imm16.
        immediate: u16,
    },
    /// A trapped SMC from AArch64 (ELR points at it), with its immediate.
    Smc {
        /// The instruction's imm16.
        immediate: u16,
    },
    /// A stage-2 data abort.
    DataAbort(DataAbort),
    /// A stage-2 instruction abort.
    InstructionAbort,
    /// Anything else the guest made trap (a trapped system register, an SVE or SME use, ...):
    /// the guest gets an undefined-instruction exception.
    Other(ExceptionClass),
}

impl Trap {
    /// Decodes the syndrome of an exception taken from a lower exception level.
    #[must_use]
    #[allow(
        clippy::cast_possible_truncation,
        reason = "imm16 is masked to 16 bits"
    )]
    #[inline]
    pub fn decode(esr: u64) -> Self {
        let immediate = (esr & 0xffff) as u16;
        // The classes the trap path dispatches on, straight from EC; the rest through
        // `ExceptionClass`, for the log.
        match (esr >> 26) & 0x3f {
            0x16 => Self::Hvc { immediate },
            0x17 => Self::Smc { immediate },
            0x24 => Self::DataAbort(DataAbort::from_esr(esr)),
            0x20 => Self::InstructionAbort,
            _ => Self::Other(ExceptionClass::from_esr(esr)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exception_classes_decode_from_bits_31_to_26() {
        let cases = [
            (0x00u64, ExceptionClass::Unknown),
            (0x16, ExceptionClass::Hvc64),
            (0x17, ExceptionClass::Smc64),
            (0x24, ExceptionClass::DataAbortLower),
            (0x25, ExceptionClass::DataAbortCurrent),
            (0x21, ExceptionClass::InstructionAbortCurrent),
            (0x3c, ExceptionClass::Brk64),
            (0x07, ExceptionClass::Other(0x07)),
        ];
        for (ec, class) in cases {
            assert_eq!(
                ExceptionClass::from_esr(ec << 26 | 0x1ff_ffff),
                class,
                "EC {ec:#x}"
            );
        }
    }

    #[test]
    fn a_level_3_translation_fault_on_a_32_bit_store_to_x5_decodes_fully() {
        // EC=0x24, IL=1, ISV=1, SAS=2 (word), SRT=5, WnR=1, DFSC=0b000111.
        let esr = 0x24 << 26 | 1 << 25 | 1 << 24 | 2 << 22 | 5 << 16 | 1 << 6 | 0b00_0111;
        let abort = DataAbort::from_esr(esr);
        assert!(abort.syndrome_valid);
        assert_eq!(abort.access_size_log2, 2);
        assert_eq!(abort.register, 5);
        assert!(abort.write);
        assert!(!abort.sixty_four_bit_register);
        assert_eq!(abort.status, FaultStatus::Translation(3));
    }

    #[test]
    fn fault_status_codes_map_to_their_kinds() {
        assert_eq!(
            FaultStatus::from_iss(0b00_0100),
            FaultStatus::Translation(0)
        );
        assert_eq!(FaultStatus::from_iss(0b00_1001), FaultStatus::AccessFlag(1));
        assert_eq!(FaultStatus::from_iss(0b00_1111), FaultStatus::Permission(3));
        assert_eq!(
            FaultStatus::from_iss(0b01_0000),
            FaultStatus::SynchronousExternal
        );
        assert_eq!(FaultStatus::from_iss(0b10_0001), FaultStatus::Alignment);
        assert_eq!(
            FaultStatus::from_iss(0b11_0000),
            FaultStatus::Other(0b11_0000)
        );
    }

    #[test]
    fn fault_ipa_joins_hpfar_page_with_far_offset() {
        assert_eq!(
            fault_ipa(0x9050 << 4, 0xdead_beef_0000_0abc),
            smmu::Ipa(0x0905_0abc)
        );
        assert_eq!(fault_ipa(u64::MAX, 0), smmu::Ipa(((1u64 << 40) - 1) << 12));
    }

    #[test]
    fn a_trap_is_decoded_into_what_the_handler_dispatches_on() {
        assert_eq!(
            Trap::decode(0x16 << 26 | IL | 0x7),
            Trap::Hvc { immediate: 7 }
        );
        assert_eq!(
            Trap::decode(0x17 << 26 | IL | 0xfff0),
            Trap::Smc { immediate: 0xfff0 }
        );
        assert_eq!(Trap::decode(0x20 << 26 | IL), Trap::InstructionAbort);
        let store = 0x24 << 26 | IL | 1 << 24 | 3 << 22 | 1 << 6;
        assert!(matches!(
            Trap::decode(store),
            Trap::DataAbort(DataAbort {
                write: true,
                access_size_log2: 3,
                ..
            })
        ));
        assert_eq!(
            Trap::decode(0x18 << 26 | IL),
            Trap::Other(ExceptionClass::SystemRegister)
        );
        // An abort "taken at the same level" cannot come from a guest: it is not a stage-2 abort.
        assert_eq!(
            Trap::decode(0x25 << 26),
            Trap::Other(ExceptionClass::DataAbortCurrent)
        );
    }

    #[test]
    fn handled_instructions_are_stepped_by_their_length() {
        assert_eq!(instruction_length(0x24 << 26 | IL), 4);
        assert_eq!(instruction_length(0x24 << 26), 2);
    }
}
