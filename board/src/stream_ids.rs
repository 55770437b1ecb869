//! From PCI requester IDs to SMMU stream IDs.
//!
//! This module owns the arithmetic between a PCI function (bus, device, function), its
//! requester ID (`RID = bus << 8 | device << 3 | function`) and the stream ID the SMMU sees,
//! following the device-tree `iommu-map` binding (the same mapping an IORT ID mapping
//! gives). On both QEMU `virt` and FVP Base RevC the map is one entry, `<0 &smmu 0
//! 0x10000>`: the stream ID is the requester ID. It also derives the contiguous stream-ID
//! range a host bridge's bus range occupies, which is what the hypervisor must own.

use smmu::StreamId;

/// A PCI requester ID: `bus << 8 | device << 3 | function`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RequesterId(pub u16);

impl RequesterId {
    /// The requester ID of `bus:device.function`, or `None` if `device > 31` or
    /// `function > 7`.
    #[must_use]
    pub const fn new(bus: u8, device: u8, function: u8) -> Option<Self> {
        if device > 31 || function > 7 {
            return None;
        }
        Some(Self(
            ((bus as u16) << 8) | ((device as u16) << 3) | function as u16,
        ))
    }

    /// The bus number.
    #[must_use]
    pub const fn bus(self) -> u8 {
        self.0.to_be_bytes()[0]
    }

    /// The device and function, `device << 3 | function`.
    #[must_use]
    pub const fn devfn(self) -> u8 {
        self.0.to_be_bytes()[1]
    }
}

/// An inclusive range of PCI bus numbers (the device tree's `bus-range`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BusRange {
    /// The first bus (the root bus).
    pub first: u8,
    /// The last bus.
    pub last: u8,
}

impl BusRange {
    /// All 256 buses, the default when a host bridge has no `bus-range`.
    pub const ALL: Self = Self {
        first: 0,
        last: 0xff,
    };

    /// Buses `first..=last`, or `None` if `first > last`.
    #[must_use]
    pub const fn new(first: u8, last: u8) -> Option<Self> {
        if first > last {
            None
        } else {
            Some(Self { first, last })
        }
    }

    /// How many buses the range holds (1 to 256).
    #[must_use]
    pub const fn bus_count(&self) -> u16 {
        (self.last as u16).saturating_sub(self.first as u16) + 1
    }

    /// The lowest requester ID on these buses.
    #[must_use]
    pub const fn first_requester_id(&self) -> RequesterId {
        RequesterId((self.first as u16) << 8)
    }

    /// The highest requester ID on these buses.
    #[must_use]
    pub const fn last_requester_id(&self) -> RequesterId {
        RequesterId(((self.last as u16) << 8) | 0xff)
    }

    /// Whether `bus` is in the range.
    #[must_use]
    pub const fn contains(&self, bus: u8) -> bool {
        bus >= self.first && bus <= self.last
    }
}

/// One entry of an `iommu-map`: requester IDs `rid_base..rid_base + length` become stream
/// IDs `sid_base..sid_base + length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct IommuMapEntry {
    /// The first requester ID the entry maps.
    pub rid_base: u32,
    /// The stream ID `rid_base` becomes.
    pub sid_base: StreamId,
    /// How many consecutive requester IDs the entry maps.
    pub length: u32,
}

impl IommuMapEntry {
    /// The map QEMU `virt` and FVP both use: all 65536 requester IDs, stream ID = RID.
    pub const IDENTITY_16_BITS: Self = Self {
        rid_base: 0,
        sid_base: StreamId(0),
        length: 0x1_0000,
    };

    /// The stream ID this entry gives `rid`, or `None` if `rid` is not in the entry or the
    /// stream ID would not fit 32 bits.
    #[must_use]
    pub const fn stream_id(&self, rid: u32) -> Option<StreamId> {
        if !self.contains(rid) {
            return None;
        }
        match self.sid_base.0.checked_add(rid - self.rid_base) {
            Some(sid) => Some(StreamId(sid)),
            None => None,
        }
    }

    /// Whether the entry maps `rid`.
    #[must_use]
    pub const fn contains(&self, rid: u32) -> bool {
        rid >= self.rid_base && (rid as u64) < self.end()
    }

    /// One past the last requester ID the entry maps.
    const fn end(&self) -> u64 {
        self.rid_base as u64 + self.length as u64
    }
}

/// An inclusive range of stream IDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct StreamIdRange {
    /// The first stream ID.
    pub first: StreamId,
    /// The last stream ID.
    pub last: StreamId,
}

impl StreamIdRange {
    /// Whether `sid` is in the range.
    #[must_use]
    pub const fn contains(&self, sid: StreamId) -> bool {
        sid.0 >= self.first.0 && sid.0 <= self.last.0
    }

    /// How many stream IDs the range holds.
    #[must_use]
    pub const fn count(&self) -> u64 {
        self.last.0 as u64 - self.first.0 as u64 + 1
    }
}

/// Why a bus range does not give one contiguous range of stream IDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum StreamIdError {
    /// No entry of the map covers this requester ID: the device would not be translated.
    Unmapped(RequesterId),
    /// This requester ID's stream ID does not follow on from the previous one.
    NotContiguous(RequesterId),
    /// The map has an `iommu-map-mask` that drops requester-ID bits, so several functions
    /// share a stream ID; this crate does not model that.
    Masked(u32),
}

/// The stream ID `rid` gets through `map`, with `mask` applied to the RID first (the
/// `iommu-map-mask`; `u32::MAX` when absent). The first entry that covers the RID wins, as
/// in Linux's `of_map_id`.
#[must_use]
pub fn stream_id(map: &[IommuMapEntry], mask: u32, rid: RequesterId) -> Option<StreamId> {
    let masked = u32::from(rid.0) & mask;
    map.iter().find_map(|entry| entry.stream_id(masked))
}

/// The stream IDs the requester IDs of `buses` occupy through `map`: one contiguous range,
/// or the first requester ID where that breaks.
///
/// # Errors
///
/// [`StreamIdError`] if a requester ID on these buses is unmapped, the image is not one
/// increasing run, or `mask` merges requester IDs.
pub fn stream_id_range(
    map: &[IommuMapEntry],
    mask: u32,
    buses: BusRange,
) -> Result<StreamIdRange, StreamIdError> {
    if mask & 0xffff != 0xffff {
        return Err(StreamIdError::Masked(mask));
    }
    let first_rid = buses.first_requester_id();
    let last_rid = u64::from(buses.last_requester_id().0);
    let (first_sid, _) =
        linear_run(map, u64::from(first_rid.0)).ok_or(StreamIdError::Unmapped(first_rid))?;
    let mut rid = u64::from(first_rid.0);
    // Each step ends at an entry's end or at the start of an earlier (winning) entry, so
    // there are at most two steps per entry plus one.
    for _ in 0..=map.len().saturating_mul(2).saturating_add(1) {
        let requester = RequesterId(u16::try_from(rid).unwrap_or(u16::MAX));
        let (sid, run) = linear_run(map, rid).ok_or(StreamIdError::Unmapped(requester))?;
        if u64::from(sid.0) != u64::from(first_sid.0) + (rid - u64::from(first_rid.0)) {
            return Err(StreamIdError::NotContiguous(requester));
        }
        rid += run;
        if rid > last_rid {
            let count = last_rid - u64::from(first_rid.0);
            let last = u32::try_from(u64::from(first_sid.0) + count)
                .map_err(|_| StreamIdError::NotContiguous(requester))?;
            return Ok(StreamIdRange {
                first: first_sid,
                last: StreamId(last),
            });
        }
    }
    Err(StreamIdError::NotContiguous(RequesterId(
        u16::try_from(rid).unwrap_or(u16::MAX),
    )))
}

/// The stream ID of `rid` and how many consecutive RIDs from it map linearly through the
/// same entry (ending where the entry ends or an earlier entry takes over).
fn linear_run(map: &[IommuMapEntry], rid: u64) -> Option<(StreamId, u64)> {
    let rid32 = u32::try_from(rid).ok()?;
    let (index, entry) = map
        .iter()
        .enumerate()
        .find(|(_, entry)| entry.contains(rid32))?;
    let sid = entry.stream_id(rid32)?;
    let end = map
        .iter()
        .take(index)
        .map(|earlier| u64::from(earlier.rid_base))
        .filter(|&base| base > rid)
        .fold(entry.end(), u64::min);
    // The run may not pass the 32-bit stream-ID space either.
    let sid_room = u64::from(u32::MAX) - u64::from(sid.0) + 1;
    Some((sid, (end - rid).min(sid_room)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    const IDENTITY: &[IommuMapEntry] = &[IommuMapEntry::IDENTITY_16_BITS];

    #[test]
    fn requester_id_packs_bus_device_function() {
        assert_eq!(RequesterId::new(0, 1, 0), Some(RequesterId(8)));
        assert_eq!(RequesterId::new(1, 0, 0), Some(RequesterId(0x100)));
        assert_eq!(RequesterId::new(0xff, 31, 7), Some(RequesterId(0xffff)));
        assert_eq!(RequesterId::new(0, 32, 0), None);
        assert_eq!(RequesterId::new(0, 0, 8), None);
        let rid = RequesterId(0x1234);
        assert_eq!((rid.bus(), rid.devfn()), (0x12, 0x34));
    }

    #[test]
    fn edu_at_00_01_0_is_stream_id_8_on_an_identity_map() {
        let rid = RequesterId::new(0, 1, 0).unwrap();
        assert_eq!(stream_id(IDENTITY, u32::MAX, rid), Some(StreamId(8)));
    }

    #[test]
    fn all_buses_on_an_identity_map_are_stream_ids_0_to_ffff() {
        let range = stream_id_range(IDENTITY, u32::MAX, BusRange::ALL).unwrap();
        assert_eq!(
            range,
            StreamIdRange {
                first: StreamId(0),
                last: StreamId(0xffff)
            }
        );
        assert_eq!(range.count(), 0x1_0000);
    }

    #[test]
    fn buses_0_and_1_are_stream_ids_0_to_1ff() {
        let range = stream_id_range(IDENTITY, u32::MAX, BusRange::new(0, 1).unwrap()).unwrap();
        assert_eq!(
            range,
            StreamIdRange {
                first: StreamId(0),
                last: StreamId(0x1ff)
            }
        );
    }

    #[test]
    fn an_offset_map_shifts_the_range() {
        let map = [IommuMapEntry {
            rid_base: 0x100,
            sid_base: StreamId(0x1000),
            length: 0x200,
        }];
        let range = stream_id_range(&map, u32::MAX, BusRange::new(1, 2).unwrap()).unwrap();
        assert_eq!(
            range,
            StreamIdRange {
                first: StreamId(0x1000),
                last: StreamId(0x11ff)
            }
        );
        assert_eq!(
            stream_id(&map, u32::MAX, RequesterId(0x108)),
            Some(StreamId(0x1008))
        );
        assert_eq!(stream_id(&map, u32::MAX, RequesterId(0xff)), None);
    }

    #[test]
    fn adjacent_entries_that_continue_each_other_make_one_range() {
        let map = [
            IommuMapEntry {
                rid_base: 0,
                sid_base: StreamId(0x40),
                length: 0x100,
            },
            IommuMapEntry {
                rid_base: 0x100,
                sid_base: StreamId(0x140),
                length: 0x100,
            },
        ];
        let range = stream_id_range(&map, u32::MAX, BusRange::new(0, 1).unwrap()).unwrap();
        assert_eq!(
            range,
            StreamIdRange {
                first: StreamId(0x40),
                last: StreamId(0x23f)
            }
        );
    }

    #[test]
    fn a_gap_or_a_jump_is_reported_at_the_first_rid_where_it_happens() {
        let gap = [IommuMapEntry {
            rid_base: 0,
            sid_base: StreamId(0),
            length: 0x180,
        }];
        assert_eq!(
            stream_id_range(&gap, u32::MAX, BusRange::new(0, 1).unwrap()),
            Err(StreamIdError::Unmapped(RequesterId(0x180)))
        );
        let jump = [
            IommuMapEntry {
                rid_base: 0,
                sid_base: StreamId(0),
                length: 0x100,
            },
            IommuMapEntry {
                rid_base: 0x100,
                sid_base: StreamId(0x1000),
                length: 0x100,
            },
        ];
        assert_eq!(
            stream_id_range(&jump, u32::MAX, BusRange::new(0, 1).unwrap()),
            Err(StreamIdError::NotContiguous(RequesterId(0x100)))
        );
        assert_eq!(
            stream_id_range(&[], u32::MAX, BusRange::ALL),
            Err(StreamIdError::Unmapped(RequesterId(0)))
        );
    }

    #[test]
    fn an_earlier_entry_wins_over_a_later_one_that_also_covers_the_rid() {
        let map = [
            IommuMapEntry {
                rid_base: 0x10,
                sid_base: StreamId(0x900),
                length: 0x10,
            },
            IommuMapEntry::IDENTITY_16_BITS,
        ];
        assert_eq!(
            stream_id(&map, u32::MAX, RequesterId(0x12)),
            Some(StreamId(0x902))
        );
        assert_eq!(
            stream_id_range(&map, u32::MAX, BusRange::new(0, 0).unwrap()),
            Err(StreamIdError::NotContiguous(RequesterId(0x10)))
        );
    }

    #[test]
    fn a_mask_that_merges_functions_is_refused() {
        assert_eq!(
            stream_id_range(IDENTITY, 0xfff8, BusRange::ALL),
            Err(StreamIdError::Masked(0xfff8))
        );
        assert_eq!(
            stream_id(IDENTITY, 0xfff8, RequesterId(0xf)),
            Some(StreamId(8))
        );
    }

    #[test]
    fn stream_ids_near_u32_max_do_not_wrap() {
        let map = [IommuMapEntry {
            rid_base: 0,
            sid_base: StreamId(u32::MAX - 0x7f),
            length: 0x100,
        }];
        assert_eq!(stream_id(&map, u32::MAX, RequesterId(0x80)), None);
        assert!(stream_id_range(&map, u32::MAX, BusRange::new(0, 0).unwrap()).is_err());
    }
}
