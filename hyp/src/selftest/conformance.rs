//! `hyp.selftest=conformance-suite`: the whole `smmu-conformance` suite, run from EL2 against
//! the physical (QEMU's) SMMU with `edu` as the DMA master: the suite's "QEMU column".
//!
//! This module owns [`El2Harness`], the suite's [`Harness`] at EL2, and the runner that reports
//! each case. The harness holds the SMMU driver (under its lock, for the whole run), `edu`
//! (attached by [`super::edu::attach`]), a fixed pool of test pages in the image's bss and a
//! fixed table pool for the stage-2 domain case; nothing is allocated. It owns one stream,
//! `edu`'s, and may not touch any other: the only store it makes behind the driver's back is
//! into that stream's STE ([`Harness::store_behind_driver`]). No guest runs.
//!
//! Each case is logged as `conformance-case NAME: VERDICT` with one of `PASS`, `FAIL why`,
//! `NOT APPLICABLE (why)`, `KNOWN DEVIATION: why (the list's entry)` or `DEVIATION PASSED (the
//! list's entry)`, as [`smmu_conformance::verdict`] reads the outcome against
//! `QEMU_DEVIATIONS`; then one summary line. The exit status is 0 only if no case failed
//! outside the list and no listed case passed. Every wait is bounded: DMA by the generic timer
//! ([`Edu::dma`]), syncs by the driver's poll budgets, event draining by the suite's round
//! count.

use super::edu::{self, Edu};
use crate::arch::power::{ExitStatus, exit};
use crate::arch::smmu::{HypPlatform, PhysicalSmmu, SMMU, SmmuRegisters, StaticDma};
use crate::page_pool::{PageFrame, PagePool, StaticFrames};
use aarch64_paging::{Mapping, paging::El2};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};
use smmu::driver::Driver;
use smmu::{PhysAddr, StreamId, SubstreamId};
use smmu_conformance::{
    Case, DeviceCapabilities, Direction, DmaResult, Harness, HarnessError, MIN_PAGES, QemuTally,
    QemuVerdict, qemu_verdict,
};

/// Test pages: the suite builds every table and CD of a case in them, so it needs more than
/// [`MIN_PAGES`]; 64 is what the reference model's harness has.
const PAGE_COUNT: usize = 64;
const PAGE: u64 = PageFrame::SIZE as u64;
const WORDS_PER_PAGE: usize = 512;
const _: () = assert!(PAGE_COUNT >= MIN_PAGES);

/// Bytes per event of a blocked `edu` transfer. QEMU's `edu` hands its whole transfer to
/// `pci_dma_read`/`pci_dma_write`; QEMU's memory core asks the SMMU to translate, and when the
/// translation fails it continues the access as one to unassigned memory, whose largest access
/// is 4 bytes, translating (and so recording an event) again for each 4 bytes.
const TRANSACTION_BYTES: u64 = 4;

/// The stage-2 domain case's table pool: its two pages share one 2 MiB window, so a root and
/// one table at each of levels 1 to 3 (as the `smmu-conformance` self-test's).
static DOMAIN_TABLES: StaticFrames<4> = StaticFrames::new();

/// The test pages, in the image's bss (identity mapped: an address is a pointer and a physical
/// address), contiguous.
struct TestPages {
    frames: UnsafeCell<[PageFrame; PAGE_COUNT]>,
    taken: AtomicBool,
}

// SAFETY: the frames are reached only through the base address `take` hands out once.
unsafe impl Sync for TestPages {}

static TEST_PAGES: TestPages = TestPages {
    frames: UnsafeCell::new([PageFrame::ZEROED; PAGE_COUNT]),
    taken: AtomicBool::new(false),
};

impl TestPages {
    /// The pages' base address, the first time; `None` after that.
    fn take(&'static self) -> Option<u64> {
        (!self.taken.swap(true, Ordering::AcqRel)).then(|| self.frames.get() as u64)
    }
}

/// A full barrier: stores before it are visible to the SMMU and devices, and their writes to
/// loads after it.
fn barrier() {
    // SAFETY: a barrier has no effect on memory contents.
    unsafe { core::arch::asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// The suite's harness at EL2: QEMU's SMMU under the hypervisor's driver, `edu` as the DMA
/// master.
#[derive(Debug)]
pub struct El2Harness<'a> {
    driver: &'a mut PhysicalSmmu,
    edu: Edu,
    stream: StreamId,
    /// The test pages' base: `PAGE_COUNT` pages, only ever accessed with volatile 64-bit loads
    /// and stores (the device and the SMMU use them behind the compiler's back, so no reference
    /// into them is ever made).
    pages: u64,
    domain_tables: Option<PagePool>,
}

impl El2Harness<'_> {
    /// The word `word` of test page `page`, if both are in range.
    fn word_pointer(&self, page: usize, word: usize) -> Option<*mut u64> {
        (page < PAGE_COUNT && word < WORDS_PER_PAGE)
            .then(|| (self.pages + page as u64 * PAGE + word as u64 * 8) as *mut u64)
    }
}

impl Harness for El2Harness<'_> {
    type Registers = SmmuRegisters;
    type Memory = StaticDma;
    type Platform = HypPlatform;
    type Tables = PagePool;

    fn driver(&mut self) -> &mut Driver<SmmuRegisters, StaticDma, HypPlatform> {
        self.driver
    }

    fn stream(&self) -> StreamId {
        self.stream
    }

    /// What QEMU 10.0's SMMU and `edu` offer, decided from QEMU's source
    /// (`hw/arm/smmuv3.c`, `hw/arm/smmu-common.c`, `hw/misc/edu.c`):
    ///
    /// - No PASID, ATS or PRI: `edu` is a plain PCI function, and the SMMU has SSIDSIZE 0 and
    ///   IDR0.ATS = PRI = 0.
    /// - `keeps_stale_entries`: QEMU caches the decoded STE and CD of a device in a
    ///   configuration cache (`smmuv3_get_config`) that only CMD_CFGI_STE, CFGI_STE_RANGE,
    ///   CFGI_ALL, CFGI_CD and CFGI_CD_ALL empty, and every translation in an IOTLB
    ///   (`smmu_iotlb_insert`) that only the TLBI commands empty, except that it is emptied
    ///   whole when it reaches 256 entries. The suite invalidates its VMIDs at every install
    ///   and a case uses a handful of pages, so within a case nothing is dropped: stale
    ///   entries stay in use until invalidated, and the stale-entry cases may insist on it.
    /// - `invalidation_waits_for_sync`: no. QEMU performs each command when it consumes it
    ///   (`smmuv3_cmdq_consume`, on the CMDQ_PROD write); CMD_SYNC only signals. A missing
    ///   sync is not observable there.
    fn device(&self) -> DeviceCapabilities {
        DeviceCapabilities {
            pasid: false,
            ats: false,
            pri: false,
            keeps_stale_entries: true,
            invalidation_waits_for_sync: false,
        }
    }

    fn page_count(&self) -> usize {
        PAGE_COUNT
    }

    fn page_address(&self, index: usize) -> PhysAddr {
        PhysAddr(self.pages + index as u64 * PAGE)
    }

    fn read_word(&self, page: usize, word: usize) -> u64 {
        self.word_pointer(page, word).map_or(0, |pointer| {
            // SAFETY: the pointer is in range (checked by `word_pointer`), aligned, in the test
            // pages (bss, mapped read-write at EL2) that only this harness accesses, and never
            // through a reference; a volatile load of a word the device may be writing is a
            // defined read of plain memory.
            unsafe { core::ptr::read_volatile(pointer) }
        })
    }

    fn write_word(&mut self, page: usize, word: usize, value: u64) {
        if let Some(pointer) = self.word_pointer(page, word) {
            // SAFETY: as in `read_word`.
            unsafe { core::ptr::write_volatile(pointer, value) };
        }
    }

    fn barrier(&self) {
        barrier();
    }

    fn dma(
        &mut self,
        direction: Direction,
        iova: u64,
        length: u64,
        ssid: Option<SubstreamId>,
    ) -> Result<DmaResult, HarnessError> {
        if ssid.is_some() {
            return Err(HarnessError::Unsupported);
        }
        let direction = match direction {
            Direction::RamToDevice => edu::Direction::RamToDevice,
            Direction::DeviceToRam => edu::Direction::DeviceToRam,
        };
        // From the start of the device's buffer: a transfer is at most its 4 KiB.
        self.edu.dma(direction, iova, 0, length).map_err(|error| {
            defmt::warn!(
                "edu DMA {} of {=u64} bytes at {=u64:#x}: {}",
                direction,
                length,
                iova,
                error
            );
            HarnessError::DeviceFailed
        })?;
        // `edu` completes a blocked transfer as it completes any other.
        Ok(DmaResult { faulted: None })
    }

    fn transaction_bytes(&self) -> u64 {
        TRANSACTION_BYTES
    }

    fn domain_tables(&mut self) -> Option<PagePool> {
        self.domain_tables.take()
    }

    fn note(&mut self, message: &'static str, values: &[u64]) {
        defmt::info!("  note: {=str}: {=[?]:#x}", message, values);
    }

    fn store_behind_driver(&mut self, address: PhysAddr, value: u64) -> Result<(), HarnessError> {
        // Only into the STE of the stream under test: the driver's own memory, nothing else.
        let ste = self
            .driver
            .ste_address(self.stream)
            .ok()
            .flatten()
            .ok_or(HarnessError::Unsupported)?;
        let inside = address
            .0
            .checked_sub(ste.0)
            .is_some_and(|offset| offset < 64 && offset % 8 == 0);
        if !inside {
            defmt::warn!(
                "store behind the driver refused: {=u64:#x} is not in the STE at {=u64:#x}",
                address.0,
                ste.0
            );
            return Err(HarnessError::Unsupported);
        }
        barrier();
        // SAFETY: the address is an aligned qword of the STE of the stream this harness owns,
        // in the driver's level-2 stream table: a static buffer in the hypervisor's image,
        // identity mapped read-write at EL2, that the driver accesses only through volatile
        // loads and stores of a raw pointer (never a reference). The driver is borrowed by this
        // harness for the whole run, so nothing else touches the table meanwhile; a 64-bit
        // aligned store is single-copy atomic, so the SMMU sees the old qword or the new one.
        unsafe { core::ptr::write_volatile(address.0 as *mut u64, value) };
        barrier();
        Ok(())
    }
}

/// Logs `verdict` for `case` as one line.
fn log_verdict(case: &Case, verdict: &QemuVerdict) {
    let name = case.name;
    match *verdict {
        QemuVerdict::Pass => defmt::info!("conformance-case {=str}: PASS", name),
        QemuVerdict::NotApplicable(why) => {
            defmt::info!(
                "conformance-case {=str}: NOT APPLICABLE ({=str})",
                name,
                why
            );
        }
        QemuVerdict::KnownDeviation { failed, deviation } => defmt::warn!(
            "conformance-case {=str}: KNOWN DEVIATION: {=str} ({=str})",
            name,
            failed,
            deviation
        ),
        QemuVerdict::Fail(why) => defmt::error!("conformance-case {=str}: FAIL {=str}", name, why),
        QemuVerdict::DeviationPassed { deviation } => defmt::error!(
            "conformance-case {=str}: DEVIATION PASSED: listed as a QEMU deviation, but the case passed ({=str})",
            name,
            deviation
        ),
    }
}

/// Runs the suite and ends the run with its verdict.
pub fn run(platform: &board::Platform, el2_map: &mut Mapping<PagePool, El2>) -> ! {
    let (edu, stream) = match edu::attach(platform, el2_map) {
        Ok(attached) => attached,
        Err(why) => setup_failed(why),
    };
    let mut guard = SMMU.lock();
    let Some(driver) = guard.as_mut() else {
        setup_failed("the SMMU was not brought up")
    };
    let Some(pages) = TEST_PAGES.take() else {
        setup_failed("test pages already taken")
    };
    let mut harness = El2Harness {
        driver,
        edu,
        stream,
        pages,
        domain_tables: DOMAIN_TABLES.take(),
    };
    defmt::info!(
        "conformance-suite: {=usize} cases, stream {=u32:#x}, {=usize} test pages at {=u64:#x}",
        smmu_conformance::CASES.len(),
        stream.get(),
        PAGE_COUNT,
        pages
    );
    let mut tally = QemuTally::default();
    smmu_conformance::run(&mut harness, None, |case, outcome| {
        let verdict = qemu_verdict(case.name, outcome);
        log_verdict(case, &verdict);
        tally.add(&verdict);
    });
    defmt::info!(
        "conformance-suite: {=u32} passed, {=u32} failed, {=u32} known deviations, {=u32} not applicable, {=u32} deviations passed",
        tally.passed,
        tally.failed,
        tally.known_deviations,
        tally.not_applicable,
        tally.deviations_passed
    );
    // The suite put the stream back to abort; the SMMU walked the test pages until then. The
    // run ends here, so they are never reused either way.
    drop(guard);
    exit(if tally.succeeded() {
        ExitStatus::Success
    } else {
        ExitStatus::Failure
    })
}

fn setup_failed(why: &str) -> ! {
    defmt::error!("conformance-suite: setup failed: {=str}", why);
    exit(ExitStatus::Failure)
}
