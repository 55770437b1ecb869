//! Physical events for the VM's streams: which the guest sees, and how.
//!
//! | physical event | to the guest |
//! |---|---|
//! | S2 = 1 with CLASS = TT on a nested stream (the guest's stage-1 table is outside its RAM) | F_WALK_EABT, S2 = 0, CLASS = TT, with the table's address as the fetch address, as an SMMU whose walk met no memory reports it |
//! | any other with S2 = 1 (stage-2 fault) | nothing: the hypervisor keeps and counts it |
//! | C_BAD_STE on a stream the vSMMU blocked for the guest | the guest's configuration error: C_BAD_STE, C_BAD_STREAMID (if CR2.RECINVSID) or F_STE_FETCH (with the IPA of the stream table read that failed) |
//! | C_BAD_CD on a nested stream whose CD the vSMMU could not read (outside the guest's RAM) | F_CD_FETCH, with the address it tried |
//! | F_STREAM_DISABLED, C_BAD_SUBSTREAMID, C_BAD_CD | the same |
//! | F_TRANSLATION, F_ADDR_SIZE, F_ACCESS, F_PERMISSION (stage 1) | the same |
//! | everything else | nothing (see [`WithheldReason`]) |
//!
//! A forwarded record is rebuilt, not copied: the virtual stream ID, the substream, the access
//! (PnU, InD, RnW), CLASS and the input address; no stall tag (stalls are not forwarded) and no
//! IPA or physical fetch address (word 3 is zero, except a guest fetch address the vSMMU
//! itself knows). Only events while the vSMMU is enabled are forwarded.

use smmu::driver::DmaMemory;
use smmu::event::{Event, EventAddress, EventId, FaultClass};
use smmu::{Ipa, PhysAddr, StreamId};

use crate::VirtualSmmu;
use crate::counters::bump;
use crate::events::{EventDisposition, WithheldReason};
use crate::guest_tables::{CdFault, SteFault, read_cd};
use crate::interfaces::guest_memory::GuestMemory;
use crate::interfaces::interrupts::InterruptSink;
use crate::interfaces::physical::PhysicalSmmu;
use crate::streams::ShadowConfig;

impl<G, P, I, C, const STREAMS: usize> VirtualSmmu<G, P, I, C, STREAMS>
where
    G: GuestMemory,
    P: PhysicalSmmu,
    I: InterruptSink,
    C: DmaMemory,
{
    pub(crate) fn intake_event(&mut self, event: &Event) -> EventDisposition {
        let disposition = match self.guest_record(event) {
            Err(reason) => EventDisposition::Withheld(reason),
            Ok(record) => match self.deliver_event(&record.encode()) {
                Ok(()) => {
                    self.counters.events_forwarded =
                        self.counters.events_forwarded.saturating_add(1);
                    EventDisposition::Forwarded
                }
                Err(reason) => EventDisposition::Dropped(reason),
            },
        };
        if let EventDisposition::Withheld(reason) = disposition {
            bump(&mut self.counters.events_withheld, reason.index());
        }
        disposition
    }

    /// The record the guest should see for `event`, or why it sees none.
    fn guest_record(&self, event: &Event) -> Result<Event, WithheldReason> {
        let slot = self
            .streams
            .slot_of_physical(event.sid)
            .ok_or(WithheldReason::NotThisVm)?;
        let stream = self.streams.get(slot).ok_or(WithheldReason::NotThisVm)?;
        let nested = matches!(stream.installed, Some(ShadowConfig::Nested { .. }));
        let walk_outside_ram = event.s2
            && nested
            && event.class == FaultClass::TranslationTable
            && matches!(
                event.id,
                EventId::FTranslation
                    | EventId::FAddrSize
                    | EventId::FAccess
                    | EventId::FPermission
            );
        if event.s2 && !walk_outside_ram {
            return Err(WithheldReason::Stage2Fault);
        }
        if !self.registers.smmu_enabled() {
            return Err(WithheldReason::VsmmuDisabled);
        }
        let mut id = event.id;
        let mut addr2 = EventAddress::Ipa(Ipa(0));
        if walk_outside_ram {
            // The IPA of the descriptor the walk fetched is, to the guest, a physical address.
            let EventAddress::Ipa(table) = event.addr2 else {
                return Err(WithheldReason::Stage2Fault);
            };
            id = EventId::FWalkEabt;
            addr2 = EventAddress::Fetch(PhysAddr(table.0));
        }
        match event.id {
            _ if walk_outside_ram => {}
            EventId::CBadSte => match stream.installed {
                Some(ShadowConfig::Blocked(fault)) => match fault {
                    SteFault::Illegal(_) => {}
                    SteFault::StreamIdOutOfRange => {
                        // CR2.RECINVSID: record C_BAD_STREAMID.
                        if self.registers.cr2 & 0b10 == 0 {
                            return Err(WithheldReason::NotRecorded);
                        }
                        id = EventId::CBadStreamid;
                    }
                    SteFault::FetchAbort(ipa) => {
                        id = EventId::FSteFetch;
                        addr2 = EventAddress::Fetch(PhysAddr(ipa.0));
                    }
                },
                _ => return Err(WithheldReason::HypervisorConfiguration),
            },
            EventId::CBadCd => {
                if let Some(ShadowConfig::Nested { table, .. }) = stream.installed
                    && let Err(CdFault::FetchAbort(at)) = read_cd(
                        &self.backends.guest_memory,
                        &table,
                        event.ssid.map_or(0, |s| s.0),
                    )
                {
                    id = EventId::FCdFetch;
                    addr2 = EventAddress::Fetch(PhysAddr(at.0));
                }
            }
            EventId::FStreamDisabled
            | EventId::CBadSubstreamid
            | EventId::FTranslation
            | EventId::FAddrSize
            | EventId::FAccess
            | EventId::FPermission => {}
            EventId::CBadStreamid | EventId::FSteFetch | EventId::FCdFetch | EventId::FVmsFetch => {
                return Err(WithheldReason::HypervisorConfiguration);
            }
            EventId::FUut
            | EventId::FBadAtsTreq
            | EventId::FTranslForbidden
            | EventId::FWalkEabt
            | EventId::FTlbConflict
            | EventId::FCfgConflict
            | EventId::EPageRequest => return Err(WithheldReason::NotForwarded),
        }
        Ok(Event {
            id,
            sid: StreamId(stream.vsid.0),
            ssid: event.ssid,
            stag: 0,
            stall: false,
            pnu: event.pnu,
            ind: event.ind,
            rnw: event.rnw,
            s2: false,
            class: event.class,
            input_addr: event.input_addr,
            addr2,
        })
    }
}
