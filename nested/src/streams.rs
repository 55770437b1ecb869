//! The streams a VM owns: virtual to physical stream IDs, and the shadow state of each.
//!
//! This module owns the bounded table (at most `STREAMS` entries, fixed at construction) and
//! the per-stream bookkeeping the shadow code updates: what the physical STE holds now, what
//! the guest's last-read STE asks for, and which CDs must be read again. Lookups are linear
//! scans of a table of a few entries; nothing here reads guest memory.

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
}

impl<const N: usize> Streams<N> {
    pub(crate) const fn new() -> Self {
        Self {
            entries: heapless::Vec::new(),
        }
    }

    /// Adds a stream; false if full.
    pub(crate) fn push(&mut self, stream: Stream) -> bool {
        self.entries.push(stream).is_ok()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn get(&self, slot: usize) -> Option<&Stream> {
        self.entries.get(slot)
    }

    pub(crate) fn get_mut(&mut self, slot: usize) -> Option<&mut Stream> {
        self.entries.get_mut(slot)
    }

    pub(crate) fn iter(&self) -> core::slice::Iter<'_, Stream> {
        self.entries.iter()
    }

    pub(crate) fn iter_mut(&mut self) -> core::slice::IterMut<'_, Stream> {
        self.entries.iter_mut()
    }

    /// The slot of virtual stream `vsid`, if the VM owns it.
    pub(crate) fn slot_of_virtual(&self, vsid: VirtualStreamId) -> Option<usize> {
        self.entries.iter().position(|s| s.vsid == vsid)
    }

    /// The slot of physical stream `psid`, if the VM owns it.
    pub(crate) fn slot_of_physical(&self, psid: StreamId) -> Option<usize> {
        self.entries.iter().position(|s| s.psid == psid)
    }

    /// The physical stream of `vsid`, if the VM owns it.
    pub(crate) fn physical(&self, vsid: VirtualStreamId) -> Option<StreamId> {
        self.slot_of_virtual(vsid)
            .and_then(|slot| self.entries.get(slot))
            .map(|s| s.psid)
    }

    /// The first slot with shadow work outstanding.
    pub(crate) fn first_dirty(&self) -> Option<usize> {
        self.entries.iter().position(Stream::is_dirty)
    }
}
