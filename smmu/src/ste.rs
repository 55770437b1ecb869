//! Stream table entries (STE) and level-1 stream table descriptors, as bits.
//!
//! This module owns the layout of an STE (64 bytes) and of a level-1 descriptor (8 bytes): one
//! accessor per field, with the architecture's name and bit range, and the decoding of every
//! enumerated field. It does not decide what an STE should contain (the driver's "make"
//! functions and `nested`'s validator do) nor how it is written to memory (the driver's hitless
//! "install" sequence does); both build on the [`Field`](crate::field::Field) constants and
//! accessors here.

use static_assertions::const_assert_eq;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::field::{address_field, enum_field, flag_field, id_field, total_enum_field, uint_field};
use crate::ids::{Ipa, PhysAddr, Vmid};
use crate::translation::{AddressSize, Cacheability, Granule, Shareability};

/// STE.Config: which stages translate the stream's transactions.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum StreamConfig {
    /// 0b0xx: abort every transaction, record no event. Encoded as 0b000.
    Abort,
    /// 0b100: both stages bypassed.
    Bypass,
    /// 0b101: stage 1 translates, stage 2 bypassed.
    Stage1,
    /// 0b110: stage 1 bypassed, stage 2 translates.
    Stage2,
    /// 0b111: stage 1 nested over stage 2.
    Nested,
}

impl StreamConfig {
    /// Decodes the 3-bit field; every 0b0xx value means abort.
    #[must_use]
    pub const fn from_encoding(encoding: u8) -> Self {
        match encoding & 7 {
            4 => Self::Bypass,
            5 => Self::Stage1,
            6 => Self::Stage2,
            7 => Self::Nested,
            _ => Self::Abort,
        }
    }

    /// The 3-bit field value (0b000 for abort).
    #[must_use]
    pub const fn encoding(self) -> u8 {
        match self {
            Self::Abort => 0,
            Self::Bypass => 4,
            Self::Stage1 => 5,
            Self::Stage2 => 6,
            Self::Nested => 7,
        }
    }

    /// Whether stage 1 translates (Stage1 or Nested).
    #[must_use]
    pub const fn stage1_enabled(self) -> bool {
        matches!(self, Self::Stage1 | Self::Nested)
    }

    /// Whether stage 2 translates (Stage2 or Nested).
    #[must_use]
    pub const fn stage2_enabled(self) -> bool {
        matches!(self, Self::Stage2 | Self::Nested)
    }
}

/// STE.S1Fmt: the shape of the stream's CD table.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum S1Fmt {
    /// A linear array of CDs indexed by substream ID (0).
    Linear,
    /// Two levels, 4 KiB leaf tables of 64 CDs (1).
    TwoLevel4K,
    /// Two levels, 64 KiB leaf tables of 1024 CDs (2).
    TwoLevel64K,
}

impl S1Fmt {
    /// Decodes the 2-bit field; 3 is reserved.
    #[must_use]
    pub const fn from_encoding(encoding: u8) -> Option<Self> {
        match encoding {
            0 => Some(Self::Linear),
            1 => Some(Self::TwoLevel4K),
            2 => Some(Self::TwoLevel64K),
            _ => None,
        }
    }

    /// The 2-bit field value.
    #[must_use]
    pub const fn encoding(self) -> u8 {
        self as u8
    }
}

/// STE.S1DSS: what happens to transactions without a substream ID when the stream has a CD
/// table (S1CDMax != 0).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum S1Dss {
    /// Terminate them, recording F_STREAM_DISABLED (0).
    Terminate,
    /// Let them bypass stage 1 (1).
    Bypass,
    /// Translate them with the CD of substream 0 (2); substream 0 itself is then not usable.
    Substream0,
}

impl S1Dss {
    /// Decodes the 2-bit field; 3 is reserved.
    #[must_use]
    pub const fn from_encoding(encoding: u8) -> Option<Self> {
        match encoding {
            0 => Some(Self::Terminate),
            1 => Some(Self::Bypass),
            2 => Some(Self::Substream0),
            _ => None,
        }
    }

    /// The 2-bit field value.
    #[must_use]
    pub const fn encoding(self) -> u8 {
        self as u8
    }
}

/// STE.EATS: whether the stream's ATS translation requests are served.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Eats {
    /// ATS requests and translated transactions are aborted (0).
    Abort,
    /// Full ATS: requests get the complete translation (1).
    Translate,
    /// Split-stage ATS: the ATC holds stage-1 results and stage 2 is applied on use (2).
    SplitStage,
}

impl Eats {
    /// Decodes the 2-bit field; 3 is reserved.
    #[must_use]
    pub const fn from_encoding(encoding: u8) -> Option<Self> {
        match encoding {
            0 => Some(Self::Abort),
            1 => Some(Self::Translate),
            2 => Some(Self::SplitStage),
            _ => None,
        }
    }

    /// The 2-bit field value.
    #[must_use]
    pub const fn encoding(self) -> u8 {
        self as u8
    }
}

/// STE.STRW: the translation regime (stream world) of stage-1 translation for this stream.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum StreamWorld {
    /// EL1/EL0 (0).
    El1,
    /// EL2 (2), needs IDR0.HYP.
    El2,
    /// EL2 with E2H (3), needs IDR0.HYP.
    El2E2h,
}

impl StreamWorld {
    /// Decodes the 2-bit field. 1 (EL3) exists only for Secure streams, so in the Non-secure
    /// STEs this crate deals in it is reserved.
    #[must_use]
    pub const fn from_encoding(encoding: u8) -> Option<Self> {
        match encoding {
            0 => Some(Self::El1),
            2 => Some(Self::El2),
            3 => Some(Self::El2E2h),
            _ => None,
        }
    }

    /// The 2-bit field value.
    #[must_use]
    pub const fn encoding(self) -> u8 {
        match self {
            Self::El1 => 0,
            Self::El2 => 2,
            Self::El2E2h => 3,
        }
    }
}

/// An STE or L1 descriptor field holding an encoding the architecture does not define.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SteError {
    /// S1Fmt is 3 (reserved).
    ReservedS1Fmt(u8),
    /// S1DSS is 3 (reserved).
    ReservedS1Dss(u8),
    /// S1CSH is 1 (reserved shareability).
    ReservedS1Csh(u8),
    /// EATS is 3 (reserved).
    ReservedEats(u8),
    /// STRW is 1 (EL3, Secure only).
    ReservedStrw(u8),
    /// S2SH0 is 1 (reserved shareability).
    ReservedS2Sh0(u8),
    /// S2TG is 3 (reserved granule).
    ReservedS2Tg(u8),
    /// S2PS is 0b111: 56 bits from SMMUv3.4 (Reserved before), for VMSAv9-128 tables only;
    /// the hypervisor's VMSAv8-64 stage-2 tables never need it.
    ReservedS2Ps(u8),
}

/// A stream table entry: 8 little-endian 64-bit words.
#[derive(
    Clone, Copy, PartialEq, Eq, Default, Debug, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(transparent)]
pub struct Ste([u64; 8]);

const_assert_eq!(core::mem::size_of::<Ste>(), 64);

impl Ste {
    /// An all-zero STE: V=0, so the SMMU reports C_BAD_STE for the stream.
    pub const INVALID: Ste = Ste([0; 8]);

    /// The STE with these words. Public because a guest's STEs must be decoded; a value made
    /// here is data, and reaches the physical SMMU only through
    /// [`PhysicalSte::check`](crate::entry::PhysicalSte::check), the physical guard.
    #[must_use]
    pub const fn from_words(words: [u64; 8]) -> Self {
        Self(words)
    }

    /// The STE's words.
    #[must_use]
    pub const fn words(&self) -> [u64; 8] {
        self.0
    }

    // Word 0.
    flag_field!(
        /// V (word 0 bit 0): the STE is valid.
        V, v, set_v, 0, 0
    );
    total_enum_field!(
        /// Config (word 0 bits 3:1).
        CONFIG, config, set_config, StreamConfig, 0, 3, 1
    );
    enum_field!(
        /// S1Fmt (word 0 bits 5:4): CD table format.
        S1FMT, s1fmt, set_s1fmt, S1Fmt, SteError, SteError::ReservedS1Fmt, 0, 5, 4
    );
    address_field!(
        /// S1ContextPtr (word 0 bits 51:6): the CD table. In a nested STE this is an IPA
        /// translated by the stream's stage 2; in a stage-1-only STE the same bits are a
        /// physical address. The architecture reserves bits up to 55 for larger addresses.
        S1_CONTEXT_PTR, s1_context_ptr, set_s1_context_ptr, Ipa, 0, 51, 6
    );
    uint_field!(
        /// S1CDMax (word 0 bits 63:59): log2 of the number of CDs; 0 means one CD and no
        /// substreams.
        S1CDMAX, s1cdmax, set_s1cdmax, u8, 0, 63, 59
    );

    // Word 1.
    enum_field!(
        /// S1DSS (word 1 bits 1:0): the default substream behaviour.
        S1DSS, s1dss, set_s1dss, S1Dss, SteError, SteError::ReservedS1Dss, 1, 1, 0
    );
    total_enum_field!(
        /// S1CIR (word 1 bits 3:2): inner cacheability of CD table fetches.
        S1CIR, s1cir, set_s1cir, Cacheability, 1, 3, 2
    );
    total_enum_field!(
        /// S1COR (word 1 bits 5:4): outer cacheability of CD table fetches.
        S1COR, s1cor, set_s1cor, Cacheability, 1, 5, 4
    );
    enum_field!(
        /// S1CSH (word 1 bits 7:6): shareability of CD table fetches.
        S1CSH, s1csh, set_s1csh, Shareability, SteError, SteError::ReservedS1Csh, 1, 7, 6
    );
    flag_field!(
        /// DCP (word 1 bit 17): directed cache prefetch.
        DCP, dcp, set_dcp, 1, 17
    );
    flag_field!(
        /// PPAR (word 1 bit 18): PRG response needs a PASID.
        PPAR, ppar, set_ppar, 1, 18
    );
    flag_field!(
        /// MEV (word 1 bit 19): merge events arising from the same fault.
        MEV, mev, set_mev, 1, 19
    );
    flag_field!(
        /// S2FWB (word 1 bit 25): stage-2 forced write-back.
        S2FWB, s2fwb, set_s2fwb, 1, 25
    );
    flag_field!(
        /// S1STALLD (word 1 bit 27): stage-1 stalls disabled.
        S1STALLD, s1stalld, set_s1stalld, 1, 27
    );
    enum_field!(
        /// EATS (word 1 bits 29:28): ATS behaviour.
        EATS, eats, set_eats, Eats, SteError, SteError::ReservedEats, 1, 29, 28
    );
    enum_field!(
        /// STRW (word 1 bits 31:30): stage-1 translation regime.
        STRW, strw, set_strw, StreamWorld, SteError, SteError::ReservedStrw, 1, 31, 30
    );
    uint_field!(
        /// MemAttr (word 1 bits 35:32): memory type override.
        MEMATTR, memattr, set_memattr, u8, 1, 35, 32
    );
    flag_field!(
        /// MTCFG (word 1 bit 36): apply MemAttr.
        MTCFG, mtcfg, set_mtcfg, 1, 36
    );
    uint_field!(
        /// ALLOCCFG (word 1 bits 40:37): allocation hint override.
        ALLOCCFG, alloccfg, set_alloccfg, u8, 1, 40, 37
    );
    uint_field!(
        /// SHCFG (word 1 bits 45:44): shareability override (1 uses the incoming value).
        SHCFG, shcfg, set_shcfg, u8, 1, 45, 44
    );
    uint_field!(
        /// NSCFG (word 1 bits 47:46): security override (Secure streams only).
        NSCFG, nscfg, set_nscfg, u8, 1, 47, 46
    );
    uint_field!(
        /// PRIVCFG (word 1 bits 49:48): privilege override.
        PRIVCFG, privcfg, set_privcfg, u8, 1, 49, 48
    );
    uint_field!(
        /// INSTCFG (word 1 bits 51:50): instruction/data override.
        INSTCFG, instcfg, set_instcfg, u8, 1, 51, 50
    );

    // Word 2.
    id_field!(
        /// S2VMID (word 2 bits 15:0): the VMID tagging this stream's stage-2 TLB entries.
        S2VMID, s2vmid, set_s2vmid, Vmid(u16), 2, 15, 0
    );
    uint_field!(
        /// S2T0SZ (word 2 bits 37:32): stage-2 input size is 64 - S2T0SZ bits.
        S2T0SZ, s2t0sz, set_s2t0sz, u8, 2, 37, 32
    );
    uint_field!(
        /// S2SL0 (word 2 bits 39:38): stage-2 starting level (meaning depends on S2TG).
        S2SL0, s2sl0, set_s2sl0, u8, 2, 39, 38
    );
    total_enum_field!(
        /// S2IR0 (word 2 bits 41:40): inner cacheability of stage-2 walks.
        S2IR0, s2ir0, set_s2ir0, Cacheability, 2, 41, 40
    );
    total_enum_field!(
        /// S2OR0 (word 2 bits 43:42): outer cacheability of stage-2 walks.
        S2OR0, s2or0, set_s2or0, Cacheability, 2, 43, 42
    );
    enum_field!(
        /// S2SH0 (word 2 bits 45:44): shareability of stage-2 walks.
        S2SH0, s2sh0, set_s2sh0, Shareability, SteError, SteError::ReservedS2Sh0, 2, 45, 44
    );
    uint_field!(
        /// S2TG raw (word 2 bits 47:46); see [`Ste::s2tg`].
        S2TG, s2tg_raw, set_s2tg_raw, u8, 2, 47, 46
    );
    enum_field!(
        /// S2PS (word 2 bits 50:48): stage-2 output size.
        S2PS, s2ps, set_s2ps, AddressSize, SteError, SteError::ReservedS2Ps, 2, 50, 48
    );
    flag_field!(
        /// S2AA64 (word 2 bit 51): stage-2 tables are AArch64. QEMU asserts if stage 2 is
        /// enabled with this clear, so a hypervisor-made STE must always set it.
        S2AA64, s2aa64, set_s2aa64, 2, 51
    );
    flag_field!(
        /// S2ENDI (word 2 bit 52): stage-2 tables are big-endian.
        S2ENDI, s2endi, set_s2endi, 2, 52
    );
    flag_field!(
        /// S2AFFD (word 2 bit 53): stage-2 access flag faults disabled.
        S2AFFD, s2affd, set_s2affd, 2, 53
    );
    flag_field!(
        /// S2PTW (word 2 bit 54): stage-1 walks to device memory fault at stage 2.
        S2PTW, s2ptw, set_s2ptw, 2, 54
    );
    flag_field!(
        /// S2HD (word 2 bit 55): stage-2 hardware dirty update.
        S2HD, s2hd, set_s2hd, 2, 55
    );
    flag_field!(
        /// S2HA (word 2 bit 56): stage-2 hardware access flag update.
        S2HA, s2ha, set_s2ha, 2, 56
    );
    flag_field!(
        /// S2S (word 2 bit 57): stage-2 faults stall.
        S2S, s2s, set_s2s, 2, 57
    );
    flag_field!(
        /// S2R (word 2 bit 58): stage-2 faults are recorded as events.
        S2R, s2r, set_s2r, 2, 58
    );

    // Word 3.
    address_field!(
        /// S2TTB (word 3 bits 51:4): the stage-2 table base, a physical address.
        S2TTB, s2ttb, set_s2ttb, PhysAddr, 3, 51, 4
    );

    /// S2TG (word 2 bits 47:46): the stage-2 granule, TG0-style encoding.
    ///
    /// # Errors
    ///
    /// [`SteError::ReservedS2Tg`] for 3.
    pub const fn s2tg(&self) -> Result<Granule, SteError> {
        let raw = self.s2tg_raw();
        match Granule::from_tg0_encoding(raw) {
            Some(g) => Ok(g),
            None => Err(SteError::ReservedS2Tg(raw)),
        }
    }

    /// Sets S2TG.
    pub const fn set_s2tg(&mut self, granule: Granule) {
        self.set_s2tg_raw(granule.tg0_encoding());
    }

    /// Checks that every enumerated field the SMMU reads for this STE's Config holds a defined
    /// encoding. An invalid (V=0) STE has nothing to check.
    ///
    /// # Errors
    ///
    /// The [`SteError`] of the first undefined field, in word order.
    pub const fn check_encodings(&self) -> Result<(), SteError> {
        if !self.v() {
            return Ok(());
        }
        let config = self.config();
        if config.stage1_enabled() {
            if let Err(e) = self.s1fmt() {
                return Err(e);
            }
            if let Err(e) = self.s1dss() {
                return Err(e);
            }
            if let Err(e) = self.s1csh() {
                return Err(e);
            }
            if let Err(e) = self.strw() {
                return Err(e);
            }
        }
        if !matches!(config, StreamConfig::Abort)
            && let Err(e) = self.eats()
        {
            return Err(e);
        }
        if config.stage2_enabled() {
            if let Err(e) = self.s2sh0() {
                return Err(e);
            }
            if let Err(e) = self.s2tg() {
                return Err(e);
            }
            if let Err(e) = self.s2ps() {
                return Err(e);
            }
        }
        Ok(())
    }
}

/// A level-1 stream table descriptor: one 64-bit word pointing at an array of STEs.
#[derive(
    Clone, Copy, PartialEq, Eq, Default, Debug, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(transparent)]
pub struct StreamTableL1Descriptor([u64; 1]);

const_assert_eq!(core::mem::size_of::<StreamTableL1Descriptor>(), 8);

impl StreamTableL1Descriptor {
    /// A descriptor with SPAN=0: no level-2 table, every stream in its range is invalid.
    pub const INVALID: Self = Self([0]);

    /// The descriptor with this raw value.
    #[must_use]
    pub const fn from_raw(raw: u64) -> Self {
        Self([raw])
    }

    /// The raw value.
    #[must_use]
    pub const fn raw(&self) -> u64 {
        self.0[0]
    }

    uint_field!(
        /// SPAN (bits 4:0): the level-2 table holds 2^(SPAN-1) STEs; 0 means no table.
        SPAN, span, set_span, u8, 0, 4, 0
    );
    address_field!(
        /// L2Ptr (bits 51:6): the level-2 table's physical address.
        L2_PTR, l2_ptr, set_l2_ptr, PhysAddr, 0, 51, 6
    );

    /// The number of STEs the level-2 table holds, or 0 if SPAN is 0.
    #[must_use]
    pub const fn ste_count(&self) -> u64 {
        match self.span() {
            0 => 0,
            span => 1 << (span - 1),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::field::Field;

    /// (field, value) pairs with the raw word that value must produce, from the reference sheet.
    #[test]
    fn each_field_lands_at_the_reference_sheet_position() {
        let cases: &[(Field, usize, u32, u32)] = &[
            (Ste::V, 0, 0, 0),
            (Ste::CONFIG, 0, 3, 1),
            (Ste::S1FMT, 0, 5, 4),
            (Ste::S1_CONTEXT_PTR, 0, 51, 6),
            (Ste::S1CDMAX, 0, 63, 59),
            (Ste::S1DSS, 1, 1, 0),
            (Ste::S1CIR, 1, 3, 2),
            (Ste::S1COR, 1, 5, 4),
            (Ste::S1CSH, 1, 7, 6),
            (Ste::DCP, 1, 17, 17),
            (Ste::PPAR, 1, 18, 18),
            (Ste::MEV, 1, 19, 19),
            (Ste::S2FWB, 1, 25, 25),
            (Ste::S1STALLD, 1, 27, 27),
            (Ste::EATS, 1, 29, 28),
            (Ste::STRW, 1, 31, 30),
            (Ste::MEMATTR, 1, 35, 32),
            (Ste::MTCFG, 1, 36, 36),
            (Ste::ALLOCCFG, 1, 40, 37),
            (Ste::SHCFG, 1, 45, 44),
            (Ste::NSCFG, 1, 47, 46),
            (Ste::PRIVCFG, 1, 49, 48),
            (Ste::INSTCFG, 1, 51, 50),
            (Ste::S2VMID, 2, 15, 0),
            (Ste::S2T0SZ, 2, 37, 32),
            (Ste::S2SL0, 2, 39, 38),
            (Ste::S2IR0, 2, 41, 40),
            (Ste::S2OR0, 2, 43, 42),
            (Ste::S2SH0, 2, 45, 44),
            (Ste::S2TG, 2, 47, 46),
            (Ste::S2PS, 2, 50, 48),
            (Ste::S2AA64, 2, 51, 51),
            (Ste::S2ENDI, 2, 52, 52),
            (Ste::S2AFFD, 2, 53, 53),
            (Ste::S2PTW, 2, 54, 54),
            (Ste::S2HD, 2, 55, 55),
            (Ste::S2HA, 2, 56, 56),
            (Ste::S2S, 2, 57, 57),
            (Ste::S2R, 2, 58, 58),
            (Ste::S2TTB, 3, 51, 4),
        ];
        for &(field, word, hi, lo) in cases {
            assert_eq!(
                (field.word(), field.hi(), field.lo()),
                (word, hi, lo),
                "{field:?}"
            );
        }
    }

    #[test]
    fn linux_nesting_allowlist_is_the_union_of_the_guest_settable_fields() {
        // The reference sheet's Linux masks, rebuilt from field names: a cross-check that the
        // names and positions agree with an independent implementation.
        let word0 = [
            Ste::V,
            Ste::CONFIG,
            Ste::S1FMT,
            Ste::S1_CONTEXT_PTR,
            Ste::S1CDMAX,
        ]
        .iter()
        .fold(0, |m, f| m | f.mask());
        let word1 = [
            Ste::S1DSS,
            Ste::S1CIR,
            Ste::S1COR,
            Ste::S1CSH,
            Ste::S1STALLD,
            Ste::EATS,
        ]
        .iter()
        .fold(0, |m, f| m | f.mask());
        assert_eq!(word0, 0xF80F_FFFF_FFFF_FFFF);
        assert_eq!(word1, 0x3800_00FF);
    }

    #[test]
    fn a_nested_ste_built_field_by_field_has_the_expected_words() {
        let mut ste = Ste::INVALID;
        ste.set_v(true);
        ste.set_config(StreamConfig::Nested);
        ste.set_s1fmt(S1Fmt::TwoLevel64K);
        ste.set_s1_context_ptr(Ipa(0x1_2345_6780));
        ste.set_s1cdmax(20);
        ste.set_s1dss(S1Dss::Substream0);
        ste.set_eats(Eats::Translate);
        ste.set_s2vmid(Vmid(0xbeef));
        ste.set_s2t0sz(24);
        ste.set_s2sl0(1);
        ste.set_s2ir0(Cacheability::WriteBackWriteAllocate);
        ste.set_s2or0(Cacheability::WriteBackWriteAllocate);
        ste.set_s2sh0(Shareability::InnerShareable);
        ste.set_s2tg(Granule::Size4K);
        ste.set_s2ps(AddressSize::Bits44);
        ste.set_s2aa64(true);
        ste.set_s2r(true);
        ste.set_s2ttb(PhysAddr(0x4321_0000));
        let w = ste.words();
        assert_eq!(w[0], 1 | 7 << 1 | 2 << 4 | 0x1_2345_6780 | 20 << 59);
        assert_eq!(w[1], 2 | 1 << 28);
        assert_eq!(
            w[2],
            0xbeef | 24 << 32 | 1 << 38 | 1 << 40 | 1 << 42 | 3 << 44 | 4 << 48 | 1 << 51 | 1 << 58
        );
        assert_eq!(w[3], 0x4321_0000);
        assert_eq!(ste.check_encodings(), Ok(()));
        assert_eq!(ste.config(), StreamConfig::Nested);
        assert_eq!(ste.s2vmid(), Vmid(0xbeef));
        assert_eq!(ste.s2tg(), Ok(Granule::Size4K));
        assert_eq!(ste.s1_context_ptr(), Ipa(0x1_2345_6780));
    }

    #[test]
    fn every_config_value_below_four_means_abort() {
        for raw in 0..8u8 {
            let want = match raw {
                4 => StreamConfig::Bypass,
                5 => StreamConfig::Stage1,
                6 => StreamConfig::Stage2,
                7 => StreamConfig::Nested,
                _ => StreamConfig::Abort,
            };
            let ste = Ste::from_words([u64::from(raw) << 1, 0, 0, 0, 0, 0, 0, 0]);
            assert_eq!(ste.config(), want, "Config {raw:#05b}");
        }
        assert_eq!(StreamConfig::Abort.encoding(), 0);
    }

    #[test]
    fn reserved_encodings_are_rejected_with_their_own_error() {
        let valid = |words: [u64; 8]| {
            let mut ste = Ste::from_words(words);
            ste.set_v(true);
            ste
        };
        let nested = 7 << 1;
        let cases = [
            (
                valid([nested | 3 << 4, 0, 0, 0, 0, 0, 0, 0]),
                SteError::ReservedS1Fmt(3),
            ),
            (
                valid([nested, 3, 0, 0, 0, 0, 0, 0]),
                SteError::ReservedS1Dss(3),
            ),
            (
                valid([nested, 1 << 6, 0, 0, 0, 0, 0, 0]),
                SteError::ReservedS1Csh(1),
            ),
            (
                valid([nested, 1 << 30, 0, 0, 0, 0, 0, 0]),
                SteError::ReservedStrw(1),
            ),
            (
                valid([nested, 3 << 28, 0, 0, 0, 0, 0, 0]),
                SteError::ReservedEats(3),
            ),
            (
                valid([nested, 0, 1 << 44, 0, 0, 0, 0, 0]),
                SteError::ReservedS2Sh0(1),
            ),
            (
                valid([nested, 0, 3 << 46, 0, 0, 0, 0, 0]),
                SteError::ReservedS2Tg(3),
            ),
            (
                valid([nested, 0, 7 << 48, 0, 0, 0, 0, 0]),
                SteError::ReservedS2Ps(7),
            ),
        ];
        for (ste, want) in cases {
            assert_eq!(ste.check_encodings(), Err(want));
        }
        // Fields the Config does not use are not checked: an S2-only STE ignores S1Fmt.
        assert_eq!(
            valid([6 << 1 | 3 << 4, 0, 0, 0, 0, 0, 0, 0]).check_encodings(),
            Ok(())
        );
        // Nor is anything in an invalid STE.
        assert_eq!(
            Ste::from_words([3 << 4, 3, 0, 0, 0, 0, 0, 0]).check_encodings(),
            Ok(())
        );
    }

    #[test]
    fn setters_drop_bits_outside_their_field_and_leave_neighbours() {
        let mut ste = Ste::from_words([u64::MAX; 8]);
        ste.set_s1cdmax(0);
        ste.set_s1_context_ptr(Ipa(u64::MAX));
        assert_eq!(ste.words()[0], !(0x1f << 59));
        ste.set_s2ttb(PhysAddr(0));
        assert_eq!(ste.words()[3], !0x000f_ffff_ffff_fff0);
    }

    #[test]
    fn l1_descriptor_fields_and_span() {
        let mut d = StreamTableL1Descriptor::INVALID;
        assert_eq!(d.ste_count(), 0);
        d.set_span(9);
        d.set_l2_ptr(PhysAddr(0x8_0000_4040));
        assert_eq!(d.raw(), 9 | 0x8_0000_4040);
        assert_eq!(d.ste_count(), 256);
        assert_eq!(d.l2_ptr(), PhysAddr(0x8_0000_4040));
        assert_eq!(StreamTableL1Descriptor::SPAN.mask(), 0x1f);
    }

    #[test]
    fn ste_bytes_are_the_little_endian_words() {
        let ste = Ste::from_words([0x0102_0304_0506_0708, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&ste.as_bytes()[..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        let back = Ste::read_from_bytes(ste.as_bytes()).unwrap();
        assert_eq!(back, ste);
    }
}
