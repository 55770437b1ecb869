//! A fixed pool of page-table pages for the hypervisor's own translation tables.
//!
//! `aarch64-paging` asks its [`Translation`] for a new table whenever a mapping needs one, and
//! that call cannot fail. The hypervisor builds its EL2 tables once, at boot, from a pool whose
//! size is fixed at link time, so running out is a sizing bug found by the first boot, never
//! something a guest can cause. Tables are identity-mapped: at EL2 the hypervisor runs with
//! VA == PA, and on the host (tests) a table's address is its own "physical" address.

use aarch64_paging::descriptor::PagingAttributes;
use aarch64_paging::descriptor::PhysicalAddress;
use aarch64_paging::paging::{PageTable, Translation};
use core::cell::UnsafeCell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};

/// One 4 KiB page, aligned as a translation table must be.
#[derive(Clone, Copy)]
#[repr(C, align(4096))]
pub struct PageFrame(pub [u8; PageFrame::SIZE]);

impl PageFrame {
    /// The size of a translation granule and of one table.
    pub const SIZE: usize = 4096;
    /// A zeroed page, for initialising statics.
    pub const ZEROED: Self = Self([0; Self::SIZE]);
}

impl core::fmt::Debug for PageFrame {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("PageFrame")
    }
}

/// Hands out pages from a fixed slice, first to last; freed pages are not reused.
///
/// The hypervisor's own map is built once and never torn down, so a bump allocator is enough
/// and keeps the worst case obvious: at most `capacity()` tables, ever.
#[derive(Debug)]
pub struct PagePool {
    frames: &'static mut [PageFrame],
    used: usize,
}

impl PagePool {
    /// A pool over `frames`, which it owns from now on.
    pub fn new(frames: &'static mut [PageFrame]) -> Self {
        Self { frames, used: 0 }
    }

    /// How many tables the pool can hand out in all.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.frames.len()
    }

    /// How many tables have been handed out.
    #[must_use]
    pub fn used(&self) -> usize {
        self.used
    }
}

impl<A: PagingAttributes> Translation<A> for PagePool {
    #[allow(clippy::panic, reason = "the trait cannot fail; see the message")]
    fn allocate_table(&mut self) -> (NonNull<PageTable<A>>, PhysicalAddress) {
        let Some(frame) = self.frames.get_mut(self.used) else {
            // Only reachable while building the boot-time map from fixed board data: the pool
            // is too small for this platform's layout. A guest can never get here.
            panic!("EL2 page-table pool exhausted ({} tables)", self.used);
        };
        self.used += 1;
        *frame = PageFrame::ZEROED;
        let table = NonNull::from(frame).cast::<PageTable<A>>();
        (table, PhysicalAddress(table.as_ptr() as usize))
    }

    unsafe fn deallocate_table(&mut self, _page_table: NonNull<PageTable<A>>) {
        // Bump allocation: the page stays consumed. `compact_subtables` is never called on the
        // hypervisor's map, so this does not happen in practice.
    }

    fn physical_to_virtual(&self, pa: PhysicalAddress) -> NonNull<PageTable<A>> {
        // Identity mapping; a table address is never zero because it came from `allocate_table`.
        NonNull::new(pa.0 as *mut PageTable<A>).unwrap_or(NonNull::dangling())
    }
}

/// `N` page frames in a static, handed out once as a [`PagePool`].
///
/// Each table pool of the hypervisor (its EL2 map, a guest's stage 2, the SMMU's stage 2) is one
/// of these, sized at build time: the sizes are the whole memory budget for tables.
pub struct StaticFrames<const N: usize> {
    frames: UnsafeCell<[PageFrame; N]>,
    taken: AtomicBool,
}

// SAFETY: the frames are reachable only through `take`, which hands them out at most once.
unsafe impl<const N: usize> Sync for StaticFrames<N> {}

impl<const N: usize> StaticFrames<N> {
    /// `N` zeroed frames, not yet taken.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            frames: UnsafeCell::new([PageFrame::ZEROED; N]),
            taken: AtomicBool::new(false),
        }
    }

    /// Where the frames are (identity-mapped, so also their physical address): for the
    /// hypervisor's end-of-run check that its tables were not written behind its back.
    #[must_use]
    pub fn range(&'static self) -> smmu::PhysRange {
        smmu::PhysRange::new(self.frames.get() as u64, (N * PageFrame::SIZE) as u64)
    }

    /// The frames as a pool, the first time; `None` after that.
    pub fn take(&'static self) -> Option<PagePool> {
        if self.taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: `taken` was false, so no other reference to the frames was ever made, and the
        // swap above makes sure none will be.
        Some(PagePool::new(unsafe { &mut *self.frames.get() }))
    }
}

impl<const N: usize> Default for StaticFrames<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> core::fmt::Debug for StaticFrames<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "StaticFrames<{N}>")
    }
}
