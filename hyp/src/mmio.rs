//! Emulated MMIO: a guest's trapped load or store, decoded from its syndrome, and the registry
//! of handlers that answer such accesses (the virtual SMMU registers here).
//!
//! Only accesses the hardware fully describes are emulated: ESR_EL2.ISV = 1 gives the size, the
//! register and the direction. An access with ISV = 0 (a load pair, a writeback form, SIMD) is
//! never decoded by reading and emulating the guest's instruction: it gets an external abort,
//! as a device that does not support that access would give.

use crate::exception::{DataAbort, fault_ipa};
use smmu::PhysRange;

/// One trapped guest access to an emulated device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub struct MmioAccess {
    /// The intermediate physical address accessed.
    pub ipa: u64,
    /// log2 of the access size in bytes (0..=3).
    pub size_log2: u8,
    /// A store (otherwise a load).
    pub write: bool,
    /// The transfer register (31 = XZR/WZR).
    pub register: u8,
    /// A load whose value must be sign-extended to the register.
    pub sign_extend: bool,
    /// The register is used as 64 bits (otherwise 32).
    pub sixty_four_bit_register: bool,
}

impl MmioAccess {
    /// Decodes a stage-2 data abort; `None` when the syndrome does not describe the access
    /// (ISV = 0) or it happened on a stage-1 table walk.
    #[must_use]
    pub fn from_syndrome(esr: u64, hpfar: u64, far: u64) -> Option<Self> {
        let abort = DataAbort::from_esr(esr);
        if !abort.syndrome_valid || abort.stage1_walk {
            return None;
        }
        Some(Self {
            ipa: fault_ipa(hpfar, far),
            size_log2: abort.access_size_log2,
            write: abort.write,
            register: abort.register,
            sign_extend: abort.sign_extend,
            sixty_four_bit_register: abort.sixty_four_bit_register,
        })
    }

    /// The access size in bytes.
    #[must_use]
    pub fn size(&self) -> u8 {
        1 << self.size_log2
    }

    fn size_mask(&self) -> u64 {
        match self.size_log2 {
            3 => u64::MAX,
            n => (1u64 << (8u32 << n)) - 1,
        }
    }

    /// The value a store writes, from the saved registers x0..x30 (XZR reads as zero).
    #[must_use]
    pub fn store_value(&self, registers: &[u64; 31]) -> u64 {
        registers
            .get(usize::from(self.register))
            .copied()
            .unwrap_or(0)
            & self.size_mask()
    }

    /// Completes a load: puts `value` (the device's `size` bytes) into the transfer register,
    /// sign-extended and truncated as the instruction would have done. A load to XZR is dropped.
    pub fn complete_load(&self, registers: &mut [u64; 31], value: u64) {
        let bits = 8u32 << self.size_log2;
        let mut value = value & self.size_mask();
        if self.sign_extend && bits < 64 {
            let shift = 64 - bits;
            value = (((value << shift) as i64) >> shift) as u64;
        }
        if !self.sixty_four_bit_register {
            value &= 0xffff_ffff;
        }
        if let Some(register) = registers.get_mut(usize::from(self.register)) {
            *register = value;
        }
    }
}

/// A device emulated at EL2.
pub trait MmioHandler: Sync {
    /// A load of `access.size()` bytes at `offset` from the device's base.
    fn read(&self, offset: u64, access: &MmioAccess) -> Result<u64, MmioError>;
    /// A store of `value` (`access.size()` bytes) at `offset` from the device's base.
    fn write(&self, offset: u64, access: &MmioAccess, value: u64) -> Result<(), MmioError>;
}

/// A device's refusal of an access; the guest gets an external abort.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum MmioError {
    /// No register at that offset, or not with that size.
    Unsupported,
}

/// The most emulated devices.
pub const MAX_HANDLERS: usize = 4;

/// Emulated devices by address range. Filled at boot, before any guest runs; read-only after.
#[derive(Default)]
pub struct MmioRegistry {
    entries: heapless::Vec<(PhysRange, &'static dyn MmioHandler), MAX_HANDLERS>,
}

impl core::fmt::Debug for MmioRegistry {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(range, _)| range))
            .finish()
    }
}

/// Why a handler could not be registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum RegistryError {
    /// All [`MAX_HANDLERS`] slots are taken.
    Full,
    /// The range overlaps one already registered.
    Overlap,
}

impl MmioRegistry {
    /// An empty registry.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            entries: heapless::Vec::new(),
        }
    }

    /// Makes `handler` answer accesses to `range`.
    pub fn register(
        &mut self,
        range: PhysRange,
        handler: &'static dyn MmioHandler,
    ) -> Result<(), RegistryError> {
        if self.entries.iter().any(|(r, _)| r.overlaps(&range)) {
            return Err(RegistryError::Overlap);
        }
        self.entries
            .push((range, handler))
            .map_err(|_| RegistryError::Full)
    }

    /// The handler for `ipa` and the offset into its range. The whole access must fit.
    #[must_use]
    pub fn find(&self, access: &MmioAccess) -> Option<(&'static dyn MmioHandler, u64)> {
        let last = access.ipa.checked_add(u64::from(access.size()) - 1)?;
        self.entries.iter().find_map(|(range, handler)| {
            (range.contains(smmu::PhysAddr(access.ipa)) && range.contains(smmu::PhysAddr(last)))
                .then(|| (*handler, access.ipa - range.base.get()))
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn esr(isv: bool, sas: u64, sse: bool, srt: u64, sf: bool, write: bool) -> u64 {
        0x24 << 26
            | 1 << 25
            | u64::from(isv) << 24
            | sas << 22
            | u64::from(sse) << 21
            | srt << 16
            | u64::from(sf) << 15
            | u64::from(write) << 6
            | 0b00_0111
    }

    #[test]
    fn an_access_without_a_valid_syndrome_is_not_decoded() {
        assert_eq!(
            MmioAccess::from_syndrome(esr(false, 2, false, 3, false, true), 0x9050 << 4, 0x20),
            None
        );
    }

    #[test]
    fn a_word_store_from_w3_takes_the_low_32_bits() {
        let access = MmioAccess::from_syndrome(
            esr(true, 2, false, 3, false, true),
            0x9050 << 4,
            0xffff_0020,
        )
        .unwrap();
        assert_eq!(access.ipa, 0x0905_0020);
        assert_eq!(access.size(), 4);
        let mut registers = [0u64; 31];
        registers[3] = 0xdead_beef_1234_5678;
        assert_eq!(access.store_value(&registers), 0x1234_5678);
        let xzr = MmioAccess {
            register: 31,
            ..access
        };
        assert_eq!(xzr.store_value(&registers), 0);
    }

    #[test]
    fn loads_sign_extend_and_truncate_like_the_instruction() {
        let mut registers = [0u64; 31];
        // LDRSB x1: byte, sign-extended into 64 bits.
        let ldrsb = MmioAccess::from_syndrome(esr(true, 0, true, 1, true, false), 0, 0).unwrap();
        ldrsb.complete_load(&mut registers, 0x80);
        assert_eq!(registers[1], 0xffff_ffff_ffff_ff80);
        // LDRSH w1: halfword, sign-extended into 32 bits, upper half zero.
        let ldrsh_w = MmioAccess::from_syndrome(esr(true, 1, true, 1, false, false), 0, 0).unwrap();
        ldrsh_w.complete_load(&mut registers, 0x8001);
        assert_eq!(registers[1], 0xffff_8001);
        // LDR x2: doubleword as is.
        let ldr = MmioAccess::from_syndrome(esr(true, 3, false, 2, true, false), 0, 0).unwrap();
        ldr.complete_load(&mut registers, u64::MAX);
        assert_eq!(registers[2], u64::MAX);
        // A load into XZR changes nothing.
        let before = registers;
        MmioAccess {
            register: 31,
            ..ldr
        }
        .complete_load(&mut registers, 5);
        assert_eq!(registers, before);
    }

    struct Fixed;
    impl MmioHandler for Fixed {
        fn read(&self, offset: u64, _: &MmioAccess) -> Result<u64, MmioError> {
            Ok(offset)
        }
        fn write(&self, _: u64, _: &MmioAccess, _: u64) -> Result<(), MmioError> {
            Err(MmioError::Unsupported)
        }
    }
    static FIXED: Fixed = Fixed;

    #[test]
    fn the_registry_finds_whole_accesses_only_and_refuses_overlaps() {
        let mut registry = MmioRegistry::new();
        registry
            .register(PhysRange::new(0x0905_0000, 0x2_0000), &FIXED)
            .unwrap();
        assert_eq!(
            registry.register(PhysRange::new(0x0906_0000, 0x1000), &FIXED),
            Err(RegistryError::Overlap)
        );
        let access = MmioAccess {
            ipa: 0x0905_0010,
            size_log2: 2,
            write: false,
            register: 0,
            sign_extend: false,
            sixty_four_bit_register: false,
        };
        let (handler, offset) = registry.find(&access).unwrap();
        assert_eq!(offset, 0x10);
        assert_eq!(handler.read(offset, &access), Ok(0x10));
        // Straddling the end of the range: no handler.
        assert!(
            registry
                .find(&MmioAccess {
                    ipa: 0x0906_fffe,
                    ..access
                })
                .is_none()
        );
        assert!(
            registry
                .find(&MmioAccess {
                    ipa: 0x0904_0000,
                    ..access
                })
                .is_none()
        );
        for base in 1..MAX_HANDLERS as u64 {
            registry
                .register(PhysRange::new(base << 32, 0x1000), &FIXED)
                .unwrap();
        }
        assert_eq!(
            registry.register(PhysRange::new(0x10_0000_0000, 0x1000), &FIXED),
            Err(RegistryError::Full)
        );
    }
}
