//! Intake of the queues the SMMU produces into: event records and PRI page requests.
//!
//! This module owns the event and PRI queues' memory and the driver's consumer pointers. The
//! SMMU writes PROD; the driver checks it before using it (a value with bits outside the queue
//! is an error, not an index), reads at most a budget of entries per call, decodes each, and
//! writes CONS once. An overflow (PROD.OVFLG differing from CONS.OVACKFLG: the SMMU lost
//! records because the queue was full) is reported once and acknowledged by copying the flag
//! into CONS with the same write. What the records mean, and whose they are, is decided above.
//!
//! PRI queue entries are also numbered ([`PriPosition`]): the count of entries the SMMU had
//! written into the queue before each one since the driver reset it. A position read at some
//! moment ([`Driver::pri_queue_position`]) splits the entries into those written before it
//! and those written after, which is how software above tells a page request sent before a
//! PASID was torn down or rebound from one sent after.

use crate::event::{Event, EventDecodeError, EventRecord};
use crate::hardware::RegisterAccess;
use crate::page_request::{PageRequest, PriDecodeError, PriEntry};
use crate::queue::{QueueKind, QueuePointer, QueueSize, QueueState};
use crate::registers::{QueueBase, RegisterOffset, offset};

use super::command_queue::{queue_base_register, queue_log2};
use super::memory::{DmaMemory, Platform, Region};
use super::{Driver, Error};

/// Bytes per event record.
pub const EVENT_BYTES: usize = 32;
/// Bytes per PRI queue entry.
pub const PRI_BYTES: usize = 16;

/// One item from the event queue.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum EventIntake {
    /// A record that decodes.
    Event(Event),
    /// A record that does not decode (an IMPLEMENTATION DEFINED ID, a reserved CLASS), kept raw
    /// for the log.
    Undecodable {
        /// The record.
        record: EventRecord,
        /// Why it does not decode.
        error: EventDecodeError,
    },
    /// The SMMU lost events since the last drain because the queue was full. Reported once
    /// per overflow, before the records read with it.
    Overflowed,
}

/// One item from the PRI queue.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PriIntake {
    /// A page request that decodes.
    Request(PageRequest),
    /// An entry with reserved bits set; its StreamID and PRGIndex are still readable raw
    /// ([`PriEntry::raw_sid`]) so the group can be answered.
    Undecodable {
        /// The entry.
        entry: PriEntry,
        /// Why it does not decode.
        error: PriDecodeError,
    },
    /// The SMMU lost page requests since the last drain. Reported once per overflow. Groups
    /// whose last request was lost will never complete: the caller must answer or time them
    /// out itself.
    Overflowed,
}

/// The place of a PRI queue entry in everything the SMMU has written into the queue since the
/// driver reset it: entry `n` is the `n`-th written (from 0). Positions only grow (64 bits do
/// not wrap); entries the SMMU discarded in an overflow have none.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PriPosition(pub u64);

impl PriPosition {
    /// The next position.
    #[must_use]
    pub const fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

/// What one drain did.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DrainReport {
    /// Entries read and handed to the callback (the overflow report not counted).
    pub delivered: u32,
    /// Entries left in the queue because the budget ran out.
    pub remaining: u32,
    /// Whether an overflow was reported (and acknowledged).
    pub overflowed: bool,
}

/// A queue the SMMU produces into.
#[derive(Debug)]
pub(crate) struct OutputQueue<M> {
    memory: M,
    kind: QueueKind,
    size: QueueSize,
    cons: QueuePointer,
    /// Entries consumed since the reset: the position of the entry at `cons`.
    consumed: u64,
}

impl<M: DmaMemory> OutputQueue<M> {
    pub(crate) fn new(memory: M, max_log2: u8, kind: QueueKind) -> Result<Self, Error> {
        let (region, entry) = match kind {
            QueueKind::PageRequest => (Region::PriQueue, PRI_BYTES),
            _ => (Region::EventQueue, EVENT_BYTES),
        };
        let size = queue_log2(&memory, region, entry, max_log2, 1)?;
        Ok(Self {
            memory,
            kind,
            size,
            cons: QueuePointer::zero(size),
            consumed: 0,
        })
    }

    pub(crate) fn reset(&mut self) {
        self.cons = QueuePointer::zero(self.size);
        self.consumed = 0;
    }

    pub(crate) fn base_register(&self) -> QueueBase {
        queue_base_register(self.memory.phys(), self.size)
    }

    fn registers(&self) -> (RegisterOffset, RegisterOffset) {
        match self.kind {
            QueueKind::PageRequest => (offset::PRIQ_PROD, offset::PRIQ_CONS),
            _ => (offset::EVTQ_PROD, offset::EVTQ_CONS),
        }
    }

    /// The queue's state from a fresh read of PROD.
    fn state(&self, registers: &impl RegisterAccess) -> Result<(QueuePointer, QueueState), Error> {
        let (prod_register, _) = self.registers();
        let raw = registers.read32(prod_register);
        let corrupt = Error::CorruptPointer {
            queue: self.kind,
            raw,
        };
        let prod = QueuePointer::from_raw(self.size, raw, self.kind).map_err(|_| corrupt)?;
        let state = QueueState::new(prod, self.cons).map_err(|_| corrupt)?;
        if state.used() > self.size.entries() {
            return Err(Error::InconsistentPointer {
                queue: self.kind,
                raw,
            });
        }
        Ok((prod, state))
    }

    /// The position the next entry the SMMU writes will take.
    fn producer_position(&self, registers: &impl RegisterAccess) -> Result<PriPosition, Error> {
        let (_, state) = self.state(registers)?;
        Ok(PriPosition(
            self.consumed.saturating_add(u64::from(state.used())),
        ))
    }

    /// Reads up to `budget` entries of `N` words, handing each (or an overflow) to `deliver`
    /// with its position (an overflow's is the SMMU's write position when it was found).
    fn drain<const N: usize>(
        &mut self,
        registers: &mut impl RegisterAccess,
        platform: &impl Platform,
        budget: u32,
        mut deliver: impl FnMut(PriPosition, Option<[u64; N]>),
    ) -> Result<DrainReport, Error> {
        let (_, cons_register) = self.registers();
        let (prod, state) = self.state(registers)?;
        let used = state.used();
        let mut report = DrainReport::default();
        let mut cons = self.cons;
        if state.overflow_pending() {
            deliver(
                PriPosition(self.consumed.saturating_add(u64::from(used))),
                None,
            );
            cons = cons.with_overflow(prod.overflow());
            report.overflowed = true;
        }
        // PROD was read before the entries it covers.
        platform.dma_barrier();
        let count = used.min(budget);
        let entry_bytes = N.saturating_mul(8);
        for _ in 0..count {
            let base = usize::try_from(cons.index())
                .unwrap_or(usize::MAX)
                .saturating_mul(entry_bytes);
            let mut words = [0; N];
            for (i, word) in words.iter_mut().enumerate() {
                *word = self
                    .memory
                    .read_u64(base.saturating_add(i.saturating_mul(8)));
            }
            deliver(PriPosition(self.consumed), Some(words));
            self.consumed = self.consumed.saturating_add(1);
            cons = cons.incremented();
        }
        report.delivered = count;
        report.remaining = used - count;
        if cons != self.cons {
            // The entries were read before the CONS write that frees their slots.
            platform.dma_barrier();
            registers.write32(cons_register, cons.raw());
            self.cons = cons;
        }
        Ok(report)
    }
}

impl<R: RegisterAccess, M: DmaMemory, P: Platform> Driver<R, M, P> {
    /// The number of entries in the event queue.
    #[must_use]
    pub fn event_queue_entries(&self) -> u32 {
        self.event_queue.size.entries()
    }

    /// The number of entries in the PRI queue, if it is in use.
    #[must_use]
    pub fn pri_queue_entries(&self) -> Option<u32> {
        self.pri_queue.as_ref().map(|q| q.size.entries())
    }

    /// Reads up to `budget` event records, decoded, into `handle`, reporting an overflow first
    /// if there was one. Call again while [`DrainReport::remaining`] is non-zero.
    ///
    /// # Errors
    ///
    /// [`Error::CorruptPointer`] or [`Error::InconsistentPointer`] if EVTQ_PROD is not a value
    /// the queue can have; nothing is consumed then.
    pub fn drain_events(
        &mut self,
        budget: u32,
        mut handle: impl FnMut(EventIntake),
    ) -> Result<DrainReport, Error> {
        self.event_queue
            .drain::<4>(&mut self.registers, &self.platform, budget, |_, words| {
                handle(match words {
                    None => EventIntake::Overflowed,
                    Some(words) => {
                        let record = EventRecord::from_words(words);
                        match record.decode() {
                            Ok(event) => EventIntake::Event(event),
                            Err(error) => EventIntake::Undecodable { record, error },
                        }
                    }
                });
            })
    }

    /// Reads up to `budget` PRI queue entries, decoded, into `handle`, as
    /// [`Driver::drain_events`] does.
    ///
    /// # Errors
    ///
    /// [`Error::NoPriQueue`] if the PRI queue is not in use; otherwise as
    /// [`Driver::drain_events`].
    pub fn drain_page_requests(
        &mut self,
        budget: u32,
        mut handle: impl FnMut(PriIntake),
    ) -> Result<DrainReport, Error> {
        self.drain_page_requests_at(budget, |_, intake| handle(intake))
    }

    /// As [`Driver::drain_page_requests`], with each entry's [`PriPosition`]; an overflow comes
    /// with the position the SMMU was writing at when it was found (8.1.1: groups with no Last
    /// entry before it never complete).
    ///
    /// # Errors
    ///
    /// As [`Driver::drain_page_requests`].
    pub fn drain_page_requests_at(
        &mut self,
        budget: u32,
        mut handle: impl FnMut(PriPosition, PriIntake),
    ) -> Result<DrainReport, Error> {
        let queue = self.pri_queue.as_mut().ok_or(Error::NoPriQueue)?;
        queue.drain::<2>(
            &mut self.registers,
            &self.platform,
            budget,
            |position, words| {
                handle(
                    position,
                    match words {
                        None => PriIntake::Overflowed,
                        Some(words) => {
                            let entry = PriEntry::from_words(words);
                            match entry.decode() {
                                Ok(request) => PriIntake::Request(request),
                                Err(error) => PriIntake::Undecodable { entry, error },
                            }
                        }
                    },
                );
            },
        )
    }

    /// The position the next PRI queue entry the SMMU writes will take: every entry written
    /// before this call has a smaller one. Reads PRIQ_PROD; consumes nothing.
    ///
    /// # Errors
    ///
    /// [`Error::NoPriQueue`], or PRIQ_PROD is corrupt as in [`Driver::drain_page_requests`].
    pub fn pri_queue_position(&self) -> Result<PriPosition, Error> {
        self.pri_queue
            .as_ref()
            .ok_or(Error::NoPriQueue)?
            .producer_position(&self.registers)
    }
}
