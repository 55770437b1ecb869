//! Where shadow entries are built and installed: the physical STE of each owned stream, and the
//! shadow CD table the physical SMMU reads through the CD window.
//!
//! This module owns the re-shadowing steps. One step is one of:
//!
//! 1. read and validate the guest's STE of a dirty stream, giving the configuration it asks for
//!    ([`ShadowConfig`]; the vSMMU disabled gives GBPA's);
//! 2. read, validate and write one of that configuration's CDs into the stream's shadow table:
//!    directly while the physical SMMU cannot reach that CD (the installed STE is not nested,
//!    or the substream is beyond its S1CDMax), with the hitless CD installer and CFGI_CD +
//!    CMD_SYNC while it can;
//! 3. when no CD of it is left to shadow, install the physical STE ([`ste::build`]) with the
//!    hitless STE installer.
//!
//! So a stream becomes nested only once all its CDs are in place, and a live CD is replaced
//! without a window in which it is invalid when a hitless sequence exists. When an STE install
//! leaves a live PASID's CD out of the physical SMMU's reach (the stream disabled, S1CDMax
//! shrunk), the PASID is parked ([`crate::pasid`]).

pub mod cd;
pub mod ste;

use smmu::driver::DmaMemory;
use smmu::ste::Ste;

use crate::VirtualSmmu;
use crate::budget::{Budget, READ_COST, SYNC_COST};
use crate::counters::bump;
use crate::guest_tables::{SteFault, locate_ste, read_ste};
use crate::interfaces::guest_memory::GuestMemory;
use crate::interfaces::interrupts::InterruptSink;
use crate::interfaces::physical::PhysicalSmmu;
use crate::pasid::{MAX_TRACKED_PASIDS, PasidKey};
use crate::streams::ShadowConfig;
use crate::validate::ste::{GuestSte, SteRequest, validate_ste};

impl<G, P, I, C, const STREAMS: usize> VirtualSmmu<G, P, I, C, STREAMS>
where
    G: GuestMemory,
    P: PhysicalSmmu,
    I: InterruptSink,
    C: DmaMemory,
{
    /// The configuration the guest asks for `vsid` now.
    fn requested_config(&mut self, slot: usize, budget: &mut Budget) -> ShadowConfig {
        if !self.registers.smmu_enabled() {
            return if self.registers.gbpa.abort() {
                ShadowConfig::Abort
            } else {
                ShadowConfig::Stage2Only
            };
        }
        let Some(vsid) = self.streams.get(slot).map(|s| s.vsid) else {
            return ShadowConfig::Abort;
        };
        budget.charge(2 * READ_COST);
        let memory = &self.backends.guest_memory;
        let guest = locate_ste(
            memory,
            smmu::registers::StrtabBase(self.registers.strtab_base),
            smmu::registers::StrtabBaseCfg(self.registers.strtab_base_cfg),
            self.features.sid_bits,
            vsid,
        )
        .and_then(|ipa| read_ste(memory, ipa));
        let ste = match guest {
            Ok(ste) => ste,
            Err(fault) => {
                self.counters.ste_lookup_faults = self.counters.ste_lookup_faults.saturating_add(1);
                return ShadowConfig::Blocked(fault);
            }
        };
        match validate_ste(&GuestSte(ste), &self.features) {
            Ok(validated) => match *validated.request() {
                SteRequest::Abort => ShadowConfig::Abort,
                SteRequest::Bypass => ShadowConfig::Stage2Only,
                SteRequest::Stage1 { table, s1dss, eats } => {
                    ShadowConfig::Nested { table, s1dss, eats }
                }
            },
            Err(invalid) => {
                bump(&mut self.counters.ste_rejections, invalid.index());
                ShadowConfig::Blocked(SteFault::Illegal(invalid))
            }
        }
    }

    /// One re-shadowing step for the stream in `slot` (see the module docs).
    pub(crate) fn reshadow_step(&mut self, slot: usize, budget: &mut Budget) {
        let Some(stream) = self.streams.get(slot).copied() else {
            return;
        };
        if stream.dirty_ste && stream.pending.is_none() {
            let config = self.requested_config(slot, budget);
            if let Some(stream) = self.streams.get_mut(slot) {
                stream.dirty_ste = false;
                stream.pending = Some(config);
                // Every CD the new configuration reaches is read again: CFGI_STE invalidates
                // the CDs cached through the stream too.
                stream.dirty_cds = u64::MAX;
            }
            return;
        }
        if stream.dirty_ste {
            // A CFGI for a stream whose previous read is still pending: read it again.
            if let Some(stream) = self.streams.get_mut(slot) {
                stream.pending = None;
            }
            return self.reshadow_step(slot, budget);
        }
        let serving = stream.pending.or(stream.installed);
        let reachable_mask = match serving.map(|c| c.reachable_cds()) {
            Some(n) if n >= 64 => u64::MAX,
            Some(n) => (1u64 << n) - 1,
            None => 0,
        };
        let to_shadow = stream.dirty_cds & reachable_mask;
        if let (Some(ShadowConfig::Nested { table, .. }), true) = (serving, to_shadow != 0) {
            let ssid = to_shadow.trailing_zeros();
            if let Some(stream) = self.streams.get_mut(slot) {
                stream.dirty_cds &= !(1u64 << ssid);
            }
            let live = stream
                .installed
                .is_some_and(|installed| u64::from(ssid) < installed.reachable_cds());
            self.shadow_cd(slot, ssid, &table, live, budget);
            return;
        }
        if let Some(stream) = self.streams.get_mut(slot) {
            stream.dirty_cds = 0;
        }
        let Some(target) = stream.pending else {
            return;
        };
        self.install_stream(slot, target, budget);
    }

    /// Installs the physical STE for `config` on the stream in `slot`.
    fn install_stream(&mut self, slot: usize, config: ShadowConfig, budget: &mut Budget) {
        let Some(stream) = self.streams.get(slot).copied() else {
            return;
        };
        budget.charge(READ_COST);
        let (built, config) = match ste::build(
            &config,
            slot,
            &self.stage2,
            &self.backends.physical.features(),
            &self.cd_layout,
            self.features.pri,
        ) {
            Ok(built) => (built, config),
            Err(_) => {
                // Cannot happen for a configuration the validators accepted (the vSMMU never
                // advertises beyond the physical SMMU); if it does, the stream aborts.
                self.counters.physical_failures = self.counters.physical_failures.saturating_add(1);
                (ste::abort(), ShadowConfig::Abort)
            }
        };
        let installed = match self.backends.physical.install_ste(stream.psid, &built) {
            Ok(report) => {
                if report.writes > 0 {
                    self.counters.ste_installs = self.counters.ste_installs.saturating_add(1);
                }
                if report.syncs > 0 {
                    self.unsynced = false;
                }
                self.counters.install_syncs = self
                    .counters
                    .install_syncs
                    .saturating_add(u64::from(report.syncs));
                budget.charge(SYNC_COST.saturating_mul(u32::from(report.syncs)));
                Some(config)
            }
            Err(_) => {
                self.counters.physical_failures = self.counters.physical_failures.saturating_add(1);
                budget.charge(SYNC_COST);
                None
            }
        };
        if let Some(stream) = self.streams.get_mut(slot) {
            stream.installed = installed;
            stream.pending = None;
        }
        if let Some(config) = installed {
            let before = stream.installed.map_or(0, |c| c.reachable_cds());
            self.follow_reach(slot, before, config.reachable_cds(), budget);
        }
    }

    /// After an STE install changed which CDs of the stream in `slot` the physical SMMU can
    /// reach (`before` CDs, now `after`): live PASIDs it no longer reaches are parked (the
    /// stream was disabled, or its S1CDMax shrank), and those it reaches only now start taking
    /// page requests from here.
    fn follow_reach(&mut self, slot: usize, before: u64, after: u64, budget: &mut Budget) {
        let from = u32::try_from(after).unwrap_or(u32::MAX);
        let unreachable: heapless::Vec<PasidKey, MAX_TRACKED_PASIDS> =
            self.pasids.live_in(slot, from).collect();
        for key in unreachable {
            let Some(offset) = self.cd_layout.offset(slot, key.cd) else {
                continue;
            };
            let current = cd::read_shadow(&self.backends.shadow_cds, offset);
            self.park(key, offset, current, false, budget);
        }
        if after > before {
            let from = u32::try_from(before).unwrap_or(u32::MAX);
            let reachable: heapless::Vec<PasidKey, MAX_TRACKED_PASIDS> = self
                .pasids
                .live_in(slot, from)
                .filter(|key| u64::from(key.cd) < after)
                .collect();
            if !reachable.is_empty() {
                let since = self.pri_position().unwrap_or_default();
                for key in reachable {
                    self.pasids.restart(key, since);
                }
            }
        }
    }
}

/// An STE that blocks: V=0.
pub(crate) const BLOCKED: Ste = Ste::INVALID;
