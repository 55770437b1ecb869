//! The state the cases share and the steps they are written in: test pages and patterns,
//! STE and CD installation through the `smmu` crate's installer, DMA through the harness, and
//! event and page-request intake through the driver.
//!
//! This module owns [`Suite`] and the outcome types ([`Stop`], [`CaseResult`]). It does not
//! decide what a case checks.

use heapless::Vec;
use smmu::cd::Cd;
use smmu::command::Cmd;
use smmu::driver::{Driver, Error as DriverError, EventIntake, PriIntake};
use smmu::entry::install::{
    EntryWriter, InstallReport, PhysicalCd, PhysicalEntryError, PhysicalSte, install_cd,
};
use smmu::entry::make::{Stage2Parameters, Stage2Translation, StartLevel};
use smmu::event::Event;
use smmu::page_request::PageRequest;
use smmu::ste::Ste;
use smmu::translation::{AddressSize, Cacheability, Granule, Shareability};
use smmu::{PhysAddr, StreamId, SubstreamId, Vmid};

use crate::harness::{Direction, DmaResult, Harness, HarnessError, MIN_PAGES};

/// Bytes per page.
pub const PAGE: u64 = 4096;
/// 64-bit words per page.
pub const WORDS: usize = 512;

/// Test pages with a fixed role, by index. Pages from [`page::FIRST_FREE`] on are handed out
/// per case for tables.
pub mod page {
    /// What DMA reads.
    pub const SOURCE: usize = 0;
    /// Where translated DMA writes land.
    pub const DESTINATION: usize = 1;
    /// A second destination (replaced translations, other address spaces).
    pub const DESTINATION_B: usize = 2;
    /// A page nothing maps: it must never change.
    pub const CANARY: usize = 3;
    /// The stage-2 domain case's buffers: the source, and buffer A (contiguous, in this
    /// order, for its pin table).
    pub const DOMAIN_SOURCE: usize = 4;
    /// See [`DOMAIN_SOURCE`].
    pub const DOMAIN_A: usize = 5;
    /// A page for MSIs and other scratch writes.
    pub const SCRATCH: usize = 6;
    /// The first page handed out by [`Suite::allocate`](super::Suite::allocate).
    pub const FIRST_FREE: usize = 7;
}

/// Where stage 2 shows test page `n` at IPA `IPA_WINDOW + n * PAGE`: far from any RAM, so a
/// translation that did not happen cannot land in a test page.
pub const IPA_WINDOW: u64 = 0x40_0000_0000;
/// Where stage 1 shows output `n` at VA `VA_WINDOW + n * PAGE`.
pub const VA_WINDOW: u64 = 0x7_0000_0000;

/// VMIDs and ASIDs the suite uses (nothing else runs while it does).
pub mod ids {
    use smmu::{Asid, Vmid};
    /// Stage-2 and nested streams.
    pub const VMID: Vmid = Vmid(0x51);
    /// Stage-1-only streams (their TLB entries are tagged with it).
    pub const VMID_STAGE1: Vmid = Vmid(0x52);
    /// The stage-2 domain case.
    pub const VMID_DOMAIN: Vmid = Vmid(0x53);
    /// The first stage-1 address space.
    pub const ASID: Asid = Asid(1);
    /// A second stage-1 address space.
    pub const ASID_B: Asid = Asid(2);
}

/// What the canary page holds.
pub const CANARY: u64 = 0xcaca_caca_caca_caca;

/// Why a case stopped before passing.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Stop {
    /// A check failed: what was expected did not happen.
    Fail(&'static str),
    /// The platform lacks what the case needs.
    NotApplicable(&'static str),
}

/// What a case returns.
pub type CaseResult = Result<(), Stop>;

/// `Err(Stop::Fail(why))` unless `condition`.
///
/// # Errors
///
/// [`Stop::Fail`].
pub fn check(condition: bool, why: &'static str) -> CaseResult {
    if condition {
        Ok(())
    } else {
        Err(Stop::Fail(why))
    }
}

/// `Err(Stop::NotApplicable(why))` unless `condition`.
///
/// # Errors
///
/// [`Stop::NotApplicable`].
pub fn require(condition: bool, why: &'static str) -> CaseResult {
    if condition {
        Ok(())
    } else {
        Err(Stop::NotApplicable(why))
    }
}

/// The most events one drain keeps for inspection.
pub const SEEN: usize = 64;

/// What one drain of the event queue and GERROR found.
#[derive(Debug, Default)]
pub struct Seen {
    /// The decoded events, the first [`SEEN`].
    pub events: Vec<Event, SEEN>,
    /// How many decoded events there were.
    pub total: u32,
    /// Overflows reported (EVENTQ_PROD.OVFLG).
    pub overflows: u32,
    /// Undecodable records.
    pub undecodable: u32,
    /// Global errors other than a command error, as GERROR bits.
    pub global_errors: u32,
}

impl Seen {
    /// Checks that exactly `count` events were seen, every one satisfying `each`, and nothing
    /// else went wrong.
    ///
    /// # Errors
    ///
    /// [`Stop::Fail`] naming what differs.
    pub fn expect(&self, count: u32, each: impl Fn(&Event) -> bool) -> CaseResult {
        check(
            self.overflows == 0 && self.undecodable == 0 && self.global_errors == 0,
            "an undecodable event, an overflow or a global error",
        )?;
        check(self.total == count, "wrong number of events")?;
        check(self.events.iter().all(each), "an event does not match")
    }

    /// Checks that nothing was seen.
    ///
    /// # Errors
    ///
    /// [`Stop::Fail`].
    pub fn expect_none(&self) -> CaseResult {
        self.expect(0, |_| true)
    }
}

/// The test pattern of `seed`: different for every seed and every word.
pub fn pattern(seed: u64) -> impl Fn(usize) -> u64 {
    move |word| seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (word as u64).wrapping_mul(0x0101_0101)
}

/// The suite's view of one harness while cases run.
pub struct Suite<'h, H: Harness> {
    /// The harness.
    pub h: &'h mut H,
    next_page: usize,
    seed: u64,
}

impl<H: Harness> core::fmt::Debug for Suite<'_, H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Suite")
            .field("next_page", &self.next_page)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

/// Why [`Suite::try_install`] installed nothing, or stopped part way.
#[derive(Clone, Copy, Debug)]
pub enum TryInstallError {
    /// The target failed the physical guard: it cannot become a `PhysicalSte`, so nothing
    /// was stored.
    Refused(PhysicalEntryError),
    /// The driver's install failed (a store or a sync).
    Driver(DriverError),
}

/// The installer's stores and syncs for the CD in slot `slot` of a CD table page, which the
/// SMMU knows as SubstreamID `ssid`.
struct CdInstallWriter<'a, H: Harness> {
    harness: &'a mut H,
    page: usize,
    slot: usize,
    ssid: SubstreamId,
    stream: StreamId,
}

impl<H: Harness> EntryWriter for CdInstallWriter<'_, H> {
    type Error = DriverError;

    fn write_qword(&mut self, word: usize, value: u64) {
        self.harness.barrier();
        self.harness
            .write_word(self.page, self.slot * 8 + word, value);
    }

    fn sync(&mut self) -> Result<(), DriverError> {
        self.harness.barrier();
        self.harness.driver().submit_and_sync(&[Cmd::CfgiCd {
            sid: self.stream,
            ssid: self.ssid,
            leaf: true,
        }])
    }
}

impl<'h, H: Harness> Suite<'h, H> {
    /// A suite over `h`.
    ///
    /// # Errors
    ///
    /// [`Stop::NotApplicable`] if the harness has fewer than [`MIN_PAGES`] test pages.
    pub fn new(h: &'h mut H) -> Result<Self, Stop> {
        require(
            h.page_count() >= MIN_PAGES,
            "fewer test pages than the suite needs",
        )?;
        Ok(Self {
            h,
            next_page: page::FIRST_FREE,
            seed: 1,
        })
    }

    /// Gets the suite ready for the next case: table pages free again, stray events and
    /// global errors taken.
    pub fn begin_case(&mut self) -> Seen {
        self.next_page = page::FIRST_FREE;
        self.drain()
    }

    /// The driver.
    pub fn driver(&mut self) -> &mut Driver<H::Registers, H::Memory, H::Platform> {
        self.h.driver()
    }

    /// The stream under test.
    pub fn stream(&self) -> StreamId {
        self.h.stream()
    }

    /// A fresh seed.
    pub fn next_seed(&mut self) -> u64 {
        self.seed += 1;
        self.seed
    }

    /// The physical address of test page `index`.
    pub fn pa(&self, index: usize) -> u64 {
        self.h.page_address(index).0
    }

    /// The IPA stage 2 shows test page `index` at (see [`Suite::map_window`]).
    #[must_use]
    pub const fn ipa(index: usize) -> u64 {
        IPA_WINDOW + index as u64 * PAGE
    }

    /// The VA stage 1 shows output `index` at.
    #[must_use]
    pub const fn va(index: usize) -> u64 {
        VA_WINDOW + index as u64 * PAGE
    }

    /// A zeroed test page for this case.
    ///
    /// # Errors
    ///
    /// [`Stop::NotApplicable`] when the pages run out.
    pub fn allocate(&mut self) -> Result<usize, Stop> {
        let index = self.next_page;
        require(index < self.h.page_count(), "the test pages ran out")?;
        self.next_page += 1;
        self.fill(index, |_| 0);
        Ok(index)
    }

    /// Fills page `index` with `value(word)`.
    pub fn fill(&mut self, index: usize, value: impl Fn(usize) -> u64) {
        for word in 0..WORDS {
            self.h.write_word(index, word, value(word));
        }
        self.h.barrier();
    }

    /// The first of the first `words` words of page `index` that differs from `value`.
    pub fn first_difference(
        &self,
        index: usize,
        words: usize,
        value: impl Fn(usize) -> u64,
    ) -> Option<(usize, u64)> {
        self.h.barrier();
        (0..words.min(WORDS))
            .map(|word| (word, self.h.read_word(index, word)))
            .find(|&(word, got)| got != value(word))
    }

    /// Checks that page `index` holds the pattern of `seed`.
    ///
    /// # Errors
    ///
    /// [`Stop::Fail`].
    pub fn expect_pattern(&mut self, index: usize, seed: u64) -> CaseResult {
        match self.first_difference(index, WORDS, pattern(seed)) {
            None => Ok(()),
            Some((word, got)) => {
                self.h.note(
                    "page, word, value, expected",
                    &[index as u64, word as u64, got, pattern(seed)(word)],
                );
                Err(Stop::Fail(
                    "the data did not arrive where the translation points",
                ))
            }
        }
    }

    /// Checks that page `index` still holds only the canary.
    ///
    /// # Errors
    ///
    /// [`Stop::Fail`].
    pub fn expect_canary(&mut self, index: usize) -> CaseResult {
        match self.first_difference(index, WORDS, |_| CANARY) {
            None => Ok(()),
            Some((word, got)) => {
                self.h.note(
                    "page, word, overwritten with",
                    &[index as u64, word as u64, got],
                );
                Err(Stop::Fail("a blocked DMA reached memory"))
            }
        }
    }

    /// A DMA through the harness.
    ///
    /// # Errors
    ///
    /// [`Stop::NotApplicable`] for a substream the device cannot tag, [`Stop::Fail`] if the
    /// device did not complete.
    pub fn dma(
        &mut self,
        direction: Direction,
        iova: u64,
        length: u64,
        ssid: Option<SubstreamId>,
    ) -> Result<DmaResult, Stop> {
        self.h
            .dma(direction, iova, length, ssid)
            .map_err(|error| match error {
                HarnessError::Unsupported => Stop::NotApplicable("the device cannot tag a PASID"),
                HarnessError::DeviceFailed => Stop::Fail("the DMA did not complete"),
            })
    }

    /// Fills `source` with a fresh pattern, has the device read a page from `source_iova` and
    /// write it to `destination_iova` (both with `ssid`); returns the seed.
    ///
    /// # Errors
    ///
    /// As [`Suite::dma`].
    pub fn copy(
        &mut self,
        source: usize,
        source_iova: u64,
        destination_iova: u64,
        ssid: Option<SubstreamId>,
    ) -> Result<u64, Stop> {
        let seed = self.next_seed();
        self.fill(source, pattern(seed));
        self.dma(Direction::RamToDevice, source_iova, PAGE, ssid)?;
        self.dma(Direction::DeviceToRam, destination_iova, PAGE, ssid)?;
        Ok(seed)
    }

    /// How many faults a blocked transfer of `bytes` gives on this platform.
    pub fn faults_for(&self, bytes: u64) -> u32 {
        u32::try_from(bytes.div_ceil(self.h.transaction_bytes().max(1))).unwrap_or(u32::MAX)
    }

    /// Takes everything from the event queue (bounded) and acknowledges global errors.
    pub fn drain(&mut self) -> Seen {
        let mut seen = Seen::default();
        for _ in 0..64 {
            let report = self.h.driver().drain_events(256, |intake| match intake {
                EventIntake::Event(event) => {
                    seen.total += 1;
                    let _ = seen.events.push(event);
                }
                EventIntake::Undecodable { .. } => seen.undecodable += 1,
                EventIntake::Overflowed => seen.overflows += 1,
            });
            match report {
                Ok(report) if report.remaining != 0 => {}
                Ok(_) => break,
                Err(_) => {
                    seen.undecodable += 1;
                    break;
                }
            }
        }
        let mut errors = 0;
        let handled = self.h.driver().handle_global_errors(|error| {
            if !matches!(error, smmu::driver::GlobalError::Command(_)) {
                errors += 1;
            }
        });
        let active = handled.map_or(u32::MAX, |gerror| {
            gerror.0 & !smmu::registers::Gerror::default().with_cmdq_err(true).0
        });
        seen.global_errors = if errors == 0 { 0 } else { active };
        seen
    }

    /// Takes up to `N` page requests from the PRI queue; `Err` if there is none in use.
    ///
    /// # Errors
    ///
    /// [`Stop::NotApplicable`] without a PRI queue.
    pub fn drain_page_requests<const N: usize>(
        &mut self,
    ) -> Result<(Vec<PageRequest, N>, u32), Stop> {
        let mut requests = Vec::new();
        let mut overflows = 0;
        let report =
            self.h
                .driver()
                .drain_page_requests(
                    u32::try_from(N).unwrap_or(u32::MAX),
                    |intake| match intake {
                        PriIntake::Request(request) => {
                            let _ = requests.push(request);
                        }
                        PriIntake::Overflowed => overflows += 1,
                        PriIntake::Undecodable { .. } => {}
                    },
                );
        report.map_err(|_| Stop::NotApplicable("no PRI queue"))?;
        Ok((requests, overflows))
    }

    /// Installs `target` on the stream with the driver's hitless installer, or says why not.
    pub fn try_install(
        &mut self,
        target: &Ste,
    ) -> Result<Result<InstallReport, TryInstallError>, Stop> {
        let stream = self.stream();
        let target = match PhysicalSte::check(*target) {
            Ok(target) => target,
            Err(error) => return Ok(Err(TryInstallError::Refused(error))),
        };
        Ok(self
            .h
            .driver()
            .install_ste(stream, &target)
            .map_err(TryInstallError::Driver))
    }

    /// Installs `target` and invalidates the TLB entries of the suite's VMIDs.
    ///
    /// # Errors
    ///
    /// [`Stop::Fail`] if the install or the invalidation failed.
    pub fn install(&mut self, target: &Ste) -> Result<InstallReport, Stop> {
        let report = self
            .try_install(target)?
            .map_err(|_| Stop::Fail("STE install failed"))?;
        self.invalidate_tlbs()?;
        Ok(report)
    }

    /// TLBI_S12_VMALL for each of the suite's VMIDs, and a sync.
    ///
    /// # Errors
    ///
    /// [`Stop::Fail`].
    pub fn invalidate_tlbs(&mut self) -> CaseResult {
        self.h
            .driver()
            .submit_and_sync(&[
                Cmd::TlbiS12Vmall { vmid: ids::VMID },
                Cmd::TlbiS12Vmall {
                    vmid: ids::VMID_STAGE1,
                },
                Cmd::TlbiS12Vmall {
                    vmid: ids::VMID_DOMAIN,
                },
            ])
            .map_err(|_| Stop::Fail("TLB invalidation failed"))
    }

    /// Submits `commands` and a sync.
    ///
    /// # Errors
    ///
    /// [`Stop::Fail`].
    pub fn submit_and_sync(&mut self, commands: &[Cmd]) -> CaseResult {
        self.h
            .driver()
            .submit_and_sync(commands)
            .map_err(|_| Stop::Fail("a command or its sync failed"))
    }

    /// Installs `target` as CD `index` of the (linear) CD table in page `table`: CFGI_CD for
    /// `index` and a sync after each step.
    ///
    /// # Errors
    ///
    /// [`Stop::Fail`].
    pub fn install_cd(&mut self, table: usize, index: usize, target: &Cd) -> CaseResult {
        let ssid = SubstreamId(u32::try_from(index).unwrap_or(0));
        self.install_cd_at(table, index, ssid, target)
    }

    /// Installs `target` in slot `slot` of the CD table page `table`, which the SMMU reaches as
    /// SubstreamID `ssid` (a leaf table of a two-level CD table).
    ///
    /// # Errors
    ///
    /// [`Stop::Fail`].
    pub fn install_cd_at(
        &mut self,
        table: usize,
        slot: usize,
        ssid: SubstreamId,
        target: &Cd,
    ) -> CaseResult {
        let mut current = Cd::from_words(core::array::from_fn(|word| {
            self.h.read_word(table, slot * 8 + word)
        }));
        let stream = self.stream();
        let mut writer = CdInstallWriter {
            harness: self.h,
            page: table,
            slot,
            ssid,
            stream,
        };
        let target = PhysicalCd::check(*target)
            .map_err(|_| Stop::Fail("the CD fails the physical guard"))?;
        install_cd(&mut writer, &mut current, &target)
            .map(|_| ())
            .map_err(|_| Stop::Fail("CD install failed"))
    }

    /// Writes a CD's words directly (no installer guard): for CDs the installer would refuse.
    pub fn write_cd_words(&mut self, table: usize, index: usize, cd: &Cd) {
        for (word, value) in cd.words().into_iter().enumerate() {
            self.h.write_word(table, index * 8 + word, value);
        }
        self.h.barrier();
    }

    /// The stage-2 translation the suite uses, rooted at page `root`: 4 KiB, 39-bit IPAs from
    /// level 1, 44-bit output, faults recorded.
    ///
    /// # Errors
    ///
    /// [`Stop::Fail`] if `smmu::entry::make` refuses it.
    pub fn stage2(&mut self, root: usize, vmid: Vmid) -> Result<Stage2Translation, Stop> {
        let features = *self.h.driver().features();
        Stage2Translation::new(
            Stage2Parameters {
                vmid,
                s2ttb: PhysAddr(self.pa(root)),
                s2t0sz: 25,
                s2sl0: StartLevel::Level1,
                s2tg: Granule::Size4K,
                s2ps: AddressSize::Bits44,
                s2ir0: Cacheability::WriteBackWriteAllocate,
                s2or0: Cacheability::WriteBackWriteAllocate,
                s2sh0: Shareability::InnerShareable,
                s2r: true,
                s2affd: false,
                s2ptw: false,
            },
            &features,
        )
        .map_err(|_| Stop::Fail("the stage-2 translation was refused by make"))
    }
}
