//! The guest's virtual SMMU, wired to the hypervisor: its SMMU stage 2 (a `smmu::domain` over
//! the guest's RAM, with DMA pins), the `nested` vSMMU behind the register window the guest's
//! device tree names, its interrupts (virtual SPIs), and the physical events it forwards.
//!
//! The path of a guest write to the vSMMU: a stage-2 data abort at the window (left unmapped)
//! -> `crate::trap::handler` -> the MMIO registry -> [`VsmmuDevice`] -> `nested`'s
//! `VirtualSmmu`, which validates, shadows and forwards, reaching the physical SMMU through
//! [`SharedPhysical`] and guest RAM through [`GuestRam`]. Work beyond one trap's budget
//! continues on the EL2 timer ([`run_pending`]), never in a loop at EL2.
//!
//! Streams: the vSMMU owns the requester IDs of the PCIe host's first bus (stream IDs 0 to
//! [`VSMMU_STREAMS`] - 1, the guest's stream ID equal to the physical one). Every other stream
//! ID of the host keeps a stage-2-only entry over the same stage 2, so a device the vSMMU does
//! not own is still confined to guest RAM.
//!
//! Lock order: the vSMMU, then the physical SMMU; then, for an interrupt, the guest's
//! distributor, then a CPU's waiting set. The physical event queue is drained with only the
//! physical SMMU's lock held, and the events handed to the vSMMU after it is released.

use crate::arch::smmu::{self as physical, StaticDma};
use crate::guest_memory::GuestRam;
use crate::page_pool::StaticFrames;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};
use nested::{
    AccessWidth, Backends, InterruptSink, MmioDevice, MmioError, MmioOffset, PhysicalCommand,
    PhysicalSmmu, ShadowSte, StreamAssignment, VcpuId, VirtualInterrupt, VirtualSmmu, VsmmuConfig,
};
use smmu::domain::{
    Access, DEFAULT_MAX_PAGES_PER_CALL, DomainConfig, MemoryType, PAGE_SIZE, Permissions, PinTable,
    Stage2Domain, Stage2Geometry, Stage2Use, SyncProof, WalkAttributes,
};
use smmu::driver::DmaMemory;
use smmu::entry::install::InstallReport;
use smmu::entry::make::Stage2Translation;
use smmu::registers::Features;
use smmu::{Ipa, IpaRange, PhysAddr, PhysRange, StreamId, VirtualStreamId, Vmid};

/// Streams the vSMMU owns: the 256 requester IDs of bus 0.
pub const VSMMU_STREAMS: usize = 256;

/// IDR1.SIDSIZE of the vSMMU: stream IDs 0 to 255.
const VSMMU_SID_BITS: u8 = 8;

/// Where the shadow CD window is in the VM's SMMU stage 2: 1 TiB, above everything QEMU virt
/// puts in a guest's physical address space, and not mapped in its CPU stage 2.
pub const CD_WINDOW_BASE: u64 = 0x100_0000_0000;

/// The SMMU stage 2's tables: 4 KiB pages for [`MAX_GUEST_RAM`](crate::layout::MAX_GUEST_RAM)
/// (one level-3 table per 2 MiB), the CD window, and the upper levels.
const DOMAIN_TABLE_PAGES: usize = (crate::layout::MAX_GUEST_RAM / (2 << 20)) as usize + 16;
static DOMAIN_TABLES: StaticFrames<DOMAIN_TABLE_PAGES> = StaticFrames::new();

/// Where the SMMU stage 2's tables are, for the integrity fingerprint.
#[must_use]
pub fn stage2_tables() -> PhysRange {
    DOMAIN_TABLES.range()
}

/// Pin counts, one per 4 KiB page of the carve-out and the largest guest RAM.
const PIN_PAGES: usize =
    ((crate::layout::HYPERVISOR_CARVE_OUT + crate::layout::MAX_GUEST_RAM) / PAGE_SIZE) as usize;

struct PinStorage {
    counts: UnsafeCell<[u16; PIN_PAGES]>,
    taken: AtomicBool,
}

// SAFETY: the counts are reachable only through `take`, which hands them out once.
unsafe impl Sync for PinStorage {}

static PIN_STORAGE: PinStorage = PinStorage {
    counts: UnsafeCell::new([0; PIN_PAGES]),
    taken: AtomicBool::new(false),
};

impl PinStorage {
    fn take(&'static self) -> Option<&'static mut [u16]> {
        if self.taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: handed out once (the flag above), and nothing else names the array.
        Some(unsafe { &mut *self.counts.get() })
    }
}

/// The physical SMMU as one VM's vSMMU reaches it: every call takes the driver's lock.
#[derive(Debug)]
pub struct SharedPhysical {
    /// What it can do, read once at set-up.
    features: Features,
}

/// Why a call through [`SharedPhysical`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharedPhysicalError {
    /// The SMMU was never brought up.
    NotUp,
    /// The driver's error.
    Driver(nested::interfaces::physical::DriverBackendError),
}

impl SharedPhysical {
    /// Runs `f` on the driver, under its lock.
    fn with<T>(
        &self,
        f: impl FnOnce(
            &mut physical::PhysicalSmmu,
        ) -> Result<T, nested::interfaces::physical::DriverBackendError>,
    ) -> Result<T, SharedPhysicalError> {
        let mut guard = physical::SMMU.lock();
        let driver = guard.as_mut().ok_or(SharedPhysicalError::NotUp)?;
        f(driver).map_err(SharedPhysicalError::Driver)
    }
}

impl PhysicalSmmu for SharedPhysical {
    type Error = SharedPhysicalError;

    fn features(&self) -> Features {
        self.features
    }

    fn install_ste(
        &mut self,
        sid: StreamId,
        target: &ShadowSte,
    ) -> Result<InstallReport, Self::Error> {
        self.with(|driver| PhysicalSmmu::install_ste(driver, sid, target))
    }

    fn submit(&mut self, commands: &[PhysicalCommand]) -> Result<(), Self::Error> {
        self.with(|driver| PhysicalSmmu::submit(driver, commands))
    }

    fn sync(&mut self) -> Result<SyncProof, Self::Error> {
        self.with(PhysicalSmmu::sync)
    }

    fn pri_queue_position(&mut self) -> Option<nested::PriPosition> {
        // None while the driver has no PRI queue (QEMU's SMMU has no PRI): the vSMMU then
        // advertises none.
        let mut guard = physical::SMMU.lock();
        PhysicalSmmu::pri_queue_position(guard.as_mut()?)
    }
}

/// The vSMMU's interrupt outputs, as the guest's INTIDs (the physical SMMU's, reused as
/// virtual SPIs).
#[derive(Clone, Copy, Debug, Default)]
pub struct VsmmuInterrupts {
    event_queue: Option<u32>,
    pri_queue: Option<u32>,
    global_error: Option<u32>,
    command_sync: Option<u32>,
}

impl VsmmuInterrupts {
    /// The INTIDs of the platform's SMMU interrupts; a combined line is not given to the
    /// vSMMU (each output needs its own virtual SPI).
    #[must_use]
    pub fn from_platform(interrupts: &board::SmmuInterrupts) -> Self {
        let intid = |line: Option<board::Interrupt>| line.and_then(|i| i.intid());
        Self {
            event_queue: intid(interrupts.eventq),
            pri_queue: intid(interrupts.priq),
            global_error: intid(interrupts.gerror),
            command_sync: intid(interrupts.cmdq_sync),
        }
    }

    /// The INTIDs to make virtual SPIs, in [`VirtualInterrupt::ALL`]'s order.
    pub fn intids(&self) -> impl Iterator<Item = u32> + '_ {
        VirtualInterrupt::ALL
            .into_iter()
            .filter_map(|output| self.intid(output))
    }

    fn intid(&self, output: VirtualInterrupt) -> Option<u32> {
        match output {
            VirtualInterrupt::EventQueue => self.event_queue,
            VirtualInterrupt::PriQueue => self.pri_queue,
            VirtualInterrupt::GlobalError => self.global_error,
            VirtualInterrupt::CommandSync => self.command_sync,
        }
    }
}

impl InterruptSink for VsmmuInterrupts {
    fn raise(&mut self, interrupt: VirtualInterrupt) {
        if let Some(intid) = self.intid(interrupt) {
            crate::interrupts::raise_virtual_spi(intid);
        }
    }

    fn send_event(&mut self) {
        // SAFETY: SEV only signals an event to every PE; it touches no memory.
        unsafe { core::arch::asm!("dsb ish", "sev", options(nostack, preserves_flags)) };
    }
}

/// The vSMMU as the hypervisor instantiates it.
pub type Vsmmu = VirtualSmmu<GuestRam, SharedPhysical, VsmmuInterrupts, StaticDma, VSMMU_STREAMS>;

/// The VM's SMMU stage 2 and the pins on the pages it maps.
#[allow(
    missing_debug_implementations,
    reason = "holds the domain's table allocator"
)]
struct VmStage2 {
    domain: Stage2Domain<crate::page_pool::PagePool>,
    _pins: PinTable<'static>,
}

static STAGE2: spin::Once<spin::Mutex<VmStage2>> = spin::Once::new();
static VSMMU: spin::Once<spin::Mutex<Vsmmu>> = spin::Once::new();
/// What the MMIO registry holds for the vSMMU's register window.
static DEVICE: spin::Mutex<VsmmuDevice> = spin::Mutex::new(VsmmuDevice);

/// Why the vSMMU could not be set up.
#[derive(Clone, Copy, Debug, defmt::Format)]
pub enum SetupError {
    /// The SMMU is not up, or a static pool was already taken.
    NotAvailable(&'static str),
    /// The SMMU cannot walk the stage 2's geometry.
    Geometry(smmu::domain::GeometryError),
    /// The domain refused a map.
    Domain(smmu::domain::DomainError),
    /// The pin table refused its range.
    Pins(smmu::domain::PinError),
    /// The stage-2 STE parameters were refused.
    Make(smmu::entry::make::MakeError),
    /// Confining the streams the vSMMU does not own failed.
    Confine(physical::ConfineError),
    /// `nested` refused the configuration.
    Vsmmu(#[defmt(Debug2Format)] nested::ConfigError),
}

/// What [`set_up`] made, for the guest's device tree and MMIO registry.
#[derive(Debug)]
pub struct VsmmuSetup {
    /// The register window, in the guest's IPA space.
    pub registers: IpaRange,
    /// The device the registry sends accesses to the window to.
    pub device: &'static spin::Mutex<VsmmuDevice>,
    /// The streams the vSMMU owns (guest stream ID = physical).
    pub owned: (StreamId, StreamId),
    /// The streams confined to stage 2 alone.
    pub confined: u32,
}

/// Builds the VM's SMMU stage 2 (`dma`, what `crate::stage2::dma_regions` lets a device
/// reach, and the shadow CD window read-only), gives every
/// stream of the PCIe host a stage-2-only entry over it, then the vSMMU, which takes over the
/// first [`VSMMU_STREAMS`] of them. `registers` is where the guest finds the vSMMU (the physical
/// SMMU's address, which the guest's stage 2 leaves unmapped); `ram` is the guest's RAM, all
/// the vSMMU may copy from and to.
///
/// # Errors
///
/// [`SetupError`] at the first refusal; the boot then stops.
pub fn set_up(
    ram: PhysRange,
    dma: &crate::stage2::Stage2Regions,
    carve_out: PhysRange,
    streams: (StreamId, StreamId),
    registers: PhysRange,
    interrupts: VsmmuInterrupts,
    vmid: u16,
) -> Result<VsmmuSetup, SetupError> {
    let features = physical::features().ok_or(SetupError::NotAvailable("the SMMU"))?;
    let tables = DOMAIN_TABLES
        .take()
        .ok_or(SetupError::NotAvailable("stage-2 tables"))?;
    let counts = PIN_STORAGE
        .take()
        .ok_or(SetupError::NotAvailable("pin counts"))?;
    let mut pins = PinTable::new(carve_out.base, counts, DEFAULT_MAX_PAGES_PER_CALL)
        .map_err(SetupError::Pins)?;
    let config = DomainConfig {
        vmid: Vmid(vmid),
        geometry: Stage2Geometry::QEMU_VIRT,
        walk: WalkAttributes::COHERENT,
        usage: Stage2Use::NestingParent,
        record_faults: true,
        max_pages_per_call: DEFAULT_MAX_PAGES_PER_CALL,
    };
    config
        .geometry
        .check(&features)
        .map_err(SetupError::Geometry)?;
    let mut domain = Stage2Domain::new(tables, config).map_err(SetupError::Domain)?;
    // What `crate::stage2::dma_regions` allows a device to reach (guest RAM, and an MSI
    // doorbell when the guest has one), IPA == PA, in chunks of the domain's budget: bounded,
    // at boot.
    let chunk = DEFAULT_MAX_PAGES_PER_CALL * PAGE_SIZE;
    for region in dma {
        let permissions = match region.kind {
            crate::stage2::Stage2Kind::Ram => Permissions::RAM,
            crate::stage2::Stage2Kind::Device => Permissions::DOORBELL,
        };
        let mut offset = 0;
        while offset < region.range.size {
            let size = chunk.min(region.range.size - offset);
            let at = region.range.base.get() + offset;
            domain
                .map(&mut pins, Ipa(at), PhysAddr(at), size, permissions)
                .map_err(SetupError::Domain)?;
            offset += size;
        }
    }
    let shadow_cds =
        physical::take_shadow_cds().ok_or(SetupError::NotAvailable("shadow CD memory"))?;
    let shadow_size = shadow_cds.size() as u64;
    domain
        .map(
            // The shadow pages lie in the carve-out, which the pin table covers: pinned like
            // RAM, and never unmapped.
            &mut pins,
            Ipa(CD_WINDOW_BASE),
            shadow_cds.phys(),
            shadow_size,
            Permissions {
                access: Access::ReadOnly,
                memory: MemoryType::Normal,
            },
        )
        .map_err(SetupError::Domain)?;
    let translation =
        Stage2Translation::new(domain.stage2_parameters(), &features).map_err(SetupError::Make)?;
    STAGE2.call_once(|| {
        spin::Mutex::new(VmStage2 {
            domain,
            _pins: pins,
        })
    });

    let confined = physical::confine_streams(streams.0, streams.1, &translation)
        .map_err(SetupError::Confine)?;

    let last_owned = streams
        .1
        .get()
        .min(streams.0.get().saturating_add(VSMMU_STREAMS as u32 - 1));
    let mut assignments: heapless::Vec<StreamAssignment, VSMMU_STREAMS> = heapless::Vec::new();
    for sid in streams.0.get()..=last_owned {
        if sid >> VSMMU_SID_BITS != 0 {
            break;
        }
        let _ = assignments.push(StreamAssignment {
            virtual_sid: VirtualStreamId(sid),
            physical_sid: StreamId(sid),
        });
    }
    let vsmmu = Vsmmu::new(
        &VsmmuConfig {
            stage2: translation,
            streams: &assignments,
            sid_bits: VSMMU_SID_BITS,
            cd_window_base: Ipa(CD_WINDOW_BASE),
            work_budget: nested::config::DEFAULT_WORK_BUDGET,
            forward_ats: false,
            // Until the guest's driver enables its vSMMU, its devices translate through stage
            // 2 alone (GBPA bypass), as they did before it had one.
            abort_until_enabled: false,
        },
        Backends {
            guest_memory: GuestRam::new(IpaRange::new(Ipa(ram.base.get()), ram.size)),
            physical: SharedPhysical { features },
            interrupts,
            shadow_cds,
        },
    )
    .map_err(SetupError::Vsmmu)?;
    let owned = (
        assignments.first().map_or(streams.0, |a| a.physical_sid),
        assignments.last().map_or(streams.0, |a| a.physical_sid),
    );
    VSMMU.call_once(|| spin::Mutex::new(vsmmu));
    Ok(VsmmuSetup {
        registers: IpaRange::new(
            Ipa(registers.base.get()),
            nested::config::REGISTER_WINDOW_SIZE,
        ),
        device: &DEVICE,
        owned,
        confined,
    })
}

/// Offers a physical event to the vSMMU that owns its stream: true if it took it for its guest
/// (forwarded, or dropped as the guest's queue decided), false if it is the hypervisor's
/// (a stage-2 fault, or a stream no vSMMU owns).
pub fn offer_event(event: &smmu::event::Event) -> bool {
    let Some(vsmmu) = VSMMU.get() else {
        return false;
    };
    let mut vsmmu = vsmmu.lock();
    if vsmmu.owns_physical_stream(event.sid).is_none() {
        return false;
    }
    !matches!(
        vsmmu.handle_physical_event(event),
        nested::EventDisposition::Withheld(_)
    )
}

/// Page-request entries taken per lock hold of the physical SMMU.
const PRI_CHUNK: usize = 32;

/// Drains the physical PRI queue (on its interrupt), with a budget: each entry is taken with
/// only the physical SMMU's lock held, then handed to the vSMMU (an overflow to every vSMMU),
/// which forwards, answers or discards it; then the vSMMU learns how far the queue was
/// drained, so that parked PASIDs waiting for it may quiesce. Nothing happens without a PRI
/// queue (QEMU's SMMU has no PRI). Returns whether entries remain.
pub fn drain_page_requests(budget: u32) -> bool {
    let mut left = budget;
    loop {
        let chunk = left.min(PRI_CHUNK as u32);
        let mut entries: heapless::Vec<(nested::PriPosition, nested::PriIntake), PRI_CHUNK> =
            heapless::Vec::new();
        let more = {
            let mut guard = physical::SMMU.lock();
            let Some(driver) = guard.as_mut() else {
                return false;
            };
            match driver.drain_page_requests_at(chunk, |position, intake| {
                let _ = entries.push((position, intake));
            }) {
                Ok(report) => report.remaining != 0,
                Err(_) => return false,
            }
        };
        if let Some(vsmmu) = VSMMU.get() {
            let mut vsmmu = vsmmu.lock();
            let mut next = None;
            for (position, intake) in &entries {
                let _ = vsmmu.handle_physical_page_request(*position, intake);
                if !matches!(intake, nested::PriIntake::Overflowed) {
                    next = Some(nested::PriPosition(position.0.saturating_add(1)));
                }
            }
            if let Some(next) = next {
                vsmmu.handle_pri_drained(next);
            }
        }
        left -= chunk;
        if !more || left == 0 {
            return more;
        }
    }
}

/// Continues the vSMMU's pending work, one trap's budget of it (on the EL2 timer). Returns
/// whether work is still left.
pub fn run_pending() -> bool {
    VSMMU.get().is_some_and(|vsmmu| vsmmu.lock().run_pending())
}

/// The vSMMU's register window as the MMIO registry sees it.
#[derive(Debug)]
pub struct VsmmuDevice;

impl VsmmuDevice {
    fn with<T>(&self, offset: MmioOffset, f: impl FnOnce(&mut Vsmmu) -> T) -> Result<T, MmioError> {
        let vsmmu = VSMMU.get().ok_or(MmioError::Reserved(offset))?;
        let (result, pending) = {
            let mut vsmmu = vsmmu.lock();
            let result = f(&mut vsmmu);
            (result, vsmmu.has_pending_work())
        };
        if pending {
            crate::interrupts::request_work_soon();
        }
        Ok(result)
    }
}

impl MmioDevice for VsmmuDevice {
    fn mmio_read(
        &mut self,
        offset: MmioOffset,
        width: AccessWidth,
        vcpu: VcpuId,
    ) -> Result<u64, MmioError> {
        self.with(offset, |vsmmu| vsmmu.mmio_read(offset, width, vcpu))?
    }

    fn mmio_write(
        &mut self,
        offset: MmioOffset,
        width: AccessWidth,
        value: u64,
        vcpu: VcpuId,
    ) -> Result<(), MmioError> {
        self.with(offset, |vsmmu| vsmmu.mmio_write(offset, width, value, vcpu))?
    }
}

/// Prints the vSMMU's counters (at the end of a run).
pub fn report() {
    let Some(vsmmu) = VSMMU.get() else {
        return;
    };
    let vsmmu = vsmmu.lock();
    let c = vsmmu.counters();
    defmt::info!(
        "vSMMU: {=u64} register traps, {=u64} guest commands ({=u64} forwarded in {=u64} batches), {=u64} guest syncs, {=u64} physical syncs ({=u64} more for installs), {=u64} MSI writes",
        c.total_traps(),
        c.total_commands(),
        c.commands_forwarded,
        c.batches,
        c.guest_syncs,
        c.physical_syncs,
        c.install_syncs,
        c.msi_writes
    );
    defmt::info!(
        "vSMMU: {=u64} STE installs, {=u64} STE rejections, {=u64} CD installs, {=u64} CD rejections, {=u64} illegal commands, {=u64} events forwarded, {=u64} withheld, {=u64} continuations, {=u64} physical failures",
        c.ste_installs,
        c.ste_rejections.iter().sum::<u64>(),
        c.cd_installs,
        c.cd_rejections.iter().sum::<u64>(),
        c.illegal_commands.iter().sum::<u64>(),
        c.events_forwarded,
        c.events_withheld.iter().sum::<u64>(),
        c.continuations,
        c.physical_failures
    );
    defmt::info!(
        "vSMMU PRI: {=u64} requests forwarded, {=u64} refused and answered, {=u64} refused and discarded, {=u64} stop markers, {=u64} responses forwarded, {=u64} responses dropped, {=u64} groups answered at teardown, {=u64} discarded by overflow",
        c.pri_requests_forwarded,
        c.pri_refused_answered.iter().sum::<u64>(),
        c.pri_refused_discarded.iter().sum::<u64>(),
        c.pri_stop_markers,
        c.pri_responses_forwarded,
        c.pri_responses_dropped.iter().sum::<u64>(),
        c.pri_groups_answered_at_teardown,
        c.pri_groups_discarded_by_overflow
    );
    let pasids = vsmmu.pasids();
    defmt::info!(
        "vSMMU PASIDs: {=u64} parks, {=u64} frees, {=u64} reuses, {=u64} replaces, {=u64} refusals; {=usize} live, {=usize} parked now",
        c.pasid_parks,
        c.pasid_frees,
        c.pasid_reuses,
        c.pasid_replaces,
        c.pasid_refusals,
        pasids.live,
        pasids.parked
    );
    for register in nested::registers::VirtualRegister::ALL {
        let (reads, writes) = (
            c.register_reads.get(register.index()).copied().unwrap_or(0),
            c.register_writes
                .get(register.index())
                .copied()
                .unwrap_or(0),
        );
        if reads != 0 || writes != 0 {
            defmt::info!(
                "vSMMU: {=str}: {=u64} reads, {=u64} writes",
                register.name(),
                reads,
                writes
            );
        }
    }
    for (opcode, count) in c.commands_by_opcode() {
        defmt::info!("vSMMU: command {=u8:#04x}: {=u64}", opcode, count);
    }
    if let Some(stage2) = STAGE2.get() {
        let stage2 = stage2.lock();
        defmt::info!(
            "vSMMU: SMMU stage 2 maps {=u64} pages ({=u64} awaiting invalidation), VMID {=u16}",
            stage2.domain.mapped_pages(),
            stage2.domain.pending_pages(),
            stage2.domain.vmid().0
        );
    }
}
