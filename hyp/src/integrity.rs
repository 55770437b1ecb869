//! The hypervisor's own check that nobody wrote its memory: fingerprints of what must not change
//! while a guest runs, taken just before the guest is entered and compared when it ends.
//!
//! What is fingerprinted: the image's code and read-only data, the EL2 page tables, the
//! guest's stage-2 tables (the CPU's and the SMMU's), and the boot device tree. All of them are
//! written only at boot; a difference at the end means a bus master reached hypervisor memory
//! (a device around the SMMU, say), and the run fails saying which region changed. Writable
//! data (stacks, statics) changes by design and is not covered; the scenarios aim their
//! blocked writes at covered regions.
//!
//! Pure bookkeeping: the caller supplies how to read a word at a physical address.

use smmu::PhysRange;

/// The most regions fingerprinted.
pub const MAX_REGIONS: usize = 8;

/// One fingerprinted region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    name: &'static str,
    range: PhysRange,
    hash: u64,
}

/// Fingerprints of named regions.
#[derive(Clone, Debug, Default)]
pub struct Fingerprints {
    entries: heapless::Vec<Entry, MAX_REGIONS>,
}

/// FNV-1a over the 64-bit words of `range` (whose size is a multiple of 8), read with `read`.
pub fn fingerprint(range: PhysRange, read: &impl Fn(u64) -> u64) -> u64 {
    (0..range.size / 8).fold(0xcbf2_9ce4_8422_2325, |hash, index| {
        let word = read(range.base.get() + index * 8);
        word.to_le_bytes().iter().fold(hash, |hash, &byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3)
        })
    })
}

impl Fingerprints {
    /// No regions yet.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            entries: heapless::Vec::new(),
        }
    }

    /// Fingerprints `range` under `name`. The range is widened to whole words. Returns
    /// `false` if [`MAX_REGIONS`] are already recorded.
    pub fn record(
        &mut self,
        name: &'static str,
        range: PhysRange,
        read: &impl Fn(u64) -> u64,
    ) -> bool {
        let base = range.base.get() & !7;
        let range = PhysRange::new(base, (range.end() - base).div_ceil(8) * 8);
        let hash = fingerprint(range, read);
        self.entries.push(Entry { name, range, hash }).is_ok()
    }

    /// The regions whose contents differ from when they were recorded.
    pub fn changed<'a>(
        &'a self,
        read: &'a impl Fn(u64) -> u64,
    ) -> impl Iterator<Item = (&'static str, PhysRange)> + 'a {
        self.entries
            .iter()
            .filter(move |entry| fingerprint(entry.range, read) != entry.hash)
            .map(|entry| (entry.name, entry.range))
    }

    /// The regions recorded, by name.
    pub fn regions(&self) -> impl Iterator<Item = (&'static str, PhysRange)> + '_ {
        self.entries.iter().map(|entry| (entry.name, entry.range))
    }
}

#[cfg(target_os = "none")]
pub use self::hardware::{check, seal};

/// The hypervisor's own fingerprints, over its memory (target only).
#[cfg(target_os = "none")]
mod hardware {
    use super::Fingerprints;
    use smmu::PhysRange;

    static FINGERPRINTS: spin::Once<Fingerprints> = spin::Once::new();

    fn read_word(address: u64) -> u64 {
        // SAFETY: only called on the regions `seal` records, each mapped at EL2 for the whole
        // run (image code and read-only data, the table pools in the image's bss, the boot
        // device tree); an aligned 64-bit volatile load has no other effect.
        unsafe { core::ptr::read_volatile(address as *const u64) }
    }

    /// Fingerprints `regions`, which nothing may change from now on. Called once, right
    /// before the guest runs.
    pub fn seal(regions: &[(&'static str, PhysRange)]) {
        let mut prints = Fingerprints::new();
        for &(name, range) in regions {
            if !prints.record(name, range, &read_word) {
                defmt::error!("integrity: no room to fingerprint {=str}", name);
            }
        }
        for (name, range) in prints.regions() {
            defmt::debug!("integrity: fingerprinted {=str} {}", name, range);
        }
        FINGERPRINTS.call_once(|| prints);
    }

    /// Checks every fingerprinted region; logs each one that changed. `false` means hypervisor
    /// memory was written by someone who should not have.
    pub fn check() -> bool {
        let Some(prints) = FINGERPRINTS.get() else {
            return true;
        };
        let mut intact = true;
        for (name, range) in prints.changed(&read_word) {
            defmt::error!(
                "hypervisor memory check: {=str} {} was modified",
                name,
                range
            );
            intact = false;
        }
        if intact {
            defmt::info!(
                "hypervisor memory check: {=usize} regions intact (code, read-only data, EL2 and stage-2 tables, boot device tree)",
                prints.regions().count()
            );
        }
        intact
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// 64 KiB of fake memory at 0x4000_0000.
    struct Memory(RefCell<Vec<u64>>);

    impl Memory {
        fn new() -> Self {
            Self(RefCell::new(
                (0..8192u64).map(|i| i * 0x9e37_79b9).collect(),
            ))
        }
        fn reader(&self) -> impl Fn(u64) -> u64 + '_ {
            |address| self.0.borrow()[((address - 0x4000_0000) / 8) as usize]
        }
        fn poke(&self, address: u64, value: u64) {
            self.0.borrow_mut()[((address - 0x4000_0000) / 8) as usize] = value;
        }
    }

    #[test]
    fn a_single_changed_word_is_found_and_named() {
        let memory = Memory::new();
        let mut prints = Fingerprints::new();
        assert!(prints.record(
            "text",
            PhysRange::new(0x4000_0000, 0x4000),
            &memory.reader()
        ));
        assert!(prints.record(
            "tables",
            PhysRange::new(0x4000_8000, 0x8000),
            &memory.reader()
        ));
        assert_eq!(prints.changed(&memory.reader()).count(), 0);
        memory.poke(0x4000_fff8, 0);
        let changed: Vec<_> = prints.changed(&memory.reader()).map(|(n, _)| n).collect();
        assert_eq!(changed, ["tables"]);
    }

    #[test]
    fn an_unaligned_region_is_widened_to_whole_words() {
        let memory = Memory::new();
        let mut prints = Fingerprints::new();
        prints.record("tree", PhysRange::new(0x4000_0004, 9), &memory.reader());
        assert_eq!(
            prints.regions().next(),
            Some(("tree", PhysRange::new(0x4000_0000, 16)))
        );
        memory.poke(0x4000_0008, 1);
        assert_eq!(prints.changed(&memory.reader()).count(), 1);
    }

    #[test]
    fn the_table_is_bounded() {
        let memory = Memory::new();
        let mut prints = Fingerprints::new();
        for _ in 0..MAX_REGIONS {
            assert!(prints.record("r", PhysRange::new(0x4000_0000, 8), &memory.reader()));
        }
        assert!(!prints.record("r", PhysRange::new(0x4000_0000, 8), &memory.reader()));
    }
}
