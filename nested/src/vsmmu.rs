//! The virtual SMMU of one VM: its construction, its state, and the entry points `hyp` calls.
//!
//! | entry point | when `hyp` calls it |
//! |---|---|
//! | [`VirtualSmmu::new`] | building the VM, after its SMMU stage 2 exists; installs the VM's streams' first STEs (GBPA: abort or stage 2) |
//! | [`MmioDevice::mmio_read`] / [`MmioDevice::mmio_write`] | a trapped access to the register window ([`crate::config::REGISTER_WINDOW_SIZE`]) |
//! | [`VirtualSmmu::run_pending`] | when [`VirtualSmmu::has_pending_work`] says so: on a WFE trap of one of the VM's vCPUs (a guest polling its CMD_SYNC MSI in memory waits with WFE), or on a periodic tick |
//! | [`VirtualSmmu::handle_physical_event`] | for each physical event whose stream [`VirtualSmmu::owns_physical_stream`], after the physical event queue was drained and its lock released |
//! | [`VirtualSmmu::handle_physical_page_request`] | for each physical PRI queue entry (with its position) whose stream [`VirtualSmmu::owns_physical_stream`], after the physical PRI queue was drained ([`Driver::drain_page_requests_at`](smmu::driver::Driver::drain_page_requests_at)) and its lock released; an overflow goes to every vSMMU |
//! | [`VirtualSmmu::handle_pri_drained`] | on every vSMMU, after the entries of a drain were handed over: the position the drain reached |
//!
//! Work continues by itself on the guest's own register accesses too: a CMDQ_PROD write, a
//! CMDQ_CONS read (a guest polling for a sync without MSI), a GERRORN write that clears
//! CMDQ_ERR, a CR0 or GBPA write, and a CR0ACK or GBPA read while an update is in progress.
//!
//! # Concurrency
//!
//! Every entry point takes `&mut self`: `hyp` keeps each VM's vSMMU behind one lock and calls it
//! from whichever vCPU trapped. The physical SMMU is reached through [`PhysicalSmmu`] calls
//! made with that lock held, so the lock order is "vSMMU, then physical SMMU"; the physical
//! event queue must be drained with only the physical lock held, and the events handed to the
//! vSMMUs afterwards.

use smmu::domain::Sequence;
use smmu::driver::{DmaMemory, PriIntake, PriPosition};
use smmu::entry::make::Stage2Translation;
use smmu::event::Event;
use smmu::{IpaRange, StreamId, VirtualStreamId};

use crate::budget::Budget;
use crate::config::{CdLayout, ConfigError, VsmmuConfig};
use crate::counters::Counters;
use crate::events::EventDisposition;
use crate::interfaces::guest_memory::GuestMemory;
use crate::interfaces::interrupts::InterruptSink;
use crate::interfaces::mmio::{AccessWidth, MmioDevice, MmioError, MmioOffset, VcpuId};
use crate::interfaces::physical::{PhysicalCommand, PhysicalSmmu};
use crate::pasid::{PasidKey, PasidTable};
use crate::pri::{Groups, PriDisposition};
use crate::registers::RegisterFile;
use crate::registers::id::VirtualFeatures;
use crate::streams::{Stream, Streams};

/// Forwarded commands buffered before a submission.
pub(crate) const BATCH: usize = 32;

/// What a vSMMU is built on: the VM's memory, the shared physical SMMU, the VM's interrupt
/// controller, and the hypervisor memory holding the VM's shadow CD tables.
#[derive(Debug)]
pub struct Backends<G, P, I, C> {
    /// (b) The VM's RAM.
    pub guest_memory: G,
    /// (c) The physical SMMU.
    pub physical: P,
    /// (e) The VM's virtual interrupts.
    pub interrupts: I,
    /// The shadow CD tables: mapped read-only at the CD window in the VM's SMMU stage 2.
    pub shadow_cds: C,
}

/// The virtual SMMUv3 of one VM, owning at most `STREAMS` streams.
#[derive(Debug)]
pub struct VirtualSmmu<G, P, I, C, const STREAMS: usize> {
    pub(crate) backends: Backends<G, P, I, C>,
    pub(crate) features: VirtualFeatures,
    pub(crate) stage2: Stage2Translation,
    pub(crate) registers: RegisterFile,
    pub(crate) streams: Streams<STREAMS>,
    pub(crate) cd_layout: CdLayout,
    /// Forwarded commands not yet submitted.
    pub(crate) batch: heapless::Vec<PhysicalCommand, BATCH>,
    /// Commands were submitted since the last completed physical CMD_SYNC.
    pub(crate) unsynced: bool,
    pub(crate) work_budget: u32,
    pub(crate) counters: Counters,
    /// The PASIDs that are live or parked.
    pub(crate) pasids: PasidTable,
    /// The page request groups forwarded to the guest, and the PRI drain's progress.
    pub(crate) pri: Groups,
    /// The newest CMD_SYNC proof the vSMMU has held.
    pub(crate) last_sync: Option<Sequence>,
}

/// How many of a vSMMU's PASIDs are in each lifecycle state now.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct PasidSummary {
    /// Live: a valid shadow CD.
    pub live: usize,
    /// Parked: waiting to quiesce.
    pub parked: usize,
}

impl<G, P, I, C, const STREAMS: usize> VirtualSmmu<G, P, I, C, STREAMS>
where
    G: GuestMemory,
    P: PhysicalSmmu,
    I: InterruptSink,
    C: DmaMemory,
{
    /// Builds the vSMMU of a VM and installs its streams' first physical STEs: abort, or stage
    /// 2 alone, as [`VsmmuConfig::abort_until_enabled`] says (the vSMMU starts disabled).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first inconsistency; nothing was installed then, except for
    /// [`ConfigError::InitialInstall`].
    pub fn new(
        config: &VsmmuConfig<'_>,
        mut backends: Backends<G, P, I, C>,
    ) -> Result<Self, ConfigError> {
        let physical = backends.physical.features();
        if !physical.s1p
            || !physical.s2p
            || matches!(
                physical.ttf,
                smmu::registers::TranslationTableFormats::AArch32
            )
        {
            return Err(ConfigError::PhysicalCannotNest);
        }
        if config.work_budget == 0 {
            return Err(ConfigError::ZeroBudget);
        }
        if config.sid_bits > 32 {
            return Err(ConfigError::SidBitsTooLarge(config.sid_bits));
        }
        if config.streams.is_empty() {
            return Err(ConfigError::NoStreams);
        }
        if config.streams.len() > STREAMS {
            return Err(ConfigError::TooManyStreams {
                given: config.streams.len(),
                capacity: STREAMS,
            });
        }
        let mut streams = Streams::new();
        for assignment in config.streams {
            let vsid = assignment.virtual_sid;
            let psid = assignment.physical_sid;
            if u64::from(vsid.0) >> config.sid_bits != 0 {
                return Err(ConfigError::VirtualStreamOutOfRange(vsid));
            }
            if u64::from(psid.0) >> physical.sidsize != 0 {
                return Err(ConfigError::PhysicalStreamOutOfRange(psid));
            }
            if streams.slot_of_virtual(vsid).is_some() {
                return Err(ConfigError::DuplicateVirtualStream(vsid));
            }
            if streams.slot_of_physical(psid).is_some() {
                return Err(ConfigError::DuplicatePhysicalStream(psid));
            }
            if !streams.push(Stream::new(vsid, psid)) {
                return Err(ConfigError::TooManyStreams {
                    given: config.streams.len(),
                    capacity: STREAMS,
                });
            }
        }
        let ipa_bits = config.stage2.input_bits();
        let cd_layout = CdLayout::new(
            &backends.shadow_cds,
            config.cd_window_base,
            streams.len(),
            physical.ssidsize,
        )?;
        let window = cd_layout.window;
        let below_ipa_limit = window
            .checked_end()
            .is_some_and(|end| ipa_bits >= 64 || end <= 1 << ipa_bits);
        if !below_ipa_limit || backends.guest_memory.overlaps_ram(window) {
            return Err(ConfigError::CdWindow(window));
        }
        let pri_queue = backends.physical.pri_queue_position().is_some();
        let features = VirtualFeatures::derive(
            &physical,
            ipa_bits,
            config.sid_bits,
            cd_layout.cds_log2,
            config.forward_ats,
        )
        .with_pri(&physical, pri_queue);
        let mut vsmmu = Self {
            backends,
            features,
            stage2: config.stage2,
            registers: RegisterFile::reset(config.abort_until_enabled, features.pri),
            streams,
            cd_layout,
            batch: heapless::Vec::new(),
            unsynced: false,
            work_budget: config.work_budget,
            counters: Counters::default(),
            pasids: PasidTable::default(),
            pri: Groups::default(),
            last_sync: None,
        };
        // One STE per stream, no guest memory read (the vSMMU is disabled): bounded by STREAMS.
        let mut budget = Budget::new(u32::MAX);
        vsmmu.run_with(&mut budget);
        if vsmmu.streams.iter().any(|s| s.installed.is_none()) {
            return Err(ConfigError::InitialInstall);
        }
        Ok(vsmmu)
    }

    /// The IPA range `hyp` maps, read-only and in the VM's SMMU stage 2 only, to the shadow CD
    /// memory ([`Backends::shadow_cds`], from its first byte).
    #[must_use]
    pub fn cd_window(&self) -> IpaRange {
        self.cd_layout.window
    }

    /// What the vSMMU advertises.
    #[must_use]
    pub fn features(&self) -> &VirtualFeatures {
        &self.features
    }

    /// The counters.
    #[must_use]
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The backends, for `hyp`'s diagnostics and the tests' fakes.
    #[must_use]
    pub fn backends(&self) -> &Backends<G, P, I, C> {
        &self.backends
    }

    /// The backends, mutably (tests drive their fakes through this).
    pub fn backends_mut(&mut self) -> &mut Backends<G, P, I, C> {
        &mut self.backends
    }

    /// The guest's stream ID for `psid`, if this VM owns that physical stream.
    #[must_use]
    pub fn owns_physical_stream(&self, psid: StreamId) -> Option<VirtualStreamId> {
        self.streams
            .slot_of_physical(psid)
            .and_then(|slot| self.streams.get(slot))
            .map(|s| s.vsid)
    }

    /// Whether work is left for [`VirtualSmmu::run_pending`]: commands beyond a trap's budget,
    /// or STEs and CDs still to shadow.
    #[must_use]
    pub fn has_pending_work(&self) -> bool {
        self.streams.first_dirty().is_some()
            || self.command_queue_has_work()
            || self.pasids.parked().any(|p| p.needs_invalidation())
    }

    /// Continues pending work, one trap's budget of it. Returns whether work is still left.
    pub fn run_pending(&mut self) -> bool {
        if self.has_pending_work() {
            self.counters.continuations = self.counters.continuations.saturating_add(1);
            self.run();
        }
        self.has_pending_work()
    }

    /// Takes a physical event of one of this VM's streams: forwards it to the guest's event
    /// queue with its virtual stream ID, or keeps it, and says which.
    pub fn handle_physical_event(&mut self, event: &Event) -> EventDisposition {
        self.intake_event(event)
    }

    /// Takes a physical PRI queue entry at `position` (an overflow: the position the SMMU was
    /// writing at when it was found): forwards a page request to the guest's PRI queue with
    /// its virtual stream ID, or answers or discards it, and says which (see [`crate::pri`]).
    /// An overflow must be handed to every vSMMU.
    pub fn handle_physical_page_request(
        &mut self,
        position: PriPosition,
        intake: &PriIntake,
    ) -> PriDisposition {
        self.intake_page_request(position, intake)
    }

    /// Every physical PRI queue entry before `up_to` has been handed to the vSMMUs: parked
    /// PASIDs waiting for the drain may quiesce (one the guest has given a new CD meanwhile
    /// then goes live at the next [`VirtualSmmu::run_pending`]).
    pub fn handle_pri_drained(&mut self, up_to: PriPosition) {
        self.pri_advance(up_to);
        self.flush_batch();
    }

    /// How many PASIDs are live and parked now.
    #[must_use]
    pub fn pasids(&self) -> PasidSummary {
        let (live, parked) = self.pasids.counts();
        PasidSummary { live, parked }
    }

    /// Re-submits the invalidation of parked PASIDs whose first one did not complete.
    fn retry_invalidations(&mut self, budget: &mut Budget) {
        let mut retry: heapless::Vec<(PasidKey, smmu::Asid), { crate::pasid::MAX_TRACKED_PASIDS }> =
            heapless::Vec::new();
        for parked in self.pasids.parked().filter(|p| p.needs_invalidation()) {
            let _ = retry.push((parked.key(), parked.asid));
        }
        for (key, asid) in retry {
            if !budget.has_room() {
                break;
            }
            if let Some(invalidated) = self.invalidate_pasid(key, asid, budget) {
                self.pasids.invalidated(key, invalidated);
            }
        }
        self.release_quiescent_pasids();
    }

    /// One trap's worth of work: shadow updates first, then commands.
    pub(crate) fn run(&mut self) {
        let mut budget = Budget::new(self.work_budget);
        self.run_with(&mut budget);
        if self.has_pending_work() {
            self.counters.budget_exhausted = self.counters.budget_exhausted.saturating_add(1);
        }
        self.counters.max_work_per_call = self.counters.max_work_per_call.max(budget.spent());
    }

    /// Shadow work before each command, so a CFGI takes effect before anything after it; then
    /// the command queue, while the budget has room.
    pub(crate) fn run_with(&mut self, budget: &mut Budget) {
        if self.pasids.parked().any(|p| p.needs_invalidation()) {
            self.retry_invalidations(budget);
        }
        while budget.has_room() {
            if let Some(slot) = self.streams.first_dirty() {
                self.flush_batch();
                self.reshadow_step(slot, budget);
                continue;
            }
            self.registers.settle_updates();
            if !self.command_step(budget) {
                break;
            }
        }
        if self.streams.first_dirty().is_none() {
            self.registers.settle_updates();
        }
        self.flush_batch();
    }

    /// Submits the buffered forwarded commands (no sync).
    pub(crate) fn flush_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        self.counters.batches = self.counters.batches.saturating_add(1);
        match self.backends.physical.submit(&self.batch) {
            Ok(()) => self.unsynced = true,
            Err(_) => {
                self.counters.physical_failures = self.counters.physical_failures.saturating_add(1);
            }
        }
        self.batch.clear();
    }

    /// Queues a forwarded command, submitting the batch first if it is full.
    pub(crate) fn forward(&mut self, command: PhysicalCommand) {
        if self.batch.is_full() {
            self.flush_batch();
        }
        if self.batch.push(command).is_ok() {
            self.counters.commands_forwarded = self.counters.commands_forwarded.saturating_add(1);
        }
    }
}

impl<G, P, I, C, const STREAMS: usize> MmioDevice for VirtualSmmu<G, P, I, C, STREAMS>
where
    G: GuestMemory,
    P: PhysicalSmmu,
    I: InterruptSink,
    C: DmaMemory,
{
    fn mmio_read(
        &mut self,
        offset: MmioOffset,
        width: AccessWidth,
        vcpu: VcpuId,
    ) -> Result<u64, MmioError> {
        // No register has a per-vCPU view: `vcpu` is the caller's to log.
        let _ = vcpu;
        self.register_read(offset, width)
    }

    fn mmio_write(
        &mut self,
        offset: MmioOffset,
        width: AccessWidth,
        value: u64,
        vcpu: VcpuId,
    ) -> Result<(), MmioError> {
        let _ = vcpu;
        self.register_write(offset, width, value)
    }
}
