//! Simulated physical memory: what the CPU (the driver), the SMMU (table walks, queues) and the
//! simulated PCIe functions (DMA) all share.
//!
//! This module owns [`PhysicalMemory`] (sparse 4 KiB frames inside declared RAM ranges, with
//! injectable external aborts), the regions of it handed to the driver ([`ModelRegion`], which
//! implements [`DmaMemory`]), the driver's [`Platform`] ([`ModelPlatform`]), and an
//! `aarch64-paging` table allocator over it ([`ModelTables`]) so that tables the hypervisor's own
//! code builds can be walked by the model.
//!
//! An access outside RAM, or inside a range marked aborting, is an external abort
//! ([`BusError`]): the SMMU turns it into F_STE_FETCH, F_CD_FETCH, F_WALK_EABT, CERROR_ABT or a
//! queue abort, exactly where the architecture says.
//!
//! # Why there is `unsafe` here
//!
//! `aarch64-paging` writes tables through raw pointers it gets from its allocator, so a frame
//! must have a stable address that can be written from outside this module. Frames are boxed
//! `UnsafeCell`s that are never freed while any clone of the memory lives, and every access in
//! this module goes through a raw pointer for one word at a time, never through a reference
//! that outlives the statement. The model is single-threaded (`Rc`), so no two accesses overlap.

use std::cell::{RefCell, UnsafeCell};
use std::collections::BTreeMap;
use std::fmt;
use std::ptr::NonNull;
use std::rc::Rc;

use aarch64_paging::descriptor::{PhysicalAddress, Stage2Attributes};
use aarch64_paging::paging::{PageTable, Translation};
use smmu::PhysAddr;
use smmu::driver::{DmaMemory, Platform};

/// Bytes per frame of simulated memory (and per table page).
pub const PAGE_BYTES: u64 = 4096;
const PAGE_WORDS: usize = 512;

/// An external abort: the access at `address` was refused by the (simulated) interconnect.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BusError {
    /// The first address of the access that aborted.
    pub address: u64,
}

/// One 4 KiB frame. Accessed only through raw pointers (see the module docs).
struct Frame(UnsafeCell<[u64; PAGE_WORDS]>);

impl Frame {
    fn new() -> Box<Self> {
        Box::new(Self(UnsafeCell::new([0; PAGE_WORDS])))
    }

    /// A pointer to word `index` (below 512) of the frame.
    fn word(&self, index: usize) -> *mut u64 {
        debug_assert!(index < PAGE_WORDS);
        self.0.get().cast::<u64>().wrapping_add(index)
    }
}

#[derive(Default)]
struct Inner {
    /// RAM ranges, `(base, end)` with `end` exclusive.
    ram: Vec<(u64, u64)>,
    /// Frames that have been touched, by page number. Untouched RAM reads as zero.
    frames: BTreeMap<u64, Box<Frame>>,
    /// Ranges whose accesses abort even though they are RAM.
    aborting: Vec<(u64, u64)>,
}

impl Inner {
    fn check(&self, address: u64, bytes: u64) -> Result<(), BusError> {
        let end = address.checked_add(bytes).ok_or(BusError { address })?;
        let in_ram = self.ram.iter().any(|&(b, e)| address >= b && end <= e);
        let aborts = self.aborting.iter().any(|&(b, e)| address < e && end > b);
        if in_ram && !aborts {
            Ok(())
        } else {
            Err(BusError { address })
        }
    }

    fn frame(&mut self, page: u64) -> &Frame {
        self.frames.entry(page).or_insert_with(Frame::new)
    }

    fn load(&self, address: u64) -> u64 {
        let index = usize::try_from((address % PAGE_BYTES) / 8).unwrap_or(0);
        match self.frames.get(&(address / PAGE_BYTES)) {
            // SAFETY: the frame is alive (owned by `frames`, never removed), the index is
            // below 512, and no reference into the frame exists (module invariant).
            Some(frame) => unsafe { frame.word(index).read() },
            None => 0,
        }
    }

    fn store(&mut self, address: u64, value: u64) {
        let index = usize::try_from((address % PAGE_BYTES) / 8).unwrap_or(0);
        let frame = self.frame(address / PAGE_BYTES);
        // SAFETY: as in `load`.
        unsafe { frame.word(index).write(value) }
    }
}

/// Simulated physical memory. Clones share the memory.
#[derive(Clone, Default)]
pub struct PhysicalMemory {
    inner: Rc<RefCell<Inner>>,
}

impl fmt::Debug for PhysicalMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner.borrow();
        f.debug_struct("PhysicalMemory")
            .field("ram", &inner.ram)
            .field("frames", &inner.frames.len())
            .field("aborting", &inner.aborting)
            .finish()
    }
}

impl PhysicalMemory {
    /// Memory with no RAM: every access aborts until [`PhysicalMemory::add_ram`].
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Memory with one RAM range of `bytes` bytes at `base`.
    #[must_use]
    pub fn with_ram(base: u64, bytes: u64) -> Self {
        let memory = Self::new();
        memory.add_ram(base, bytes);
        memory
    }

    /// Declares `bytes` bytes at `base` to be RAM (zeroed).
    pub fn add_ram(&self, base: u64, bytes: u64) {
        self.inner
            .borrow_mut()
            .ram
            .push((base, base.saturating_add(bytes)));
    }

    /// Makes every access overlapping `bytes` bytes at `base` abort, as a failing interconnect
    /// or a poisoned page would.
    pub fn inject_abort(&self, base: u64, bytes: u64) {
        self.inner
            .borrow_mut()
            .aborting
            .push((base, base.saturating_add(bytes)));
    }

    /// Removes every injected abort.
    pub fn clear_aborts(&self) {
        self.inner.borrow_mut().aborting.clear();
    }

    /// Whether `bytes` bytes at `address` can be accessed without an abort.
    #[must_use]
    pub fn accessible(&self, address: u64, bytes: u64) -> bool {
        self.inner.borrow().check(address, bytes).is_ok()
    }

    /// Reads the aligned 64-bit word at `address`, as one single-copy-atomic access.
    ///
    /// # Errors
    ///
    /// [`BusError`] outside RAM, in an aborting range, or for an unaligned address.
    pub fn read_u64(&self, address: u64) -> Result<u64, BusError> {
        let inner = self.inner.borrow();
        if !address.is_multiple_of(8) {
            return Err(BusError { address });
        }
        inner.check(address, 8)?;
        Ok(inner.load(address))
    }

    /// Writes the aligned 64-bit word at `address`, as one single-copy-atomic access.
    ///
    /// # Errors
    ///
    /// As [`PhysicalMemory::read_u64`]; nothing is written then.
    pub fn write_u64(&self, address: u64, value: u64) -> Result<(), BusError> {
        let mut inner = self.inner.borrow_mut();
        if !address.is_multiple_of(8) {
            return Err(BusError { address });
        }
        inner.check(address, 8)?;
        inner.store(address, value);
        Ok(())
    }

    /// Writes the aligned 32-bit word at `address` (an MSI).
    ///
    /// # Errors
    ///
    /// As [`PhysicalMemory::read_u64`], for 4-byte alignment.
    pub fn write_u32(&self, address: u64, value: u32) -> Result<(), BusError> {
        if !address.is_multiple_of(4) {
            return Err(BusError { address });
        }
        self.write_bytes(address, &value.to_le_bytes())
    }

    /// Reads `buffer.len()` bytes from `address`.
    ///
    /// # Errors
    ///
    /// [`BusError`] if any byte is outside RAM or aborting; `buffer` is then unchanged.
    pub fn read_bytes(&self, address: u64, buffer: &mut [u8]) -> Result<(), BusError> {
        let inner = self.inner.borrow();
        inner.check(address, buffer.len() as u64)?;
        for (offset, byte) in (0u64..).zip(buffer.iter_mut()) {
            let at = address + offset;
            let word = inner.load(at & !7);
            *byte = word
                .to_le_bytes()
                .get(usize::try_from(at % 8).unwrap_or(0))
                .copied()
                .unwrap_or(0);
        }
        Ok(())
    }

    /// Writes `data` at `address`.
    ///
    /// # Errors
    ///
    /// [`BusError`] if any byte is outside RAM or aborting; nothing is written then.
    pub fn write_bytes(&self, address: u64, data: &[u8]) -> Result<(), BusError> {
        let mut inner = self.inner.borrow_mut();
        inner.check(address, data.len() as u64)?;
        for (offset, &byte) in (0u64..).zip(data) {
            let at = address + offset;
            let mut bytes = inner.load(at & !7).to_le_bytes();
            if let Some(slot) = bytes.get_mut(usize::try_from(at % 8).unwrap_or(0)) {
                *slot = byte;
            }
            inner.store(at & !7, u64::from_le_bytes(bytes));
        }
        Ok(())
    }

    /// The region of `bytes` bytes at `phys`, as the driver's [`DmaMemory`].
    #[must_use]
    pub fn region(&self, phys: u64, bytes: usize) -> ModelRegion {
        ModelRegion {
            memory: self.clone(),
            phys,
            size: bytes,
        }
    }

    /// A stable pointer to the frame holding `address` (created if it was never touched), for
    /// [`ModelTables`].
    fn frame_pointer(&self, address: u64) -> NonNull<u64> {
        let mut inner = self.inner.borrow_mut();
        let frame = inner.frame(address / PAGE_BYTES);
        NonNull::new(frame.word(0)).unwrap_or(NonNull::dangling())
    }
}

/// A region of [`PhysicalMemory`], as the driver's [`DmaMemory`]. Accesses outside the region,
/// or that abort, read as zero and are dropped (the trait has no error path; the driver only
/// ever uses in-bounds, aligned offsets).
#[derive(Clone, Debug)]
pub struct ModelRegion {
    memory: PhysicalMemory,
    phys: u64,
    size: usize,
}

impl ModelRegion {
    fn address(&self, offset: usize) -> Option<u64> {
        if offset.checked_add(8)? > self.size {
            return None;
        }
        self.phys.checked_add(u64::try_from(offset).ok()?)
    }
}

impl DmaMemory for ModelRegion {
    fn phys(&self) -> PhysAddr {
        PhysAddr(self.phys)
    }

    fn size(&self) -> usize {
        self.size
    }

    fn read_u64(&self, offset: usize) -> u64 {
        self.address(offset)
            .and_then(|a| self.memory.read_u64(a).ok())
            .unwrap_or(0)
    }

    fn write_u64(&mut self, offset: usize, value: u64) {
        if let Some(a) = self.address(offset) {
            let _ = self.memory.write_u64(a, value);
        }
    }
}

/// The driver's platform on the model: barriers and pauses are counted. Nothing needs to
/// happen in them, because the model acts synchronously on every register write.
#[derive(Clone, Debug, Default)]
pub struct ModelPlatform {
    counts: Rc<RefCell<(u64, u64)>>,
}

impl ModelPlatform {
    /// How many barriers the driver issued.
    #[must_use]
    pub fn barriers(&self) -> u64 {
        self.counts.borrow().0
    }

    /// How many pauses (polls that found the condition false) the driver made.
    #[must_use]
    pub fn pauses(&self) -> u64 {
        self.counts.borrow().1
    }
}

impl Platform for ModelPlatform {
    fn dma_barrier(&self) {
        self.counts.borrow_mut().0 += 1;
    }

    fn pause(&self) {
        self.counts.borrow_mut().1 += 1;
    }
}

/// A table allocator for `aarch64-paging` over a range of [`PhysicalMemory`] pages: the tables
/// a [`smmu::domain::Stage2Domain`] builds land where the model's walker reads them.
#[derive(Debug)]
pub struct ModelTables {
    memory: PhysicalMemory,
    next: u64,
    end: u64,
}

impl ModelTables {
    /// An allocator handing out the pages of `bytes` bytes at `base` (page aligned, RAM).
    #[must_use]
    pub fn new(memory: &PhysicalMemory, base: u64, bytes: u64) -> Self {
        Self {
            memory: memory.clone(),
            next: base,
            end: base.saturating_add(bytes),
        }
    }

    /// How many pages are still free.
    #[must_use]
    pub fn free_pages(&self) -> u64 {
        self.end.saturating_sub(self.next) / PAGE_BYTES
    }
}

impl Translation<Stage2Attributes> for ModelTables {
    #[allow(clippy::panic)] // The trait cannot fail; a test that runs out of tables is broken.
    fn allocate_table(&mut self) -> (NonNull<PageTable<Stage2Attributes>>, PhysicalAddress) {
        if self.next >= self.end {
            panic!("ModelTables: the table pool is exhausted");
        }
        let pa = self.next;
        self.next += PAGE_BYTES;
        for word in 0..PAGE_WORDS as u64 {
            let _ = self.memory.write_u64(pa + word * 8, 0);
        }
        let pointer = self.memory.frame_pointer(pa).cast();
        (pointer, PhysicalAddress(usize::try_from(pa).unwrap_or(0)))
    }

    unsafe fn deallocate_table(&mut self, _page_table: NonNull<PageTable<Stage2Attributes>>) {
        // Pages are never reused: a table the SMMU may still cache must not become another.
    }

    fn physical_to_virtual(&self, pa: PhysicalAddress) -> NonNull<PageTable<Stage2Attributes>> {
        self.memory.frame_pointer(pa.0 as u64).cast()
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::*;

    #[test]
    fn ram_reads_zero_until_written_and_outside_ram_aborts() {
        let memory = PhysicalMemory::with_ram(0x4000_0000, 0x10_0000);
        assert_eq!(memory.read_u64(0x4000_1000), Ok(0));
        assert_eq!(memory.write_u64(0x4000_1000, 7), Ok(()));
        assert_eq!(memory.read_u64(0x4000_1000), Ok(7));
        assert_eq!(
            memory.read_u64(0x3fff_fff8),
            Err(BusError {
                address: 0x3fff_fff8
            })
        );
        assert!(memory.read_u64(0x4010_0000).is_err());
        assert!(memory.read_u64(0x4000_0004).is_err(), "unaligned");
    }

    #[test]
    fn bytes_and_words_are_little_endian_views_of_the_same_memory() {
        let memory = PhysicalMemory::with_ram(0, 0x2000);
        memory.write_bytes(0xffd, &[1, 2, 3, 4, 5]).unwrap();
        assert_eq!(memory.read_u64(0xff8).unwrap() >> 40, 0x03_0201);
        assert_eq!(memory.read_u64(0x1000).unwrap(), 0x0504);
        let mut back = [0; 5];
        memory.read_bytes(0xffd, &mut back).unwrap();
        assert_eq!(back, [1, 2, 3, 4, 5]);
    }

    #[test]
    fn an_injected_abort_refuses_the_whole_access() {
        let memory = PhysicalMemory::with_ram(0, 0x4000);
        memory.inject_abort(0x2000, 0x1000);
        assert!(memory.write_bytes(0x1ffc, &[0; 8]).is_err());
        assert_eq!(memory.read_u64(0x1ff8), Ok(0), "nothing was written");
        memory.clear_aborts();
        assert!(memory.read_u64(0x2000).is_ok());
    }

    #[test]
    fn tables_allocated_for_aarch64_paging_are_model_memory() {
        let memory = PhysicalMemory::with_ram(0x8000_0000, 0x4000);
        memory.write_u64(0x8000_1008, 0xdead).unwrap();
        let mut tables = ModelTables::new(&memory, 0x8000_1000, 0x2000);
        let (pointer, pa) = tables.allocate_table();
        assert_eq!(pa.0, 0x8000_1000);
        assert_eq!(memory.read_u64(0x8000_1008), Ok(0), "allocation zeroes");
        // SAFETY: the pointer names the frame just allocated; nothing else accesses it now.
        unsafe { pointer.cast::<u64>().as_ptr().add(3).write(0x1234) };
        assert_eq!(memory.read_u64(0x8000_1018), Ok(0x1234));
        assert_eq!(tables.free_pages(), 1);
    }
}
