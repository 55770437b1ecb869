//! The driver of one physical SMMUv3, usable at EL2: no allocation, no unbounded loop.
//!
//! The driver owns the SMMU's registers (through [`RegisterAccess`]), the memory the SMMU reads
//! and writes (through [`DmaMemory`], in regions sized at boot), and the state that goes with
//! them. It knows nothing of guests: which STE a stream gets is decided above it.
//!
//! - [`memory`]: the traits the hypervisor implements (memory, barriers, pauses) and the
//!   regions the driver is given.
//! - this module: [`Driver::new`], the reset sequence that takes the SMMU from any state to
//!   "enabled, unassigned streams abort".
//! - [`command_queue`]: submission in batches, CMD_SYNC, recovery from CMDQ_ERR.
//! - [`stream_table`]: the two-level stream table, its pool of level-2 tables, and the one way
//!   an STE is written: [`Driver::install_ste`] (and [`Driver::install_stes`] for many fresh
//!   streams), the hitless installer over the driver's own writer, for a
//!   [`PhysicalSte`](crate::entry::PhysicalSte) only.
//! - [`events`]: intake of event records and PRI page requests, with overflow.
//! - [`global_errors`]: GERROR reporting and acknowledgement.
//! - `fake` (host tests, or the `testing` feature): a behavioural model of an SMMU to drive
//!   the driver against.
//!
//! # Bounded waits
//!
//! Every wait polls a register at most a budget of times ([`PollBudgets`]), calling
//! [`Platform::pause`] in between, and fails with a timeout error when the budget runs out.
//! Every other loop is bounded by a size fixed at boot (a queue, a table) or by the length of a
//! slice the caller passed.
//!
//! # Policy the driver enforces
//!
//! Once the driver owns the SMMU, GBPA is ABORT (set before translation is first disabled, so
//! there is never a window of bypass), CR0.ATSCHK is set if the SMMU has ATS (ATS-Translated
//! traffic is then checked against STE.EATS instead of passing unchecked), and every stream
//! the hypervisor has not assigned aborts:
//! a span of stream IDs without a level-2 table has a level-1 descriptor with SPAN=0, and a
//! fresh level-2 table holds only STEs with V=0 (the SMMU aborts and reports C_BAD_STE). The
//! hypervisor's policy is to leave every unassigned stream with V=0 or an abort STE.

pub mod command_queue;
pub mod events;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod global_errors;
pub mod memory;
pub mod stream_table;

#[cfg(test)]
mod tests;

pub use command_queue::{CommandErrorKind, CommandFailure};
pub use events::{DrainReport, EventIntake, PriIntake, PriPosition};
pub use global_errors::GlobalError;
pub use memory::{DmaMemory, DriverMemory, MemoryError, Platform, PollBudgets, Region};
pub use stream_table::{BulkInstallReport, InstallPoint};

use crate::command::Cmd;
use crate::hardware::{RegisterAccess, probe};
use crate::ids::StreamId;
use crate::queue::QueueKind;
use crate::registers::{
    Cr0, Cr1, Cr2, Features, Gbpa, IdError, IrqCtrl, StallModel, StreamTableFormat, offset,
};

use command_queue::CommandQueue;
use events::OutputQueue;
use stream_table::StreamTable;

/// What the driver is asked to build, beyond the memory it is given.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DriverConfig {
    /// The stream ID width the stream table covers; clamped to IDR1.SIDSIZE. The level-1
    /// table holds 2^(sid_bits - split) descriptors.
    pub sid_bits: u8,
    /// STRTAB_BASE_CFG.SPLIT: the stream ID bit where the two-level table splits; 6, 8 or 10.
    /// Each level-2 table holds 2^split STEs (8: 256 STEs in 16 KiB, as Linux does).
    pub split: u8,
    /// How long each kind of wait may poll.
    pub budgets: PollBudgets,
}

impl DriverConfig {
    /// 16-bit stream IDs (QEMU `virt`'s SIDSIZE), SPLIT=8, default budgets.
    pub const DEFAULT: Self = Self {
        sid_bits: 16,
        split: 8,
        budgets: PollBudgets::DEFAULT,
    };
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Which acknowledgement a wait was for, in [`Error::AcknowledgeTimeout`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Acknowledgement {
    /// CR0ACK to match a CR0 write.
    Cr0,
    /// GBPA.UPDATE to clear after a GBPA write (or before one, if an earlier update hangs).
    GbpaUpdate,
    /// IRQ_CTRLACK to match an IRQ_CTRL write.
    IrqCtrl,
}

/// Everything the driver can fail with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Error {
    /// The ID registers hold an encoding the architecture does not define.
    Id(IdError),
    /// IDR0.ST_LEVEL says the SMMU has only linear stream tables; this driver builds a
    /// two-level one.
    TwoLevelStreamTableUnsupported,
    /// IDR0.STALL_MODEL = 0b10: the SMMU stalls every faulting transaction until software
    /// resumes or terminates it (and rejects CDs and stage-2 STEs that do not ask for stalls,
    /// IHI 0070 5.5). The driver has no stall-resolution path, so a device would hang on its
    /// first fault; see [`MakeError::StallForced`](crate::entry::make::MakeError::StallForced).
    StallForcedUnsupported,
    /// The configured SPLIT is not 6, 8 or 10, or is above the stream ID width.
    StreamTableGeometry {
        /// The stream ID width after clamping to IDR1.SIDSIZE.
        sid_bits: u8,
        /// The configured SPLIT.
        split: u8,
    },
    /// A region of memory given at initialisation is too small, misaligned or unaddressable.
    Memory(MemoryError),
    /// The SMMU did not acknowledge a control register write within the budget.
    AcknowledgeTimeout(Acknowledgement),
    /// A CMD_SYNC was not consumed within the budget.
    SyncTimeout,
    /// The command queue stayed full for the whole budget.
    CommandQueueFullTimeout,
    /// A command failed (GERROR.CMDQ_ERR). The driver has already recovered: the command was
    /// replaced by a CMD_SYNC (illegal) or left to be retried (abort, ATC sync timeout), the
    /// error acknowledged, and the queue continued. Reported by the next sync.
    CommandError {
        /// CMDQ_CONS.ERR.
        kind: CommandErrorKind,
        /// The queue index of the failed command.
        index: u32,
        /// The failed command's opcode byte.
        opcode: u8,
    },
    /// A queue pointer register holds bits outside its index, wrap and overflow fields.
    CorruptPointer {
        /// Which queue.
        queue: QueueKind,
        /// The register value.
        raw: u32,
    },
    /// A queue pointer register names a position that cannot be: a consumer beyond the
    /// producer, or more entries than the queue holds.
    InconsistentPointer {
        /// Which queue.
        queue: QueueKind,
        /// The register value.
        raw: u32,
    },
    /// Every level-2 stream table of the pool is in use.
    StreamTablePoolExhausted,
    /// The stream ID is not below 2^sid_bits.
    StreamIdOutOfRange(StreamId),
    /// A level-1 descriptor in the driver's own memory does not point into the level-2 pool
    /// with the expected SPAN: the stream table was overwritten by someone else.
    CorruptStreamTable(StreamId),
    /// An STE word index not below 8.
    SteWordOutOfRange(usize),
    /// A store the installer was about to make would have left an STE that fails the physical
    /// guard visible; it was not made. Cannot happen for a [`PhysicalSte`] target (kept as the
    /// installer's second line of defence).
    ///
    /// [`PhysicalSte`]: crate::entry::PhysicalSte
    EntryRefused {
        /// The qword whose store was refused.
        qword: usize,
        /// What the guard found.
        error: crate::entry::install::PhysicalEntryError,
    },
    /// A range of stream IDs whose first is above its last.
    StreamRangeReversed {
        /// The first stream ID given.
        first: StreamId,
        /// The last stream ID given.
        last: StreamId,
    },
    /// The PRI queue is not in use (no IDR0.PRI, or no memory given for it).
    NoPriQueue,
}

impl From<MemoryError> for Error {
    fn from(error: MemoryError) -> Self {
        Self::Memory(error)
    }
}

/// A physical SMMUv3, reset and enabled, with its stream table and queues.
#[derive(Debug)]
pub struct Driver<R, M, P> {
    registers: R,
    platform: P,
    features: Features,
    budgets: PollBudgets,
    stream_table: StreamTable<M>,
    command_queue: CommandQueue<M>,
    event_queue: OutputQueue<M>,
    pri_queue: Option<OutputQueue<M>>,
}

impl<R: RegisterAccess, M: DmaMemory, P: Platform> Driver<R, M, P> {
    /// Probes the SMMU behind `registers`, checks and lays out `memory`, and resets the SMMU to
    /// a known state: GBPA abort, stream table with every stream aborting, queues empty and
    /// enabled, caches invalidated, wired interrupts enabled, SMMUEN set.
    ///
    /// Queue sizes are the largest power of two of entries that fits the region given and the
    /// SMMU's IDR1 limit.
    ///
    /// # Errors
    ///
    /// [`Error::Id`], [`Error::TwoLevelStreamTableUnsupported`],
    /// [`Error::StallForcedUnsupported`], [`Error::StreamTableGeometry`] or [`Error::Memory`]
    /// if the SMMU or the memory cannot be used (nothing is written to it then);
    /// [`Error::AcknowledgeTimeout`], [`Error::SyncTimeout`] or a command error if the SMMU
    /// does not respond as the architecture requires.
    pub fn new(
        registers: R,
        memory: DriverMemory<M>,
        platform: P,
        config: DriverConfig,
    ) -> Result<Self, Error> {
        let features = probe(&registers).map_err(Error::Id)?;
        if features.st_level != StreamTableFormat::TwoLevel {
            return Err(Error::TwoLevelStreamTableUnsupported);
        }
        if features.stall_model == StallModel::StallForced {
            return Err(Error::StallForcedUnsupported);
        }
        let stream_table = StreamTable::new(
            memory.stream_table_l1,
            memory.stream_table_l2_pool,
            config.sid_bits.min(features.sidsize),
            config.split,
        )?;
        let command_queue = CommandQueue::new(memory.command_queue, features.cmdqs)?;
        let event_queue = OutputQueue::new(memory.event_queue, features.evtqs, QueueKind::Event)?;
        let pri_queue = match memory.pri_queue {
            Some(region) if features.pri => Some(OutputQueue::new(
                region,
                features.priqs,
                QueueKind::PageRequest,
            )?),
            _ => None,
        };
        let mut driver = Self {
            registers,
            platform,
            features,
            budgets: config.budgets,
            stream_table,
            command_queue,
            event_queue,
            pri_queue,
        };
        driver.reset()?;
        Ok(driver)
    }

    /// What the SMMU can do, as probed.
    #[must_use]
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// The register access, for diagnostics.
    #[must_use]
    pub fn registers(&self) -> &R {
        &self.registers
    }

    /// The platform hooks.
    #[must_use]
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The wait budgets in force.
    #[must_use]
    pub fn budgets(&self) -> PollBudgets {
        self.budgets
    }

    /// The sequence of [`Driver::new`], split out so it reads top to bottom.
    fn reset(&mut self) -> Result<(), Error> {
        // Abort first: translation is about to be disabled, and with GBPA at its reset value
        // (bypass) that would let every device reach all of memory.
        self.update_gbpa(Gbpa::default().with_abort(true))?;
        self.write_cr0(Cr0::default())?;
        self.write_irq_ctrl(IrqCtrl::default())?;
        // Errors left by firmware or an earlier owner: acknowledge them, or a stale CMDQ_ERR
        // would keep the new command queue stopped.
        let gerror = self.registers.read32(offset::GERROR);
        self.registers.write32(offset::GERRORN, gerror);

        let cacheability = u8::from(self.features.cohacc); // 1: write-back, 0: non-cacheable.
        let shareability = if self.features.cohacc { 3 } else { 2 }; // Inner, or outer for NC.
        let cr1 = Cr1::default()
            .with_queue_ic(cacheability)
            .with_queue_oc(cacheability)
            .with_queue_sh(shareability)
            .with_table_ic(cacheability)
            .with_table_oc(cacheability)
            .with_table_sh(shareability);
        self.registers.write32(offset::CR1, cr1.0);
        // RECINVSID: out-of-range stream IDs are reported. PTM: the CPU's broadcast TLBIs are
        // for its own stage 2; the SMMU's TLBs are maintained by commands only.
        let cr2 = Cr2::default().with_recinvsid(true).with_ptm(true);
        self.registers.write32(offset::CR2, cr2.0);

        self.stream_table.reset();
        self.platform.dma_barrier();
        self.registers
            .write64(offset::STRTAB_BASE, self.stream_table.base_register().0);
        self.registers.write32(
            offset::STRTAB_BASE_CFG,
            self.stream_table.config_register().0,
        );

        self.command_queue.reset();
        self.registers
            .write64(offset::CMDQ_BASE, self.command_queue.base_register().0);
        self.registers.write32(offset::CMDQ_PROD, 0);
        self.registers.write32(offset::CMDQ_CONS, 0);
        self.event_queue.reset();
        self.registers
            .write64(offset::EVTQ_BASE, self.event_queue.base_register().0);
        self.registers.write32(offset::EVTQ_PROD, 0);
        self.registers.write32(offset::EVTQ_CONS, 0);
        if let Some(pri_queue) = &mut self.pri_queue {
            pri_queue.reset();
            self.registers
                .write64(offset::PRIQ_BASE, pri_queue.base_register().0);
            self.registers.write32(offset::PRIQ_PROD, 0);
            self.registers.write32(offset::PRIQ_CONS, 0);
        }

        // ATSCHK (IHI 0070 6.3.9): with it clear, an SMMU with ATS passes every ATS-Translated
        // transaction without looking at the STE, so any ATS-capable device could reach all of
        // memory; without ATS the bit is RES0. It may be cached with the configuration
        // (6.3.9.2), so it is set before the CFGI_ALL below and is never cleared again.
        let mut cr0 = Cr0::default()
            .with_cmdqen(true)
            .with_atschk(self.features.ats);
        self.write_cr0(cr0)?;
        // Nothing cached from before the reset may survive: configuration, and every TLB
        // entry the previous owner could have left.
        const HYP: &[Cmd] = &[Cmd::cfgi_all(), Cmd::TlbiEl2All, Cmd::TlbiNsnhAll];
        const NO_HYP: &[Cmd] = &[Cmd::cfgi_all(), Cmd::TlbiNsnhAll];
        self.submit(if self.features.hyp { HYP } else { NO_HYP })?;
        self.sync()?;

        cr0 = cr0.with_evtqen(true).with_priqen(self.pri_queue.is_some());
        self.write_cr0(cr0)?;

        // Wired interrupts only: a zero MSI address disables each MSI.
        if self.features.msi {
            for register in [
                offset::GERROR_IRQ_CFG0,
                offset::EVTQ_IRQ_CFG0,
                offset::PRIQ_IRQ_CFG0,
            ] {
                self.registers.write64(register, 0);
            }
        }
        let irq = IrqCtrl::default()
            .with_gerror_irqen(true)
            .with_evtq_irqen(true)
            .with_priq_irqen(self.pri_queue.is_some());
        self.write_irq_ctrl(irq)?;

        self.write_cr0(cr0.with_smmuen(true))
    }

    /// Polls `done` up to `budget` times, pausing in between. True if it became true.
    fn poll(&self, budget: u32, mut done: impl FnMut(&R) -> bool) -> bool {
        for _ in 0..budget {
            if done(&self.registers) {
                return true;
            }
            self.platform.pause();
        }
        done(&self.registers)
    }

    /// Writes CR0 and waits for CR0ACK to match.
    fn write_cr0(&mut self, cr0: Cr0) -> Result<(), Error> {
        self.registers.write32(offset::CR0, cr0.0);
        if self.poll(self.budgets.acknowledge, |r| {
            r.read32(offset::CR0ACK) == cr0.0
        }) {
            Ok(())
        } else {
            Err(Error::AcknowledgeTimeout(Acknowledgement::Cr0))
        }
    }

    /// Writes IRQ_CTRL and waits for IRQ_CTRLACK to match.
    fn write_irq_ctrl(&mut self, irq: IrqCtrl) -> Result<(), Error> {
        self.registers.write32(offset::IRQ_CTRL, irq.0);
        if self.poll(self.budgets.acknowledge, |r| {
            r.read32(offset::IRQ_CTRLACK) == irq.0
        }) {
            Ok(())
        } else {
            Err(Error::AcknowledgeTimeout(Acknowledgement::IrqCtrl))
        }
    }

    /// The GBPA handshake: wait for any update in flight, write the new value with UPDATE set,
    /// wait for UPDATE to clear.
    fn update_gbpa(&mut self, gbpa: Gbpa) -> Result<(), Error> {
        let idle = |r: &R| !Gbpa(r.read32(offset::GBPA)).update();
        if !self.poll(self.budgets.acknowledge, idle) {
            return Err(Error::AcknowledgeTimeout(Acknowledgement::GbpaUpdate));
        }
        self.registers
            .write32(offset::GBPA, gbpa.with_update(true).0);
        if self.poll(self.budgets.acknowledge, idle) {
            Ok(())
        } else {
            Err(Error::AcknowledgeTimeout(Acknowledgement::GbpaUpdate))
        }
    }
}
