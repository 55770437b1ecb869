//! "Make": pure functions from typed parameters to the STE or CD the hypervisor wants live.
//!
//! Nothing here touches memory the SMMU reads. Each kind of translation is first validated
//! against the SMMU's [`Features`] into a value of its own type ([`Stage2Translation`],
//! [`ContextTable`], [`Stage1Translation`]); the `make_*` functions then only place fields.
//! Every combination the hardware would reject (or, worse, mis-handle) is refused at
//! validation, with its own [`MakeError`] variant.
//!
//! Fields the hypervisor never lets vary are fixed here, each with its reason:
//!
//! - **S2AA64 = 1 on every entry with stage 2 enabled.** QEMU asserts (and aborts the whole
//!   machine) on a stage-2 STE with S2AA64=0, and this component only builds AArch64 stage-2
//!   tables. There is no parameter for it and both stage-2 `make` functions go through one
//!   private function that sets it, so such an STE cannot be made; the installer's guard
//!   ([`check_physical_ste`](super::install::check_physical_ste)) refuses one anyway.
//! - **CD: AA64 = 1, A = 1, R = 1, ASET = 1, EPD1 = 1.** AArch64 tables only; A=1 because an
//!   SMMU with TERM_MODEL=1 rejects A=0 (C_BAD_CD) and aborting is the answer a device should
//!   get anyway; R=1 so every stage-1 fault reaches the hypervisor's event queue, which decides
//!   what to forward; ASET=1 because these ASIDs are invalidated by commands, never by the
//!   CPUs' broadcast TLBI; EPD1=1 because a device address space has no upper (TTB1) half.
//! - **STE: SHCFG = 0b01 (use incoming shareability) where the SMMU has IDR1.ATTR_TYPES_OVR,
//!   and 0 where it has not.** Incoming shareability is what a bypassed stage should pass on;
//!   without the override the field is RES0 and the SMMU uses the incoming value anyway
//!   (IHI 0070 5.2, SHCFG), so writing 0b01 there sets a RES0 field (QEMU virt is such an
//!   SMMU). Every non-abort STE made for one SMMU carries the same value, so SHCFG never makes
//!   an update break (see [`super::used`]).
//! - **STE: MEV = 1 (fault records may be merged) on every non-abort STE.** Every stream the
//!   hypervisor programs carries a guest's device, and a guest can make its device fault at
//!   will: most of all through a vSMMU (nested STEs), where it also writes the stage-1 tables,
//!   but as easily by DMA to an unmapped IPA through stage 2 alone. Without merging, such a
//!   flood fills the one event queue the hypervisor shares among all streams and overflows
//!   it, losing other streams' records. MEV = 1 lets the SMMU coalesce repeats (IHI 0070
//!   7.3.1; never stall records); software must cope with merged records even with MEV = 0
//!   (5.2, 7.3.1), and a vSMMU may merge whatever the guest's STE says, so nothing a guest is
//!   owed is lost. The value is the same on every non-abort STE so that MEV, read by all of
//!   them, never turns an update into a break, as it would if only nested STEs had it (see
//!   [`super::used`]). QEMU ignores the field (its STE decoding has no MEV).
//! - **STE: STRW = EL1, EATS = 0 (no ATS).** Streams belong to EL1 guests; ATS is not offered
//!   yet.
//! - **S1STALLD = 1 when the SMMU can stall (STALL_MODEL = 0b00).** Stalls are not forwarded
//!   to guests, so a CD may not turn them on; on an SMMU that cannot stall S1STALLD = 1 is
//!   ILLEGAL (IHI 0070 5.5), so it is 0 there.
//! - **No entry for a stall-forced SMMU (STALL_MODEL = 0b10).** There every CD needs S = 1
//!   and every STE with stage 2 needs S2S = 1 (5.5), and each translation fault then holds
//!   the transaction until software resumes or terminates it. This component has no such
//!   path (it never issues CMD_RESUME or CMD_STALL_TERM), so a guest's device would hang on
//!   its first fault; every validator refuses with [`MakeError::StallForced`] rather than
//!   make entries the SMMU would reject, and the driver refuses the SMMU itself.

use crate::cd::Cd;
use crate::ids::{Asid, Ipa, PhysAddr, Vmid};
use crate::registers::{Features, StallModel, TranslationTableFormats};
use crate::ste::{S1Dss, S1Fmt, Ste, StreamConfig, StreamWorld};
use crate::translation::{AddressSize, Cacheability, Granule, Shareability};

/// An address a table pointer in an STE or a CD may hold: a [`PhysAddr`] where stage 1 is not
/// nested, an [`Ipa`] where it is (the SMMU then translates the pointer through stage 2).
///
/// The two kinds are kept apart by type so that a nested STE cannot be made with a CD table
/// given as a physical address, nor a stage-1-only STE with a guest's IPA.
pub trait TableAddress: Copy + core::fmt::Debug {
    /// The address's bits, as the descriptor field holds them.
    fn bits(self) -> u64;
}

impl TableAddress for PhysAddr {
    fn bits(self) -> u64 {
        self.0
    }
}

impl TableAddress for Ipa {
    fn bits(self) -> u64 {
        self.0
    }
}

/// The translation table level a walk starts at (STE.S2SL0 encodes it relative to the granule).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum StartLevel {
    /// Level 0.
    Level0,
    /// Level 1.
    Level1,
    /// Level 2.
    Level2,
    /// Level 3.
    Level3,
}

impl StartLevel {
    /// The level's number, 0 to 3.
    #[must_use]
    pub const fn number(self) -> u32 {
        match self {
            Self::Level0 => 0,
            Self::Level1 => 1,
            Self::Level2 => 2,
            Self::Level3 => 3,
        }
    }

    /// The S2SL0 encoding of this level for `granule` (VTCR_EL2.SL0 without the SL2
    /// extension), or `None` where that granule cannot start there: level 3 with 4 KiB, level 0
    /// with 16 KiB (needs 52-bit support) or 64 KiB.
    #[must_use]
    pub const fn s2sl0_encoding(self, granule: Granule) -> Option<u8> {
        match (granule, self) {
            (Granule::Size4K, Self::Level2) => Some(0),
            (Granule::Size4K, Self::Level1) => Some(1),
            (Granule::Size4K, Self::Level0) => Some(2),
            (Granule::Size16K | Granule::Size64K, Self::Level3) => Some(0),
            (Granule::Size16K | Granule::Size64K, Self::Level2) => Some(1),
            (Granule::Size16K | Granule::Size64K, Self::Level1) => Some(2),
            _ => None,
        }
    }
}

/// The value of MAIR_ELx a CD carries (CD.MAIR0 and CD.MAIR1): eight 8-bit memory attribute
/// encodings, selected by the AttrIndx of stage-1 descriptors.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Mair(pub u64);

/// Which table an address error is about.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TableKind {
    /// The stage-2 root table (STE.S2TTB), concatenated tables included.
    Stage2Root,
    /// The CD table (STE.S1ContextPtr).
    ContextDescriptorTable,
    /// The stage-1 root table (CD.TTB0).
    Stage1Root,
}

/// Why a translation could not be made. Each variant is one rule of the architecture (or of
/// this component) that the parameters break.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MakeError {
    /// A stage-2 translation was asked of an SMMU without stage 2 (IDR0.S2P = 0).
    Stage2NotImplemented,
    /// A stage-1 translation was asked of an SMMU without stage 1 (IDR0.S1P = 0).
    Stage1NotImplemented,
    /// The SMMU cannot walk AArch64 tables (IDR0.TTF), the only format this component builds.
    AArch64TablesNotImplemented,
    /// The SMMU does not implement this translation granule (IDR5.GRAN4K/16K/64K).
    GranuleNotImplemented(Granule),
    /// The VMID does not fit the SMMU's 8-bit VMIDs (IDR0.VMID16 = 0).
    VmidTooWide(Vmid),
    /// The ASID does not fit the SMMU's 8-bit ASIDs (IDR0.ASID16 = 0).
    AsidTooWide(Asid),
    /// T0SZ (or S2T0SZ) is outside 16..=39, so the input size is not 25 to 48 bits.
    InputSizeOutOfRange {
        /// The rejected T0SZ.
        t0sz: u8,
    },
    /// The stage-2 input size is larger than its output size (S2T0SZ against S2PS).
    InputLargerThanOutput {
        /// 64 - S2T0SZ.
        input_bits: u8,
        /// S2PS.
        output_size: AddressSize,
    },
    /// The output size (S2PS or IPS) is larger than the SMMU's (IDR5.OAS).
    OutputSizeNotImplemented {
        /// The size asked for.
        requested: AddressSize,
        /// IDR5.OAS.
        oas: AddressSize,
    },
    /// The granule cannot start a walk at this level (no S2SL0 encoding exists).
    StartLevelNotEncodable {
        /// S2TG.
        granule: Granule,
        /// The level asked for.
        start_level: StartLevel,
    },
    /// At this start level the input size would need no index bits, or more than 16
    /// concatenated root tables.
    StartLevelDoesNotFit {
        /// S2TG.
        granule: Granule,
        /// S2SL0 as a level.
        start_level: StartLevel,
        /// 64 - S2T0SZ.
        input_bits: u8,
    },
    /// A table address is not aligned as the architecture requires for that table.
    TableNotAligned {
        /// Which table.
        table: TableKind,
        /// The alignment it needs, in bytes.
        required_alignment: u64,
    },
    /// A table address lies beyond the address space it is looked up in.
    TableOutOfRange {
        /// Which table.
        table: TableKind,
        /// The size of that address space in bits.
        limit_bits: u8,
    },
    /// S1CDMax asks for more substream ID bits than the SMMU has (IDR1.SSIDSIZE).
    SubstreamsNotImplemented {
        /// The requested S1CDMax.
        s1cdmax: u8,
        /// IDR1.SSIDSIZE.
        ssidsize: u8,
    },
    /// A two-level CD table was asked of an SMMU without them (IDR0.CD2L = 0).
    TwoLevelContextTableNotImplemented,
    /// A two-level CD table was asked for a stream with a single CD (S1CDMax = 0), where the
    /// SMMU ignores S1Fmt: the parameters contradict each other.
    TwoLevelContextTableWithoutSubstreams,
    /// The SMMU forces the stall fault model (IDR0.STALL_MODEL = 0b10). It would need CD.S = 1
    /// and STE.S2S = 1 (IHI 0070 5.5: anything else is C_BAD_CD / C_BAD_STE), and then every
    /// translation fault would hold the transaction until software answers with CMD_RESUME or
    /// CMD_STALL_TERM, which this component never issues: a guest's device would hang on its
    /// first fault. Such an SMMU is not supported.
    StallForced,
}

/// The lowest alignment this component accepts for any translation table root. The
/// architecture lets a root smaller than 64 bytes be aligned to its size on some
/// implementations and requires 64 on others; 64 always is the portable choice.
const MIN_TABLE_ALIGNMENT: u64 = 64;

/// The smallest and largest T0SZ accepted: 48- down to 25-bit input sizes, the range every
/// granule supports without the 52-bit extensions (QEMU's C_BAD_CD check uses the same range).
const T0SZ_RANGE: core::ops::RangeInclusive<u8> = 16..=39;

const fn check_granule(granule: Granule, features: &Features) -> Result<(), MakeError> {
    let implemented = match granule {
        Granule::Size4K => features.gran4k,
        Granule::Size16K => features.gran16k,
        Granule::Size64K => features.gran64k,
    };
    if implemented {
        Ok(())
    } else {
        Err(MakeError::GranuleNotImplemented(granule))
    }
}

/// No entry is made for a stall-forced SMMU (see [`MakeError::StallForced`]).
const fn check_stall_model(features: &Features) -> Result<(), MakeError> {
    match features.stall_model {
        StallModel::StallForced => Err(MakeError::StallForced),
        StallModel::StallAndTerminate | StallModel::TerminateOnly => Ok(()),
    }
}

const fn check_aarch64(features: &Features) -> Result<(), MakeError> {
    match features.ttf {
        TranslationTableFormats::AArch64 | TranslationTableFormats::AArch32AndAArch64 => Ok(()),
        TranslationTableFormats::AArch32 => Err(MakeError::AArch64TablesNotImplemented),
    }
}

fn check_output_size(requested: AddressSize, features: &Features) -> Result<(), MakeError> {
    if requested > features.oas {
        return Err(MakeError::OutputSizeNotImplemented {
            requested,
            oas: features.oas,
        });
    }
    Ok(())
}

/// The input size 64 - `t0sz`, if `t0sz` is in the accepted range.
fn input_bits(t0sz: u8) -> Result<u8, MakeError> {
    if T0SZ_RANGE.contains(&t0sz) {
        Ok(64 - t0sz)
    } else {
        Err(MakeError::InputSizeOutOfRange { t0sz })
    }
}

/// Whether `address` (a table of at least one byte) lies below 2^`limit_bits`.
const fn fits(address: u64, limit_bits: u8) -> bool {
    limit_bits >= 64 || address >> limit_bits == 0
}

fn check_table(
    table: TableKind,
    address: u64,
    alignment: u64,
    limit_bits: u8,
) -> Result<(), MakeError> {
    if address & (alignment - 1) != 0 {
        return Err(MakeError::TableNotAligned {
            table,
            required_alignment: alignment,
        });
    }
    if !fits(address, limit_bits) {
        return Err(MakeError::TableOutOfRange { table, limit_bits });
    }
    Ok(())
}

/// Bits of input address the start level's table indexes: the input size minus the bits that
/// the levels below it and the page offset resolve. `None` if the start level resolves them
/// all already.
fn start_level_index_bits(granule: Granule, start_level: StartLevel, input: u8) -> Option<u32> {
    let page_shift = granule.page_shift();
    let stride = page_shift - 3;
    let resolved_below = page_shift + stride * (3 - start_level.number());
    match u32::from(input).checked_sub(resolved_below) {
        Some(0) | None => None,
        Some(bits) => Some(bits),
    }
}

/// A validated stage-2 translation: what an STE with Config = stage 2 or nested says about
/// stage 2. Only [`Stage2Translation::new`] makes one.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Stage2Translation {
    parameters: Stage2Parameters,
    s2sl0: u8,
    /// IDR1.ATTR_TYPES_OVR of the SMMU it was validated for: whether STE.SHCFG exists.
    attr_types_ovr: bool,
}

/// What a stage-2 translation is made of, field by field (STE word 2 and S2TTB).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[allow(clippy::struct_excessive_bools)] // One flag per architected STE bit.
pub struct Stage2Parameters {
    /// S2VMID: tags the stream's TLB entries; one per VM.
    pub vmid: Vmid,
    /// S2TTB: the stage-2 root table (the first of them, if concatenated).
    pub s2ttb: PhysAddr,
    /// S2T0SZ: the input (IPA) size is 64 - S2T0SZ bits; 16..=39 accepted.
    pub s2t0sz: u8,
    /// S2SL0: the level the walk starts at.
    pub s2sl0: StartLevel,
    /// S2TG: the granule.
    pub s2tg: Granule,
    /// S2PS: the output (physical) address size.
    pub s2ps: AddressSize,
    /// S2IR0: inner cacheability of the walk.
    pub s2ir0: Cacheability,
    /// S2OR0: outer cacheability of the walk.
    pub s2or0: Cacheability,
    /// S2SH0: shareability of the walk.
    pub s2sh0: Shareability,
    /// S2R: record stage-2 faults as events (the hypervisor's own to see).
    pub s2r: bool,
    /// S2AFFD: access flag faults disabled (stage-2 descriptors are made with AF=1 anyway).
    pub s2affd: bool,
    /// S2PTW: a stage-1 walk that reaches Device memory through stage 2 faults.
    pub s2ptw: bool,
}

impl Stage2Translation {
    /// Validates `parameters` for an SMMU with `features`.
    ///
    /// # Errors
    ///
    /// - [`MakeError::Stage2NotImplemented`], [`MakeError::StallForced`],
    ///   [`MakeError::AArch64TablesNotImplemented`], [`MakeError::GranuleNotImplemented`],
    ///   [`MakeError::VmidTooWide`], [`MakeError::OutputSizeNotImplemented`]: the SMMU cannot
    ///   do it.
    /// - [`MakeError::InputSizeOutOfRange`], [`MakeError::InputLargerThanOutput`],
    ///   [`MakeError::StartLevelNotEncodable`], [`MakeError::StartLevelDoesNotFit`]: the
    ///   geometry is inconsistent.
    /// - [`MakeError::TableNotAligned`], [`MakeError::TableOutOfRange`]: S2TTB is not where a
    ///   root table of that geometry can be.
    pub fn new(parameters: Stage2Parameters, features: &Features) -> Result<Self, MakeError> {
        if !features.s2p {
            return Err(MakeError::Stage2NotImplemented);
        }
        check_stall_model(features)?;
        check_aarch64(features)?;
        check_granule(parameters.s2tg, features)?;
        if !features.vmid16 && parameters.vmid.0 > 0xff {
            return Err(MakeError::VmidTooWide(parameters.vmid));
        }
        check_output_size(parameters.s2ps, features)?;
        let input = input_bits(parameters.s2t0sz)?;
        if input > parameters.s2ps.bits() {
            return Err(MakeError::InputLargerThanOutput {
                input_bits: input,
                output_size: parameters.s2ps,
            });
        }
        let Some(s2sl0) = parameters.s2sl0.s2sl0_encoding(parameters.s2tg) else {
            return Err(MakeError::StartLevelNotEncodable {
                granule: parameters.s2tg,
                start_level: parameters.s2sl0,
            });
        };
        // Stage 2 may concatenate up to 16 root tables: 4 index bits beyond one table's.
        let stride = parameters.s2tg.page_shift() - 3;
        let index_bits = start_level_index_bits(parameters.s2tg, parameters.s2sl0, input)
            .filter(|&bits| bits <= stride + 4)
            .ok_or(MakeError::StartLevelDoesNotFit {
                granule: parameters.s2tg,
                start_level: parameters.s2sl0,
                input_bits: input,
            })?;
        let root_bytes = 8u64 << index_bits;
        check_table(
            TableKind::Stage2Root,
            parameters.s2ttb.0,
            root_bytes.max(MIN_TABLE_ALIGNMENT),
            parameters.s2ps.bits(),
        )?;
        Ok(Self {
            parameters,
            s2sl0,
            attr_types_ovr: features.attr_types_ovr,
        })
    }

    /// The parameters it was made from.
    #[must_use]
    pub const fn parameters(&self) -> &Stage2Parameters {
        &self.parameters
    }

    /// The input (IPA) size in bits: addresses at or above 2^this fault at stage 2.
    #[must_use]
    pub const fn input_bits(&self) -> u8 {
        64 - self.parameters.s2t0sz
    }
}

/// What a stream's CD table is, field by field (the stage-1 part of STE words 0 and 1).
/// `A` is [`PhysAddr`] for a stage-1-only stream and [`Ipa`] for a nested one.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ContextTableParameters<A> {
    /// S1ContextPtr: the CD table (level 1 of it, if two-level).
    pub s1context_ptr: A,
    /// S1Fmt: linear or two-level.
    pub s1fmt: S1Fmt,
    /// S1CDMax: log2 of the number of CDs; 0 means one CD and no substreams.
    pub s1cdmax: u8,
    /// S1DSS: what transactions without a substream ID get when S1CDMax != 0.
    pub s1dss: S1Dss,
    /// S1CIR: inner cacheability of CD fetches.
    pub s1cir: Cacheability,
    /// S1COR: outer cacheability of CD fetches.
    pub s1cor: Cacheability,
    /// S1CSH: shareability of CD fetches.
    pub s1csh: Shareability,
}

/// A validated CD table description. Only [`ContextTable::new`] makes one.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ContextTable<A> {
    parameters: ContextTableParameters<A>,
    s1stalld: bool,
    /// IDR1.ATTR_TYPES_OVR of the SMMU it was validated for: whether STE.SHCFG exists.
    attr_types_ovr: bool,
}

impl<A: TableAddress> ContextTable<A> {
    /// Validates `parameters` for an SMMU with `features`.
    ///
    /// # Errors
    ///
    /// - [`MakeError::Stage1NotImplemented`], [`MakeError::StallForced`],
    ///   [`MakeError::SubstreamsNotImplemented`],
    ///   [`MakeError::TwoLevelContextTableNotImplemented`]: the SMMU cannot do it.
    /// - [`MakeError::TwoLevelContextTableWithoutSubstreams`]: S1Fmt contradicts S1CDMax.
    /// - [`MakeError::TableNotAligned`] (64 bytes, the field's granularity),
    ///   [`MakeError::TableOutOfRange`] (beyond IDR5.OAS).
    pub fn new(
        parameters: ContextTableParameters<A>,
        features: &Features,
    ) -> Result<Self, MakeError> {
        if !features.s1p {
            return Err(MakeError::Stage1NotImplemented);
        }
        check_stall_model(features)?;
        if parameters.s1cdmax > features.ssidsize {
            return Err(MakeError::SubstreamsNotImplemented {
                s1cdmax: parameters.s1cdmax,
                ssidsize: features.ssidsize,
            });
        }
        if !matches!(parameters.s1fmt, S1Fmt::Linear) {
            if parameters.s1cdmax == 0 {
                return Err(MakeError::TwoLevelContextTableWithoutSubstreams);
            }
            if !features.cd2l {
                return Err(MakeError::TwoLevelContextTableNotImplemented);
            }
        }
        check_table(
            TableKind::ContextDescriptorTable,
            parameters.s1context_ptr.bits(),
            MIN_TABLE_ALIGNMENT,
            features.oas.bits(),
        )?;
        Ok(Self {
            parameters,
            s1stalld: matches!(features.stall_model, StallModel::StallAndTerminate),
            attr_types_ovr: features.attr_types_ovr,
        })
    }

    /// The parameters it was made from.
    #[must_use]
    pub const fn parameters(&self) -> &ContextTableParameters<A> {
        &self.parameters
    }
}

/// What a stage-1 translation (one CD) is made of. `A` is [`PhysAddr`] for a stage-1-only
/// stream and [`Ipa`] for a nested one.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Stage1Parameters<A> {
    /// ASID: tags the address space's TLB entries.
    pub asid: Asid,
    /// TTB0: the stage-1 root table.
    pub ttb0: A,
    /// T0SZ: the input (IOVA) size is 64 - T0SZ bits; 16..=39 accepted.
    pub t0sz: u8,
    /// TG0: the granule.
    pub tg0: Granule,
    /// IR0: inner cacheability of the walk.
    pub ir0: Cacheability,
    /// OR0: outer cacheability of the walk.
    pub or0: Cacheability,
    /// SH0: shareability of the walk.
    pub sh0: Shareability,
    /// IPS: the output (intermediate physical) address size.
    pub ips: AddressSize,
    /// MAIR0/MAIR1: the attribute indirection.
    pub mair: Mair,
}

/// A validated stage-1 translation: the content of one CD. Only [`Stage1Translation::new`]
/// makes one.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Stage1Translation<A> {
    parameters: Stage1Parameters<A>,
}

impl<A: TableAddress> Stage1Translation<A> {
    /// Validates `parameters` for an SMMU with `features`.
    ///
    /// # Errors
    ///
    /// - [`MakeError::Stage1NotImplemented`], [`MakeError::StallForced`],
    ///   [`MakeError::AArch64TablesNotImplemented`], [`MakeError::GranuleNotImplemented`],
    ///   [`MakeError::AsidTooWide`], [`MakeError::OutputSizeNotImplemented`]: the SMMU cannot
    ///   do it.
    /// - [`MakeError::InputSizeOutOfRange`]: T0SZ outside 16..=39.
    /// - [`MakeError::TableNotAligned`] (the root table's size, at least 64 bytes),
    ///   [`MakeError::TableOutOfRange`] (TTB0 beyond IPS, which QEMU reports as C_BAD_CD).
    pub fn new(parameters: Stage1Parameters<A>, features: &Features) -> Result<Self, MakeError> {
        if !features.s1p {
            return Err(MakeError::Stage1NotImplemented);
        }
        check_stall_model(features)?;
        check_aarch64(features)?;
        check_granule(parameters.tg0, features)?;
        if !features.asid16 && parameters.asid.0 > 0xff {
            return Err(MakeError::AsidTooWide(parameters.asid));
        }
        check_output_size(parameters.ips, features)?;
        let input = input_bits(parameters.t0sz)?;
        // Stage 1 starts wherever the input size puts it, with one root table: its index takes
        // the bits left over after whole levels.
        let page_shift = parameters.tg0.page_shift();
        let stride = page_shift - 3;
        let index_bits = (u32::from(input) - page_shift - 1) % stride + 1;
        let root_bytes = 8u64 << index_bits;
        check_table(
            TableKind::Stage1Root,
            parameters.ttb0.bits(),
            root_bytes.max(MIN_TABLE_ALIGNMENT),
            parameters.ips.bits(),
        )?;
        Ok(Self { parameters })
    }

    /// The parameters it was made from.
    #[must_use]
    pub const fn parameters(&self) -> &Stage1Parameters<A> {
        &self.parameters
    }
}

/// An STE that aborts every transaction of the stream, silently (no event): what an
/// unassigned or disabled stream gets.
#[must_use]
pub const fn make_abort_ste() -> Ste {
    let mut ste = Ste::INVALID;
    ste.set_v(true);
    ste.set_config(StreamConfig::Abort);
    ste
}

/// An STE that lets the stream bypass both stages, with the incoming attributes, for an SMMU
/// with `features`. The hypervisor never installs one for a guest's stream (guest bypass
/// becomes stage 2); it exists for completeness and for tests of transitions from a
/// firmware-left bypass.
#[must_use]
pub const fn make_bypass_ste(features: &Features) -> Ste {
    let mut ste = make_abort_ste();
    ste.set_config(StreamConfig::Bypass);
    set_stream_attributes(&mut ste, features.attr_types_ovr);
    ste
}

/// An STE that translates the stream with `stage2` alone.
#[must_use]
pub fn make_stage2_ste(stage2: &Stage2Translation) -> Ste {
    let mut ste = make_abort_ste();
    ste.set_config(StreamConfig::Stage2);
    set_stream_attributes(&mut ste, stage2.attr_types_ovr);
    set_stage2(&mut ste, stage2);
    ste
}

/// An STE that translates the stream with the CDs of `table` alone. `vmid` tags the stage-1
/// TLB entries (the SMMU reads S2VMID for stage-1-only streams whenever it implements stage 2).
///
/// # Errors
///
/// [`MakeError::VmidTooWide`] if `vmid` does not fit the SMMU's VMIDs.
pub fn make_stage1_ste(
    table: &ContextTable<PhysAddr>,
    vmid: Vmid,
    features: &Features,
) -> Result<Ste, MakeError> {
    if !features.vmid16 && vmid.0 > 0xff {
        return Err(MakeError::VmidTooWide(vmid));
    }
    let mut ste = make_abort_ste();
    ste.set_config(StreamConfig::Stage1);
    set_stream_attributes(&mut ste, table.attr_types_ovr);
    set_stage1(&mut ste, table);
    ste.set_s2vmid(vmid);
    Ok(ste)
}

/// An STE that translates the stream with the CDs of `table` (found, like the tables the CDs
/// point at, through `stage2`) nested over `stage2`.
///
/// This is the vSMMU's STE: the guest owns the CDs and the stage-1 tables, so its device can
/// fault at will; MEV = 1, as on every non-abort STE, lets the SMMU merge the flood (see the
/// module docs).
///
/// # Errors
///
/// [`MakeError::TableOutOfRange`] if the CD table's IPA is beyond `stage2`'s input size: the
/// SMMU could never fetch a CD.
pub fn make_nested_ste(
    table: &ContextTable<Ipa>,
    stage2: &Stage2Translation,
) -> Result<Ste, MakeError> {
    if !fits(table.parameters.s1context_ptr.0, stage2.input_bits()) {
        return Err(MakeError::TableOutOfRange {
            table: TableKind::ContextDescriptorTable,
            limit_bits: stage2.input_bits(),
        });
    }
    let mut ste = make_abort_ste();
    ste.set_config(StreamConfig::Nested);
    // Both halves were validated for the SMMU the STE is for; should they disagree, SHCFG is
    // left RES0, which is right on every SMMU.
    set_stream_attributes(&mut ste, table.attr_types_ovr && stage2.attr_types_ovr);
    set_stage1(&mut ste, table);
    set_stage2(&mut ste, stage2);
    Ok(ste)
}

/// A valid CD translating with `translation`.
#[must_use]
pub fn make_cd<A: TableAddress>(translation: &Stage1Translation<A>) -> Cd {
    let p = &translation.parameters;
    let mut cd = Cd::INVALID;
    cd.set_t0sz(p.t0sz);
    cd.set_tg0(p.tg0);
    cd.set_ir0(p.ir0);
    cd.set_or0(p.or0);
    cd.set_sh0(p.sh0);
    cd.set_epd1(true);
    cd.set_ips(p.ips);
    cd.set_aa64(true);
    cd.set_r(true);
    cd.set_a(true);
    cd.set_aset(true);
    cd.set_asid(p.asid);
    // The field is typed as an IPA (what it holds under nesting); for a stage-1-only stream
    // the same bits are the physical address `A` carried.
    cd.set_ttb0(Ipa(p.ttb0.bits()));
    cd.set_mair0(crate::bits::low32(p.mair.0));
    cd.set_mair1(crate::bits::low32(p.mair.0 >> 32));
    cd.set_v(true);
    cd
}

/// Word-1 attributes every non-abort STE this crate makes carries (see the module docs), for
/// an SMMU whose IDR1.ATTR_TYPES_OVR is `attr_types_ovr`.
const fn set_stream_attributes(ste: &mut Ste, attr_types_ovr: bool) {
    // SHCFG 0b01: use the incoming shareability. RES0 without ATTR_TYPES_OVR (IHI 0070 5.2),
    // where the SMMU uses the incoming value anyway.
    if attr_types_ovr {
        ste.set_shcfg(SHCFG_USE_INCOMING);
    }
    // MEV: a guest-driven device must not be able to flood the shared event queue with
    // identical records (IHI 0070 5.2, 7.3.1; the module docs say why on every STE).
    ste.set_mev(true);
}

/// STE.SHCFG 0b01: use the incoming shareability attribute (IHI 0070 5.2).
const SHCFG_USE_INCOMING: u8 = 0b01;

fn set_stage1<A: TableAddress>(ste: &mut Ste, table: &ContextTable<A>) {
    let p = &table.parameters;
    ste.set_s1fmt(p.s1fmt);
    // The field is typed as an IPA because that is what it holds under nesting; for a
    // stage-1-only stream the same bits are the physical address `A` carried.
    ste.set_s1_context_ptr(Ipa(p.s1context_ptr.bits()));
    ste.set_s1cdmax(p.s1cdmax);
    ste.set_s1dss(p.s1dss);
    ste.set_s1cir(p.s1cir);
    ste.set_s1cor(p.s1cor);
    ste.set_s1csh(p.s1csh);
    ste.set_s1stalld(table.s1stalld);
    ste.set_strw(StreamWorld::El1);
}

/// The only place stage-2 fields are written: S2AA64 is set here, unconditionally, so no made
/// STE can enable stage 2 without it.
fn set_stage2(ste: &mut Ste, stage2: &Stage2Translation) {
    let p = &stage2.parameters;
    ste.set_s2vmid(p.vmid);
    ste.set_s2t0sz(p.s2t0sz);
    ste.set_s2sl0(stage2.s2sl0);
    ste.set_s2ir0(p.s2ir0);
    ste.set_s2or0(p.s2or0);
    ste.set_s2sh0(p.s2sh0);
    ste.set_s2tg(p.s2tg);
    ste.set_s2ps(p.s2ps);
    ste.set_s2aa64(true);
    ste.set_s2affd(p.s2affd);
    ste.set_s2ptw(p.s2ptw);
    ste.set_s2r(p.s2r);
    ste.set_s2ttb(p.s2ttb);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::entry::used::{cd_used_bits, ste_used_bits};
    use crate::registers::IdRegisters;

    pub(crate) fn qemu() -> Features {
        Features::decode(&IdRegisters::QEMU_VIRT).unwrap()
    }

    fn stage2_parameters() -> Stage2Parameters {
        Stage2Parameters {
            vmid: Vmid(1),
            s2ttb: PhysAddr(0x4010_0000),
            s2t0sz: 24,
            s2sl0: StartLevel::Level1,
            s2tg: Granule::Size4K,
            s2ps: AddressSize::Bits44,
            s2ir0: Cacheability::WriteBackWriteAllocate,
            s2or0: Cacheability::WriteBackWriteAllocate,
            s2sh0: Shareability::InnerShareable,
            s2r: true,
            s2affd: false,
            s2ptw: true,
        }
    }

    fn table_parameters<A>(s1context_ptr: A) -> ContextTableParameters<A> {
        ContextTableParameters {
            s1context_ptr,
            s1fmt: S1Fmt::Linear,
            s1cdmax: 0,
            s1dss: S1Dss::Terminate,
            s1cir: Cacheability::WriteBackWriteAllocate,
            s1cor: Cacheability::WriteBackWriteAllocate,
            s1csh: Shareability::InnerShareable,
        }
    }

    fn stage1_parameters<A>(ttb0: A) -> Stage1Parameters<A> {
        Stage1Parameters {
            asid: Asid(7),
            ttb0,
            t0sz: 16,
            tg0: Granule::Size4K,
            ir0: Cacheability::WriteBackWriteAllocate,
            or0: Cacheability::WriteBackWriteAllocate,
            sh0: Shareability::InnerShareable,
            ips: AddressSize::Bits44,
            mair: Mair(0x0000_0000_0004_ff44),
        }
    }

    #[test]
    fn a_stage2_ste_has_every_stage2_field_and_s2aa64() {
        let s2 = Stage2Translation::new(stage2_parameters(), &qemu()).unwrap();
        let ste = make_stage2_ste(&s2);
        let w = ste.words();
        assert_eq!(w[0], 1 | 6 << 1);
        // MEV; QEMU virt has no IDR1.ATTR_TYPES_OVR, so SHCFG is RES0 there.
        assert_eq!(w[1], 1 << 19);
        assert_eq!(
            w[2],
            1 | 24 << 32
                | 1 << 38
                | 1 << 40
                | 1 << 42
                | 3 << 44
                | 4 << 48
                | 1 << 51
                | 1 << 54
                | 1 << 58
        );
        assert_eq!(w[3], 0x4010_0000);
        assert!(ste.s2aa64());
        assert_eq!(ste.check_encodings(), Ok(()));
    }

    #[test]
    fn a_nested_ste_carries_both_stages() {
        let features = qemu();
        let s2 = Stage2Translation::new(stage2_parameters(), &features).unwrap();
        let table = ContextTable::new(table_parameters(Ipa(0x8000_0000)), &features).unwrap();
        let ste = make_nested_ste(&table, &s2).unwrap();
        assert_eq!(ste.config(), StreamConfig::Nested);
        assert_eq!(ste.s1_context_ptr(), Ipa(0x8000_0000));
        assert!(ste.s2aa64());
        assert_eq!(ste.s2ttb(), PhysAddr(0x4010_0000));
        // QEMU cannot stall, so S1STALLD must stay 0.
        assert!(!ste.s1stalld());
    }

    #[test]
    fn s1stalld_is_set_only_where_the_smmu_can_stall() {
        let features = Features {
            stall_model: StallModel::StallAndTerminate,
            ..qemu()
        };
        let table = ContextTable::new(table_parameters(PhysAddr(0x1000)), &features).unwrap();
        let ste = make_stage1_ste(&table, Vmid(1), &features).unwrap();
        assert!(ste.s1stalld());
        assert_eq!(ste.s2vmid(), Vmid(1));
        assert_eq!(ste.config(), StreamConfig::Stage1);
    }

    /// IHI 0070 5.5: where IDR0.STALL_MODEL = 0b10 (stall forced), a CD with S = 0 and an STE
    /// with stage 2 and S2S = 0 are ILLEGAL (C_BAD_CD, C_BAD_STE), as is S1STALLD = 1.
    #[test]
    fn no_entry_a_stall_forced_smmu_rejects_is_made() {
        let features = Features {
            stall_model: StallModel::StallForced,
            ..qemu()
        };
        assert_eq!(
            Stage2Translation::new(stage2_parameters(), &features),
            Err(MakeError::StallForced)
        );
        assert_eq!(
            ContextTable::new(table_parameters(Ipa(0x1000)), &features),
            Err(MakeError::StallForced)
        );
        assert_eq!(
            Stage1Translation::new(stage1_parameters(Ipa(0x1000)), &features),
            Err(MakeError::StallForced)
        );
        // Whatever the validators do, nothing ILLEGAL comes out of them.
        if let Ok(s2) = Stage2Translation::new(stage2_parameters(), &features) {
            assert!(make_stage2_ste(&s2).s2s(), "stage 2 with S2S = 0");
            if let Ok(table) = ContextTable::new(table_parameters(Ipa(0x1000)), &features) {
                assert!(
                    make_nested_ste(&table, &s2).unwrap().s2s(),
                    "nested with S2S = 0"
                );
            }
        }
        if let Ok(table) = ContextTable::new(table_parameters(PhysAddr(0x1000)), &features) {
            assert!(
                !make_stage1_ste(&table, Vmid(1), &features)
                    .unwrap()
                    .s1stalld()
            );
        }
        if let Ok(translation) = Stage1Translation::new(stage1_parameters(Ipa(0x1000)), &features) {
            assert!(make_cd(&translation).s(), "CD with S = 0");
        }
    }

    /// IHI 0070 5.2 (STE.MEV), 7.3.1: a guest can make its device fault at will, on any
    /// stream the hypervisor programs for it; merging keeps such a flood from filling the
    /// event queue.
    #[test]
    fn every_non_abort_ste_lets_the_smmu_merge_fault_events() {
        let features = qemu();
        let s2 = Stage2Translation::new(stage2_parameters(), &features).unwrap();
        let pa_table = ContextTable::new(table_parameters(PhysAddr(0x1000)), &features).unwrap();
        let ipa_table = ContextTable::new(table_parameters(Ipa(0x1000)), &features).unwrap();
        let stes = [
            make_bypass_ste(&features),
            make_stage2_ste(&s2),
            make_stage1_ste(&pa_table, Vmid(1), &features).unwrap(),
            make_nested_ste(&ipa_table, &s2).unwrap(),
        ];
        for ste in stes {
            assert!(ste.mev(), "{:?}: {ste:x?}", ste.config());
        }
        // An abort STE records no event and reads nothing of word 1.
        assert!(!make_abort_ste().mev());
    }

    /// IHI 0070 5.2 (STE.SHCFG): "If SMMU_IDR1.ATTR_TYPES_OVR == 0, this field is RES0 and the
    /// incoming Shareability attribute is used."
    #[test]
    fn shcfg_is_set_only_where_the_smmu_can_override_attributes() {
        for attr_types_ovr in [false, true] {
            let features = Features {
                attr_types_ovr,
                ..qemu()
            };
            let s2 = Stage2Translation::new(stage2_parameters(), &features).unwrap();
            let pa_table =
                ContextTable::new(table_parameters(PhysAddr(0x1000)), &features).unwrap();
            let ipa_table = ContextTable::new(table_parameters(Ipa(0x1000)), &features).unwrap();
            let stes = [
                make_bypass_ste(&features),
                make_stage2_ste(&s2),
                make_stage1_ste(&pa_table, Vmid(1), &features).unwrap(),
                make_nested_ste(&ipa_table, &s2).unwrap(),
            ];
            for ste in stes {
                let want = if attr_types_ovr {
                    SHCFG_USE_INCOMING
                } else {
                    0
                };
                assert_eq!(
                    ste.shcfg(),
                    want,
                    "ATTR_TYPES_OVR {attr_types_ovr}: {ste:x?}"
                );
            }
        }
    }

    #[test]
    fn abort_and_bypass_stes_are_minimal() {
        assert_eq!(make_abort_ste().words(), [1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            make_bypass_ste(&qemu()).words(),
            [1 | 4 << 1, 1 << 19, 0, 0, 0, 0, 0, 0]
        );
        let with_override = Features {
            attr_types_ovr: true,
            ..qemu()
        };
        assert_eq!(
            make_bypass_ste(&with_override).words(),
            [1 | 4 << 1, 1 << 44 | 1 << 19, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn a_cd_has_the_fixed_bits_and_the_parameters() {
        let t = Stage1Translation::new(stage1_parameters(Ipa(0x1234_5000)), &qemu()).unwrap();
        let cd = make_cd(&t);
        assert!(cd.v() && cd.aa64() && cd.a() && cd.r() && cd.aset() && cd.epd1());
        assert!(!cd.epd0());
        assert_eq!(cd.asid(), Asid(7));
        assert_eq!(cd.ttb0(), Ipa(0x1234_5000));
        assert_eq!(cd.words()[3], 0x0004_ff44);
        assert_eq!(cd.ips(), Ok(AddressSize::Bits44));
        assert_eq!(cd.check_encodings(), Ok(()));
    }

    #[test]
    fn made_entries_set_no_bit_the_hardware_does_not_read() {
        let features = qemu();
        let s2 = Stage2Translation::new(stage2_parameters(), &features).unwrap();
        let pa_table = ContextTable::new(table_parameters(PhysAddr(0x1000)), &features).unwrap();
        let ipa_table = ContextTable::new(table_parameters(Ipa(0x1000)), &features).unwrap();
        let stes = [
            make_abort_ste(),
            make_bypass_ste(&features),
            make_stage2_ste(&s2),
            make_stage1_ste(&pa_table, Vmid(1), &features).unwrap(),
            make_nested_ste(&ipa_table, &s2).unwrap(),
        ];
        for ste in stes {
            let used = ste_used_bits(&ste);
            for (i, w) in ste.words().iter().enumerate() {
                assert_eq!(w & !used[i], 0, "{ste:?} qword {i}");
            }
        }
        let cd =
            make_cd(&Stage1Translation::new(stage1_parameters(Ipa(0x1000)), &features).unwrap());
        let used = cd_used_bits(&cd);
        for (i, w) in cd.words().iter().enumerate() {
            assert_eq!(w & !used[i], 0, "CD qword {i}");
        }
    }

    #[test]
    fn stage2_parameters_are_checked_against_the_smmu_and_each_other() {
        let base = stage2_parameters();
        let no_s2 = Features {
            s2p: false,
            ..qemu()
        };
        let vmid8 = Features {
            vmid16: false,
            ..qemu()
        };
        let no_16k = Features {
            gran16k: false,
            ..qemu()
        };
        let aarch32 = Features {
            ttf: TranslationTableFormats::AArch32,
            ..qemu()
        };
        let cases: &[(Stage2Parameters, Features, MakeError)] = &[
            (base, no_s2, MakeError::Stage2NotImplemented),
            (base, aarch32, MakeError::AArch64TablesNotImplemented),
            (
                Stage2Parameters {
                    s2tg: Granule::Size16K,
                    s2sl0: StartLevel::Level2,
                    ..base
                },
                no_16k,
                MakeError::GranuleNotImplemented(Granule::Size16K),
            ),
            (
                Stage2Parameters {
                    vmid: Vmid(0x100),
                    ..base
                },
                vmid8,
                MakeError::VmidTooWide(Vmid(0x100)),
            ),
            (
                Stage2Parameters {
                    s2ps: AddressSize::Bits48,
                    ..base
                },
                qemu(),
                MakeError::OutputSizeNotImplemented {
                    requested: AddressSize::Bits48,
                    oas: AddressSize::Bits44,
                },
            ),
            (
                Stage2Parameters { s2t0sz: 15, ..base },
                qemu(),
                MakeError::InputSizeOutOfRange { t0sz: 15 },
            ),
            (
                Stage2Parameters { s2t0sz: 40, ..base },
                qemu(),
                MakeError::InputSizeOutOfRange { t0sz: 40 },
            ),
            (
                Stage2Parameters {
                    s2ps: AddressSize::Bits36,
                    ..base
                },
                qemu(),
                MakeError::InputLargerThanOutput {
                    input_bits: 40,
                    output_size: AddressSize::Bits36,
                },
            ),
            (
                Stage2Parameters {
                    s2sl0: StartLevel::Level3,
                    ..base
                },
                qemu(),
                MakeError::StartLevelNotEncodable {
                    granule: Granule::Size4K,
                    start_level: StartLevel::Level3,
                },
            ),
            (
                // 40 input bits from level 2 would need 2^10 concatenated tables.
                Stage2Parameters {
                    s2sl0: StartLevel::Level2,
                    ..base
                },
                qemu(),
                MakeError::StartLevelDoesNotFit {
                    granule: Granule::Size4K,
                    start_level: StartLevel::Level2,
                    input_bits: 40,
                },
            ),
            (
                // 39 input bits are all resolved below level 0.
                Stage2Parameters {
                    s2t0sz: 25,
                    s2sl0: StartLevel::Level0,
                    ..base
                },
                qemu(),
                MakeError::StartLevelDoesNotFit {
                    granule: Granule::Size4K,
                    start_level: StartLevel::Level0,
                    input_bits: 39,
                },
            ),
            (
                // Level 1 with 40 bits is two concatenated 4 KiB tables: 8 KiB alignment.
                Stage2Parameters {
                    s2ttb: PhysAddr(0x4010_1000),
                    ..base
                },
                qemu(),
                MakeError::TableNotAligned {
                    table: TableKind::Stage2Root,
                    required_alignment: 0x2000,
                },
            ),
            (
                Stage2Parameters {
                    s2ttb: PhysAddr(1 << 44),
                    ..base
                },
                qemu(),
                MakeError::TableOutOfRange {
                    table: TableKind::Stage2Root,
                    limit_bits: 44,
                },
            ),
        ];
        for (parameters, features, want) in cases {
            assert_eq!(
                Stage2Translation::new(*parameters, features),
                Err(*want),
                "{parameters:?}"
            );
        }
        // Level 0 with 40 bits is a 16-byte root, aligned to the 64-byte floor.
        let level0 = Stage2Parameters {
            s2sl0: StartLevel::Level0,
            s2ttb: PhysAddr(0x4010_0040),
            ..base
        };
        assert!(Stage2Translation::new(level0, &qemu()).is_ok());
    }

    #[test]
    fn start_level_encodings_depend_on_the_granule() {
        use Granule::*;
        use StartLevel::*;
        let cases = [
            (Size4K, Level0, Some(2)),
            (Size4K, Level1, Some(1)),
            (Size4K, Level2, Some(0)),
            (Size4K, Level3, None),
            (Size16K, Level0, None),
            (Size16K, Level1, Some(2)),
            (Size16K, Level3, Some(0)),
            (Size64K, Level0, None),
            (Size64K, Level1, Some(2)),
            (Size64K, Level2, Some(1)),
        ];
        for (granule, level, want) in cases {
            assert_eq!(level.s2sl0_encoding(granule), want, "{granule:?} {level:?}");
        }
    }

    #[test]
    fn context_table_parameters_are_checked() {
        let base = table_parameters(PhysAddr(0x1000));
        let with_ssid = Features {
            ssidsize: 20,
            cd2l: true,
            ..qemu()
        };
        let no_s1 = Features {
            s1p: false,
            ..qemu()
        };
        let cases: &[(ContextTableParameters<PhysAddr>, Features, MakeError)] = &[
            (base, no_s1, MakeError::Stage1NotImplemented),
            (
                ContextTableParameters { s1cdmax: 1, ..base },
                qemu(),
                MakeError::SubstreamsNotImplemented {
                    s1cdmax: 1,
                    ssidsize: 0,
                },
            ),
            (
                ContextTableParameters {
                    s1fmt: S1Fmt::TwoLevel4K,
                    ..base
                },
                with_ssid,
                MakeError::TwoLevelContextTableWithoutSubstreams,
            ),
            (
                ContextTableParameters {
                    s1fmt: S1Fmt::TwoLevel4K,
                    s1cdmax: 8,
                    ..base
                },
                Features {
                    cd2l: false,
                    ..with_ssid
                },
                MakeError::TwoLevelContextTableNotImplemented,
            ),
            (
                ContextTableParameters {
                    s1context_ptr: PhysAddr(0x1020),
                    ..base
                },
                qemu(),
                MakeError::TableNotAligned {
                    table: TableKind::ContextDescriptorTable,
                    required_alignment: 64,
                },
            ),
            (
                ContextTableParameters {
                    s1context_ptr: PhysAddr(1 << 44),
                    ..base
                },
                qemu(),
                MakeError::TableOutOfRange {
                    table: TableKind::ContextDescriptorTable,
                    limit_bits: 44,
                },
            ),
        ];
        for (parameters, features, want) in cases {
            assert_eq!(
                ContextTable::new(*parameters, features),
                Err(*want),
                "{parameters:?}"
            );
        }
        let two_level = ContextTableParameters {
            s1fmt: S1Fmt::TwoLevel64K,
            s1cdmax: 20,
            s1dss: S1Dss::Substream0,
            ..base
        };
        assert!(ContextTable::new(two_level, &with_ssid).is_ok());
    }

    #[test]
    fn a_nested_cd_table_must_lie_inside_the_stage2_input_range() {
        let features = qemu();
        let s2 = Stage2Translation::new(stage2_parameters(), &features).unwrap();
        let table = ContextTable::new(table_parameters(Ipa(1 << 40)), &features).unwrap();
        assert_eq!(
            make_nested_ste(&table, &s2),
            Err(MakeError::TableOutOfRange {
                table: TableKind::ContextDescriptorTable,
                limit_bits: 40,
            })
        );
    }

    #[test]
    fn a_stage1_only_vmid_must_fit_the_smmu() {
        let features = Features {
            vmid16: false,
            ..qemu()
        };
        let table = ContextTable::new(table_parameters(PhysAddr(0x1000)), &features).unwrap();
        assert_eq!(
            make_stage1_ste(&table, Vmid(0x100), &features),
            Err(MakeError::VmidTooWide(Vmid(0x100)))
        );
    }

    #[test]
    fn stage1_parameters_are_checked() {
        let base = stage1_parameters(Ipa(0x4000_0000));
        let asid8 = Features {
            asid16: false,
            ..qemu()
        };
        let no_64k = Features {
            gran64k: false,
            ..qemu()
        };
        let cases: &[(Stage1Parameters<Ipa>, Features, MakeError)] = &[
            (
                base,
                Features {
                    s1p: false,
                    ..qemu()
                },
                MakeError::Stage1NotImplemented,
            ),
            (
                Stage1Parameters {
                    asid: Asid(0x100),
                    ..base
                },
                asid8,
                MakeError::AsidTooWide(Asid(0x100)),
            ),
            (
                Stage1Parameters {
                    tg0: Granule::Size64K,
                    ..base
                },
                no_64k,
                MakeError::GranuleNotImplemented(Granule::Size64K),
            ),
            (
                Stage1Parameters {
                    ips: AddressSize::Bits52,
                    ..base
                },
                qemu(),
                MakeError::OutputSizeNotImplemented {
                    requested: AddressSize::Bits52,
                    oas: AddressSize::Bits44,
                },
            ),
            (
                Stage1Parameters { t0sz: 12, ..base },
                qemu(),
                MakeError::InputSizeOutOfRange { t0sz: 12 },
            ),
            (
                // 48 bits with 4 KiB: a full 4 KiB root table.
                Stage1Parameters {
                    ttb0: Ipa(0x4000_0800),
                    ..base
                },
                qemu(),
                MakeError::TableNotAligned {
                    table: TableKind::Stage1Root,
                    required_alignment: 0x1000,
                },
            ),
            (
                Stage1Parameters {
                    ttb0: Ipa(1 << 40),
                    ips: AddressSize::Bits40,
                    ..base
                },
                qemu(),
                MakeError::TableOutOfRange {
                    table: TableKind::Stage1Root,
                    limit_bits: 40,
                },
            ),
        ];
        for (parameters, features, want) in cases {
            assert_eq!(
                Stage1Translation::new(*parameters, features),
                Err(*want),
                "{parameters:?}"
            );
        }
        // 32 input bits with 4 KiB: a 32-byte root, aligned to the 64-byte floor.
        let small = Stage1Parameters {
            t0sz: 32,
            ttb0: Ipa(0x4000_0040),
            ..base
        };
        assert!(Stage1Translation::new(small, &qemu()).is_ok());
    }
}
