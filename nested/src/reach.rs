//! The pinning rule of `smmu::domain` on the device side: what may still reach the VM's stage 2
//! outside the physical SMMU's TLBs, and the proof that it no longer does.
//!
//! `smmu::domain` releases a page only after a completed sync later than its `TLBI_S2_IPA`
//! (with `TLBI_NH_ALL` for a nesting parent). That reaches every TLB of the SMMU, including
//! the combined entries of live and parked PASIDs, but not the ATCs of PCIe functions: with
//! ATS, a function holds translations whose output is a physical address, and may write through
//! them (ATS-Translated) after the stage-2 entry is gone. So for a VM whose vSMMU forwards ATS,
//! a stage-2 unmap is complete only once, after the TLB invalidation has completed, every ATC
//! of the VM's streams has been invalidated (every PASID: no PASID on the command) and synced.
//! A parked PASID's ATC entries were invalidated when it was parked, unless that failed; this
//! invalidation covers them either way.
//!
//! `hyp` unmaps a VM's stage-2 pages in this order (under the VM's lock):
//!
//! ```text
//! let mut pending = domain.unmap(ipa, size)?;
//! pending.invalidate(&mut driver)?;                         // TLBI_S2_IPA (+ TLBI_NH_ALL)
//! let proof = driver.sync_with_proof()?;
//! let caches = vsmmu.invalidate_device_caches(&pending)?;  // CMD_SYNC, ATC_INV..., CMD_SYNC
//! vsmmu.complete_stage2_unmap(pending, &caches, |p| domain.complete(&mut pins, p, &proof))
//! ```
//!
//! [`VirtualSmmu::complete_stage2_unmap`] runs the completion only with a
//! [`DeviceCachesInvalidated`] that covers the pending; the only way to one is
//! [`VirtualSmmu::invalidate_device_caches`].

use smmu::command::Cmd;
use smmu::domain::{PendingUnmap, Sequence};
use smmu::driver::DmaMemory;
use smmu::{Iova, StreamId};

use crate::VirtualSmmu;
use crate::interfaces::guest_memory::GuestMemory;
use crate::interfaces::interrupts::InterruptSink;
use crate::interfaces::physical::{PhysicalCommand, PhysicalSmmu};

/// Proof that the ATCs of a VM's streams were invalidated, and synced, after the TLB
/// invalidation of a stage-2 unmap had completed. Made only by
/// [`VirtualSmmu::invalidate_device_caches`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DeviceCachesInvalidated {
    /// The sync that preceded the ATC invalidations: every command before it had completed
    /// when they were submitted.
    after: Sequence,
}

impl DeviceCachesInvalidated {
    /// Whether the invalidation came after `pending`'s TLB invalidation had completed: its
    /// invalidation is recorded, and the sync that preceded the ATC invalidations was
    /// submitted after it.
    #[must_use]
    pub fn covers(&self, pending: &PendingUnmap) -> bool {
        pending
            .invalidation()
            .is_some_and(|invalidated| self.after > invalidated.sequence())
    }
}

/// Why the device caches could not be invalidated.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DeviceCacheError {
    /// The pending's TLB invalidation is not recorded yet (`PendingUnmap::invalidate` first).
    NotInvalidated,
    /// A physical submission or sync failed; nothing is proven, try again.
    Physical,
}

impl<G, P, I, C, const STREAMS: usize> VirtualSmmu<G, P, I, C, STREAMS>
where
    G: GuestMemory,
    P: PhysicalSmmu,
    I: InterruptSink,
    C: DmaMemory,
{
    /// Whether a function of this VM may hold stage-2 translations in its ATC: ATS is
    /// forwarded. Stage-2 unmaps of the VM then go through
    /// [`VirtualSmmu::complete_stage2_unmap`].
    #[must_use]
    pub fn device_caches_may_hold_stage2(&self) -> bool {
        self.features.ats
    }

    /// After `pending`'s TLB invalidation: a CMD_SYNC (so that invalidation has completed),
    /// `CMD_ATC_INV` of the whole address space, every PASID, for each of the VM's streams,
    /// and a CMD_SYNC. Costs two physical syncs.
    ///
    /// # Errors
    ///
    /// [`DeviceCacheError`]; nothing is proven then.
    pub fn invalidate_device_caches(
        &mut self,
        pending: &PendingUnmap,
    ) -> Result<DeviceCachesInvalidated, DeviceCacheError> {
        if pending.invalidation().is_none() {
            return Err(DeviceCacheError::NotInvalidated);
        }
        self.flush_batch();
        let failed = |vsmmu: &mut Self| {
            vsmmu.counters.physical_failures = vsmmu.counters.physical_failures.saturating_add(1);
            DeviceCacheError::Physical
        };
        let before = match self.backends.physical.sync() {
            Ok(proof) => proof,
            Err(_) => return Err(failed(self)),
        };
        self.last_sync = Some(before.sequence());
        let caches = DeviceCachesInvalidated {
            after: before.sequence(),
        };
        if !self.backends.physical.features().ats {
            return Ok(caches);
        }
        let mut commands: heapless::Vec<PhysicalCommand, STREAMS> = heapless::Vec::new();
        for stream in self.streams.iter() {
            let _ = commands.push(atc_invalidate_all(stream.psid));
        }
        if self.backends.physical.submit(&commands).is_err() {
            return Err(failed(self));
        }
        match self.backends.physical.sync() {
            Ok(proof) => {
                self.last_sync = Some(proof.sequence());
                self.counters.install_syncs = self.counters.install_syncs.saturating_add(2);
                Ok(caches)
            }
            Err(_) => Err(failed(self)),
        }
    }

    /// Completes a stage-2 unmap of this VM with `complete` (which calls
    /// `Stage2Domain::complete`), only if the VM's functions cannot hold its translations or
    /// `caches` covers it; otherwise hands `pending` back, still pinned.
    ///
    /// # Errors
    ///
    /// `pending`, unchanged, if the device caches were not invalidated after it.
    pub fn complete_stage2_unmap<R>(
        &self,
        pending: PendingUnmap,
        caches: Option<&DeviceCachesInvalidated>,
        complete: impl FnOnce(PendingUnmap) -> R,
    ) -> Result<R, PendingUnmap> {
        if self.device_caches_may_hold_stage2() && !caches.is_some_and(|c| c.covers(&pending)) {
            return Err(pending);
        }
        Ok(complete(pending))
    }
}

/// `CMD_ATC_INV` of everything a function caches: no PASID (so every PASID's entries too), the
/// whole address space.
fn atc_invalidate_all(psid: StreamId) -> PhysicalCommand {
    PhysicalCommand::new(Cmd::AtcInv {
        sid: psid,
        ssid: None,
        global: false,
        size: 52,
        addr: Iova(0),
    })
}
