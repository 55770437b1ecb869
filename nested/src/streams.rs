//! The streams a VM owns: virtual to physical stream IDs, and the shadow state of each.
//!
//! This module owns the bounded table (at most `STREAMS` entries, fixed at construction) and
//! the per-stream bookkeeping the shadow code updates: what the physical STE holds now, what
//! the guest's last-read STE asks for, and which CDs must be read again. Nothing here reads
//! guest memory.
//!
//! Every trap looks things up here, so lookups do not scan the table: stream IDs are found by
//! binary search in two sorted indexes built when the streams are assigned (at construction),
//! and "is any stream dirty" is answered at once unless a stream was handed out for change
//! since the last scan that found none.

use smmu::ste::{Eats, S1Dss};
use smmu::{StreamId, VirtualStreamId};

use crate::guest_tables::{GuestCdTable, SteFault};

/// What a stream's physical STE does, as the vSMMU built it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ShadowConfig {
    /// Abort silently: guest STE Config=abort, or the vSMMU disabled with GBPA.ABORT.
    Abort,
    /// V=0: the physical SMMU aborts and reports C_BAD_STE, which is forwarded as the guest's
    /// configuration error (`fault` says which).
    Blocked(SteFault),
    /// Stage 2 alone: guest bypass, or the vSMMU disabled without GBPA.ABORT.
    Stage2Only,
    /// The guest's stage 1 (the shadow CD table) nested over the VM's stage 2.
    Nested {
        /// Where the guest's CDs are, for re-reading them.
        table: GuestCdTable,
        /// The guest's S1DSS.
        s1dss: S1Dss,
        /// The guest's EATS (0 unless ATS is forwarded).
        eats: Eats,
    },
}

impl ShadowConfig {
    /// How many CDs the physical SMMU may fetch from the shadow table in this configuration.
    pub(crate) fn reachable_cds(&self) -> u64 {
        match self {
            Self::Nested { table, .. } => 1 << table.s1cdmax,
            _ => 0,
        }
    }
}

/// One owned stream.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Stream {
    pub(crate) vsid: VirtualStreamId,
    pub(crate) psid: StreamId,
    /// What the physical STE holds, if known (not known before the first install, nor after
    /// a failed one).
    pub(crate) installed: Option<ShadowConfig>,
    /// The configuration read from the guest's STE, whose CDs are being shadowed before it is
    /// installed.
    pub(crate) pending: Option<ShadowConfig>,
    /// The guest's STE must be read again.
    pub(crate) dirty_ste: bool,
    /// The guest's CDs to read again, one bit per substream.
    pub(crate) dirty_cds: u64,
}

impl Stream {
    pub(crate) const fn new(vsid: VirtualStreamId, psid: StreamId) -> Self {
        Self {
            vsid,
            psid,
            installed: None,
            pending: None,
            dirty_ste: true,
            dirty_cds: 0,
        }
    }

    /// Whether the stream has shadow work outstanding.
    pub(crate) const fn is_dirty(&self) -> bool {
        self.dirty_ste || self.dirty_cds != 0 || self.pending.is_some()
    }
}

/// The owned streams, in assignment order (the index is the stream's shadow CD slot).
#[derive(Clone, Debug)]
pub(crate) struct Streams<const N: usize> {
    entries: heapless::Vec<Stream, N>,
    /// (virtual stream ID, slot), sorted by ID.
    by_virtual: heapless::Vec<(u32, u16), N>,
    /// (physical stream ID, slot), sorted by ID.
    by_physical: heapless::Vec<(u32, u16), N>,
    /// Some stream may be dirty: set whenever one is handed out mutably, cleared by a scan
    /// that finds none.
    maybe_dirty: core::cell::Cell<bool>,
}

impl<const N: usize> Streams<N> {
    pub(crate) const fn new() -> Self {
        Self {
            entries: heapless::Vec::new(),
            by_virtual: heapless::Vec::new(),
            by_physical: heapless::Vec::new(),
            maybe_dirty: core::cell::Cell::new(false),
        }
    }

    /// Adds a stream (at construction: the indexes are kept sorted by insertion); false if
    /// full.
    pub(crate) fn push(&mut self, stream: Stream) -> bool {
        let Ok(slot) = u16::try_from(self.entries.len()) else {
            return false;
        };
        let (vsid, psid) = (stream.vsid.0, stream.psid.0);
        if self.entries.push(stream).is_err() {
            return false;
        }
        self.maybe_dirty.set(true);
        for (index, id) in [(&mut self.by_virtual, vsid), (&mut self.by_physical, psid)] {
            let at = index.partition_point(|&(other, _)| other < id);
            if index.insert(at, (id, slot)).is_err() {
                return false;
            }
        }
        true
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn get(&self, slot: usize) -> Option<&Stream> {
        self.entries.get(slot)
    }

    pub(crate) fn get_mut(&mut self, slot: usize) -> Option<&mut Stream> {
        self.maybe_dirty.set(true);
        self.entries.get_mut(slot)
    }

    pub(crate) fn iter(&self) -> core::slice::Iter<'_, Stream> {
        self.entries.iter()
    }

    pub(crate) fn iter_mut(&mut self) -> core::slice::IterMut<'_, Stream> {
        self.maybe_dirty.set(true);
        self.entries.iter_mut()
    }

    /// The slot of virtual stream `vsid`, if the VM owns it.
    pub(crate) fn slot_of_virtual(&self, vsid: VirtualStreamId) -> Option<usize> {
        Self::find(&self.by_virtual, vsid.0)
    }

    /// The slot of physical stream `psid`, if the VM owns it.
    pub(crate) fn slot_of_physical(&self, psid: StreamId) -> Option<usize> {
        Self::find(&self.by_physical, psid.0)
    }

    fn find(index: &[(u32, u16)], id: u32) -> Option<usize> {
        index
            .binary_search_by_key(&id, |&(other, _)| other)
            .ok()
            .and_then(|at| index.get(at))
            .map(|&(_, slot)| usize::from(slot))
    }

    /// The physical stream of `vsid`, if the VM owns it.
    pub(crate) fn physical(&self, vsid: VirtualStreamId) -> Option<StreamId> {
        self.slot_of_virtual(vsid)
            .and_then(|slot| self.entries.get(slot))
            .map(|s| s.psid)
    }

    /// The first slot with shadow work outstanding.
    pub(crate) fn first_dirty(&self) -> Option<usize> {
        if !self.maybe_dirty.get() {
            return None;
        }
        let found = self.entries.iter().position(Stream::is_dirty);
        if found.is_none() {
            self.maybe_dirty.set(false);
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_find_every_stream_by_either_id_in_any_assignment_order() {
        let mut streams = Streams::<8>::new();
        let pairs = [(7, 0x300), (1, 0x10), (5, 0x8), (3, 0x200)];
        for (vsid, psid) in pairs {
            assert!(streams.push(Stream::new(VirtualStreamId(vsid), StreamId(psid))));
        }
        for (slot, (vsid, psid)) in pairs.into_iter().enumerate() {
            assert_eq!(streams.slot_of_virtual(VirtualStreamId(vsid)), Some(slot));
            assert_eq!(streams.slot_of_physical(StreamId(psid)), Some(slot));
            assert_eq!(
                streams.physical(VirtualStreamId(vsid)),
                Some(StreamId(psid))
            );
        }
        assert_eq!(streams.slot_of_virtual(VirtualStreamId(2)), None);
        assert_eq!(streams.slot_of_physical(StreamId(7)), None);
    }

    #[test]
    fn a_stream_changed_through_any_handle_is_found_dirty_again() {
        let mut streams = Streams::<4>::new();
        assert!(streams.push(Stream::new(VirtualStreamId(0), StreamId(0))));
        assert!(streams.push(Stream::new(VirtualStreamId(1), StreamId(1))));
        assert_eq!(streams.first_dirty(), Some(0), "new streams are dirty");
        for stream in streams.iter_mut() {
            stream.dirty_ste = false;
        }
        assert_eq!(streams.first_dirty(), None);
        assert_eq!(streams.first_dirty(), None, "answered without a scan");
        if let Some(stream) = streams.get_mut(1) {
            stream.dirty_cds = 1;
        }
        assert_eq!(streams.first_dirty(), Some(1));
    }
}
