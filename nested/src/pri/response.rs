//! The guest's `CMD_PRI_RESP`: forwarded with the physical stream ID only when it names a
//! group that was forwarded to this guest, on its stream and PASID, whose Last request the
//! guest has seen, that no one has answered yet, and that belongs to the address space the
//! PASID has now. Anything else is consumed without effect and counted by cause
//! ([`ResponseDrop`]): an SMMU's response for a group the device does not expect would only
//! confuse the device, and one for an address space the PASID no longer has is exactly the
//! crossing the PASID lifecycle exists to prevent.

use smmu::command::{Cmd, PriResponse};
use smmu::driver::DmaMemory;
use smmu::{StreamId, SubstreamId, VirtualStreamId};

use crate::VirtualSmmu;
use crate::counters::bump;
use crate::interfaces::guest_memory::GuestMemory;
use crate::interfaces::interrupts::InterruptSink;
use crate::interfaces::physical::{PhysicalCommand, PhysicalSmmu};
use crate::pasid::{PasidKey, PasidState};
use crate::pri::ResponseDrop;

impl<G, P, I, C, const STREAMS: usize> VirtualSmmu<G, P, I, C, STREAMS>
where
    G: GuestMemory,
    P: PhysicalSmmu,
    I: InterruptSink,
    C: DmaMemory,
{
    /// Carries out a guest's `CMD_PRI_RESP` (already validated as a command).
    pub(crate) fn guest_pri_response(
        &mut self,
        vsid: VirtualStreamId,
        ssid: Option<SubstreamId>,
        prg_index: u16,
        response: PriResponse,
    ) {
        match self.judge_response(vsid, ssid, prg_index) {
            Ok((slot, psid)) => {
                let _ = self.pri.close(slot, ssid, prg_index);
                self.forward(PhysicalCommand::new(Cmd::PriResp {
                    sid: psid,
                    ssid,
                    prg_index,
                    response,
                }));
                self.counters.pri_responses_forwarded =
                    self.counters.pri_responses_forwarded.saturating_add(1);
            }
            Err(drop) => bump(&mut self.counters.pri_responses_dropped, drop.index()),
        }
    }

    fn judge_response(
        &self,
        vsid: VirtualStreamId,
        ssid: Option<SubstreamId>,
        prg_index: u16,
    ) -> Result<(usize, StreamId), ResponseDrop> {
        let slot = self
            .streams
            .slot_of_virtual(vsid)
            .ok_or(ResponseDrop::StreamNotOwned)?;
        let psid = self
            .streams
            .get(slot)
            .map(|s| s.psid)
            .ok_or(ResponseDrop::StreamNotOwned)?;
        if ssid.is_some_and(|s| u64::from(s.0) >> self.features.ssid_bits != 0) {
            return Err(ResponseDrop::StreamNotOwned);
        }
        let key = PasidKey {
            slot,
            cd: ssid.map_or(0, |s| s.0),
        };
        let current = match self.pasids.state(key) {
            PasidState::Live(live) => Some(live.epoch),
            PasidState::Parked(_) | PasidState::Free => None,
        };
        match self.pri.find(slot, ssid, prg_index) {
            Some(group) if current != Some(group.epoch) => Err(ResponseDrop::StaleGeneration),
            Some(group) if !group.complete => Err(ResponseDrop::GroupIncomplete),
            Some(_) => Ok((slot, psid)),
            None => match self.pri.recently_closed(slot, ssid, prg_index) {
                Some(epoch) if Some(epoch) == current => Err(ResponseDrop::Duplicate),
                Some(_) => Err(ResponseDrop::StaleGeneration),
                None => Err(ResponseDrop::UnknownGroup),
            },
        }
    }
}
