//! (c) The physical SMMU, as the virtual one needs it.
//!
//! The vSMMU never touches the physical SMMU's memory or registers. It hands over values only
//! its own validators and shadow builders can make: a [`ShadowSte`] (which holds a
//! [`PhysicalSte`], an STE the physical guard accepted) to install for one of the VM's
//! physical streams (through the hitless installer), and [`PhysicalCommand`]s to submit
//! in batches; it asks for a CMD_SYNC and receives a [`SyncProof`], the `smmu` crate's evidence
//! that every command submitted before it completed. The shadow CD tables are written by the
//! vSMMU itself, into memory `hyp` gives it ([`DmaMemory`]), with the hitless installer and
//! `CMD_CFGI_CD` + `CMD_SYNC` through [`PhysicalSmmu::submit`] and [`PhysicalSmmu::sync`].
//!
//! PRI: the vSMMU answers page request groups and forwards the guest's answers as
//! [`PhysicalCommand`]s (`CMD_PRI_RESP`, and `CMD_ATC_INV` when a PASID is torn down) through
//! [`PhysicalSmmu::submit`], and asks [`PhysicalSmmu::pri_queue_position`] where the physical
//! PRI queue stands when a PASID is torn down or goes live. It never drains that queue: `hyp`
//! does, at EL2, with only the physical lock held, and hands each entry with its position to
//! the owning vSMMU ([`VirtualSmmu::handle_physical_page_request`](crate::VirtualSmmu::handle_physical_page_request)).
//!
//! The implementation for `smmu`'s [`Driver`] is here, so `hyp` only adds its lock:
//! `hyp` implements [`PhysicalSmmu`] for a handle that locks its one driver and delegates.

use core::fmt;

use smmu::StreamId;
use smmu::command::Cmd;
use smmu::domain::{InvalidationError, Stage2Invalidation, SyncProof};
use smmu::driver::{DmaMemory, Driver, Error as DriverError, Platform, PriPosition};
use smmu::entry::PhysicalSte;
use smmu::entry::install::InstallReport;
use smmu::hardware::RegisterAccess;
use smmu::registers::Features;
use smmu::ste::Ste;

/// An STE the vSMMU built for one of its VM's physical streams. Only the shadow builder
/// ([`crate::shadow`]) makes one, and it holds a [`PhysicalSte`], so it passed
/// [`check_physical_ste`](smmu::entry::install::check_physical_ste); a valid one that lets
/// traffic through translates with the VM's stage 2 and VMID.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ShadowSte(PhysicalSte);

impl ShadowSte {
    /// Wraps `ste`. Crate-private: the shadow builder is the only producer, so a `ShadowSte`
    /// in `hyp`'s hands is one the vSMMU's rules made.
    pub(crate) const fn new(ste: PhysicalSte) -> Self {
        Self(ste)
    }

    /// The entry to install.
    #[must_use]
    pub const fn ste(&self) -> &Ste {
        self.0.ste()
    }

    /// The entry, as the physical guard accepted it.
    #[must_use]
    pub const fn physical(&self) -> &PhysicalSte {
        &self.0
    }
}

/// A command for the physical command queue, made by the vSMMU's command validator (a guest
/// command rewritten: physical stream ID, the VM's VMID) or by the shadow code (CFGI_CD).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PhysicalCommand(Cmd);

impl PhysicalCommand {
    /// Wraps `command`. Crate-private for the same reason as [`ShadowSte::new`].
    pub(crate) const fn new(command: Cmd) -> Self {
        Self(command)
    }

    /// The command.
    #[must_use]
    pub const fn command(&self) -> &Cmd {
        &self.0
    }
}

/// The physical SMMU, shared by every VM's vSMMU.
///
/// Calls come with the calling vSMMU's lock held; an implementation that locks the one
/// physical driver inside each call gives the lock order "vSMMU, then physical SMMU", and
/// physical event intake must therefore drain the physical queue and release it before it
/// hands events to a vSMMU.
pub trait PhysicalSmmu {
    /// Why an operation failed.
    type Error: fmt::Debug;

    /// What the physical SMMU can do (its decoded ID registers).
    fn features(&self) -> Features;

    /// Moves `sid`'s STE to `target` with the hitless installer
    /// ([`install_ste`](smmu::entry::install::install_ste)), each step followed by CFGI_STE
    /// and CMD_SYNC.
    ///
    /// # Errors
    ///
    /// The installer's or the driver's error; the entry then behaves as the old one, the
    /// target, or V=0 (blocked), never as anything else.
    fn install_ste(
        &mut self,
        sid: StreamId,
        target: &ShadowSte,
    ) -> Result<InstallReport, Self::Error>;

    /// Submits `commands` in order without waiting. Every store to shadow CD memory made
    /// before the call must be visible to the SMMU before it can read them (the driver's
    /// barrier before its CMDQ_PROD write does this).
    ///
    /// # Errors
    ///
    /// The queue stayed full, or a pointer was corrupt.
    fn submit(&mut self, commands: &[PhysicalCommand]) -> Result<(), Self::Error>;

    /// Submits a CMD_SYNC and waits (bounded) for it: the proof says every command submitted
    /// before it, by anyone, completed.
    ///
    /// # Errors
    ///
    /// The sync timed out, or a command before it failed.
    fn sync(&mut self) -> Result<SyncProof, Self::Error>;

    /// The position the next entry the physical SMMU writes into its PRI queue will take
    /// ([`Driver::pri_queue_position`]): every page request written before the call has a
    /// smaller one. `None` when there is no PRI queue in use (or its pointer cannot be read);
    /// the vSMMU then advertises no PRI. The default is `None`.
    fn pri_queue_position(&mut self) -> Option<PriPosition> {
        None
    }
}

/// What the [`Driver`]-backed implementation reports.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DriverBackendError {
    /// The driver refused, timed out, or an install step's sync failed.
    Driver(DriverError),
    /// The CMD_SYNC did not complete cleanly.
    Sync(InvalidationError),
}

impl<R: RegisterAccess, M: DmaMemory, P: Platform> PhysicalSmmu for Driver<R, M, P> {
    type Error = DriverBackendError;

    fn features(&self) -> Features {
        *Driver::features(self)
    }

    fn install_ste(
        &mut self,
        sid: StreamId,
        target: &ShadowSte,
    ) -> Result<InstallReport, DriverBackendError> {
        Driver::install_ste(self, sid, target.physical()).map_err(DriverBackendError::Driver)
    }

    fn submit(&mut self, commands: &[PhysicalCommand]) -> Result<(), DriverBackendError> {
        // Encoded a few at a time: no allocation, and the driver batches them behind one PROD
        // write per call.
        const CHUNK: usize = 16;
        for chunk in commands.chunks(CHUNK) {
            let mut buffer = [Cmd::TlbiNsnhAll; CHUNK];
            for (slot, command) in buffer.iter_mut().zip(chunk) {
                *slot = *command.command();
            }
            let encoded = buffer.get(..chunk.len()).unwrap_or(&[]);
            Driver::submit(self, encoded).map_err(DriverBackendError::Driver)?;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<SyncProof, DriverBackendError> {
        self.sync_with_proof().map_err(DriverBackendError::Sync)
    }

    fn pri_queue_position(&mut self) -> Option<PriPosition> {
        Driver::pri_queue_position(self).ok()
    }
}
