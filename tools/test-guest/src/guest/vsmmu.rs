//! `vsmmu` mode: the guest drives the SMMUv3 it is given with its own minimal driver, and checks
//! what an ordinary or a hostile guest must see.
//!
//! Under the hypervisor that SMMU is the virtual one (stage 1 only, nested over the hypervisor's
//! stage 2); on QEMU alone (`qemu-system-aarch64 -M virt,iommu=smmuv3 -kernel test-guest
//! -append vsmmu`, no hypervisor) it is QEMU's own SMMUv3. The driver reads the ID registers and
//! adapts to either: stream table format (linear, then two-level where IDR0.ST_LEVEL offers it;
//! never back, because QEMU keeps walking a two-level table once STRTAB_BASE_CFG.FMT was 1),
//! queue sizes (IDR1), output size (IDR5), MSI or not (IDR0.MSI), stage 2 or not (IDR0.S2P),
//! cache maintenance when the SMMU is not coherent (IDR0.COHACC).
//!
//! Everything the SMMU reads or writes lives in this module's statics, in the guest's RAM: the
//! stream table (256 STEs, the PCIe iommu-map's stream IDs 0 to 0xff, used linearly or behind a
//! level-1 table), the command and event queues, the CDs, three levels of stage-1 tables, the
//! pages DMA reaches and the words CMD_SYNC's MSIs write. Every poll is bounded. Register
//! accesses are single 32- or 64-bit loads and stores without writeback (so a hypervisor can
//! decode them from the syndrome).
//!
//! The checks, in order (each needs the previous ones' SMMU state):
//!
//! 1. `vsmmu-probe`: the ID registers (stage 1, AArch64 tables, a 4 KiB granule), CR0ACK
//!    following CR0, the GBPA update protocol, queue and stream table registers reading back
//!    what was written; then the SMMU is enabled (queues, invalidate all, SMMUEN).
//! 2. `nested-translation-edu`: stream 8 (edu) translates through a stage-1 CD and tables in
//!    guest RAM: IOVAs at 0x1_0000_0000 reach exactly their pages in both directions, with
//!    CMD_SYNC completed by an MSI into guest RAM (when IDR0.MSI) and by polling CMDQ_CONS; an
//!    unmapped IOVA moves no data and gives F_TRANSLATION (stream 8, the IOVA, RnW, stage 1).
//! 3. `invalid-ste-c-bad-ste`: an STE with V=0 gives C_BAD_STE, a reserved Config (0b001)
//!    aborts silently (IHI 0070 5.2: "behaves as 0b000"), and, on an SMMU without stage 2, a
//!    stage-2 Config is ILLEGAL (C_BAD_STE); no DMA lands in any case.
//! 4. `illegal-command-cerror-ill`: an undefined opcode stops the command queue at its index
//!    with CMDQ_CONS.ERR = CERROR_ILL and GERROR.CMDQ_ERR toggled; nothing after it runs until
//!    the guest replaces it and acknowledges through GERRORN; then the rest runs.
//! 5. `pointers-at-hypervisor-memory`: the stream table, a CD, a stage-1 table, the command
//!    queue, the event queue and a sync MSI placed at memory that is not the guest's (the
//!    hypervisor's device tree and image when the guest's RAM starts above them, and always
//!    the first address past the guest's RAM): each gives the outcome the architecture names
//!    for an access that aborts (F_STE_FETCH, F_CD_FETCH, F_WALK_EABT, CERROR_ABT,
//!    GERROR.EVENTQ_ABT_ERR, GERROR.MSI_CMDQ_ABT_ERR) and edu's buffer receives none of it. A
//!    write that got through is caught by the hypervisor's fingerprints at power-off.
//!
//! Each check prints `GUEST: PASS name` or `GUEST: FAIL name: why`, with `GUEST: INFO` lines for
//! what it saw (the ID registers, each event seen, each sub-case), and the mode ends with
//! `GUEST VERDICT: PASS 5 checks` or `GUEST VERDICT: FAIL n of 5 checks failed`.

use super::{EDU_BUFFER, Outcome, edu_dma, edu_present};
use core::arch::asm;
use core::fmt::Write;

/// What the guest knows of its platform, from its device tree.
#[derive(Clone, Copy, Debug)]
pub(super) struct Platform {
    /// The `arm,smmu-v3` node's first register region.
    pub(super) smmu: Option<u64>,
    /// The first RAM bank's base.
    pub(super) ram_base: Option<u64>,
    /// The end of the last RAM bank.
    pub(super) ram_end: Option<u64>,
    /// The guest was loaded by QEMU itself (no hypervisor), so the SMMU is QEMU's: its known
    /// departures from the architecture are reported as such (`GUEST: INFO QEMU deviation`)
    /// instead of failing a check. Under a hypervisor every one of them fails.
    pub(super) qemu_alone: bool,
}

/// Register offsets (page 0, except the event queue pointers on page 1).
mod reg {
    pub(super) const IDR0: usize = 0x00;
    pub(super) const IDR1: usize = 0x04;
    pub(super) const IDR3: usize = 0x0c;
    pub(super) const IDR5: usize = 0x14;
    pub(super) const AIDR: usize = 0x1c;
    pub(super) const CR0: usize = 0x20;
    pub(super) const CR0ACK: usize = 0x24;
    pub(super) const CR1: usize = 0x28;
    pub(super) const CR2: usize = 0x2c;
    pub(super) const GBPA: usize = 0x44;
    pub(super) const IRQ_CTRL: usize = 0x50;
    pub(super) const IRQ_CTRLACK: usize = 0x54;
    pub(super) const GERROR: usize = 0x60;
    pub(super) const GERRORN: usize = 0x64;
    pub(super) const STRTAB_BASE: usize = 0x80;
    pub(super) const STRTAB_BASE_CFG: usize = 0x88;
    pub(super) const CMDQ_BASE: usize = 0x90;
    pub(super) const CMDQ_PROD: usize = 0x98;
    pub(super) const CMDQ_CONS: usize = 0x9c;
    pub(super) const EVTQ_BASE: usize = 0xa0;
    pub(super) const EVTQ_PROD: usize = 0x1_00a8;
    pub(super) const EVTQ_CONS: usize = 0x1_00ac;
}

/// CR0 bits.
const SMMUEN: u32 = 1 << 0;
const EVTQEN: u32 = 1 << 2;
const CMDQEN: u32 = 1 << 3;
/// GBPA bits.
const GBPA_UPDATE: u32 = 1 << 31;
const GBPA_ABORT: u32 = 1 << 20;
/// GERROR bits.
const CMDQ_ERR: u32 = 1 << 0;
const EVTQ_ABT_ERR: u32 = 1 << 2;
const MSI_CMDQ_ABT_ERR: u32 = 1 << 4;
/// CMDQ_CONS.ERR values.
const CERROR_ILL: u32 = 1;
const CERROR_ABT: u32 = 2;
/// The queue overflow flag (event queue pointers).
const OVFLG: u32 = 1 << 31;
/// Read/write-allocate hint of STRTAB_BASE and the queue bases.
const RA: u64 = 1 << 62;

/// Event record IDs.
const F_STE_FETCH: u8 = 0x03;
const C_BAD_STE: u8 = 0x04;
const F_CD_FETCH: u8 = 0x09;
const F_WALK_EABT: u8 = 0x0b;
const F_TRANSLATION: u8 = 0x10;
/// Event CLASS values.
const CLASS_TT: u8 = 1;
const CLASS_IN: u8 = 2;

/// edu's requester ID 00:01.0, through the iommu-map (identity for 0..0xff).
const EDU_STREAM: u32 = 8;
/// An opcode the architecture does not define (the conformance suite uses it too).
const UNDEFINED_OPCODE: u64 = 0x7f;

/// The IOVA window: far from guest physical addresses, so that a DMA that bypassed
/// translation could not land in guest RAM.
const IOVA_BASE: u64 = 0x1_0000_0000;
/// Mapped to [`PAGE_B`] (the higher guest page, at the lower IOVA).
const IOVA_B: u64 = IOVA_BASE;
/// Mapped to [`PAGE_A`].
const IOVA_A: u64 = IOVA_BASE + 0x1000;
/// Not mapped at stage 1 (the level-3 entry after the two pages is invalid).
const IOVA_UNMAPPED: u64 = IOVA_BASE + 0x2000;
/// T0SZ of every CD: 39-bit input addresses, walks start at level 1 with a 4 KiB granule.
const T0SZ: u64 = 25;

/// Polls of a register before giving up (each is a trap under the hypervisor).
const REGISTER_POLLS: u32 = 1_000_000;
/// Polls of an MSI word in memory before giving up.
const MSI_POLLS: u32 = 2_000_000;
/// Polls of the event queue after a CMD_SYNC said every event was visible.
const LATE_EVENT_POLLS: u32 = 10_000;

/// Bytes of each DMA aimed at a hostile configuration: QEMU records one event per 4 bytes,
/// so 16 records, well inside the event queue.
const HOSTILE_DMA_BYTES: u64 = 64;

const STREAMS: usize = 256;
const STREAMS_LOG2: u32 = 8;
/// Two-level stream table: 2^6 STEs (4 KiB) per level-2 table, four level-1 descriptors.
const SPLIT: u32 = 6;
/// The largest queues this driver uses: 256 commands, 128 events (4 KiB each).
const MAX_CMDQ_LOG2: u32 = 8;
const MAX_EVTQ_LOG2: u32 = 7;

#[repr(C, align(16384))]
struct StreamTable([[u64; 8]; STREAMS]);

#[repr(C, align(4096))]
struct Page([u64; 512]);

const ZERO_PAGE: Page = Page([0; 512]);

static mut STREAM_TABLE: StreamTable = StreamTable([[0; 8]; STREAMS]);
static mut LEVEL1_STREAM_TABLE: Page = ZERO_PAGE;
static mut COMMANDS: Page = ZERO_PAGE;
static mut EVENTS: Page = ZERO_PAGE;
/// CDs, 64 bytes each: slot 0 the live one, slot 1 the hostile one.
static mut CONTEXTS: Page = ZERO_PAGE;
/// Stage-1 tables: levels 1, 2 and 3.
static mut STAGE1: [Page; 3] = [ZERO_PAGE, ZERO_PAGE, ZERO_PAGE];
/// DMA pages: sentinel, A, sentinel, B, sentinel.
static mut DATA: [Page; 5] = [ZERO_PAGE, ZERO_PAGE, ZERO_PAGE, ZERO_PAGE, ZERO_PAGE];
/// CMD_SYNC MSI targets.
static mut MSI_WORDS: Page = ZERO_PAGE;

fn stream_table() -> u64 {
    (&raw mut STREAM_TABLE) as u64
}
fn level1_stream_table() -> u64 {
    (&raw mut LEVEL1_STREAM_TABLE) as u64
}
fn command_queue() -> u64 {
    (&raw mut COMMANDS) as u64
}
fn events() -> u64 {
    (&raw mut EVENTS) as u64
}
fn contexts() -> u64 {
    (&raw mut CONTEXTS) as u64
}
fn stage1(level: u64) -> u64 {
    (&raw mut STAGE1) as u64 + (level - 1) * 4096
}
fn data_page(index: u64) -> u64 {
    (&raw mut DATA) as u64 + index * 4096
}
fn msi_word(index: u64) -> u64 {
    (&raw mut MSI_WORDS) as u64 + index * 4
}

/// Guest page A (IOVA_A maps here).
fn page_a() -> u64 {
    data_page(1)
}
/// Guest page B (IOVA_B maps here).
fn page_b() -> u64 {
    data_page(3)
}
/// The pages around A and B, which no DMA may change.
const SENTINELS: [u64; 3] = [0, 2, 4];
const SENTINEL_SEED: u64 = 0x5e17_1e15_5e17_1e15;

fn put(address: u64, value: u64) {
    // SAFETY: every address passed here is inside one of this module's statics, which only
    // this module touches (and the SMMU and edu, which it programs).
    unsafe { core::ptr::write_volatile(address as *mut u64, value) }
}

fn get(address: u64) -> u64 {
    // SAFETY: as `put`.
    unsafe { core::ptr::read_volatile(address as *const u64) }
}

fn get32(address: u64) -> u32 {
    // SAFETY: as `put`, 4-byte aligned.
    unsafe { core::ptr::read_volatile(address as *const u32) }
}

fn put32(address: u64, value: u32) {
    // SAFETY: as `put`, 4-byte aligned.
    unsafe { core::ptr::write_volatile(address as *mut u32, value) }
}

fn barrier() {
    // SAFETY: a barrier; no memory is touched.
    unsafe { asm!("dsb sy", options(nostack)) };
}

fn fill(page: u64, seed: u64) {
    for i in 0..512 {
        put(page + i * 8, seed ^ i << 8);
    }
}

/// The first word of `page` (whole words) that differs from the fill of `seed`, if any.
fn differs(page: u64, seed: u64) -> Option<u64> {
    (0..512).find(|&i| get(page + i * 8) != seed ^ i << 8)
}

fn sentinels_intact() -> Outcome {
    for index in SENTINELS {
        if differs(data_page(index), SENTINEL_SEED ^ index).is_some() {
            return Err("a guest page next to the mapped ones changed");
        }
    }
    Ok(())
}

fn fill_sentinels() {
    for index in SENTINELS {
        fill(data_page(index), SENTINEL_SEED ^ index);
    }
}

/// What the ID registers say.
#[derive(Clone, Copy, Debug)]
struct Features {
    idr0: u32,
    idr1: u32,
    idr3: u32,
    idr5: u32,
}

impl Features {
    fn bit(value: u32, bit: u32) -> bool {
        value >> bit & 1 == 1
    }
    fn s1p(&self) -> bool {
        Self::bit(self.idr0, 1)
    }
    fn s2p(&self) -> bool {
        Self::bit(self.idr0, 0)
    }
    fn ttf(&self) -> u32 {
        self.idr0 >> 2 & 3
    }
    fn cohacc(&self) -> bool {
        Self::bit(self.idr0, 4)
    }
    fn msi(&self) -> bool {
        Self::bit(self.idr0, 13)
    }
    fn two_level(&self) -> bool {
        self.idr0 >> 27 & 3 == 1
    }
    fn sid_bits(&self) -> u32 {
        self.idr1 & 0x3f
    }
    fn evtqs(&self) -> u32 {
        self.idr1 >> 16 & 0x1f
    }
    fn cmdqs(&self) -> u32 {
        self.idr1 >> 21 & 0x1f
    }
    /// IDR5.OAS as a CD.IPS encoding (at most 48 bits: 4 KiB tables without LPA2).
    fn ips(&self) -> u64 {
        u64::from((self.idr5 & 7).min(5))
    }
    fn gran4k(&self) -> bool {
        Self::bit(self.idr5, 4)
    }
}

/// One event record.
#[derive(Clone, Copy, Debug, Default)]
struct Event([u64; 4]);

impl Event {
    fn id(&self) -> u8 {
        self.0[0] as u8
    }
    fn sid(&self) -> u32 {
        (self.0[0] >> 32) as u32
    }
    fn ssv(&self) -> bool {
        self.0[0] >> 11 & 1 == 1
    }
    fn rnw(&self) -> bool {
        self.0[1] >> 35 & 1 == 1
    }
    fn s2(&self) -> bool {
        self.0[1] >> 39 & 1 == 1
    }
    fn class(&self) -> u8 {
        (self.0[1] >> 40 & 3) as u8
    }
    fn input(&self) -> u64 {
        self.0[2]
    }
    /// FetchAddr (bits 55:3 of the last word) of the fetch-abort events.
    fn fetch(&self) -> u64 {
        self.0[3] & 0x00ff_ffff_ffff_fff8
    }
}

/// What the events of one DMA must be.
#[derive(Clone, Copy, Debug)]
struct Expect {
    id: u8,
    /// The transaction's direction, for events that record it.
    rnw: Option<bool>,
    class: Option<u8>,
    /// InputAddr within `[start, start + len)`.
    input: Option<(u64, u64)>,
    /// FetchAddr within `[start, start + len)`.
    fetch: Option<(u64, u64)>,
    /// QEMU's SMMU may put the fetch address in InputAddr instead (F_CD_FETCH).
    fetch_in_input_tolerated: bool,
}

impl Expect {
    const fn id(id: u8) -> Self {
        Self {
            id,
            rnw: None,
            class: None,
            input: None,
            fetch: None,
            fetch_in_input_tolerated: false,
        }
    }

    /// Whether `event` would be accepted only through a tolerated QEMU deviation.
    fn deviates(&self, event: &Event) -> bool {
        let within = |value: u64, (start, len): (u64, u64)| value >= start && value < start + len;
        self.fetch.is_some_and(|range| {
            !within(event.fetch(), range)
                && self.fetch_in_input_tolerated
                && event.fetch() == 0
                && within(event.input(), range)
        })
    }

    fn accepts(&self, event: &Event) -> Result<(), &'static str> {
        let within = |value: u64, (start, len): (u64, u64)| value >= start && value < start + len;
        if event.id() != self.id {
            return Err("an event of another type");
        }
        if event.sid() != EDU_STREAM || event.ssv() {
            return Err("an event for another stream or with a substream");
        }
        if event.s2() {
            return Err("an event marked stage 2 on an SMMU the guest uses for stage 1");
        }
        if self.rnw.is_some_and(|rnw| rnw != event.rnw()) {
            return Err("an event with the wrong RnW");
        }
        if self.class.is_some_and(|class| class != event.class()) {
            return Err("an event with the wrong CLASS");
        }
        if self
            .input
            .is_some_and(|range| !within(event.input(), range))
        {
            return Err("an event with the wrong input address");
        }
        if self
            .fetch
            .is_some_and(|range| !within(event.fetch(), range))
            && !self.deviates(event)
        {
            return Err("an event with the wrong fetch address");
        }
        Ok(())
    }
}

/// Command encodings (IHI 0070 chapter 4).
mod command {
    pub(super) fn cfgi_ste(sid: u32) -> [u64; 2] {
        [0x03 | u64::from(sid) << 32, 1]
    }
    pub(super) fn cfgi_all() -> [u64; 2] {
        [0x04, 31]
    }
    pub(super) fn cfgi_cd(sid: u32) -> [u64; 2] {
        [0x05 | u64::from(sid) << 32, 1]
    }
    pub(super) fn tlbi_nh_asid(asid: u16) -> [u64; 2] {
        [0x11 | u64::from(asid) << 48, 0]
    }
    pub(super) fn tlbi_nsnh_all() -> [u64; 2] {
        [0x30, 0]
    }
    /// CS: 0 SIG_NONE, 1 SIG_IRQ (an MSI of `data` to `address` where MSIs exist).
    pub(super) fn sync(cs: u64, address: u64, data: u32) -> [u64; 2] {
        // MSH inner shareable, MSIAttr inner and outer write-back.
        [
            0x46 | cs << 12 | 3 << 22 | 0xf << 24 | u64::from(data) << 32,
            address & 0x00ff_ffff_ffff_fffc,
        ]
    }
    pub(super) fn sync_none() -> [u64; 2] {
        sync(0, 0, 0)
    }
}

/// STE encodings (IHI 0070 5.2).
mod ste {
    /// V=1, Config=abort.
    pub(super) const ABORT: [u64; 8] = [1, 0, 0, 0, 0, 0, 0, 0];
    /// V=0.
    pub(super) const INVALID: [u64; 8] = [0; 8];
    /// V=1 with `config` and nothing else.
    pub(super) fn config(config: u64) -> [u64; 8] {
        [1 | config << 1, 0, 0, 0, 0, 0, 0, 0]
    }
    /// Stage 1 translates, one CD at `cd` (S1Fmt linear, S1CDMax 0), CD fetches write-back
    /// inner shareable; stage 2 bypass (under the hypervisor, its stage 2).
    pub(super) fn stage1(cd: u64) -> [u64; 8] {
        let word0 = 1 | 0b101 << 1 | cd & 0x000f_ffff_ffff_ffc0;
        let word1 = 1 << 2 | 1 << 4 | 3 << 6;
        [word0, word1, 0, 0, 0, 0, 0, 0]
    }
}

/// A CD (IHI 0070 5.4): 4 KiB granule, T0SZ 25, write-back inner-shareable walks, TTB1 off,
/// AArch64, faults recorded (R) and aborted (A), ASID `asid`, MAIR attribute 0 write-back.
fn context_descriptor(ttb0: u64, asid: u16, ips: u64) -> [u64; 8] {
    let word0 = T0SZ
        | 1 << 8 // IR0: write-back
        | 1 << 10 // OR0
        | 3 << 12 // SH0: inner shareable
        | 1 << 30 // EPD1
        | 1 << 31 // V
        | ips << 32
        | 1 << 41 // AA64
        | 1 << 45 // R
        | 1 << 46 // A
        | 1 << 47 // ASET
        | u64::from(asid) << 48;
    [word0, ttb0 & 0x000f_ffff_ffff_fff0, 0, 0xff, 0, 0, 0, 0]
}

/// A stage-1 table descriptor and a page descriptor (AttrIndx 0, inner shareable, AF,
/// read/write at any privilege, not global).
fn table_descriptor(table: u64) -> u64 {
    table | 0b11
}
fn page_descriptor(page: u64) -> u64 {
    page | 0b11 | 1 << 6 | 3 << 8 | 1 << 10 | 1 << 11
}

/// The driver's state.
struct Smmu<'o> {
    out: &'o mut dyn Write,
    base: u64,
    features: Features,
    cr0: u32,
    cmdq_log2: u32,
    evtq_log2: u32,
    /// Our CMDQ_PROD (index and wrap).
    cmd_prod: u32,
    /// Our EVTQ_CONS (index and wrap), and the overflow flag we acknowledged.
    evt_cons: u32,
    evt_overflow: u32,
    /// The stream table format in use.
    two_level: bool,
    next_asid: u16,
    live_asid: u16,
    next_msi: u32,
    /// See [`Platform::qemu_alone`].
    qemu_alone: bool,
}

/// Queue pointer arithmetic: index in bits [log2-1:0], wrap in bit log2.
fn next(pointer: u32, log2: u32) -> u32 {
    pointer.wrapping_add(1) & ((2 << log2) - 1)
}
fn full(prod: u32, cons: u32, log2: u32) -> bool {
    let index = (1 << log2) - 1;
    prod & index == cons & index && prod != cons
}

impl Smmu<'_> {
    fn read32(&self, offset: usize) -> u32 {
        let value: u32;
        // SAFETY: a register of the SMMU the device tree names, mapped as device memory by the
        // initial page table; one load without writeback.
        unsafe {
            asm!("ldr {v:w}, [{a}]", a = in(reg) self.base + offset as u64, v = out(reg) value, options(nostack))
        };
        value
    }

    fn write32(&self, offset: usize, value: u32) {
        // SAFETY: as `read32`, a store.
        unsafe {
            asm!("str {v:w}, [{a}]", a = in(reg) self.base + offset as u64, v = in(reg) value, options(nostack))
        };
    }

    fn read64(&self, offset: usize) -> u64 {
        let value: u64;
        // SAFETY: as `read32`, a 64-bit register.
        unsafe {
            asm!("ldr {v}, [{a}]", a = in(reg) self.base + offset as u64, v = out(reg) value, options(nostack))
        };
        value
    }

    fn write64(&self, offset: usize, value: u64) {
        // SAFETY: as `read32`, a 64-bit store.
        unsafe {
            asm!("str {v}, [{a}]", a = in(reg) self.base + offset as u64, v = in(reg) value, options(nostack))
        };
    }

    fn info(&mut self, args: core::fmt::Arguments<'_>) {
        let _ = self.out.write_str("GUEST: INFO ");
        let _ = self.out.write_fmt(args);
        let _ = self.out.write_str("\n");
    }

    /// Makes `len` bytes at `address` visible to a non-coherent SMMU, and what it wrote visible
    /// to this CPU (clean and invalidate); a barrier otherwise.
    fn flush(&self, address: u64, len: u64) {
        if !self.features.cohacc() {
            let mut line = address & !63;
            while line < address + len {
                // SAFETY: cache maintenance of memory this module owns.
                unsafe { asm!("dc civac, {}", in(reg) line, options(nostack)) };
                line += 64;
            }
        }
        barrier();
    }

    fn active_errors(&self) -> u32 {
        self.read32(reg::GERROR) ^ self.read32(reg::GERRORN)
    }

    /// Acknowledges the active global errors in `bits`.
    fn acknowledge(&self, bits: u32) {
        let gerror = self.read32(reg::GERROR);
        let gerrorn = self.read32(reg::GERRORN);
        self.write32(reg::GERRORN, gerrorn & !bits | gerror & bits);
    }

    /// Writes CR0 and waits for CR0ACK to follow.
    fn set_cr0(&mut self, value: u32) -> Outcome {
        self.cr0 = value;
        self.write32(reg::CR0, value);
        for _ in 0..REGISTER_POLLS {
            if self.read32(reg::CR0ACK) == value {
                return Ok(());
            }
        }
        Err("CR0ACK did not follow CR0")
    }

    /// Writes GBPA with UPDATE and waits for UPDATE to clear.
    fn set_gbpa(&mut self, value: u32) -> Outcome {
        self.write32(reg::GBPA, value | GBPA_UPDATE);
        for _ in 0..REGISTER_POLLS {
            let gbpa = self.read32(reg::GBPA);
            if gbpa & GBPA_UPDATE == 0 {
                return if gbpa == value {
                    Ok(())
                } else {
                    Err("GBPA did not read back the value its update wrote")
                };
            }
        }
        Err("GBPA.UPDATE never cleared")
    }

    fn cmd_index(&self, pointer: u32) -> u64 {
        u64::from(pointer & ((1 << self.cmdq_log2) - 1))
    }

    /// Writes `commands` at PROD without telling the SMMU; returns the pointer of the first.
    fn queue(&mut self, commands: &[[u64; 2]]) -> Result<u32, &'static str> {
        let first = self.cmd_prod;
        for command in commands {
            let mut room = false;
            for _ in 0..REGISTER_POLLS {
                let cons = self.read32(reg::CMDQ_CONS) & ((2 << self.cmdq_log2) - 1);
                if !full(self.cmd_prod, cons, self.cmdq_log2) {
                    room = true;
                    break;
                }
                if self.active_errors() & CMDQ_ERR != 0 {
                    return Err("the command queue stopped with CMDQ_ERR");
                }
            }
            if !room {
                return Err("the command queue stayed full");
            }
            let slot = command_queue() + self.cmd_index(self.cmd_prod) * 16;
            put(slot, command[0]);
            put(slot + 8, command[1]);
            self.flush(slot, 16);
            self.cmd_prod = next(self.cmd_prod, self.cmdq_log2);
        }
        Ok(first)
    }

    /// Tells the SMMU about the queued commands.
    fn ring(&self) {
        barrier();
        self.write32(reg::CMDQ_PROD, self.cmd_prod);
    }

    /// Waits until CMDQ_CONS reaches our PROD.
    fn wait_consumed(&mut self) -> Outcome {
        for _ in 0..REGISTER_POLLS {
            let cons = self.read32(reg::CMDQ_CONS);
            if cons & ((2 << self.cmdq_log2) - 1) == self.cmd_prod {
                return Ok(());
            }
            if self.active_errors() & CMDQ_ERR != 0 {
                self.info(format_args!(
                    "command queue stopped: CMDQ_CONS {cons:#x} (ERR {})",
                    cons >> 24 & 0x7f
                ));
                return Err("the command queue stopped with CMDQ_ERR");
            }
        }
        Err("CMDQ_CONS never reached CMDQ_PROD")
    }

    /// Submits `commands` and a CMD_SYNC, and waits by polling CMDQ_CONS.
    fn submit(&mut self, commands: &[[u64; 2]]) -> Outcome {
        self.queue(commands)?;
        self.queue(&[command::sync_none()])?;
        self.ring();
        self.wait_consumed()
    }

    /// Submits `commands` and a CMD_SYNC that signals with an MSI of a fresh value to a word of
    /// guest RAM, and waits for that value by reading memory only (WFE between reads). Then
    /// CMDQ_CONS must show the sync consumed (IHI 0070 4.7.3: observing the MSI means its
    /// consumption is observable).
    fn submit_msi(&mut self, commands: &[[u64; 2]]) -> Outcome {
        let word = msi_word(0);
        let data = 0x5151_0000 | (self.next_msi & 0xffff);
        self.next_msi += 1;
        put32(word, 0);
        self.flush(word, 4);
        self.queue(commands)?;
        self.queue(&[command::sync(1, word, data)])?;
        self.ring();
        self.wait_msi(word, data)?;
        let cons = self.read32(reg::CMDQ_CONS) & ((2 << self.cmdq_log2) - 1);
        if cons != self.cmd_prod {
            return Err("the sync's MSI arrived before CMDQ_CONS showed it consumed");
        }
        Ok(())
    }

    /// As Linux does it (MSIPOLL): the sync's MSI, with data 0, goes to the sync command's own
    /// first word in the queue.
    fn submit_msi_into_queue(&mut self, commands: &[[u64; 2]]) -> Outcome {
        self.queue(commands)?;
        let slot = command_queue() + self.cmd_index(self.cmd_prod) * 16;
        self.queue(&[command::sync(1, slot, 0)])?;
        self.ring();
        self.wait_msi(slot, 0)
    }

    fn wait_msi(&mut self, word: u64, data: u32) -> Outcome {
        for _ in 0..MSI_POLLS {
            self.flush(word, 4);
            if get32(word) == data {
                return Ok(());
            }
            // SAFETY: waits for an event or a timeout; no memory is touched.
            unsafe { asm!("wfe", options(nostack)) };
        }
        Err("the CMD_SYNC's MSI never arrived")
    }

    fn set_ste(&mut self, sid: u32, entry: [u64; 8]) -> Outcome {
        let address = stream_table() + u64::from(sid) * 64;
        for (i, word) in entry.iter().enumerate().skip(1) {
            put(address + i as u64 * 8, *word);
        }
        barrier();
        put(address, entry[0]);
        self.flush(address, 64);
        self.submit(&[command::cfgi_ste(sid)])
    }

    /// Points the SMMU at the stream table in the given format (SMMUEN off and on again) and
    /// invalidates every cached configuration.
    fn use_stream_table(&mut self, two_level: bool) -> Outcome {
        let enabled = self.cr0 & SMMUEN != 0;
        if enabled {
            self.set_cr0(self.cr0 & !SMMUEN)?;
        }
        self.program_stream_table(two_level)?;
        if enabled {
            self.set_cr0(self.cr0 | SMMUEN)?;
        }
        self.submit(&[command::cfgi_all()])
    }

    fn program_stream_table(&mut self, two_level: bool) -> Outcome {
        let log2size = STREAMS_LOG2.min(self.features.sid_bits());
        let (base, config) = if two_level {
            for i in 0..(1u64 << (log2size.saturating_sub(SPLIT))) {
                let level2 = stream_table() + (i << SPLIT) * 64;
                put(level1_stream_table() + i * 8, level2 | u64::from(SPLIT + 1));
            }
            self.flush(level1_stream_table(), 4096);
            (level1_stream_table(), log2size | SPLIT << 6 | 1 << 16)
        } else {
            (stream_table(), log2size)
        };
        self.write64(reg::STRTAB_BASE, RA | base);
        self.write32(reg::STRTAB_BASE_CFG, config);
        if self.read64(reg::STRTAB_BASE) != RA | base || self.read32(reg::STRTAB_BASE_CFG) != config
        {
            return Err("STRTAB_BASE or STRTAB_BASE_CFG did not read back");
        }
        self.two_level = two_level;
        Ok(())
    }

    /// Reads every new event record, acknowledging each, and calls `each` on it; returns
    /// how many there were.
    fn drain(&mut self, each: &mut dyn FnMut(&Event)) -> u32 {
        let mask = (2 << self.evtq_log2) - 1;
        let mut count = 0;
        let mut prod = self.read32(reg::EVTQ_PROD);
        for _ in 0..(1u32 << self.evtq_log2) {
            if self.evt_cons & mask == prod & mask {
                break;
            }
            let slot = events() + u64::from(self.evt_cons & ((1 << self.evtq_log2) - 1)) * 32;
            self.flush(slot, 32);
            let event = Event([get(slot), get(slot + 8), get(slot + 16), get(slot + 24)]);
            each(&event);
            count += 1;
            self.evt_cons = next(self.evt_cons, self.evtq_log2);
            if self.evt_cons & mask == prod & mask {
                prod = self.read32(reg::EVTQ_PROD);
            }
        }
        if prod & OVFLG != self.evt_overflow {
            self.evt_overflow = prod & OVFLG;
            self.info(format_args!("the event queue overflowed"));
        }
        self.write32(reg::EVTQ_CONS, self.evt_cons | self.evt_overflow);
        count
    }

    /// Discards every event recorded so far.
    fn discard_events(&mut self) -> Outcome {
        self.submit(&[])?;
        self.drain(&mut |_| {});
        Ok(())
    }

    /// After a CMD_SYNC (which makes the records of transactions terminated before it visible),
    /// expects at least one event, all accepted by `expect`.
    fn expect_events(&mut self, what: &str, expect: Expect) -> Outcome {
        self.submit(&[])?;
        let mut first = None;
        let mut wrong = None;
        let mut deviates = false;
        let mut count = self.drain(&mut |event| {
            first.get_or_insert(*event);
            deviates |= expect.deviates(event);
            if let Err(why) = expect.accepts(event) {
                wrong.get_or_insert((why, *event));
            }
        });
        if deviates {
            self.info(format_args!(
                "QEMU deviation: ID {:#04x} records its fetch address in InputAddr, not FetchAddr (IHI 0070 7.3)",
                expect.id
            ));
        }
        let mut late = false;
        if count == 0 {
            for _ in 0..LATE_EVENT_POLLS {
                if self.read32(reg::EVTQ_PROD) & ((2 << self.evtq_log2) - 1) != self.evt_cons {
                    late = true;
                    break;
                }
            }
            if late {
                count = self.drain(&mut |event| {
                    first.get_or_insert(*event);
                });
            }
        }
        match first {
            None => {
                self.info(format_args!(
                    "{what}: no event (expected ID {:#04x})",
                    expect.id
                ));
                Err("no event was recorded")
            }
            Some(event) => {
                let shown = wrong.map_or(event, |(_, event)| event);
                self.info(format_args!(
                    "{what}: {count} events; {} ID {:#04x} stream {:#x} RnW {} S2 {} CLASS {} input {:#x} fetch {:#x}",
                    if wrong.is_some() { "wrong" } else { "first" },
                    shown.id(),
                    shown.sid(),
                    u8::from(shown.rnw()),
                    u8::from(shown.s2()),
                    shown.class(),
                    shown.input(),
                    shown.fetch(),
                ));
                if late {
                    return Err("an event became visible only after a later CMD_SYNC completed");
                }
                match wrong {
                    Some((why, _)) => Err(why),
                    None => Ok(()),
                }
            }
        }
    }

    /// After a CMD_SYNC, expects no event at all.
    fn expect_no_events(&mut self, what: &str) -> Outcome {
        self.submit(&[])?;
        let mut first = None;
        let count = self.drain(&mut |event| {
            first.get_or_insert(*event);
        });
        if let Some(event) = first {
            self.info(format_args!(
                "{what}: {count} unexpected events; first ID {:#04x} stream {:#x} input {:#x}",
                event.id(),
                event.sid(),
                event.input()
            ));
            return Err("an event was recorded where none should be");
        }
        Ok(())
    }

    /// Builds the stage-1 tables: IOVA_B -> page B, IOVA_A -> page A, nothing else.
    fn build_stage1(&self) {
        for level in 1..=3 {
            for i in 0..512 {
                put(stage1(level) + i * 8, 0);
            }
        }
        put(
            stage1(1) + (IOVA_BASE >> 30 & 511) * 8,
            table_descriptor(stage1(2)),
        );
        put(
            stage1(2) + (IOVA_BASE >> 21 & 511) * 8,
            table_descriptor(stage1(3)),
        );
        put(
            stage1(3) + (IOVA_B >> 12 & 511) * 8,
            page_descriptor(page_b()),
        );
        put(
            stage1(3) + (IOVA_A >> 12 & 511) * 8,
            page_descriptor(page_a()),
        );
        self.flush(stage1(1), 3 * 4096);
    }

    fn fresh_asid(&mut self) -> u16 {
        self.next_asid = self.next_asid.wrapping_add(1).max(1);
        self.next_asid
    }

    /// Writes CD `slot` with TTB0 `ttb0` and a fresh ASID; returns the ASID.
    fn set_cd(&mut self, slot: u64, ttb0: u64) -> u16 {
        let asid = self.fresh_asid();
        let address = contexts() + slot * 64;
        let cd = context_descriptor(ttb0, asid, self.features.ips());
        for (i, word) in cd.iter().enumerate().skip(1) {
            put(address + i as u64 * 8, *word);
        }
        barrier();
        put(address, cd[0]);
        self.flush(address, 64);
        asid
    }

    /// Stream 8 translates through CD slot 0 and the stage-1 tables, with a fresh ASID; the
    /// previous ASID is invalidated.
    fn install_translation(&mut self) -> Outcome {
        self.build_stage1();
        let old = self.live_asid;
        self.live_asid = self.set_cd(0, stage1(1));
        let cd = contexts();
        self.set_ste(EDU_STREAM, ste::stage1(cd))?;
        self.submit(&[command::cfgi_cd(EDU_STREAM), command::tlbi_nh_asid(old)])
    }
}

/// One DMA round trip through the mapping: page A (filled with `seed`) is read through IOVA_A
/// into edu's buffer, which is written through IOVA_B into page B; then page B (filled with
/// `seed2`) back through IOVA_B and IOVA_A into page A. Both pages must end up exactly right
/// and the sentinels untouched.
fn round_trip(seed: u64, seed2: u64) -> Outcome {
    fill(page_a(), seed);
    fill(page_b(), !seed);
    barrier();
    edu_dma(IOVA_A, EDU_BUFFER, 4096, false)?;
    edu_dma(EDU_BUFFER, IOVA_B, 4096, true)?;
    if differs(page_b(), seed).is_some() {
        return Err("a DMA through the IOVAs did not copy page A to page B");
    }
    if differs(page_a(), seed).is_some() {
        return Err("page A changed when read through its IOVA");
    }
    fill(page_b(), seed2);
    barrier();
    edu_dma(IOVA_B, EDU_BUFFER, 4096, false)?;
    edu_dma(EDU_BUFFER, IOVA_A, 4096, true)?;
    if differs(page_a(), seed2).is_some() {
        return Err("a DMA through the IOVAs did not copy page B to page A");
    }
    sentinels_intact()
}

/// Check 1: the ID and control registers, then enabling.
fn probe<'o>(
    out: &'o mut dyn Write,
    base: u64,
    qemu_alone: bool,
) -> Result<Smmu<'o>, &'static str> {
    let mut smmu = Smmu {
        out,
        base,
        features: Features {
            idr0: 0,
            idr1: 0,
            idr3: 0,
            idr5: 0,
        },
        cr0: 0,
        cmdq_log2: 0,
        evtq_log2: 0,
        cmd_prod: 0,
        evt_cons: 0,
        evt_overflow: 0,
        two_level: false,
        next_asid: 0,
        live_asid: 0,
        next_msi: 1,
        qemu_alone,
    };
    let features = Features {
        idr0: smmu.read32(reg::IDR0),
        idr1: smmu.read32(reg::IDR1),
        idr3: smmu.read32(reg::IDR3),
        idr5: smmu.read32(reg::IDR5),
    };
    smmu.features = features;
    let aidr = smmu.read32(reg::AIDR);
    smmu.info(format_args!(
        "SMMU at {base:#x}: IDR0={:#010x} IDR1={:#010x} IDR3={:#010x} IDR5={:#010x} AIDR={aidr:#x}",
        features.idr0, features.idr1, features.idr3, features.idr5
    ));
    smmu.info(format_args!(
        "S1P {} S2P {} TTF {} COHACC {} MSI {} two-level {} SIDSIZE {} CMDQS {} EVTQS {} OAS code {}",
        u8::from(features.s1p()),
        u8::from(features.s2p()),
        features.ttf(),
        u8::from(features.cohacc()),
        u8::from(features.msi()),
        u8::from(features.two_level()),
        features.sid_bits(),
        features.cmdqs(),
        features.evtqs(),
        features.idr5 & 7,
    ));
    if !features.s1p() {
        return Err("IDR0.S1P is 0: no stage 1");
    }
    if features.ttf() & 0b10 == 0 {
        return Err("IDR0.TTF does not include AArch64 tables");
    }
    if !features.gran4k() {
        return Err("IDR5.GRAN4K is 0: no 4 KiB granule");
    }
    if features.sid_bits() < 4 {
        return Err("IDR1.SIDSIZE cannot reach stream 8");
    }
    if features.cmdqs() < 3 || features.evtqs() < 2 {
        return Err("IDR1 offers queues too small for this driver");
    }
    smmu.cmdq_log2 = features.cmdqs().min(MAX_CMDQ_LOG2);
    smmu.evtq_log2 = features.evtqs().min(MAX_EVTQ_LOG2);

    // Everything off, as a driver starts; then GBPA's update protocol, both ways, ending in
    // ABORT (nothing passes while the SMMU is disabled).
    smmu.set_cr0(0)?;
    smmu.set_gbpa(GBPA_ABORT)?;
    smmu.set_gbpa(0)?;
    smmu.set_gbpa(GBPA_ABORT)?;
    // No interrupts: this driver polls.
    smmu.write32(reg::IRQ_CTRL, 0);
    if !(0..REGISTER_POLLS).any(|_| smmu.read32(reg::IRQ_CTRLACK) == 0) {
        return Err("IRQ_CTRLACK did not follow IRQ_CTRL");
    }
    // Write-back, inner shareable tables and queues when the SMMU is coherent; non-cacheable
    // otherwise (and `flush` cleans and invalidates).
    let cr1 = if features.cohacc() { 0x0d75 } else { 0 };
    smmu.write32(reg::CR1, cr1);
    smmu.write32(reg::CR2, 1 << 1 | 1 << 2); // RECINVSID, PTM
    if smmu.read32(reg::CR1) != cr1 {
        return Err("CR1 did not read back");
    }

    // Every stream aborts until configured.
    for sid in 0..STREAMS as u64 {
        let address = stream_table() + sid * 64;
        for (i, word) in ste::ABORT.iter().enumerate() {
            put(address + i as u64 * 8, *word);
        }
    }
    smmu.flush(stream_table(), STREAMS as u64 * 64);
    // Linear first: the nested check moves to two-level where the SMMU has it, never back
    // (QEMU keeps walking a two-level table once STRTAB_BASE_CFG.FMT was 1).
    smmu.program_stream_table(false)?;

    // The queues start two entries before their end, so that the wrap bit is exercised early.
    let cmd_start = (1u32 << smmu.cmdq_log2) - 2;
    let cmdq_base = RA | command_queue() | u64::from(smmu.cmdq_log2);
    smmu.write64(reg::CMDQ_BASE, cmdq_base);
    smmu.write32(reg::CMDQ_PROD, cmd_start);
    smmu.write32(reg::CMDQ_CONS, cmd_start);
    if smmu.read64(reg::CMDQ_BASE) != cmdq_base {
        return Err("CMDQ_BASE did not read back");
    }
    if smmu.read32(reg::CMDQ_PROD) != cmd_start || smmu.read32(reg::CMDQ_CONS) != cmd_start {
        return Err("CMDQ_PROD or CMDQ_CONS did not read back");
    }
    smmu.cmd_prod = cmd_start;
    let evt_start = (1u32 << smmu.evtq_log2) - 2;
    let evtq_base = RA | events() | u64::from(smmu.evtq_log2);
    smmu.write64(reg::EVTQ_BASE, evtq_base);
    smmu.write32(reg::EVTQ_PROD, evt_start);
    smmu.write32(reg::EVTQ_CONS, evt_start);
    if smmu.read64(reg::EVTQ_BASE) != evtq_base {
        return Err("EVENTQ_BASE did not read back");
    }
    if smmu.read32(reg::EVTQ_PROD) != evt_start || smmu.read32(reg::EVTQ_CONS) != evt_start {
        return Err("EVENTQ_PROD or EVENTQ_CONS did not read back");
    }
    smmu.evt_cons = evt_start;

    // Enable: the command queue, invalidate everything, the event queue, then translation.
    smmu.set_cr0(CMDQEN)?;
    smmu.submit(&[command::cfgi_all(), command::tlbi_nsnh_all()])?;
    smmu.set_cr0(CMDQEN | EVTQEN)?;
    smmu.set_cr0(CMDQEN | EVTQEN | SMMUEN)?;
    if smmu.read32(reg::CR0) != CMDQEN | EVTQEN | SMMUEN {
        return Err("CR0 did not read back");
    }
    if smmu.active_errors() != 0 {
        return Err("a global error is active after enabling");
    }
    Ok(smmu)
}

/// Check 2.
fn nested_translation(smmu: &mut Smmu<'_>) -> Outcome {
    fill_sentinels();
    smmu.build_stage1();
    let asid = smmu.set_cd(0, stage1(1));
    smmu.live_asid = asid;
    let address = stream_table() + u64::from(EDU_STREAM) * 64;
    let entry = ste::stage1(contexts());
    for (i, word) in entry.iter().enumerate() {
        put(address + i as u64 * 8, *word);
    }
    smmu.flush(address, 64);
    let install = [command::cfgi_ste(EDU_STREAM), command::cfgi_cd(EDU_STREAM)];
    if smmu.features.msi() {
        smmu.submit_msi(&install)?;
        smmu.info(format_args!(
            "CFGI_STE + CFGI_CD + CMD_SYNC completed by an MSI into guest RAM"
        ));
    } else {
        smmu.submit(&install)?;
        smmu.info(format_args!(
            "IDR0.MSI is 0: CMD_SYNC completed by polling CMDQ_CONS only"
        ));
    }
    round_trip(0x1111_2222_3333_4444, 0x9999_aaaa_bbbb_cccc)?;
    smmu.expect_no_events("translated DMA")?;

    // An unmapped IOVA: a write, then a read, of 4 bytes (one event each on QEMU).
    let seed = 0x7777_0000_7777_0000;
    fill(page_a(), seed);
    fill(page_b(), seed);
    barrier();
    edu_dma(EDU_BUFFER, IOVA_UNMAPPED, 4, true)?;
    smmu.expect_events(
        "write to an unmapped IOVA",
        Expect {
            rnw: Some(false),
            class: Some(CLASS_IN),
            input: Some((IOVA_UNMAPPED, 4)),
            ..Expect::id(F_TRANSLATION)
        },
    )?;
    edu_dma(IOVA_UNMAPPED, EDU_BUFFER, 4, false)?;
    smmu.expect_events(
        "read from an unmapped IOVA",
        Expect {
            rnw: Some(true),
            class: Some(CLASS_IN),
            input: Some((IOVA_UNMAPPED, 4)),
            ..Expect::id(F_TRANSLATION)
        },
    )?;
    if differs(page_a(), seed).is_some() || differs(page_b(), seed).is_some() {
        return Err("a DMA to an unmapped IOVA changed a mapped page");
    }
    sentinels_intact()?;
    // What the blocked read left in edu's buffer (zeros or what was there: page A's start,
    // from the round trip) goes out through IOVA_B: nothing else may come back.
    edu_dma(EDU_BUFFER, IOVA_B, 8, true)?;
    let word = get(page_b());
    let earlier = 0x9999_aaaa_bbbb_cccc_u64;
    if word & 0xffff_ffff != 0 && word & 0xffff_ffff != earlier & 0xffff_ffff {
        return Err("a read of an unmapped IOVA brought data into edu's buffer");
    }

    // Invalidate the ASID: with the sync's MSI written into the queue (as Linux does), and by
    // polling CMDQ_CONS.
    if smmu.features.msi() {
        smmu.submit_msi_into_queue(&[command::tlbi_nh_asid(asid)])?;
    }
    smmu.submit(&[command::tlbi_nh_asid(asid)])?;

    // The two-level stream table, where the SMMU has one (the rest of the checks keep it).
    if smmu.features.two_level() {
        smmu.use_stream_table(true)?;
        round_trip(0x4444_5555_6666_7777, 0xcccc_dddd_eeee_ffff)?;
        smmu.expect_no_events("translated DMA, two-level stream table")?;
        smmu.info(format_args!(
            "translation works with the linear and the two-level stream table"
        ));
    }
    Ok(())
}

/// DMA aimed at a stream configuration that must block it: a 4-byte write and read at the
/// PA of a sentinel page (where a bypass would land) and of IOVA_A (where the old translation
/// would).
fn blocked_dma() -> Outcome {
    let target = data_page(SENTINELS[1]);
    edu_dma(EDU_BUFFER, target, 4, true)?;
    edu_dma(EDU_BUFFER, IOVA_A, 4, true)?;
    Ok(())
}

/// Check 3.
fn invalid_ste(smmu: &mut Smmu<'_>) -> Outcome {
    fill_sentinels();
    let seed = 0x2468_ace0_1357_9bdf;
    fill(page_a(), seed);
    smmu.install_translation()?;
    smmu.discard_events()?;
    // edu's buffer holds something that is neither the sentinels nor page A.
    fill(page_b(), 0xdead_beef_dead_beef);
    edu_dma(IOVA_B, EDU_BUFFER, 4096, false)?;

    smmu.set_ste(EDU_STREAM, ste::INVALID)?;
    blocked_dma()?;
    smmu.expect_events("STE V=0", Expect::id(C_BAD_STE))?;

    smmu.set_ste(EDU_STREAM, ste::config(0b001))?;
    blocked_dma()?;
    smmu.expect_no_events("STE Config=0b001 (reserved, behaves as abort)")?;

    if smmu.features.s2p() {
        // On an SMMU with stage 2 a stage-2 STE is legal, and one with S2AA64 = 0 is exactly
        // what makes QEMU's model abort: not sent.
        smmu.info(format_args!(
            "STE Config=0b110: not applicable (IDR0.S2P is 1)"
        ));
    } else {
        smmu.set_ste(EDU_STREAM, ste::config(0b110))?;
        blocked_dma()?;
        smmu.expect_events("STE Config=0b110 without stage 2", Expect::id(C_BAD_STE))?;
    }
    sentinels_intact()?;
    if differs(page_a(), seed).is_some() {
        return Err("a blocked DMA reached the page its old translation mapped");
    }
    smmu.install_translation()
}

/// Check 4.
fn illegal_command(smmu: &mut Smmu<'_>) -> Outcome {
    smmu.discard_events()?;
    if smmu.active_errors() & CMDQ_ERR != 0 {
        return Err("CMDQ_ERR was active before the illegal command");
    }
    let gerror_before = smmu.read32(reg::GERROR);
    let msi = smmu.features.msi();
    let word = msi_word(1);
    let data = 0xc0de_0000 | (smmu.next_msi & 0xffff);
    smmu.next_msi += 1;
    put32(word, 0);
    smmu.flush(word, 4);
    let after = if msi {
        command::sync(1, word, data)
    } else {
        command::sync_none()
    };
    smmu.queue(&[command::cfgi_ste(EDU_STREAM)])?;
    let illegal = smmu.queue(&[[UNDEFINED_OPCODE, 0]])?;
    smmu.queue(&[command::tlbi_nh_asid(smmu.live_asid), after])?;
    smmu.ring();
    let mask = (2 << smmu.cmdq_log2) - 1;
    let mut stopped = false;
    for _ in 0..REGISTER_POLLS {
        if smmu.active_errors() & CMDQ_ERR != 0 {
            stopped = true;
            break;
        }
    }
    let cons = smmu.read32(reg::CMDQ_CONS);
    smmu.info(format_args!(
        "undefined opcode {UNDEFINED_OPCODE:#x} at CMDQ index {:#x}: CMDQ_CONS {cons:#x}, GERROR {:#x} -> {:#x}",
        illegal,
        gerror_before,
        smmu.read32(reg::GERROR)
    ));
    if !stopped {
        return Err("GERROR.CMDQ_ERR did not become active");
    }
    if (smmu.read32(reg::GERROR) ^ gerror_before) & CMDQ_ERR == 0 {
        return Err("GERROR.CMDQ_ERR did not toggle");
    }
    if cons >> 24 & 0x7f != CERROR_ILL {
        return Err("CMDQ_CONS.ERR is not CERROR_ILL");
    }
    if cons & mask != illegal {
        return Err("CMDQ_CONS does not point at the illegal command");
    }
    // The queue stays stopped: CONS does not move and the sync after it does not signal.
    for _ in 0..1000 {
        if smmu.read32(reg::CMDQ_CONS) & mask != illegal {
            return Err("CMDQ_CONS moved while CMDQ_ERR was active");
        }
    }
    smmu.flush(word, 4);
    if msi && get32(word) != 0 {
        return Err("a CMD_SYNC after the illegal command completed while CMDQ_ERR was active");
    }
    // Skip the command as Linux does: replace it with a CMD_SYNC, then acknowledge.
    let slot = command_queue() + smmu.cmd_index(illegal) * 16;
    let replacement = command::sync_none();
    put(slot, replacement[0]);
    put(slot + 8, replacement[1]);
    smmu.flush(slot, 16);
    smmu.acknowledge(CMDQ_ERR);
    if msi {
        smmu.wait_msi(word, data)?;
    }
    smmu.wait_consumed()?;
    if smmu.active_errors() & CMDQ_ERR != 0 {
        return Err("CMDQ_ERR is active after the acknowledgement");
    }
    // And the queue keeps working.
    smmu.submit(&[command::cfgi_ste(EDU_STREAM)])
}

/// Memory that is not the guest's, for each role.
#[derive(Clone, Copy, Debug)]
struct Foreign {
    /// Where a structure the SMMU reads is placed (the hypervisor's image: its code).
    read: u64,
    /// Where a structure the SMMU writes, or a CD, is placed (the hypervisor's device tree).
    write: u64,
    what: &'static str,
}

/// The hypervisor's boot device tree and image, below the guest's RAM on QEMU virt.
const HYPERVISOR_TREE: u64 = 0x4000_0000;
const HYPERVISOR_IMAGE: u64 = 0x4020_0000;

fn foreign_memory(platform: &Platform) -> [Option<Foreign>; 2] {
    let below = platform
        .ram_base
        .is_some_and(|base| base >= HYPERVISOR_IMAGE + 0x1000);
    [
        below.then_some(Foreign {
            read: HYPERVISOR_IMAGE,
            write: HYPERVISOR_TREE,
            what: "the hypervisor's image and device tree",
        }),
        platform.ram_end.map(|end| Foreign {
            read: end,
            write: end,
            what: "past the end of the guest's RAM",
        }),
    ]
}

const DEVICE_FILL: u64 = 0x5555_5555_5555_5555;

/// Fills edu's whole buffer with [`DEVICE_FILL`] through the working translation.
fn prime_device_buffer(smmu: &mut Smmu<'_>) -> Outcome {
    smmu.install_translation()?;
    fill(page_b(), DEVICE_FILL);
    barrier();
    edu_dma(IOVA_B, EDU_BUFFER, 4096, false)?;
    smmu.discard_events()
}

/// Reads `len` bytes at IOVA_A into edu's buffer and writes them back, under a configuration
/// that must block both.
fn hostile_dma() -> Outcome {
    edu_dma(IOVA_A, EDU_BUFFER, HOSTILE_DMA_BYTES, false)?;
    edu_dma(EDU_BUFFER, IOVA_A, HOSTILE_DMA_BYTES, true)
}

/// With the working translation back, copies edu's buffer out through IOVA_B and checks that
/// it holds only the fill or, where a blocked read wrote, zeros.
fn device_buffer_clean(smmu: &mut Smmu<'_>) -> Outcome {
    smmu.install_translation()?;
    fill(page_b(), 0xeeee_eeee_eeee_eeee);
    barrier();
    edu_dma(EDU_BUFFER, IOVA_B, 4096, true)?;
    for i in 0..512u64 {
        let word = get(page_b() + i * 8);
        let fill = DEVICE_FILL ^ i << 8;
        if word != fill && !(i < HOSTILE_DMA_BYTES / 8 && word == 0) {
            return Err("edu's buffer received data from a blocked read");
        }
    }
    smmu.discard_events()
}

/// Check 5, one sub-case: the stream table base at `at`.
fn foreign_stream_table(smmu: &mut Smmu<'_>, at: u64) -> Outcome {
    prime_device_buffer(smmu)?;
    // The format in use stays (STRTAB_BASE_CFG as it is): the fetch that aborts is the STE
    // (linear) or the level-1 descriptor (two-level), somewhere in the table.
    let two_level = smmu.two_level;
    smmu.set_cr0(smmu.cr0 & !SMMUEN)?;
    smmu.write64(reg::STRTAB_BASE, RA | at);
    smmu.set_cr0(smmu.cr0 | SMMUEN)?;
    smmu.submit(&[command::cfgi_all()])?;
    hostile_dma()?;
    let outcome = smmu.expect_events(
        "stream table outside the guest's RAM",
        Expect {
            fetch: Some((at, STREAMS as u64 * 64)),
            ..Expect::id(F_STE_FETCH)
        },
    );
    smmu.use_stream_table(two_level)?;
    outcome?;
    device_buffer_clean(smmu)
}

/// Check 5, one sub-case: S1ContextPtr at `at`.
fn foreign_cd(smmu: &mut Smmu<'_>, at: u64) -> Outcome {
    prime_device_buffer(smmu)?;
    smmu.set_ste(EDU_STREAM, ste::stage1(at))?;
    smmu.submit(&[command::cfgi_cd(EDU_STREAM)])?;
    hostile_dma()?;
    let outcome = smmu.expect_events(
        "CD outside the guest's RAM",
        Expect {
            fetch: Some((at, 64)),
            fetch_in_input_tolerated: smmu.qemu_alone,
            ..Expect::id(F_CD_FETCH)
        },
    );
    outcome?;
    device_buffer_clean(smmu)
}

/// Check 5, one sub-case: CD.TTB0 at `at`.
fn foreign_tables(smmu: &mut Smmu<'_>, at: u64) -> Outcome {
    prime_device_buffer(smmu)?;
    let asid = smmu.set_cd(1, at);
    smmu.set_ste(EDU_STREAM, ste::stage1(contexts() + 64))?;
    smmu.submit(&[command::cfgi_cd(EDU_STREAM), command::tlbi_nh_asid(asid)])?;
    hostile_dma()?;
    let outcome = smmu.expect_events(
        "stage-1 table outside the guest's RAM",
        Expect {
            class: Some(CLASS_TT),
            input: Some((IOVA_A, HOSTILE_DMA_BYTES)),
            fetch: Some((at, 4096)),
            ..Expect::id(F_WALK_EABT)
        },
    );
    smmu.submit(&[command::tlbi_nh_asid(asid)])?;
    outcome?;
    device_buffer_clean(smmu)
}

/// Check 5, one sub-case: the command queue at `at`.
fn foreign_command_queue(smmu: &mut Smmu<'_>, at: u64) -> Outcome {
    if smmu.active_errors() & CMDQ_ERR != 0 {
        return Err("CMDQ_ERR was already active");
    }
    smmu.set_cr0(smmu.cr0 & !CMDQEN)?;
    smmu.write64(reg::CMDQ_BASE, RA | at | u64::from(smmu.cmdq_log2));
    smmu.write32(reg::CMDQ_PROD, 0);
    smmu.write32(reg::CMDQ_CONS, 0);
    smmu.set_cr0(smmu.cr0 | CMDQEN)?;
    smmu.write32(reg::CMDQ_PROD, 1);
    let mut stopped = false;
    for _ in 0..REGISTER_POLLS {
        if smmu.active_errors() & CMDQ_ERR != 0 {
            stopped = true;
            break;
        }
    }
    let cons = smmu.read32(reg::CMDQ_CONS);
    smmu.info(format_args!(
        "command queue outside the guest's RAM: CMDQ_CONS {cons:#x}, active global errors {:#x}",
        smmu.active_errors()
    ));
    // Back to the real queue, whatever happened.
    let mask = (2 << smmu.cmdq_log2) - 1;
    smmu.set_cr0(smmu.cr0 & !CMDQEN)?;
    smmu.write64(
        reg::CMDQ_BASE,
        RA | command_queue() | u64::from(smmu.cmdq_log2),
    );
    smmu.write32(reg::CMDQ_PROD, smmu.cmd_prod);
    smmu.write32(reg::CMDQ_CONS, smmu.cmd_prod);
    smmu.acknowledge(CMDQ_ERR);
    smmu.set_cr0(smmu.cr0 | CMDQEN)?;
    smmu.submit(&[])?;
    if !stopped {
        return Err("a command fetch outside the guest's RAM did not stop the queue");
    }
    if cons >> 24 & 0x7f != CERROR_ABT {
        return Err("a command fetch outside the guest's RAM is not CERROR_ABT");
    }
    if cons & mask != 0 {
        return Err("CMDQ_CONS moved past a command whose fetch aborted");
    }
    Ok(())
}

/// Check 5, one sub-case: the event queue at `at`.
fn foreign_event_queue(smmu: &mut Smmu<'_>, at: u64) -> Outcome {
    fill_sentinels();
    smmu.discard_events()?;
    if smmu.active_errors() & EVTQ_ABT_ERR != 0 {
        return Err("EVENTQ_ABT_ERR was already active");
    }
    smmu.set_cr0(smmu.cr0 & !EVTQEN)?;
    smmu.write64(reg::EVTQ_BASE, RA | at | u64::from(smmu.evtq_log2));
    smmu.write32(reg::EVTQ_PROD, 0);
    smmu.write32(reg::EVTQ_CONS, 0);
    smmu.set_cr0(smmu.cr0 | EVTQEN)?;
    // An event to record: stream 8 with V=0.
    smmu.set_ste(EDU_STREAM, ste::INVALID)?;
    blocked_dma()?;
    smmu.submit(&[])?;
    let errors = smmu.active_errors();
    smmu.info(format_args!(
        "event queue outside the guest's RAM: active global errors {errors:#x}, EVENTQ_PROD {:#x}",
        smmu.read32(reg::EVTQ_PROD)
    ));
    smmu.set_cr0(smmu.cr0 & !EVTQEN)?;
    smmu.write64(reg::EVTQ_BASE, RA | events() | u64::from(smmu.evtq_log2));
    smmu.write32(reg::EVTQ_PROD, smmu.evt_cons);
    smmu.write32(reg::EVTQ_CONS, smmu.evt_cons | smmu.evt_overflow);
    smmu.acknowledge(EVTQ_ABT_ERR);
    smmu.set_cr0(smmu.cr0 | EVTQEN)?;
    smmu.install_translation()?;
    if errors & EVTQ_ABT_ERR == 0 {
        return Err("an event queue outside the guest's RAM did not raise EVENTQ_ABT_ERR");
    }
    sentinels_intact()
}

/// Check 5, one sub-case: a CMD_SYNC's MSI at `at`.
fn foreign_msi(smmu: &mut Smmu<'_>, at: u64) -> Outcome {
    if smmu.active_errors() & MSI_CMDQ_ABT_ERR != 0 {
        return Err("MSI_CMDQ_ABT_ERR was already active");
    }
    smmu.queue(&[command::sync(1, at, 0xbad0_5eed)])?;
    smmu.ring();
    smmu.wait_consumed()?;
    smmu.submit(&[])?;
    let errors = smmu.active_errors();
    smmu.info(format_args!(
        "sync MSI outside the guest's RAM: active global errors {errors:#x}"
    ));
    smmu.acknowledge(MSI_CMDQ_ABT_ERR);
    if errors & MSI_CMDQ_ABT_ERR == 0 {
        return Err("an MSI outside the guest's RAM did not raise MSI_CMDQ_ABT_ERR");
    }
    Ok(())
}

/// Check 5.
fn foreign_pointers(smmu: &mut Smmu<'_>, platform: &Platform) -> Outcome {
    let mut first_failure = None;
    let mut cases = 0;
    for foreign in foreign_memory(platform).into_iter().flatten() {
        type Case = for<'a, 'b> fn(&'a mut Smmu<'b>, u64) -> Outcome;
        let sub_cases: [(&str, u64, Case, bool); 6] = [
            ("stream table", foreign.read, foreign_stream_table, true),
            ("CD", foreign.write, foreign_cd, true),
            ("stage-1 table", foreign.read, foreign_tables, true),
            ("command queue", foreign.read, foreign_command_queue, true),
            ("event queue", foreign.write, foreign_event_queue, true),
            ("sync MSI", foreign.write, foreign_msi, smmu.features.msi()),
        ];
        for (name, at, case, applicable) in sub_cases {
            if !applicable {
                smmu.info(format_args!(
                    "{name} at {at:#x} ({}): not applicable (IDR0.MSI is 0)",
                    foreign.what
                ));
                continue;
            }
            cases += 1;
            let outcome = case(smmu, at);
            match outcome {
                Ok(()) => smmu.info(format_args!(
                    "{name} at {at:#x} ({}): refused as the architecture says",
                    foreign.what
                )),
                Err(why) => {
                    smmu.info(format_args!("{name} at {at:#x} ({}): {why}", foreign.what));
                    first_failure.get_or_insert(why);
                    // Leave a known state for the next sub-case.
                    let _ = smmu.discard_events();
                    let _ = smmu.install_translation();
                }
            }
        }
    }
    if cases == 0 {
        return Err("no memory outside the guest's RAM is known (no memory node)");
    }
    match first_failure {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// Runs the `vsmmu` checks and prints their verdict.
/// A writer that drops what it is given: the benchmark's SMMU reports nothing.
struct Sink;

impl Write for Sink {
    fn write_str(&mut self, _: &str) -> core::fmt::Result {
        Ok(())
    }
}

/// Benchmark cases on the SMMU the device tree names (the vSMMU, under the hypervisor): one
/// `CMDQ_PROD` write carrying 1, then 32, TLBI_NH_ASID commands and a CMD_SYNC whose MSI goes
/// into the sync's own queue slot, which the guest polls in memory, as Linux issues them.
/// `measure` runs a case many times and reports it. Returns why there is nothing to measure.
pub(super) fn bench(
    platform: &Platform,
    measure: &mut dyn FnMut(&'static str, &mut dyn FnMut()),
) -> Outcome {
    let base = platform
        .smmu
        .ok_or("the device tree has no arm,smmu-v3 node")?;
    let mut sink = Sink;
    let mut smmu = probe(&mut sink, base, platform.qemu_alone)?;
    if !smmu.features.msi() {
        return Err("the SMMU has no MSI");
    }
    let one = [command::tlbi_nh_asid(1)];
    let many = [command::tlbi_nh_asid(1); 32];
    let mut failed = false;
    measure(
        "vsmmu-cmdq-1-command-and-sync (one CMDQ_PROD trap, MSI polled)",
        &mut || failed |= smmu.submit_msi_into_queue(&one).is_err(),
    );
    measure(
        "vsmmu-cmdq-32-commands-and-sync (one CMDQ_PROD trap, MSI polled)",
        &mut || failed |= smmu.submit_msi_into_queue(&many).is_err(),
    );
    let _ = smmu.set_cr0(0);
    if failed {
        Err("a command batch failed")
    } else {
        Ok(())
    }
}

pub(super) fn run(out: &mut dyn Write, platform: &Platform) {
    const NAMES: [&str; 5] = [
        "vsmmu-probe",
        "nested-translation-edu",
        "invalid-ste-c-bad-ste",
        "illegal-command-cerror-ill",
        "pointers-at-hypervisor-memory",
    ];
    let mut outcomes: [Outcome; 5] = [Err("the device tree has no arm,smmu-v3 node"); 5];
    // Outcomes are printed as they are decided; those not printed yet, at the end.
    let mut printed = 0;
    if let Some(base) = platform.smmu {
        let edu = edu_present();
        match probe(&mut *out, base, platform.qemu_alone) {
            Err(why) => {
                outcomes[0] = Err(why);
                outcomes[1..].fill(Err("the SMMU could not be enabled"));
            }
            Ok(mut smmu) => {
                outcomes[0] = Ok(());
                print_one(smmu.out, NAMES[0], Ok(()));
                printed = 1;
                if edu {
                    type Check = for<'a, 'b> fn(&'a mut Smmu<'b>) -> Outcome;
                    let checks: [Check; 3] = [nested_translation, invalid_ste, illegal_command];
                    for (i, check) in checks.into_iter().enumerate() {
                        outcomes[i + 1] = check(&mut smmu);
                        print_one(smmu.out, NAMES[i + 1], outcomes[i + 1]);
                    }
                    outcomes[4] = foreign_pointers(&mut smmu, platform);
                    print_one(smmu.out, NAMES[4], outcomes[4]);
                    printed = 5;
                } else {
                    outcomes[1..].fill(Err("no edu device at 00:01.0"));
                }
                // Everything the guest configured stops.
                let _ = smmu.set_cr0(0);
            }
        }
    }
    for (name, outcome) in NAMES.iter().zip(outcomes).skip(printed) {
        print_one(out, name, outcome);
    }
    let failed = outcomes.iter().filter(|o| o.is_err()).count();
    let _ = if failed == 0 {
        writeln!(out, "GUEST VERDICT: PASS {} checks", outcomes.len())
    } else {
        writeln!(
            out,
            "GUEST VERDICT: FAIL {failed} of {} checks failed",
            outcomes.len()
        )
    };
}

fn print_one(out: &mut dyn Write, name: &str, outcome: Outcome) {
    let _ = match outcome {
        Ok(()) => writeln!(out, "GUEST: PASS {name}"),
        Err(why) => writeln!(out, "GUEST: FAIL {name}: {why}"),
    };
}
