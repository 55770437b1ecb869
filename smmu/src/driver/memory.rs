//! What the driver needs from the platform: memory the SMMU can read and write, barriers, and a
//! pause between polls.
//!
//! This module owns the [`DmaMemory`] and [`Platform`] traits and the checks of a region's size
//! and alignment. It contains no `unsafe`: the hypervisor implements [`DmaMemory`] over static,
//! page-aligned, identity-mapped arrays (with the volatile accesses and their safety arguments
//! on its side), and host tests implement it over the fake bus of `smmu::driver::fake`.

use crate::ids::PhysAddr;

/// A region of memory that the SMMU reads (tables, command queue) or writes (event and PRI
/// queues), owned by the driver for as long as the SMMU may use it.
///
/// The driver only ever accesses 8-byte-aligned offsets with `offset + 8 <= size()`; an
/// implementation must still check, and ignore (write) or read as zero an access that is not,
/// rather than reach outside the region.
pub trait DmaMemory {
    /// The physical address the SMMU uses for byte 0 of the region.
    fn phys(&self) -> PhysAddr;

    /// The region's length in bytes.
    fn size(&self) -> usize;

    /// Reads the 64-bit word at byte `offset` as one single-copy-atomic access (the SMMU may be
    /// writing the region concurrently: event and PRI records).
    fn read_u64(&self, offset: usize) -> u64;

    /// Writes the 64-bit word at byte `offset` as one single-copy-atomic store: a live stream
    /// table entry is updated a word at a time while the SMMU may be reading it, so a torn store
    /// would let the SMMU see a mix of two configurations.
    fn write_u64(&mut self, offset: usize, value: u64);
}

/// The CPU-side operations the driver cannot express in safe, portable code.
pub trait Platform {
    /// Orders memory accesses against register accesses in both directions (on AArch64,
    /// `DSB SY`, or `DSB ST` plus `DMB LD` where the platform knows better):
    ///
    /// - writes to [`DmaMemory`] issued before the call are observable by the SMMU before any
    ///   register write issued after it (a queue entry before the PROD update that publishes
    ///   it; a level-2 table before the level-1 descriptor that points at it);
    /// - a register read issued before the call (an event queue PROD) completes before any
    ///   [`DmaMemory`] read issued after it (the records that PROD covers).
    ///
    /// For an SMMU without IDR0.COHACC, the hypervisor must also map the driver's memory
    /// non-cacheable (the driver then programs CR1 for non-cacheable accesses).
    fn dma_barrier(&self);

    /// Called between two polls of a register the driver is waiting on. The time a wait may
    /// take is this pause times the wait's budget in [`PollBudgets`]; an implementation may
    /// spin for a fixed time, wait for an event (`WFE`, paired with CMD_SYNC's CS=SEV), or do
    /// nothing (host tests).
    fn pause(&self);
}

/// How many times each kind of wait polls before giving up. Every loop in the driver that
/// waits on the SMMU is bounded by one of these.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PollBudgets {
    /// Polls of CR0ACK, IRQ_CTRLACK and GBPA.UPDATE after a write to CR0, IRQ_CTRL or GBPA.
    pub acknowledge: u32,
    /// Polls of CMDQ_CONS waiting for a CMD_SYNC to be consumed.
    pub sync: u32,
    /// Polls of CMDQ_CONS waiting for room in a full command queue.
    pub queue_space: u32,
}

impl PollBudgets {
    /// Budgets meant for a pause of about one microsecond: 10 ms for acknowledgements and
    /// for room in the queue, 100 ms for a sync (which may wait for ATC invalidations).
    pub const DEFAULT: Self = Self {
        acknowledge: 10_000,
        sync: 100_000,
        queue_space: 10_000,
    };
}

impl Default for PollBudgets {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The regions of [`DmaMemory`] the driver is given at initialisation.
#[derive(Debug)]
pub struct DriverMemory<M> {
    /// The level-1 stream table: 8 bytes per span of 2^SPLIT stream IDs, aligned to its size
    /// (at least 64 bytes).
    pub stream_table_l1: M,
    /// The pool level-2 stream tables are carved from, one table (2^SPLIT STEs of 64 bytes) per
    /// span of stream IDs in use, aligned to the size of one table. Tables are handed out on
    /// first use of a span and never returned.
    pub stream_table_l2_pool: M,
    /// The command queue: 16 bytes per entry, aligned to the queue's size (at least 32 bytes).
    pub command_queue: M,
    /// The event queue: 32 bytes per entry, aligned to the queue's size.
    pub event_queue: M,
    /// The PRI queue (16 bytes per entry, aligned to its size), used only if the SMMU has PRI.
    pub pri_queue: Option<M>,
}

/// Names a region of [`DriverMemory`] in errors.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Region {
    /// [`DriverMemory::stream_table_l1`].
    StreamTableL1,
    /// [`DriverMemory::stream_table_l2_pool`].
    StreamTableL2Pool,
    /// [`DriverMemory::command_queue`].
    CommandQueue,
    /// [`DriverMemory::event_queue`].
    EventQueue,
    /// [`DriverMemory::pri_queue`].
    PriQueue,
}

/// Why a region of memory cannot be used.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MemoryError {
    /// The region is smaller than the structure it must hold.
    TooSmall {
        /// Which region.
        region: Region,
        /// The bytes needed.
        needed: usize,
        /// The bytes given.
        given: usize,
    },
    /// The region's physical address is not aligned as the SMMU requires.
    Misaligned {
        /// Which region.
        region: Region,
        /// The alignment required, in bytes.
        align: u64,
        /// The region's address.
        phys: PhysAddr,
    },
    /// The region's physical address does not fit the 52 bits of a base register.
    AddressTooLarge {
        /// Which region.
        region: Region,
        /// The region's address.
        phys: PhysAddr,
    },
}

/// The highest physical address bit a base register or descriptor can hold.
const MAX_PHYS_BITS: u32 = 52;

/// Checks that `memory` holds at least `needed` bytes at an address aligned to `align` (a power
/// of two) that a base register can name.
pub(crate) fn check_region(
    memory: &impl DmaMemory,
    region: Region,
    needed: usize,
    align: u64,
) -> Result<(), MemoryError> {
    let phys = memory.phys();
    if memory.size() < needed {
        return Err(MemoryError::TooSmall {
            region,
            needed,
            given: memory.size(),
        });
    }
    if !phys.is_aligned(align) {
        return Err(MemoryError::Misaligned {
            region,
            align,
            phys,
        });
    }
    let end = u64::try_from(needed)
        .ok()
        .and_then(|n| phys.get().checked_add(n));
    match end {
        Some(end) if end <= 1 << MAX_PHYS_BITS => Ok(()),
        _ => Err(MemoryError::AddressTooLarge { region, phys }),
    }
}

/// Writes zero to every word of the `bytes` bytes of `memory` from byte `start`.
pub(crate) fn zero(memory: &mut impl DmaMemory, start: usize, bytes: usize) {
    // Bounded by the region: at most `bytes / 8` iterations, `bytes` checked by the caller.
    for offset in (start..start.saturating_add(bytes)).step_by(8) {
        memory.write_u64(offset, 0);
    }
}
