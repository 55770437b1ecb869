//! Command queue entries: the raw 16-byte [`Command`] and the typed [`Cmd`].
//!
//! This module owns the encoding of every command of the reference sheet: opcodes, field
//! positions, and for each opcode the mask of bits it defines. [`Cmd::encode`] is total;
//! [`Command::decode`] accepts only a known opcode with no bit set outside that opcode's mask
//! and no undefined enumerated value, so a command that decodes is one the architecture defines
//! exactly. Deciding which commands a guest may issue is `nested`'s job, not this module's.

use static_assertions::const_assert_eq;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::field::Field;
use crate::ids::{Asid, Iova, Ipa, PhysAddr, StreamId, SubstreamId, Vmid};

/// A command queue entry: two little-endian 64-bit words.
#[derive(
    Clone, Copy, PartialEq, Eq, Default, Debug, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(transparent)]
pub struct Command([u64; 2]);

const_assert_eq!(core::mem::size_of::<Command>(), 16);

/// Command opcodes (word 0 bits 7:0).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum Opcode {
    /// CMD_PREFETCH_CONFIG.
    PrefetchConfig = 0x01,
    /// CMD_PREFETCH_ADDR.
    PrefetchAddr = 0x02,
    /// CMD_CFGI_STE.
    CfgiSte = 0x03,
    /// CMD_CFGI_STE_RANGE (CMD_CFGI_ALL when RANGE is 31).
    CfgiSteRange = 0x04,
    /// CMD_CFGI_CD.
    CfgiCd = 0x05,
    /// CMD_CFGI_CD_ALL.
    CfgiCdAll = 0x06,
    /// CMD_TLBI_NH_ALL.
    TlbiNhAll = 0x10,
    /// CMD_TLBI_NH_ASID.
    TlbiNhAsid = 0x11,
    /// CMD_TLBI_NH_VA.
    TlbiNhVa = 0x12,
    /// CMD_TLBI_NH_VAA.
    TlbiNhVaa = 0x13,
    /// CMD_TLBI_EL3_ALL.
    TlbiEl3All = 0x18,
    /// CMD_TLBI_EL3_VA.
    TlbiEl3Va = 0x1A,
    /// CMD_TLBI_EL2_ALL.
    TlbiEl2All = 0x20,
    /// CMD_TLBI_EL2_ASID.
    TlbiEl2Asid = 0x21,
    /// CMD_TLBI_EL2_VA.
    TlbiEl2Va = 0x22,
    /// CMD_TLBI_EL2_VAA.
    TlbiEl2Vaa = 0x23,
    /// CMD_TLBI_S12_VMALL.
    TlbiS12Vmall = 0x28,
    /// CMD_TLBI_S2_IPA.
    TlbiS2Ipa = 0x2A,
    /// CMD_TLBI_NSNH_ALL.
    TlbiNsnhAll = 0x30,
    /// CMD_ATC_INV.
    AtcInv = 0x40,
    /// CMD_PRI_RESP.
    PriResp = 0x41,
    /// CMD_RESUME.
    Resume = 0x44,
    /// CMD_STALL_TERM.
    StallTerm = 0x45,
    /// CMD_SYNC.
    Sync = 0x46,
}

impl Opcode {
    /// Every opcode of the reference sheet.
    pub const ALL: [Opcode; 24] = [
        Self::PrefetchConfig,
        Self::PrefetchAddr,
        Self::CfgiSte,
        Self::CfgiSteRange,
        Self::CfgiCd,
        Self::CfgiCdAll,
        Self::TlbiNhAll,
        Self::TlbiNhAsid,
        Self::TlbiNhVa,
        Self::TlbiNhVaa,
        Self::TlbiEl3All,
        Self::TlbiEl3Va,
        Self::TlbiEl2All,
        Self::TlbiEl2Asid,
        Self::TlbiEl2Va,
        Self::TlbiEl2Vaa,
        Self::TlbiS12Vmall,
        Self::TlbiS2Ipa,
        Self::TlbiNsnhAll,
        Self::AtcInv,
        Self::PriResp,
        Self::Resume,
        Self::StallTerm,
        Self::Sync,
    ];

    /// The opcode with this value, if the architecture defines one.
    #[must_use]
    pub const fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            0x01 => Self::PrefetchConfig,
            0x02 => Self::PrefetchAddr,
            0x03 => Self::CfgiSte,
            0x04 => Self::CfgiSteRange,
            0x05 => Self::CfgiCd,
            0x06 => Self::CfgiCdAll,
            0x10 => Self::TlbiNhAll,
            0x11 => Self::TlbiNhAsid,
            0x12 => Self::TlbiNhVa,
            0x13 => Self::TlbiNhVaa,
            0x18 => Self::TlbiEl3All,
            0x1A => Self::TlbiEl3Va,
            0x20 => Self::TlbiEl2All,
            0x21 => Self::TlbiEl2Asid,
            0x22 => Self::TlbiEl2Va,
            0x23 => Self::TlbiEl2Vaa,
            0x28 => Self::TlbiS12Vmall,
            0x2A => Self::TlbiS2Ipa,
            0x30 => Self::TlbiNsnhAll,
            0x40 => Self::AtcInv,
            0x41 => Self::PriResp,
            0x44 => Self::Resume,
            0x45 => Self::StallTerm,
            0x46 => Self::Sync,
            _ => return None,
        })
    }

    /// The opcode value.
    #[must_use]
    pub const fn value(self) -> u8 {
        self as u8
    }

    /// The bits of each word this command defines; a decoder rejects any other bit set.
    #[must_use]
    pub const fn defined_bits(self) -> [u64; 2] {
        use Command as C;
        let sid_ssv = C::SSV.mask() | C::SSID.mask() | C::SID.mask();
        let tlbi_va0 = C::NUM.mask() | C::SCALE.mask();
        let tlbi_va1 = C::LEAF.mask() | C::TTL.mask() | C::TG.mask() | C::TLBI_ADDR.mask();
        let (w0, w1) = match self {
            Self::PrefetchConfig => (sid_ssv, 0),
            Self::PrefetchAddr => (sid_ssv, C::PREFETCH_SIZE.mask() | C::PREFETCH_ADDR.mask()),
            Self::CfgiSte => (C::SID.mask(), C::LEAF.mask()),
            Self::CfgiSteRange => (C::SID.mask(), C::CFGI_RANGE.mask()),
            Self::CfgiCd => (C::SSID.mask() | C::SID.mask(), C::LEAF.mask()),
            Self::CfgiCdAll | Self::StallTerm => (C::SID.mask(), 0),
            Self::TlbiNhAll | Self::TlbiS12Vmall => (C::VMID.mask(), 0),
            Self::TlbiNhAsid => (C::VMID.mask() | C::ASID.mask(), 0),
            Self::TlbiNhVa => (tlbi_va0 | C::VMID.mask() | C::ASID.mask(), tlbi_va1),
            Self::TlbiNhVaa => (tlbi_va0 | C::VMID.mask(), tlbi_va1),
            Self::TlbiEl3All | Self::TlbiEl2All | Self::TlbiNsnhAll => (0, 0),
            Self::TlbiEl3Va | Self::TlbiEl2Vaa => (tlbi_va0, tlbi_va1),
            Self::TlbiEl2Asid => (C::ASID.mask(), 0),
            Self::TlbiEl2Va => (tlbi_va0 | C::ASID.mask(), tlbi_va1),
            Self::TlbiS2Ipa => (
                tlbi_va0 | C::VMID.mask(),
                C::LEAF.mask() | C::TTL.mask() | C::TG.mask() | C::TLBI_IPA.mask(),
            ),
            Self::AtcInv => (
                sid_ssv | C::ATC_GLOBAL.mask(),
                C::ATC_SIZE.mask() | C::ATC_ADDR.mask(),
            ),
            Self::PriResp => (sid_ssv, C::PRI_PRG_INDEX.mask() | C::PRI_RESP.mask()),
            Self::Resume => (
                C::RESUME_ACTION.mask() | C::SID.mask(),
                C::RESUME_STAG.mask(),
            ),
            Self::Sync => (
                C::SYNC_CS.mask()
                    | C::SYNC_MSH.mask()
                    | C::SYNC_MSIATTR.mask()
                    | C::SYNC_MSIDATA.mask(),
                C::SYNC_MSIADDR.mask(),
            ),
        };
        [w0 | C::OP.mask(), w1]
    }
}

/// The response a CMD_PRI_RESP carries to the device for a page request group.
///
/// This is the one place the encoding lives. Source: Arm IHI 0070, section 4.5.2
/// CMD_PRI_RESP(StreamID, SubstreamID, SSV, PRGIndex, Resp):
///
/// | Resp | specification name | meaning |
/// |---|---|---|
/// | 0b00 | ResponseFailure | permanent non-paging error (for example ATS or PRI disabled for the device) |
/// | 0b01 | InvalidRequest | page-in unsuccessful for one or more pages in the group |
/// | 0b10 | Success | page request group paged in successfully |
/// | 0b11 | Reserved | ILLEGAL: not a value of this type; [`Command::decode`] refuses it with [`CommandDecodeError::ReservedPriResponse`] and an SMMU stops at it with CERROR_ILL |
///
/// Mainline Linux names 0, 1 and 2 `DENY`, `FAIL` and `SUCC`, which reads as if 0 and 1 were
/// the other way round; the values are the same, the names here are the specification's.
/// 4.5.2 also makes the whole command ILLEGAL where IDR0.PRI = 0.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PriResponse {
    /// Response Failure (0): the function disables its PRI; no further requests.
    ResponseFailure,
    /// Invalid Request (1): the pages cannot be made available; the function sees an error.
    InvalidRequest,
    /// Success (2): the pages are now mapped; the function may retry its translations.
    Success,
}

impl PriResponse {
    /// Decodes the 2-bit Resp field; `None` for 0b11, "Reserved: ILLEGAL" (IHI 0070 4.5.2).
    #[must_use]
    pub const fn from_encoding(encoding: u8) -> Option<Self> {
        match encoding {
            0 => Some(Self::ResponseFailure),
            1 => Some(Self::InvalidRequest),
            2 => Some(Self::Success),
            _ => None,
        }
    }

    /// The 2-bit Resp field value.
    #[must_use]
    pub const fn encoding(self) -> u8 {
        self as u8
    }
}

/// What CMD_RESUME does with a stalled transaction (word 0 bits 13:12).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ResumeAction {
    /// Terminate it (0), with abort or RAZ/WI per the CD.
    Terminate,
    /// Retry its translation (1).
    Retry,
    /// Abort it (2).
    Abort,
}

impl ResumeAction {
    /// Decodes the 2-bit field; 3 is reserved.
    #[must_use]
    pub const fn from_encoding(encoding: u8) -> Option<Self> {
        match encoding {
            0 => Some(Self::Terminate),
            1 => Some(Self::Retry),
            2 => Some(Self::Abort),
            _ => None,
        }
    }

    /// The 2-bit field value.
    #[must_use]
    pub const fn encoding(self) -> u8 {
        self as u8
    }
}

/// How a CMD_SYNC signals completion (CS, word 0 bits 13:12).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SyncCompletion {
    /// No signal (0): software polls CMDQ_CONS.
    None,
    /// Interrupt (1): an MSI write of MSIData to MSIAddr, or the wired CMD_SYNC interrupt.
    Irq,
    /// Send event (2): wakes PEs waiting in WFE.
    Sev,
}

impl SyncCompletion {
    /// Decodes the 2-bit field; 3 is reserved.
    #[must_use]
    pub const fn from_encoding(encoding: u8) -> Option<Self> {
        match encoding {
            0 => Some(Self::None),
            1 => Some(Self::Irq),
            2 => Some(Self::Sev),
            _ => None,
        }
    }

    /// The 2-bit field value.
    #[must_use]
    pub const fn encoding(self) -> u8 {
        self as u8
    }
}

/// The TG field of address-based TLB invalidations: the granule of the range and TTL hints
/// (the TLBI-range encoding, not TCR's).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TlbiGranule {
    /// No granule given (0): a single address, no range and no level hint.
    #[default]
    Unspecified,
    /// 4 KiB (1).
    Size4K,
    /// 16 KiB (2).
    Size16K,
    /// 64 KiB (3).
    Size64K,
}

impl TlbiGranule {
    /// Decodes the 2-bit field; every value is defined.
    #[must_use]
    pub const fn from_encoding(encoding: u8) -> Self {
        match encoding & 3 {
            0 => Self::Unspecified,
            1 => Self::Size4K,
            2 => Self::Size16K,
            _ => Self::Size64K,
        }
    }

    /// The 2-bit field value.
    #[must_use]
    pub const fn encoding(self) -> u8 {
        self as u8
    }
}

/// The range and hint fields shared by address-based TLB invalidations.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TlbiScope {
    /// NUM (word 0 bits 16:12): with RIL, the range covers (NUM + 1) * 2^SCALE translation
    /// granules (the SMMU encoding; the CPU's TLBI RVA* uses 2^(5 * SCALE + 1) instead).
    pub num: u8,
    /// SCALE (word 0 bits 24:20).
    pub scale: u8,
    /// LEAF (word 1 bit 0): only leaf entries need invalidating.
    pub leaf: bool,
    /// TTL (word 1 bits 9:8): the level of the leaf entries, if known (0: unknown).
    pub ttl: u8,
    /// TG (word 1 bits 11:10).
    pub granule: TlbiGranule,
}

/// A command, typed. Field names follow the architecture; SSV and SubstreamID together become
/// an `Option<SubstreamId>`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Cmd {
    /// Prefetch the configuration (STE, CD) of a stream.
    PrefetchConfig {
        /// StreamID.
        sid: StreamId,
        /// SubstreamID, when SSV=1.
        ssid: Option<SubstreamId>,
    },
    /// Prefetch configuration and translations for an address range.
    PrefetchAddr {
        /// StreamID.
        sid: StreamId,
        /// SubstreamID, when SSV=1.
        ssid: Option<SubstreamId>,
        /// Size (word 1 bits 4:0): log2 of the range in pages.
        size: u8,
        /// Addr (word 1 bits 63:12).
        addr: Iova,
    },
    /// Invalidate cached copies of a stream's STE.
    CfgiSte {
        /// StreamID.
        sid: StreamId,
        /// Leaf (word 1 bit 0): only the STE, not level-1 descriptors.
        leaf: bool,
    },
    /// Invalidate the STEs of 2^(range+1) streams from `sid` aligned down; range 31 is
    /// CMD_CFGI_ALL.
    CfgiSteRange {
        /// StreamID.
        sid: StreamId,
        /// Range (word 1 bits 4:0).
        range: u8,
    },
    /// Invalidate one CD of a stream.
    CfgiCd {
        /// StreamID.
        sid: StreamId,
        /// SubstreamID (no SSV: the CD is always named by substream).
        ssid: SubstreamId,
        /// Leaf (word 1 bit 0): only the CD, not level-1 CD descriptors.
        leaf: bool,
    },
    /// Invalidate every CD of a stream.
    CfgiCdAll {
        /// StreamID.
        sid: StreamId,
    },
    /// Invalidate every stage-1 entry of a VMID.
    TlbiNhAll {
        /// VMID.
        vmid: Vmid,
    },
    /// Invalidate the stage-1 entries of an ASID in a VMID.
    TlbiNhAsid {
        /// VMID.
        vmid: Vmid,
        /// ASID.
        asid: Asid,
    },
    /// Invalidate stage-1 entries of an address (range) in an ASID and VMID.
    TlbiNhVa {
        /// VMID.
        vmid: Vmid,
        /// ASID.
        asid: Asid,
        /// Range and hints.
        scope: TlbiScope,
        /// Address (word 1 bits 63:12).
        addr: Iova,
    },
    /// Invalidate stage-1 entries of an address (range) in every ASID of a VMID.
    TlbiNhVaa {
        /// VMID.
        vmid: Vmid,
        /// Range and hints.
        scope: TlbiScope,
        /// Address (word 1 bits 63:12).
        addr: Iova,
    },
    /// Invalidate every EL3 entry (Secure only).
    TlbiEl3All,
    /// Invalidate EL3 entries of an address (Secure only).
    TlbiEl3Va {
        /// Range and hints.
        scope: TlbiScope,
        /// Address (word 1 bits 63:12).
        addr: Iova,
    },
    /// Invalidate every EL2 entry.
    TlbiEl2All,
    /// Invalidate the EL2 entries of an ASID (EL2-E2H).
    TlbiEl2Asid {
        /// ASID.
        asid: Asid,
    },
    /// Invalidate EL2 entries of an address in an ASID.
    TlbiEl2Va {
        /// ASID.
        asid: Asid,
        /// Range and hints.
        scope: TlbiScope,
        /// Address (word 1 bits 63:12).
        addr: Iova,
    },
    /// Invalidate EL2 entries of an address in every ASID.
    TlbiEl2Vaa {
        /// Range and hints.
        scope: TlbiScope,
        /// Address (word 1 bits 63:12).
        addr: Iova,
    },
    /// Invalidate every stage-1 and stage-2 entry of a VMID.
    TlbiS12Vmall {
        /// VMID.
        vmid: Vmid,
    },
    /// Invalidate stage-2 entries of an IPA (range) in a VMID.
    TlbiS2Ipa {
        /// VMID.
        vmid: Vmid,
        /// Range and hints.
        scope: TlbiScope,
        /// IPA (word 1 bits 51:12).
        addr: Ipa,
    },
    /// Invalidate every Non-secure non-hypervisor entry, all VMIDs.
    TlbiNsnhAll,
    /// Invalidate a device's ATC (ATS translation cache).
    AtcInv {
        /// StreamID.
        sid: StreamId,
        /// SubstreamID, when SSV=1.
        ssid: Option<SubstreamId>,
        /// Global (word 0 bit 9): also global entries.
        global: bool,
        /// Size (word 1 bits 5:0): log2 of the range in 4 KiB pages (52: everything).
        size: u8,
        /// Address (word 1 bits 63:12).
        addr: Iova,
    },
    /// Answer a page request group.
    PriResp {
        /// StreamID.
        sid: StreamId,
        /// SubstreamID, when SSV=1.
        ssid: Option<SubstreamId>,
        /// PRGIndex (word 1 bits 8:0).
        prg_index: u16,
        /// Resp (word 1 bits 13:12).
        response: PriResponse,
    },
    /// Resume or terminate a stalled transaction.
    Resume {
        /// StreamID.
        sid: StreamId,
        /// Action (word 0 bits 13:12).
        action: ResumeAction,
        /// STAG (word 1 bits 15:0): the stall tag from the fault event.
        stag: u16,
    },
    /// Terminate every stalled transaction of a stream.
    StallTerm {
        /// StreamID.
        sid: StreamId,
    },
    /// Wait for every earlier command to complete, then signal.
    Sync {
        /// CS (word 0 bits 13:12).
        completion: SyncCompletion,
        /// MSH (word 0 bits 23:22): MSI shareability.
        msh: u8,
        /// MSIAttr (word 0 bits 27:24): MSI memory type.
        msi_attr: u8,
        /// MSIData (word 0 bits 63:32).
        msi_data: u32,
        /// MSIAddress (word 1 bits 51:2); 0 with CS=IRQ means the wired interrupt.
        msi_addr: PhysAddr,
    },
}

/// Why a raw command does not decode.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CommandDecodeError {
    /// The opcode is not one the architecture defines (or is IMPLEMENTATION DEFINED).
    UnknownOpcode(u8),
    /// A bit outside the opcode's defined fields is set.
    ReservedBitsSet {
        /// The command's opcode.
        opcode: Opcode,
        /// Which word (0 or 1).
        word: u8,
        /// The offending bits of that word.
        bits: u64,
    },
    /// SubstreamID is non-zero while SSV is 0.
    SubstreamIdWithoutSsv(Opcode),
    /// CMD_PRI_RESP with Resp = 0b11, "Reserved: ILLEGAL" (IHI 0070 4.5.2).
    ReservedPriResponse,
    /// CMD_RESUME with Action=3.
    ReservedResumeAction,
    /// CMD_SYNC with CS=3.
    ReservedSyncCompletion,
}

impl Command {
    /// OP (word 0 bits 7:0).
    pub const OP: Field = Field::new(0, 7, 0);
    /// SSV (word 0 bit 11): SubstreamID is valid.
    pub const SSV: Field = Field::new(0, 11, 11);
    /// SubstreamID (word 0 bits 31:12).
    pub const SSID: Field = Field::new(0, 31, 12);
    /// StreamID (word 0 bits 63:32).
    pub const SID: Field = Field::new(0, 63, 32);
    /// NUM (word 0 bits 16:12), range TLBI.
    pub const NUM: Field = Field::new(0, 16, 12);
    /// SCALE (word 0 bits 24:20), range TLBI.
    pub const SCALE: Field = Field::new(0, 24, 20);
    /// VMID (word 0 bits 47:32).
    pub const VMID: Field = Field::new(0, 47, 32);
    /// ASID (word 0 bits 63:48).
    pub const ASID: Field = Field::new(0, 63, 48);
    /// Leaf (word 1 bit 0), CFGI and TLBI.
    pub const LEAF: Field = Field::new(1, 0, 0);
    /// TTL (word 1 bits 9:8), TLBI.
    pub const TTL: Field = Field::new(1, 9, 8);
    /// TG (word 1 bits 11:10), TLBI.
    pub const TG: Field = Field::new(1, 11, 10);
    /// Address (word 1 bits 63:12), TLBI by VA.
    pub const TLBI_ADDR: Field = Field::new(1, 63, 12);
    /// IPA (word 1 bits 51:12), TLBI_S2_IPA.
    pub const TLBI_IPA: Field = Field::new(1, 51, 12);
    /// Range (word 1 bits 4:0), CFGI_STE_RANGE.
    pub const CFGI_RANGE: Field = Field::new(1, 4, 0);
    /// Size (word 1 bits 4:0), PREFETCH_ADDR.
    pub const PREFETCH_SIZE: Field = Field::new(1, 4, 0);
    /// Addr (word 1 bits 63:12), PREFETCH_ADDR.
    pub const PREFETCH_ADDR: Field = Field::new(1, 63, 12);
    /// Global (word 0 bit 9), ATC_INV.
    pub const ATC_GLOBAL: Field = Field::new(0, 9, 9);
    /// Size (word 1 bits 5:0), ATC_INV.
    pub const ATC_SIZE: Field = Field::new(1, 5, 0);
    /// Address (word 1 bits 63:12), ATC_INV.
    pub const ATC_ADDR: Field = Field::new(1, 63, 12);
    /// PRGIndex (word 1 bits 8:0), PRI_RESP.
    pub const PRI_PRG_INDEX: Field = Field::new(1, 8, 0);
    /// Resp (word 1 bits 13:12), PRI_RESP; encoding in [`PriResponse`] (IHI 0070 4.5.2).
    pub const PRI_RESP: Field = Field::new(1, 13, 12);
    /// Action (word 0 bits 13:12), RESUME.
    pub const RESUME_ACTION: Field = Field::new(0, 13, 12);
    /// STAG (word 1 bits 15:0), RESUME.
    pub const RESUME_STAG: Field = Field::new(1, 15, 0);
    /// CS (word 0 bits 13:12), SYNC.
    pub const SYNC_CS: Field = Field::new(0, 13, 12);
    /// MSH (word 0 bits 23:22), SYNC.
    pub const SYNC_MSH: Field = Field::new(0, 23, 22);
    /// MSIAttr (word 0 bits 27:24), SYNC.
    pub const SYNC_MSIATTR: Field = Field::new(0, 27, 24);
    /// MSIData (word 0 bits 63:32), SYNC.
    pub const SYNC_MSIDATA: Field = Field::new(0, 63, 32);
    /// MSIAddress (word 1 bits 51:2), SYNC.
    pub const SYNC_MSIADDR: Field = Field::new(1, 51, 2);

    /// The command with these words.
    #[must_use]
    pub const fn from_words(words: [u64; 2]) -> Self {
        Self(words)
    }

    /// The command's words.
    #[must_use]
    pub const fn words(&self) -> [u64; 2] {
        self.0
    }

    /// The raw opcode byte.
    #[must_use]
    pub const fn opcode_raw(&self) -> u8 {
        crate::bits::get_u8(self.0[0], 7, 0)
    }

    fn get(&self, field: Field) -> u64 {
        let word = if field.word() == 0 {
            self.0[0]
        } else {
            self.0[1]
        };
        field.extract(word)
    }

    #[allow(clippy::cast_possible_truncation)] // Every caller's field is at most 8 bits.
    fn get_u8(&self, field: Field) -> u8 {
        debug_assert!(field.width() <= 8);
        self.get(field) as u8
    }

    #[allow(clippy::cast_possible_truncation)] // Every caller's field is at most 16 bits.
    fn get_u16(&self, field: Field) -> u16 {
        debug_assert!(field.width() <= 16);
        self.get(field) as u16
    }

    #[allow(clippy::cast_possible_truncation)] // Every caller's field is at most 32 bits.
    fn get_u32(&self, field: Field) -> u32 {
        debug_assert!(field.width() <= 32);
        self.get(field) as u32
    }

    fn put(&mut self, field: Field, value: u64) {
        if field.word() == 0 {
            self.0[0] = field.insert(self.0[0], value);
        } else {
            self.0[1] = field.insert(self.0[1], value);
        }
    }

    /// Address fields are kept in place: bits hi..lo of the word are those of the address.
    fn get_address(&self, field: Field) -> u64 {
        let word = if field.word() == 0 {
            self.0[0]
        } else {
            self.0[1]
        };
        word & field.mask()
    }

    fn put_address(&mut self, field: Field, address: u64) {
        let mask = field.mask();
        if field.word() == 0 {
            self.0[0] = (self.0[0] & !mask) | (address & mask);
        } else {
            self.0[1] = (self.0[1] & !mask) | (address & mask);
        }
    }

    fn ssid_option(&self, opcode: Opcode) -> Result<Option<SubstreamId>, CommandDecodeError> {
        let ssid = self.get_u32(Self::SSID);
        if self.get(Self::SSV) != 0 {
            Ok(Some(SubstreamId(ssid)))
        } else if ssid != 0 {
            Err(CommandDecodeError::SubstreamIdWithoutSsv(opcode))
        } else {
            Ok(None)
        }
    }

    fn put_ssid_option(&mut self, ssid: Option<SubstreamId>) {
        if let Some(ssid) = ssid {
            self.put(Self::SSV, 1);
            self.put(Self::SSID, u64::from(ssid.0));
        }
    }

    fn scope(&self) -> TlbiScope {
        TlbiScope {
            num: self.get_u8(Self::NUM),
            scale: self.get_u8(Self::SCALE),
            leaf: self.get(Self::LEAF) != 0,
            ttl: self.get_u8(Self::TTL),
            granule: TlbiGranule::from_encoding(self.get_u8(Self::TG)),
        }
    }

    fn put_scope(&mut self, scope: TlbiScope) {
        self.put(Self::NUM, u64::from(scope.num));
        self.put(Self::SCALE, u64::from(scope.scale));
        self.put(Self::LEAF, u64::from(scope.leaf));
        self.put(Self::TTL, u64::from(scope.ttl));
        self.put(Self::TG, u64::from(scope.granule.encoding()));
    }

    fn sid(&self) -> StreamId {
        StreamId(self.get_u32(Self::SID))
    }

    fn vmid(&self) -> Vmid {
        Vmid(self.get_u16(Self::VMID))
    }

    fn asid(&self) -> Asid {
        Asid(self.get_u16(Self::ASID))
    }

    /// Decodes the command, accepting only what the architecture defines exactly.
    ///
    /// # Errors
    ///
    /// [`CommandDecodeError::UnknownOpcode`] for an opcode outside the reference sheet,
    /// [`CommandDecodeError::ReservedBitsSet`] for any bit outside the opcode's fields, and a
    /// specific variant for a SubstreamID without SSV or an undefined enumerated value.
    pub fn decode(&self) -> Result<Cmd, CommandDecodeError> {
        let raw_op = self.opcode_raw();
        let opcode = Opcode::from_u8(raw_op).ok_or(CommandDecodeError::UnknownOpcode(raw_op))?;
        let defined = opcode.defined_bits();
        for (word, (&value, mask)) in (0u8..).zip(self.0.iter().zip(defined)) {
            if value & !mask != 0 {
                return Err(CommandDecodeError::ReservedBitsSet {
                    opcode,
                    word,
                    bits: value & !mask,
                });
            }
        }
        let tlbi_addr = || Iova(self.get_address(Self::TLBI_ADDR));
        Ok(match opcode {
            Opcode::PrefetchConfig => Cmd::PrefetchConfig {
                sid: self.sid(),
                ssid: self.ssid_option(opcode)?,
            },
            Opcode::PrefetchAddr => Cmd::PrefetchAddr {
                sid: self.sid(),
                ssid: self.ssid_option(opcode)?,
                size: self.get_u8(Self::PREFETCH_SIZE),
                addr: Iova(self.get_address(Self::PREFETCH_ADDR)),
            },
            Opcode::CfgiSte => Cmd::CfgiSte {
                sid: self.sid(),
                leaf: self.get(Self::LEAF) != 0,
            },
            Opcode::CfgiSteRange => Cmd::CfgiSteRange {
                sid: self.sid(),
                range: self.get_u8(Self::CFGI_RANGE),
            },
            Opcode::CfgiCd => Cmd::CfgiCd {
                sid: self.sid(),
                ssid: SubstreamId(self.get_u32(Self::SSID)),
                leaf: self.get(Self::LEAF) != 0,
            },
            Opcode::CfgiCdAll => Cmd::CfgiCdAll { sid: self.sid() },
            Opcode::TlbiNhAll => Cmd::TlbiNhAll { vmid: self.vmid() },
            Opcode::TlbiNhAsid => Cmd::TlbiNhAsid {
                vmid: self.vmid(),
                asid: self.asid(),
            },
            Opcode::TlbiNhVa => Cmd::TlbiNhVa {
                vmid: self.vmid(),
                asid: self.asid(),
                scope: self.scope(),
                addr: tlbi_addr(),
            },
            Opcode::TlbiNhVaa => Cmd::TlbiNhVaa {
                vmid: self.vmid(),
                scope: self.scope(),
                addr: tlbi_addr(),
            },
            Opcode::TlbiEl3All => Cmd::TlbiEl3All,
            Opcode::TlbiEl3Va => Cmd::TlbiEl3Va {
                scope: self.scope(),
                addr: tlbi_addr(),
            },
            Opcode::TlbiEl2All => Cmd::TlbiEl2All,
            Opcode::TlbiEl2Asid => Cmd::TlbiEl2Asid { asid: self.asid() },
            Opcode::TlbiEl2Va => Cmd::TlbiEl2Va {
                asid: self.asid(),
                scope: self.scope(),
                addr: tlbi_addr(),
            },
            Opcode::TlbiEl2Vaa => Cmd::TlbiEl2Vaa {
                scope: self.scope(),
                addr: tlbi_addr(),
            },
            Opcode::TlbiS12Vmall => Cmd::TlbiS12Vmall { vmid: self.vmid() },
            Opcode::TlbiS2Ipa => Cmd::TlbiS2Ipa {
                vmid: self.vmid(),
                scope: self.scope(),
                addr: Ipa(self.get_address(Self::TLBI_IPA)),
            },
            Opcode::TlbiNsnhAll => Cmd::TlbiNsnhAll,
            Opcode::AtcInv => Cmd::AtcInv {
                sid: self.sid(),
                ssid: self.ssid_option(opcode)?,
                global: self.get(Self::ATC_GLOBAL) != 0,
                size: self.get_u8(Self::ATC_SIZE),
                addr: Iova(self.get_address(Self::ATC_ADDR)),
            },
            Opcode::PriResp => Cmd::PriResp {
                sid: self.sid(),
                ssid: self.ssid_option(opcode)?,
                prg_index: self.get_u16(Self::PRI_PRG_INDEX),
                response: PriResponse::from_encoding(self.get_u8(Self::PRI_RESP))
                    .ok_or(CommandDecodeError::ReservedPriResponse)?,
            },
            Opcode::Resume => Cmd::Resume {
                sid: self.sid(),
                action: ResumeAction::from_encoding(self.get_u8(Self::RESUME_ACTION))
                    .ok_or(CommandDecodeError::ReservedResumeAction)?,
                stag: self.get_u16(Self::RESUME_STAG),
            },
            Opcode::StallTerm => Cmd::StallTerm { sid: self.sid() },
            Opcode::Sync => Cmd::Sync {
                completion: SyncCompletion::from_encoding(self.get_u8(Self::SYNC_CS))
                    .ok_or(CommandDecodeError::ReservedSyncCompletion)?,
                msh: self.get_u8(Self::SYNC_MSH),
                msi_attr: self.get_u8(Self::SYNC_MSIATTR),
                msi_data: self.get_u32(Self::SYNC_MSIDATA),
                msi_addr: PhysAddr(self.get_address(Self::SYNC_MSIADDR)),
            },
        })
    }
}

impl Cmd {
    /// CMD_CFGI_ALL: CFGI_STE_RANGE with Range 31 (the StreamID is ignored).
    #[must_use]
    pub const fn cfgi_all() -> Self {
        Self::CfgiSteRange {
            sid: StreamId(0),
            range: 31,
        }
    }

    /// The command's opcode.
    #[must_use]
    pub const fn opcode(&self) -> Opcode {
        match self {
            Self::PrefetchConfig { .. } => Opcode::PrefetchConfig,
            Self::PrefetchAddr { .. } => Opcode::PrefetchAddr,
            Self::CfgiSte { .. } => Opcode::CfgiSte,
            Self::CfgiSteRange { .. } => Opcode::CfgiSteRange,
            Self::CfgiCd { .. } => Opcode::CfgiCd,
            Self::CfgiCdAll { .. } => Opcode::CfgiCdAll,
            Self::TlbiNhAll { .. } => Opcode::TlbiNhAll,
            Self::TlbiNhAsid { .. } => Opcode::TlbiNhAsid,
            Self::TlbiNhVa { .. } => Opcode::TlbiNhVa,
            Self::TlbiNhVaa { .. } => Opcode::TlbiNhVaa,
            Self::TlbiEl3All => Opcode::TlbiEl3All,
            Self::TlbiEl3Va { .. } => Opcode::TlbiEl3Va,
            Self::TlbiEl2All => Opcode::TlbiEl2All,
            Self::TlbiEl2Asid { .. } => Opcode::TlbiEl2Asid,
            Self::TlbiEl2Va { .. } => Opcode::TlbiEl2Va,
            Self::TlbiEl2Vaa { .. } => Opcode::TlbiEl2Vaa,
            Self::TlbiS12Vmall { .. } => Opcode::TlbiS12Vmall,
            Self::TlbiS2Ipa { .. } => Opcode::TlbiS2Ipa,
            Self::TlbiNsnhAll => Opcode::TlbiNsnhAll,
            Self::AtcInv { .. } => Opcode::AtcInv,
            Self::PriResp { .. } => Opcode::PriResp,
            Self::Resume { .. } => Opcode::Resume,
            Self::StallTerm { .. } => Opcode::StallTerm,
            Self::Sync { .. } => Opcode::Sync,
        }
    }

    /// Encodes the command. Total: a field value wider than its field is truncated to it, and
    /// address bits outside the field's range are dropped (as the SMMU would ignore them).
    #[must_use]
    pub fn encode(&self) -> Command {
        let mut c = Command([0; 2]);
        c.put(Command::OP, u64::from(self.opcode().value()));
        match *self {
            Self::PrefetchConfig { sid, ssid } => {
                c.put(Command::SID, u64::from(sid.0));
                c.put_ssid_option(ssid);
            }
            Self::PrefetchAddr {
                sid,
                ssid,
                size,
                addr,
            } => {
                c.put(Command::SID, u64::from(sid.0));
                c.put_ssid_option(ssid);
                c.put(Command::PREFETCH_SIZE, u64::from(size));
                c.put_address(Command::PREFETCH_ADDR, addr.0);
            }
            Self::CfgiSte { sid, leaf } => {
                c.put(Command::SID, u64::from(sid.0));
                c.put(Command::LEAF, u64::from(leaf));
            }
            Self::CfgiSteRange { sid, range } => {
                c.put(Command::SID, u64::from(sid.0));
                c.put(Command::CFGI_RANGE, u64::from(range));
            }
            Self::CfgiCd { sid, ssid, leaf } => {
                c.put(Command::SID, u64::from(sid.0));
                c.put(Command::SSID, u64::from(ssid.0));
                c.put(Command::LEAF, u64::from(leaf));
            }
            Self::CfgiCdAll { sid } | Self::StallTerm { sid } => {
                c.put(Command::SID, u64::from(sid.0))
            }
            Self::TlbiNhAll { vmid } | Self::TlbiS12Vmall { vmid } => {
                c.put(Command::VMID, u64::from(vmid.0))
            }
            Self::TlbiNhAsid { vmid, asid } => {
                c.put(Command::VMID, u64::from(vmid.0));
                c.put(Command::ASID, u64::from(asid.0));
            }
            Self::TlbiNhVa {
                vmid,
                asid,
                scope,
                addr,
            } => {
                c.put(Command::VMID, u64::from(vmid.0));
                c.put(Command::ASID, u64::from(asid.0));
                c.put_scope(scope);
                c.put_address(Command::TLBI_ADDR, addr.0);
            }
            Self::TlbiNhVaa { vmid, scope, addr } => {
                c.put(Command::VMID, u64::from(vmid.0));
                c.put_scope(scope);
                c.put_address(Command::TLBI_ADDR, addr.0);
            }
            Self::TlbiEl3All | Self::TlbiEl2All | Self::TlbiNsnhAll => {}
            Self::TlbiEl3Va { scope, addr } | Self::TlbiEl2Vaa { scope, addr } => {
                c.put_scope(scope);
                c.put_address(Command::TLBI_ADDR, addr.0);
            }
            Self::TlbiEl2Asid { asid } => c.put(Command::ASID, u64::from(asid.0)),
            Self::TlbiEl2Va { asid, scope, addr } => {
                c.put(Command::ASID, u64::from(asid.0));
                c.put_scope(scope);
                c.put_address(Command::TLBI_ADDR, addr.0);
            }
            Self::TlbiS2Ipa { vmid, scope, addr } => {
                c.put(Command::VMID, u64::from(vmid.0));
                c.put_scope(scope);
                c.put_address(Command::TLBI_IPA, addr.0);
            }
            Self::AtcInv {
                sid,
                ssid,
                global,
                size,
                addr,
            } => {
                c.put(Command::SID, u64::from(sid.0));
                c.put_ssid_option(ssid);
                c.put(Command::ATC_GLOBAL, u64::from(global));
                c.put(Command::ATC_SIZE, u64::from(size));
                c.put_address(Command::ATC_ADDR, addr.0);
            }
            Self::PriResp {
                sid,
                ssid,
                prg_index,
                response,
            } => {
                c.put(Command::SID, u64::from(sid.0));
                c.put_ssid_option(ssid);
                c.put(Command::PRI_PRG_INDEX, u64::from(prg_index));
                c.put(Command::PRI_RESP, u64::from(response.encoding()));
            }
            Self::Resume { sid, action, stag } => {
                c.put(Command::SID, u64::from(sid.0));
                c.put(Command::RESUME_ACTION, u64::from(action.encoding()));
                c.put(Command::RESUME_STAG, u64::from(stag));
            }
            Self::Sync {
                completion,
                msh,
                msi_attr,
                msi_data,
                msi_addr,
            } => {
                c.put(Command::SYNC_CS, u64::from(completion.encoding()));
                c.put(Command::SYNC_MSH, u64::from(msh));
                c.put(Command::SYNC_MSIATTR, u64::from(msi_attr));
                c.put(Command::SYNC_MSIDATA, u64::from(msi_data));
                c.put_address(Command::SYNC_MSIADDR, msi_addr.0);
            }
        }
        c
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scope(num: u8, scale: u8, leaf: bool, ttl: u8, granule: TlbiGranule) -> TlbiScope {
        TlbiScope {
            num,
            scale,
            leaf,
            ttl,
            granule,
        }
    }

    /// Commands built with known field values and the exact words the reference sheet gives.
    #[test]
    fn encodings_match_the_reference_sheet_word_for_word() {
        let s = scope(3, 4, true, 2, TlbiGranule::Size4K);
        let vectors: [(Cmd, [u64; 2]); 24] = [
            (
                Cmd::PrefetchConfig {
                    sid: StreamId(0x8),
                    ssid: Some(SubstreamId(0x5)),
                },
                [0x0000_0008_0000_5801, 0],
            ),
            (
                Cmd::PrefetchAddr {
                    sid: StreamId(1),
                    ssid: None,
                    size: 3,
                    addr: Iova(0xffff_8000_0000_1000),
                },
                [0x0000_0001_0000_0002, 0xffff_8000_0000_1003],
            ),
            (
                Cmd::CfgiSte {
                    sid: StreamId(0x1234_5678),
                    leaf: true,
                },
                [0x1234_5678_0000_0003, 1],
            ),
            (Cmd::cfgi_all(), [0x04, 31]),
            (
                Cmd::CfgiCd {
                    sid: StreamId(0x10),
                    ssid: SubstreamId(0xf_ffff),
                    leaf: false,
                },
                [0x0000_0010_ffff_f005, 0],
            ),
            (
                Cmd::CfgiCdAll {
                    sid: StreamId(0xffff_ffff),
                },
                [0xffff_ffff_0000_0006, 0],
            ),
            (
                Cmd::TlbiNhAll { vmid: Vmid(0xabcd) },
                [0x0000_abcd_0000_0010, 0],
            ),
            (
                Cmd::TlbiNhAsid {
                    vmid: Vmid(1),
                    asid: Asid(0xfedc),
                },
                [0xfedc_0001_0000_0011, 0],
            ),
            (
                Cmd::TlbiNhVa {
                    vmid: Vmid(0x11),
                    asid: Asid(0x2233),
                    scope: s,
                    addr: Iova(0xffff_0000_1234_5000),
                },
                [0x2233_0011_0040_3012, 0xffff_0000_1234_5601],
            ),
            (
                Cmd::TlbiNhVaa {
                    vmid: Vmid(0x11),
                    scope: TlbiScope::default(),
                    addr: Iova(0x1000),
                },
                [0x0000_0011_0000_0013, 0x1000],
            ),
            (Cmd::TlbiEl3All, [0x18, 0]),
            (
                Cmd::TlbiEl3Va {
                    scope: TlbiScope::default(),
                    addr: Iova(0x2000),
                },
                [0x1A, 0x2000],
            ),
            (Cmd::TlbiEl2All, [0x20, 0]),
            (
                Cmd::TlbiEl2Asid { asid: Asid(7) },
                [0x0007_0000_0000_0021, 0],
            ),
            (
                Cmd::TlbiEl2Va {
                    asid: Asid(7),
                    scope: scope(0, 0, true, 0, TlbiGranule::Unspecified),
                    addr: Iova(0x3000),
                },
                [0x0007_0000_0000_0022, 0x3001],
            ),
            (
                Cmd::TlbiEl2Vaa {
                    scope: scope(31, 31, false, 3, TlbiGranule::Size64K),
                    addr: Iova(0),
                },
                [0x01f1_f023, 0xf00],
            ),
            (
                Cmd::TlbiS12Vmall { vmid: Vmid(0x42) },
                [0x0000_0042_0000_0028, 0],
            ),
            (
                Cmd::TlbiS2Ipa {
                    vmid: Vmid(0x42),
                    scope: scope(1, 0, true, 3, TlbiGranule::Size16K),
                    addr: Ipa(0x8_4000_0000),
                },
                [0x0000_0042_0000_102A, 0x8_4000_0B01],
            ),
            (Cmd::TlbiNsnhAll, [0x30, 0]),
            (
                Cmd::AtcInv {
                    sid: StreamId(8),
                    ssid: Some(SubstreamId(1)),
                    global: true,
                    size: 52,
                    addr: Iova(0),
                },
                [0x0000_0008_0000_1A40, 52],
            ),
            (
                Cmd::PriResp {
                    sid: StreamId(8),
                    ssid: Some(SubstreamId(5)),
                    prg_index: 0x1ff,
                    response: PriResponse::Success,
                },
                [0x0000_0008_0000_5841, 0x21ff],
            ),
            (
                Cmd::Resume {
                    sid: StreamId(9),
                    action: ResumeAction::Abort,
                    stag: 0xbeef,
                },
                [0x0000_0009_0000_2044, 0xbeef],
            ),
            (
                Cmd::StallTerm { sid: StreamId(9) },
                [0x0000_0009_0000_0045, 0],
            ),
            (
                Cmd::Sync {
                    completion: SyncCompletion::Irq,
                    msh: 3,
                    msi_attr: 0xf,
                    msi_data: 0xdead_beef,
                    msi_addr: PhysAddr(0x0800_0044),
                },
                [0xdead_beef_0fc0_1046, 0x0800_0044],
            ),
        ];
        for (cmd, words) in vectors {
            let encoded = cmd.encode();
            assert_eq!(
                encoded.words(),
                words,
                "{cmd:?}: got {:#x?}",
                encoded.words()
            );
            assert_eq!(encoded.decode(), Ok(cmd), "{cmd:?}");
        }
    }

    /// IHI 0070 4.5.2, Resp: 0b00 ResponseFailure, 0b01 InvalidRequest, 0b10 Success,
    /// 0b11 Reserved (ILLEGAL), in word 1 bits 13:12.
    #[test]
    fn pri_response_encoding_is_the_specification_one() {
        let cases = [
            (0b00, Ok(PriResponse::ResponseFailure)),
            (0b01, Ok(PriResponse::InvalidRequest)),
            (0b10, Ok(PriResponse::Success)),
            (0b11, Err(CommandDecodeError::ReservedPriResponse)),
        ];
        for (resp, want) in cases {
            let raw = Command::from_words([0x41, resp << 12]);
            let decoded = raw.decode().map(|cmd| match cmd {
                Cmd::PriResp { response, .. } => Some(response),
                _ => None,
            });
            assert_eq!(decoded, want.map(Some), "Resp {resp:#04b}");
            if let Ok(response) = want {
                assert_eq!(u64::from(response.encoding()), resp);
                assert_eq!(
                    PriResponse::from_encoding(response.encoding()),
                    Some(response)
                );
            }
        }
        assert_eq!(PriResponse::from_encoding(0b11), None);
    }

    #[test]
    fn sync_with_sev_sets_cs_to_two() {
        let cmd = Cmd::Sync {
            completion: SyncCompletion::Sev,
            msh: 0,
            msi_attr: 0,
            msi_data: 0,
            msi_addr: PhysAddr(0),
        };
        assert_eq!(cmd.encode().words(), [0x2046, 0]);
    }

    #[test]
    fn opcode_values_are_the_reference_sheet_ones() {
        let values = Opcode::ALL.map(Opcode::value);
        assert_eq!(
            values,
            [
                0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x10, 0x11, 0x12, 0x13, 0x18, 0x1A, 0x20, 0x21,
                0x22, 0x23, 0x28, 0x2A, 0x30, 0x40, 0x41, 0x44, 0x45, 0x46
            ]
        );
        for op in Opcode::ALL {
            assert_eq!(Opcode::from_u8(op.value()), Some(op));
        }
    }

    #[test]
    fn unknown_opcodes_are_rejected() {
        for op in 0..=u8::MAX {
            let decoded = Command::from_words([u64::from(op), 0]).decode();
            match Opcode::from_u8(op) {
                Some(_) => assert!(
                    decoded.is_ok(),
                    "{op:#x} is defined and all-zero fields are valid"
                ),
                None => assert_eq!(decoded, Err(CommandDecodeError::UnknownOpcode(op))),
            }
        }
    }

    /// Every bit outside a command's defined mask, set alone on an otherwise valid command,
    /// is rejected as a reserved bit: checked exhaustively over all 128 bits of every opcode.
    #[test]
    fn every_reserved_bit_of_every_command_is_rejected() {
        for opcode in Opcode::ALL {
            let defined = opcode.defined_bits();
            for word in 0..2usize {
                for bit in 0..64 {
                    if defined[word] & (1 << bit) != 0 {
                        continue;
                    }
                    let mut words = [u64::from(opcode.value()), 0];
                    words[word] |= 1 << bit;
                    let got = Command::from_words(words).decode();
                    let want = CommandDecodeError::ReservedBitsSet {
                        opcode,
                        word: word as u8,
                        bits: 1 << bit,
                    };
                    assert_eq!(got, Err(want), "{opcode:?} word {word} bit {bit}");
                }
            }
        }
    }

    #[test]
    fn defined_masks_are_the_union_of_the_sheet_fields() {
        // Spot checks of whole masks against the sheet, written out in hex.
        assert_eq!(Opcode::CfgiSte.defined_bits(), [0xffff_ffff_0000_00ff, 1]);
        assert_eq!(Opcode::CfgiCd.defined_bits(), [0xffff_ffff_ffff_f0ff, 1]);
        assert_eq!(
            Opcode::TlbiNhVa.defined_bits(),
            [0xffff_ffff_01f1_f0ff, 0xffff_ffff_ffff_ff01]
        );
        assert_eq!(
            Opcode::TlbiNhVaa.defined_bits(),
            [0x0000_ffff_01f1_f0ff, 0xffff_ffff_ffff_ff01]
        );
        assert_eq!(
            Opcode::TlbiS2Ipa.defined_bits(),
            [0x0000_ffff_01f1_f0ff, 0x000f_ffff_ffff_ff01]
        );
        assert_eq!(
            Opcode::AtcInv.defined_bits(),
            [0xffff_ffff_ffff_faff, 0xffff_ffff_ffff_f03f]
        );
        assert_eq!(
            Opcode::PriResp.defined_bits(),
            [0xffff_ffff_ffff_f8ff, 0x31ff]
        );
        assert_eq!(
            Opcode::Resume.defined_bits(),
            [0xffff_ffff_0000_30ff, 0xffff]
        );
        assert_eq!(
            Opcode::Sync.defined_bits(),
            [0xffff_ffff_0fc0_30ff, 0x000f_ffff_ffff_fffc]
        );
        assert_eq!(Opcode::TlbiNsnhAll.defined_bits(), [0xff, 0]);
    }

    #[test]
    fn reserved_enumerated_values_have_their_own_errors() {
        let pri = Command::from_words([0x41, 3 << 12]).decode();
        assert_eq!(pri, Err(CommandDecodeError::ReservedPriResponse));
        let resume = Command::from_words([0x44 | 3 << 12, 0]).decode();
        assert_eq!(resume, Err(CommandDecodeError::ReservedResumeAction));
        let sync = Command::from_words([0x46 | 3 << 12, 0]).decode();
        assert_eq!(sync, Err(CommandDecodeError::ReservedSyncCompletion));
    }

    #[test]
    fn a_substream_id_without_ssv_is_rejected() {
        for opcode in [
            Opcode::PrefetchConfig,
            Opcode::PrefetchAddr,
            Opcode::AtcInv,
            Opcode::PriResp,
        ] {
            let got = Command::from_words([u64::from(opcode.value()) | 5 << 12, 0]).decode();
            assert_eq!(got, Err(CommandDecodeError::SubstreamIdWithoutSsv(opcode)));
        }
    }

    #[test]
    fn command_bytes_are_little_endian_words() {
        let c = Cmd::CfgiSte {
            sid: StreamId(0x0102_0304),
            leaf: false,
        }
        .encode();
        assert_eq!(&c.as_bytes()[..8], &[0x03, 0, 0, 0, 0x04, 0x03, 0x02, 0x01]);
    }

    fn sid() -> impl Strategy<Value = StreamId> {
        any::<u32>().prop_map(StreamId)
    }
    fn ssid() -> impl Strategy<Value = SubstreamId> {
        (0u32..1 << 20).prop_map(SubstreamId)
    }
    fn ssid_opt() -> impl Strategy<Value = Option<SubstreamId>> {
        proptest::option::of(ssid())
    }
    fn vmid() -> impl Strategy<Value = Vmid> {
        any::<u16>().prop_map(Vmid)
    }
    fn asid() -> impl Strategy<Value = Asid> {
        any::<u16>().prop_map(Asid)
    }
    fn va() -> impl Strategy<Value = Iova> {
        any::<u64>().prop_map(|a| Iova(a & !0xfff))
    }
    fn tlbi_scope() -> impl Strategy<Value = TlbiScope> {
        (0u8..32, 0u8..32, any::<bool>(), 0u8..4, 0u8..4).prop_map(|(num, scale, leaf, ttl, tg)| {
            TlbiScope {
                num,
                scale,
                leaf,
                ttl,
                granule: TlbiGranule::from_encoding(tg),
            }
        })
    }

    fn arb_cmd() -> impl Strategy<Value = Cmd> {
        prop_oneof![
            (sid(), ssid_opt()).prop_map(|(sid, ssid)| Cmd::PrefetchConfig { sid, ssid }),
            (sid(), ssid_opt(), 0u8..32, va()).prop_map(|(sid, ssid, size, addr)| {
                Cmd::PrefetchAddr {
                    sid,
                    ssid,
                    size,
                    addr,
                }
            }),
            (sid(), any::<bool>()).prop_map(|(sid, leaf)| Cmd::CfgiSte { sid, leaf }),
            (sid(), 0u8..32).prop_map(|(sid, range)| Cmd::CfgiSteRange { sid, range }),
            (sid(), ssid(), any::<bool>()).prop_map(|(sid, ssid, leaf)| Cmd::CfgiCd {
                sid,
                ssid,
                leaf
            }),
            sid().prop_map(|sid| Cmd::CfgiCdAll { sid }),
            vmid().prop_map(|vmid| Cmd::TlbiNhAll { vmid }),
            (vmid(), asid()).prop_map(|(vmid, asid)| Cmd::TlbiNhAsid { vmid, asid }),
            (vmid(), asid(), tlbi_scope(), va()).prop_map(|(vmid, asid, scope, addr)| {
                Cmd::TlbiNhVa {
                    vmid,
                    asid,
                    scope,
                    addr,
                }
            }),
            (vmid(), tlbi_scope(), va()).prop_map(|(vmid, scope, addr)| Cmd::TlbiNhVaa {
                vmid,
                scope,
                addr
            }),
            Just(Cmd::TlbiEl3All),
            (tlbi_scope(), va()).prop_map(|(scope, addr)| Cmd::TlbiEl3Va { scope, addr }),
            Just(Cmd::TlbiEl2All),
            asid().prop_map(|asid| Cmd::TlbiEl2Asid { asid }),
            (asid(), tlbi_scope(), va()).prop_map(|(asid, scope, addr)| Cmd::TlbiEl2Va {
                asid,
                scope,
                addr
            }),
            (tlbi_scope(), va()).prop_map(|(scope, addr)| Cmd::TlbiEl2Vaa { scope, addr }),
            vmid().prop_map(|vmid| Cmd::TlbiS12Vmall { vmid }),
            (vmid(), tlbi_scope(), 0u64..1 << 40).prop_map(|(vmid, scope, page)| Cmd::TlbiS2Ipa {
                vmid,
                scope,
                addr: Ipa(page << 12)
            }),
            Just(Cmd::TlbiNsnhAll),
            (sid(), ssid_opt(), any::<bool>(), 0u8..64, va()).prop_map(
                |(sid, ssid, global, size, addr)| Cmd::AtcInv {
                    sid,
                    ssid,
                    global,
                    size,
                    addr
                }
            ),
            (sid(), ssid_opt(), 0u16..512, 0u8..3).prop_map(|(sid, ssid, prg_index, r)| {
                Cmd::PriResp {
                    sid,
                    ssid,
                    prg_index,
                    response: PriResponse::from_encoding(r).unwrap(),
                }
            }),
            (sid(), 0u8..3, any::<u16>()).prop_map(|(sid, a, stag)| Cmd::Resume {
                sid,
                action: ResumeAction::from_encoding(a).unwrap(),
                stag,
            }),
            sid().prop_map(|sid| Cmd::StallTerm { sid }),
            (0u8..3, 0u8..4, 0u8..16, any::<u32>(), 0u64..1 << 50).prop_map(
                |(cs, msh, msi_attr, msi_data, addr)| {
                    Cmd::Sync {
                        completion: SyncCompletion::from_encoding(cs).unwrap(),
                        msh,
                        msi_attr,
                        msi_data,
                        msi_addr: PhysAddr(addr << 2),
                    }
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(cmd in arb_cmd()) {
            prop_assert_eq!(cmd.encode().decode(), Ok(cmd));
        }

        #[test]
        fn encoded_commands_set_only_defined_bits(cmd in arb_cmd()) {
            let words = cmd.encode().words();
            let defined = cmd.opcode().defined_bits();
            prop_assert_eq!(words[0] & !defined[0], 0);
            prop_assert_eq!(words[1] & !defined[1], 0);
        }

        #[test]
        fn flipping_any_undefined_bit_of_a_valid_command_is_rejected(cmd in arb_cmd(), word in 0usize..2, bit in 0u32..64) {
            let defined = cmd.opcode().defined_bits();
            prop_assume!(defined[word] & (1 << bit) == 0);
            let mut words = cmd.encode().words();
            words[word] ^= 1 << bit;
            let decoded = Command::from_words(words).decode();
            let is_reserved_bit_error = matches!(decoded, Err(CommandDecodeError::ReservedBitsSet { .. }));
            prop_assert!(is_reserved_bit_error, "{:?}", decoded);
        }

        #[test]
        fn any_raw_command_that_decodes_re_encodes_to_itself(w0 in any::<u64>(), w1 in any::<u64>(), op in 0usize..24) {
            // Force a known opcode so random words reach the field checks.
            let opcode = Opcode::ALL[op];
            let raw = Command::from_words([(w0 & !0xff) | u64::from(opcode.value()), w1]);
            if let Ok(cmd) = raw.decode() {
                prop_assert_eq!(cmd.encode(), raw);
            }
        }
    }
}
