//! Guest STEs: the allowlist.
//!
//! A guest's stream table entry describes a stage-1-only SMMU: the vSMMU advertises no stage 2,
//! no HYP, no attribute overrides, no stalls, no PRI, and ATS only when forwarded. So, for a
//! valid STE (V=1):
//!
//! - Config is abort (any 0b0xx), bypass or stage 1; the stage-2 configurations are ILLEGAL.
//! - For abort nothing else is read.
//! - For bypass and stage 1, word 1 must have zero in every field that is RES0 on this vSMMU
//!   (the attribute and permission overrides, STRW, S1PIE, S1MPAM, PPAR and the reserved bits),
//!   except SHCFG = 0b01 ("use incoming", the no-override value Linux 6.1 writes into every
//!   bypass STE), and bits 58:56 of word 0 must be zero. Fields that are IGNORED here (CONT,
//!   DCP, DRE, MEV, S2HWU, SW_RESERVED, S2FWB, NSCFG, IMPLEMENTATION DEFINED) are not copied.
//! - For stage 1: S1CDMax at most the advertised SSIDSIZE; S1Fmt not reserved, and two-level
//!   only with CD2L; S1DSS not reserved (when substreams are on); S1ContextPtr within the
//!   advertised OAS and aligned as its table requires (a table outside the VM's RAM is legal:
//!   the CD fetch fails, and the guest gets F_CD_FETCH, as from an SMMU; nothing outside RAM
//!   is read); S1STALLD = 0 (stalls are not supported, so 1 is ILLEGAL); EATS 0 or 1 when ATS is
//!   advertised (IGNORED otherwise).
//! - Words 2 to 7 (stage 2, VMID, MPAM, VMS, Secure) describe what this vSMMU does not
//!   implement: IGNORED or RES0, never copied. The VMID and stage 2 of the physical STE are the
//!   hypervisor's.

use smmu::IpaRange;
use smmu::ste::{Eats, S1Dss, S1Fmt, Ste, StreamConfig};

use crate::guest_tables::{CdTableFormat, GuestCdTable, first_level_range};
use crate::registers::id::VirtualFeatures;

/// An STE as copied from guest memory: an allegation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GuestSte(pub Ste);

/// What a valid guest STE asks for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SteRequest {
    /// Abort every transaction, silently.
    Abort,
    /// Bypass (for the guest, its own "physical" addresses: stage 2 alone).
    Bypass,
    /// Translate with the guest's CD table.
    Stage1 {
        /// Where the CDs are.
        table: GuestCdTable,
        /// S1DSS (Terminate when substreams are off: the field is IGNORED then).
        s1dss: S1Dss,
        /// EATS (Abort unless ATS is advertised).
        eats: Eats,
    },
}

/// A guest STE that passed the allowlist.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ValidatedSte(SteRequest);

impl ValidatedSte {
    /// What it asks for.
    #[must_use]
    pub const fn request(&self) -> &SteRequest {
        &self.0
    }
}

/// Why a guest STE is invalid. Every variant has the same outcome: the stream's physical STE is
/// V=0, so the physical SMMU aborts its traffic and records C_BAD_STE, forwarded to the guest.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum InvalidSte {
    /// V = 0.
    NotValid,
    /// Config selects stage 2, which this vSMMU does not implement.
    Stage2Config(u8),
    /// Bits 58:56 of word 0 are set.
    Word0Reserved(u64),
    /// A field of word 1 that is RES0 on this vSMMU is set (these bits).
    Word1Reserved(u64),
    /// S1CDMax exceeds the advertised SSIDSIZE.
    S1CdMaxTooLarge {
        /// The STE's S1CDMax.
        s1cdmax: u8,
        /// IDR1.SSIDSIZE.
        ssid_bits: u8,
    },
    /// S1Fmt is 3 (reserved).
    ReservedS1Fmt,
    /// A two-level CD table without IDR0.CD2L.
    TwoLevelCdTableNotSupported,
    /// S1DSS is 3 (reserved).
    ReservedS1Dss,
    /// S1ContextPtr has bits above the advertised OAS.
    ContextPointerBeyondOas,
    /// S1ContextPtr is not aligned as its table requires (RES0 low bits set).
    ContextPointerMisaligned,
    /// S1STALLD = 1: stalls are not supported, so the field may not be set.
    StallDisableWithoutStalls,
    /// EATS is split-stage or reserved.
    EatsNotAllowed(u8),
}

impl InvalidSte {
    /// Every variant, for counters indexed by cause.
    pub const COUNT: usize = 12;

    /// A dense index for counters.
    #[must_use]
    pub const fn index(&self) -> usize {
        match self {
            Self::NotValid => 0,
            Self::Stage2Config(_) => 1,
            Self::Word0Reserved(_) => 2,
            Self::Word1Reserved(_) => 3,
            Self::S1CdMaxTooLarge { .. } => 4,
            Self::ReservedS1Fmt => 5,
            Self::TwoLevelCdTableNotSupported => 6,
            Self::ReservedS1Dss => 7,
            Self::ContextPointerBeyondOas => 8,
            Self::ContextPointerMisaligned => 9,
            Self::StallDisableWithoutStalls => 10,
            Self::EatsNotAllowed(_) => 11,
        }
    }
}

/// Word 0 bits 58:56: reserved.
const WORD0_RESERVED: u64 = 0x0700_0000_0000_0000;

/// Word 1 bits that must be zero on this vSMMU when the STE lets traffic through: PPAR (18),
/// S1PIE (24), S1MPAM (26), STRW (31:30), MemAttr (35:32), MTCFG (36), ALLOCCFG (40:37),
/// reserved 43:41, SHCFG bit 45 (SHCFG may be 0b00 or 0b01), PRIVCFG (49:48), INSTCFG
/// (51:50). S1STALLD and EATS are checked on their own.
const WORD1_MUST_BE_ZERO: u64 = 1 << 18
    | 1 << 24
    | 1 << 26
    | 0b11 << 30
    | 0xf << 32
    | 1 << 36
    | 0xf << 37
    | 0b111 << 41
    | 1 << 45
    | 0b11 << 48
    | 0b11 << 50;

/// Validates `ste`. `memory` answers whether the CD table is in RAM.
///
/// This is the only constructor of [`ValidatedSte`]. There must be no second way: the shadow
/// builder trusts a `ValidatedSte` to name a CD table in this VM's RAM and to ask for nothing
/// the vSMMU does not implement, and a second constructor would be a second, unreviewed
/// allowlist.
///
/// # Errors
///
/// The first [`InvalidSte`] found, in field order.
pub fn validate_ste(
    ste: &GuestSte,
    features: &VirtualFeatures,
) -> Result<ValidatedSte, InvalidSte> {
    let ste = &ste.0;
    if !ste.v() {
        return Err(InvalidSte::NotValid);
    }
    let [word0, word1, ..] = ste.words();
    let config = ste.config();
    match config {
        StreamConfig::Abort => return Ok(ValidatedSte(SteRequest::Abort)),
        StreamConfig::Stage2 | StreamConfig::Nested => {
            return Err(InvalidSte::Stage2Config(config.encoding()));
        }
        StreamConfig::Bypass | StreamConfig::Stage1 => {}
    }
    if word0 & WORD0_RESERVED != 0 {
        return Err(InvalidSte::Word0Reserved(word0 & WORD0_RESERVED));
    }
    if word1 & WORD1_MUST_BE_ZERO != 0 {
        return Err(InvalidSte::Word1Reserved(word1 & WORD1_MUST_BE_ZERO));
    }
    if config == StreamConfig::Bypass {
        return Ok(ValidatedSte(SteRequest::Bypass));
    }

    let s1cdmax = ste.s1cdmax();
    if s1cdmax > features.ssid_bits {
        return Err(InvalidSte::S1CdMaxTooLarge {
            s1cdmax,
            ssid_bits: features.ssid_bits,
        });
    }
    let format = if s1cdmax == 0 {
        // S1Fmt and S1DSS are IGNORED without substreams.
        CdTableFormat::Single
    } else {
        match ste.s1fmt() {
            Err(_) => return Err(InvalidSte::ReservedS1Fmt),
            Ok(S1Fmt::Linear) => CdTableFormat::Linear,
            Ok(_) if !features.cd2l => return Err(InvalidSte::TwoLevelCdTableNotSupported),
            Ok(S1Fmt::TwoLevel4K) => CdTableFormat::TwoLevel { leaf_log2: 6 },
            Ok(S1Fmt::TwoLevel64K) => CdTableFormat::TwoLevel { leaf_log2: 10 },
        }
    };
    let s1dss = if s1cdmax == 0 {
        S1Dss::Terminate
    } else {
        ste.s1dss().map_err(|_| InvalidSte::ReservedS1Dss)?
    };
    let ptr = ste.s1_context_ptr();
    if ptr.0 >> features.oas.bits() != 0 {
        return Err(InvalidSte::ContextPointerBeyondOas);
    }
    let table = GuestCdTable {
        ptr,
        format,
        s1cdmax,
    };
    // A linear table is aligned to its size; a level-1 table to its size or 64 bytes.
    if !ptr.is_aligned(table.first_level_bytes().max(64)) {
        return Err(InvalidSte::ContextPointerMisaligned);
    }
    // A table outside the guest's RAM is not an ILLEGAL STE: an SMMU would take the STE and
    // fail to fetch the CD (F_CD_FETCH, with the address), which is what the guest gets: the
    // vSMMU's own copy of the CD fails, the shadow CD stays invalid, and the physical C_BAD_CD
    // is forwarded as F_CD_FETCH (`events::intake`). Nothing outside RAM is ever read.
    if ste.s1stalld() {
        return Err(InvalidSte::StallDisableWithoutStalls);
    }
    let eats = if features.ats {
        match ste.eats() {
            Ok(eats @ (Eats::Abort | Eats::Translate)) => eats,
            _ => {
                return Err(InvalidSte::EatsNotAllowed(
                    u8::try_from(Ste::EATS.extract(word1)).unwrap_or(u8::MAX),
                ));
            }
        }
    } else {
        Eats::Abort
    };
    Ok(ValidatedSte(SteRequest::Stage1 { table, s1dss, eats }))
}

/// The range a validated stage-1 STE's CD table occupies (for tests and diagnostics).
#[must_use]
pub fn cd_table_range(table: &GuestCdTable) -> IpaRange {
    first_level_range(table)
}
