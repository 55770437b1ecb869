//! The guest's view of the GICv3 distributor (GICD).
//!
//! Every guest access to the distributor traps and is answered here. For the INTIDs the guest
//! owns, the registers reach the hardware; for the hypervisor's, they look like those of an
//! unimplemented interrupt (read as zero, writes ignored). Beyond ownership:
//!
//! - **GICD_CTLR** is the guest's in its own view only: the hardware stays enabled with affinity
//!   routing, since the hypervisor's own interrupts go through it. The guest's enable bits are
//!   remembered and read back; disabling a group does not stop the hypervisor's interrupts.
//! - **Groups**: every interrupt is Group 1 (IGROUPR reads as one for the guest's INTIDs,
//!   writes are ignored): the hypervisor takes Group 1 at EL2 and injects it; a guest never
//!   gets a Group 0 (FIQ) interrupt it could use to bypass that.
//! - **Routing** (IROUTER): a guest's SPI goes to one of the guest's CPUs, or to any of them
//!   (IRM = 1); a route to another CPU is ignored.
//! - **LPIs and message-based SPIs** do not exist for the guest: GICD_TYPER shows neither
//!   (LPIS, MBIS, ESPI clear), SETSPI/CLRSPI are RAZ/WI.
//! - Legacy (non-affinity-routed) registers (ITARGETSR, SGIR, CPENDSGIR, SPENDSGIR), NSACR and
//!   IGRPMODR are RAZ/WI, as with affinity routing enabled and security disabled for the guest.
//!
//! - **Virtual SPIs** exist only for the guest: INTIDs the hardware implements but the
//!   hypervisor owns (the physical SMMU's, which the vSMMU's interrupts reuse) can be made
//!   virtual ([`Distributor::add_virtual_spi`]). The guest enables, pends, prioritises and
//!   routes them here as any SPI; their state lives in this emulation, never in the hardware;
//!   they are edge-triggered. Hypervisor code raises one with [`Distributor::raise`], which
//!   says where to inject it (HW = 0) once the guest has it enabled.
//!
//! Widths: the one-bit-per-INTID registers, ICFGR, CTLR and friends take 32-bit accesses;
//! IPRIORITYR takes bytes or words; IROUTER takes doublewords or either word; anything else is
//! an external abort.

use super::ownership::Ownership;
use super::{FIRST_SPI, GicMmio, INTID_LIMIT};
use crate::cpus::{AFFINITY_MASK, MAX_CPUS};
use nested::{AccessWidth, MmioDevice, MmioError, MmioOffset, VcpuId};

/// Register offsets.
mod offset {
    pub(super) const CTLR: u64 = 0x0000;
    pub(super) const TYPER: u64 = 0x0004;
    pub(super) const IIDR: u64 = 0x0008;
    pub(super) const TYPER2: u64 = 0x000c;
    pub(super) const IGROUPR: u64 = 0x0080;
    pub(super) const ISENABLER: u64 = 0x0100;
    pub(super) const ICACTIVER_END: u64 = 0x0400;
    pub(super) const IPRIORITYR: u64 = 0x0400;
    pub(super) const IPRIORITYR_END: u64 = 0x0800;
    pub(super) const ICFGR: u64 = 0x0c00;
    pub(super) const ICFGR_END: u64 = 0x0d00;
    pub(super) const IROUTER: u64 = 0x6000;
    pub(super) const IROUTER_END: u64 = 0x8000;
    pub(super) const ID_REGISTERS: u64 = 0xffd0;
}

/// GICD_CTLR bits the guest may set and read back: the group enables.
const CTLR_GUEST_ENABLES: u32 = 0b11;
/// GICD_CTLR.ARE (ARE_NS in the Non-secure view): affinity routing, always on.
const CTLR_ARE: u32 = 1 << 4;
/// GICD_CTLR.RWP: a register write is in progress (read from the hardware).
const CTLR_RWP: u32 = 1 << 31;
/// GICD_TYPER bits hidden from the guest: ESPI (8), MBIS (16), LPIS (17).
const TYPER_HIDDEN: u32 = 1 << 8 | 1 << 16 | 1 << 17;
/// GICD_IROUTER.IRM: route to any participating CPU.
const IROUTER_IRM: u64 = 1 << 31;

/// The most virtual SPIs a distributor holds.
pub const MAX_VIRTUAL_SPIS: usize = 8;

/// An SPI that exists only in the guest's view, raised by hypervisor code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct VirtualSpi {
    intid: u32,
    enabled: bool,
    pending: bool,
    priority: u8,
    /// GICD_IROUTER as the guest set it (IRM or one of its CPUs' affinities).
    route: u64,
}

/// A virtual SPI to make pending at a CPU interface, with HW = 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub struct Delivery {
    /// The INTID.
    pub intid: u32,
    /// The guest's priority for it.
    pub priority: u8,
    /// The guest CPU (MPIDR affinity) it is routed to; `None` for any of them (IRM).
    pub target: Option<u64>,
}

/// Why [`Distributor::add_virtual_spi`] refused an INTID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum VirtualSpiError {
    /// Not an SPI the distributor implements.
    NotAnSpi(u32),
    /// The guest owns it as a physical interrupt.
    GuestOwned(u32),
    /// Already virtual.
    Duplicate(u32),
    /// [`MAX_VIRTUAL_SPIS`] already.
    Full,
}

/// The guest's distributor.
#[derive(Debug)]
pub struct Distributor<H> {
    base: u64,
    hardware: H,
    ownership: Ownership,
    /// The guest's CPUs, by MPIDR affinity.
    guest_cpus: heapless::Vec<u64, MAX_CPUS>,
    /// The guest's GICD_CTLR enable bits.
    ctlr: u32,
    virtual_spis: heapless::Vec<VirtualSpi, MAX_VIRTUAL_SPIS>,
}

impl<H: GicMmio> Distributor<H> {
    /// The distributor at `base`, reached through `hardware`, for a guest that owns what
    /// `ownership` says and runs on the CPUs with affinities `guest_cpus`.
    pub fn new(base: u64, hardware: H, ownership: Ownership, guest_cpus: &[u64]) -> Self {
        let guest_cpus = guest_cpus
            .iter()
            .take(MAX_CPUS)
            .map(|mpidr| mpidr & AFFINITY_MASK)
            .collect();
        Self {
            base,
            hardware,
            ownership,
            guest_cpus,
            ctlr: 0,
            virtual_spis: heapless::Vec::new(),
        }
    }

    /// Makes `intid`, an SPI the hardware implements and the guest does not own, a virtual
    /// SPI of the guest's: disabled, not pending, priority 0, routed to its first CPU.
    ///
    /// # Errors
    ///
    /// [`VirtualSpiError`] naming what is wrong with `intid`.
    pub fn add_virtual_spi(&mut self, intid: u32) -> Result<(), VirtualSpiError> {
        if intid < FIRST_SPI || intid >= self.ownership.implemented() {
            return Err(VirtualSpiError::NotAnSpi(intid));
        }
        if self.ownership.is_guest(intid) {
            return Err(VirtualSpiError::GuestOwned(intid));
        }
        if self.virtual_spi(intid).is_some() {
            return Err(VirtualSpiError::Duplicate(intid));
        }
        let route = self.guest_cpus.first().copied().unwrap_or(0);
        self.virtual_spis
            .push(VirtualSpi {
                intid,
                enabled: false,
                pending: false,
                priority: 0,
                route,
            })
            .map_err(|_| VirtualSpiError::Full)
    }

    /// Hypervisor code raises the virtual SPI `intid` (an edge): the delivery to make now, or
    /// `None` if the guest has it disabled (it stays pending until enabled) or it is not a
    /// virtual SPI.
    pub fn raise(&mut self, intid: u32) -> Option<Delivery> {
        let index = self.virtual_spis.iter().position(|v| v.intid == intid)?;
        let spi = self.virtual_spis.get_mut(index)?;
        spi.pending = true;
        self.ready(index)
    }

    /// The next virtual SPI that is pending and enabled, taken out of the pending state: after
    /// a guest write enabled or pended one, the caller delivers each until `None` (at most
    /// [`MAX_VIRTUAL_SPIS`]).
    pub fn take_ready(&mut self) -> Option<Delivery> {
        let index = self
            .virtual_spis
            .iter()
            .position(|v| v.pending && v.enabled)?;
        self.ready(index)
    }

    fn ready(&mut self, index: usize) -> Option<Delivery> {
        let spi = self.virtual_spis.get_mut(index)?;
        if !spi.enabled || !spi.pending {
            return None;
        }
        spi.pending = false;
        Some(Delivery {
            intid: spi.intid,
            priority: spi.priority,
            target: (spi.route & IROUTER_IRM == 0).then_some(spi.route & AFFINITY_MASK),
        })
    }

    /// The guest's priority for a virtual SPI, or `None` if `intid` is not one.
    #[must_use]
    pub fn virtual_priority(&self, intid: u32) -> Option<u8> {
        self.virtual_spi(intid).map(|v| v.priority)
    }

    fn virtual_spi(&self, intid: u32) -> Option<&VirtualSpi> {
        self.virtual_spis.iter().find(|v| v.intid == intid)
    }

    fn virtual_spi_mut(&mut self, intid: u32) -> Option<&mut VirtualSpi> {
        self.virtual_spis.iter_mut().find(|v| v.intid == intid)
    }

    /// The bits, among the 32 INTIDs from `first`, of the virtual SPIs for which `bit` holds.
    fn virtual_bits(&self, first: u32, bit: impl Fn(&VirtualSpi) -> bool) -> u32 {
        self.virtual_spis
            .iter()
            .filter(|v| v.intid >= first && v.intid - first < 32 && bit(v))
            .fold(0, |bits, v| bits | 1 << (v.intid - first))
    }

    /// The guest's priority for SPI `intid` (as the hardware holds it), for injection.
    #[must_use]
    pub fn priority(&self, intid: u32) -> u8 {
        self.hardware
            .read8(self.base + offset::IPRIORITYR + u64::from(intid))
    }

    /// Whether the guest enabled Group 1 in its GICD_CTLR.
    #[must_use]
    pub fn group1_enabled(&self) -> bool {
        self.ctlr & 0b10 != 0
    }

    /// A guest load of `width` at `offset`.
    ///
    /// # Errors
    ///
    /// [`MmioError`]: an external abort for a width the register does not take.
    pub fn read(&self, offset: u64, width: AccessWidth) -> Result<u64, MmioError> {
        let at = MmioOffset(offset);
        let address = self.base + offset;
        match region(offset) {
            Region::Ctlr => {
                word(width, at)?;
                let hardware = self.hardware.read32(address);
                Ok(u64::from(self.ctlr | CTLR_ARE | hardware & CTLR_RWP))
            }
            Region::Typer => {
                word(width, at)?;
                Ok(u64::from(self.hardware.read32(address) & !TYPER_HIDDEN))
            }
            Region::PassThroughReadOnly => {
                word(width, at)?;
                Ok(u64::from(self.hardware.read32(address)))
            }
            Region::Groups { first } => {
                word(width, at)?;
                Ok(u64::from(
                    self.mask(first) | self.virtual_bits(first, |_| true),
                ))
            }
            Region::OneBit { first } => {
                word(width, at)?;
                let mask = self.mask(first);
                let virtual_bits = match OneBitRegister::of(offset) {
                    OneBitRegister::SetEnable | OneBitRegister::ClearEnable => {
                        self.virtual_bits(first, |v| v.enabled)
                    }
                    OneBitRegister::SetPending | OneBitRegister::ClearPending => {
                        self.virtual_bits(first, |v| v.pending)
                    }
                    OneBitRegister::SetActive | OneBitRegister::ClearActive => 0,
                };
                Ok(u64::from(
                    self.hardware.read32(address) & mask | virtual_bits,
                ))
            }
            Region::Priority { first } => self.read_priority(address, first, width, at),
            Region::Config { first } => {
                word(width, at)?;
                let mask = self.config_mask(first);
                // Virtual SPIs are edge-triggered (0b10), and read so.
                let edges = (0..16).fold(0u32, |edges, i| {
                    if self.virtual_spi(first + i).is_some() {
                        edges | 0b10 << (2 * i)
                    } else {
                        edges
                    }
                });
                Ok(u64::from(self.hardware.read32(address) & mask | edges))
            }
            Region::Router { intid, high } => {
                let value = self.read_route(intid, address & !7);
                match (width, high) {
                    (AccessWidth::Bits64, false) => Ok(value),
                    (AccessWidth::Bits32, false) => Ok(value & 0xffff_ffff),
                    (AccessWidth::Bits32, true) => Ok(value >> 32),
                    _ => Err(MmioError::UnsupportedWidth(width)),
                }
            }
            Region::Reserved => {
                word(width, at)?;
                Err(MmioError::Reserved(at))
            }
        }
    }

    /// A guest store of the low `width` bits of `value` at `offset`.
    ///
    /// # Errors
    ///
    /// As [`Distributor::read`]; a store to a read-only or reserved register is ignored
    /// (read-as-zero/write-ignored), never fatal.
    pub fn write(&mut self, offset: u64, width: AccessWidth, value: u64) -> Result<(), MmioError> {
        let at = MmioOffset(offset);
        let address = self.base + offset;
        #[allow(clippy::cast_possible_truncation, reason = "a word register")]
        let word_value = value as u32;
        match region(offset) {
            Region::Ctlr => {
                word(width, at)?;
                self.ctlr = word_value & CTLR_GUEST_ENABLES;
                Ok(())
            }
            Region::OneBit { first } => {
                word(width, at)?;
                // Set/clear registers: the hypervisor's bits written as zero change nothing.
                let mask = self.mask(first);
                if word_value & mask != 0 {
                    self.hardware.write32(address, word_value & mask);
                }
                let register = OneBitRegister::of(offset);
                for spi in &mut self.virtual_spis {
                    if spi.intid < first || spi.intid - first >= 32 {
                        continue;
                    }
                    if word_value >> (spi.intid - first) & 1 == 0 {
                        continue;
                    }
                    match register {
                        OneBitRegister::SetEnable => spi.enabled = true,
                        OneBitRegister::ClearEnable => spi.enabled = false,
                        OneBitRegister::SetPending => spi.pending = true,
                        OneBitRegister::ClearPending => spi.pending = false,
                        // The active state is the list register's, not the distributor's.
                        OneBitRegister::SetActive | OneBitRegister::ClearActive => {}
                    }
                }
                Ok(())
            }
            Region::Priority { first } => self.write_priority(address, first, width, value, at),
            Region::Config { first } => {
                word(width, at)?;
                let mask = self.config_mask(first);
                if mask != 0 {
                    let old = self.hardware.read32(address);
                    self.hardware
                        .write32(address, old & !mask | word_value & mask);
                }
                Ok(())
            }
            Region::Router { intid, high } => {
                let old = self.read_route(intid, address & !7);
                let new = match (width, high) {
                    (AccessWidth::Bits64, false) => value,
                    (AccessWidth::Bits32, false) => old & !0xffff_ffff | value & 0xffff_ffff,
                    (AccessWidth::Bits32, true) => old & 0xffff_ffff | (value & 0xffff_ffff) << 32,
                    _ => return Err(MmioError::UnsupportedWidth(width)),
                };
                if self.ownership.is_guest(intid) && self.route_allowed(new) {
                    self.hardware.write64(address & !7, new);
                    Ok(())
                } else if self.route_allowed(new)
                    && let Some(spi) = self.virtual_spi_mut(intid)
                {
                    spi.route = new & (AFFINITY_MASK | IROUTER_IRM);
                    Ok(())
                } else {
                    Err(MmioError::WriteIgnored(at))
                }
            }
            Region::Typer | Region::PassThroughReadOnly | Region::Groups { .. } => {
                word(width, at)?;
                Err(MmioError::WriteIgnored(at))
            }
            Region::Reserved => {
                word(width, at)?;
                Err(MmioError::Reserved(at))
            }
        }
    }

    /// The guest's bits among the 32 INTIDs from `first`; SGIs and PPIs are the
    /// redistributors' (the GICD's copies are RES0 with affinity routing).
    fn mask(&self, first: u32) -> u32 {
        if first < FIRST_SPI {
            0
        } else {
            self.ownership.mask32(first)
        }
    }

    /// The guest's two-bit fields among the 16 INTIDs of an ICFGR from `first`.
    fn config_mask(&self, first: u32) -> u32 {
        (0..16).fold(0, |mask, i| {
            let intid = first + i;
            let owned = intid >= FIRST_SPI && self.ownership.is_guest(intid);
            mask | if owned { 0b11 << (2 * i) } else { 0 }
        })
    }

    fn read_priority(
        &self,
        address: u64,
        first: u32,
        width: AccessWidth,
        at: MmioOffset,
    ) -> Result<u64, MmioError> {
        let bytes = match width {
            AccessWidth::Bits8 => 1,
            AccessWidth::Bits32 if at.0.is_multiple_of(4) => 4,
            AccessWidth::Bits32 => return Err(MmioError::Unaligned(at)),
            _ => return Err(MmioError::UnsupportedWidth(width)),
        };
        Ok((0..bytes).fold(0, |value, i| {
            let intid = first + i;
            let byte = if intid >= FIRST_SPI && self.ownership.is_guest(intid) {
                self.hardware.read8(address + u64::from(i))
            } else {
                self.virtual_priority(intid).unwrap_or(0)
            };
            value | u64::from(byte) << (8 * i)
        }))
    }

    fn write_priority(
        &mut self,
        address: u64,
        first: u32,
        width: AccessWidth,
        value: u64,
        at: MmioOffset,
    ) -> Result<(), MmioError> {
        let bytes = match width {
            AccessWidth::Bits8 => 1,
            AccessWidth::Bits32 if at.0.is_multiple_of(4) => 4,
            AccessWidth::Bits32 => return Err(MmioError::Unaligned(at)),
            _ => return Err(MmioError::UnsupportedWidth(width)),
        };
        for i in 0..bytes {
            let intid = first + i;
            #[allow(clippy::cast_possible_truncation, reason = "one byte of the value")]
            let byte = (value >> (8 * i)) as u8;
            if intid >= FIRST_SPI && self.ownership.is_guest(intid) {
                self.hardware.write8(address + u64::from(i), byte);
            } else if let Some(spi) = self.virtual_spi_mut(intid) {
                spi.priority = byte;
            }
        }
        Ok(())
    }

    fn read_route(&self, intid: u32, address: u64) -> u64 {
        if self.ownership.is_guest(intid) {
            self.hardware.read64(address)
        } else {
            self.virtual_spi(intid).map_or(0, |v| v.route)
        }
    }

    /// A route the guest may set: to any of its CPUs (IRM), or to one of them.
    fn route_allowed(&self, route: u64) -> bool {
        route & IROUTER_IRM != 0 || self.guest_cpus.contains(&(route & AFFINITY_MASK))
    }
}

impl<H: GicMmio> MmioDevice for Distributor<H> {
    fn mmio_read(
        &mut self,
        offset: MmioOffset,
        width: AccessWidth,
        _vcpu: VcpuId,
    ) -> Result<u64, MmioError> {
        self.read(offset.0, width)
    }

    fn mmio_write(
        &mut self,
        offset: MmioOffset,
        width: AccessWidth,
        value: u64,
        _vcpu: VcpuId,
    ) -> Result<(), MmioError> {
        self.write(offset.0, width, value)
    }
}

/// Which of the one-bit-per-INTID registers an offset is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OneBitRegister {
    SetEnable,
    ClearEnable,
    SetPending,
    ClearPending,
    SetActive,
    ClearActive,
}

impl OneBitRegister {
    /// For an offset in ISENABLER..ICACTIVER (0x100..0x400).
    fn of(offset: u64) -> Self {
        match offset.saturating_sub(offset::ISENABLER) / 0x80 {
            0 => Self::SetEnable,
            1 => Self::ClearEnable,
            2 => Self::SetPending,
            3 => Self::ClearPending,
            4 => Self::SetActive,
            _ => Self::ClearActive,
        }
    }
}

/// What a distributor offset holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Region {
    Ctlr,
    Typer,
    /// IIDR, TYPER2, the ID registers.
    PassThroughReadOnly,
    /// IGROUPR for the 32 INTIDs from `first`.
    Groups {
        first: u32,
    },
    /// ISENABLER..ICACTIVER for the 32 INTIDs from `first`.
    OneBit {
        first: u32,
    },
    /// IPRIORITYR, one byte per INTID from `first`.
    Priority {
        first: u32,
    },
    /// ICFGR, two bits per INTID from `first`.
    Config {
        first: u32,
    },
    /// IROUTER of SPI `intid`; `high` for the upper word.
    Router {
        intid: u32,
        high: bool,
    },
    /// Everything else: RAZ/WI.
    Reserved,
}

#[allow(clippy::cast_possible_truncation, reason = "offsets below 64 KiB")]
fn region(offset: u64) -> Region {
    match offset {
        offset::CTLR => Region::Ctlr,
        offset::TYPER => Region::Typer,
        offset::IIDR | offset::TYPER2 => Region::PassThroughReadOnly,
        o if (offset::IGROUPR..offset::ISENABLER).contains(&o) => Region::Groups {
            first: ((o - offset::IGROUPR) / 4 * 32) as u32,
        },
        o if (offset::ISENABLER..offset::ICACTIVER_END).contains(&o) => Region::OneBit {
            first: ((o - offset::ISENABLER) % 0x80 / 4 * 32) as u32,
        },
        o if (offset::IPRIORITYR..offset::IPRIORITYR_END).contains(&o) => Region::Priority {
            first: (o - offset::IPRIORITYR) as u32,
        },
        o if (offset::ICFGR..offset::ICFGR_END).contains(&o) => Region::Config {
            first: ((o - offset::ICFGR) / 4 * 16) as u32,
        },
        o if (offset::IROUTER..offset::IROUTER_END).contains(&o) => {
            let intid = ((o - offset::IROUTER) / 8) as u32;
            if (FIRST_SPI..INTID_LIMIT).contains(&intid) {
                Region::Router {
                    intid,
                    high: o % 8 == 4,
                }
            } else {
                Region::Reserved
            }
        }
        o if (offset::ID_REGISTERS..0x1_0000).contains(&o) => Region::PassThroughReadOnly,
        _ => Region::Reserved,
    }
}

/// Checks a 32-bit, aligned access.
fn word(width: AccessWidth, at: MmioOffset) -> Result<(), MmioError> {
    if width != AccessWidth::Bits32 {
        return Err(MmioError::UnsupportedWidth(width));
    }
    if !at.0.is_multiple_of(4) {
        return Err(MmioError::Unaligned(at));
    }
    Ok(())
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]
mod tests {
    use super::*;
    use crate::gic::fake::FakeGic;
    use nested::MmioOutcome;

    const BASE: u64 = 0x0800_0000;
    /// QEMU virt: 288 INTIDs; the SMMU's SPIs 106..=109, the maintenance and EL2 timer PPIs.
    const HYPERVISOR: [u32; 6] = [25, 26, 106, 107, 108, 109];

    fn distributor() -> Distributor<FakeGic> {
        let gic = FakeGic::default();
        gic.set(BASE + 0x4, 4, 0x0037_8108 | 1 << 17 | 1 << 16); // TYPER, LPIs and MBIs
        gic.set(BASE + 0xffe8, 4, 0x3b);
        Distributor::new(BASE, gic, Ownership::new(288, &HYPERVISOR), &[0, 1])
    }

    fn writes(d: &Distributor<FakeGic>) -> Vec<(u64, u8, u64)> {
        d.hardware.writes.borrow().clone()
    }

    use AccessWidth::{Bits8, Bits16, Bits32, Bits64};

    #[test]
    fn the_guest_cannot_enable_disable_or_pend_the_hypervisors_interrupts() {
        let mut d = distributor();
        // ISENABLER3 covers INTIDs 96..127: the SMMU's are bits 10..13.
        for register in [0x10c, 0x18c, 0x20c, 0x28c, 0x30c, 0x38c] {
            d.write(register, Bits32, u64::MAX).unwrap();
        }
        for (address, _, value) in writes(&d) {
            assert_eq!(value & 0b1111 << 10, 0, "{address:#x}: {value:#x}");
        }
        // Reads show the hypervisor's bits as zero even when the hardware has them set.
        d.hardware.set(BASE + 0x10c, 4, u64::from(u32::MAX));
        assert_eq!(d.read(0x10c, Bits32), Ok(u64::from(!(0b1111u32 << 10))));
        // A write of only the hypervisor's bits reaches nothing at all.
        let before = writes(&d).len();
        d.write(0x18c, Bits32, 0b1111 << 10).unwrap();
        assert_eq!(writes(&d).len(), before);
    }

    #[test]
    fn priorities_of_the_hypervisors_interrupts_read_zero_and_keep_their_value() {
        let mut d = distributor();
        d.hardware.set(BASE + 0x400 + 106, 1, 0x20);
        // A word over 104..=107: 104 and 105 are the guest's, 106 and 107 not.
        d.write(0x400 + 104, Bits32, 0x1111_1111).unwrap();
        assert_eq!(d.hardware.get(BASE + 0x400 + 104, 4), 0x0020_1111);
        assert_eq!(d.read(0x400 + 104, Bits32), Ok(0x1111));
        assert_eq!(d.read(0x400 + 106, Bits8), Ok(0));
        d.write(0x400 + 106, Bits8, 0xff).unwrap();
        assert_eq!(d.hardware.get(BASE + 0x400 + 106, 1), 0x20);
        assert_eq!(d.priority(104), 0x11);
        // SGIs and PPIs are the redistributors'.
        assert_eq!(d.read(0x400, Bits32), Ok(0));
    }

    #[test]
    fn configuration_keeps_the_hypervisors_fields() {
        let mut d = distributor();
        // ICFGR6 covers INTIDs 96..=111: the SMMU's are fields 10..=13, edge (0b10).
        let edge = 0b10 << 20 | 0b10 << 22 | 0b10 << 24 | 0b10 << 26;
        d.hardware.set(BASE + 0xc18, 4, edge);
        d.write(0xc18, Bits32, 0).unwrap();
        assert_eq!(d.hardware.get(BASE + 0xc18, 4), edge);
        assert_eq!(d.read(0xc18, Bits32), Ok(0));
        d.write(0xc18, Bits32, 0xffff_ffff).unwrap();
        assert_eq!(
            d.hardware.get(BASE + 0xc18, 4) as u32,
            !(0xff << 20) | edge as u32
        );
    }

    #[test]
    fn routing_goes_only_to_the_guests_cpus_and_never_for_the_hypervisors_spis() {
        let mut d = distributor();
        let router = |intid: u64| 0x6000 + 8 * intid;
        assert_eq!(d.write(router(40), Bits64, 1), Ok(()));
        assert_eq!(d.hardware.get(BASE + router(40), 8), 1);
        assert_eq!(d.write(router(40), Bits64, IROUTER_IRM), Ok(()));
        let to_elsewhere = d.write(router(40), Bits64, 0x100);
        assert_eq!(
            to_elsewhere.map_err(MmioError::outcome),
            Err(MmioOutcome::ReadAsZeroWriteIgnored)
        );
        assert_eq!(d.hardware.get(BASE + router(40), 8), IROUTER_IRM);
        let hypervisors = d.write(router(106), Bits64, 1);
        assert!(hypervisors.is_err());
        assert_eq!(d.hardware.get(BASE + router(106), 8), 0);
        assert_eq!(d.read(router(106), Bits64), Ok(0));
        // Word halves.
        d.write(router(41), Bits32, 1).unwrap();
        assert_eq!(d.read(router(41), Bits32), Ok(1));
        assert_eq!(d.read(router(41) + 4, Bits32), Ok(0));
    }

    #[test]
    fn ctlr_is_the_guests_view_and_the_hardware_stays_enabled() {
        let mut d = distributor();
        d.write(0x0, Bits32, 0).unwrap();
        d.write(0x0, Bits32, 0xffff_ffff).unwrap();
        assert!(writes(&d).is_empty(), "GICD_CTLR never written");
        assert_eq!(d.read(0x0, Bits32), Ok(0b11 | 1 << 4));
        assert!(d.group1_enabled());
    }

    #[test]
    fn lpis_and_message_based_spis_are_hidden_and_groups_are_fixed() {
        let mut d = distributor();
        let typer = d.read(0x4, Bits32).unwrap();
        assert_eq!(typer & (1 << 17 | 1 << 16 | 1 << 8), 0);
        assert_eq!(typer & 0x1f, 0x08, "ITLinesNumber kept");
        for register in [0x40, 0x48, 0x50, 0x58] {
            d.write(register, Bits32, 106).unwrap_err();
            assert_eq!(
                d.read(register, Bits32).map_err(MmioError::outcome),
                Err(MmioOutcome::ReadAsZeroWriteIgnored)
            );
        }
        assert_eq!(d.read(0x8c, Bits32), Ok(u64::from(!(0b1111u32 << 10))));
        d.write(0x8c, Bits32, 0).unwrap_err();
        assert!(writes(&d).is_empty());
        assert_eq!(d.read(0xffe8, Bits32), Ok(0x3b));
    }

    #[test]
    fn a_virtual_spi_is_configured_like_any_spi_but_never_in_the_hardware() {
        let mut d = distributor();
        assert_eq!(d.add_virtual_spi(40), Err(VirtualSpiError::GuestOwned(40)));
        assert_eq!(d.add_virtual_spi(27), Err(VirtualSpiError::NotAnSpi(27)));
        assert_eq!(d.add_virtual_spi(288), Err(VirtualSpiError::NotAnSpi(288)));
        d.add_virtual_spi(106).unwrap();
        assert_eq!(d.add_virtual_spi(106), Err(VirtualSpiError::Duplicate(106)));
        // Raised while disabled: pending, nothing delivered.
        assert_eq!(d.raise(106), None);
        assert_eq!(d.read(0x20c, Bits32), Ok(1 << 10), "ISPENDR3: pending");
        // Group 1, edge-triggered, priority and route as the guest sets them.
        assert_eq!(d.read(0x8c, Bits32).unwrap() >> 10 & 0b1111, 0b0001);
        assert_eq!(d.read(0xc18, Bits32).unwrap() >> 20 & 0b11, 0b10);
        d.write(0x400 + 104, Bits32, 0x0000_a000).unwrap(); // 104 = 0, 105 = 0xa0
        d.write(0x400 + 106, Bits8, 0x30).unwrap();
        assert_eq!(d.read(0x400 + 104, Bits32), Ok(0x0030_a000));
        let router = 0x6000 + 8 * 106;
        d.write(router, Bits64, 1).unwrap();
        assert_eq!(d.read(router, Bits64), Ok(1));
        assert!(d.write(router, Bits64, 0x100).is_err(), "not a guest CPU");
        assert_eq!(d.read(router, Bits64), Ok(1));
        // Enabling it delivers what was pending, once.
        d.write(0x10c, Bits32, 1 << 10).unwrap();
        assert_eq!(
            d.take_ready(),
            Some(Delivery {
                intid: 106,
                priority: 0x30,
                target: Some(1)
            })
        );
        assert_eq!(d.take_ready(), None);
        assert_eq!(d.read(0x10c, Bits32).unwrap() >> 10 & 1, 1);
        // Raised while enabled: delivered at once; to any CPU with IRM.
        d.write(router, Bits64, IROUTER_IRM).unwrap();
        assert_eq!(d.raise(106).map(|x| x.target), Some(None));
        // Pended by the guest, cleared by the guest.
        d.write(0x18c, Bits32, 1 << 10).unwrap();
        d.write(0x20c, Bits32, 1 << 10).unwrap();
        d.write(0x28c, Bits32, 1 << 10).unwrap();
        d.write(0x10c, Bits32, 1 << 10).unwrap();
        assert_eq!(d.take_ready(), None);
        // None of it reached the hardware; the other hypervisor SPIs stay invisible.
        for (address, _, value) in writes(&d) {
            assert_eq!(value & 0b1111 << 10, 0, "{address:#x}: {value:#x}");
        }
        assert_eq!(d.hardware.get(BASE + router, 8), 0);
        assert_eq!(d.read(0x400 + 107, Bits8), Ok(0));
        assert_eq!(d.raise(107), None);
    }

    #[test]
    fn at_most_eight_virtual_spis() {
        let mut big = Distributor::new(
            BASE,
            FakeGic::default(),
            Ownership::new(288, &(100..120).collect::<Vec<_>>()),
            &[0],
        );
        for intid in 100..108 {
            big.add_virtual_spi(intid).unwrap();
        }
        assert_eq!(big.add_virtual_spi(108), Err(VirtualSpiError::Full));
    }

    #[test]
    fn widths_the_registers_do_not_take_are_external_aborts() {
        let mut d = distributor();
        for (offset, width) in [
            (0x0, Bits8),
            (0x100, Bits16),
            (0x100, Bits64),
            (0x402, Bits32),
            (0xc00, Bits8),
            (0x6100, Bits16),
        ] {
            assert_eq!(
                d.read(offset, width).map_err(MmioError::outcome),
                Err(MmioOutcome::ExternalAbort),
                "{offset:#x}"
            );
            assert_eq!(
                d.write(offset, width, 0).map_err(MmioError::outcome),
                Err(MmioOutcome::ExternalAbort),
                "{offset:#x}"
            );
        }
    }
}
