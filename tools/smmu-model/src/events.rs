//! Event and PRI queue records as the model's SMMU writes them, laid out by the model's own
//! reading of IHI 0070 7.3 and chapter 8 (not the `smmu` crate's encoders, so that a field
//! either side misplaces shows up as a disagreement in the driver's decode).

/// Event IDs (IHI 0070 7.3).
pub mod id {
    /// C_BAD_STREAMID.
    pub const C_BAD_STREAMID: u8 = 0x02;
    /// F_STE_FETCH.
    pub const F_STE_FETCH: u8 = 0x03;
    /// C_BAD_STE.
    pub const C_BAD_STE: u8 = 0x04;
    /// F_BAD_ATS_TREQ.
    pub const F_BAD_ATS_TREQ: u8 = 0x05;
    /// F_STREAM_DISABLED.
    pub const F_STREAM_DISABLED: u8 = 0x06;
    /// F_TRANSL_FORBIDDEN.
    pub const F_TRANSL_FORBIDDEN: u8 = 0x07;
    /// C_BAD_SUBSTREAMID.
    pub const C_BAD_SUBSTREAMID: u8 = 0x08;
    /// F_CD_FETCH.
    pub const F_CD_FETCH: u8 = 0x09;
    /// C_BAD_CD.
    pub const C_BAD_CD: u8 = 0x0A;
    /// F_WALK_EABT.
    pub const F_WALK_EABT: u8 = 0x0B;
    /// F_TRANSLATION.
    pub const F_TRANSLATION: u8 = 0x10;
    /// F_ADDR_SIZE.
    pub const F_ADDR_SIZE: u8 = 0x11;
    /// F_ACCESS.
    pub const F_ACCESS: u8 = 0x12;
    /// F_PERMISSION.
    pub const F_PERMISSION: u8 = 0x13;
}

/// CLASS values.
pub mod class {
    /// CD fetch.
    pub const CD: u8 = 0;
    /// Stage-1 translation table fetch.
    pub const TT: u8 = 1;
    /// The input address.
    pub const IN: u8 = 2;
}

/// What an event record says, before layout.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[allow(clippy::struct_excessive_bools)] // One per record bit.
pub struct EventFields {
    /// ID.
    pub id: u8,
    /// StreamID.
    pub sid: u32,
    /// SubstreamID; SSV is set when present (except where the event has no SSV, see
    /// [`EventFields::substream_always_valid`]).
    pub ssid: Option<u32>,
    /// C_BAD_SUBSTREAMID: the SubstreamID field is always valid and there is no SSV bit.
    pub substream_always_valid: bool,
    /// STAG, when stalled.
    pub stall_tag: Option<u16>,
    /// PnU.
    pub privileged: bool,
    /// InD.
    pub instruction: bool,
    /// RnW.
    pub read: bool,
    /// S2.
    pub s2: bool,
    /// CLASS.
    pub class: u8,
    /// Whether word 1's access fields (RnW, InD, PnU, S2, CLASS) are part of this event.
    pub has_access_fields: bool,
    /// InputAddr.
    pub input: u64,
    /// Word 3: the IPA (bits 55:12) or a fetch address (bits 55:3).
    pub address2: u64,
    /// Whether word 3 is a fetch address (F_*_FETCH, F_WALK_EABT).
    pub address2_is_fetch: bool,
}

impl EventFields {
    /// The 32-byte record.
    #[must_use]
    pub fn encode(&self) -> [u64; 4] {
        let mut w0 = u64::from(self.id) | u64::from(self.sid) << 32;
        if let Some(ssid) = self.ssid {
            w0 |= u64::from(ssid & 0xf_ffff) << 12;
            if !self.substream_always_valid {
                w0 |= 1 << 11;
            }
        }
        let mut w1 = 0;
        if let Some(stag) = self.stall_tag {
            w1 |= u64::from(stag) | 1 << 31;
        }
        if self.has_access_fields {
            w1 |= u64::from(self.privileged) << 33
                | u64::from(self.instruction && self.read) << 34
                | u64::from(self.read) << 35
                | u64::from(self.s2) << 39
                | u64::from(self.class & 3) << 40;
        }
        let w3 = if self.address2_is_fetch {
            self.address2 & 0x00ff_ffff_ffff_fff8
        } else {
            self.address2 & 0x00ff_ffff_ffff_f000
        };
        [w0, w1, self.input, w3]
    }
}

/// A PRI queue entry (IHI 0070 chapter 8).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[allow(clippy::struct_excessive_bools)] // One per entry bit.
pub struct PriFields {
    /// StreamID.
    pub sid: u32,
    /// PASID (SSV = 1).
    pub ssid: Option<u32>,
    /// Priv.
    pub privileged: bool,
    /// X.
    pub exec: bool,
    /// R.
    pub read: bool,
    /// W.
    pub write: bool,
    /// Last.
    pub last: bool,
    /// PRGIndex.
    pub prg_index: u16,
    /// The page address (bits 63:12).
    pub address: u64,
}

impl PriFields {
    /// The 16-byte entry. Without a PASID, X and Priv are 0 (chapter 8).
    #[must_use]
    pub fn encode(&self) -> [u64; 2] {
        let mut w0 = u64::from(self.sid);
        if let Some(ssid) = self.ssid {
            w0 |= u64::from(ssid & 0xf_ffff) << 32
                | 1 << 63
                | u64::from(self.privileged) << 58
                | u64::from(self.exec) << 59;
        }
        w0 |= u64::from(self.read) << 60 | u64::from(self.write) << 61 | u64::from(self.last) << 62;
        let w1 = (self.address & !0xfff) | u64::from(self.prg_index & 0x1ff);
        [w0, w1]
    }

    /// A stop marker: SSV = 1, R = W = 0, Last = 1.
    #[must_use]
    pub const fn is_stop_marker(&self) -> bool {
        self.ssid.is_some() && !self.read && !self.write && self.last
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
    use smmu::event::{EventAddress, EventId, FaultClass};
    use smmu::page_request::PriEntry;
    use smmu::{Ipa, PhysAddr, StreamId, SubstreamId};

    /// The model's layout and the driver's decoder agree on every field.
    #[test]
    fn the_drivers_decoder_reads_the_models_records() {
        let fields = EventFields {
            id: id::F_PERMISSION,
            sid: 0x1234,
            ssid: Some(0x5_4321),
            stall_tag: Some(0xbeef),
            privileged: true,
            instruction: true,
            read: true,
            s2: true,
            class: class::TT,
            has_access_fields: true,
            input: 0xffff_0000_1234_5678,
            address2: 0x0008_7654_3000,
            ..EventFields::default()
        };
        let event = smmu::event::EventRecord::from_words(fields.encode())
            .decode()
            .unwrap();
        assert_eq!(event.id, EventId::FPermission);
        assert_eq!(event.sid, StreamId(0x1234));
        assert_eq!(event.ssid, Some(SubstreamId(0x5_4321)));
        assert_eq!((event.stag, event.stall), (0xbeef, true));
        assert!(event.pnu && event.ind && event.rnw && event.s2);
        assert_eq!(event.class, FaultClass::TranslationTable);
        assert_eq!(event.input_addr.0, 0xffff_0000_1234_5678);
        assert_eq!(event.addr2, EventAddress::Ipa(Ipa(0x0008_7654_3000)));

        let fetch = EventFields {
            id: id::F_WALK_EABT,
            address2: 0x4000_1238,
            address2_is_fetch: true,
            has_access_fields: true,
            ..EventFields::default()
        };
        let event = smmu::event::EventRecord::from_words(fetch.encode())
            .decode()
            .unwrap();
        assert_eq!(event.addr2, EventAddress::Fetch(PhysAddr(0x4000_1238)));
    }

    #[test]
    fn the_drivers_decoder_reads_the_models_page_requests() {
        let fields = PriFields {
            sid: 8,
            ssid: Some(0x42),
            privileged: true,
            exec: false,
            read: true,
            write: true,
            last: true,
            prg_index: 0x1a5,
            address: 0x7_0000_3000,
        };
        let request = PriEntry::from_words(fields.encode()).decode().unwrap();
        assert_eq!(request.sid, StreamId(8));
        assert_eq!(request.ssid, Some(SubstreamId(0x42)));
        assert!(request.privileged && request.read && request.write && request.last);
        assert_eq!((request.prg_index, request.addr.0), (0x1a5, 0x7_0000_3000));
        let stop = PriFields {
            ssid: Some(1),
            last: true,
            ..PriFields::default()
        };
        assert!(stop.is_stop_marker());
        assert!(
            PriEntry::from_words(stop.encode())
                .decode()
                .unwrap()
                .is_stop_marker()
        );
    }
}
