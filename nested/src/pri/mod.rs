//! Where page requests are forwarded: PRI queue entries from the physical SMMU go to the
//! owning guest's virtual PRI queue with its virtual stream ID ([`intake`], [`guest_queue`]),
//! page request groups are tracked per stream and PASID in a bounded table ([`Groups`]), and
//! the guest's `CMD_PRI_RESP` goes back to the device only when it names a group outstanding
//! for that guest's stream and PASID, in the address space that group was sent in
//! ([`response`]).
//!
//! | page request taken from the physical PRI queue | what happens |
//! |---|---|
//! | for a live PASID, written after its address space went live | forwarded; its group is tracked |
//! | stop marker (SSV = 1, R = W = 0, L = 1) | never answered; noted for the PASID's quiescence; forwarded if the PASID is live |
//! | for a parked or free PASID, or written before the address space went live, or of a group begun in an earlier address space | not forwarded; a Last one is answered InvalidRequest by the hypervisor; the group of one that is not Last is tracked (a parked PASID with such a group open has not quiesced) |
//! | on a stream that does not translate with the guest's stage 1 | likewise |
//! | the guest's queue disabled (PRIQEN = 0, SMMUEN = 0) or aborted | Response Failure, no PASID, for every request (IHI 0070 8.2) |
//! | the guest's queue full or in overflow | discarded; OVFLG toggled; a Last one answered Success with its PASID (8.1, IDR3.PPS = 1) |
//! | an overflow of the physical queue | once the queue is drained to the overflow point, open groups begun before it are discarded (8.1.1: their Last was answered by the SMMU) and the guest's queue enters overflow so its driver discards its copies |
//!
//! This module owns the group table and the dispositions; the PASID states it consults are
//! [`crate::pasid`]'s.

pub mod guest_queue;
pub mod intake;
pub mod response;

use smmu::SubstreamId;
use smmu::driver::PriPosition;

use crate::pasid::Epoch;

/// The most page request groups one vSMMU tracks at once (open or awaiting the guest's
/// response). A group that does not fit is answered InvalidRequest by the hypervisor.
pub const MAX_TRACKED_GROUPS: usize = 64;
/// How many answered groups are remembered, to tell a duplicate response from a stale or a
/// forged one (for the counters only: none of them is forwarded).
const CLOSED_MEMORY: usize = 32;

/// What became of a physical PRI queue entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum PriDisposition {
    /// Written into the guest's PRI queue with its virtual stream ID.
    Forwarded,
    /// A stop marker: noted, never answered (forwarded too if its PASID is live).
    StopMarker,
    /// Not forwarded; the hypervisor answered its group (a Last request).
    Answered(PriRefusal),
    /// Not forwarded and not answered (not Last, or a stop marker in overflow).
    Discarded(PriRefusal),
    /// An overflow of the physical queue, noted.
    Overflow,
    /// The entry's stream is not one of this VM's.
    NotThisVm,
}

/// Why a page request was not forwarded.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum PriRefusal {
    /// The PASID is parked: its address space was torn down (answered InvalidRequest).
    PasidParked,
    /// The PASID has no address space (answered InvalidRequest).
    PasidNotLive,
    /// Written before the PASID's address space went live, or part of a group begun in an
    /// earlier one (answered InvalidRequest).
    StaleGeneration,
    /// The stream does not translate with the guest's stage 1 (answered InvalidRequest).
    NotTranslating,
    /// The group index is already awaiting the guest's response (answered InvalidRequest).
    GroupIndexInUse,
    /// The group table is full (answered InvalidRequest).
    TrackingFull,
    /// The guest's PRI queue is disabled (answered Response Failure, per request).
    GuestQueueDisabled,
    /// The guest's PRI queue is not in RAM or aborted (answered Response Failure).
    GuestQueueAborted,
    /// The guest's PRI queue is full or in overflow (a Last one answered Success).
    GuestQueueOverflow,
    /// The entry has reserved bits set (a Last one answered InvalidRequest).
    Undecodable,
}

impl PriRefusal {
    /// How many there are, for counters.
    pub const COUNT: usize = 10;

    /// A dense index for counters.
    #[must_use]
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// Why a guest's `CMD_PRI_RESP` was not forwarded (it is consumed without effect, as a real
/// SMMU's response to a device that expects none has no effect on the device's groups).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum ResponseDrop {
    /// The stream is not one of the VM's, or the SubstreamID is beyond SSIDSIZE.
    StreamNotOwned,
    /// No group with that stream, PASID and index was forwarded (a forged response).
    UnknownGroup,
    /// The group's Last request has not been forwarded yet.
    GroupIncomplete,
    /// The group was answered already (by the guest, or by the hypervisor or the SMMU in an
    /// overflow).
    Duplicate,
    /// The group belongs to an address space the PASID no longer has (torn down, replaced).
    StaleGeneration,
}

impl ResponseDrop {
    /// How many there are, for counters.
    pub const COUNT: usize = 5;

    /// A dense index for counters.
    #[must_use]
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// A page request group forwarded to the guest.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Group {
    pub(crate) slot: usize,
    pub(crate) ssid: Option<SubstreamId>,
    pub(crate) prg_index: u16,
    /// The address space its first request was sent in.
    pub(crate) epoch: Epoch,
    /// Where its first request was in the physical queue.
    pub(crate) opened_at: PriPosition,
    /// Its Last request was forwarded: it awaits the guest's response.
    pub(crate) complete: bool,
}

impl Group {
    fn names(&self, slot: usize, ssid: Option<SubstreamId>, prg_index: u16) -> bool {
        self.slot == slot && self.ssid == ssid && self.prg_index == prg_index
    }

    /// The CD index of the group's PASID.
    pub(crate) fn cd(&self) -> u32 {
        self.ssid.map_or(0, |s| s.0)
    }
}

/// A group answered, remembered for the counters; one discarded after an overflow is also a
/// tombstone (see [`Groups::take_tombstone`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Closed {
    slot: usize,
    ssid: Option<SubstreamId>,
    prg_index: u16,
    epoch: Epoch,
    by_overflow: bool,
}

/// The PRI state of one vSMMU.
#[derive(Clone, Debug, Default)]
pub(crate) struct Groups {
    open: heapless::Vec<Group, MAX_TRACKED_GROUPS>,
    closed: heapless::Deque<Closed, CLOSED_MEMORY>,
    /// Every physical PRI queue entry before this has been handed to the vSMMU.
    pub(crate) drained: PriPosition,
    /// An overflow of the physical queue, found when the SMMU was writing at this position;
    /// acted on once the vSMMU has been handed everything before it.
    pub(crate) overflow_at: Option<PriPosition>,
}

impl Groups {
    /// The open group with this stream, PASID and index.
    pub(crate) fn find(
        &self,
        slot: usize,
        ssid: Option<SubstreamId>,
        prg_index: u16,
    ) -> Option<Group> {
        self.open
            .iter()
            .find(|g| g.names(slot, ssid, prg_index))
            .copied()
    }

    /// Opens a group. False if the table is full.
    pub(crate) fn open(&mut self, group: Group) -> bool {
        self.open.push(group).is_ok()
    }

    /// Marks the open group complete (its Last was forwarded).
    pub(crate) fn complete(&mut self, slot: usize, ssid: Option<SubstreamId>, prg_index: u16) {
        if let Some(group) = self
            .open
            .iter_mut()
            .find(|g| g.names(slot, ssid, prg_index))
        {
            group.complete = true;
        }
    }

    /// Closes (forgets) the open group with this stream, PASID and index, if any.
    pub(crate) fn close(
        &mut self,
        slot: usize,
        ssid: Option<SubstreamId>,
        prg_index: u16,
    ) -> Option<Group> {
        let index = self
            .open
            .iter()
            .position(|g| g.names(slot, ssid, prg_index))?;
        let group = self.open.swap_remove(index);
        self.remember(&group, false);
        Some(group)
    }

    fn remember(&mut self, group: &Group, by_overflow: bool) {
        if self.closed.is_full() {
            let _ = self.closed.pop_front();
        }
        let _ = self.closed.push_back(Closed {
            slot: group.slot,
            ssid: group.ssid,
            prg_index: group.prg_index,
            epoch: group.epoch,
            by_overflow,
        });
    }

    /// The epoch of a group with this stream, PASID and index that an overflow discarded, if
    /// one is remembered; it is forgotten as a tombstone then.
    ///
    /// IHI 0070 8.1.1 has software ignore a group with no Last before the overflow point, on
    /// the grounds that the SMMU answered its Last. A device slower than that may still send
    /// its Last later; if the PASID has another address space by then, that request must not
    /// start a group in it. The memory is bounded ([`CLOSED_MEMORY`] answered groups).
    pub(crate) fn take_tombstone(
        &mut self,
        slot: usize,
        ssid: Option<SubstreamId>,
        prg_index: u16,
    ) -> Option<Epoch> {
        let closed = self.closed.iter_mut().rev().find(|c| {
            c.by_overflow && c.slot == slot && c.ssid == ssid && c.prg_index == prg_index
        })?;
        closed.by_overflow = false;
        Some(closed.epoch)
    }

    /// The epoch of a recently answered group with this stream, PASID and index.
    pub(crate) fn recently_closed(
        &self,
        slot: usize,
        ssid: Option<SubstreamId>,
        prg_index: u16,
    ) -> Option<Epoch> {
        self.closed
            .iter()
            .rev()
            .find(|c| c.slot == slot && c.ssid == ssid && c.prg_index == prg_index)
            .map(|c| c.epoch)
    }

    /// Closes every open group for which `select` holds, handing each to `each`;
    /// `by_overflow` if an overflow discards them.
    pub(crate) fn close_where(
        &mut self,
        by_overflow: bool,
        mut select: impl FnMut(&Group) -> bool,
        mut each: impl FnMut(&Group),
    ) {
        // Bounded by the table: each pass removes one or ends.
        let mut index = 0;
        while let Some(group) = self.open.get(index).copied() {
            if select(&group) {
                self.open.swap_remove(index);
                self.remember(&group, by_overflow);
                each(&group);
            } else {
                index += 1;
            }
        }
    }

    /// How many groups of stream `slot`'s PASID `cd` in `epoch` are open and not complete.
    pub(crate) fn open_partial(&self, slot: usize, cd: u32, epoch: Epoch) -> usize {
        self.open
            .iter()
            .filter(|g| g.slot == slot && g.cd() == cd && g.epoch == epoch && !g.complete)
            .count()
    }

    /// Every open group, for invariant checks.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Group> {
        self.open.iter()
    }
}
