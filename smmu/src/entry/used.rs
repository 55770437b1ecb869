//! Which bits of an STE or a CD the SMMU reads, for the configuration that entry holds.
//!
//! The install plan rests on one question per bit: does the hardware read it right now? A bit
//! it does not read may be rewritten at any time without effect; a bit it does read may change
//! only in a step the hardware sees atomically. The answer depends on the entry itself (V,
//! Config, EPD0/EPD1), so it is a function of the entry, computed here.
//!
//! Two rules make the masks safe to rely on:
//!
//! 1. **Over-approximate, never under.** A bit that some configuration might read is counted as
//!    used. Counting too many bits can only turn a hitless update into a breaking one; counting
//!    too few would let the installer change a live field behind the hardware's back.
//! 2. **Self-contained.** Every bit that selects which bits are used (V, Config, EPD0, EPD1) is
//!    itself in the mask whenever it matters. So two entries that agree on the bits one of them
//!    uses also use the same bits, and "equivalent for the hardware" is a well-defined relation
//!    ([`ste_equivalent`], [`cd_equivalent`]).

use crate::cd::Cd;
use crate::field::Field;
use crate::ste::{Ste, StreamConfig};

/// The number of 64-bit words (qwords) in an STE or a CD.
pub const ENTRY_QWORDS: usize = 8;

/// The OR of the masks of `fields`, which must all lie in one word.
const fn masks(fields: &[Field]) -> u64 {
    let mut mask = 0;
    let mut rest = fields;
    while let [field, tail @ ..] = rest {
        mask |= field.mask();
        rest = tail;
    }
    mask
}

/// Word 1 fields that shape every transaction of a stream that is not aborted: the attribute
/// and permission overrides, event merging, directed cache prefetch and the ATS behaviour.
///
/// The architecture applies some of them only in some configurations (SHCFG, for example, only
/// where a stage is bypassed); they are counted for every non-abort configuration because the
/// entries this crate makes for one SMMU give them the same value in all of those (SHCFG, for
/// instance, is 0b01 on every one where IDR1.ATTR_TYPES_OVR = 1 and RES0 on every one where
/// it is 0), so counting them costs no hitless update and cannot miss a use.
const STE_WORD1_STREAM_ATTRIBUTES: u64 = masks(&[
    Ste::DCP,
    Ste::MEV,
    Ste::EATS,
    Ste::MEMATTR,
    Ste::MTCFG,
    Ste::ALLOCCFG,
    Ste::SHCFG,
    Ste::NSCFG,
    Ste::PRIVCFG,
    Ste::INSTCFG,
]);

/// Word 0 fields stage 1 reads: where the CD table is and its shape.
const STE_WORD0_STAGE1: u64 = masks(&[Ste::S1FMT, Ste::S1_CONTEXT_PTR, Ste::S1CDMAX]);

/// Word 1 fields stage 1 reads: CD fetch attributes, default substream, stall and regime.
const STE_WORD1_STAGE1: u64 = masks(&[
    Ste::S1DSS,
    Ste::S1CIR,
    Ste::S1COR,
    Ste::S1CSH,
    Ste::PPAR,
    Ste::S1STALLD,
    Ste::STRW,
]);

/// Every defined field of word 2: the stage-2 controls and the VMID.
const STE_WORD2_STAGE2: u64 = masks(&[
    Ste::S2VMID,
    Ste::S2T0SZ,
    Ste::S2SL0,
    Ste::S2IR0,
    Ste::S2OR0,
    Ste::S2SH0,
    Ste::S2TG,
    Ste::S2PS,
    Ste::S2AA64,
    Ste::S2ENDI,
    Ste::S2AFFD,
    Ste::S2PTW,
    Ste::S2HD,
    Ste::S2HA,
    Ste::S2S,
    Ste::S2R,
]);

/// The bits of `ste` the SMMU reads, per qword.
///
/// - V=0: only V (the SMMU reads nothing else of an invalid entry).
/// - Abort: V and Config.
/// - Bypass: V, Config and the word-1 stream attributes.
/// - Stage 1: those, the CD table fields of words 0 and 1, and S2VMID, which tags stage-1 TLB
///   entries whenever the SMMU implements stage 2.
/// - Stage 2: V, Config, the word-1 stream attributes, S2FWB, all of word 2 and S2TTB.
/// - Nested: the union of stage 1 and stage 2.
#[must_use]
pub const fn ste_used_bits(ste: &Ste) -> [u64; ENTRY_QWORDS] {
    let mut used = [0; ENTRY_QWORDS];
    used[0] = Ste::V.mask();
    if !ste.v() {
        return used;
    }
    used[0] |= Ste::CONFIG.mask();
    let config = ste.config();
    if matches!(config, StreamConfig::Abort) {
        return used;
    }
    used[1] |= STE_WORD1_STREAM_ATTRIBUTES;
    if config.stage1_enabled() {
        used[0] |= STE_WORD0_STAGE1;
        used[1] |= STE_WORD1_STAGE1;
        used[2] |= Ste::S2VMID.mask();
    }
    if config.stage2_enabled() {
        used[1] |= Ste::S2FWB.mask();
        used[2] |= STE_WORD2_STAGE2;
        used[3] |= Ste::S2TTB.mask();
    }
    used
}

/// Word 0 fields that describe the TTB0 walk, unread while EPD0 disables it.
const CD_WORD0_TTB0_WALK: u64 = masks(&[Cd::T0SZ, Cd::TG0, Cd::IR0, Cd::OR0, Cd::SH0]);

/// Word 0 fields that describe the TTB1 walk, unread while EPD1 disables it.
const CD_WORD0_TTB1_WALK: u64 = masks(&[Cd::T1SZ, Cd::TG1, Cd::IR1, Cd::OR1, Cd::SH1]);

/// The bits of `cd` the SMMU reads, per qword.
///
/// - V=0: only V.
/// - V=1: every bit of every word (reserved bits included: they must keep reading as zero),
///   except the walk controls and table base of a TTB whose walks EPD0/EPD1 disable.
#[must_use]
pub const fn cd_used_bits(cd: &Cd) -> [u64; ENTRY_QWORDS] {
    let mut used = [0; ENTRY_QWORDS];
    used[0] = Cd::V.mask();
    if !cd.v() {
        return used;
    }
    used = [u64::MAX; ENTRY_QWORDS];
    if cd.epd0() {
        used[0] &= !CD_WORD0_TTB0_WALK;
        used[1] &= !Cd::TTB0.mask();
    }
    if cd.epd1() {
        used[0] &= !CD_WORD0_TTB1_WALK;
        used[2] &= !Cd::TTB1.mask();
    }
    used
}

/// Whether two entries whose used bits are `used_a` and `used_b` behave identically.
fn words_equivalent(
    a: &[u64; ENTRY_QWORDS],
    used_a: &[u64; ENTRY_QWORDS],
    b: &[u64; ENTRY_QWORDS],
    used_b: &[u64; ENTRY_QWORDS],
) -> bool {
    used_a == used_b
        && a.iter()
            .zip(b)
            .zip(used_a)
            .all(|((&a, &b), &used)| a & used == b & used)
}

/// Whether the SMMU would treat the two STEs identically: they use the same bits and agree on
/// every one of them. All invalid (V=0) STEs are equivalent.
#[must_use]
pub fn ste_equivalent(a: &Ste, b: &Ste) -> bool {
    words_equivalent(&a.words(), &ste_used_bits(a), &b.words(), &ste_used_bits(b))
}

/// Whether the SMMU would treat the two CDs identically (as [`ste_equivalent`]).
#[must_use]
pub fn cd_equivalent(a: &Cd, b: &Cd) -> bool {
    words_equivalent(&a.words(), &cd_used_bits(a), &b.words(), &cd_used_bits(b))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ste_with_config(config: StreamConfig) -> Ste {
        let mut ste = Ste::INVALID;
        ste.set_v(true);
        ste.set_config(config);
        ste
    }

    #[test]
    fn an_invalid_ste_uses_only_v_and_an_abort_ste_only_v_and_config() {
        assert_eq!(ste_used_bits(&Ste::INVALID), [1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            ste_used_bits(&ste_with_config(StreamConfig::Abort)),
            [0b1111, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn each_configuration_uses_the_words_of_its_stages() {
        let bypass = ste_used_bits(&ste_with_config(StreamConfig::Bypass));
        let s1 = ste_used_bits(&ste_with_config(StreamConfig::Stage1));
        let s2 = ste_used_bits(&ste_with_config(StreamConfig::Stage2));
        let nested = ste_used_bits(&ste_with_config(StreamConfig::Nested));
        assert_eq!(bypass[0], 0b1111);
        assert_ne!(bypass[1] & Ste::SHCFG.mask(), 0);
        assert_eq!(&bypass[2..], &[0; 6]);
        // Stage 1 reads the CD table pointer and the VMID tag, not the stage-2 tables.
        assert_eq!(s1[0], 0b1111 | STE_WORD0_STAGE1);
        assert_eq!(s1[2], Ste::S2VMID.mask());
        assert_eq!(s1[3], 0);
        // Stage 2 reads none of word 0's stage-1 fields, all of word 2 and S2TTB.
        assert_eq!(s2[0], 0b1111);
        assert_ne!(s2[2] & Ste::S2AA64.mask(), 0);
        assert_eq!(s2[3], Ste::S2TTB.mask());
        for i in 0..ENTRY_QWORDS {
            assert_eq!(nested[i], s1[i] | s2[i], "qword {i}");
        }
    }

    #[test]
    fn a_cd_with_epd0_does_not_use_ttb0() {
        let mut cd = Cd::INVALID;
        cd.set_v(true);
        cd.set_epd1(true);
        let with_ttb0 = cd_used_bits(&cd);
        assert_eq!(with_ttb0[1], u64::MAX);
        assert_eq!(with_ttb0[2] & Cd::TTB1.mask(), 0);
        cd.set_epd0(true);
        let without = cd_used_bits(&cd);
        assert_eq!(without[1] & Cd::TTB0.mask(), 0);
        assert_eq!(without[0] & Cd::T0SZ.mask(), 0);
        assert_eq!(cd_used_bits(&Cd::INVALID), [1 << 31, 0, 0, 0, 0, 0, 0, 0]);
    }

    proptest! {
        /// Rule 2 of the module: the bits that select the mask are inside the mask, so agreeing
        /// on one entry's used bits implies using the same bits.
        #[test]
        fn ste_used_bits_are_self_contained(a in any::<[u64; 8]>(), noise in any::<[u64; 8]>()) {
            let a = Ste::from_words(a);
            let used = ste_used_bits(&a);
            let mut b = [0; 8];
            for i in 0..8 {
                b[i] = (a.words()[i] & used[i]) | (noise[i] & !used[i]);
            }
            let b = Ste::from_words(b);
            prop_assert_eq!(ste_used_bits(&b), used);
            prop_assert!(ste_equivalent(&a, &b));
        }

        #[test]
        fn cd_used_bits_are_self_contained(a in any::<[u64; 8]>(), noise in any::<[u64; 8]>()) {
            let a = Cd::from_words(a);
            let used = cd_used_bits(&a);
            let mut b = [0; 8];
            for i in 0..8 {
                b[i] = (a.words()[i] & used[i]) | (noise[i] & !used[i]);
            }
            let b = Cd::from_words(b);
            prop_assert_eq!(cd_used_bits(&b), used);
            prop_assert!(cd_equivalent(&a, &b));
        }
    }
}
