//! Interrupts at EL2: the hypervisor takes every physical interrupt (HCR_EL2.IMO/FMO), handles
//! its own (the SMMU's event queue and global errors, its EL2 timer, the virtual interface's
//! maintenance interrupt), and injects the guest's through the list registers of the virtual
//! CPU interface: device interrupts and timers with HW = 1, so that the guest's deactivation
//! reaches the physical interrupt without another trap; SGIs (which the hypervisor forwarded
//! from a trapped ICC_SGI1R_EL1) with HW = 0.
//!
//! Hypervisor code raises purely virtual interrupts with [`raise_virtual_spi`]: SPIs that exist
//! only in the guest's distributor (the vSMMU's), injected with HW = 0 at the CPU the guest
//! routed them to. Another CPU is reached through its waiting set and SGI 15, which the
//! hypervisor keeps for itself ([`crate::gic::KICK_SGI`]): the guest never sees it.
//!
//! Lock order: a CPU's waiting set may be held while the guest's distributor is taken (for a
//! priority), never the other way round: a delivery is made after the distributor's lock is
//! released.
//!
//! The guest's distributor and redistributors are emulated devices ([`crate::gic`]) in the
//! MMIO registry; this module sets the GIC up for that at boot and answers interrupts after.
//! Every handler does a bounded amount of work per interrupt.

use crate::arch::gic as hw;
use crate::cpus::MAX_CPUS;
use crate::gic::KICK_SGI;
use crate::gic::distributor::{Delivery, Distributor, MAX_VIRTUAL_SPIS};
use crate::gic::list_registers::{self, ListRegisters, PendingSet, Placed, VirtualInterrupt};
use crate::gic::ownership::Ownership;
use crate::gic::redistributor::{FRAME_SIZE, GuestRedistributors, Layout};
use crate::gic::{FIRST_PPI, FIRST_SPI, GicMmio};
use crate::stats::{self, ExitReason};
use nested::{AccessWidth, MmioDevice, MmioError, MmioOffset, VcpuId};
use smmu::PhysRange;

/// The virtual interface's maintenance interrupt (PPI 9), as the GIC binding and both
/// platforms give it.
pub const MAINTENANCE: u32 = 25;
/// The EL2 physical timer (CNTHP, PPI 10).
pub const EL2_TIMER: u32 = 26;
/// The EL2 virtual timer (CNTHV, PPI 12): EL2's, not the guest's.
pub const EL2_VIRTUAL_TIMER: u32 = 28;
/// The priority the hypervisor gives its own interrupts.
const HYPERVISOR_PRIORITY: u8 = 0x80;
/// Interrupts handled per exception, at most; more stay pending and are taken right after.
const PER_EXCEPTION: usize = 8;
/// SMMU event records handled per interrupt or timer tick.
const EVENTS_PER_RUN: u32 = 256;
/// How soon the EL2 timer continues work a trap left (the vSMMU's commands beyond one trap's
/// budget), in microseconds.
const WORK_DELAY_MICROS: u64 = 50;

/// GIC register offsets the hypervisor programs.
mod gicd {
    pub(super) const CTLR: u64 = 0x0000;
    pub(super) const TYPER: u64 = 0x0004;
    pub(super) const IGROUPR: u64 = 0x0080;
    pub(super) const ISENABLER: u64 = 0x0100;
    pub(super) const IPRIORITYR: u64 = 0x0400;
    pub(super) const ICFGR: u64 = 0x0c00;
    pub(super) const IROUTER: u64 = 0x6000;
}
mod gicr {
    pub(super) const WAKER: u64 = 0x0014;
    pub(super) const IGROUPR0: u64 = 0x0080;
    pub(super) const ISENABLER0: u64 = 0x0100;
    pub(super) const IPRIORITYR: u64 = 0x0400;
}

/// The GIC's registers, reached by physical address through the EL2 map (which maps the
/// distributor and the redistributor region as device memory).
#[derive(Clone, Copy, Debug)]
pub struct GicHardware;

impl GicMmio for GicHardware {
    fn read8(&self, address: u64) -> u8 {
        // SAFETY: `crate::gic` and this module only pass addresses of GIC registers inside the
        // distributor and redistributor windows, mapped as device memory at EL2.
        unsafe { core::ptr::read_volatile(address as *const u8) }
    }
    fn read32(&self, address: u64) -> u32 {
        // SAFETY: as `read8`.
        unsafe { core::ptr::read_volatile(address as *const u32) }
    }
    fn read64(&self, address: u64) -> u64 {
        // SAFETY: as `read8`.
        unsafe { core::ptr::read_volatile(address as *const u64) }
    }
    fn write8(&self, address: u64, value: u8) {
        // SAFETY: as `read8`; the callers decided the write is one the GIC may take.
        unsafe { core::ptr::write_volatile(address as *mut u8, value) }
    }
    fn write32(&self, address: u64, value: u32) {
        // SAFETY: as `write8`.
        unsafe { core::ptr::write_volatile(address as *mut u32, value) }
    }
    fn write64(&self, address: u64, value: u64) {
        // SAFETY: as `write8`.
        unsafe { core::ptr::write_volatile(address as *mut u64, value) }
    }
}

/// The hypervisor's interrupts and where the GIC is.
#[derive(Debug)]
struct Setup {
    distributor: u64,
    redistributors: Layout,
    /// The MPIDR affinity of each redistributor's CPU (from GICR_TYPER), in region order.
    affinities: heapless::Vec<u64, MAX_CPUS>,
    /// The guest's CPUs (the first `vcpus` of `affinities`).
    guest_cpus: heapless::Vec<u64, MAX_CPUS>,
    ownership: Ownership,
    smmu_events: Option<u32>,
    smmu_global_errors: Option<u32>,
    smmu_page_requests: Option<u32>,
    list_registers: usize,
}

static SETUP: spin::Once<Setup> = spin::Once::new();

/// Interrupts waiting for a list register, per CPU (by redistributor index).
static WAITING: [spin::Mutex<PendingSet>; MAX_CPUS] =
    [const { spin::Mutex::new(PendingSet::new()) }; MAX_CPUS];

/// The guest's emulated distributor and redistributors.
pub type GuestDistributor = Distributor<GicHardware>;
/// The guest's emulated redistributors.
pub type GuestRedistributorFrames = GuestRedistributors<GicHardware>;

static GUEST_DISTRIBUTOR: spin::Once<spin::Mutex<GuestDistributor>> = spin::Once::new();

/// What the MMIO registry holds for the distributor: it takes [`GUEST_DISTRIBUTOR`]'s lock for
/// each access and makes the deliveries a write readied once that lock is released.
static DISTRIBUTOR_DEVICE: spin::Mutex<DistributorDevice> = spin::Mutex::new(DistributorDevice);
static GUEST_REDISTRIBUTORS: spin::Once<spin::Mutex<GuestRedistributorFrames>> = spin::Once::new();

/// Why the GIC could not be set up.
#[derive(Clone, Copy, Debug, defmt::Format)]
pub enum SetupError {
    /// The redistributor region does not lay out.
    Redistributors(crate::gic::redistributor::LayoutError),
    /// A virtual SPI was refused.
    VirtualSpi(crate::gic::distributor::VirtualSpiError),
}

/// The devices the guest's GIC accesses go to.
#[allow(missing_debug_implementations, reason = "trait objects behind locks")]
pub struct GuestGic {
    /// The distributor device.
    pub distributor: &'static spin::Mutex<DistributorDevice>,
    /// The redistributor device.
    pub redistributors: &'static spin::Mutex<GuestRedistributorFrames>,
    /// How many redistributors.
    pub count: usize,
}

/// Sets the GIC up for a guest (on the boot CPU, before it runs): the hypervisor's SPIs
/// configured, routed here and enabled; every other implemented interrupt Group 1 and the
/// guest's; the distributor enabled with affinity routing. The guest may route its SPIs to
/// the first `vcpus` CPUs the redistributors describe. `virtual_spis` become SPIs of the
/// guest's that exist only in its distributor (hypervisor-owned INTIDs: the vSMMU reuses the
/// physical SMMU's).
///
/// # Errors
///
/// [`SetupError`] if the redistributor region is not what the GIC architecture lays out.
pub fn set_up(
    distributor: PhysRange,
    redistributors: PhysRange,
    smmu: &board::SmmuInterrupts,
    boot_cpu: u64,
    vcpus: usize,
    virtual_spis: &[u32],
) -> Result<GuestGic, SetupError> {
    let gic = GicHardware;
    let base = distributor.base.get();
    let layout = Layout::discover(redistributors, |frame| gic.read64(frame + 0x8))
        .map_err(SetupError::Redistributors)?;
    // GICR_TYPER[63:32] is Aff3.Aff2.Aff1.Aff0 of the redistributor's CPU.
    let affinities: heapless::Vec<u64, MAX_CPUS> = (0..layout.count)
        .map(|index| {
            let typer = gic.read64(redistributors.base.get() + index as u64 * layout.stride + 0x8);
            let affinity = typer >> 32;
            (affinity & 0xff00_0000) << 8 | affinity & 0x00ff_ffff
        })
        .collect();
    let guest_cpus: heapless::Vec<u64, MAX_CPUS> = affinities.iter().copied().take(vcpus).collect();
    let implemented = (gic.read32(base + gicd::TYPER) & 0x1f).saturating_add(1) * 32;
    let smmu_events = smmu.eventq.or(smmu.combined).and_then(|i| i.intid());
    let smmu_global_errors = smmu.gerror.and_then(|i| i.intid());
    let smmu_page_requests = smmu.priq.and_then(|i| i.intid());
    let mut hypervisor: heapless::Vec<u32, 8> = heapless::Vec::new();
    let smmu_all = [
        smmu.eventq,
        smmu.priq,
        smmu.cmdq_sync,
        smmu.gerror,
        smmu.combined,
    ];
    for intid in smmu_all
        .iter()
        .flatten()
        .filter_map(board::Interrupt::intid)
    {
        let _ = hypervisor.push(intid);
    }
    for intid in [KICK_SGI, MAINTENANCE, EL2_TIMER, EL2_VIRTUAL_TIMER] {
        let _ = hypervisor.push(intid);
    }
    let ownership = Ownership::new(implemented, &hypervisor);

    // Every implemented SPI in Group 1 (the guest's view is that too).
    for first in (FIRST_SPI..implemented).step_by(32) {
        gic.write32(base + gicd::IGROUPR + u64::from(first / 8), u32::MAX);
    }
    // The hypervisor's SPIs: their trigger, its priority, routed to the boot CPU, enabled.
    for interrupt in smmu_all.iter().flatten() {
        let Some(intid) = interrupt.intid().filter(|&i| i >= FIRST_SPI) else {
            continue;
        };
        let config = base + gicd::ICFGR + u64::from(intid / 16 * 4);
        let shift = (intid % 16) * 2;
        let edge = matches!(
            interrupt.trigger,
            board::Trigger::EdgeRising | board::Trigger::EdgeFalling
        );
        let old = gic.read32(config);
        gic.write32(
            config,
            old & !(0b11 << shift) | u32::from(edge) << (shift + 1),
        );
        gic.write8(
            base + gicd::IPRIORITYR + u64::from(intid),
            HYPERVISOR_PRIORITY,
        );
        gic.write64(base + gicd::IROUTER + 8 * u64::from(intid), boot_cpu);
        if Some(intid) == smmu_events
            || Some(intid) == smmu_global_errors
            || Some(intid) == smmu_page_requests
        {
            gic.write32(
                base + gicd::ISENABLER + u64::from(intid / 32 * 4),
                1 << (intid % 32),
            );
        }
    }
    // Affinity routing, Group 1 on (bit 1: EnableGrp1 with security disabled, EnableGrp1A
    // in the Non-secure view).
    let ctlr = gic.read32(base + gicd::CTLR);
    gic.write32(base + gicd::CTLR, ctlr | 1 << 4);
    gic.write32(base + gicd::CTLR, ctlr | 1 << 4 | 1 << 1);
    for _ in 0..1_000_000 {
        if gic.read32(base + gicd::CTLR) & 1 << 31 == 0 {
            break;
        }
    }

    let setup = SETUP.call_once(|| Setup {
        distributor: base,
        redistributors: layout,
        affinities,
        guest_cpus: guest_cpus.clone(),
        ownership: ownership.clone(),
        smmu_events,
        smmu_global_errors,
        smmu_page_requests,
        list_registers: hw::list_register_count(),
    });
    let mut guest_distributor = Distributor::new(base, gic, ownership.clone(), &guest_cpus);
    for &intid in virtual_spis {
        guest_distributor
            .add_virtual_spi(intid)
            .map_err(SetupError::VirtualSpi)?;
    }
    GUEST_DISTRIBUTOR.call_once(|| spin::Mutex::new(guest_distributor));
    let frames = GUEST_REDISTRIBUTORS
        .call_once(|| spin::Mutex::new(GuestRedistributors::new(layout, gic, ownership)));
    Ok(GuestGic {
        distributor: &DISTRIBUTOR_DEVICE,
        redistributors: frames,
        count: setup.redistributors.count,
    })
}

/// The index of the redistributor of the CPU with affinity `mpidr`.
fn redistributor_of(setup: &Setup, mpidr: u64) -> Option<usize> {
    setup
        .affinities
        .iter()
        .position(|&affinity| affinity == mpidr & crate::cpus::AFFINITY_MASK)
}

/// Sets up this CPU's part of the GIC (every CPU, before it runs the guest): its
/// redistributor awake, its SGIs and PPIs in Group 1, the maintenance interrupt and the EL2
/// timer enabled; its CPU interfaces (physical, and virtual with empty list registers).
pub fn configure_cpu(mpidr: u64) {
    let Some(setup) = SETUP.get() else { return };
    let gic = GicHardware;
    if let Some(index) = redistributor_of(setup, mpidr) {
        let rd =
            setup.redistributors.region.base.get() + index as u64 * setup.redistributors.stride;
        let sgi = rd + FRAME_SIZE;
        let waker = gic.read32(rd + gicr::WAKER);
        gic.write32(rd + gicr::WAKER, waker & !(1 << 1));
        for _ in 0..1_000_000 {
            if gic.read32(rd + gicr::WAKER) & 1 << 2 == 0 {
                break;
            }
        }
        gic.write32(sgi + gicr::IGROUPR0, u32::MAX);
        for intid in [KICK_SGI, MAINTENANCE, EL2_TIMER] {
            gic.write8(
                sgi + gicr::IPRIORITYR + u64::from(intid),
                HYPERVISOR_PRIORITY,
            );
        }
        gic.write32(
            sgi + gicr::ISENABLER0,
            1 << KICK_SGI | 1 << MAINTENANCE | 1 << EL2_TIMER,
        );
    }
    hw::configure_cpu_interfaces(setup.list_registers);
}

/// This CPU's list registers.
struct Lrs {
    count: usize,
}

impl ListRegisters for Lrs {
    fn count(&self) -> usize {
        self.count
    }
    fn empty(&self) -> u64 {
        hw::empty_list_registers()
    }
    fn read(&self, n: usize) -> u64 {
        hw::read_list_register(n)
    }
    fn write(&mut self, n: usize, value: u64) {
        hw::write_list_register(n, value);
    }
    fn set_underflow_interrupt(&mut self, enabled: bool) {
        hw::set_underflow_interrupt(enabled);
    }
}

/// The guest's priority for `intid` on the CPU whose redistributor is `redistributor`, as the
/// hardware holds it (or the distributor's emulation, for a virtual SPI).
fn guest_priority(setup: &Setup, redistributor: usize, intid: u32) -> u8 {
    let gic = GicHardware;
    if intid >= FIRST_SPI && !setup.ownership.is_guest(intid) {
        GUEST_DISTRIBUTOR
            .get()
            .and_then(|d| d.lock().virtual_priority(intid))
            .unwrap_or(0)
    } else if intid >= FIRST_SPI {
        gic.read8(setup.distributor + gicd::IPRIORITYR + u64::from(intid))
    } else {
        let sgi = setup.redistributors.region.base.get()
            + redistributor as u64 * setup.redistributors.stride
            + FRAME_SIZE;
        gic.read8(sgi + gicr::IPRIORITYR + u64::from(intid))
    }
}

/// Which CPU an interrupt arrived on.
#[derive(Clone, Copy, Debug)]
pub struct ThisCpu {
    /// Its MPIDR.
    pub mpidr: u64,
}

/// Makes the guest's `intid` pending on this CPU; `physical` links it to the physical
/// interrupt of the same INTID (HW = 1).
fn inject(setup: &Setup, cpu: ThisCpu, intid: u32, physical: bool) {
    let redistributor = redistributor_of(setup, cpu.mpidr).unwrap_or(0);
    let interrupt = VirtualInterrupt {
        intid,
        priority: guest_priority(setup, redistributor, intid),
        physical: physical.then_some(intid),
    };
    inject_here(setup, redistributor, interrupt);
}

/// Puts `interrupt` in this CPU's list registers, or its waiting set.
fn inject_here(setup: &Setup, redistributor: usize, interrupt: VirtualInterrupt) {
    let Some(waiting) = WAITING.get(redistributor) else {
        return;
    };
    let mut lrs = Lrs {
        count: setup.list_registers,
    };
    if list_registers::inject(interrupt, &mut lrs, &mut waiting.lock()) == Placed::Waiting {
        let _ = stats::count(ExitReason::ListRegisterOverflow);
    }
}

/// Answers the interrupts pending at this CPU's physical CPU interface, a bounded number at a
/// time (called from the IRQ and FIQ vectors).
pub fn handle(cpu: ThisCpu) {
    let Some(setup) = SETUP.get() else { return };
    for _ in 0..PER_EXCEPTION {
        let intid = hw::acknowledge();
        if intid >= hw::SPURIOUS {
            return;
        }
        if !setup.ownership.is_guest(intid) {
            let _ = stats::count(ExitReason::InterruptHypervisor);
            handle_own(setup, cpu, intid);
            hw::priority_drop(intid);
            hw::deactivate(intid);
            continue;
        }
        if intid < FIRST_PPI {
            // A guest SGI another CPU forwarded: the physical one ends here.
            let _ = stats::count(ExitReason::InterruptSgi);
            inject(setup, cpu, intid, false);
            hw::priority_drop(intid);
            hw::deactivate(intid);
        } else {
            let class = if intid < FIRST_SPI {
                ExitReason::InterruptTimer
            } else {
                ExitReason::InterruptDevice
            };
            let _ = stats::count(class);
            // HW = 1: the guest's deactivation deactivates it; only the priority drops here.
            inject(setup, cpu, intid, true);
            hw::priority_drop(intid);
        }
    }
}

/// One of the hypervisor's own interrupts.
fn handle_own(setup: &Setup, cpu: ThisCpu, intid: u32) {
    // The maintenance interrupt (list registers emptied) and the kick (another CPU left
    // something in this one's waiting set) both refill the list registers.
    if intid == MAINTENANCE || intid == KICK_SGI {
        let redistributor = redistributor_of(setup, cpu.mpidr).unwrap_or(0);
        if let Some(waiting) = WAITING.get(redistributor) {
            let mut lrs = Lrs {
                count: setup.list_registers,
            };
            list_registers::refill(&mut lrs, &mut waiting.lock(), |intid| {
                guest_priority(setup, redistributor, intid)
            });
        }
    } else if Some(intid) == setup.smmu_page_requests {
        // Page requests (only with PRI, which QEMU's SMMU has not); left-overs on the timer.
        if crate::vsmmu::drain_page_requests(EVENTS_PER_RUN) {
            arm_in(1000);
        }
    } else if Some(intid) == setup.smmu_events
        || Some(intid) == setup.smmu_global_errors
        || intid == EL2_TIMER
    {
        if intid == EL2_TIMER {
            hw::disarm_el2_timer();
        }
        // Events left over (more than one run's budget) are taken on a deadline 1 ms on.
        if crate::arch::smmu::drain_events(EVENTS_PER_RUN, crate::vsmmu::offer_event) {
            arm_in(1000);
        }
        if intid == EL2_TIMER && crate::vsmmu::drain_page_requests(EVENTS_PER_RUN) {
            arm_in(1000);
        }
        // Work a vSMMU trap left (its budget spent) continues here, a budget at a time.
        if intid == EL2_TIMER && crate::vsmmu::run_pending() {
            arm_in(WORK_DELAY_MICROS);
        }
    }
}

/// Arms this CPU's EL2 timer `micros` from now, unless it is already armed sooner (every job
/// the timer serves is looked at each time it fires).
fn arm_in(micros: u64) {
    let (now, frequency) = crate::arch::sysreg::counter();
    let deadline = now.saturating_add(frequency.saturating_mul(micros) / 1_000_000);
    if hw::el2_timer_deadline().is_none_or(|armed| armed > deadline) {
        hw::arm_el2_timer(deadline);
    }
}

/// Asks for the EL2 timer soon on this CPU, to continue work a trap left.
pub fn request_work_soon() {
    arm_in(WORK_DELAY_MICROS);
}

/// Sends the guest's SGI `intid` to CPU `mpidr` (a guest CPU: the trap path checked).
pub fn send_sgi(intid: u32, mpidr: u64) {
    hw::send_sgi(crate::gic::sgi::encode_for(intid, mpidr));
}

/// Raises the guest's virtual SPI `intid` (an edge, HW = 0): injected at the CPU the guest
/// routed it to if the guest has it enabled, else kept pending in its distributor until it
/// does. Callable from any CPU, in a trap or an interrupt handler; bounded.
pub fn raise_virtual_spi(intid: u32) {
    let Some(distributor) = GUEST_DISTRIBUTOR.get() else {
        return;
    };
    let delivery = distributor.lock().raise(intid);
    if let Some(delivery) = delivery {
        deliver(delivery);
    }
}

/// Makes a virtual SPI pending at its CPU: here, or through the target's waiting set and the
/// kick SGI. Called with the distributor's lock released.
fn deliver(delivery: Delivery) {
    let Some(setup) = SETUP.get() else { return };
    let here = crate::arch::sysreg::cpu_affinity() & crate::cpus::AFFINITY_MASK;
    let target = match delivery.target {
        Some(target) => target,
        // IRM: this CPU if it is one of the guest's, else the guest's first.
        None if setup.guest_cpus.contains(&here) => here,
        None => setup.guest_cpus.first().copied().unwrap_or(here),
    };
    let Some(redistributor) = redistributor_of(setup, target) else {
        return;
    };
    let interrupt = VirtualInterrupt {
        intid: delivery.intid,
        priority: delivery.priority,
        physical: None,
    };
    if target == here {
        inject_here(setup, redistributor, interrupt);
    } else if let Some(waiting) = WAITING.get(redistributor) {
        waiting.lock().insert(delivery.intid, false);
        hw::send_sgi(crate::gic::sgi::encode_for(KICK_SGI, target));
    }
}

/// The guest's distributor as the MMIO registry sees it.
#[derive(Debug)]
pub struct DistributorDevice;

impl MmioDevice for DistributorDevice {
    fn mmio_read(
        &mut self,
        offset: MmioOffset,
        width: AccessWidth,
        vcpu: VcpuId,
    ) -> Result<u64, MmioError> {
        let distributor = GUEST_DISTRIBUTOR.get().ok_or(MmioError::Reserved(offset))?;
        distributor.lock().mmio_read(offset, width, vcpu)
    }

    fn mmio_write(
        &mut self,
        offset: MmioOffset,
        width: AccessWidth,
        value: u64,
        vcpu: VcpuId,
    ) -> Result<(), MmioError> {
        let distributor = GUEST_DISTRIBUTOR.get().ok_or(MmioError::Reserved(offset))?;
        let mut ready: heapless::Vec<Delivery, MAX_VIRTUAL_SPIS> = heapless::Vec::new();
        let result = {
            let mut guard = distributor.lock();
            let result = guard.mmio_write(offset, width, value, vcpu);
            while let Some(delivery) = guard.take_ready() {
                if ready.push(delivery).is_err() {
                    break;
                }
            }
            result
        };
        for delivery in ready {
            deliver(delivery);
        }
        result
    }
}
