//! Emulated MMIO: a guest's trapped load or store, decoded from its syndrome, the registry of
//! virtual devices that answer such accesses, and the emulation of one access.
//!
//! Devices implement [`nested::MmioDevice`], the consumer-side interface the virtual SMMU
//! defines (an offset into the device's window, a width, a value, the vCPU), and sit behind a
//! lock each, since any vCPU may trap into them.
//!
//! Only accesses the hardware fully describes are emulated: ESR_EL2.ISV = 1 gives the size, the
//! register and the direction. An access with ISV = 0 (a load pair, a writeback form, SIMD) is
//! never decoded by reading and emulating the guest's instruction: it gets an external abort,
//! as a device that does not support that access would give.

use crate::trap::frame::TrapFrame;
use crate::trap::syndrome::DataAbort;
use nested::{AccessWidth, MmioDevice, MmioOffset, MmioOutcome, VcpuId};
use smmu::{Ipa, IpaRange};

/// One trapped guest access to an emulated device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioAccess {
    /// The intermediate physical address accessed.
    pub ipa: Ipa,
    /// How many bytes.
    pub width: AccessWidth,
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
    /// The access a stage-2 data abort describes at `ipa`; `None` when the syndrome does not
    /// describe it (ISV = 0) or it happened on a stage-1 table walk.
    #[must_use]
    pub fn from_abort(abort: &DataAbort, ipa: Ipa) -> Option<Self> {
        if !abort.syndrome_valid || abort.stage1_walk {
            return None;
        }
        Some(Self {
            ipa,
            width: AccessWidth::from_size_log2(abort.access_size_log2)?,
            write: abort.write,
            register: abort.register,
            sign_extend: abort.sign_extend,
            sixty_four_bit_register: abort.sixty_four_bit_register,
        })
    }

    /// The value a store writes, from the saved registers (XZR reads as zero).
    #[must_use]
    pub fn store_value(&self, frame: &TrapFrame) -> u64 {
        frame.register(self.register) & self.width.mask()
    }

    /// Completes a load: puts `value` (the device's bytes) into the transfer register,
    /// sign-extended and truncated as the instruction would have done. A load to XZR is dropped.
    pub fn complete_load(&self, frame: &mut TrapFrame, value: u64) {
        let bits = self.width.bytes() * 8;
        let mut value = value & self.width.mask();
        if self.sign_extend && bits < 64 {
            let shift = 64 - bits;
            value = (((value << shift) as i64) >> shift) as u64;
        }
        if !self.sixty_four_bit_register {
            value &= 0xffff_ffff;
        }
        frame.set_register(self.register, value);
    }
}

/// A device the registry holds: behind its own lock, since any vCPU may trap into it.
pub type SharedDevice = spin::Mutex<dyn MmioDevice + Send>;

/// The most emulated devices.
pub const MAX_DEVICES: usize = 4;

/// Emulated devices by IPA range. Filled at boot, before any guest runs; read-only after.
#[derive(Default)]
pub struct MmioRegistry {
    entries: heapless::Vec<(IpaRange, &'static SharedDevice), MAX_DEVICES>,
}

impl core::fmt::Debug for MmioRegistry {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(range, _)| range))
            .finish()
    }
}

/// Why a device could not be registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum RegistryError {
    /// All [`MAX_DEVICES`] slots are taken.
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

    /// Makes `device` answer accesses to `range`.
    ///
    /// # Errors
    ///
    /// [`RegistryError`] if the registry is full or `range` overlaps a registered device.
    pub fn register(
        &mut self,
        range: IpaRange,
        device: &'static SharedDevice,
    ) -> Result<(), RegistryError> {
        if self.entries.iter().any(|(r, _)| r.overlaps(&range)) {
            return Err(RegistryError::Overlap);
        }
        self.entries
            .push((range, device))
            .map_err(|_| RegistryError::Full)
    }

    /// The device for `access` and the offset into its window. The whole access must fit.
    #[must_use]
    pub fn find(&self, access: &MmioAccess) -> Option<(&'static SharedDevice, MmioOffset)> {
        let accessed = IpaRange::new(access.ipa, access.width.bytes());
        self.entries.iter().find_map(|(range, device)| {
            range
                .covers(&accessed)
                .then(|| (*device, MmioOffset(access.ipa.0 - range.base.0)))
        })
    }
}

/// What became of a trapped access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emulated {
    /// A device answered (or refused as read-as-zero/write-ignored): the access is complete
    /// and the guest steps over the instruction.
    Completed,
    /// No device there, or the device refused with an external abort.
    Abort,
}

/// Emulates `access` from vCPU `vcpu` against `registry`, updating the frame for a load.
pub fn emulate(
    access: &MmioAccess,
    frame: &mut TrapFrame,
    registry: &MmioRegistry,
    vcpu: VcpuId,
) -> Emulated {
    let Some((device, offset)) = registry.find(access) else {
        return Emulated::Abort;
    };
    let mut device = device.lock();
    if access.write {
        let value = access.store_value(frame);
        match device.mmio_write(offset, access.width, value, vcpu) {
            Ok(()) => Emulated::Completed,
            Err(error) => match error.outcome() {
                MmioOutcome::ReadAsZeroWriteIgnored => Emulated::Completed,
                MmioOutcome::ExternalAbort => Emulated::Abort,
            },
        }
    } else {
        let value = match device.mmio_read(offset, access.width, vcpu) {
            Ok(value) => value,
            Err(error) => match error.outcome() {
                MmioOutcome::ReadAsZeroWriteIgnored => 0,
                MmioOutcome::ExternalAbort => return Emulated::Abort,
            },
        };
        access.complete_load(frame, value);
        Emulated::Completed
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use nested::MmioError;

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

    fn access(esr: u64, ipa: u64) -> Option<MmioAccess> {
        MmioAccess::from_abort(&DataAbort::from_esr(esr), Ipa(ipa))
    }

    #[test]
    fn an_access_without_a_valid_syndrome_is_not_decoded() {
        assert_eq!(
            access(esr(false, 2, false, 3, false, true), 0x0905_0020),
            None
        );
        // Nor one that faulted on a stage-1 table walk.
        assert_eq!(
            access(esr(true, 2, false, 3, false, false) | 1 << 7, 0x0905_0020),
            None
        );
    }

    #[test]
    fn a_word_store_from_w3_takes_the_low_32_bits() {
        let store = access(esr(true, 2, false, 3, false, true), 0x0905_0020).unwrap();
        assert_eq!(store.ipa, Ipa(0x0905_0020));
        assert_eq!(store.width, AccessWidth::Bits32);
        let mut frame = TrapFrame::default();
        frame.registers[3] = 0xdead_beef_1234_5678;
        assert_eq!(store.store_value(&frame), 0x1234_5678);
        let xzr = MmioAccess {
            register: 31,
            ..store
        };
        assert_eq!(xzr.store_value(&frame), 0);
    }

    #[test]
    fn loads_sign_extend_and_truncate_like_the_instruction() {
        let mut frame = TrapFrame::default();
        // LDRSB x1: byte, sign-extended into 64 bits.
        let ldrsb = access(esr(true, 0, true, 1, true, false), 0).unwrap();
        ldrsb.complete_load(&mut frame, 0x80);
        assert_eq!(frame.registers[1], 0xffff_ffff_ffff_ff80);
        // LDRSH w1: halfword, sign-extended into 32 bits, upper half zero.
        let ldrsh_w = access(esr(true, 1, true, 1, false, false), 0).unwrap();
        ldrsh_w.complete_load(&mut frame, 0x8001);
        assert_eq!(frame.registers[1], 0xffff_8001);
        // LDR x2: doubleword as is.
        let ldr = access(esr(true, 3, false, 2, true, false), 0).unwrap();
        ldr.complete_load(&mut frame, u64::MAX);
        assert_eq!(frame.registers[2], u64::MAX);
        // A load into XZR changes nothing.
        let before = frame.clone();
        MmioAccess {
            register: 31,
            ..ldr
        }
        .complete_load(&mut frame, 5);
        assert_eq!(frame, before);
    }

    /// Registers at offset 0 (read-write) and 8 (read-only); 0x10 is reserved; anything past
    /// 0x100 is outside the window; bytes are not supported.
    struct Fake {
        value: u64,
        writes: u32,
    }

    impl MmioDevice for Fake {
        fn mmio_read(
            &mut self,
            offset: MmioOffset,
            width: AccessWidth,
            _: VcpuId,
        ) -> Result<u64, MmioError> {
            match (offset.0, width) {
                (_, AccessWidth::Bits8) => Err(MmioError::UnsupportedWidth(width)),
                (0, _) => Ok(self.value),
                (8, _) => Ok(0x1234),
                (o, _) if o < 0x100 => Err(MmioError::Reserved(offset)),
                _ => Err(MmioError::OutsideWindow(offset)),
            }
        }
        fn mmio_write(
            &mut self,
            offset: MmioOffset,
            width: AccessWidth,
            value: u64,
            _: VcpuId,
        ) -> Result<(), MmioError> {
            match (offset.0, width) {
                (_, AccessWidth::Bits8) => Err(MmioError::UnsupportedWidth(width)),
                (0, _) => {
                    self.value = value;
                    self.writes += 1;
                    Ok(())
                }
                (8, _) => Err(MmioError::WriteIgnored(offset)),
                _ => Err(MmioError::Reserved(offset)),
            }
        }
    }

    static DEVICE: spin::Mutex<Fake> = spin::Mutex::new(Fake {
        value: 0,
        writes: 0,
    });

    fn registry() -> MmioRegistry {
        let mut registry = MmioRegistry::new();
        registry
            .register(IpaRange::new(Ipa(0x0905_0000), 0x2_0000), &DEVICE)
            .unwrap();
        registry
    }

    #[test]
    fn the_registry_finds_whole_accesses_only_and_refuses_overlaps() {
        let mut registry = registry();
        assert_eq!(
            registry.register(IpaRange::new(Ipa(0x0906_0000), 0x1000), &DEVICE),
            Err(RegistryError::Overlap)
        );
        let load = access(esr(true, 2, false, 0, false, false), 0x0905_0010).unwrap();
        assert_eq!(registry.find(&load).map(|(_, o)| o), Some(MmioOffset(0x10)));
        // Straddling the end of the range, or outside it: no device.
        for ipa in [0x0906_fffe, 0x0904_0000] {
            assert!(
                registry
                    .find(&MmioAccess {
                        ipa: Ipa(ipa),
                        ..load
                    })
                    .is_none()
            );
        }
        for base in 1..MAX_DEVICES as u64 {
            registry
                .register(IpaRange::new(Ipa(base << 32), 0x1000), &DEVICE)
                .unwrap();
        }
        assert_eq!(
            registry.register(IpaRange::new(Ipa(0x10_0000_0000), 0x1000), &DEVICE),
            Err(RegistryError::Full)
        );
    }

    #[test]
    fn each_device_answer_becomes_its_architected_outcome() {
        let registry = registry();
        let mut frame = TrapFrame::default();
        frame.registers[4] = 0xabcd;
        let vcpu = VcpuId(1);
        let store = |ipa| access(esr(true, 3, false, 4, true, true), ipa).unwrap();
        let load = |ipa| access(esr(true, 3, false, 5, true, false), ipa).unwrap();
        // A register: written, then read back into x5.
        assert_eq!(
            emulate(&store(0x0905_0000), &mut frame, &registry, vcpu),
            Emulated::Completed
        );
        assert_eq!(
            emulate(&load(0x0905_0000), &mut frame, &registry, vcpu),
            Emulated::Completed
        );
        assert_eq!(frame.registers[5], 0xabcd);
        // Read-only and reserved: the access completes, a load reads zero.
        frame.registers[5] = 7;
        assert_eq!(
            emulate(&store(0x0905_0008), &mut frame, &registry, vcpu),
            Emulated::Completed
        );
        assert_eq!(
            emulate(&load(0x0905_0010), &mut frame, &registry, vcpu),
            Emulated::Completed
        );
        assert_eq!(frame.registers[5], 0);
        // Outside the device's window, an unsupported width, no device at all: abort, and the
        // register is untouched.
        frame.registers[5] = 7;
        let byte = access(esr(true, 0, false, 5, true, false), 0x0905_0000).unwrap();
        for access in [load(0x0905_1000), byte, load(0x0800_0000)] {
            assert_eq!(
                emulate(&access, &mut frame, &registry, vcpu),
                Emulated::Abort
            );
        }
        assert_eq!(frame.registers[5], 7);
        assert_eq!(DEVICE.lock().writes, 1);
    }
}
