//! Where guest commands are consumed: the guest's command queue, read from its RAM one
//! command at a time, each validated ([`crate::validate::command`]) and carried out.
//!
//! This module owns the consumer's loop step and the queue's error state. Per step: fetch the
//! command at CONS (a fetch outside RAM stops the queue with CERROR_ABT), validate it (an
//! illegal one stops the queue with CERROR_ILL), then forward it in the current batch, mark
//! streams or CDs for re-shadowing (done before the next command, see
//! [`VirtualSmmu::run_with`]), or complete a CMD_SYNC: submit the batch, issue at most one
//! physical CMD_SYNC (none if nothing was submitted since the last completed one), and signal
//! as CS asks (an MSI write into guest RAM after checking the address, SEV, the `cmdq-sync`
//! interrupt). CONS moves past a command once it has been carried out.
//!
//! A stopped queue is left alone until the guest acknowledges GERROR.CMDQ_ERR; while stopped
//! the guest may rewrite commands and move PROD back, as the architecture allows. Each step
//! costs one budget unit, so a trap consumes a bounded number of commands whatever PROD says.

use smmu::VirtualStreamId;
use smmu::command::{Command, SyncCompletion};
use smmu::driver::DmaMemory;
use smmu::queue::{QueueKind, QueueState};
use smmu::registers::{CmdqCons, CommandError};

use crate::VirtualSmmu;
use crate::budget::{Budget, READ_COST, SYNC_COST};
use crate::counters::bump;
use crate::interfaces::guest_memory::{GuestMemory, read_words};
use crate::interfaces::interrupts::{InterruptSink, VirtualInterrupt};
use crate::interfaces::physical::PhysicalSmmu;
use crate::registers::{CMDQ_ERR, MSI_CMDQ_ABT_ERR, QueueGeometry};
use crate::validate::command::{
    CommandAction, CommandContext, GuestCommand, GuestSync, validate_command,
};

/// Bytes per command.
const COMMAND_BYTES: u64 = 16;

impl<G, P, I, C, const STREAMS: usize> VirtualSmmu<G, P, I, C, STREAMS>
where
    G: GuestMemory,
    P: PhysicalSmmu,
    I: InterruptSink,
    C: DmaMemory,
{
    fn command_geometry(&self) -> QueueGeometry {
        QueueGeometry::from_base(self.registers.cmdq_base, self.features.cmdqs, COMMAND_BYTES)
    }

    fn command_state(&self) -> (QueueGeometry, QueueState) {
        let geometry = self.command_geometry();
        let prod = geometry.pointer(self.registers.cmdq_prod, QueueKind::Command);
        let cons = geometry.pointer(
            CmdqCons(self.registers.cmdq_cons).pointer_bits(),
            QueueKind::Command,
        );
        let state = match QueueState::new(prod, cons) {
            Ok(state) => state,
            Err(_) => unreachable!("both pointers come from the same geometry"),
        };
        (geometry, state)
    }

    /// Whether the command queue holds commands the vSMMU can consume now.
    pub(crate) fn command_queue_has_work(&self) -> bool {
        self.registers.cr0.cmdqen()
            && self.registers.active_errors() & CMDQ_ERR == 0
            && !self.command_state().1.is_empty()
    }

    /// Consumes one command, if one can be. False when the queue is empty, disabled, stopped,
    /// or stopped now.
    pub(crate) fn command_step(&mut self, budget: &mut Budget) -> bool {
        if !self.command_queue_has_work() {
            return false;
        }
        let (geometry, state) = self.command_state();
        let cons = state.cons();
        let was_full = state.is_full();
        budget.charge(READ_COST);
        let fetched = geometry
            .entry(cons.index())
            .ok_or(())
            .and_then(|ipa| read_words::<2>(&self.backends.guest_memory, ipa).map_err(|_| ()));
        let Ok(words) = fetched else {
            self.counters.command_fetch_aborts =
                self.counters.command_fetch_aborts.saturating_add(1);
            self.stop_command_queue(CommandError::Abort);
            return false;
        };
        let command = GuestCommand(Command::from_words(words));
        bump(
            &mut self.counters.commands,
            usize::from(command.0.opcode_raw()),
        );
        let streams = &self.streams;
        let context = CommandContext {
            features: &self.features,
            vmid: self.stage2.parameters().vmid,
            physical_stream: |vsid| streams.physical(vsid),
        };
        let validated = match validate_command(&command, &context) {
            Ok(validated) => validated,
            Err(illegal) => {
                bump(&mut self.counters.illegal_commands, illegal.index());
                self.stop_command_queue(CommandError::Illegal);
                return false;
            }
        };
        match *validated.action() {
            CommandAction::Forward(physical) => self.forward(physical),
            CommandAction::InvalidateStes { first, count_log2 } => {
                self.invalidate_stes(first, count_log2);
            }
            CommandAction::InvalidateCd { vsid, ssid } => {
                if let Some(stream) = self
                    .streams
                    .slot_of_virtual(vsid)
                    .and_then(|slot| self.streams.get_mut(slot))
                {
                    stream.dirty_cds |= 1u64.checked_shl(ssid.0).unwrap_or(0);
                }
            }
            CommandAction::InvalidateAllCds { vsid } => {
                if let Some(stream) = self
                    .streams
                    .slot_of_virtual(vsid)
                    .and_then(|slot| self.streams.get_mut(slot))
                {
                    stream.dirty_cds = u64::MAX;
                }
            }
            CommandAction::Sync(sync) => self.complete_sync(&sync, budget),
            CommandAction::PriResponse {
                vsid,
                ssid,
                prg_index,
                response,
            } => self.guest_pri_response(vsid, ssid, prg_index, response),
            CommandAction::Nothing => {}
        }
        let next = cons.incremented();
        let err = self.registers.cmdq_cons & CmdqCons::ERR_MASK;
        self.registers.cmdq_cons = err | next.raw();
        if was_full && self.features_sev() {
            // The queue left the full state: waiters in WFE may look again.
            self.backends.interrupts.send_event();
        }
        true
    }

    fn features_sev(&self) -> bool {
        // IDR0.SEV is always advertised (see `registers::id`).
        true
    }

    /// Marks the owned streams in `[first, first + 2^count_log2)` for re-shadowing.
    fn invalidate_stes(&mut self, first: VirtualStreamId, count_log2: u8) {
        let first = u64::from(first.0);
        let end = first.saturating_add(1u64.checked_shl(u32::from(count_log2)).unwrap_or(u64::MAX));
        for stream in self.streams.iter_mut() {
            let vsid = u64::from(stream.vsid.0);
            if vsid >= first && vsid < end {
                stream.dirty_ste = true;
                stream.pending = None;
            }
        }
    }

    /// Marks every owned stream for re-shadowing (SMMUEN or GBPA changed).
    pub(crate) fn mark_all_streams_dirty(&mut self) {
        for stream in self.streams.iter_mut() {
            stream.dirty_ste = true;
            stream.pending = None;
        }
    }

    /// A guest CMD_SYNC: everything before it completes on the physical SMMU, then the guest
    /// is told as it asked.
    fn complete_sync(&mut self, sync: &GuestSync, budget: &mut Budget) {
        self.flush_batch();
        if self.unsynced {
            budget.charge(SYNC_COST);
            self.counters.physical_syncs = self.counters.physical_syncs.saturating_add(1);
            // A failed physical sync cannot be made good by the guest: its invalidations may
            // not have run, which affects only its own translations (its VMID, its stage 2).
            // It is counted, and the guest's sync completes.
            match self.backends.physical.sync() {
                Ok(proof) => self.last_sync = Some(proof.sequence()),
                Err(_) => {
                    self.counters.physical_failures =
                        self.counters.physical_failures.saturating_add(1);
                }
            }
            self.unsynced = false;
        }
        self.counters.guest_syncs = self.counters.guest_syncs.saturating_add(1);
        match sync.completion {
            SyncCompletion::None => {}
            SyncCompletion::Sev => self.backends.interrupts.send_event(),
            SyncCompletion::Irq => {
                if sync.msi_address.0 != 0 && !self.msi_write(sync.msi_address, sync.msi_data) {
                    self.raise_global_error(MSI_CMDQ_ABT_ERR);
                }
                self.backends
                    .interrupts
                    .raise(VirtualInterrupt::CommandSync);
            }
        }
    }

    /// Stops the queue at CONS with `error` and activates GERROR.CMDQ_ERR. Commands consumed
    /// before it still take effect.
    fn stop_command_queue(&mut self, error: CommandError) {
        self.flush_batch();
        let cons = self.registers.cmdq_cons;
        self.registers.cmdq_cons = CmdqCons(cons).with_err(error).0;
        self.raise_global_error(CMDQ_ERR);
    }
}
