//! Event queue records: the raw 32-byte [`EventRecord`] and the typed [`Event`].
//!
//! This module owns the layout of an event record and the list of event IDs. The physical
//! driver decodes what the SMMU writes; the virtual SMMU and the host model encode records of
//! their own. Deciding which events a guest sees is `nested`'s job.
//!
//! Decoding keeps every field of the reference sheet and ignores the other bits: some events
//! carry per-event or IMPLEMENTATION DEFINED data there, and refusing a hardware record would
//! lose a fault report. So `decode(encode(e)) == e`, while `encode(decode(r))` may clear bits.

use static_assertions::const_assert_eq;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::bits;
use crate::field::Field;
use crate::ids::{Iova, Ipa, PhysAddr, StreamId, SubstreamId};

/// An event queue entry: four little-endian 64-bit words.
#[derive(
    Clone, Copy, PartialEq, Eq, Default, Debug, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(transparent)]
pub struct EventRecord([u64; 4]);

const_assert_eq!(core::mem::size_of::<EventRecord>(), 32);

/// Event IDs (word 0 bits 7:0).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum EventId {
    /// F_UUT: unsupported upstream transaction.
    FUut = 0x01,
    /// C_BAD_STREAMID: stream ID out of range of the stream table.
    CBadStreamid = 0x02,
    /// F_STE_FETCH: external abort fetching an STE.
    FSteFetch = 0x03,
    /// C_BAD_STE: the STE is invalid or holds an illegal value.
    CBadSte = 0x04,
    /// F_BAD_ATS_TREQ: an ATS translation request the STE does not allow.
    FBadAtsTreq = 0x05,
    /// F_STREAM_DISABLED: a transaction without substream where S1DSS terminates them.
    FStreamDisabled = 0x06,
    /// F_TRANSL_FORBIDDEN: a translated (ATS) transaction that is not allowed.
    FTranslForbidden = 0x07,
    /// C_BAD_SUBSTREAMID: substream ID out of range of the CD table.
    CBadSubstreamid = 0x08,
    /// F_CD_FETCH: external abort fetching a CD.
    FCdFetch = 0x09,
    /// C_BAD_CD: the CD is invalid or holds an illegal value.
    CBadCd = 0x0A,
    /// F_WALK_EABT: external abort during a table walk.
    FWalkEabt = 0x0B,
    /// F_TRANSLATION: translation fault.
    FTranslation = 0x10,
    /// F_ADDR_SIZE: address size fault.
    FAddrSize = 0x11,
    /// F_ACCESS: access flag fault.
    FAccess = 0x12,
    /// F_PERMISSION: permission fault.
    FPermission = 0x13,
    /// F_TLB_CONFLICT: TLB conflict.
    FTlbConflict = 0x20,
    /// F_CFG_CONFLICT: configuration cache conflict.
    FCfgConflict = 0x21,
    /// E_PAGE_REQUEST: a speculative page request hint.
    EPageRequest = 0x24,
    /// F_VMS_FETCH: external abort fetching a VMS.
    FVmsFetch = 0x25,
}

impl EventId {
    /// Every event ID of the reference sheet.
    pub const ALL: [EventId; 19] = [
        Self::FUut,
        Self::CBadStreamid,
        Self::FSteFetch,
        Self::CBadSte,
        Self::FBadAtsTreq,
        Self::FStreamDisabled,
        Self::FTranslForbidden,
        Self::CBadSubstreamid,
        Self::FCdFetch,
        Self::CBadCd,
        Self::FWalkEabt,
        Self::FTranslation,
        Self::FAddrSize,
        Self::FAccess,
        Self::FPermission,
        Self::FTlbConflict,
        Self::FCfgConflict,
        Self::EPageRequest,
        Self::FVmsFetch,
    ];

    /// The event ID with this value, if the reference sheet defines one.
    #[must_use]
    pub const fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            0x01 => Self::FUut,
            0x02 => Self::CBadStreamid,
            0x03 => Self::FSteFetch,
            0x04 => Self::CBadSte,
            0x05 => Self::FBadAtsTreq,
            0x06 => Self::FStreamDisabled,
            0x07 => Self::FTranslForbidden,
            0x08 => Self::CBadSubstreamid,
            0x09 => Self::FCdFetch,
            0x0A => Self::CBadCd,
            0x0B => Self::FWalkEabt,
            0x10 => Self::FTranslation,
            0x11 => Self::FAddrSize,
            0x12 => Self::FAccess,
            0x13 => Self::FPermission,
            0x20 => Self::FTlbConflict,
            0x21 => Self::FCfgConflict,
            0x24 => Self::EPageRequest,
            0x25 => Self::FVmsFetch,
            _ => return None,
        })
    }

    /// The ID value.
    #[must_use]
    pub const fn value(self) -> u8 {
        self as u8
    }

    /// Whether the record's SubstreamID field is valid without SSV: C_BAD_SUBSTREAMID has no SSV
    /// bit (bit 11 is RES0) and always names the SubstreamID (or the CD index, 0, for
    /// non-substream traffic through S1DSS = substream 0) that failed (IHI 0070 7.3.9).
    #[must_use]
    pub const fn substream_always_valid(self) -> bool {
        matches!(self, Self::CBadSubstreamid)
    }

    /// Whether word 3 of this event holds the physical address of a failed fetch (bits 51:3)
    /// rather than a faulting IPA (bits 51:12).
    #[must_use]
    pub const fn records_fetch_address(self) -> bool {
        matches!(
            self,
            Self::FSteFetch | Self::FCdFetch | Self::FWalkEabt | Self::FVmsFetch
        )
    }
}

/// CLASS (word 1 bits 41:40): what the SMMU was accessing when the fault happened.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FaultClass {
    /// A CD fetch (0).
    #[default]
    ContextDescriptor,
    /// A translation table walk (1).
    TranslationTable,
    /// The input address of the transaction itself (2).
    Input,
}

impl FaultClass {
    /// Decodes the 2-bit field; 3 is reserved.
    #[must_use]
    pub const fn from_encoding(encoding: u8) -> Option<Self> {
        match encoding {
            0 => Some(Self::ContextDescriptor),
            1 => Some(Self::TranslationTable),
            2 => Some(Self::Input),
            _ => None,
        }
    }

    /// The 2-bit field value.
    #[must_use]
    pub const fn encoding(self) -> u8 {
        self as u8
    }
}

/// Word 3 of an event record, whose meaning depends on the event.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum EventAddress {
    /// The IPA of a stage-2 fault (bits 51:12).
    Ipa(Ipa),
    /// The physical address of a failed configuration or table fetch (bits 51:3), for the
    /// events whose [`EventId::records_fetch_address`] is true.
    Fetch(PhysAddr),
}

impl Default for EventAddress {
    fn default() -> Self {
        Self::Ipa(Ipa(0))
    }
}

/// An event, typed. Field names follow the architecture.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[allow(clippy::struct_excessive_bools)] // One flag per architected bit.
pub struct Event {
    /// ID (word 0 bits 7:0).
    pub id: EventId,
    /// StreamID (word 0 bits 63:32).
    pub sid: StreamId,
    /// SubstreamID (word 0 bits 31:12) when SSV (bit 11) is set.
    pub ssid: Option<SubstreamId>,
    /// STAG (word 1 bits 15:0): the stall tag, for CMD_RESUME.
    pub stag: u16,
    /// Stall (word 1 bit 31): the transaction is stalled and awaits CMD_RESUME.
    pub stall: bool,
    /// PnU (word 1 bit 33): privileged (rather than unprivileged) access.
    pub pnu: bool,
    /// InD (word 1 bit 34): instruction (rather than data) access.
    pub ind: bool,
    /// RnW (word 1 bit 35): read (rather than write) access.
    pub rnw: bool,
    /// S2 (word 1 bit 39): the fault arose at stage 2. These belong to the hypervisor.
    pub s2: bool,
    /// CLASS (word 1 bits 41:40).
    pub class: FaultClass,
    /// InputAddr (word 2): the transaction's input address.
    pub input_addr: Iova,
    /// Word 3: faulting IPA or fetch address.
    pub addr2: EventAddress,
}

/// Why an event record does not decode.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum EventDecodeError {
    /// The ID is not one of the reference sheet (including IMPLEMENTATION DEFINED events).
    UnknownId(u8),
    /// CLASS is 3 (reserved).
    ReservedClass,
}

impl EventRecord {
    /// ID (word 0 bits 7:0).
    pub const ID: Field = Field::new(0, 7, 0);
    /// SSV (word 0 bit 11).
    pub const SSV: Field = Field::new(0, 11, 11);
    /// SubstreamID (word 0 bits 31:12).
    pub const SSID: Field = Field::new(0, 31, 12);
    /// StreamID (word 0 bits 63:32).
    pub const SID: Field = Field::new(0, 63, 32);
    /// STAG (word 1 bits 15:0).
    pub const STAG: Field = Field::new(1, 15, 0);
    /// Stall (word 1 bit 31).
    pub const STALL: Field = Field::new(1, 31, 31);
    /// PnU (word 1 bit 33).
    pub const PNU: Field = Field::new(1, 33, 33);
    /// InD (word 1 bit 34).
    pub const IND: Field = Field::new(1, 34, 34);
    /// RnW (word 1 bit 35).
    pub const RNW: Field = Field::new(1, 35, 35);
    /// S2 (word 1 bit 39).
    pub const S2: Field = Field::new(1, 39, 39);
    /// CLASS (word 1 bits 41:40).
    pub const CLASS: Field = Field::new(1, 41, 40);
    /// InputAddr (word 2 bits 63:0).
    pub const INPUT_ADDR: Field = Field::new(2, 63, 0);
    /// IPA (word 3 bits 51:12).
    pub const IPA: Field = Field::new(3, 51, 12);
    /// FetchAddr (word 3 bits 51:3).
    pub const FETCH_ADDR: Field = Field::new(3, 51, 3);

    /// The record with these words.
    #[must_use]
    pub const fn from_words(words: [u64; 4]) -> Self {
        Self(words)
    }

    /// The record's words.
    #[must_use]
    pub const fn words(&self) -> [u64; 4] {
        self.0
    }

    /// Decodes the record.
    ///
    /// # Errors
    ///
    /// [`EventDecodeError::UnknownId`] for an ID outside the reference sheet,
    /// [`EventDecodeError::ReservedClass`] for CLASS=3.
    pub const fn decode(&self) -> Result<Event, EventDecodeError> {
        let [w0, w1, w2, w3] = self.0;
        let raw_id = bits::get_u8(w0, 7, 0);
        let Some(id) = EventId::from_u8(raw_id) else {
            return Err(EventDecodeError::UnknownId(raw_id));
        };
        let Some(class) = FaultClass::from_encoding(bits::get_u8(w1, 41, 40)) else {
            return Err(EventDecodeError::ReservedClass);
        };
        let ssid = if bits::bit(w0, 11) || id.substream_always_valid() {
            Some(SubstreamId(bits::get_u32(w0, 31, 12)))
        } else {
            None
        };
        let addr2 = if id.records_fetch_address() {
            EventAddress::Fetch(PhysAddr(w3 & Self::FETCH_ADDR.mask()))
        } else {
            EventAddress::Ipa(Ipa(w3 & Self::IPA.mask()))
        };
        Ok(Event {
            id,
            sid: StreamId(bits::get_u32(w0, 63, 32)),
            ssid,
            stag: bits::get_u16(w1, 15, 0),
            stall: bits::bit(w1, 31),
            pnu: bits::bit(w1, 33),
            ind: bits::bit(w1, 34),
            rnw: bits::bit(w1, 35),
            s2: bits::bit(w1, 39),
            class,
            input_addr: Iova(w2),
            addr2,
        })
    }
}

impl Event {
    /// An event with this ID and stream and every other field zero.
    #[must_use]
    pub const fn new(id: EventId, sid: StreamId) -> Self {
        Self {
            id,
            sid,
            ssid: None,
            stag: 0,
            stall: false,
            pnu: false,
            ind: false,
            rnw: false,
            s2: false,
            class: FaultClass::ContextDescriptor,
            input_addr: Iova(0),
            addr2: EventAddress::Ipa(Ipa(0)),
        }
    }

    /// Encodes the event. Total: a SubstreamID wider than 20 bits is truncated, and address
    /// bits outside word 3's field are dropped.
    #[must_use]
    pub const fn encode(&self) -> EventRecord {
        let mut w0 = self.id.value() as u64;
        w0 = bits::set(w0, 63, 32, self.sid.0 as u64);
        if let Some(ssid) = self.ssid {
            w0 = bits::set_bit(w0, 11, !self.id.substream_always_valid());
            w0 = bits::set(w0, 31, 12, ssid.0 as u64);
        }
        let mut w1 = self.stag as u64;
        w1 = bits::set_bit(w1, 31, self.stall);
        w1 = bits::set_bit(w1, 33, self.pnu);
        w1 = bits::set_bit(w1, 34, self.ind);
        w1 = bits::set_bit(w1, 35, self.rnw);
        w1 = bits::set_bit(w1, 39, self.s2);
        w1 = bits::set(w1, 41, 40, self.class.encoding() as u64);
        let w3 = match self.addr2 {
            EventAddress::Ipa(ipa) => ipa.0 & EventRecord::IPA.mask(),
            EventAddress::Fetch(pa) => pa.0 & EventRecord::FETCH_ADDR.mask(),
        };
        EventRecord([w0, w1, self.input_addr.0, w3])
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn event_ids_are_the_reference_sheet_values() {
        let expected = [
            (0x01, EventId::FUut),
            (0x02, EventId::CBadStreamid),
            (0x03, EventId::FSteFetch),
            (0x04, EventId::CBadSte),
            (0x05, EventId::FBadAtsTreq),
            (0x06, EventId::FStreamDisabled),
            (0x07, EventId::FTranslForbidden),
            (0x08, EventId::CBadSubstreamid),
            (0x09, EventId::FCdFetch),
            (0x0A, EventId::CBadCd),
            (0x0B, EventId::FWalkEabt),
            (0x10, EventId::FTranslation),
            (0x11, EventId::FAddrSize),
            (0x12, EventId::FAccess),
            (0x13, EventId::FPermission),
            (0x20, EventId::FTlbConflict),
            (0x21, EventId::FCfgConflict),
            (0x24, EventId::EPageRequest),
            (0x25, EventId::FVmsFetch),
        ];
        for (value, id) in expected {
            assert_eq!(id.value(), value);
            assert_eq!(EventId::from_u8(value), Some(id));
        }
        let defined = expected.map(|(v, _)| v);
        for v in 0..=u8::MAX {
            if !defined.contains(&v) {
                assert_eq!(
                    EventRecord::from_words([u64::from(v), 0, 0, 0]).decode(),
                    Err(EventDecodeError::UnknownId(v))
                );
            }
        }
    }

    #[test]
    fn a_stage2_translation_fault_encodes_to_the_sheet_layout() {
        let event = Event {
            id: EventId::FTranslation,
            sid: StreamId(8),
            ssid: Some(SubstreamId(0x12)),
            stag: 0xabcd,
            stall: true,
            pnu: true,
            ind: false,
            rnw: true,
            s2: true,
            class: FaultClass::Input,
            input_addr: Iova(0xdead_b000),
            addr2: EventAddress::Ipa(Ipa(0x4_0123_4000)),
        };
        let words = event.encode().words();
        assert_eq!(words[0], 0x0000_0008_0001_2810);
        assert_eq!(
            words[1],
            0xabcd | 1 << 31 | 1 << 33 | 1 << 35 | 1 << 39 | 2 << 40
        );
        assert_eq!(words[2], 0xdead_b000);
        assert_eq!(words[3], 0x4_0123_4000);
        assert_eq!(event.encode().decode(), Ok(event));
    }

    #[test]
    fn fetch_faults_carry_a_fetch_address_in_word_3() {
        let record = EventRecord::from_words([0x09, 0, 0, 0x8_0000_1238 | 0x7]);
        let event = record.decode().unwrap();
        assert_eq!(event.addr2, EventAddress::Fetch(PhysAddr(0x8_0000_1238)));
        let record = EventRecord::from_words([0x10, 0, 0, 0x8_0000_1238]);
        assert_eq!(
            record.decode().unwrap().addr2,
            EventAddress::Ipa(Ipa(0x8_0000_1000))
        );
    }

    #[test]
    fn reserved_class_is_rejected_and_ssid_needs_ssv() {
        assert_eq!(
            EventRecord::from_words([0x10, 3 << 40, 0, 0]).decode(),
            Err(EventDecodeError::ReservedClass)
        );
        let no_ssv = EventRecord::from_words([0x10 | 0x55 << 12, 0, 0, 0])
            .decode()
            .unwrap();
        assert_eq!(no_ssv.ssid, None);
    }

    /// C_BAD_SUBSTREAMID has no SSV: its SubstreamID is always the one that failed, and it is
    /// encoded without setting bit 11 (RES0 in that record).
    #[test]
    fn c_bad_substreamid_names_its_substream_without_ssv() {
        let record = EventRecord::from_words([0x08 | 0xc5 << 12 | 8 << 32, 0, 0, 0]);
        let event = record.decode().unwrap();
        assert_eq!(event.ssid, Some(SubstreamId(0xc5)));
        assert_eq!(event.encode().words()[0], record.words()[0]);
        let zero = EventRecord::from_words([0x08, 0, 0, 0]).decode().unwrap();
        assert_eq!(
            zero.ssid,
            Some(SubstreamId(0)),
            "CD index 0 is a valid SubstreamID here"
        );
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        (
            (
                0usize..19,
                any::<u32>(),
                proptest::option::of(0u32..1 << 20),
                any::<u16>(),
            ),
            (any::<[bool; 5]>(), 0u8..3, any::<u64>(), any::<u64>()),
        )
            .prop_map(|((id, sid, ssid, stag), (flags, class, input, addr))| {
                let id = EventId::ALL[id % EventId::ALL.len()];
                let addr2 = if id.records_fetch_address() {
                    EventAddress::Fetch(PhysAddr(addr & EventRecord::FETCH_ADDR.mask()))
                } else {
                    EventAddress::Ipa(Ipa(addr & EventRecord::IPA.mask()))
                };
                Event {
                    id,
                    sid: StreamId(sid),
                    // C_BAD_SUBSTREAMID always carries one.
                    ssid: if id.substream_always_valid() {
                        Some(SubstreamId(ssid.unwrap_or(0)))
                    } else {
                        ssid.map(SubstreamId)
                    },
                    stag,
                    stall: flags[0],
                    pnu: flags[1],
                    ind: flags[2],
                    rnw: flags[3],
                    s2: flags[4],
                    class: FaultClass::from_encoding(class).unwrap(),
                    input_addr: Iova(input),
                    addr2,
                }
            })
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(event in arb_event()) {
            prop_assert_eq!(event.encode().decode(), Ok(event));
        }

        #[test]
        fn re_encoding_a_decoded_record_keeps_every_sheet_field(words in any::<[u64; 4]>(), id in 0usize..19) {
            let mut words = words;
            words[0] = (words[0] & !0xff) | u64::from(EventId::ALL[id].value());
            if let Ok(event) = EventRecord::from_words(words).decode() {
                prop_assert_eq!(event.encode().decode(), Ok(event));
            }
        }
    }
}
