//! The command queue: submission in batches, CMD_SYNC with a bounded wait, and recovery from a
//! command error.
//!
//! This module owns the command queue's memory and the driver's copy of its pointers. The
//! driver is the only producer, so PROD is known without reading it; CONS is read from the
//! SMMU and checked before use. Nothing here waits without a budget: room in a full queue
//! ([`PollBudgets::queue_space`](super::PollBudgets)) and the consumption of a CMD_SYNC
//! ([`PollBudgets::sync`](super::PollBudgets)).
//!
//! # Recovery
//!
//! When a command fails, the SMMU sets GERROR.CMDQ_ERR, records why in CMDQ_CONS.ERR and stops
//! with CONS at the failed command (QEMU does the same for an illegal command). The driver
//! reads the command at CONS, replaces an illegal one with a CMD_SYNC (as Linux does; retrying
//! it would fail again), leaves an aborted fetch or a timed-out ATC sync in place to be retried,
//! then acknowledges by toggling GERRORN.CMDQ_ERR, and the queue drains. The first failure
//! since the last sync is reported by that sync as [`Error::CommandError`].

use crate::command::{Cmd, Command, SyncCompletion};
use crate::hardware::RegisterAccess;
use crate::ids::PhysAddr;
use crate::queue::{QueueKind, QueuePointer, QueueSize, QueueState};
use crate::registers::{CmdqCons, CommandError, Gerror, QueueBase, offset};

use super::memory::{DmaMemory, MemoryError, Platform, Region, check_region};
use super::{Driver, Error};

/// Bytes per command queue entry.
pub const COMMAND_BYTES: usize = 16;

/// CMDQ_CONS.ERR, including values the architecture does not define.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CommandErrorKind {
    /// CERROR_NONE with CMDQ_ERR active: nothing to fix, the command is retried.
    None,
    /// CERROR_ILL: the command is illegal; it is replaced by a CMD_SYNC.
    Illegal,
    /// CERROR_ABT: fetching the command aborted; it is retried.
    Abort,
    /// CERROR_ATC_INV_SYNC: a CMD_SYNC timed out waiting for ATC invalidations; it is retried.
    AtcInvalidationSync,
    /// An ERR value above 3; treated as illegal.
    Unknown(u8),
}

impl CommandErrorKind {
    fn from_register(cons: CmdqCons) -> Self {
        match cons.err() {
            Ok(CommandError::None) => Self::None,
            Ok(CommandError::Illegal) => Self::Illegal,
            Ok(CommandError::Abort) => Self::Abort,
            Ok(CommandError::AtcInvalidationSync) => Self::AtcInvalidationSync,
            Err(_) => Self::Unknown(crate::bits::get_u8(u64::from(cons.0), 30, 24)),
        }
    }

    /// Whether recovery replaces the failed command (rather than letting the SMMU retry it).
    #[must_use]
    pub const fn replaces_command(self) -> bool {
        matches!(self, Self::Illegal | Self::Unknown(_))
    }
}

/// A command that failed, as recovery found it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CommandFailure {
    /// CMDQ_CONS.ERR.
    pub kind: CommandErrorKind,
    /// The queue index (CONS) of the failed command.
    pub index: u32,
    /// The opcode byte of the failed command.
    pub opcode: u8,
}

impl From<CommandFailure> for Error {
    fn from(f: CommandFailure) -> Self {
        Error::CommandError {
            kind: f.kind,
            index: f.index,
            opcode: f.opcode,
        }
    }
}

/// The command queue's memory and the driver's copy of its pointers.
#[derive(Debug)]
pub(crate) struct CommandQueue<M> {
    memory: M,
    size: QueueSize,
    prod: QueuePointer,
    cons: QueuePointer,
    /// The first failure recovered from since the last sync reported.
    pending_failure: Option<CommandFailure>,
    /// How many command failures were ever recovered from. Monotonic (not reset with the
    /// queue): whoever holds an earlier value can tell that a failure happened since, even if
    /// another caller's sync was the one to report it.
    failures: u64,
}

/// The log2 of the number of `entry_bytes` entries that fit `memory`, capped at `max_log2`.
pub(crate) fn queue_log2(
    memory: &impl DmaMemory,
    region: Region,
    entry_bytes: usize,
    max_log2: u8,
    min_entries: usize,
) -> Result<QueueSize, MemoryError> {
    let fits = memory.size() / entry_bytes;
    if fits < min_entries {
        return Err(MemoryError::TooSmall {
            region,
            needed: min_entries.saturating_mul(entry_bytes),
            given: memory.size(),
        });
    }
    let log2 = u8::try_from(fits.ilog2()).unwrap_or(u8::MAX).min(max_log2);
    let size = QueueSize::new(log2).map_err(|_| MemoryError::TooSmall {
        region,
        needed: 0,
        given: memory.size(),
    })?;
    let bytes = usize::try_from(size.entries())
        .unwrap_or(usize::MAX)
        .saturating_mul(entry_bytes);
    // The SMMU aligns the base down to the queue's size (at least 32 bytes).
    let align = u64::try_from(bytes).unwrap_or(u64::MAX).max(32);
    check_region(memory, region, bytes, align)?;
    Ok(size)
}

/// The QUEUE_BASE register value for a queue at `phys` of `size`, with the allocation hint.
pub(crate) fn queue_base_register(phys: PhysAddr, size: QueueSize) -> QueueBase {
    QueueBase::default()
        .with_addr(phys)
        .with_log2size(size.log2())
        .with_allocate_hint(true)
}

impl<M: DmaMemory> CommandQueue<M> {
    pub(crate) fn new(memory: M, max_log2: u8) -> Result<Self, Error> {
        // Two entries at least, so a command and the sync after it can be in flight together.
        let size = queue_log2(&memory, Region::CommandQueue, COMMAND_BYTES, max_log2, 2)?;
        Ok(Self {
            memory,
            size,
            prod: QueuePointer::zero(size),
            cons: QueuePointer::zero(size),
            pending_failure: None,
            failures: 0,
        })
    }

    pub(crate) fn reset(&mut self) {
        self.prod = QueuePointer::zero(self.size);
        self.cons = QueuePointer::zero(self.size);
        self.pending_failure = None;
    }

    pub(crate) fn base_register(&self) -> QueueBase {
        queue_base_register(self.memory.phys(), self.size)
    }

    fn offset(index: u32) -> usize {
        usize::try_from(index)
            .unwrap_or(usize::MAX)
            .saturating_mul(COMMAND_BYTES)
    }

    fn write_entry(&mut self, index: u32, command: &Command) {
        let offset = Self::offset(index);
        let [w0, w1] = command.words();
        self.memory.write_u64(offset, w0);
        self.memory.write_u64(offset.saturating_add(8), w1);
    }

    fn read_entry(&self, index: u32) -> Command {
        let offset = Self::offset(index);
        Command::from_words([
            self.memory.read_u64(offset),
            self.memory.read_u64(offset.saturating_add(8)),
        ])
    }

    fn state(&self) -> Result<QueueState, Error> {
        QueueState::new(self.prod, self.cons).map_err(|_| Error::InconsistentPointer {
            queue: QueueKind::Command,
            raw: self.cons.raw(),
        })
    }
}

impl<R: RegisterAccess, M: DmaMemory, P: Platform> Driver<R, M, P> {
    /// The number of entries in the command queue.
    #[must_use]
    pub fn command_queue_entries(&self) -> u32 {
        self.command_queue.size.entries()
    }

    /// The driver's PROD: where the next command goes.
    #[must_use]
    pub fn command_queue_prod(&self) -> QueuePointer {
        self.command_queue.prod
    }

    /// Encodes and submits `commands`, in order. As many as fit are written, then PROD is
    /// advanced once for all of them; if the queue fills, the rest wait (bounded) for room.
    /// Does not wait for the commands to complete: see [`Driver::sync`].
    ///
    /// # Errors
    ///
    /// [`Error::CommandQueueFullTimeout`] if the queue stays full for the budget (commands
    /// before that point were submitted), or a pointer error.
    pub fn submit(&mut self, commands: &[Cmd]) -> Result<(), Error> {
        self.submit_with(commands.len(), |i| {
            commands.get(i).map(Cmd::encode).unwrap_or_default()
        })
    }

    /// Submits already-encoded commands, as [`Driver::submit`] does. The SMMU judges them:
    /// an illegal one is recovered from and reported by the next [`Driver::sync`].
    ///
    /// # Errors
    ///
    /// As [`Driver::submit`].
    pub fn submit_raw(&mut self, commands: &[Command]) -> Result<(), Error> {
        self.submit_with(commands.len(), |i| {
            commands.get(i).copied().unwrap_or_default()
        })
    }

    fn submit_with(
        &mut self,
        count: usize,
        mut command: impl FnMut(usize) -> Command,
    ) -> Result<(), Error> {
        let mut next = 0;
        // Each round writes at least one command, so there are at most `count` rounds.
        while next < count {
            let free = self.wait_for_space()?;
            let batch = count
                .saturating_sub(next)
                .min(usize::try_from(free).unwrap_or(usize::MAX));
            for i in next..next.saturating_add(batch) {
                let entry = command(i);
                let index = self.command_queue.prod.index();
                self.command_queue.write_entry(index, &entry);
                self.command_queue.prod = self.command_queue.prod.incremented();
            }
            next = next.saturating_add(batch);
            // The entries must be visible before the PROD write that hands them over.
            self.platform.dma_barrier();
            self.registers
                .write32(offset::CMDQ_PROD, self.command_queue.prod.raw());
        }
        Ok(())
    }

    /// Waits (bounded) for at least one free entry and returns how many there are.
    fn wait_for_space(&mut self) -> Result<u32, Error> {
        for _ in 0..=self.budgets.queue_space {
            self.read_command_cons()?;
            let free = self.command_queue.state()?.free();
            if free > 0 {
                return Ok(free);
            }
            // A stopped queue never makes room; recover, then look again.
            self.recover_command_error()?;
            self.platform.pause();
        }
        Err(Error::CommandQueueFullTimeout)
    }

    /// Submits a CMD_SYNC and waits (bounded) until the SMMU has consumed it, which it does
    /// only once every earlier command has completed. Command errors met on the way are
    /// recovered from so the queue keeps draining.
    ///
    /// The sync uses CS=SEV when the SMMU can send events (so [`Platform::pause`] may wait in
    /// `WFE`), CS=none otherwise; completion is observed by polling CMDQ_CONS either way.
    ///
    /// # Errors
    ///
    /// [`Error::CommandError`] for the first command that failed since the last sync (the
    /// queue has still drained), [`Error::SyncTimeout`] if the budget runs out, or an error
    /// of [`Driver::submit`].
    pub fn sync(&mut self) -> Result<(), Error> {
        let completion = if self.features.sev {
            SyncCompletion::Sev
        } else {
            SyncCompletion::None
        };
        self.submit(&[sync_command(completion)])?;
        // The driver is the only producer and the sync is the last entry: it has been consumed
        // when the queue is empty.
        let mut done = false;
        for _ in 0..=self.budgets.sync {
            self.read_command_cons()?;
            if self.command_queue.state()?.is_empty() {
                done = true;
                break;
            }
            self.recover_command_error()?;
            self.platform.pause();
        }
        if !done {
            return Err(Error::SyncTimeout);
        }
        match self.command_queue.pending_failure.take() {
            Some(failure) => Err(failure.into()),
            None => Ok(()),
        }
    }

    /// Submits `commands` followed by a CMD_SYNC, and waits for the sync.
    ///
    /// # Errors
    ///
    /// As [`Driver::submit`] and [`Driver::sync`].
    pub fn submit_and_sync(&mut self, commands: &[Cmd]) -> Result<(), Error> {
        self.submit(commands)?;
        self.sync()
    }

    /// Reads CMDQ_CONS into the driver's copy, checking it names a position between the
    /// last one seen and PROD.
    fn read_command_cons(&mut self) -> Result<CmdqCons, Error> {
        let raw = self.registers.read32(offset::CMDQ_CONS);
        let cons = CmdqCons(raw);
        let pointer = QueuePointer::from_raw(
            self.command_queue.size,
            cons.pointer_bits(),
            QueueKind::Command,
        )
        .map_err(|_| Error::CorruptPointer {
            queue: QueueKind::Command,
            raw,
        })?;
        let before = self.command_queue.state()?.used();
        let after = QueueState::new(self.command_queue.prod, pointer)
            .map_err(|_| Error::InconsistentPointer {
                queue: QueueKind::Command,
                raw,
            })?
            .used();
        // CONS only moves towards PROD: more entries outstanding than before means it went
        // backwards or past PROD.
        if after > before {
            return Err(Error::InconsistentPointer {
                queue: QueueKind::Command,
                raw,
            });
        }
        self.command_queue.cons = pointer;
        Ok(cons)
    }

    /// If GERROR.CMDQ_ERR is active: finds the failed command at CONS, replaces it with a
    /// CMD_SYNC if it is illegal, acknowledges the error, and returns what failed. The first
    /// failure is also kept for the next sync to report.
    /// How many command failures the driver has recovered from since it was created; a value
    /// that changed between two points means a command submitted before the second may have
    /// been replaced by a CMD_SYNC (an illegal one) and so never executed.
    pub fn command_failures(&self) -> u64 {
        self.command_queue.failures
    }

    pub(crate) fn recover_command_error(&mut self) -> Result<Option<CommandFailure>, Error> {
        let gerrorn = Gerror(self.registers.read32(offset::GERRORN));
        let active = Gerror::active(Gerror(self.registers.read32(offset::GERROR)), gerrorn);
        if !active.cmdq_err() {
            return Ok(None);
        }
        let cons = self.read_command_cons()?;
        let index = self.command_queue.cons.index();
        let failed = self.command_queue.read_entry(index);
        let failure = CommandFailure {
            kind: CommandErrorKind::from_register(cons),
            index,
            opcode: failed.opcode_raw(),
        };
        if self.command_queue.state()?.is_empty() {
            // CONS does not point at a command we submitted: acknowledging is all we can do.
            self.acknowledge_cmdq_err(gerrorn);
            return Err(Error::InconsistentPointer {
                queue: QueueKind::Command,
                raw: cons.0,
            });
        }
        if failure.kind.replaces_command() {
            // The SMMU is stopped at this entry, so rewriting it cannot race with a fetch.
            let replacement = sync_command(SyncCompletion::None).encode();
            self.command_queue.write_entry(index, &replacement);
            self.platform.dma_barrier();
        }
        self.acknowledge_cmdq_err(gerrorn);
        self.command_queue.failures = self.command_queue.failures.wrapping_add(1);
        if self.command_queue.pending_failure.is_none() {
            self.command_queue.pending_failure = Some(failure);
        }
        Ok(Some(failure))
    }

    fn acknowledge_cmdq_err(&mut self, gerrorn: Gerror) {
        let toggled = gerrorn.with_cmdq_err(!gerrorn.cmdq_err());
        self.registers.write32(offset::GERRORN, toggled.0);
    }
}

/// A CMD_SYNC without MSI.
const fn sync_command(completion: SyncCompletion) -> Cmd {
    Cmd::Sync {
        completion,
        msh: 0,
        msi_attr: 0,
        msi_data: 0,
        msi_addr: PhysAddr(0),
    }
}
