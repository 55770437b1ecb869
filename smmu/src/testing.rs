//! A fake SMMU register file for host tests, in this crate and in crates built on it.
//!
//! [`FakeRegisters`] is plain memory: reads return what was last written (or preset), writes
//! have no side effects. It models no behaviour (no CR0ACK mirroring, no GBPA update), so a
//! test that needs the SMMU to react uses the reference model in `tools/` instead.

use crate::hardware::{RegisterAccess, RegisterOffset};
use crate::registers::{IdRegisters, PAGE1, offset};

/// How many bytes of each page the fake backs: every register of the reference sheet lies in
/// the first 0x100 bytes of page 0 or page 1.
const BACKED_BYTES: u32 = 0x100;
const WORDS: usize = (BACKED_BYTES / 4) as usize;

/// A register file in memory. Accesses outside the backed range read as zero and ignore writes
/// (as reserved registers do), and so do unaligned offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeRegisters {
    page0: [u32; WORDS],
    page1: [u32; WORDS],
}

impl Default for FakeRegisters {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeRegisters {
    /// A register file with every register zero.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            page0: [0; WORDS],
            page1: [0; WORDS],
        }
    }

    /// A register file whose ID registers are `ids`.
    #[must_use]
    pub fn with_id_registers(ids: IdRegisters) -> Self {
        let mut regs = Self::new();
        regs.write32(offset::IDR0, ids.idr0);
        regs.write32(offset::IDR1, ids.idr1);
        regs.write32(offset::IDR3, ids.idr3);
        regs.write32(offset::IDR5, ids.idr5);
        regs
    }

    /// A register file with the ID registers of QEMU's `virt` SMMU.
    #[must_use]
    pub fn qemu_virt() -> Self {
        Self::with_id_registers(IdRegisters::QEMU_VIRT)
    }

    fn slot(&self, offset: RegisterOffset) -> Option<&u32> {
        let (page, index) = Self::locate(offset)?;
        if page {
            self.page1.get(index)
        } else {
            self.page0.get(index)
        }
    }

    fn slot_mut(&mut self, offset: RegisterOffset) -> Option<&mut u32> {
        let (page, index) = Self::locate(offset)?;
        if page {
            self.page1.get_mut(index)
        } else {
            self.page0.get_mut(index)
        }
    }

    /// (is page 1, word index) for a backed, aligned offset.
    fn locate(offset: RegisterOffset) -> Option<(bool, usize)> {
        let raw = offset.get();
        if !raw.is_multiple_of(4) {
            return None;
        }
        let (page1, within) = if raw >= PAGE1 {
            (true, raw - PAGE1)
        } else {
            (false, raw)
        };
        if within >= BACKED_BYTES {
            return None;
        }
        Some((page1, usize::try_from(within / 4).ok()?))
    }

    fn offset_plus_4(offset: RegisterOffset) -> Option<RegisterOffset> {
        offset.get().checked_add(4).map(RegisterOffset::new)
    }
}

impl RegisterAccess for FakeRegisters {
    fn read32(&self, offset: RegisterOffset) -> u32 {
        self.slot(offset).copied().unwrap_or(0)
    }

    fn write32(&mut self, offset: RegisterOffset, value: u32) {
        if let Some(slot) = self.slot_mut(offset) {
            *slot = value;
        }
    }

    fn read64(&self, offset: RegisterOffset) -> u64 {
        // Little-endian: the low half lives at the lower address.
        let low = u64::from(self.read32(offset));
        let high = Self::offset_plus_4(offset).map_or(0, |o| u64::from(self.read32(o)));
        high << 32 | low
    }

    fn write64(&mut self, offset: RegisterOffset, value: u64) {
        self.write32(offset, crate::bits::low32(value));
        if let Some(o) = Self::offset_plus_4(offset) {
            self.write32(o, crate::bits::low32(value >> 32));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page0_and_page1_are_separate_storage() {
        let mut regs = FakeRegisters::new();
        regs.write32(offset::EVTQ_PROD, 7);
        assert_eq!(regs.read32(offset::EVTQ_PROD), 7);
        assert_eq!(regs.read32(RegisterOffset::new(0xA8)), 0);
    }

    #[test]
    fn unbacked_and_unaligned_offsets_read_zero_and_ignore_writes() {
        let mut regs = FakeRegisters::new();
        for raw in [0x100, 0x2, 0x1_0100, u32::MAX - 3] {
            regs.write32(RegisterOffset::new(raw), 1);
            assert_eq!(regs.read32(RegisterOffset::new(raw)), 0, "{raw:#x}");
            regs.write64(RegisterOffset::new(raw), 1);
            assert_eq!(regs.read64(RegisterOffset::new(raw)), 0, "{raw:#x}");
        }
        assert_eq!(regs, FakeRegisters::new());
    }

    #[test]
    fn sixty_four_bit_access_is_two_little_endian_halves() {
        let mut regs = FakeRegisters::new();
        regs.write64(offset::STRTAB_BASE, 0x1122_3344_5566_7788);
        assert_eq!(regs.read32(offset::STRTAB_BASE), 0x5566_7788);
        assert_eq!(regs.read32(RegisterOffset::new(0x84)), 0x1122_3344);
    }
}
