//! The configuration structures as the model's SMMU reads them: STE, L1STD, CD and L1CD,
//! decoded from raw words with the model's own bit positions (IHI 0070 chapter 5), and judged
//! valid or ILLEGAL by the rules of 5.2.2 (`SteIllegal`) and 5.4.2 (`CdIllegal`).
//!
//! This module owns decoding and validity only. Where a structure comes from (fetch, cache) and
//! what happens to a transaction that meets an invalid one belongs to `translate`. It
//! deliberately does not use the `smmu` crate's field accessors: the model is a second,
//! independent reading of the specification, so that a misplaced field in either shows up as a
//! disagreement.
//!
//! Reserved (RES0) fields of structures are ignored, which chapter 5 allows ("an implementation
//! either detects non-zero values ... or ignores the Reserved field entirely").

// Field extraction: every narrowing `as` here is of a value `bits` has already masked to the
// field's width, which fits the target type.
#![allow(clippy::cast_possible_truncation)]

use crate::config::{Features, StallSupport, address_size_bits};

/// Bits `hi..=lo` of `word`, shifted down.
#[must_use]
pub(crate) const fn bits(word: u64, hi: u32, lo: u32) -> u64 {
    let width = hi - lo + 1;
    let mask = if width == 64 {
        u64::MAX
    } else {
        (1 << width) - 1
    };
    (word >> lo) & mask
}

/// Bit `n` of `word`.
#[must_use]
pub(crate) const fn bit(word: u64, n: u32) -> bool {
    (word >> n) & 1 == 1
}

/// Bits `hi..=lo` of `word` kept in place (an address field).
#[must_use]
pub(crate) const fn field_in_place(word: u64, hi: u32, lo: u32) -> u64 {
    bits(word, hi, lo) << lo
}

/// STE.Config.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum StreamConfig {
    /// 0b0xx: abort silently.
    Abort,
    /// 0b100: both stages bypassed.
    Bypass,
    /// 0b101: stage 1 only.
    Stage1,
    /// 0b110: stage 2 only.
    Stage2,
    /// 0b111: stage 1 nested in stage 2.
    Nested,
}

impl StreamConfig {
    const fn from_bits(config: u64) -> Self {
        match config {
            4 => Self::Bypass,
            5 => Self::Stage1,
            6 => Self::Stage2,
            7 => Self::Nested,
            _ => Self::Abort,
        }
    }

    /// Stage 1 translates.
    #[must_use]
    pub const fn stage1(self) -> bool {
        matches!(self, Self::Stage1 | Self::Nested)
    }

    /// Stage 2 translates.
    #[must_use]
    pub const fn stage2(self) -> bool {
        matches!(self, Self::Stage2 | Self::Nested)
    }
}

/// The geometry of one VMSAv8-64 translation table walk.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct WalkGeometry {
    /// log2 of the granule: 12, 14 or 16.
    pub granule_shift: u32,
    /// The input address size in bits (64 - TxSZ).
    pub input_bits: u32,
    /// The level of the root table (0 to 3).
    pub start_level: u32,
    /// How many bits the (possibly concatenated) root table is indexed by.
    pub root_index_bits: u32,
}

impl WalkGeometry {
    /// Bits each table level resolves.
    #[must_use]
    pub const fn stride(&self) -> u32 {
        self.granule_shift - 3
    }

    /// The lowest input bit level `level` indexes.
    #[must_use]
    pub const fn level_shift(&self, level: u32) -> u32 {
        self.granule_shift + (3 - level) * self.stride()
    }

    /// The root table's size in bytes.
    #[must_use]
    pub const fn root_bytes(&self) -> u64 {
        8 << self.root_index_bits
    }

    /// The stage-1 geometry of an input size: the walk starts at whatever level leaves one
    /// (non-concatenated) root table.
    #[must_use]
    pub const fn stage1(granule_shift: u32, input_bits: u32) -> Self {
        let stride = granule_shift - 3;
        let levels = (input_bits - granule_shift).div_ceil(stride);
        let start_level = 4 - levels;
        let below = granule_shift + (levels - 1) * stride;
        Self {
            granule_shift,
            input_bits,
            start_level,
            root_index_bits: input_bits - below,
        }
    }

    /// The stage-2 geometry of S2TG/S2SL0/S2T0SZ, or `None` where the three are inconsistent
    /// (a root needing more than 16 concatenated tables, or none of its bits).
    #[must_use]
    pub const fn stage2(granule_shift: u32, sl0: u64, input_bits: u32) -> Option<Self> {
        let start_level = match (granule_shift, sl0) {
            (12, 0) => 2,
            (12, 1) => 1,
            (12, 2) => 0,
            (14, 0) => 3,
            (14, 1) => 2,
            (14, 2) => 1,
            (16, 0) => 3,
            (16, 1) => 2,
            (16, 2) => 1,
            _ => return None,
        };
        let stride = granule_shift - 3;
        let below = granule_shift + (3 - start_level) * stride;
        if input_bits <= below {
            return None;
        }
        let root_index_bits = input_bits - below;
        // Level 0 cannot be concatenated (it would need more than 48 bits).
        let limit = if start_level == 0 { stride } else { stride + 4 };
        if root_index_bits > limit {
            return None;
        }
        Some(Self {
            granule_shift,
            input_bits,
            start_level,
            root_index_bits,
        })
    }
}

/// The granule shift of a TG0-style encoding (STE.S2TG, CD.TG0).
const fn tg0_shift(tg: u64) -> Option<u32> {
    match tg {
        0 => Some(12),
        1 => Some(16),
        2 => Some(14),
        _ => None,
    }
}

/// The granule shift of CD.TG1's encoding.
const fn tg1_shift(tg: u64) -> Option<u32> {
    match tg {
        1 => Some(14),
        2 => Some(12),
        3 => Some(16),
        _ => None,
    }
}

/// STE.S1Fmt, as it applies.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum CdTableFormat {
    /// One CD (substreams disabled) or a linear table.
    Linear,
    /// Two levels with leaf tables of 2^`leaf_bits` CDs (6: 4 KiB, 10: 64 KiB).
    TwoLevel {
        /// log2 of the CDs per leaf table.
        leaf_bits: u32,
    },
}

/// STE.S1DSS.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum DefaultSubstream {
    /// Transactions without a substream are terminated (F_STREAM_DISABLED).
    Terminate,
    /// Transactions without a substream bypass stage 1.
    Bypass,
    /// Transactions without a substream use CD 0; substream 0 itself is terminated.
    Substream0,
}

/// STE.EATS, effective value.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Eats {
    /// ATS disabled.
    Disabled,
    /// Full ATS.
    Full,
}

/// The translation regime of a stream's stage 1 (from STRW, E2H and Config).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum StreamWorld {
    /// Non-secure EL1 (the only world with stage 2).
    El1,
    /// Non-secure EL2.
    El2,
    /// Non-secure EL2 with E2H (ASIDs).
    El2E2h,
}

/// The stage-1 part of a valid STE.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct ContextTable {
    /// S1ContextPtr (an IPA when nested).
    pub pointer: u64,
    /// S1Fmt, as it applies.
    pub format: CdTableFormat,
    /// S1CDMax as it applies (0 when substreams are unsupported).
    pub cdmax: u32,
    /// S1DSS.
    pub default_substream: DefaultSubstream,
    /// S1STALLD.
    pub stall_disabled: bool,
}

/// The stage-2 part of a valid STE.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[allow(clippy::struct_excessive_bools)] // One per STE bit.
pub struct Stage2 {
    /// S2VMID.
    pub vmid: u16,
    /// S2TTB, with the bits below the root table's alignment taken as zero.
    pub ttb: u64,
    /// The walk.
    pub geometry: WalkGeometry,
    /// The effective output size (S2PS, capped by the OAS).
    pub output_bits: u32,
    /// S2AFFD.
    pub access_flag_faults_disabled: bool,
    /// S2S: stage-2 faults stall.
    pub stall: bool,
    /// S2R: stage-2 faults are recorded.
    pub record: bool,
}

/// A valid STE, decoded.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct Ste {
    /// The raw words.
    pub raw: [u64; 8],
    /// Config.
    pub config: StreamConfig,
    /// The CD table, when stage 1 translates.
    pub table: Option<ContextTable>,
    /// Stage 2, when it translates.
    pub stage2: Option<Stage2>,
    /// The VMID tagging this stream's TLB entries (S2VMID where it applies, else 0).
    pub vmid: u16,
    /// The effective EATS.
    pub eats: Eats,
    /// StreamWorld.
    pub world: StreamWorld,
    /// PPAR: PRG responses need the PASID.
    pub ppar: bool,
}

/// Why an STE is not valid: V=0 or one of the ILLEGAL conditions of IHI 0070 5.2.2.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum SteIllegal {
    /// V = 0.
    NotValid,
    /// Config enables stage 1 without IDR0.S1P.
    Stage1NotImplemented,
    /// Config enables stage 2 without IDR0.S2P.
    Stage2NotImplemented,
    /// EATS = 0b10 (split-stage) where it is not supported or not allowed.
    SplitStageAts,
    /// EATS = 0b01 with stage 2 enabled and S2S = 1.
    FullAtsWithStage2Stall,
    /// STRW is a reserved value and is used.
    ReservedStreamWorld,
    /// S1STALLD = 1 although the SMMU cannot choose to stall.
    StallDisableWithoutStallModel,
    /// S1CDMax above IDR1.SSIDSIZE.
    CdMaxTooLarge,
    /// S1Fmt selects a two-level CD table without IDR0.CD2L.
    TwoLevelCdTableUnsupported,
    /// S1ContextPtr beyond the address size.
    ContextPointerOutOfRange,
    /// S2S = 1 on an SMMU that cannot stall.
    Stage2StallUnsupported,
    /// S2S = 0 on an SMMU that always stalls.
    Stage2StallRequired,
    /// S2AA64 = 0 (VMSAv8-32 LPAE is not implemented).
    Stage2AArch32,
    /// S2HA or S2HD without HTTU.
    Stage2HardwareUpdate,
    /// S2TG reserved or not implemented.
    Stage2Granule,
    /// S2TTB beyond the effective S2PS.
    Stage2TableOutOfRange,
    /// S2T0SZ out of range.
    Stage2InputSize,
    /// S2SL0 inconsistent with S2T0SZ and S2TG.
    Stage2StartLevel,
    /// S2ENDI selects big-endian tables.
    Stage2Endianness,
    /// S2VMID\[15:8\] set without IDR0.VMID16.
    VmidTooWide,
}

/// Why a CD is not valid: V=0 or one of the ILLEGAL conditions of IHI 0070 5.4.2.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum CdIllegal {
    /// V = 0.
    NotValid,
    /// CD.S = 1 through an STE with S1STALLD = 1.
    StallDisabledByStream,
    /// CD.A = 0 on an SMMU with TERM_MODEL = 1.
    RazWiUnsupported,
    /// CD.S = 1 on an SMMU that cannot stall.
    StallUnsupported,
    /// CD.S = 0 on an SMMU that always stalls.
    StallRequired,
    /// ENDI selects big-endian tables.
    Endianness,
    /// AA64 = 0.
    AArch32,
    /// HA or HD without HTTU.
    HardwareUpdate,
    /// ASID\[15:8\] set without IDR0.ASID16.
    AsidTooWide,
    /// T0SZ or T1SZ of an enabled half out of range.
    InputSize,
    /// TG0 or TG1 of an enabled half reserved or not implemented.
    Granule,
    /// TTB0 or TTB1 of an enabled half beyond the IPS.
    TableOutOfRange,
}

/// One half (TTB0 or TTB1) of a stage-1 address space.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct Stage1Half {
    /// TTBx (an IPA when nested), with bits below the root table's size taken as zero.
    pub ttb: u64,
    /// The walk.
    pub geometry: WalkGeometry,
    /// TBIx.
    pub top_byte_ignored: bool,
    /// HADx (with IDR3.HAD): hierarchical attributes disabled.
    pub hierarchical_disabled: bool,
}

/// A valid CD, decoded.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[allow(clippy::struct_excessive_bools)] // One per CD bit.
pub struct Cd {
    /// The raw words.
    pub raw: [u64; 8],
    /// ASID.
    pub asid: u16,
    /// TTB0's half, unless EPD0.
    pub ttb0: Option<Stage1Half>,
    /// TTB1's half, unless EPD1.
    pub ttb1: Option<Stage1Half>,
    /// The effective output size (IPS capped by the OAS).
    pub output_bits: u32,
    /// AFFD.
    pub access_flag_faults_disabled: bool,
    /// WXN.
    pub wxn: bool,
    /// UWXN.
    pub uwxn: bool,
    /// PAN.
    pub pan: bool,
    /// A: terminated faults abort (else RAZ/WI).
    pub abort: bool,
    /// R: faults are recorded.
    pub record: bool,
    /// S: faults stall.
    pub stall: bool,
}

/// Whether `address` (a table of `bytes` bytes) fits below 2^`limit_bits`.
const fn fits(address: u64, bytes: u64, limit_bits: u32) -> bool {
    limit_bits >= 64 || address.saturating_add(bytes) <= 1 << limit_bits
}

/// Decodes an STE and judges it (IHI 0070 5.2.2 `SteIllegal`, for the Non-secure Stream table).
///
/// # Errors
///
/// [`SteIllegal`] naming the first rule broken, in the pseudocode's order.
pub fn decode_ste(raw: [u64; 8], features: &Features, e2h: bool) -> Result<Ste, SteIllegal> {
    let [w0, w1, w2, w3, ..] = raw;
    if !bit(w0, 0) {
        return Err(SteIllegal::NotValid);
    }
    let config = StreamConfig::from_bits(bits(w0, 3, 1));
    let abort = Ste {
        raw,
        config,
        table: None,
        stage2: None,
        vmid: 0,
        eats: Eats::Disabled,
        world: StreamWorld::El1,
        ppar: false,
    };
    if config == StreamConfig::Abort {
        return Ok(abort);
    }
    if config.stage1() && !features.s1p {
        return Err(SteIllegal::Stage1NotImplemented);
    }
    if config.stage2() && !features.s2p {
        return Err(SteIllegal::Stage2NotImplemented);
    }
    let s2s = bit(w2, 57);
    let raw_eats = bits(w1, 29, 28);
    let mut eats = Eats::Disabled;
    if features.ats && config != StreamConfig::Bypass {
        match raw_eats {
            0b10 => return Err(SteIllegal::SplitStageAts),
            0b01 if config.stage2() && s2s => return Err(SteIllegal::FullAtsWithStage2Stall),
            0b01 => eats = Eats::Full,
            // 0b11 (DPT) is reserved without IDR3.DPT and behaves as 0b00.
            _ => {}
        }
    }
    let strw_unused =
        !features.s1p || !features.hyp || config.stage2() || config == StreamConfig::Bypass;
    let strw = bits(w1, 31, 30);
    if !strw_unused && strw & 1 == 1 {
        return Err(SteIllegal::ReservedStreamWorld);
    }
    let world = match (strw_unused, strw, e2h) {
        (false, 0b10, false) => StreamWorld::El2,
        (false, 0b10, true) => StreamWorld::El2E2h,
        _ => StreamWorld::El1,
    };

    let oas = u32::from(features.oas_bits());
    let mut table = None;
    if config.stage1() {
        let stall_disabled = bit(w1, 27);
        if stall_disabled && features.stall_model != StallSupport::StallAndTerminate {
            return Err(SteIllegal::StallDisableWithoutStallModel);
        }
        let cdmax = if features.ssidsize == 0 {
            0
        } else {
            let cdmax = bits(w0, 63, 59);
            if cdmax > u64::from(features.ssidsize) {
                return Err(SteIllegal::CdMaxTooLarge);
            }
            cdmax as u32
        };
        let format = match (cdmax, bits(w0, 5, 4)) {
            (0, _) | (_, 0 | 3) => CdTableFormat::Linear,
            (_, fmt) if !features.cd2l => {
                let _ = fmt;
                return Err(SteIllegal::TwoLevelCdTableUnsupported);
            }
            (_, 1) => CdTableFormat::TwoLevel { leaf_bits: 6 },
            _ => CdTableFormat::TwoLevel { leaf_bits: 10 },
        };
        let pointer = field_in_place(w0, 51, 6);
        // S1ContextPtr must lie in the IAS (nested: an IPA) or the OAS; both are the OAS here
        // (no AArch32 stage 2, so IAS = OAS).
        if !fits(pointer, 64, oas) {
            return Err(SteIllegal::ContextPointerOutOfRange);
        }
        let default_substream = match bits(w1, 1, 0) {
            1 => DefaultSubstream::Bypass,
            2 => DefaultSubstream::Substream0,
            _ => DefaultSubstream::Terminate,
        };
        table = Some(ContextTable {
            pointer,
            format,
            cdmax,
            default_substream,
            stall_disabled,
        });
    }

    let mut stage2 = None;
    if config.stage2() {
        if s2s && features.stall_model == StallSupport::TerminateOnly {
            return Err(SteIllegal::Stage2StallUnsupported);
        }
        if !s2s && features.stall_model == StallSupport::StallForced {
            return Err(SteIllegal::Stage2StallRequired);
        }
        if !bit(w2, 51) {
            return Err(SteIllegal::Stage2AArch32);
        }
        // No HTTU in this model.
        if bit(w2, 55) || bit(w2, 56) {
            return Err(SteIllegal::Stage2HardwareUpdate);
        }
        let granule_shift = tg0_shift(bits(w2, 47, 46))
            .filter(|&shift| features.granule_supported(shift))
            .ok_or(SteIllegal::Stage2Granule)?;
        let output_bits = u32::from(address_size_bits(bits(w2, 50, 48) as u8)).min(oas);
        let ttb_raw = field_in_place(w3, 51, 4);
        let pa_limit = if granule_shift < 16 {
            output_bits.min(48)
        } else {
            output_bits
        };
        if !fits(ttb_raw, 1, pa_limit) {
            return Err(SteIllegal::Stage2TableOutOfRange);
        }
        let t0sz = bits(w2, 37, 32) as u32;
        let txsz_min = if granule_shift == 16 {
            12u32.max(64 - oas)
        } else {
            16u32.max(64 - oas)
        };
        if !(txsz_min..=39).contains(&t0sz) {
            return Err(SteIllegal::Stage2InputSize);
        }
        let geometry = WalkGeometry::stage2(granule_shift, bits(w2, 39, 38), 64 - t0sz)
            .ok_or(SteIllegal::Stage2StartLevel)?;
        if bit(w2, 52) {
            return Err(SteIllegal::Stage2Endianness);
        }
        stage2 = Some(Stage2 {
            vmid: bits(w2, 15, 0) as u16,
            ttb: ttb_raw & !(geometry.root_bytes().max(8) - 1),
            geometry,
            output_bits,
            access_flag_faults_disabled: bit(w2, 53),
            stall: s2s,
            record: bit(w2, 58),
        });
    }
    // S2VMID applies wherever stage 2 is implemented and the stream translates at EL1.
    let vmid_used = features.s2p && world == StreamWorld::El1;
    let vmid = if vmid_used { bits(w2, 15, 0) as u16 } else { 0 };
    if vmid_used && !features.vmid16 && vmid > 0xff {
        return Err(SteIllegal::VmidTooWide);
    }
    Ok(Ste {
        raw,
        config,
        table,
        stage2,
        vmid,
        eats,
        world,
        ppar: bit(w1, 18),
    })
}

/// The validity of a level-1 stream table descriptor for a stream table split at `split`:
/// the level-2 table's address and how many STEs it holds, or `None` if the span is invalid.
#[must_use]
pub fn decode_l1std(raw: u64, split: u32) -> Option<(u64, u64)> {
    let span = bits(raw, 4, 0) as u32;
    if span == 0 || span > 11 || span > split + 1 {
        return None;
    }
    let entries = 1u64 << (span - 1);
    // L2Ptr[5 + span - 1 : 0] are taken as zero: the table is aligned to its size.
    let pointer = field_in_place(raw, 51, 6) & !((entries * 64) - 1);
    Some((pointer, entries))
}

/// A level-1 CD descriptor: the leaf table's address, or `None` if V = 0.
#[must_use]
pub fn decode_l1cd(raw: u64) -> Option<u64> {
    bit(raw, 0).then_some(field_in_place(raw, 51, 12))
}

/// Decodes a CD reached through `ste` and judges it (IHI 0070 5.4.2 `CdIllegal`).
///
/// # Errors
///
/// [`CdIllegal`] naming the first rule broken, in the pseudocode's order.
pub fn decode_cd(raw: [u64; 8], ste: &Ste, features: &Features) -> Result<Cd, CdIllegal> {
    let [w0, w1, w2, w3, ..] = raw;
    if !bit(w0, 31) {
        return Err(CdIllegal::NotValid);
    }
    let stall = bit(w0, 44);
    let abort = bit(w0, 46);
    let stall_disabled = ste.table.is_some_and(|t| t.stall_disabled);
    if stall_disabled && stall {
        return Err(CdIllegal::StallDisabledByStream);
    }
    if features.term_model_abort_only && !abort {
        return Err(CdIllegal::RazWiUnsupported);
    }
    match features.stall_model {
        StallSupport::TerminateOnly if stall => return Err(CdIllegal::StallUnsupported),
        StallSupport::StallForced if !stall => return Err(CdIllegal::StallRequired),
        _ => {}
    }
    let epd0 = bit(w0, 14);
    let epd1 = bit(w0, 30);
    if (!epd0 || !epd1) && bit(w0, 15) {
        return Err(CdIllegal::Endianness);
    }
    if !bit(w0, 41) {
        return Err(CdIllegal::AArch32);
    }
    if bit(w0, 42) || bit(w0, 43) {
        return Err(CdIllegal::HardwareUpdate);
    }
    let asid = bits(w0, 63, 48) as u16;
    if !features.asid16 && asid > 0xff {
        return Err(CdIllegal::AsidTooWide);
    }
    let oas = u32::from(features.oas_bits());
    let output_bits = u32::from(address_size_bits(bits(w0, 34, 32) as u8)).min(oas);
    let half = |enabled: bool,
                txsz: u64,
                granule: Option<u32>,
                ttb_word: u64,
                tbi: bool,
                had: bool|
     -> Result<Option<Stage1Half>, CdIllegal> {
        if !enabled {
            return Ok(None);
        }
        let txsz = txsz as u32;
        if !(16..=39).contains(&txsz) {
            return Err(CdIllegal::InputSize);
        }
        let shift = granule
            .filter(|&s| features.granule_supported(s))
            .ok_or(CdIllegal::Granule)?;
        let ttb = field_in_place(ttb_word, 51, 4);
        let limit = if shift < 16 {
            output_bits.min(48)
        } else {
            output_bits
        };
        if !fits(ttb, 1, limit) {
            return Err(CdIllegal::TableOutOfRange);
        }
        let geometry = WalkGeometry::stage1(shift, 64 - txsz);
        Ok(Some(Stage1Half {
            ttb: ttb & !(geometry.root_bytes().max(8) - 1),
            geometry,
            top_byte_ignored: tbi,
            hierarchical_disabled: had && features.had,
        }))
    };
    let ttb0 = half(
        !epd0,
        bits(w0, 5, 0),
        tg0_shift(bits(w0, 7, 6)),
        w1,
        bit(w0, 38),
        bit(w1, 1),
    )?;
    let ttb1 = half(
        !epd1,
        bits(w0, 21, 16),
        tg1_shift(bits(w0, 23, 22)),
        w2,
        bit(w0, 39),
        bit(w2, 1),
    )?;
    let _ = w3;
    Ok(Cd {
        raw,
        asid,
        ttb0,
        ttb1,
        output_bits,
        access_flag_faults_disabled: bit(w0, 35),
        wxn: bit(w0, 36),
        uwxn: bit(w0, 37),
        pan: bit(w0, 40),
        abort,
        record: bit(w0, 45),
        stall,
    })
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
    use crate::config::Features;

    #[test]
    fn stage1_geometry_starts_where_whole_levels_leave_one_root() {
        // 39-bit input, 4 KiB: levels 1..3, a full 512-entry root.
        let g = WalkGeometry::stage1(12, 39);
        assert_eq!((g.start_level, g.root_index_bits), (1, 9));
        // 48-bit: level 0.
        assert_eq!(WalkGeometry::stage1(12, 48).start_level, 0);
        // 32-bit: level 1 with 4 entries.
        let g = WalkGeometry::stage1(12, 32);
        assert_eq!((g.start_level, g.root_index_bits), (1, 2));
        // 64 KiB, 42-bit: levels 2..3, a full 8192-entry root.
        let g = WalkGeometry::stage1(16, 42);
        assert_eq!((g.start_level, g.root_index_bits), (2, 13));
    }

    /// (granule, SL0, input bits) -> (start level, root index bits) or inconsistent.
    #[test]
    fn stage2_geometry_follows_sl0_and_allows_up_to_sixteen_concatenated_roots() {
        type Case = (u32, u64, u32, Option<(u32, u32)>);
        let cases: &[Case] = &[
            (12, 1, 39, Some((1, 9))),
            (12, 1, 40, Some((1, 10))),
            (12, 1, 43, Some((1, 13))),
            (12, 1, 44, None), // 32 tables
            (12, 0, 39, None), // 18 bits at level 2
            (12, 2, 48, Some((0, 9))),
            (12, 2, 39, None), // nothing left for level 0
            (12, 3, 40, None),
            (16, 1, 42, Some((2, 13))),
            (14, 1, 36, Some((2, 11))),
        ];
        for &(granule, sl0, input, expected) in cases {
            let got = WalkGeometry::stage2(granule, sl0, input)
                .map(|g| (g.start_level, g.root_index_bits));
            assert_eq!(got, expected, "granule {granule} SL0 {sl0} input {input}");
        }
    }

    fn stage2_ste() -> [u64; 8] {
        let mut w = [0u64; 8];
        w[0] = 1 | (6 << 1);
        // VMID 5, T0SZ 25, SL0 1, 4K, PS 44 bits, AA64, S2R.
        w[2] = 5 | (25 << 32) | (1 << 38) | (4 << 48) | (1 << 51) | (1 << 58);
        w[3] = 0x8000_0000;
        w
    }

    #[test]
    fn a_stage2_ste_decodes_and_each_broken_rule_is_named() {
        let f = Features::QEMU_VIRT;
        let ste = decode_ste(stage2_ste(), &f, false).unwrap();
        let s2 = ste.stage2.unwrap();
        assert_eq!((s2.vmid, s2.ttb, s2.output_bits), (5, 0x8000_0000, 44));
        assert!(s2.record && !s2.stall);
        type Mutation = fn(&mut [u64; 8]);
        let cases: &[(Mutation, SteIllegal)] = &[
            (|w| w[0] &= !1, SteIllegal::NotValid),
            (|w| w[2] &= !(1 << 51), SteIllegal::Stage2AArch32),
            (|w| w[2] |= 1 << 57, SteIllegal::Stage2StallUnsupported),
            (|w| w[2] |= 3 << 46, SteIllegal::Stage2Granule),
            (|w| w[3] = 1 << 45, SteIllegal::Stage2TableOutOfRange),
            (
                |w| w[2] = (w[2] & !(0x3f << 32)) | (40 << 32),
                SteIllegal::Stage2InputSize,
            ),
            (|w| w[2] &= !(3 << 38), SteIllegal::Stage2StartLevel),
            (|w| w[2] |= 1 << 52, SteIllegal::Stage2Endianness),
            (|w| w[2] |= 1 << 56, SteIllegal::Stage2HardwareUpdate),
        ];
        for (mutate, expected) in cases {
            let mut w = stage2_ste();
            mutate(&mut w);
            assert_eq!(decode_ste(w, &f, false), Err(*expected));
        }
    }

    #[test]
    fn stage1_ste_rules_depend_on_the_features() {
        let mut w = [0u64; 8];
        w[0] = 1 | (5 << 1) | 0x4000_0000 | (4 << 59) | (1 << 4);
        // QEMU: no substreams, so S1CDMax and S1Fmt are ignored.
        let qemu = decode_ste(w, &Features::QEMU_VIRT, false).unwrap();
        assert_eq!(qemu.table.unwrap().cdmax, 0);
        assert_eq!(qemu.table.unwrap().format, CdTableFormat::Linear);
        let full = decode_ste(w, &Features::FULL, false).unwrap();
        assert_eq!(full.table.unwrap().cdmax, 4);
        assert_eq!(
            full.table.unwrap().format,
            CdTableFormat::TwoLevel { leaf_bits: 6 }
        );
        let no_cd2l = Features {
            cd2l: false,
            ..Features::FULL
        };
        assert_eq!(
            decode_ste(w, &no_cd2l, false),
            Err(SteIllegal::TwoLevelCdTableUnsupported)
        );
        w[0] |= 21 << 59;
        assert_eq!(
            decode_ste(w, &Features::FULL, false),
            Err(SteIllegal::CdMaxTooLarge)
        );
        // S1STALLD only where the SMMU can choose.
        let mut w = [0u64; 8];
        w[0] = 1 | (5 << 1);
        w[1] = 1 << 27;
        assert_eq!(
            decode_ste(w, &Features::QEMU_VIRT, false),
            Err(SteIllegal::StallDisableWithoutStallModel)
        );
        assert!(decode_ste(w, &Features::FULL, false).is_ok());
    }

    #[test]
    fn l1_descriptors() {
        assert_eq!(decode_l1std(0, 8), None);
        assert_eq!(decode_l1std(0x8000_0000 | 9, 8), Some((0x8000_0000, 256)));
        assert_eq!(
            decode_l1std(0x8000_0000 | 10, 8),
            None,
            "span above split + 1"
        );
        // L2Ptr is aligned to the level-2 table's size: bit 6 of a 2-STE table is ignored.
        assert_eq!(decode_l1std(0x8000_00c0 | 2, 8), Some((0x8000_0080, 2)));
        assert_eq!(decode_l1cd(0x1234_5000), None);
        assert_eq!(decode_l1cd(0x1234_5001), Some(0x1234_5000));
    }

    fn cd() -> [u64; 8] {
        let mut w = [0u64; 8];
        // T0SZ 25, 4K, EPD1, V, IPS 44, AA64, R, A, ASID 7.
        w[0] =
            25 | (1 << 30) | (1 << 31) | (4 << 32) | (1 << 41) | (1 << 45) | (1 << 46) | (7 << 48);
        w[1] = 0x9000_0000;
        w
    }

    #[test]
    fn a_cd_decodes_and_each_broken_rule_is_named() {
        let f = Features::QEMU_VIRT;
        let mut ste_words = [0u64; 8];
        ste_words[0] = 1 | (5 << 1);
        let ste = decode_ste(ste_words, &f, false).unwrap();
        let decoded = decode_cd(cd(), &ste, &f).unwrap();
        assert_eq!(decoded.asid, 7);
        assert_eq!(decoded.ttb0.unwrap().ttb, 0x9000_0000);
        assert!(decoded.ttb1.is_none());
        type Mutation = fn(&mut [u64; 8]);
        let cases: &[(Mutation, CdIllegal)] = &[
            (|w| w[0] &= !(1 << 31), CdIllegal::NotValid),
            (|w| w[0] &= !(1 << 46), CdIllegal::RazWiUnsupported),
            (|w| w[0] |= 1 << 44, CdIllegal::StallUnsupported),
            (|w| w[0] |= 1 << 15, CdIllegal::Endianness),
            (|w| w[0] &= !(1 << 41), CdIllegal::AArch32),
            (|w| w[0] |= 1 << 43, CdIllegal::HardwareUpdate),
            (|w| w[0] = (w[0] & !0x3f) | 40, CdIllegal::InputSize),
            (|w| w[0] |= 3 << 6, CdIllegal::Granule),
            (|w| w[1] = 1 << 44, CdIllegal::TableOutOfRange),
        ];
        for (mutate, expected) in cases {
            let mut w = cd();
            mutate(&mut w);
            assert_eq!(decode_cd(w, &ste, &f), Err(*expected));
        }
    }
}
