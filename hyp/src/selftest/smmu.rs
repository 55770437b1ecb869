//! `hyp.selftest=smmu-conformance`: the hypervisor's SMMU stack against the physical SMMU, with
//! QEMU's `edu` device as the DMA master.
//!
//! The test owns one stream, `edu`'s (00:01.0, stream ID 8 on QEMU virt), and nothing else: no
//! guest runs. It builds SMMU stage-2 tables with the project's stage-2 code (`aarch64-paging`'s
//! stage-2 regime, [`crate::stage2`]'s geometry and attributes, a static table pool), stage-1
//! tables by hand (4 KiB granule, 39-bit input, walk from level 1) so that their next-level
//! pointers can be IPAs under nesting, and every STE and CD with `smmu::entry`'s make functions,
//! passed through the physical guard (`PhysicalSte::check`, `PhysicalCd::check`) and installed
//! by its hitless installer: STEs with the driver's `install_ste`, the one way to write one. DMA buffers are static
//! pages in the image's bss (identity mapped: a pointer is a physical address). One case drives
//! a `smmu::domain::Stage2Domain` (its own static table pool, a pin table over two of those
//! pages) through map, unmap, invalidation, sync and completion, with real TLB invalidation
//! commands to the SMMU.
//!
//! Each named case logs `smmu-case NAME: PASS` or `smmu-case NAME: FAIL why`; the run ends with
//! `smmu-conformance: N passed, M failed`, the stream back to abort, and exit status 0 only if
//! every case passed. Every wait is bounded: DMA by the generic timer (see [`super::edu`]),
//! syncs by the driver's poll budgets, event draining by a round count.

use super::edu::{self, Direction, Edu};
use crate::arch::power::{ExitStatus, exit};
use crate::arch::smmu::{PhysicalSmmu, SMMU};
use crate::page_pool::{PageFrame, PagePool, StaticFrames};
use crate::stage2::{self, Stage2Kind};
use aarch64_paging::{
    Mapping,
    descriptor::PhysicalAddress,
    paging::{Constraints, El2, MemoryRegion, Stage2},
};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};
use smmu::cd::Cd;
use smmu::command::{Cmd, Command};
use smmu::domain::{
    CompletionError, DomainConfig, PageState, Permissions, PinError, PinTable, Refused,
    Stage2Domain, Stage2Geometry, Stage2Invalidation, Stage2Use, WalkAttributes,
};
use smmu::driver::{CommandErrorKind, Error as DriverError, EventIntake, InstallPoint, Platform};
use smmu::entry::install::{
    EntryWriter, InstallReport, PhysicalEntryError, UpdatePath, check_physical_ste, install_cd,
};
use smmu::entry::make::{
    ContextTable, ContextTableParameters, Mair, Stage1Parameters, Stage1Translation,
    Stage2Translation, make_abort_ste, make_cd, make_nested_ste, make_stage1_ste, make_stage2_ste,
};
use smmu::entry::{PhysicalCd, PhysicalSte};
use smmu::event::{Event, EventAddress, EventId, FaultClass};
use smmu::hardware::RegisterAccess;
use smmu::queue::QueuePointer;
use smmu::registers::{QueueBase, offset};
use smmu::ste::{S1Dss, S1Fmt, Ste};
use smmu::translation::{AddressSize, Cacheability, Granule, Shareability};
use smmu::{Asid, Ipa, PhysAddr, PhysRange, StreamId, SubstreamId, Vmid};

const PAGE: u64 = 4096;
const WORDS_PER_PAGE: usize = 512;

/// The test's pages, by index.
mod page {
    /// What DMA reads (RAM to device).
    pub(super) const SOURCE: usize = 0;
    /// Where translated DMA writes land (stage-2 table A, stage 1, nested).
    pub(super) const DESTINATION: usize = 1;
    /// Where translated DMA writes land through stage-2 table B.
    pub(super) const DESTINATION_B: usize = 2;
    /// A page no translation maps: it must never change.
    pub(super) const CANARY: usize = 3;
    /// The stage-1-only stream's CD table (one CD) and stage-1 tables (levels 1, 2, 3).
    pub(super) const S1_CD: usize = 4;
    pub(super) const S1_L1: usize = 5;
    pub(super) const S1_L2: usize = 6;
    pub(super) const S1_L3: usize = 7;
    /// The nested stream's CD table and stage-1 tables, reached through stage 2 at
    /// [`IPA_S1_AREA`](super::IPA_S1_AREA) in this order.
    pub(super) const NESTED_CD: usize = 8;
    pub(super) const NESTED_L1: usize = 9;
    pub(super) const NESTED_L2: usize = 10;
    pub(super) const NESTED_L3: usize = 11;
    /// The stage-2 domain case's DMA buffers, the region its pin table covers (in this order,
    /// contiguous): what the device reads, and buffer A, which it writes and which is unmapped.
    pub(super) const DOMAIN_SOURCE: usize = 12;
    pub(super) const DOMAIN_A: usize = 13;
    /// How many pages the domain's pin table covers.
    pub(super) const DOMAIN_PAGES: usize = 2;
    /// How many.
    pub(super) const COUNT: usize = 14;
}

/// The IOVA window of the stage-2 cases (IPA == IOVA): far from RAM, so a translation that
/// did not happen could not land in the buffers.
const IPA_SOURCE: u64 = 0x1_0000_0000;
const IPA_DESTINATION: u64 = 0x1_0000_1000;
/// Where stage 2 shows the nested stream its CD and stage-1 tables.
const IPA_S1_AREA: u64 = 0x2_0000_0000;
/// The IOVAs the stage-2 domain maps (IPA == IOVA): the source, and buffer A's page.
const IPA_DOMAIN_SOURCE: u64 = 0x3_0000_0000;
const IPA_DOMAIN_A: u64 = 0x3_0000_1000;
/// The IOVAs of the stage-1 cases.
const VA_SOURCE: u64 = 0x7_0000_0000;
const VA_DESTINATION: u64 = 0x7_0000_1000;

/// VMIDs and ASIDs the test uses (no guest runs, so none is taken).
const VMID_STAGE2: Vmid = Vmid(0x51);
const VMID_STAGE1: Vmid = Vmid(0x52);
/// The stage-2 domain case's VMID.
const VMID_DOMAIN: Vmid = Vmid(0x53);
const ASID_STAGE1: Asid = Asid(1);
const ASID_NESTED: Asid = Asid(2);

/// Stage-1 geometry: T0SZ = 25 (39-bit IOVAs), so the walk starts at level 1 with a full
/// 4 KiB table.
const STAGE1_T0SZ: u8 = 25;
/// MAIR: index 0 Normal write-back (0xff), index 1 Device-nGnRE (0x04).
const STAGE1_MAIR: Mair = Mair(0x04ff);
/// A stage-1 table descriptor (bits 1:0 = 0b11), before its address.
const S1_TABLE: u64 = 0b11;
/// A stage-1 level-3 page descriptor: AttrIndx 0, AP = read/write, inner shareable, AF,
/// PXN and UXN (a device never executes).
const S1_PAGE: u64 = 0b11 | (0b01 << 6) | (0b11 << 8) | (1 << 10) | (1 << 53) | (1 << 54);

/// What the canary page holds.
const CANARY: u64 = 0xcaca_caca_caca_caca;

/// Bytes of each DMA meant to be blocked: QEMU reports a failed transfer once per 4 bytes,
/// so 8 bytes give two events, well inside the event queue.
const BLOCKED_DMA_BYTES: u64 = 8;

/// An undefined command opcode, for the illegal-command case.
const UNDEFINED_OPCODE: u8 = 0x7f;

/// Stage-2 table pools: table A (the main one) and table B (its replacement).
static STAGE2_A_TABLES: StaticFrames<8> = StaticFrames::new();
static STAGE2_B_TABLES: StaticFrames<8> = StaticFrames::new();
/// The stage-2 domain's tables: its two pages share one 2 MiB window, so a root (level 0) and
/// one table at each of levels 1 to 3. Unmapping allocates nothing.
static DOMAIN_TABLES: StaticFrames<4> = StaticFrames::new();
/// The most pages one domain call may name.
const DOMAIN_BUDGET: u64 = 16;

/// The test's DMA pages.
struct TestPages {
    frames: UnsafeCell<[PageFrame; page::COUNT]>,
    taken: AtomicBool,
}

// SAFETY: the frames are reachable only through `Pages`, handed out once by `take`.
unsafe impl Sync for TestPages {}

static TEST_PAGES: TestPages = TestPages {
    frames: UnsafeCell::new([PageFrame::ZEROED; page::COUNT]),
    taken: AtomicBool::new(false),
};

/// The test's pages, accessed only with volatile 64-bit loads and stores: the device and the
/// SMMU read and write them behind the compiler's back, so no reference into them is ever made.
#[derive(Debug)]
struct Pages {
    base: u64,
}

impl Pages {
    fn take() -> Option<Self> {
        if TEST_PAGES.taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(Self {
            base: TEST_PAGES.frames.get() as u64,
        })
    }

    /// The physical (and EL2 virtual: identity map) address of page `index`.
    fn address(&self, index: usize) -> u64 {
        self.base + index as u64 * PAGE
    }

    fn word_pointer(&self, index: usize, word: usize) -> *mut u64 {
        let index = index.min(page::COUNT - 1);
        let word = word.min(WORDS_PER_PAGE - 1);
        (self.address(index) + word as u64 * 8) as *mut u64
    }

    fn read(&self, index: usize, word: usize) -> u64 {
        // SAFETY: the pointer is clamped into the test's pages (aligned, in bss, mapped
        // read-write at EL2) which only `Pages` accesses; a volatile load of a word the device
        // may be writing is still a defined read of plain memory.
        unsafe { core::ptr::read_volatile(self.word_pointer(index, word)) }
    }

    fn write(&self, index: usize, word: usize, value: u64) {
        // SAFETY: as in `read`; nothing holds a reference into these pages.
        unsafe { core::ptr::write_volatile(self.word_pointer(index, word), value) }
    }

    fn fill(&self, index: usize, value: impl Fn(usize) -> u64) {
        for word in 0..WORDS_PER_PAGE {
            self.write(index, word, value(word));
        }
        barrier();
    }

    /// The first of the first `words` words of page `index` that differs from `value`.
    fn first_difference(
        &self,
        index: usize,
        words: usize,
        value: impl Fn(usize) -> u64,
    ) -> Option<(usize, u64)> {
        barrier();
        (0..words.min(WORDS_PER_PAGE))
            .map(|word| (word, self.read(index, word)))
            .find(|&(word, got)| got != value(word))
    }
}

/// A full barrier: stores before it are visible to the SMMU and devices, and their writes
/// visible to loads after it.
fn barrier() {
    // SAFETY: a barrier has no effect on memory contents.
    unsafe { core::arch::asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// The test pattern for `seed`: different for every seed and every word.
fn pattern(seed: u64) -> impl Fn(usize) -> u64 {
    move |word| seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (word as u64).wrapping_mul(0x0101_0101)
}

/// `ste` through the physical guard: the only way to an STE the driver will install.
fn physical(ste: &Ste) -> Result<PhysicalSte, &'static str> {
    PhysicalSte::check(*ste).map_err(|error| {
        defmt::error!("physical guard: {}", error);
        "the physical guard refused a made STE"
    })
}

/// Fills page `source` with the pattern of `seed`, has the device read a page from
/// `source_iova` and write it to `destination_iova`.
fn copy_pattern(
    edu: &mut Edu,
    pages: &Pages,
    source: usize,
    (source_iova, destination_iova): (u64, u64),
    seed: u64,
) -> Result<(), &'static str> {
    pages.fill(source, pattern(seed));
    for (direction, address) in [
        (Direction::RamToDevice, source_iova),
        (Direction::DeviceToRam, destination_iova),
    ] {
        edu.dma(direction, address, 0, edu::DEVICE_BUFFER_SIZE)
            .map_err(|error| {
                defmt::error!("edu DMA {} at {=u64:#x}: {}", direction, address, error);
                "edu DMA did not complete"
            })?;
    }
    Ok(())
}

/// DMA through every state a stage-2 switch from table A to table B exposes: at each point of
/// the install, a fresh pattern is copied to IPA_DESTINATION, and must land whole in A's
/// destination page or in B's, with the other page untouched.
struct SwitchTraffic<'a> {
    edu: &'a mut Edu,
    pages: &'a Pages,
    seed: &'a mut u64,
    /// Transfers that landed through table A, and through table B.
    through_a: u32,
    through_b: u32,
    /// The first transfer that did not.
    failure: Option<&'static str>,
}

impl SwitchTraffic<'_> {
    fn probe(&mut self, point: InstallPoint) {
        if self.failure.is_some() {
            return;
        }
        *self.seed += 1;
        let seed = *self.seed;
        self.pages.fill(page::DESTINATION, |_| 0);
        self.pages.fill(page::DESTINATION_B, |_| 0);
        if let Err(why) = copy_pattern(
            self.edu,
            self.pages,
            page::SOURCE,
            (IPA_SOURCE, IPA_DESTINATION),
            seed,
        ) {
            self.failure = Some(why);
            return;
        }
        let holds = |index| {
            self.pages
                .first_difference(index, WORDS_PER_PAGE, pattern(seed))
                .is_none()
        };
        let untouched = |index| {
            self.pages
                .first_difference(index, WORDS_PER_PAGE, |_| 0)
                .is_none()
        };
        let landed = match (holds(page::DESTINATION), holds(page::DESTINATION_B)) {
            (true, false) if untouched(page::DESTINATION_B) => "A",
            (false, true) if untouched(page::DESTINATION) => "B",
            _ => {
                self.failure = Some("a DMA during the switch landed neither wholly in A nor in B");
                return;
            }
        };
        if landed == "A" {
            self.through_a += 1;
        } else {
            self.through_b += 1;
        }
        defmt::info!("  DMA at {}: landed through table {=str}", point, landed);
    }
}

/// The installer's stores and syncs for a CD in one of the test's pages.
struct CdInstallWriter<'a> {
    driver: &'a mut PhysicalSmmu,
    pages: &'a Pages,
    page: usize,
    stream: StreamId,
}

impl EntryWriter for CdInstallWriter<'_> {
    type Error = DriverError;

    fn write_qword(&mut self, index: usize, value: u64) {
        self.driver.platform().dma_barrier();
        self.pages.write(self.page, index, value);
    }

    fn sync(&mut self) -> Result<(), DriverError> {
        self.driver.platform().dma_barrier();
        self.driver.submit_and_sync(&[Cmd::CfgiCd {
            sid: self.stream,
            ssid: SubstreamId(0),
            leaf: true,
        }])
    }
}

/// What one drain of the event queue found.
#[derive(Debug, Default)]
struct Seen {
    /// The decoded events, the first 16.
    events: heapless::Vec<Event, 16>,
    /// Every decoded event.
    total: u32,
    /// Undecodable records, overflows and global errors.
    anomalies: u32,
}

impl Seen {
    /// Checks that exactly `count` events were seen, every one `id` and satisfying `check`,
    /// and nothing else.
    fn expect(
        &self,
        id: EventId,
        count: u32,
        check: impl Fn(&Event) -> bool,
    ) -> Result<(), &'static str> {
        if self.anomalies != 0 {
            return Err("undecodable event, overflow or global error");
        }
        if self.total != count {
            defmt::warn!(
                "expected {=u32} {} events, saw {=u32}",
                count,
                id,
                self.total
            );
            return Err("wrong number of events");
        }
        if let Some(bad) = self.events.iter().find(|e| e.id != id || !check(e)) {
            defmt::warn!("unexpected event: {}", bad);
            return Err("an event does not match");
        }
        Ok(())
    }

    fn expect_none(&self) -> Result<(), &'static str> {
        if self.total != 0 || self.anomalies != 0 {
            return Err("an event was raised");
        }
        Ok(())
    }
}

/// The state the cases share.
struct Conformance<'a> {
    driver: &'a mut PhysicalSmmu,
    edu: Edu,
    pages: Pages,
    stream: StreamId,
    /// Stage-2 table A: IPA_SOURCE -> SOURCE, IPA_DESTINATION -> DESTINATION, the nested
    /// stream's CD and stage-1 tables at IPA_S1_AREA.
    stage2_a: Stage2Translation,
    /// Stage-2 table B, same VMID: IPA_SOURCE -> SOURCE, IPA_DESTINATION -> DESTINATION_B.
    stage2_b: Stage2Translation,
    /// The next pattern seed: every transfer uses a fresh one, so stale data never passes.
    seed: u64,
    passed: u32,
    failed: u32,
}

/// Runs the self-test and ends the run with its verdict.
pub fn run(platform: &board::Platform, el2_map: &mut Mapping<PagePool, El2>) -> ! {
    let (edu, stream) = match edu::attach(platform, el2_map) {
        Ok(attached) => attached,
        Err(why) => setup_failed(why),
    };

    let mut guard = SMMU.lock();
    let Some(driver) = guard.as_mut() else {
        setup_failed("the SMMU was not brought up")
    };
    let Some(pages) = Pages::take() else {
        setup_failed("test pages already taken")
    };
    let (Some(pool_a), Some(pool_b)) = (STAGE2_A_TABLES.take(), STAGE2_B_TABLES.take()) else {
        setup_failed("stage-2 pools already taken")
    };
    // Stage 2 shows the nested stream its CD and stage-1 tables at IPA_S1_AREA, in page order.
    let area = |index: u64| IPA_S1_AREA + index * PAGE;
    let map_a = [
        (IPA_SOURCE, pages.address(page::SOURCE)),
        (IPA_DESTINATION, pages.address(page::DESTINATION)),
        (area(0), pages.address(page::NESTED_CD)),
        (area(1), pages.address(page::NESTED_L1)),
        (area(2), pages.address(page::NESTED_L2)),
        (area(3), pages.address(page::NESTED_L3)),
    ];
    let map_b = [
        (IPA_SOURCE, pages.address(page::SOURCE)),
        (IPA_DESTINATION, pages.address(page::DESTINATION_B)),
    ];
    let (Ok(table_a), Ok(table_b)) = (build_stage2(pool_a, &map_a), build_stage2(pool_b, &map_b))
    else {
        setup_failed("building the stage-2 tables")
    };
    let features = *driver.features();
    let translation = |root: u64| {
        Stage2Translation::new(
            stage2::smmu_stage2_parameters(PhysAddr(root), VMID_STAGE2),
            &features,
        )
    };
    let (Ok(stage2_a), Ok(stage2_b)) = (
        translation(table_a.root_address().0 as u64),
        translation(table_b.root_address().0 as u64),
    ) else {
        setup_failed("stage-2 translations refused by smmu::entry::make")
    };
    let mut test = Conformance {
        driver,
        edu,
        pages,
        stream,
        stage2_a,
        stage2_b,
        seed: 1,
        passed: 0,
        failed: 0,
    };
    let cases: [(&'static str, Case<'_>); 10] = [
        ("stage2-dma-translates", Conformance::stage2_dma_translates),
        ("unmapped-iova-faults", Conformance::unmapped_iova_faults),
        ("abort-ste-blocks", Conformance::abort_ste_blocks),
        ("missing-ste-aborts", Conformance::missing_ste_aborts),
        ("stage1-translates", Conformance::stage1_translates),
        ("nested-translates", Conformance::nested_translates),
        (
            "hitless-stage2-replace",
            Conformance::hitless_stage2_replace,
        ),
        (
            "illegal-command-recovered",
            Conformance::illegal_command_recovered,
        ),
        ("s2aa64-zero-refused", Conformance::s2aa64_zero_refused),
        (
            "stage2-domain-unmap-pins",
            Conformance::stage2_domain_unmap_pins,
        ),
    ];
    for (name, case) in cases {
        test.run_case(name, case);
    }
    let clean = test.restore_abort();
    let (passed, failed) = (test.passed, test.failed);
    defmt::info!(
        "smmu-conformance: {=u32} passed, {=u32} failed",
        passed,
        failed
    );
    // The SMMU walked these tables until the stream went back to abort just now; the run ends
    // here, so they are never freed either way.
    core::mem::forget(table_a);
    core::mem::forget(table_b);
    drop(guard);
    exit(if failed == 0 && clean {
        ExitStatus::Success
    } else {
        ExitStatus::Failure
    })
}

type Case<'a> = fn(&mut Conformance<'a>) -> Result<(), &'static str>;

fn setup_failed(why: &str) -> ! {
    defmt::error!("smmu-conformance: setup failed: {=str}", why);
    exit(ExitStatus::Failure)
}

/// Checks that the owner cannot release `range` (one pinned page): `PinError::Busy` for it.
fn expect_busy(pins: &mut PinTable<'_>, range: PhysRange, when: &str) -> Result<(), &'static str> {
    match pins.release(range) {
        Err(PinError::Busy { page }) if page == range.base => Ok(()),
        outcome => {
            defmt::error!("release of buffer A {=str}: {}", when, outcome);
            Err("buffer A's release was not refused as Busy")
        }
    }
}

/// A stage-2 table mapping each `(ipa, pa)` page, with RAM attributes, from `pool`.
fn build_stage2(
    pool: PagePool,
    pages: &[(u64, u64)],
) -> Result<Mapping<PagePool, Stage2>, &'static str> {
    let mut map = Mapping::new(pool, stage2::ROOT_LEVEL, Stage2);
    for &(ipa, pa) in pages {
        map.map_range(
            &MemoryRegion::new(ipa as usize, (ipa + PAGE) as usize),
            PhysicalAddress(pa as usize),
            Stage2Kind::Ram.attributes(),
            Constraints::empty(),
        )
        .map_err(|_| "stage-2 map")?;
    }
    Ok(map)
}

impl<'a> Conformance<'a> {
    fn run_case(&mut self, name: &'static str, case: Case<'a>) {
        // Whatever an earlier case left in the queue is not this case's.
        let stray = self.drain();
        if stray.total != 0 || stray.anomalies != 0 {
            defmt::warn!(
                "smmu-case {=str}: {=u32} stray events before the case",
                name,
                stray.total
            );
        }
        match case(self) {
            Ok(()) => {
                self.passed += 1;
                defmt::info!("smmu-case {=str}: PASS", name);
            }
            Err(why) => {
                self.failed += 1;
                defmt::error!("smmu-case {=str}: FAIL {=str}", name, why);
            }
        }
    }

    fn next_seed(&mut self) -> u64 {
        self.seed += 1;
        self.seed
    }

    fn address(&self, index: usize) -> u64 {
        self.pages.address(index)
    }

    /// Installs `target` (through the physical guard) with the driver's hitless installer, and
    /// invalidates the TLB entries of the test's VMIDs.
    fn install(&mut self, target: &Ste) -> Result<InstallReport, &'static str> {
        let target = physical(target)?;
        let report = self
            .driver
            .install_ste(self.stream, &target)
            .map_err(|error| {
                defmt::error!("STE install: {}", error);
                "STE install failed"
            })?;
        defmt::debug!("STE installed: {}", report);
        self.invalidate_tlbs()?;
        Ok(report)
    }

    fn invalidate_tlbs(&mut self) -> Result<(), &'static str> {
        self.driver
            .submit_and_sync(&[
                Cmd::TlbiS12Vmall { vmid: VMID_STAGE2 },
                Cmd::TlbiS12Vmall { vmid: VMID_STAGE1 },
                Cmd::TlbiS12Vmall { vmid: VMID_DOMAIN },
            ])
            .map_err(|error| {
                defmt::error!("TLB invalidation: {}", error);
                "TLB invalidation failed"
            })
    }

    /// Installs `target` into the CD in page `page` (the stream's single CD, SSID 0).
    fn install_cd(&mut self, page: usize, target: &Cd) -> Result<InstallReport, &'static str> {
        let mut current = Cd::from_words(core::array::from_fn(|word| self.pages.read(page, word)));
        let mut writer = CdInstallWriter {
            driver: self.driver,
            pages: &self.pages,
            page,
            stream: self.stream,
        };
        let target = PhysicalCd::check(*target).map_err(|error| {
            defmt::error!("physical guard: {}", error);
            "the physical guard refused a made CD"
        })?;
        install_cd(&mut writer, &mut current, &target).map_err(|error| {
            defmt::error!("CD install: {}", error);
            "CD install failed"
        })
    }

    fn dma(&mut self, direction: Direction, address: u64, count: u64) -> Result<(), &'static str> {
        self.edu.dma(direction, address, 0, count).map_err(|error| {
            defmt::error!("edu DMA {} at {=u64:#x}: {}", direction, address, error);
            "edu DMA did not complete"
        })
    }

    /// Fills the source page with a fresh pattern, has the device read a page from
    /// `source_iova` and write it to `destination_iova`; returns the seed.
    fn copy_through(
        &mut self,
        source_iova: u64,
        destination_iova: u64,
    ) -> Result<u64, &'static str> {
        self.copy_from(page::SOURCE, source_iova, destination_iova)
    }

    /// As [`Self::copy_through`], with the pattern in page `source` (which `source_iova` must
    /// reach).
    fn copy_from(
        &mut self,
        source: usize,
        source_iova: u64,
        destination_iova: u64,
    ) -> Result<u64, &'static str> {
        let seed = self.next_seed();
        copy_pattern(
            &mut self.edu,
            &self.pages,
            source,
            (source_iova, destination_iova),
            seed,
        )?;
        Ok(seed)
    }

    /// Checks that page `index` holds the pattern of `seed`.
    fn expect_pattern(&self, index: usize, seed: u64) -> Result<(), &'static str> {
        match self
            .pages
            .first_difference(index, WORDS_PER_PAGE, pattern(seed))
        {
            None => Ok(()),
            Some((word, got)) => {
                defmt::warn!(
                    "page {=usize} word {=usize}: {=u64:#x}, expected {=u64:#x}",
                    index,
                    word,
                    got,
                    pattern(seed)(word)
                );
                Err("the data did not arrive where the translation points")
            }
        }
    }

    /// Checks that page `index` still holds only the canary.
    fn expect_canary(&self, index: usize) -> Result<(), &'static str> {
        match self
            .pages
            .first_difference(index, WORDS_PER_PAGE, |_| CANARY)
        {
            None => Ok(()),
            Some((word, got)) => {
                defmt::warn!(
                    "page {=usize} word {=usize} overwritten: {=u64:#x}",
                    index,
                    word,
                    got
                );
                Err("a blocked DMA reached memory")
            }
        }
    }

    /// Checks that page `index` still holds only zeros.
    fn expect_untouched(&self, index: usize) -> Result<(), &'static str> {
        match self.pages.first_difference(index, WORDS_PER_PAGE, |_| 0) {
            None => Ok(()),
            Some((word, got)) => {
                defmt::warn!(
                    "page {=usize} word {=usize} written: {=u64:#x}",
                    index,
                    word,
                    got
                );
                Err("the data also landed where the old translation points")
            }
        }
    }

    /// Takes everything from the event queue (bounded) and the global errors.
    fn drain(&mut self) -> Seen {
        let mut seen = Seen::default();
        for _ in 0..16 {
            let report = self.driver.drain_events(256, |intake| match intake {
                EventIntake::Event(event) => {
                    if seen.total < 8 {
                        defmt::info!(
                            "  SMMU event {} stream {=u32:#x} {=str} s2 {=bool} class {} input {=u64:#x} addr2 {}",
                            event.id,
                            event.sid.get(),
                            if event.rnw { "read" } else { "write" },
                            event.s2,
                            event.class,
                            event.input_addr.get(),
                            event.addr2
                        );
                    }
                    seen.total += 1;
                    let _ = seen.events.push(event);
                }
                EventIntake::Undecodable { record, error } => {
                    defmt::warn!("  SMMU event undecodable ({}): {}", error, record);
                    seen.anomalies += 1;
                }
                EventIntake::Overflowed => {
                    defmt::warn!("  SMMU event queue overflowed");
                    seen.anomalies += 1;
                }
            });
            match report {
                Ok(report) if report.remaining != 0 => {}
                Ok(_) => break,
                Err(error) => {
                    defmt::error!("draining events: {}", error);
                    seen.anomalies += 1;
                    break;
                }
            }
        }
        let globals = self.driver.handle_global_errors(|error| {
            defmt::warn!("  SMMU global error: {}", error);
            seen.anomalies += 1;
        });
        if let Err(error) = globals {
            defmt::error!("global errors: {}", error);
            seen.anomalies += 1;
        }
        seen
    }

    fn stage2_ste(&self, translation: &Stage2Translation) -> Ste {
        make_stage2_ste(translation)
    }

    /// Case 1: the device reads and writes through stage 2 at IPAs that differ from the
    /// buffers' physical addresses; the data arrives where stage 2 points.
    fn stage2_dma_translates(&mut self) -> Result<(), &'static str> {
        let ste = self.stage2_ste(&self.stage2_a);
        self.install(&ste)?;
        self.pages.fill(page::DESTINATION, |_| 0);
        let seed = self.copy_through(IPA_SOURCE, IPA_DESTINATION)?;
        self.expect_pattern(page::DESTINATION, seed)?;
        self.drain().expect_none()
    }

    /// Case 2: a write to an IOVA stage 2 does not map changes nothing (the IOVA is the
    /// canary's physical address, so a bypass would hit it) and is reported as F_TRANSLATION
    /// at stage 2 for the stream, with the faulting address (S2R = 1).
    fn unmapped_iova_faults(&mut self) -> Result<(), &'static str> {
        let ste = self.stage2_ste(&self.stage2_a);
        self.install(&ste)?;
        // Give the device buffer known content, so a write that got through would show.
        self.copy_through(IPA_SOURCE, IPA_DESTINATION)?;
        self.pages.fill(page::CANARY, |_| CANARY);
        let canary = self.address(page::CANARY);
        let _ = self.drain();
        self.dma(Direction::DeviceToRam, canary, BLOCKED_DMA_BYTES)?;
        self.expect_canary(page::CANARY)?;
        let seen = self.drain();
        let stream = self.stream;
        // QEMU reports each 4-byte access: 8 bytes give two records, in order, input addresses
        // canary and canary + 4, both naming the faulting IPA's page in word 3.
        seen.expect(EventId::FTranslation, 2, |event| {
            event.sid == stream
                && event.ssid.is_none()
                && event.s2
                && !event.rnw
                && event.class == FaultClass::Input
                && event.addr2 == EventAddress::Ipa(Ipa(canary))
        })?;
        let inputs_in_order = seen
            .events
            .iter()
            .zip((canary..).step_by(4))
            .all(|(event, expected)| event.input_addr.get() == expected);
        if !inputs_in_order {
            return Err("the events do not name the faulting addresses");
        }
        Ok(())
    }

    /// The two writes the blocking cases issue: to the canary's physical address (a bypass
    /// would land there) and to IPA_DESTINATION (stage 2 A, if still used, would land in
    /// DESTINATION). Both pages must keep the canary.
    fn blocked_writes(&mut self) -> Result<(), &'static str> {
        self.pages.fill(page::CANARY, |_| CANARY);
        self.pages.fill(page::DESTINATION, |_| CANARY);
        let canary = self.address(page::CANARY);
        self.dma(Direction::DeviceToRam, canary, BLOCKED_DMA_BYTES)?;
        self.dma(Direction::DeviceToRam, IPA_DESTINATION, BLOCKED_DMA_BYTES)?;
        self.expect_canary(page::CANARY)?;
        self.expect_canary(page::DESTINATION)
    }

    /// Case 3: an abort STE stops DMA before memory, silently (Config = abort records nothing).
    fn abort_ste_blocks(&mut self) -> Result<(), &'static str> {
        // Stage 2 A first, with the device buffer loaded and stage 2 A's translations cached.
        let ste = self.stage2_ste(&self.stage2_a);
        self.install(&ste)?;
        self.copy_through(IPA_SOURCE, IPA_DESTINATION)?;
        self.install(&make_abort_ste())?;
        let _ = self.drain();
        self.blocked_writes()?;
        self.drain().expect_none()
    }

    /// Case 4: a stream whose STE is invalid (V = 0) is blocked, and QEMU reports C_BAD_STE once
    /// per 4 bytes, for the stream (the architecture's answer to a V = 0 STE; the driver's fresh
    /// level-2 tables hold only such STEs).
    fn missing_ste_aborts(&mut self) -> Result<(), &'static str> {
        self.install(&Ste::INVALID)?;
        let _ = self.drain();
        self.blocked_writes()?;
        let seen = self.drain();
        let stream = self.stream;
        // Two 8-byte writes, one C_BAD_STE per 4 bytes. The record names the stream only:
        // C_BAD_STE carries no address (QEMU leaves those words zero).
        seen.expect(EventId::CBadSte, 2 * 2, |event| {
            event.sid == stream && event.ssid.is_none() && !event.s2
        })
    }

    /// Writes a level-1/2/3 stage-1 table chain in pages `l1`, `l2`, `l3` (which the SMMU
    /// finds at `l2_address` and `l3_address`: PAs for stage 1 alone, IPAs under nesting)
    /// mapping each `(iova, output)` page. Every IOVA must share the level-1 and level-2 entries.
    fn write_stage1_tables(
        &self,
        tables: [usize; 3],
        l2_address: u64,
        l3_address: u64,
        leaves: &[(u64, u64)],
    ) {
        let [l1, l2, l3] = tables;
        for index in tables {
            self.pages.fill(index, |_| 0);
        }
        for &(iova, output) in leaves {
            let index = |level_shift: u32| ((iova >> level_shift) & 511) as usize;
            self.pages.write(l1, index(30), l2_address | S1_TABLE);
            self.pages.write(l2, index(21), l3_address | S1_TABLE);
            self.pages.write(l3, index(12), output | S1_PAGE);
        }
        barrier();
    }

    fn stage1_parameters<A>(asid: Asid, ttb0: A) -> Stage1Parameters<A> {
        Stage1Parameters {
            asid,
            ttb0,
            t0sz: STAGE1_T0SZ,
            tg0: Granule::Size4K,
            ir0: Cacheability::WriteBackWriteAllocate,
            or0: Cacheability::WriteBackWriteAllocate,
            sh0: Shareability::InnerShareable,
            ips: AddressSize::Bits44,
            mair: STAGE1_MAIR,
        }
    }

    fn context_table<A>(pointer: A) -> ContextTableParameters<A> {
        ContextTableParameters {
            s1context_ptr: pointer,
            s1fmt: S1Fmt::Linear,
            // QEMU has no substreams (SSIDSIZE = 0): one CD.
            s1cdmax: 0,
            s1dss: S1Dss::Terminate,
            s1cir: Cacheability::WriteBackWriteAllocate,
            s1cor: Cacheability::WriteBackWriteAllocate,
            s1csh: Shareability::InnerShareable,
        }
    }

    /// Case 5a: stage 1 alone, with tables and a CD at physical addresses.
    fn stage1_translates(&mut self) -> Result<(), &'static str> {
        let features = *self.driver.features();
        let (source, destination) = (self.address(page::SOURCE), self.address(page::DESTINATION));
        self.write_stage1_tables(
            [page::S1_L1, page::S1_L2, page::S1_L3],
            self.address(page::S1_L2),
            self.address(page::S1_L3),
            &[(VA_SOURCE, source), (VA_DESTINATION, destination)],
        );
        let translation = Stage1Translation::new(
            Self::stage1_parameters(ASID_STAGE1, PhysAddr(self.address(page::S1_L1))),
            &features,
        )
        .map_err(|error| {
            defmt::error!("stage 1: {}", error);
            "stage-1 translation refused by make"
        })?;
        self.install_cd(page::S1_CD, &make_cd(&translation))?;
        let table = ContextTable::new(
            Self::context_table(PhysAddr(self.address(page::S1_CD))),
            &features,
        )
        .map_err(|_| "CD table refused by make")?;
        let ste = make_stage1_ste(&table, VMID_STAGE1, &features)
            .map_err(|_| "stage-1 STE refused by make")?;
        self.install(&ste)?;
        self.pages.fill(page::DESTINATION, |_| 0);
        let seed = self.copy_through(VA_SOURCE, VA_DESTINATION)?;
        self.expect_pattern(page::DESTINATION, seed)?;
        self.drain().expect_none()
    }

    /// Case 5b: stage 1 nested over stage 2 A. The STE's CD pointer, the CD's TTB0, every
    /// table pointer and every stage-1 output are IPAs, none equal to the physical address
    /// behind it: the SMMU must translate each through stage 2.
    fn nested_translates(&mut self) -> Result<(), &'static str> {
        let features = *self.driver.features();
        let area = |offset: u64| IPA_S1_AREA + offset * PAGE;
        self.write_stage1_tables(
            [page::NESTED_L1, page::NESTED_L2, page::NESTED_L3],
            area(2),
            area(3),
            &[(VA_SOURCE, IPA_SOURCE), (VA_DESTINATION, IPA_DESTINATION)],
        );
        let translation = Stage1Translation::new(
            Self::stage1_parameters(ASID_NESTED, Ipa(area(1))),
            &features,
        )
        .map_err(|error| {
            defmt::error!("nested stage 1: {}", error);
            "nested stage-1 translation refused by make"
        })?;
        self.install_cd(page::NESTED_CD, &make_cd(&translation))?;
        let table = ContextTable::new(Self::context_table(Ipa(area(0))), &features)
            .map_err(|_| "CD table refused by make")?;
        let ste = make_nested_ste(&table, &self.stage2_a).map_err(|error| {
            defmt::error!("nested STE: {}", error);
            "nested STE refused by make"
        })?;
        self.install(&ste)?;
        self.pages.fill(page::DESTINATION, |_| 0);
        let seed = self.copy_through(VA_SOURCE, VA_DESTINATION)?;
        self.expect_pattern(page::DESTINATION, seed)?;
        self.drain().expect_none()
    }

    /// Case 6: the live stage-2 STE moves from table A to table B (same VMID, new S2TTB):
    /// the installer must take the hitless path (one store, to qword 3, one sync). DMA runs
    /// through the switch: at each point of the install (after the store, after its sync) a
    /// transfer must land wholly through A or wholly through B, never fault nor land elsewhere.
    /// After the install and a TLB invalidation, DMA lands through B; nothing is reported.
    fn hitless_stage2_replace(&mut self) -> Result<(), &'static str> {
        let ste_a = self.stage2_ste(&self.stage2_a);
        let ste_b = physical(&self.stage2_ste(&self.stage2_b))?;
        self.install(&ste_a)?;
        self.pages.fill(page::DESTINATION, |_| 0);
        self.pages.fill(page::DESTINATION_B, |_| 0);
        let before = self.copy_through(IPA_SOURCE, IPA_DESTINATION)?;
        self.expect_pattern(page::DESTINATION, before)?;
        let Self {
            driver,
            edu,
            pages,
            stream,
            seed,
            ..
        } = self;
        let mut traffic = SwitchTraffic {
            edu,
            pages,
            seed,
            through_a: 0,
            through_b: 0,
            failure: None,
        };
        let report = driver
            .install_ste_observed(*stream, &ste_b, |point, _| traffic.probe(point))
            .map_err(|error| {
                defmt::error!("STE install: {}", error);
                "STE install failed"
            })?;
        defmt::info!(
            "  stage-2 replace: {}; DMA during it: {=u32} through A, {=u32} through B",
            report,
            traffic.through_a,
            traffic.through_b
        );
        if let Some(why) = traffic.failure {
            return Err(why);
        }
        if traffic.through_a + traffic.through_b != 2 * u32::from(report.syncs) {
            return Err("DMA did not run at every point of the install");
        }
        if report.path != (UpdatePath::Hitless { critical_qword: 3 })
            || report.writes != 1
            || report.syncs != 1
        {
            return Err("the installer did not take the one-store hitless path");
        }
        self.invalidate_tlbs()?;
        self.pages.fill(page::DESTINATION, |_| 0);
        self.pages.fill(page::DESTINATION_B, |_| 0);
        let after = self.copy_through(IPA_SOURCE, IPA_DESTINATION)?;
        self.expect_pattern(page::DESTINATION_B, after)?;
        self.expect_untouched(page::DESTINATION)?;
        self.drain().expect_none()
    }

    /// Case 7: an undefined opcode makes the SMMU stop with CERROR_ILL; the driver reports it
    /// (kind, index, opcode), acknowledges GERROR.CMDQ_ERR, and the queue and DMA keep working.
    fn illegal_command_recovered(&mut self) -> Result<(), &'static str> {
        let index = self.driver.command_queue_prod().index();
        let illegal = Command::from_words([u64::from(UNDEFINED_OPCODE), 0]);
        self.driver
            .submit_raw(&[illegal])
            .map_err(|_| "could not submit")?;
        let reported = self.driver.sync();
        defmt::info!("  sync after the illegal command: {}", reported);
        let expected = DriverError::CommandError {
            kind: CommandErrorKind::Illegal,
            index,
            opcode: UNDEFINED_OPCODE,
        };
        if reported != Err(expected) {
            return Err("the driver did not report CERROR_ILL at the command's index");
        }
        if self.driver.active_global_errors().cmdq_err() {
            return Err("GERROR.CMDQ_ERR is still active");
        }
        self.driver
            .sync()
            .map_err(|_| "a CMD_SYNC after recovery failed")?;
        // The stream still translates through stage 2 B (from the previous case).
        let ste_b = self.stage2_ste(&self.stage2_b);
        self.install(&ste_b)?;
        let seed = self.copy_through(IPA_SOURCE, IPA_DESTINATION)?;
        self.expect_pattern(page::DESTINATION_B, seed)?;
        self.drain().expect_none()
    }

    /// Case 8: an STE enabling stage 2 with S2AA64 = 0 (which makes QEMU abort) is refused by
    /// the physical guard, so no `PhysicalSte` (the only thing the driver installs) can be
    /// made of it; the STE in memory is unchanged, and the SMMU (so QEMU) still answers and
    /// translates afterwards.
    fn s2aa64_zero_refused(&mut self) -> Result<(), &'static str> {
        let mut bad = self.stage2_ste(&self.stage2_a);
        bad.set_s2aa64(false);
        if check_physical_ste(&bad) != Err(PhysicalEntryError::Stage2WithoutAArch64) {
            return Err("check_physical_ste accepted S2AA64 = 0");
        }
        let before = self
            .driver
            .read_ste(self.stream)
            .map_err(|_| "STE unreadable")?;
        let outcome = PhysicalSte::check(bad);
        defmt::info!("  PhysicalSte from S2AA64 = 0: {}", outcome);
        if outcome != Err(PhysicalEntryError::Stage2WithoutAArch64) {
            return Err("a PhysicalSte was made from an S2AA64 = 0 STE");
        }
        let after = self
            .driver
            .read_ste(self.stream)
            .map_err(|_| "STE unreadable")?;
        if before != after {
            return Err("the STE changed although nothing could be installed");
        }
        self.driver
            .sync()
            .map_err(|_| "the SMMU no longer answers CMD_SYNC")?;
        self.pages.fill(page::DESTINATION_B, |_| 0);
        let seed = self.copy_through(IPA_SOURCE, IPA_DESTINATION)?;
        self.expect_pattern(page::DESTINATION_B, seed)?;
        self.drain().expect_none()
    }

    /// Case 10: the unmap lifecycle of a `smmu::domain::Stage2Domain` against the SMMU. The
    /// domain maps the source and buffer A (pinning them), its STE is made from its
    /// parameters; after a DMA through it, buffer A cannot be released while mapped, nor after
    /// the unmap, nor after the invalidation was submitted. A proof from before the unmap is
    /// refused (the pending handed back); after a fresh sync the IOVA faults (F_TRANSLATION,
    /// buffer A untouched), completion unpins, and the release succeeds. The stream goes back
    /// to abort whatever the outcome: the domain's tables are not the test's to keep live.
    fn stage2_domain_unmap_pins(&mut self) -> Result<(), &'static str> {
        let outcome = self.domain_unmap_lifecycle();
        let restored = self.install(&make_abort_ste());
        outcome?;
        restored.map(|_| ())
    }

    fn domain_unmap_lifecycle(&mut self) -> Result<(), &'static str> {
        let features = *self.driver.features();
        let Some(tables) = DOMAIN_TABLES.take() else {
            return Err("the domain's table pool was already taken");
        };
        let source = PhysAddr(self.address(page::DOMAIN_SOURCE));
        let buffer_a = PhysAddr(self.address(page::DOMAIN_A));
        let page_a = PhysRange::new(buffer_a.0, PAGE);
        let mut counts = [0u16; page::DOMAIN_PAGES];
        let mut pins =
            PinTable::new(source, &mut counts, DOMAIN_BUDGET).map_err(|_| "pin table refused")?;
        let config = DomainConfig {
            vmid: VMID_DOMAIN,
            geometry: Stage2Geometry::QEMU_VIRT,
            walk: WalkAttributes::COHERENT,
            usage: Stage2Use::Stage2Only,
            record_faults: true,
            max_pages_per_call: DOMAIN_BUDGET,
        };
        config.geometry.check(&features).map_err(|error| {
            defmt::error!("domain geometry: {}", error);
            "the SMMU cannot walk the domain's geometry"
        })?;
        let mut domain = Stage2Domain::new(tables, config).map_err(|error| {
            defmt::error!("domain: {}", error);
            "domain refused"
        })?;
        for (ipa, pa) in [(IPA_DOMAIN_SOURCE, source), (IPA_DOMAIN_A, buffer_a)] {
            domain
                .map(&mut pins, Ipa(ipa), pa, PAGE, Permissions::RAM)
                .map_err(|error| {
                    defmt::error!("domain map {=u64:#x}: {}", ipa, error);
                    "domain map failed"
                })?;
        }
        let translation =
            Stage2Translation::new(domain.stage2_parameters(), &features).map_err(|error| {
                defmt::error!("domain STE: {}", error);
                "the domain's stage-2 parameters were refused by make"
            })?;
        self.install(&make_stage2_ste(&translation))?;

        self.pages.fill(page::DOMAIN_A, |_| 0);
        let seed = self.copy_from(page::DOMAIN_SOURCE, IPA_DOMAIN_SOURCE, IPA_DOMAIN_A)?;
        self.expect_pattern(page::DOMAIN_A, seed)?;
        self.drain().expect_none()?;
        expect_busy(&mut pins, page_a, "while mapped")?;

        let stale = self.driver.sync_with_proof().map_err(|error| {
            defmt::error!("sync: {}", error);
            "sync_with_proof failed"
        })?;
        let mut pending = domain.unmap(Ipa(IPA_DOMAIN_A), PAGE).map_err(|error| {
            defmt::error!("domain unmap: {}", error);
            "domain unmap failed"
        })?;
        if domain.translate(Ipa(IPA_DOMAIN_A)).is_some() {
            return Err("the unmapped IOVA still translates in the domain's table");
        }
        expect_busy(&mut pins, page_a, "after unmap")?;
        self.observe_stale_translation();

        let before = self.driver.command_queue_prod();
        pending.invalidate(self.driver).map_err(|error| {
            defmt::error!("invalidation: {}", error);
            "the domain's invalidation failed"
        })?;
        self.log_commands(before, self.driver.command_queue_prod());
        expect_busy(&mut pins, page_a, "after the invalidation was submitted")?;

        let pending = match domain.complete(&mut pins, pending, &stale) {
            Ok(_) => return Err("complete accepted a proof taken before the unmap"),
            Err(Refused {
                reason: reason @ CompletionError::StaleProof { .. },
                pending,
            }) => {
                defmt::info!("  proof from before the unmap refused: {}", reason);
                pending
            }
            Err(refused) => {
                defmt::error!("stale proof refused for: {}", refused.reason);
                return Err("a stale proof was refused for the wrong reason");
            }
        };
        if pending.ipa() != Ipa(IPA_DOMAIN_A) || pending.pages() != 1 {
            return Err("the refused pending came back changed");
        }
        expect_busy(&mut pins, page_a, "after the stale proof was refused")?;

        let proof = self.driver.sync_with_proof().map_err(|error| {
            defmt::error!("sync: {}", error);
            "sync_with_proof failed"
        })?;
        // The sync has completed the invalidation: the write must fault, not reach buffer A.
        self.pages.fill(page::DOMAIN_A, |_| CANARY);
        let _ = self.drain();
        self.dma(Direction::DeviceToRam, IPA_DOMAIN_A, BLOCKED_DMA_BYTES)?;
        self.expect_canary(page::DOMAIN_A)?;
        let stream = self.stream;
        self.drain().expect(EventId::FTranslation, 2, |event| {
            event.sid == stream
                && event.ssid.is_none()
                && event.s2
                && !event.rnw
                && event.class == FaultClass::Input
                && event.addr2 == EventAddress::Ipa(Ipa(IPA_DOMAIN_A))
        })?;

        let unpinned = domain
            .complete(&mut pins, pending, &proof)
            .map_err(|refused| {
                defmt::error!("complete: {}", refused.reason);
                "complete refused a fresh proof"
            })?;
        defmt::info!("  completed: {}", unpinned);
        if unpinned.pages != 1 || pins.state(buffer_a) != Some(PageState::Pinned(0)) {
            return Err("completion did not unpin buffer A");
        }
        if domain.pending_pages() != 0 || domain.mapped_pages() != 1 {
            return Err("the domain's page counts are wrong after completion");
        }
        pins.release(page_a).map_err(|error| {
            defmt::error!("release after completion: {}", error);
            "buffer A could not be released after completion"
        })?;
        if pins.state(buffer_a) != Some(PageState::Released) {
            return Err("buffer A is not released");
        }
        // The source stays mapped and pinned: the stream goes back to abort, the pin table's
        // storage ends with this case, and the domain's tables are never freed.
        Ok(())
    }

    /// Not a check (the architecture lets an SMMU use or drop a cached translation until it
    /// is invalidated): logs whether a write to buffer A's IOVA, unmapped but not yet
    /// invalidated, still reached buffer A. If it did, the SMMU cached the translation, which
    /// is why the page stays pinned, and why the blocked write later proves the invalidation.
    fn observe_stale_translation(&mut self) {
        self.pages.fill(page::DOMAIN_A, |_| CANARY);
        let _ = self.drain();
        if self
            .dma(Direction::DeviceToRam, IPA_DOMAIN_A, BLOCKED_DMA_BYTES)
            .is_err()
        {
            return;
        }
        let reached = self
            .pages
            .first_difference(page::DOMAIN_A, WORDS_PER_PAGE, |_| CANARY)
            .is_some();
        let seen = self.drain();
        defmt::info!(
            "  before invalidation, a write to the unmapped IOVA {=str} ({=u32} events)",
            if reached {
                "reached buffer A (translation still cached)"
            } else {
                "was blocked"
            },
            seen.total
        );
    }

    /// Logs the commands between PROD values `from` and `to`, read back from the queue.
    fn log_commands(&self, from: QueuePointer, to: QueuePointer) {
        let base = QueueBase(self.driver.registers().read64(offset::CMDQ_BASE)).addr();
        let entries = self.driver.command_queue_entries();
        defmt::info!(
            "  invalidation: {=u32} commands (IDR3.RIL {=bool})",
            to.index().wrapping_sub(from.index()) % entries.max(1),
            self.driver.features().ril
        );
        let mut at = from;
        // At most one lap of the queue.
        for _ in 0..entries {
            if at.index() == to.index() && at.wrap() == to.wrap() {
                break;
            }
            let entry = (base.0 + u64::from(at.index()) * 16) as *const u64;
            // SAFETY: CMDQ_BASE names the driver's command queue, a static array in the
            // hypervisor's image, identity mapped at EL2, of `entries` 16-byte entries; the
            // index is below `entries`. The SMMU only reads it and the driver writes it only
            // under the lock this test holds, so volatile loads read plain, settled memory.
            let words = unsafe {
                [
                    core::ptr::read_volatile(entry),
                    core::ptr::read_volatile(entry.wrapping_add(1)),
                ]
            };
            match Command::from_words(words).decode() {
                Ok(command) => defmt::info!("  cmdq[{=u32}]: {}", at.index(), command),
                Err(error) => defmt::warn!("  cmdq[{=u32}]: undecodable ({})", at.index(), error),
            }
            at = at.incremented();
        }
    }

    /// Puts the stream back to abort, invalidates, and drains what is left. False if that
    /// failed.
    fn restore_abort(&mut self) -> bool {
        let restored = self.install(&make_abort_ste());
        let _ = self.drain();
        match restored {
            Ok(_) => {
                defmt::info!(
                    "smmu-conformance: stream {=u32:#x} back to abort",
                    self.stream.get()
                );
                true
            }
            Err(why) => {
                defmt::error!("smmu-conformance: could not restore abort: {=str}", why);
                false
            }
        }
    }
}
