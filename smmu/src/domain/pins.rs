//! DMA pinning: which physical pages a stage-2 domain maps, counted per 4 KiB page, in storage
//! the caller provides.
//!
//! This module owns [`PinTable`]. A page is *pinned* while at least one domain maps it or has
//! unmapped it without a completed invalidation (see the lifecycle in [`super`]). The owner of
//! the memory (the hypervisor) asks [`PinTable::release`] or [`PinTable::reassign`] before it
//! gives a page to anyone else, and is told [`PinError::Busy`] while the page is pinned: the
//! lesson of the 2015 memory-registration thread, where unregistering mapped memory had to fail
//! and the caller had to learn of it.
//!
//! Pins are taken only by [`Stage2Domain::map`](super::Stage2Domain::map) and dropped only by
//! [`Stage2Domain::complete`](super::Stage2Domain::complete), which demands a
//! [`SyncProof`](super::SyncProof); nothing outside this crate's `domain` module can change a
//! count. Every operation loops at most once or twice over the pages it names, and refuses more
//! than the table's per-call budget.

use crate::ids::{PhysAddr, PhysRange};

/// Bytes per page tracked.
pub const PAGE_SIZE: u64 = 4096;

/// The count a page cannot go beyond: one below the marker of a released page.
pub const MAX_PINS: u16 = u16::MAX - 1;

/// Stored in place of a count: the owner has released the page from DMA use, so no domain may
/// map it until it is reassigned.
const RELEASED: u16 = u16::MAX;

/// Why a pin-table operation was refused. Every refusal leaves the table unchanged.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PinError {
    /// The table's base or the range's base or size is not a multiple of 4 KiB.
    Misaligned,
    /// The range is empty.
    EmptyRange,
    /// The end of the range (or of the table) does not fit in 64 bits.
    AddressOverflow,
    /// The range names more pages than one call may touch.
    TooLarge {
        /// Pages named.
        pages: u64,
        /// The table's per-call budget.
        budget: u64,
    },
    /// A page of the range lies outside the table: it cannot be pinned, so it may not be
    /// DMA-mapped through this table.
    OutsideTable {
        /// The first such page.
        page: PhysAddr,
    },
    /// A page of the range is pinned: a domain maps it, or has unmapped it and the SMMU has not
    /// yet been proven to have let go.
    Busy {
        /// The first pinned page.
        page: PhysAddr,
    },
    /// A page of the range has been released by its owner and may not be mapped for DMA.
    Released {
        /// The first released page.
        page: PhysAddr,
    },
    /// Pinning would take a page's count beyond [`MAX_PINS`].
    CountOverflow {
        /// The first page at the limit.
        page: PhysAddr,
    },
}

/// What a page of the table is doing.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PageState {
    /// Mappable for DMA; pinned by this many mappings (live or awaiting invalidation).
    Pinned(u16),
    /// Released by its owner: not mappable.
    Released,
}

/// Per-page pin counts for the physical range `[base, base + 4 KiB * storage.len())`.
#[derive(Debug)]
pub struct PinTable<'storage> {
    base: PhysAddr,
    counts: &'storage mut [u16],
    max_pages_per_call: u64,
}

impl<'storage> PinTable<'storage> {
    /// A table over `storage.len()` pages from `base`, every page mappable and unpinned. The
    /// storage is cleared here, once (a loop over the whole table: call it at boot).
    ///
    /// # Errors
    ///
    /// [`PinError::Misaligned`] if `base` is not 4 KiB-aligned, [`PinError::AddressOverflow`] if
    /// the table's end does not fit in 64 bits, [`PinError::TooLarge`] for a zero budget.
    pub fn new(
        base: PhysAddr,
        storage: &'storage mut [u16],
        max_pages_per_call: u64,
    ) -> Result<Self, PinError> {
        if !base.is_aligned(PAGE_SIZE) {
            return Err(PinError::Misaligned);
        }
        if max_pages_per_call == 0 {
            return Err(PinError::TooLarge {
                pages: 0,
                budget: 0,
            });
        }
        let pages = u64::try_from(storage.len()).map_err(|_| PinError::AddressOverflow)?;
        pages
            .checked_mul(PAGE_SIZE)
            .and_then(|bytes| base.0.checked_add(bytes))
            .ok_or(PinError::AddressOverflow)?;
        storage.fill(0);
        Ok(Self {
            base,
            counts: storage,
            max_pages_per_call,
        })
    }

    /// The physical range the table covers.
    #[must_use]
    pub fn range(&self) -> PhysRange {
        let pages = u64::try_from(self.counts.len()).unwrap_or(u64::MAX);
        PhysRange {
            base: self.base,
            size: pages.saturating_mul(PAGE_SIZE),
        }
    }

    /// The most pages one call may name.
    #[must_use]
    pub fn max_pages_per_call(&self) -> u64 {
        self.max_pages_per_call
    }

    /// The state of the page holding `addr`, or `None` outside the table.
    #[must_use]
    pub fn state(&self, addr: PhysAddr) -> Option<PageState> {
        let count = *self.counts.get(self.index(addr)?)?;
        Some(if count == RELEASED {
            PageState::Released
        } else {
            PageState::Pinned(count)
        })
    }

    /// The owner takes the pages of `range` out of DMA use (to keep them, or to give them
    /// away): succeeds only if no page is pinned, and from then on no domain can map them
    /// until [`PinTable::reassign`]. Releasing a released page is allowed.
    ///
    /// Two passes over the range: check, then mark.
    ///
    /// # Errors
    ///
    /// [`PinError::Busy`] for the first pinned page, or a range error; the table is unchanged.
    pub fn release(&mut self, range: PhysRange) -> Result<(), PinError> {
        let (first, pages) = self.check_range(range.base, range.size)?;
        self.first_busy(first, pages)?;
        self.fill(first, pages, RELEASED);
        Ok(())
    }

    /// The owner hands the pages of `range` to a new owner whose domains may map them:
    /// succeeds only if no page is pinned (so no domain of the previous owner still reaches
    /// them), and leaves every page mappable and unpinned, released ones included.
    ///
    /// # Errors
    ///
    /// [`PinError::Busy`] for the first pinned page, or a range error; the table is unchanged.
    pub fn reassign(&mut self, range: PhysRange) -> Result<(), PinError> {
        let (first, pages) = self.check_range(range.base, range.size)?;
        self.first_busy(first, pages)?;
        self.fill(first, pages, 0);
        Ok(())
    }

    /// Adds one pin to each of `pages` pages from `base`: all of them or none.
    ///
    /// Two passes: check every page (inside, not released, below the limit), then count.
    pub(super) fn pin(&mut self, base: PhysAddr, pages: u64) -> Result<(), PinError> {
        let size = pages
            .checked_mul(PAGE_SIZE)
            .ok_or(PinError::AddressOverflow)?;
        let (first, pages) = self.check_range(base, size)?;
        for (offset, count) in self.slots(first, pages).iter().enumerate() {
            let page = self.page_address(first, offset);
            match *count {
                RELEASED => return Err(PinError::Released { page }),
                MAX_PINS => return Err(PinError::CountOverflow { page }),
                _ => {}
            }
        }
        for count in self.slots_mut(first, pages) {
            *count = count.saturating_add(1);
        }
        Ok(())
    }

    /// Whether the page holding `addr` is inside the table.
    pub(super) fn covers(&self, addr: PhysAddr) -> bool {
        self.index(addr).is_some()
    }

    /// Drops one pin of the page holding `addr`. Only [`super::Stage2Domain::complete`] calls
    /// this, for a page it pinned and whose unmapping a sync has been proven to cover; the
    /// domain module keeps "one pin per live or pending mapping", so the count is above zero.
    /// Saturates rather than wrapping if that invariant were ever broken.
    pub(super) fn unpin(&mut self, addr: PhysAddr) {
        let Some(index) = self.index(addr) else {
            return;
        };
        if let Some(count) = self.counts.get_mut(index)
            && *count != RELEASED
        {
            *count = count.saturating_sub(1);
        }
    }

    /// Checks alignment, size, budget and bounds; returns the first index and the page count.
    fn check_range(&self, base: PhysAddr, size: u64) -> Result<(usize, usize), PinError> {
        if !base.is_aligned(PAGE_SIZE) || !size.is_multiple_of(PAGE_SIZE) {
            return Err(PinError::Misaligned);
        }
        if size == 0 {
            return Err(PinError::EmptyRange);
        }
        let pages = size / PAGE_SIZE;
        if pages > self.max_pages_per_call {
            return Err(PinError::TooLarge {
                pages,
                budget: self.max_pages_per_call,
            });
        }
        base.checked_add(size).ok_or(PinError::AddressOverflow)?;
        let Some(first) = self.index(base) else {
            return Err(PinError::OutsideTable { page: base });
        };
        let pages = usize::try_from(pages).map_err(|_| PinError::AddressOverflow)?;
        if first.saturating_add(pages) > self.counts.len() {
            let inside = u64::try_from(self.counts.len().saturating_sub(first)).unwrap_or(0);
            let page = PhysAddr(base.0.saturating_add(inside.saturating_mul(PAGE_SIZE)));
            return Err(PinError::OutsideTable { page });
        }
        Ok((first, pages))
    }

    fn first_busy(&self, first: usize, pages: usize) -> Result<(), PinError> {
        match self
            .slots(first, pages)
            .iter()
            .position(|&count| count != 0 && count != RELEASED)
        {
            Some(offset) => Err(PinError::Busy {
                page: self.page_address(first, offset),
            }),
            None => Ok(()),
        }
    }

    fn fill(&mut self, first: usize, pages: usize, value: u16) {
        self.slots_mut(first, pages).fill(value);
    }

    /// The counts of a range `check_range` accepted (empty if it were ever out of bounds).
    fn slots(&self, first: usize, pages: usize) -> &[u16] {
        self.counts
            .get(first..first.saturating_add(pages))
            .unwrap_or(&[])
    }

    fn slots_mut(&mut self, first: usize, pages: usize) -> &mut [u16] {
        self.counts
            .get_mut(first..first.saturating_add(pages))
            .unwrap_or(&mut [])
    }

    fn index(&self, addr: PhysAddr) -> Option<usize> {
        let offset = addr.0.checked_sub(self.base.0)?;
        let index = usize::try_from(offset / PAGE_SIZE).ok()?;
        (index < self.counts.len()).then_some(index)
    }

    fn page_address(&self, first: usize, offset: usize) -> PhysAddr {
        let index = u64::try_from(first.saturating_add(offset)).unwrap_or(u64::MAX);
        PhysAddr(self.base.0.saturating_add(index.saturating_mul(PAGE_SIZE)))
    }
}
