//! The SMMU's caches: configuration (L1STD, STE, L1CD, CD) and TLB.
//!
//! This module owns what is cached and what each invalidation removes; `translate` decides
//! when to look up and fill, `commands` when to invalidate. Every entry stays until an
//! invalidation names it (there is no capacity eviction), which the architecture allows and
//! which makes a missing CFGI_* or TLBI_* observable as a stale translation.
//!
//! Choices, each the strictest the architecture allows:
//!
//! - Structures are cached as fetched, valid or not (IHI 0070 3.21.3: "whether marked as valid
//!   or not"); a fetch that aborts or whose stage-2 translation fails is not cached.
//! - Only leaf translations are cached (no walk caches). A nested translation is cached as one
//!   combined stage 1 + stage 2 entry, which CMD_TLBI_S2_IPA is not required to (and here does
//!   not) invalidate (4.4.3.1); stage-2 translations of table and CD addresses are cached as
//!   stage-2 entries.
//! - An invalidation removes exactly what the command's scope requires: with TG != 0 only
//!   entries of that granule, with TTL != 0 only leaves of that level.

use std::collections::BTreeMap;

use crate::structures::StreamWorld;
use crate::trace::Generation;
use crate::walk::Permissions;

/// A cached CD (raw, as fetched) and the address-space generation it was fetched as.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CachedCd {
    /// The words fetched.
    pub raw: [u64; 8],
    /// The generation they were.
    pub generation: Generation,
}

/// A cached STE and the generation of the stream's non-substream address space it was.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CachedSte {
    /// The words fetched.
    pub raw: [u64; 8],
    /// The generation (keyed without a CD index).
    pub generation: Generation,
}

/// The configuration cache.
#[derive(Clone, Debug, Default)]
pub struct ConfigCache {
    l1std: BTreeMap<u64, u64>,
    ste: BTreeMap<u32, CachedSte>,
    l1cd: BTreeMap<(u32, u32), u64>,
    cd: BTreeMap<(u32, u32), CachedCd>,
}

impl ConfigCache {
    /// The cached level-1 stream table descriptor at index `index`.
    #[must_use]
    pub fn l1std(&self, index: u64) -> Option<u64> {
        self.l1std.get(&index).copied()
    }

    /// Caches a level-1 stream table descriptor.
    pub fn fill_l1std(&mut self, index: u64, raw: u64) {
        self.l1std.insert(index, raw);
    }

    /// The cached STE of `sid`.
    #[must_use]
    pub fn ste(&self, sid: u32) -> Option<CachedSte> {
        self.ste.get(&sid).copied()
    }

    /// Caches `sid`'s STE.
    pub fn fill_ste(&mut self, sid: u32, ste: CachedSte) {
        self.ste.insert(sid, ste);
    }

    /// The cached level-1 CD descriptor `index` of `sid`'s CD table.
    #[must_use]
    pub fn l1cd(&self, sid: u32, index: u32) -> Option<u64> {
        self.l1cd.get(&(sid, index)).copied()
    }

    /// Caches a level-1 CD descriptor.
    pub fn fill_l1cd(&mut self, sid: u32, index: u32, raw: u64) {
        self.l1cd.insert((sid, index), raw);
    }

    /// The cached CD at index `index` of `sid`'s CD table.
    #[must_use]
    pub fn cd(&self, sid: u32, index: u32) -> Option<CachedCd> {
        self.cd.get(&(sid, index)).copied()
    }

    /// Caches a CD.
    pub fn fill_cd(&mut self, sid: u32, index: u32, cd: CachedCd) {
        self.cd.insert((sid, index), cd);
    }

    /// How many STEs and CDs are cached (for tests and the trace).
    #[must_use]
    pub fn counts(&self) -> (usize, usize) {
        (self.ste.len(), self.cd.len())
    }

    fn drop_stream(&mut self, sid: u32) {
        self.ste.remove(&sid);
        self.cd.retain(|&(s, _), _| s != sid);
        self.l1cd.retain(|&(s, _), _| s != sid);
    }

    /// CMD_CFGI_STE: the STE and every CD and L1CD cached through it; with `leaf` clear, the
    /// L1STD (`l1_index`, when the table is two-level) as well.
    pub fn invalidate_ste(&mut self, sid: u32, leaf: bool, l1_index: Option<u64>) {
        self.drop_stream(sid);
        if let (false, Some(index)) = (leaf, l1_index) {
            self.l1std.remove(&index);
        }
    }

    /// CMD_CFGI_STE_RANGE (CMD_CFGI_ALL for range 31): the 2^(range+1) streams from `sid`
    /// aligned down, and the L1STDs covering them (`split`, for a two-level table).
    pub fn invalidate_ste_range(&mut self, sid: u32, range: u32, split: Option<u32>) {
        if range >= 31 {
            *self = Self::default();
            return;
        }
        let span = 1u64 << (range + 1);
        let first = u64::from(sid) & !(span - 1);
        let end = first + span;
        let inside = |s: u32| (first..end).contains(&u64::from(s));
        self.ste.retain(|&s, _| !inside(s));
        self.cd.retain(|&(s, _), _| !inside(s));
        self.l1cd.retain(|&(s, _), _| !inside(s));
        if let Some(split) = split {
            let (low, high) = (first >> split, (end - 1) >> split);
            self.l1std.retain(|&i, _| !(low..=high).contains(&i));
        }
    }

    /// CMD_CFGI_CD: the CD at `index`; with `leaf` clear, the L1CDs that could locate it too
    /// (over-invalidating both leaf-table sizes).
    pub fn invalidate_cd(&mut self, sid: u32, index: u32, leaf: bool) {
        self.cd.remove(&(sid, index));
        if !leaf {
            self.l1cd.remove(&(sid, index >> 6));
            self.l1cd.remove(&(sid, index >> 10));
        }
    }

    /// CMD_CFGI_CD_ALL: every CD and L1CD of `sid`.
    pub fn invalidate_cd_all(&mut self, sid: u32) {
        self.cd.retain(|&(s, _), _| s != sid);
        self.l1cd.retain(|&(s, _), _| s != sid);
    }
}

/// What a TLB entry is tagged with.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum TlbTag {
    /// A stage-1-only translation.
    Stage1 {
        /// The StreamWorld (EL1 entries carry the stream's VMID).
        world: StreamWorld,
        /// VMID (0 outside EL1).
        vmid: u16,
        /// ASID (unused at EL2 without E2H).
        asid: u16,
        /// nG = 0: matches every ASID.
        global: bool,
    },
    /// A combined stage 1 + stage 2 translation.
    Nested {
        /// VMID.
        vmid: u16,
        /// ASID.
        asid: u16,
        /// nG = 0.
        global: bool,
    },
    /// A stage-2 translation (of a stage-2-only stream, or of a table or CD address).
    Stage2 {
        /// VMID.
        vmid: u16,
    },
}

/// One cached translation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TlbEntry {
    /// The tag.
    pub tag: TlbTag,
    /// The first input address (VA or IPA) covered.
    pub input_base: u64,
    /// log2 of the size covered.
    pub size_shift: u32,
    /// The granule of the walk that filled it (12, 14, 16).
    pub granule_shift: u32,
    /// The level of the leaf (of the last stage, for a combined entry).
    pub level: u32,
    /// The output address of `input_base`.
    pub output_base: u64,
    /// For a combined entry, the intermediate (stage-1 output) address of `input_base`.
    pub intermediate_base: Option<u64>,
    /// What stage 1 allows (everything for a stage-2 entry).
    pub stage1: StagePermissions,
    /// What stage 2 allows (everything for a stage-1-only entry).
    pub stage2: StagePermissions,
    /// The address-space generation of the configuration that filled it.
    pub generation: Option<Generation>,
}

impl TlbEntry {
    fn covers(&self, address: u64) -> bool {
        address >> self.size_shift == self.input_base >> self.size_shift
    }

    fn overlaps(&self, scope: &AddressScope) -> bool {
        if scope.granule_shift.is_some_and(|g| g != self.granule_shift) {
            return false;
        }
        if scope.level.is_some_and(|l| l != self.level) {
            return false;
        }
        let end = self.input_base.saturating_add(1 << self.size_shift);
        self.input_base < scope.end && scope.start < end
    }
}

/// What one stage allows, by privilege.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct StagePermissions {
    /// Privileged accesses.
    pub privileged: Permissions,
    /// Unprivileged accesses.
    pub unprivileged: Permissions,
}

impl StagePermissions {
    /// No restriction (a stage that does not translate).
    pub const ALL: Self = Self {
        privileged: Permissions::ALL,
        unprivileged: Permissions::ALL,
    };

    /// What an access of this privilege may do.
    #[must_use]
    pub const fn for_privilege(&self, privileged: bool) -> Permissions {
        if privileged {
            self.privileged
        } else {
            self.unprivileged
        }
    }
}

/// The addresses an address-based invalidation covers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AddressScope {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Only entries of this granule (TG != 0).
    pub granule_shift: Option<u32>,
    /// Only leaves of this level (TTL != 0).
    pub level: Option<u32>,
}

/// Which entries an invalidation removes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TlbInvalidation {
    /// TLBI_NH_ALL.
    NhAll {
        /// VMID.
        vmid: u16,
    },
    /// TLBI_NH_ASID.
    NhAsid {
        /// VMID.
        vmid: u16,
        /// ASID.
        asid: u16,
    },
    /// TLBI_NH_VA.
    NhVa {
        /// VMID.
        vmid: u16,
        /// ASID.
        asid: u16,
        /// Addresses.
        scope: AddressScope,
    },
    /// TLBI_NH_VAA.
    NhVaa {
        /// VMID.
        vmid: u16,
        /// Addresses.
        scope: AddressScope,
    },
    /// TLBI_EL2_ALL.
    El2All,
    /// TLBI_EL2_ASID.
    El2Asid {
        /// ASID.
        asid: u16,
    },
    /// TLBI_EL2_VA.
    El2Va {
        /// ASID.
        asid: u16,
        /// Addresses.
        scope: AddressScope,
    },
    /// TLBI_EL2_VAA.
    El2Vaa {
        /// Addresses.
        scope: AddressScope,
    },
    /// TLBI_S12_VMALL.
    S12Vmall {
        /// VMID.
        vmid: u16,
    },
    /// TLBI_S2_IPA.
    S2Ipa {
        /// VMID.
        vmid: u16,
        /// Addresses.
        scope: AddressScope,
    },
    /// TLBI_NSNH_ALL.
    NsnhAll,
}

impl TlbInvalidation {
    fn removes(&self, entry: &TlbEntry) -> bool {
        use TlbTag::{Nested, Stage1, Stage2};
        let el1_stage1 = |vmid: u16| match entry.tag {
            Stage1 {
                world: StreamWorld::El1,
                vmid: v,
                asid,
                global,
            }
            | Nested {
                vmid: v,
                asid,
                global,
            } => (v == vmid).then_some((asid, global)),
            _ => None,
        };
        let el2 = || match entry.tag {
            Stage1 {
                world,
                asid,
                global,
                ..
            } if world != StreamWorld::El1 => Some((world, asid, global)),
            _ => None,
        };
        match *self {
            Self::NhAll { vmid } => el1_stage1(vmid).is_some(),
            Self::NhAsid { vmid, asid } => {
                el1_stage1(vmid).is_some_and(|(a, global)| a == asid && !global)
            }
            Self::NhVa { vmid, asid, scope } => {
                el1_stage1(vmid).is_some_and(|(a, global)| a == asid || global)
                    && entry.overlaps(&scope)
            }
            Self::NhVaa { vmid, scope } => el1_stage1(vmid).is_some() && entry.overlaps(&scope),
            Self::El2All => el2().is_some(),
            Self::El2Asid { asid } => el2().is_some_and(|(world, a, global)| {
                world == StreamWorld::El2E2h && a == asid && !global
            }),
            Self::El2Va { asid, scope } => {
                el2().is_some_and(|(world, a, global)| {
                    world == StreamWorld::El2 || a == asid || global
                }) && entry.overlaps(&scope)
            }
            Self::El2Vaa { scope } => el2().is_some() && entry.overlaps(&scope),
            Self::S12Vmall { vmid } => el1_stage1(vmid).is_some() || entry.tag == (Stage2 { vmid }),
            Self::S2Ipa { vmid, scope } => entry.tag == (Stage2 { vmid }) && entry.overlaps(&scope),
            Self::NsnhAll => el2().is_none(),
        }
    }
}

/// The TLB.
#[derive(Clone, Debug, Default)]
pub struct Tlb {
    entries: Vec<TlbEntry>,
}

impl Tlb {
    /// The entry tagged `tag` covering `address`, if any. For stage-1 tags an entry with
    /// nG = 0 (global) matches any ASID.
    #[must_use]
    pub fn lookup(&self, tag: TlbTag, address: u64) -> Option<TlbEntry> {
        self.entries
            .iter()
            .find(|e| tags_match(e.tag, tag) && e.covers(address))
            .copied()
    }

    /// Caches `entry`, replacing any entry with the same tag covering the same address.
    pub fn fill(&mut self, entry: TlbEntry) {
        self.entries
            .retain(|e| !(tags_match(e.tag, entry.tag) && e.covers(entry.input_base)));
        self.entries.push(entry);
    }

    /// Applies an invalidation; returns how many entries it removed.
    pub fn invalidate(&mut self, invalidation: &TlbInvalidation) -> usize {
        let before = self.entries.len();
        self.entries.retain(|e| !invalidation.removes(e));
        before - self.entries.len()
    }

    /// Every entry (for tests and the explorer's invariant checks).
    #[must_use]
    pub fn entries(&self) -> &[TlbEntry] {
        &self.entries
    }
}

fn tags_match(cached: TlbTag, wanted: TlbTag) -> bool {
    use TlbTag::{Nested, Stage1};
    match (cached, wanted) {
        (
            Stage1 {
                world: w1,
                vmid: v1,
                asid: a1,
                global: g1,
            },
            Stage1 {
                world: w2,
                vmid: v2,
                asid: a2,
                ..
            },
        ) => w1 == w2 && v1 == v2 && (g1 || a1 == a2 || w1 == StreamWorld::El2),
        (
            Nested {
                vmid: v1,
                asid: a1,
                global: g1,
            },
            Nested {
                vmid: v2, asid: a2, ..
            },
        ) => v1 == v2 && (g1 || a1 == a2),
        (a, b) => a == b,
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::*;

    fn entry(tag: TlbTag, input_base: u64, size_shift: u32, level: u32) -> TlbEntry {
        TlbEntry {
            tag,
            input_base,
            size_shift,
            granule_shift: 12,
            level,
            output_base: 0x8000_0000,
            intermediate_base: None,
            stage1: StagePermissions::ALL,
            stage2: StagePermissions::ALL,
            generation: None,
        }
    }

    const S1: TlbTag = TlbTag::Stage1 {
        world: StreamWorld::El1,
        vmid: 1,
        asid: 7,
        global: false,
    };
    const NESTED: TlbTag = TlbTag::Nested {
        vmid: 1,
        asid: 7,
        global: false,
    };
    const S2: TlbTag = TlbTag::Stage2 { vmid: 1 };

    fn scope(start: u64, end: u64) -> AddressScope {
        AddressScope {
            start,
            end,
            granule_shift: None,
            level: None,
        }
    }

    /// For each invalidation: which of (stage-1 entry, nested entry, stage-2 entry) it removes.
    #[test]
    fn each_invalidation_removes_its_scope_and_no_more() {
        let cases: &[(TlbInvalidation, [bool; 3])] = &[
            (TlbInvalidation::NhAll { vmid: 1 }, [true, true, false]),
            (TlbInvalidation::NhAll { vmid: 2 }, [false, false, false]),
            (
                TlbInvalidation::NhAsid { vmid: 1, asid: 7 },
                [true, true, false],
            ),
            (
                TlbInvalidation::NhAsid { vmid: 1, asid: 8 },
                [false, false, false],
            ),
            (
                TlbInvalidation::NhVa {
                    vmid: 1,
                    asid: 7,
                    scope: scope(0x1000, 0x2000),
                },
                [true, true, false],
            ),
            (
                TlbInvalidation::NhVa {
                    vmid: 1,
                    asid: 7,
                    scope: scope(0x2000, 0x3000),
                },
                [false, false, false],
            ),
            (
                TlbInvalidation::NhVaa {
                    vmid: 1,
                    scope: scope(0x1000, 0x2000),
                },
                [true, true, false],
            ),
            (TlbInvalidation::S12Vmall { vmid: 1 }, [true, true, true]),
            (
                TlbInvalidation::S2Ipa {
                    vmid: 1,
                    scope: scope(0x1000, 0x2000),
                },
                [false, false, true],
            ),
            (TlbInvalidation::NsnhAll, [true, true, true]),
            (TlbInvalidation::El2All, [false, false, false]),
        ];
        for (invalidation, expected) in cases {
            let mut tlb = Tlb::default();
            for tag in [S1, NESTED, S2] {
                tlb.fill(entry(tag, 0x1000, 12, 3));
            }
            tlb.invalidate(invalidation);
            let removed = [S1, NESTED, S2].map(|tag| tlb.lookup(tag, 0x1000).is_none());
            assert_eq!(removed, *expected, "{invalidation:?}");
        }
    }

    #[test]
    fn global_entries_match_every_asid_and_survive_asid_invalidation() {
        let mut tlb = Tlb::default();
        let global = TlbTag::Stage1 {
            world: StreamWorld::El1,
            vmid: 1,
            asid: 7,
            global: true,
        };
        tlb.fill(entry(global, 0x1000, 12, 3));
        let other_asid = TlbTag::Stage1 {
            world: StreamWorld::El1,
            vmid: 1,
            asid: 9,
            global: false,
        };
        assert!(tlb.lookup(other_asid, 0x1fff).is_some());
        tlb.invalidate(&TlbInvalidation::NhAsid { vmid: 1, asid: 7 });
        assert!(tlb.lookup(other_asid, 0x1000).is_some());
    }

    #[test]
    fn a_level_hint_spares_leaves_of_other_levels() {
        let mut tlb = Tlb::default();
        tlb.fill(entry(S2, 0x20_0000, 21, 2));
        let hinted = AddressScope {
            level: Some(3),
            granule_shift: Some(12),
            ..scope(0x20_0000, 0x20_1000)
        };
        tlb.invalidate(&TlbInvalidation::S2Ipa {
            vmid: 1,
            scope: hinted,
        });
        assert!(
            tlb.lookup(S2, 0x20_0000).is_some(),
            "a level-2 block is not a level-3 leaf"
        );
        tlb.invalidate(&TlbInvalidation::S2Ipa {
            vmid: 1,
            scope: scope(0x20_0000, 0x20_1000),
        });
        assert!(tlb.lookup(S2, 0x20_0000).is_none());
    }

    #[test]
    fn config_invalidations() {
        let mut cache = ConfigCache::default();
        let generation = Generation::default();
        for sid in [8, 9, 300] {
            cache.fill_ste(
                sid,
                CachedSte {
                    raw: [sid.into(); 8],
                    generation,
                },
            );
            cache.fill_cd(
                sid,
                0,
                CachedCd {
                    raw: [0; 8],
                    generation,
                },
            );
        }
        cache.fill_l1std(0, 1);
        cache.fill_l1std(1, 1);
        cache.invalidate_ste(8, true, Some(0));
        assert!(cache.ste(8).is_none() && cache.cd(8, 0).is_none());
        assert!(cache.l1std(0).is_some(), "leaf keeps the L1STD");
        cache.invalidate_ste(9, false, Some(0));
        assert!(cache.l1std(0).is_none());
        cache.invalidate_ste_range(256, 7, Some(8));
        assert!(cache.ste(300).is_none() && cache.l1std(1).is_none());
        cache.fill_ste(
            1,
            CachedSte {
                raw: [0; 8],
                generation,
            },
        );
        cache.invalidate_ste_range(0, 31, None);
        assert_eq!(cache.counts(), (0, 0));
    }
}
