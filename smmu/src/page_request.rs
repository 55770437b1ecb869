//! PRI queue entries: the raw 16-byte [`PriEntry`] and the typed [`PageRequest`].
//!
//! This module owns the layout of a PRI queue entry and the definition of a stop marker. The
//! physical driver decodes what the SMMU writes; the virtual SMMU and the host model encode
//! entries. Tracking page request groups and answering them is the driver's and `nested`'s job.

use static_assertions::const_assert_eq;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::bits;
use crate::field::Field;
use crate::ids::{Iova, StreamId, SubstreamId};

/// A PRI queue entry: two little-endian 64-bit words.
#[derive(
    Clone, Copy, PartialEq, Eq, Default, Debug, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(transparent)]
pub struct PriEntry([u64; 2]);

const_assert_eq!(core::mem::size_of::<PriEntry>(), 16);

/// A page request, typed. Field names follow the architecture.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[allow(clippy::struct_excessive_bools)] // One flag per architected bit.
pub struct PageRequest {
    /// StreamID (word 0 bits 31:0).
    pub sid: StreamId,
    /// SubstreamID (word 0 bits 51:32) when SSV (bit 63) is set: the PASID.
    pub ssid: Option<SubstreamId>,
    /// PRIV (word 0 bit 58): privileged access requested.
    pub privileged: bool,
    /// EXEC (word 0 bit 59): execute access requested.
    pub exec: bool,
    /// READ (word 0 bit 60): read access requested.
    pub read: bool,
    /// WRITE (word 0 bit 61): write access requested.
    pub write: bool,
    /// LAST (word 0 bit 62): the last request of its page request group.
    pub last: bool,
    /// PRGIndex (word 1 bits 8:0): the group this request belongs to.
    pub prg_index: u16,
    /// ADDR (word 1 bits 63:12): the page requested.
    pub addr: Iova,
}

impl PageRequest {
    /// Whether this is a PRI stop marker: READ=0, WRITE=0, LAST=1 with a PASID (SSV=1).
    ///
    /// A stop marker tells the SMMU the function has stopped using the PASID and has no more
    /// requests in flight for it; it gets no response. Without a PASID the same bits are an
    /// ordinary (if odd) request, which must be answered.
    #[must_use]
    pub const fn is_stop_marker(&self) -> bool {
        !self.read && !self.write && self.last && self.ssid.is_some()
    }

    /// Whether the group this request belongs to must now be answered with one CMD_PRI_RESP:
    /// it is the last of its group and not a stop marker.
    #[must_use]
    pub const fn completes_group(&self) -> bool {
        self.last && !self.is_stop_marker()
    }

    /// Encodes the request. Total: a SubstreamID wider than 20 bits or a PRG index wider than
    /// 9 bits is truncated, and address bits below 12 are dropped.
    #[must_use]
    pub const fn encode(&self) -> PriEntry {
        let mut w0 = self.sid.0 as u64;
        if let Some(ssid) = self.ssid {
            w0 = bits::set(w0, 51, 32, ssid.0 as u64);
            w0 = bits::set_bit(w0, 63, true);
        }
        w0 = bits::set_bit(w0, 58, self.privileged);
        w0 = bits::set_bit(w0, 59, self.exec);
        w0 = bits::set_bit(w0, 60, self.read);
        w0 = bits::set_bit(w0, 61, self.write);
        w0 = bits::set_bit(w0, 62, self.last);
        let w1 = bits::set(
            self.addr.0 & PriEntry::ADDR.mask(),
            8,
            0,
            self.prg_index as u64,
        );
        PriEntry([w0, w1])
    }
}

/// Why a PRI queue entry does not decode.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PriDecodeError {
    /// A reserved bit is set (word 0 bits 57:52 or word 1 bits 11:9). The entry's StreamID and
    /// PRGIndex are still readable raw, so the group can be answered.
    ReservedBitsSet {
        /// Which word (0 or 1).
        word: u8,
        /// The offending bits.
        bits: u64,
    },
}

impl PriEntry {
    /// StreamID (word 0 bits 31:0).
    pub const SID: Field = Field::new(0, 31, 0);
    /// SubstreamID (word 0 bits 51:32).
    pub const SSID: Field = Field::new(0, 51, 32);
    /// PRIV (word 0 bit 58).
    pub const PRIV: Field = Field::new(0, 58, 58);
    /// EXEC (word 0 bit 59).
    pub const EXEC: Field = Field::new(0, 59, 59);
    /// READ (word 0 bit 60).
    pub const READ: Field = Field::new(0, 60, 60);
    /// WRITE (word 0 bit 61).
    pub const WRITE: Field = Field::new(0, 61, 61);
    /// LAST (word 0 bit 62).
    pub const LAST: Field = Field::new(0, 62, 62);
    /// SSV (word 0 bit 63).
    pub const SSV: Field = Field::new(0, 63, 63);
    /// PRGIndex (word 1 bits 8:0).
    pub const PRG_INDEX: Field = Field::new(1, 8, 0);
    /// ADDR (word 1 bits 63:12).
    pub const ADDR: Field = Field::new(1, 63, 12);

    /// The bits of each word the architecture defines.
    pub const DEFINED_BITS: [u64; 2] = [
        Self::SID.mask()
            | Self::SSID.mask()
            | Self::PRIV.mask()
            | Self::EXEC.mask()
            | Self::READ.mask()
            | Self::WRITE.mask()
            | Self::LAST.mask()
            | Self::SSV.mask(),
        Self::PRG_INDEX.mask() | Self::ADDR.mask(),
    ];

    /// The entry with these words.
    #[must_use]
    pub const fn from_words(words: [u64; 2]) -> Self {
        Self(words)
    }

    /// The entry's words.
    #[must_use]
    pub const fn words(&self) -> [u64; 2] {
        self.0
    }

    /// StreamID, read without validating the rest of the entry.
    #[must_use]
    pub const fn raw_sid(&self) -> StreamId {
        StreamId(bits::get_u32(self.0[0], 31, 0))
    }

    /// PRGIndex, read without validating the rest of the entry.
    #[must_use]
    pub const fn raw_prg_index(&self) -> u16 {
        bits::get_u16(self.0[1], 8, 0)
    }

    /// Decodes the entry. A SubstreamID with SSV=0 is ignored (it names no PASID).
    ///
    /// # Errors
    ///
    /// [`PriDecodeError::ReservedBitsSet`] if a reserved bit is set.
    pub const fn decode(&self) -> Result<PageRequest, PriDecodeError> {
        let [w0, w1] = self.0;
        if w0 & !Self::DEFINED_BITS[0] != 0 {
            return Err(PriDecodeError::ReservedBitsSet {
                word: 0,
                bits: w0 & !Self::DEFINED_BITS[0],
            });
        }
        if w1 & !Self::DEFINED_BITS[1] != 0 {
            return Err(PriDecodeError::ReservedBitsSet {
                word: 1,
                bits: w1 & !Self::DEFINED_BITS[1],
            });
        }
        let ssid = if bits::bit(w0, 63) {
            Some(SubstreamId(bits::get_u32(w0, 51, 32)))
        } else {
            None
        };
        Ok(PageRequest {
            sid: self.raw_sid(),
            ssid,
            privileged: bits::bit(w0, 58),
            exec: bits::bit(w0, 59),
            read: bits::bit(w0, 60),
            write: bits::bit(w0, 61),
            last: bits::bit(w0, 62),
            prg_index: self.raw_prg_index(),
            addr: Iova(w1 & Self::ADDR.mask()),
        })
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

    fn request(ssid: Option<u32>, read: bool, write: bool, last: bool) -> PageRequest {
        PageRequest {
            sid: StreamId(8),
            ssid: ssid.map(SubstreamId),
            privileged: false,
            exec: false,
            read,
            write,
            last,
            prg_index: 1,
            addr: Iova(0x1000),
        }
    }

    #[test]
    fn fields_land_at_the_reference_sheet_positions() {
        let req = PageRequest {
            sid: StreamId(0x1234_5678),
            ssid: Some(SubstreamId(0xa_bcde)),
            privileged: true,
            exec: true,
            read: true,
            write: true,
            last: true,
            prg_index: 0x1ff,
            addr: Iova(0xffff_ffff_ffff_f000),
        };
        let words = req.encode().words();
        assert_eq!(
            words[0],
            0x1234_5678 | 0xa_bcde << 32 | 0b11111 << 58 | 1 << 63
        );
        assert_eq!(words[1], 0xffff_ffff_ffff_f1ff);
        assert_eq!(req.encode().decode(), Ok(req));
    }

    #[test]
    fn a_stop_marker_needs_a_pasid() {
        assert!(request(Some(3), false, false, true).is_stop_marker());
        assert!(
            !request(None, false, false, true).is_stop_marker(),
            "LWR=0b100 without PASID is a request"
        );
        assert!(!request(Some(3), true, false, true).is_stop_marker());
        assert!(!request(Some(3), false, true, true).is_stop_marker());
        assert!(!request(Some(3), false, false, false).is_stop_marker());
    }

    #[test]
    fn only_the_last_request_of_a_group_that_is_not_a_stop_marker_completes_it() {
        assert!(request(Some(3), true, false, true).completes_group());
        assert!(request(None, false, false, true).completes_group());
        assert!(!request(Some(3), true, false, false).completes_group());
        assert!(!request(Some(3), false, false, true).completes_group());
    }

    #[test]
    fn every_reserved_bit_is_rejected() {
        for word in 0..2usize {
            for bit in 0..64 {
                if PriEntry::DEFINED_BITS[word] & (1 << bit) != 0 {
                    continue;
                }
                let mut words = request(Some(1), true, false, true).encode().words();
                words[word] |= 1 << bit;
                let got = PriEntry::from_words(words).decode();
                assert_eq!(
                    got,
                    Err(PriDecodeError::ReservedBitsSet {
                        word: word as u8,
                        bits: 1 << bit
                    })
                );
            }
        }
        assert_eq!(PriEntry::DEFINED_BITS, [!(0x3f << 52), !0xe00]);
    }

    #[test]
    fn raw_fields_stay_readable_when_decode_fails() {
        let entry = PriEntry::from_words([1 << 55 | 42, 0x17]);
        assert!(entry.decode().is_err());
        assert_eq!(
            (entry.raw_sid(), entry.raw_prg_index()),
            (StreamId(42), 0x17)
        );
    }

    fn arb_request() -> impl Strategy<Value = PageRequest> {
        (
            any::<u32>(),
            proptest::option::of(0u32..1 << 20),
            any::<[bool; 5]>(),
            0u16..512,
            any::<u64>(),
        )
            .prop_map(|(sid, ssid, f, prg_index, addr)| PageRequest {
                sid: StreamId(sid),
                ssid: ssid.map(SubstreamId),
                privileged: f[0],
                exec: f[1],
                read: f[2],
                write: f[3],
                last: f[4],
                prg_index,
                addr: Iova(addr & !0xfff),
            })
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(req in arb_request()) {
            prop_assert_eq!(req.encode().decode(), Ok(req));
        }

        #[test]
        fn entries_with_ssv_that_decode_re_encode_to_themselves(w0 in any::<u64>(), w1 in any::<u64>()) {
            let entry = PriEntry::from_words([w0 | 1 << 63, w1]);
            if let Ok(req) = entry.decode() {
                prop_assert_eq!(req.encode(), entry);
            }
        }
    }
}
