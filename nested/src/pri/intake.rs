//! Physical PRI queue entries for the VM's streams: forwarded to the guest's PRI queue with the
//! virtual stream ID, or answered or discarded by the hypervisor (see the table in
//! [`crate::pri`]), and the drain progress that lets parked PASIDs quiesce.
//!
//! `hyp` drains the physical PRI queue at EL2 with only the physical lock held
//! ([`Driver::drain_page_requests_at`](smmu::driver::Driver::drain_page_requests_at)), then
//! hands each entry, with its position, to the vSMMU owning its stream (an overflow to every
//! vSMMU), and finally tells every vSMMU how far the drain got. Each call does a bounded amount
//! of work: one guest queue write, at most one physical command, and passes over the fixed
//! group and PASID tables.

use smmu::command::{Cmd, PriResponse};
use smmu::driver::{DmaMemory, PriIntake, PriPosition};
use smmu::page_request::{PageRequest, PriEntry};
use smmu::{StreamId, SubstreamId};

use crate::VirtualSmmu;
use crate::counters::bump;
use crate::interfaces::guest_memory::GuestMemory;
use crate::interfaces::interrupts::InterruptSink;
use crate::interfaces::physical::{PhysicalCommand, PhysicalSmmu};
use crate::pasid::{Epoch, PasidKey, PasidState};
use crate::pri::guest_queue::GuestPriQueueError;
use crate::pri::{Group, MAX_TRACKED_GROUPS, PriDisposition, PriRefusal};
use crate::streams::ShadowConfig;

impl<G, P, I, C, const STREAMS: usize> VirtualSmmu<G, P, I, C, STREAMS>
where
    G: GuestMemory,
    P: PhysicalSmmu,
    I: InterruptSink,
    C: DmaMemory,
{
    pub(crate) fn intake_page_request(
        &mut self,
        position: PriPosition,
        intake: &PriIntake,
    ) -> PriDisposition {
        let disposition = match intake {
            PriIntake::Overflowed => {
                self.counters.pri_physical_overflows =
                    self.counters.pri_physical_overflows.saturating_add(1);
                self.pri.overflow_at =
                    Some(self.pri.overflow_at.map_or(position, |at| at.max(position)));
                // Everything before it may have been handed over already.
                self.pri_advance(self.pri.drained);
                self.flush_batch();
                return PriDisposition::Overflow;
            }
            PriIntake::Undecodable { entry, .. } => self.intake_undecodable(entry),
            PriIntake::Request(request) => self.intake_request(position, request),
        };
        match disposition {
            PriDisposition::Answered(reason) => {
                bump(&mut self.counters.pri_refused_answered, reason.index());
            }
            PriDisposition::Discarded(reason) => {
                bump(&mut self.counters.pri_refused_discarded, reason.index());
            }
            _ => {}
        }
        self.flush_batch();
        if disposition != PriDisposition::NotThisVm {
            self.pri_advance(position.next());
            self.flush_batch();
        }
        disposition
    }

    /// Answers a page request group of physical stream `psid` on the hypervisor's behalf.
    pub(crate) fn answer_group(
        &mut self,
        psid: StreamId,
        ssid: Option<SubstreamId>,
        prg_index: u16,
        response: PriResponse,
    ) {
        self.forward(PhysicalCommand::new(Cmd::PriResp {
            sid: psid,
            ssid,
            prg_index,
            response,
        }));
    }

    fn intake_undecodable(&mut self, entry: &PriEntry) -> PriDisposition {
        let Some(psid) = self
            .streams
            .slot_of_physical(entry.raw_sid())
            .and_then(|slot| self.streams.get(slot))
            .map(|s| s.psid)
        else {
            return PriDisposition::NotThisVm;
        };
        let [w0, _] = entry.words();
        let last = w0 >> 62 & 1 == 1;
        let ssid = (w0 >> 63 == 1 && self.features.ssid_bits > 0)
            .then(|| SubstreamId(u32::try_from(w0 >> 32 & 0xf_ffff).unwrap_or(0)));
        if last {
            self.answer_group(
                psid,
                ssid,
                entry.raw_prg_index(),
                PriResponse::InvalidRequest,
            );
            PriDisposition::Answered(PriRefusal::Undecodable)
        } else {
            PriDisposition::Discarded(PriRefusal::Undecodable)
        }
    }

    fn intake_request(&mut self, position: PriPosition, request: &PageRequest) -> PriDisposition {
        let Some(slot) = self.streams.slot_of_physical(request.sid) else {
            return PriDisposition::NotThisVm;
        };
        let Some(stream) = self.streams.get(slot).copied() else {
            return PriDisposition::NotThisVm;
        };
        let key = PasidKey {
            slot,
            cd: request.ssid.map_or(0, |s| s.0),
        };
        let nested = matches!(stream.installed, Some(ShadowConfig::Nested { .. }));
        let state = self.pasids.state(key);
        let current = match state {
            PasidState::Live(live) if nested && position >= live.since => Some(live.epoch),
            _ => None,
        };
        let rewritten = PageRequest {
            sid: StreamId(stream.vsid.0),
            ..*request
        };
        if request.is_stop_marker() {
            self.counters.pri_stop_markers = self.counters.pri_stop_markers.saturating_add(1);
            self.pasids.note_stop_marker(key);
            // The device completes its groups before its stop marker: one still open now
            // never will, and the device no longer waits for it.
            self.pri.close_where(
                false,
                |g| g.slot == slot && g.cd() == key.cd && !g.complete,
                |_| {},
            );
            if current.is_some() {
                // Never answered, by anyone; the guest sees it as a real SMMU's driver would.
                let _ = self.deliver_page_request(&rewritten);
            }
            return PriDisposition::StopMarker;
        }
        self.pasids.note_request(key);
        let group = self.pri.find(slot, request.ssid, request.prg_index);
        // The late end of a group an overflow discarded, in another address space than it
        // began in (see `Groups::take_tombstone`).
        let late = match (current, group) {
            (Some(epoch), None) => self
                .pri
                .take_tombstone(slot, request.ssid, request.prg_index)
                .filter(|began| *began != epoch),
            _ => None,
        };
        let refusal = match (current, group) {
            _ if late.is_some() => Some(PriRefusal::StaleGeneration),
            _ if !nested => Some(PriRefusal::NotTranslating),
            (None, _) => Some(match state {
                PasidState::Parked(_) => PriRefusal::PasidParked,
                PasidState::Live(_) => PriRefusal::StaleGeneration,
                PasidState::Free => PriRefusal::PasidNotLive,
            }),
            (Some(epoch), Some(group)) if group.epoch != epoch => Some(PriRefusal::StaleGeneration),
            (Some(_), Some(group)) if group.complete => Some(PriRefusal::GroupIndexInUse),
            _ => None,
        };
        if let Some(reason) = refusal {
            if !request.last {
                let outside = match state {
                    _ if late.is_some() => late.unwrap_or_default(),
                    PasidState::Parked(parked) => parked.epoch,
                    PasidState::Free | PasidState::Live(_) => Epoch::default(),
                };
                if group.is_none() && reason != PriRefusal::NotTranslating {
                    // A group begun outside the PASID's live address space is tracked, not
                    // forwarded: its Last is answered when it comes, no later address space
                    // takes it over, and while it is open the parked PASID does not quiesce.
                    let _ = self.pri.open(Group {
                        slot,
                        ssid: request.ssid,
                        prg_index: request.prg_index,
                        epoch: outside,
                        opened_at: position,
                        complete: false,
                    });
                }
                return PriDisposition::Discarded(reason);
            }
            if reason != PriRefusal::GroupIndexInUse {
                // The group this request ends, if it was forwarded in part, is answered now.
                let _ = self.pri.close(slot, request.ssid, request.prg_index);
            }
            self.answer_group(
                stream.psid,
                request.ssid,
                request.prg_index,
                PriResponse::InvalidRequest,
            );
            return PriDisposition::Answered(reason);
        }
        let epoch = current.unwrap_or_default();
        if group.is_none()
            && !self.pri.open(Group {
                slot,
                ssid: request.ssid,
                prg_index: request.prg_index,
                epoch,
                opened_at: position,
                complete: false,
            })
        {
            if !request.last {
                return PriDisposition::Discarded(PriRefusal::TrackingFull);
            }
            self.answer_group(
                stream.psid,
                request.ssid,
                request.prg_index,
                PriResponse::InvalidRequest,
            );
            return PriDisposition::Answered(PriRefusal::TrackingFull);
        }
        match self.deliver_page_request(&rewritten) {
            Ok(()) => {
                self.counters.pri_requests_forwarded =
                    self.counters.pri_requests_forwarded.saturating_add(1);
                if request.last {
                    self.pri.complete(slot, request.ssid, request.prg_index);
                }
                PriDisposition::Forwarded
            }
            Err(error @ (GuestPriQueueError::Disabled | GuestPriQueueError::Aborted)) => {
                // IHI 0070 8.2: every request answered Response Failure, without a PASID.
                let _ = self.pri.close(slot, request.ssid, request.prg_index);
                self.answer_group(
                    stream.psid,
                    None,
                    request.prg_index,
                    PriResponse::ResponseFailure,
                );
                PriDisposition::Answered(if error == GuestPriQueueError::Disabled {
                    PriRefusal::GuestQueueDisabled
                } else {
                    PriRefusal::GuestQueueAborted
                })
            }
            Err(GuestPriQueueError::Overflow) => {
                if !request.last {
                    return PriDisposition::Discarded(PriRefusal::GuestQueueOverflow);
                }
                // IHI 0070 8.1: a Last request discarded in overflow is answered Success (with
                // its PASID: this vSMMU advertises PPS). The group is over for the guest.
                let _ = self.pri.close(slot, request.ssid, request.prg_index);
                self.answer_group(
                    stream.psid,
                    request.ssid,
                    request.prg_index,
                    PriResponse::Success,
                );
                PriDisposition::Answered(PriRefusal::GuestQueueOverflow)
            }
        }
    }

    /// Every physical PRI queue entry before `drained` has been handed over: acts on an
    /// overflow found earlier, and releases the parked PASIDs that have quiesced.
    pub(crate) fn pri_advance(&mut self, drained: PriPosition) {
        self.pri.drained = self.pri.drained.max(drained);
        if let Some(at) = self.pri.overflow_at
            && self.pri.drained >= at
        {
            self.pri.overflow_at = None;
            // IHI 0070 8.1.1: a group with no Last entry before the overflow point never
            // completes (the SMMU answered its Last, or lost it); the guest, told through its
            // queue's overflow flag, discards its part of it too.
            let mut discarded = 0u64;
            self.pri.close_where(
                true,
                |g| !g.complete && g.opened_at < at,
                |_| discarded = discarded.saturating_add(1),
            );
            if discarded > 0 {
                self.counters.pri_groups_discarded_by_overflow = self
                    .counters
                    .pri_groups_discarded_by_overflow
                    .saturating_add(discarded);
                let _ = self.enter_guest_pri_overflow();
            }
        }
        self.release_quiescent_pasids();
    }

    /// Releases every parked PASID that has quiesced; one the guest has given a CD meanwhile
    /// is marked for re-shadowing, so it goes live at the next run. Returns how many.
    pub(crate) fn release_quiescent_pasids(&mut self) -> usize {
        let mut quiescent: heapless::Vec<_, { crate::pasid::MAX_TRACKED_PASIDS }> =
            heapless::Vec::new();
        for parked in self.pasids.parked() {
            let key = parked.key();
            let open = self.pri.open_partial(key.slot, key.cd, parked.epoch);
            if let Some(proof) = parked.quiescence(self.pri.drained, open) {
                let _ = quiescent.push((parked, proof));
            }
        }
        let released = quiescent.len();
        for (parked, proof) in quiescent {
            let key = parked.key();
            // Nothing of the old address space is left open: the drain answered its groups,
            // or its stop marker closed them (groups begun outside any address space stay
            // tracked, so no later one takes them over).
            if self.pasids.release(proof).is_some() {
                self.counters.pasid_frees = self.counters.pasid_frees.saturating_add(1);
                if parked.waiting
                    && let Some(stream) = self.streams.get_mut(key.slot)
                {
                    stream.dirty_cds |= 1u64.checked_shl(key.cd).unwrap_or(0);
                }
            }
        }
        released
    }

    /// Answers InvalidRequest, on the hypervisor's behalf, every group of stream `slot`'s PASID
    /// `cd` in `epoch` that awaits the guest's response (its address space is gone).
    pub(crate) fn answer_groups_of_epoch(
        &mut self,
        slot: usize,
        cd: u32,
        epoch: crate::pasid::Epoch,
    ) {
        let Some(psid) = self.streams.get(slot).map(|s| s.psid) else {
            return;
        };
        let mut answered: heapless::Vec<Group, MAX_TRACKED_GROUPS> = heapless::Vec::new();
        self.pri.close_where(
            false,
            |g| g.slot == slot && g.cd() == cd && g.epoch == epoch && g.complete,
            |g| {
                let _ = answered.push(*g);
            },
        );
        for group in answered {
            self.counters.pri_groups_answered_at_teardown = self
                .counters
                .pri_groups_answered_at_teardown
                .saturating_add(1);
            self.answer_group(
                psid,
                group.ssid,
                group.prg_index,
                PriResponse::InvalidRequest,
            );
        }
    }
}
