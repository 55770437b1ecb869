//! The physical SMMU, owned by the hypervisor: its memory, its bring-up, the stage-2-only
//! stream table entries that confine the guest's devices, and the intake of its events.
//!
//! The `smmu` crate's driver does the work through two traits implemented here: [`StaticDma`]
//! (memory the SMMU reads and writes: static arrays in the hypervisor's carve-out, identity
//! mapped, so a pointer is the physical address) and [`HypPlatform`] (barriers, pause).

use super::mmio::DeviceWindow;
use crate::stats::{self, GuestNoise};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use smmu::driver::{DmaMemory, Driver, DriverConfig, DriverMemory, EventIntake, Platform};
use smmu::hardware::RegisterAccess;
use smmu::registers::RegisterOffset;
use smmu::{PhysAddr, PhysRange, StreamId};

/// One buffer the SMMU uses, in the image's bss, aligned for any of the driver's structures.
#[repr(C, align(65536))]
struct DmaBuffer<const N: usize> {
    bytes: UnsafeCell<[u8; N]>,
    taken: AtomicBool,
}

// SAFETY: the bytes are reachable only through `take`, which hands them out once.
unsafe impl<const N: usize> Sync for DmaBuffer<N> {}

impl<const N: usize> DmaBuffer<N> {
    const fn new() -> Self {
        Self {
            bytes: UnsafeCell::new([0; N]),
            taken: AtomicBool::new(false),
        }
    }

    fn take(&'static self) -> Option<StaticDma> {
        if self.taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(StaticDma {
            base: self.bytes.get() as usize,
            size: N,
        })
    }
}

/// Level-1 stream table: 256 descriptors for 16-bit stream IDs split at bit 8.
static STREAM_TABLE_L1: DmaBuffer<{ 256 * 8 }> = DmaBuffer::new();
/// Level-2 stream tables: one 16 KiB table per 256 stream IDs, enough for all 65536 stream IDs
/// of QEMU virt's PCIe host (every requester ID the guest may create).
static STREAM_TABLE_L2: DmaBuffer<{ 256 * 16 * 1024 }> = DmaBuffer::new();
/// Command queue: 4096 commands.
static COMMAND_QUEUE: DmaBuffer<{ 64 * 1024 }> = DmaBuffer::new();
/// Event queue: 1024 records.
static EVENT_QUEUE: DmaBuffer<{ 32 * 1024 }> = DmaBuffer::new();
/// PRI queue: 256 page-request entries, used only if the SMMU has PRI (QEMU's has not).
static PRI_QUEUE: DmaBuffer<{ 256 * 16 }> = DmaBuffer::new();
/// The virtual SMMU's shadow CD tables: one 64-byte CD for each of 256 streams (QEMU's SMMU
/// has no substreams). The SMMU reads them through the VM's stage 2 (a read-only window).
static SHADOW_CDS: DmaBuffer<{ 256 * 64 }> = DmaBuffer::new();

/// The shadow CD memory, once.
pub fn take_shadow_cds() -> Option<StaticDma> {
    SHADOW_CDS.take()
}

/// A region of the hypervisor's memory given to the SMMU.
#[derive(Debug)]
pub struct StaticDma {
    base: usize,
    size: usize,
}

impl StaticDma {
    fn word(&self, offset: usize) -> Option<*mut u64> {
        (offset % 8 == 0 && offset.checked_add(8)? <= self.size)
            .then(|| (self.base + offset) as *mut u64)
    }
}

impl DmaMemory for StaticDma {
    fn phys(&self) -> PhysAddr {
        // Identity-mapped at EL2: the address of the array is its physical address.
        PhysAddr(self.base as u64)
    }

    fn size(&self) -> usize {
        self.size
    }

    fn read_u64(&self, offset: usize) -> u64 {
        // SAFETY: in bounds and aligned (checked by `word`); the buffer belongs to this region
        // alone (`DmaBuffer::take`), and a 64-bit volatile load is single-copy atomic.
        self.word(offset)
            .map_or(0, |p| unsafe { core::ptr::read_volatile(p) })
    }

    fn write_u64(&mut self, offset: usize, value: u64) {
        if let Some(p) = self.word(offset) {
            // SAFETY: as in `read_u64`; a 64-bit volatile store is single-copy atomic.
            unsafe { core::ptr::write_volatile(p, value) };
        }
    }
}

/// Barriers and pauses for the driver.
#[derive(Debug)]
pub struct HypPlatform;

impl Platform for HypPlatform {
    fn dma_barrier(&self) {
        // SAFETY: a barrier has no effect on memory contents.
        unsafe { core::arch::asm!("dsb sy", options(nostack, preserves_flags)) };
    }

    fn pause(&self) {
        core::hint::spin_loop();
    }
}

/// The SMMU's register pages as the `smmu` driver wants them. Offsets outside the window read as
/// zero and writes to them are dropped: the driver only uses architected offsets, so that never
/// happens, and a stray access must not reach another device.
#[derive(Debug)]
pub struct SmmuRegisters(pub DeviceWindow);

impl RegisterAccess for SmmuRegisters {
    fn read32(&self, offset: RegisterOffset) -> u32 {
        self.0.read32(offset.get() as usize).unwrap_or(0)
    }
    fn write32(&mut self, offset: RegisterOffset, value: u32) {
        let _ = self.0.write32(offset.get() as usize, value);
    }
    fn read64(&self, offset: RegisterOffset) -> u64 {
        self.0.read64(offset.get() as usize).unwrap_or(0)
    }
    fn write64(&mut self, offset: RegisterOffset, value: u64) {
        let _ = self.0.write64(offset.get() as usize, value);
    }
}

/// The driver as the hypervisor instantiates it.
pub type PhysicalSmmu = Driver<SmmuRegisters, StaticDma, HypPlatform>;

/// The physical SMMU, once brought up.
pub static SMMU: spin::Mutex<Option<PhysicalSmmu>> = spin::Mutex::new(None);

/// Why the SMMU could not be brought up.
#[derive(Clone, Copy, Debug, defmt::Format)]
pub enum BringUpError {
    /// Its memory was already handed out (bring-up ran twice).
    MemoryTaken,
    /// The driver refused.
    Driver(smmu::driver::Error),
}

/// Resets the SMMU to the hypervisor's configuration: every stream aborts (GBPA = ABORT, every
/// STE invalid) until [`confine_streams`] gives a stream an entry.
pub fn bring_up(registers: PhysRange) -> Result<(), BringUpError> {
    let (Some(l1), Some(l2), Some(cmdq), Some(evtq), Some(priq)) = (
        STREAM_TABLE_L1.take(),
        STREAM_TABLE_L2.take(),
        COMMAND_QUEUE.take(),
        EVENT_QUEUE.take(),
        PRI_QUEUE.take(),
    ) else {
        return Err(BringUpError::MemoryTaken);
    };
    // SAFETY: the SMMU's register pages are mapped as device memory by the EL2 map and owned by
    // the hypervisor alone; the driver accesses only architected registers.
    let window =
        unsafe { DeviceWindow::new(registers.base.get() as usize, registers.size as usize) };
    let memory = DriverMemory {
        stream_table_l1: l1,
        stream_table_l2_pool: l2,
        command_queue: cmdq,
        event_queue: evtq,
        // The driver uses it only when IDR0.PRI says the SMMU has PRI.
        pri_queue: Some(priq),
    };
    let driver = Driver::new(
        SmmuRegisters(window),
        memory,
        HypPlatform,
        DriverConfig::DEFAULT,
    )
    .map_err(BringUpError::Driver)?;
    defmt::info!(
        "SMMU enabled: GBPA abort, {=u32} command slots, {=u32} event slots, stream table for {=u8}-bit IDs",
        driver.command_queue_entries(),
        driver.event_queue_entries(),
        driver.sid_bits()
    );
    *SMMU.lock() = Some(driver);
    Ok(())
}

/// Why guest streams could not be confined.
#[derive(Clone, Copy, Debug, defmt::Format)]
pub enum ConfineError {
    /// The SMMU was not brought up.
    NotUp,
    /// The stage-2 parameters do not suit this SMMU.
    Make(smmu::entry::make::MakeError),
    /// The entry would be unsafe to hand to the hardware (never expected for a made entry).
    Refused(smmu::entry::install::PhysicalEntryError),
    /// The driver failed.
    Driver(smmu::driver::Error),
}

/// The physical SMMU's features, once it is up.
pub fn features() -> Option<smmu::registers::Features> {
    SMMU.lock().as_ref().map(|driver| *driver.features())
}

/// Gives every stream ID in `[first, last]` a stage-2-only entry over `translation` (the VM's
/// SMMU stage 2): the guest's devices translate through the SMMU's stage 2 for the guest, and
/// nothing else. Returns how many streams were confined.
pub fn confine_streams(
    first: StreamId,
    last: StreamId,
    translation: &smmu::entry::make::Stage2Translation,
) -> Result<u32, ConfineError> {
    use smmu::entry::PhysicalSte;
    use smmu::entry::make::make_stage2_ste;
    let mut guard = SMMU.lock();
    let Some(driver) = guard.as_mut() else {
        return Err(ConfineError::NotUp);
    };
    let ste = PhysicalSte::check(make_stage2_ste(translation)).map_err(ConfineError::Refused)?;
    // Fresh streams (V = 0 since reset) are given the entry together, with two range
    // invalidations in all; a live one would go through the hitless installer on its own.
    let report = driver
        .install_stes(first, last, &ste)
        .map_err(ConfineError::Driver)?;
    Ok(report.streams())
}

/// What the SMMU reported, counted for the shutdown report: every event, the stage-2 faults
/// among them (a device reaching outside its guest's RAM) by direction, overflows of the event
/// queue, and global errors.
static EVENTS_SEEN: AtomicU64 = AtomicU64::new(0);
static STAGE2_READ_FAULTS: AtomicU64 = AtomicU64::new(0);
static STAGE2_WRITE_FAULTS: AtomicU64 = AtomicU64::new(0);
static OVERFLOWS: AtomicU64 = AtomicU64::new(0);
static GLOBAL_ERRORS: AtomicU64 = AtomicU64::new(0);
/// Events a virtual SMMU took for its guest.
static FORWARDED: AtomicU64 = AtomicU64::new(0);

/// Records taken from the queue per lock hold: events are handed to `offer` (the virtual
/// SMMU) with the SMMU's lock released, since the lock order is "vSMMU, then SMMU".
const DRAIN_CHUNK: u32 = 32;

/// Takes, with a budget, what the SMMU reported since the last call. Each event is first
/// offered to `offer` (the virtual SMMU of the stream's VM, which forwards what is the
/// guest's); what it does not take is the hypervisor's: stage-2 faults (a device tried to reach
/// memory outside its guest) and events of streams no vSMMU owns are counted and logged (the
/// first few of each kind).
///
/// Returns whether records remain (the budget ran out).
pub fn drain_events(budget: u32, mut offer: impl FnMut(&smmu::event::Event) -> bool) -> bool {
    let mut left = budget;
    loop {
        let chunk = left.min(DRAIN_CHUNK);
        let mut events: heapless::Vec<smmu::event::Event, { DRAIN_CHUNK as usize }> =
            heapless::Vec::new();
        let more = {
            let mut guard = SMMU.lock();
            let Some(driver) = guard.as_mut() else {
                return false;
            };
            let report = driver.drain_events(chunk, |intake| match intake {
                EventIntake::Event(event) => {
                    EVENTS_SEEN.fetch_add(1, Ordering::Relaxed);
                    let _ = events.push(event);
                }
                EventIntake::Undecodable { record, error } => {
                    EVENTS_SEEN.fetch_add(1, Ordering::Relaxed);
                    if stats::noise(GuestNoise::SmmuUndecodableEvent) {
                        defmt::warn!(
                            "SMMU event undecodable ({}): {=[?]:#x}",
                            error,
                            record.words()
                        )
                    }
                }
                EventIntake::Overflowed => {
                    OVERFLOWS.fetch_add(1, Ordering::Relaxed);
                    if stats::noise(GuestNoise::SmmuEventsLost) {
                        defmt::warn!("SMMU event queue overflowed: events were lost")
                    }
                }
            });
            let _ = driver.handle_global_errors(|error| {
                GLOBAL_ERRORS.fetch_add(1, Ordering::Relaxed);
                if stats::noise(GuestNoise::SmmuGlobalError) {
                    defmt::error!("SMMU global error: {}", error)
                }
            });
            report.is_ok_and(|report| report.remaining != 0)
        };
        for event in &events {
            if offer(event) {
                FORWARDED.fetch_add(1, Ordering::Relaxed);
            } else {
                keep_event(event);
            }
        }
        left -= chunk;
        if !more || left == 0 {
            return more;
        }
    }
}

/// An event the hypervisor keeps: counted, and logged within the rate limit (a guest makes its
/// devices fault at will, a failed DMA reporting once per 4 bytes).
fn keep_event(event: &smmu::event::Event) {
    if event.s2 {
        let faults = if event.rnw {
            &STAGE2_READ_FAULTS
        } else {
            &STAGE2_WRITE_FAULTS
        };
        faults.fetch_add(1, Ordering::Relaxed);
    }
    if stats::noise(GuestNoise::SmmuEvent) {
        defmt::warn!(
            "SMMU event {} stream {=u32:#x} {=str}{=str} at {=u64:#x}",
            event.id,
            event.sid.get(),
            if event.rnw { "read" } else { "write" },
            if event.s2 { " (stage 2)" } else { "" },
            event.input_addr.get()
        );
    }
}

/// Takes what is left in the event queue (at most one queue's worth), then logs the counts.
pub fn report_events(offer: impl FnMut(&smmu::event::Event) -> bool) {
    let entries = SMMU
        .lock()
        .as_ref()
        .map_or(0, PhysicalSmmu::event_queue_entries);
    let _ = drain_events(entries, offer);
    defmt::info!(
        "SMMU events: {=u64} in all, {=u64} forwarded to a guest, {=u64} stage-2 read faults, {=u64} stage-2 write faults, {=u64} overflows, {=u64} global errors",
        EVENTS_SEEN.load(Ordering::Relaxed),
        FORWARDED.load(Ordering::Relaxed),
        STAGE2_READ_FAULTS.load(Ordering::Relaxed),
        STAGE2_WRITE_FAULTS.load(Ordering::Relaxed),
        OVERFLOWS.load(Ordering::Relaxed),
        GLOBAL_ERRORS.load(Ordering::Relaxed)
    );
}
