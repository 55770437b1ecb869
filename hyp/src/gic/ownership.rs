//! Who owns each INTID: the hypervisor or the guest.
//!
//! The hypervisor owns what it uses: the SMMU's wired interrupts, its EL2 timers, the virtual
//! CPU interface's maintenance interrupt. The guest owns every other implemented INTID. An
//! INTID the hypervisor owns looks, to the guest, like one the GIC does not implement: its
//! bits read as zero and writes to them are ignored.

use super::INTID_LIMIT;

/// Words of the bitmap: one bit per INTID below [`INTID_LIMIT`].
const WORDS: usize = (INTID_LIMIT as usize).div_ceil(64);

/// The guest's INTIDs, as a bitmap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ownership {
    guest: [u64; WORDS],
    /// One past the highest INTID the distributor implements (GICD_TYPER.ITLinesNumber).
    implemented: u32,
}

impl Ownership {
    /// Every INTID below `implemented` is the guest's, except `hypervisor`'s.
    #[must_use]
    pub fn new(implemented: u32, hypervisor: &[u32]) -> Self {
        let implemented = implemented.min(INTID_LIMIT);
        let mut guest = [0u64; WORDS];
        for intid in 0..implemented {
            if !hypervisor.contains(&intid)
                && let Some(word) = guest.get_mut(intid as usize / 64)
            {
                *word |= 1 << (intid % 64);
            }
        }
        Self { guest, implemented }
    }

    /// Whether the guest owns `intid`.
    #[must_use]
    pub fn is_guest(&self, intid: u32) -> bool {
        self.guest
            .get(intid as usize / 64)
            .is_some_and(|word| word >> (intid % 64) & 1 == 1)
    }

    /// One past the highest implemented INTID.
    #[must_use]
    pub fn implemented(&self) -> u32 {
        self.implemented
    }

    /// The guest's bits among the 32 INTIDs starting at `first` (a multiple of 32): for
    /// registers with one bit per INTID.
    #[must_use]
    pub fn mask32(&self, first: u32) -> u32 {
        let first = first & !31;
        self.guest.get(first as usize / 64).map_or(0, |word| {
            #[allow(clippy::cast_possible_truncation, reason = "the 32 bits from `first`")]
            let bits = (word >> (first % 64)) as u32;
            bits
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hypervisors_intids_and_unimplemented_ones_are_not_the_guests() {
        let ownership = Ownership::new(288, &[25, 26, 106, 107, 108, 109]);
        assert!(ownership.is_guest(27), "the virtual timer");
        assert!(ownership.is_guest(33));
        for intid in [25, 26, 106, 109, 288, 1019, 1023, 5000] {
            assert!(!ownership.is_guest(intid), "{intid}");
        }
        assert_eq!(ownership.mask32(96), !(0b1111 << 10));
        assert_eq!(ownership.mask32(0), !(0b11 << 25));
        assert_eq!(ownership.mask32(288), 0);
    }

    #[test]
    fn each_word_mask_is_the_bits_of_its_intids() {
        let ownership = Ownership::new(992, &[25, 26, 28, 63, 64, 106, 107, 108, 109, 991]);
        for first in (0..INTID_LIMIT + 64).step_by(32) {
            let expected = (0..32).fold(0u32, |mask, bit| {
                mask | u32::from(ownership.is_guest(first + bit)) << bit
            });
            assert_eq!(ownership.mask32(first), expected, "INTIDs from {first}");
        }
    }
}
