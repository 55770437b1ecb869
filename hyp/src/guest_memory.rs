//! The hypervisor's way into a guest's RAM after boot: copies, by IPA, every address checked.
//!
//! The EL2 identity map leaves guest RAM out (`crate::layout`), so a stray pointer into guest
//! RAM faults. The virtual SMMU must still read what the guest put in its RAM (commands, stream
//! table and context descriptor entries) and write what the SMMU would write there (events,
//! CMD_SYNC's MSI). It does so through [`GuestRam`], which copies through an **alias** of guest
//! RAM at [`GUEST_RAM_ALIAS_OFFSET`](crate::layout::GUEST_RAM_ALIAS_OFFSET) above its physical
//! address, mapped read-write and execute-never at boot.
//!
//! Why an alias rather than a per-CPU fixmap slot mapped for each copy: a fixmap costs a page
//! table store, a TLB invalidation and its barriers on every copy (a guest's command batch is
//! up to 256 of them), and a slot per CPU in the trap path; the alias costs a few table pages
//! at boot and nothing per copy. What the fixmap would add, that guest RAM is unreachable
//! between copies, the alias keeps in the ways that matter: the alias is never executable
//! (a hijacked EL2 cannot run guest-written code), no identity address reaches guest RAM, and
//! no code outside this module computes an alias address. Every copy is a copy: no reference
//! into guest memory leaves this module, so a guest changing its memory during a check can
//! only change what a later copy sees, never a value already checked.
//!
//! Each aligned 64-bit word is copied with one single-copy-atomic access (as the SMMU reads
//! its structures), so a guest updating a descriptor on another vCPU is seen before or after
//! each word's store, never torn within one.

use crate::layout::GUEST_RAM_ALIAS_OFFSET;
use nested::{GuestMemory, GuestMemoryError};
use smmu::{Ipa, IpaRange};

/// One VM's RAM (IPA == PA), reached through the EL2 alias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRam {
    ram: IpaRange,
}

impl GuestRam {
    /// The VM whose RAM is `ram`, which the EL2 map aliases (`crate::guest_boot` maps it
    /// before the guest runs).
    #[must_use]
    pub const fn new(ram: IpaRange) -> Self {
        Self { ram }
    }

    /// The alias address of `[ipa, ipa + len)`, if every byte of it is RAM.
    fn alias(&self, ipa: Ipa, len: usize) -> Result<usize, GuestMemoryError> {
        let outside = GuestMemoryError::OutsideRam { ipa, len };
        let range = IpaRange::new(ipa, u64::try_from(len).map_err(|_| outside)?);
        if !self.ram.covers(&range) {
            return Err(outside);
        }
        ipa.0
            .checked_add(GUEST_RAM_ALIAS_OFFSET)
            .and_then(|address| usize::try_from(address).ok())
            .ok_or(outside)
    }
}

impl GuestMemory for GuestRam {
    fn is_ram(&self, range: IpaRange) -> bool {
        self.ram.covers(&range)
    }

    fn overlaps_ram(&self, range: IpaRange) -> bool {
        self.ram.overlaps(&range)
    }

    fn read(&self, ipa: Ipa, buffer: &mut [u8]) -> Result<(), GuestMemoryError> {
        let base = self.alias(ipa, buffer.len())?;
        let mut done = 0;
        while done < buffer.len() {
            let address = base + done;
            if address % 8 == 0
                && let Some(word) = buffer.get_mut(done..done + 8)
            {
                // SAFETY: `alias` checked that the whole range is this VM's RAM, which the EL2
                // map aliases read-write at `address`; the word is aligned. Guest RAM is not
                // hypervisor data: a concurrent guest store changes the value, never safety.
                let value = unsafe { core::ptr::read_volatile(address as *const u64) };
                word.copy_from_slice(&value.to_le_bytes());
                done += 8;
            } else if let Some(byte) = buffer.get_mut(done) {
                // SAFETY: as above, one byte.
                *byte = unsafe { core::ptr::read_volatile(address as *const u8) };
                done += 1;
            } else {
                break;
            }
        }
        Ok(())
    }

    fn write(&mut self, ipa: Ipa, data: &[u8]) -> Result<(), GuestMemoryError> {
        let base = self.alias(ipa, data.len())?;
        let mut done = 0;
        while done < data.len() {
            let address = base + done;
            if address % 8 == 0
                && let Some(word) = data.get(done..done + 8)
            {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(word);
                // SAFETY: as in `read`: checked, aliased read-write, aligned.
                unsafe {
                    core::ptr::write_volatile(address as *mut u64, u64::from_le_bytes(bytes))
                };
                done += 8;
            } else if let Some(&byte) = data.get(done) {
                // SAFETY: as above, one byte.
                unsafe { core::ptr::write_volatile(address as *mut u8, byte) };
                done += 1;
            } else {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: IpaRange = IpaRange::new(Ipa(0x4200_0000), 0x1000_0000);

    #[test]
    fn only_ranges_wholly_in_ram_have_an_alias() {
        let ram = GuestRam::new(RAM);
        assert_eq!(
            ram.alias(Ipa(0x4200_0000), 64),
            Ok(0x30_4200_0000),
            "the first bytes"
        );
        assert_eq!(ram.alias(Ipa(0x51ff_ffc0), 64), Ok(0x30_51ff_ffc0));
        for (ipa, len) in [
            (0x41ff_fff8, 16),         // starts below
            (0x51ff_fff8, 16),         // runs past the end
            (0x5200_0000, 1),          // after
            (0x4020_0000, 8),          // the hypervisor's image
            (u64::MAX - 3, 8),         // wraps
            (0x4200_0000, usize::MAX), // absurd length
        ] {
            assert_eq!(
                ram.alias(Ipa(ipa), len),
                Err(GuestMemoryError::OutsideRam { ipa: Ipa(ipa), len }),
                "{ipa:#x}+{len:#x}"
            );
        }
        assert!(ram.is_ram(IpaRange::new(Ipa(0x4200_0000), 0x1000_0000)));
        assert!(!ram.is_ram(IpaRange::new(Ipa(0x4100_0000), 0x200_0000)));
        assert!(ram.overlaps_ram(IpaRange::new(Ipa(0x4100_0000), 0x200_0000)));
    }

    #[test]
    fn refused_copies_change_nothing() {
        let mut ram = GuestRam::new(RAM);
        let mut buffer = [0xa5u8; 16];
        assert!(ram.read(Ipa(0x4000_0000), &mut buffer).is_err());
        assert_eq!(buffer, [0xa5; 16]);
        assert!(ram.write(Ipa(0x4020_0000), &buffer).is_err());
    }
}
