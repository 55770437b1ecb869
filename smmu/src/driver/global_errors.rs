//! Global errors: GERROR, read, reported and acknowledged.
//!
//! This module owns the reading of GERROR/GERRORN and the acknowledgement of each active
//! error (toggling its GERRORN bit). It is what the hypervisor's GERROR interrupt handler
//! calls. A command queue error is recovered from here as in a sync (see
//! [`command_queue`](super::command_queue)); the other errors need nothing from the driver
//! beyond the acknowledgement, and are handed to the caller to log or act on.

use crate::hardware::RegisterAccess;
use crate::registers::{Gerror, offset};

use super::command_queue::CommandFailure;
use super::memory::{DmaMemory, Platform};
use super::{Driver, Error};

/// One active global error.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum GlobalError {
    /// CMDQ_ERR: a command failed; the driver has recovered the queue.
    Command(CommandFailure),
    /// EVTQ_ABT_ERR: an event queue write aborted, or (QEMU) an event was dropped because the
    /// queue was full. Events were lost.
    EventQueueAbort,
    /// PRIQ_ABT_ERR: a PRI queue write aborted. Page requests were lost.
    PriQueueAbort,
    /// MSI_CMDQ_ABT_ERR: a CMD_SYNC MSI write aborted.
    CommandSyncMsiAbort,
    /// MSI_EVTQ_ABT_ERR: an event queue MSI write aborted.
    EventQueueMsiAbort,
    /// MSI_PRIQ_ABT_ERR: a PRI queue MSI write aborted.
    PriQueueMsiAbort,
    /// MSI_GERROR_ABT_ERR: a GERROR MSI write aborted.
    GlobalErrorMsiAbort,
    /// SFM_ERR: the SMMU entered service failure mode. It stops translating until reset;
    /// the caller must treat the SMMU as lost (every stream aborts) and reset it.
    ServiceFailureMode,
}

impl<R: RegisterAccess, M: DmaMemory, P: Platform> Driver<R, M, P> {
    /// The global errors active now (GERROR ^ GERRORN, defined bits only).
    #[must_use]
    pub fn active_global_errors(&self) -> Gerror {
        Gerror::active(
            Gerror(self.registers.read32(offset::GERROR)),
            Gerror(self.registers.read32(offset::GERRORN)),
        )
    }

    /// Reports each active global error to `report` and acknowledges it; a command queue
    /// error is recovered from first. Returns the errors that were active.
    ///
    /// # Errors
    ///
    /// A pointer error met while recovering the command queue (the other errors are still
    /// acknowledged first).
    pub fn handle_global_errors(
        &mut self,
        mut report: impl FnMut(GlobalError),
    ) -> Result<Gerror, Error> {
        let active = self.active_global_errors();
        let others = Gerror(active.0 & !Gerror::default().with_cmdq_err(true).0);
        let flags: [(bool, GlobalError); 7] = [
            (others.evtq_abt_err(), GlobalError::EventQueueAbort),
            (others.priq_abt_err(), GlobalError::PriQueueAbort),
            (others.msi_cmdq_abt_err(), GlobalError::CommandSyncMsiAbort),
            (others.msi_evtq_abt_err(), GlobalError::EventQueueMsiAbort),
            (others.msi_priq_abt_err(), GlobalError::PriQueueMsiAbort),
            (
                others.msi_gerror_abt_err(),
                GlobalError::GlobalErrorMsiAbort,
            ),
            (others.sfm_err(), GlobalError::ServiceFailureMode),
        ];
        for (set, error) in flags {
            if set {
                report(error);
            }
        }
        if !others.is_clear() {
            let gerrorn = self.registers.read32(offset::GERRORN);
            self.registers.write32(offset::GERRORN, gerrorn ^ others.0);
        }
        if active.cmdq_err()
            && let Some(failure) = self.recover_command_error()?
        {
            report(GlobalError::Command(failure));
        }
        Ok(active)
    }
}
