//! How the driver reaches an SMMU's registers, and the probe that reads what it can do.
//!
//! This module owns the [`RegisterAccess`] trait and the code that needs only that trait. It
//! contains no `unsafe`: the hypervisor implements the trait over real MMIO in its own crate
//! (with the volatile accesses and their safety arguments), and tests implement it over
//! [`FakeRegisters`](crate::testing::FakeRegisters).

pub use crate::registers::RegisterOffset;
use crate::registers::{Features, IdError, IdRegisters, Register, RegisterWidth, offset};

/// Access to one SMMU's register pages.
///
/// Offsets are from the SMMU's base; page 1 starts at [`PAGE1`](crate::registers::PAGE1).
/// Implementations must perform single-copy-atomic accesses of the stated width, as the
/// architecture requires for 32- and 64-bit registers.
pub trait RegisterAccess {
    /// Reads the 32-bit register at `offset`.
    fn read32(&self, offset: RegisterOffset) -> u32;
    /// Writes the 32-bit register at `offset`.
    fn write32(&mut self, offset: RegisterOffset, value: u32);
    /// Reads the 64-bit register at `offset`.
    fn read64(&self, offset: RegisterOffset) -> u64;
    /// Writes the 64-bit register at `offset`.
    fn write64(&mut self, offset: RegisterOffset, value: u64);

    /// Reads `register` at its own width, widened to 64 bits.
    fn read_register(&self, register: Register) -> u64 {
        match register.width() {
            RegisterWidth::Bits32 => u64::from(self.read32(register.offset())),
            RegisterWidth::Bits64 => self.read64(register.offset()),
        }
    }

    /// Writes `register` at its own width; for a 32-bit register the upper half of `value` is
    /// dropped.
    fn write_register(&mut self, register: Register, value: u64) {
        match register.width() {
            RegisterWidth::Bits32 => {
                self.write32(register.offset(), crate::bits::low32(value));
            }
            RegisterWidth::Bits64 => self.write64(register.offset(), value),
        }
    }
}

/// Reads the four ID registers [`Features`] is decoded from.
pub fn read_id_registers(regs: &impl RegisterAccess) -> IdRegisters {
    IdRegisters {
        idr0: regs.read32(offset::IDR0),
        idr1: regs.read32(offset::IDR1),
        idr3: regs.read32(offset::IDR3),
        idr5: regs.read32(offset::IDR5),
    }
}

/// Reads and decodes what the SMMU behind `regs` can do.
///
/// # Errors
///
/// The [`IdError`] for the first undefined ID-register encoding (an SMMU reporting one is not
/// one this driver can reason about), or for fixed table or queue bases
/// ([`IdError::PresetBaseAddresses`]), which leave the driver nothing to program.
pub fn probe(regs: &impl RegisterAccess) -> Result<Features, IdError> {
    Features::decode(&read_id_registers(regs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registers::StreamTableFormat;
    use crate::testing::FakeRegisters;

    #[test]
    fn probe_reads_qemu_virt_features_from_a_register_file() {
        let regs = FakeRegisters::qemu_virt();
        let features = probe(&regs);
        assert_eq!(
            features.map(|f| (f.s1p, f.s2p, f.st_level, f.sidsize)),
            Ok((true, true, StreamTableFormat::TwoLevel, 16))
        );
        assert_eq!(read_id_registers(&regs), IdRegisters::QEMU_VIRT);
    }

    #[test]
    fn probe_reports_an_undefined_id_encoding() {
        let mut regs = FakeRegisters::qemu_virt();
        // IDR5.VAX = 0b11 (IHI 0070, 6.3.6: reserved).
        regs.write32(offset::IDR5, 0x74 | 3 << 10);
        assert_eq!(probe(&regs), Err(IdError::ReservedVax(3)));
    }

    #[test]
    fn register_helpers_use_the_register_width() {
        let mut regs = FakeRegisters::new();
        regs.write_register(Register::CmdqBase, 0x4000_0000_8000_0013);
        assert_eq!(
            regs.read_register(Register::CmdqBase),
            0x4000_0000_8000_0013
        );
        assert_eq!(regs.read32(offset::CMDQ_BASE), 0x8000_0013);
        regs.write_register(Register::Cr0, 0xdead_beef_0000_000f);
        assert_eq!(regs.read_register(Register::Cr0), 0xf);
        // The neighbour of a 32-bit register is untouched by its write.
        assert_eq!(regs.read32(offset::CR0ACK), 0);
    }
}
