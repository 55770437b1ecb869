//! Guest CDs: the allowlist, and the shadow CD it yields.
//!
//! A CD is the guest's own stage 1: under nesting, everything in it (its tables, their
//! permissions, its ASID, which the physical SMMU tags with the VM's VMID) is confined by the
//! hypervisor's stage 2, so the shadow copies the translation controls as the guest wrote
//! them. What is checked is what the vSMMU advertises and what the physical guard
//! ([`check_physical_cd`](smmu::entry::install::check_physical_cd)) needs:
//!
//! - AA64 = 1 (only AArch64 tables are advertised); ENDI as IDR0.TTENDIAN allows.
//! - For each table whose walks are enabled (EPDx = 0): TxSZ in 16..=39, TGx a granule the
//!   vSMMU advertises, SHx not reserved, TTBx below the effective IPS (IPS capped at the
//!   advertised OAS) and 48 bits, and aligned to its root table's size. A root table outside
//!   the VM's RAM is legal: the walk faults (the physical SMMU's stage-2 fault with CLASS=TT,
//!   which the guest gets as F_WALK_EABT, as from an SMMU), and nothing outside RAM is read.
//! - IPS not reserved; HA and HD zero (no HTTU); S zero (no stalls); A one (TERM_MODEL = 1);
//!   the ASID within 8 bits without ASID16.
//! - Words 1 and 2 above bit 51 and bits 3:2 (E0PD, HAFT, AIE, PnCH, EPAN, HWU...: features
//!   not advertised) zero. NSCFGx (Secure streams only) and HADx (no IDR3.HAD) are IGNORED and
//!   cleared in the shadow; words 4 to 7 (AMAIR, IMPLEMENTATION DEFINED, MPAM) are not copied.

use smmu::Ipa;
use smmu::cd::Cd;
use smmu::registers::TableEndianness;

use crate::registers::id::VirtualFeatures;

/// A CD as copied from guest memory: an allegation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GuestCd(pub Cd);

/// A guest CD that passed the allowlist, as the shadow CD table will hold it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ValidatedCd(Cd);

impl ValidatedCd {
    /// The shadow CD: the guest's translation controls, nothing it may not set.
    #[must_use]
    pub const fn shadow(&self) -> &Cd {
        &self.0
    }
}

/// Which of a CD's two tables a check is about.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum CdTable {
    /// TTB0.
    Ttb0,
    /// TTB1.
    Ttb1,
}

/// Why a guest CD is invalid. Every variant has the same outcome: the shadow CD is V=0, so the
/// physical SMMU terminates the substream's traffic and records C_BAD_CD, forwarded.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum InvalidCd {
    /// V = 0.
    NotValid,
    /// AA64 = 0: AArch32 tables are not advertised.
    NotAArch64,
    /// ENDI selects an endianness IDR0.TTENDIAN does not offer.
    EndiannessNotSupported,
    /// IPS is 7 (reserved).
    ReservedIps,
    /// TxSZ outside 16..=39.
    InputSizeOutOfRange(CdTable),
    /// TGx reserved, or a granule the vSMMU does not advertise.
    GranuleNotSupported(CdTable),
    /// SHx is 1 (reserved).
    ReservedShareability(CdTable),
    /// TTBx has bits above the effective IPS or above 48 bits.
    TableBeyondIps(CdTable),
    /// TTBx is not aligned to its root table's size.
    TableMisaligned(CdTable),
    /// HA or HD set without HTTU.
    HardwareUpdateNotSupported,
    /// S set without the stall model.
    StallNotSupported,
    /// A = 0 while terminated transactions always abort (TERM_MODEL = 1).
    AbortRequired,
    /// ASID above 0xff without ASID16.
    AsidTooWide,
    /// A bit of word 1 or 2 for a feature not advertised is set (these bits, of that word).
    ReservedBits {
        /// The word (1 or 2).
        word: u8,
        /// The offending bits.
        bits: u64,
    },
}

impl InvalidCd {
    /// Every variant, for counters indexed by cause.
    pub const COUNT: usize = 14;

    /// A dense index for counters.
    #[must_use]
    pub const fn index(&self) -> usize {
        match self {
            Self::NotValid => 0,
            Self::NotAArch64 => 1,
            Self::EndiannessNotSupported => 2,
            Self::ReservedIps => 3,
            Self::InputSizeOutOfRange(_) => 4,
            Self::GranuleNotSupported(_) => 5,
            Self::ReservedShareability(_) => 6,
            Self::TableBeyondIps(_) => 7,
            Self::TableMisaligned(_) => 8,
            Self::HardwareUpdateNotSupported => 9,
            Self::StallNotSupported => 10,
            Self::AbortRequired => 11,
            Self::AsidTooWide => 12,
            Self::ReservedBits { .. } => 13,
        }
    }
}

/// Bits of words 1 and 2 a guest may set: NSCFGx (0), HADx (1) and TTBx (51:4).
const TTB_WORD_DEFINED: u64 = 0x000f_ffff_ffff_fff3;
/// Of those, what the shadow keeps: TTBx.
const TTB_WORD_COPIED: u64 = 0x000f_ffff_ffff_fff0;

/// The smallest and largest TxSZ accepted (v3.1 rule without IDR3.STT).
const TXSZ: core::ops::RangeInclusive<u8> = 16..=39;

/// One table's walk controls, gathered from either half of word 0.
struct Walk {
    which: CdTable,
    txsz: u8,
    granule: Option<smmu::translation::Granule>,
    shareability_ok: bool,
    ttb: Ipa,
}

fn check_walk(walk: &Walk, ips_bits: u8, features: &VirtualFeatures) -> Result<(), InvalidCd> {
    if !TXSZ.contains(&walk.txsz) {
        return Err(InvalidCd::InputSizeOutOfRange(walk.which));
    }
    let granule = walk
        .granule
        .filter(|g| features.supports_granule(*g))
        .ok_or(InvalidCd::GranuleNotSupported(walk.which))?;
    if !walk.shareability_ok {
        return Err(InvalidCd::ReservedShareability(walk.which));
    }
    if walk.ttb.0 >> ips_bits.min(48) != 0 {
        return Err(InvalidCd::TableBeyondIps(walk.which));
    }
    // The root table: the index bits left over after whole levels, 8 bytes per entry, at
    // least 64 bytes (the alignment every implementation accepts).
    let input = 64 - u32::from(walk.txsz);
    let page_shift = granule.page_shift();
    let stride = page_shift - 3;
    let index_bits = (input - page_shift - 1) % stride + 1;
    let root_bytes = (8u64 << index_bits).max(64);
    if !walk.ttb.is_aligned(root_bytes) {
        return Err(InvalidCd::TableMisaligned(walk.which));
    }
    // A root table outside the guest's RAM (but within its IPS) is a legal CD: an SMMU would
    // take it and fault on the walk (F_WALK_EABT, CLASS=TT). So does the physical SMMU, whose
    // walk of the table's IPA meets the VM's stage 2, which maps RAM only: a stage-2 fault
    // with CLASS=TT that `events::intake` gives the guest as its F_WALK_EABT. Nothing outside
    // RAM is read.
    Ok(())
}

/// Validates `cd` and builds its shadow.
///
/// This is the only constructor of [`ValidatedCd`]. There must be no second way: the shadow CD
/// table is read by the physical SMMU directly, and a `ValidatedCd` is the promise that every
/// field of it is one the vSMMU allows.
///
/// # Errors
///
/// The first [`InvalidCd`] found.
pub fn validate_cd(cd: &GuestCd, features: &VirtualFeatures) -> Result<ValidatedCd, InvalidCd> {
    let cd = &cd.0;
    if !cd.v() {
        return Err(InvalidCd::NotValid);
    }
    if !cd.aa64() {
        return Err(InvalidCd::NotAArch64);
    }
    let [word0, word1, word2, word3, ..] = cd.words();
    for (word, value) in [(1u8, word1), (2, word2)] {
        if value & !TTB_WORD_DEFINED != 0 {
            return Err(InvalidCd::ReservedBits {
                word,
                bits: value & !TTB_WORD_DEFINED,
            });
        }
    }
    let ips = cd.ips().map_err(|_| InvalidCd::ReservedIps)?;
    // IPS beyond the OAS behaves as the OAS.
    let ips_bits = ips.bits().min(features.oas.bits());
    let walks_enabled = !cd.epd0() || !cd.epd1();
    if walks_enabled {
        let endianness_ok = match features.ttendian {
            TableEndianness::Mixed => true,
            TableEndianness::Little => !cd.endi(),
            TableEndianness::Big => cd.endi(),
        };
        if !endianness_ok {
            return Err(InvalidCd::EndiannessNotSupported);
        }
    }
    if !cd.epd0() {
        check_walk(
            &Walk {
                which: CdTable::Ttb0,
                txsz: cd.t0sz(),
                granule: cd.tg0().ok(),
                shareability_ok: cd.sh0().is_ok(),
                ttb: cd.ttb0(),
            },
            ips_bits,
            features,
        )?;
    }
    if !cd.epd1() {
        check_walk(
            &Walk {
                which: CdTable::Ttb1,
                txsz: cd.t1sz(),
                granule: cd.tg1().ok(),
                shareability_ok: cd.sh1().is_ok(),
                ttb: cd.ttb1(),
            },
            ips_bits,
            features,
        )?;
    }
    if cd.ha() || cd.hd() {
        return Err(InvalidCd::HardwareUpdateNotSupported);
    }
    if cd.s() {
        return Err(InvalidCd::StallNotSupported);
    }
    if !cd.a() {
        return Err(InvalidCd::AbortRequired);
    }
    if !features.asid16 && cd.asid().0 > 0xff {
        return Err(InvalidCd::AsidTooWide);
    }
    Ok(ValidatedCd(Cd::from_words([
        word0,
        word1 & TTB_WORD_COPIED,
        word2 & TTB_WORD_COPIED,
        word3,
        0,
        0,
        0,
        0,
    ])))
}
