//! Shadow CD tables: one linear table per owned stream in hypervisor memory, read by the
//! physical SMMU through the CD window, written only here.
//!
//! A guest CD is read (through its table, see [`crate::guest_tables`]), validated
//! ([`crate::validate::cd`]) and its shadow written at the stream's slot, index = substream ID.
//! An invalid or unreadable CD gives a shadow with V = 0. While the physical SMMU can reach the
//! CD, the write goes through `smmu`'s hitless CD installer, each step followed by CFGI_CD and
//! CMD_SYNC: replacing a valid CD with another valid one never passes through V = 0 unless the
//! two differ in both the ASID and a table (the one case the architecture leaves no single
//! store for).
//!
//! Every write goes through the PASID lifecycle ([`crate::pasid`]): a valid CD over a free
//! PASID makes it live, over a live one replaces its address space (hitless, then the old
//! one's TLB and ATC entries invalidated and synced), and an invalid CD over a live one parks
//! it; a valid CD over a parked PASID is kept out of the shadow until the PASID quiesces.

use smmu::cd::Cd;
use smmu::command::Cmd;
use smmu::driver::{DmaMemory, PriPosition};
use smmu::entry::PhysicalCd;
use smmu::entry::install::{EntryWriter, install_cd};
use smmu::{Asid, Iova, StreamId, SubstreamId};

use crate::VirtualSmmu;
use crate::budget::{Budget, READ_COST, SYNC_COST};
use crate::counters::bump;
use crate::guest_tables::{GuestCdTable, read_cd};
use crate::interfaces::guest_memory::GuestMemory;
use crate::interfaces::interrupts::InterruptSink;
use crate::interfaces::physical::{PhysicalCommand, PhysicalSmmu};
use crate::pasid::{Invalidated, PasidKey, PasidState};
use crate::validate::cd::{GuestCd, validate_cd};

/// The hitless installer's stores and syncs for one shadow CD.
struct ShadowCdWriter<'a, C, P> {
    memory: &'a mut C,
    physical: &'a mut P,
    offset: usize,
    psid: StreamId,
    ssid: SubstreamId,
}

impl<C: DmaMemory, P: PhysicalSmmu> EntryWriter for ShadowCdWriter<'_, C, P> {
    type Error = P::Error;

    fn write_qword(&mut self, index: usize, value: u64) {
        let offset = self.offset.saturating_add(index.saturating_mul(8));
        self.memory.write_u64(offset, value);
    }

    fn sync(&mut self) -> Result<(), P::Error> {
        // The driver's barrier before CMDQ_PROD orders the stores above before the command.
        self.physical.submit(&[PhysicalCommand::new(Cmd::CfgiCd {
            sid: self.psid,
            ssid: self.ssid,
            leaf: true,
        })])?;
        self.physical.sync().map(|_| ())
    }
}

/// Reads the shadow CD at `offset`.
pub(crate) fn read_shadow(memory: &impl DmaMemory, offset: usize) -> Cd {
    let mut words = [0u64; 8];
    for (i, word) in words.iter_mut().enumerate() {
        *word = memory.read_u64(offset.saturating_add(i.saturating_mul(8)));
    }
    Cd::from_words(words)
}

impl<G, P, I, C, const STREAMS: usize> VirtualSmmu<G, P, I, C, STREAMS>
where
    G: GuestMemory,
    P: PhysicalSmmu,
    I: InterruptSink,
    C: DmaMemory,
{
    /// Shadows CD `ssid` of `table` into the stream in `slot`; `live` if the physical SMMU may
    /// be reading that CD now. The PASID's lifecycle decides what may be written
    /// ([`crate::pasid`]): a valid CD for a parked PASID stays out of the shadow until the
    /// PASID has quiesced.
    pub(crate) fn shadow_cd(
        &mut self,
        slot: usize,
        ssid: u32,
        table: &GuestCdTable,
        live: bool,
        budget: &mut Budget,
    ) {
        let Some(offset) = self.cd_layout.offset(slot, ssid) else {
            return;
        };
        budget.charge(2 * READ_COST);
        let memory = &self.backends.guest_memory;
        let target = match read_cd(memory, table, ssid) {
            Err(_) => {
                self.counters.cd_lookup_faults = self.counters.cd_lookup_faults.saturating_add(1);
                Cd::INVALID
            }
            Ok(guest) => match validate_cd(&GuestCd(guest), &self.features) {
                Ok(validated) => *validated.shadow(),
                Err(invalid) => {
                    bump(&mut self.counters.cd_rejections, invalid.index());
                    Cd::INVALID
                }
            },
        };
        // The validator only makes CDs the guard accepts; should one ever fail it, the
        // substream is blocked rather than handed to the SMMU.
        let target = if PhysicalCd::check(target).is_ok() {
            target
        } else {
            self.counters.physical_failures = self.counters.physical_failures.saturating_add(1);
            Cd::INVALID
        };
        let key = PasidKey { slot, cd: ssid };
        let current = read_shadow(&self.backends.shadow_cds, offset);
        match self.pasids.state(key) {
            PasidState::Parked(_) if target.v() => {
                // Quiescence may have come since the last look.
                self.release_quiescent_pasids();
                if matches!(self.pasids.state(key), PasidState::Parked(_)) {
                    self.pasids.set_waiting(key, true);
                    self.counters.pasid_refusals = self.counters.pasid_refusals.saturating_add(1);
                    return;
                }
                self.make_live(key, offset, current, &target, live, budget);
            }
            PasidState::Parked(_) => self.pasids.set_waiting(key, false),
            PasidState::Free if target.v() => {
                self.make_live(key, offset, current, &target, live, budget);
            }
            PasidState::Free => {
                if current != target {
                    let _ = self.write_shadow_cd(key, offset, current, &target, live, budget);
                }
            }
            PasidState::Live(_) if current == target => {}
            PasidState::Live(_) if target.v() => {
                self.replace_live(key, offset, current, &target, live, budget);
            }
            PasidState::Live(_) => self.park(key, offset, current, live, budget),
        }
    }

    /// Writes `target` over `current` in the shadow CD at `offset`: directly if the physical
    /// SMMU cannot reach it, with the hitless installer (CFGI_CD and CMD_SYNC after each step)
    /// if it can. False if the install failed.
    fn write_shadow_cd(
        &mut self,
        key: PasidKey,
        offset: usize,
        mut current: Cd,
        target: &Cd,
        live: bool,
        budget: &mut Budget,
    ) -> bool {
        let Some(psid) = self.streams.get(key.slot).map(|s| s.psid) else {
            return false;
        };
        self.counters.cd_installs = self.counters.cd_installs.saturating_add(1);
        if !live {
            // Nothing can fetch it: the installed STE is not nested, or this substream is
            // beyond its S1CDMax; the STE install that makes it reachable invalidates it.
            for (i, word) in target.words().iter().enumerate() {
                self.backends
                    .shadow_cds
                    .write_u64(offset.saturating_add(i.saturating_mul(8)), *word);
            }
            return true;
        }
        let Ok(target) = PhysicalCd::check(*target) else {
            self.counters.physical_failures = self.counters.physical_failures.saturating_add(1);
            return false;
        };
        let mut writer = ShadowCdWriter {
            memory: &mut self.backends.shadow_cds,
            physical: &mut self.backends.physical,
            offset,
            psid,
            ssid: SubstreamId(key.cd),
        };
        match install_cd(&mut writer, &mut current, &target) {
            Ok(report) => {
                if report.syncs > 0 {
                    self.unsynced = false;
                }
                self.counters.install_syncs = self
                    .counters
                    .install_syncs
                    .saturating_add(u64::from(report.syncs));
                budget.charge(SYNC_COST.saturating_mul(u32::from(report.syncs)));
                true
            }
            Err(_) => {
                self.counters.physical_failures = self.counters.physical_failures.saturating_add(1);
                budget.charge(SYNC_COST);
                false
            }
        }
    }

    /// The physical PRI queue's write position now, if PRI is forwarded. An unreadable one is
    /// taken as "never": requests are then all from before it (answered by the hypervisor),
    /// and a teardown is over only by a stop marker.
    pub(crate) fn pri_position(&mut self) -> Option<PriPosition> {
        if !self.features.pri {
            return None;
        }
        Some(
            self.backends
                .physical
                .pri_queue_position()
                .unwrap_or(PriPosition(u64::MAX)),
        )
    }

    /// A free PASID gets its first (or next) address space: the shadow CD is written, then the
    /// PASID is live from the PRI queue's position now.
    fn make_live(
        &mut self,
        key: PasidKey,
        offset: usize,
        current: Cd,
        target: &Cd,
        live: bool,
        budget: &mut Budget,
    ) {
        let Ok(free) = self.pasids.claim(key) else {
            return;
        };
        if !self.pasids.has_room(key) {
            // No room to track it: the CD stays out of the shadow (C_BAD_CD on its traffic).
            self.counters.pasid_refusals = self.counters.pasid_refusals.saturating_add(1);
            return;
        }
        if !self.write_shadow_cd(key, offset, current, target, live, budget) {
            return;
        }
        let reused = free.reused;
        let since = self.pri_position().unwrap_or_default();
        if self.pasids.go_live(free, since).is_err() {
            // Cannot happen after `has_room`; if it did, the CD is taken out again.
            let written = read_shadow(&self.backends.shadow_cds, offset);
            let _ = self.write_shadow_cd(key, offset, written, &Cd::INVALID, live, budget);
            self.counters.pasid_refusals = self.counters.pasid_refusals.saturating_add(1);
            return;
        }
        if reused {
            self.counters.pasid_reuses = self.counters.pasid_reuses.saturating_add(1);
        }
    }

    /// A live PASID's address space is replaced by another valid one: hitless, then the old
    /// ASID's TLB entries and the PASID's ATC entries are invalidated, the groups of the old
    /// address space awaiting the guest are answered, and a new epoch starts.
    fn replace_live(
        &mut self,
        key: PasidKey,
        offset: usize,
        current: Cd,
        target: &Cd,
        live: bool,
        budget: &mut Budget,
    ) {
        if !self.write_shadow_cd(key, offset, current, target, live, budget) {
            return;
        }
        let _ = self.invalidate_pasid(key, current.asid(), budget);
        let since = self.pri_position().unwrap_or_default();
        if let Some((old, _)) = self.pasids.replace(key, since) {
            self.answer_groups_of_epoch(key.slot, key.cd, old);
            self.counters.pasid_replaces = self.counters.pasid_replaces.saturating_add(1);
        }
    }

    /// Parks a live PASID: its shadow CD becomes invalid (DMA and translation requests are
    /// refused from then on), the old ASID's TLB entries and the PASID's ATC entries are
    /// invalidated and synced, the PRI queue's position is recorded, and the groups awaiting
    /// the guest are answered InvalidRequest.
    pub(crate) fn park(
        &mut self,
        key: PasidKey,
        offset: usize,
        current: Cd,
        live: bool,
        budget: &mut Budget,
    ) {
        if current.v() && !self.write_shadow_cd(key, offset, current, &Cd::INVALID, live, budget) {
            // The CD could not be taken out: the PASID stays live (its DMA still translates in
            // the old address space, which is what the guest sees as its last valid CD).
            return;
        }
        let invalidated = self.invalidate_pasid(key, current.asid(), budget);
        let teardown = self.pri_position();
        if let Some(epoch) = self.pasids.park(key, teardown, current.asid(), invalidated) {
            self.counters.pasid_parks = self.counters.pasid_parks.saturating_add(1);
            self.answer_groups_of_epoch(key.slot, key.cd, epoch);
            self.flush_batch();
            self.release_quiescent_pasids();
        }
    }

    /// Submits TLBI_NH_ASID for `asid` and, with ATS, CMD_ATC_INV for the PASID, then a
    /// CMD_SYNC; the proof that they completed.
    pub(crate) fn invalidate_pasid(
        &mut self,
        key: PasidKey,
        asid: Asid,
        budget: &mut Budget,
    ) -> Option<Invalidated> {
        let psid = self.streams.get(key.slot).map(|s| s.psid)?;
        let held_before = self.last_sync;
        self.flush_batch();
        let vmid = self.stage2.parameters().vmid;
        let tlbi = PhysicalCommand::new(Cmd::TlbiNhAsid { vmid, asid });
        // Without a PASID (CD 0) every ATC entry of the function goes: PCIe invalidates
        // PASID-tagged entries too for a request without one.
        let atc = PhysicalCommand::new(Cmd::AtcInv {
            sid: psid,
            ssid: (key.cd != 0).then_some(SubstreamId(key.cd)),
            global: false,
            size: 52,
            addr: Iova(0),
        });
        let ats = self.backends.physical.features().ats;
        let commands = [tlbi, atc];
        let commands = if ats { &commands[..] } else { &commands[..1] };
        if self.backends.physical.submit(commands).is_err() {
            self.counters.physical_failures = self.counters.physical_failures.saturating_add(1);
            return None;
        }
        budget.charge(SYNC_COST);
        self.counters.install_syncs = self.counters.install_syncs.saturating_add(1);
        match self.backends.physical.sync() {
            Ok(proof) => {
                self.last_sync = Some(proof.sequence());
                self.unsynced = false;
                Invalidated::from_sync(held_before, &proof)
            }
            Err(_) => {
                self.counters.physical_failures = self.counters.physical_failures.saturating_add(1);
                None
            }
        }
    }
}
