//! The guest's view of the GICv3 redistributors: one RD_base and one SGI_base frame per CPU,
//! all trapped and answered here.
//!
//! **RD_base.** With LPIs, a redistributor reads its LPI property table and reads and writes
//! its pending table at the addresses in GICR_PROPBASER and GICR_PENDBASER, as a bus master
//! outside the SMMU. A guest that aims them at hypervisor memory reads it bit by bit and clears
//! bits in it. So GICR_TYPER shows no LPIs (PLPIS = 0, DirectLPI = 0), GICR_CTLR.EnableLPIs
//! stays 0, and the LPI registers (PROPBASER, PENDBASER, SETLPIR, CLRLPIR, INVLPIR, INVALLR,
//! SYNCR) are RES0, as the architecture makes them when LPIs are not implemented.
//! GICR_WAKER is the guest's in its own view only: putting a redistributor to sleep would stop
//! the hypervisor's own interrupts on that CPU. IIDR, STATUSR and the ID registers pass
//! through.
//!
//! **SGI_base.** The SGI and PPI registers of each CPU, filtered by ownership as the
//! distributor's are (the maintenance interrupt and the EL2 timers are the hypervisor's), with
//! every interrupt Group 1.
//!
//! Frames beyond those two (GICv4's VLPI frames) are not emulated: an access to them is an
//! external abort.

use super::ownership::Ownership;
use super::{FIRST_PPI, GicMmio};
use crate::cpus::MAX_CPUS;
use nested::{AccessWidth, MmioDevice, MmioError, MmioOffset, VcpuId};
use smmu::PhysRange;

/// One 64 KiB frame of a redistributor.
pub const FRAME_SIZE: u64 = 0x1_0000;

/// The most redistributors the hypervisor handles (one per CPU).
pub const MAX_REDISTRIBUTORS: usize = MAX_CPUS;

/// GICR_TYPER bits.
mod typer {
    /// Physical LPIs supported.
    pub(super) const PLPIS: u64 = 1 << 0;
    /// Virtual LPIs supported: each redistributor has four frames instead of two.
    pub(super) const VLPIS: u64 = 1 << 1;
    /// Direct LPI injection (GICR_SETLPIR and friends) supported.
    pub(super) const DIRECT_LPI: u64 = 1 << 3;
    /// This is the last redistributor of the region.
    pub(super) const LAST: u64 = 1 << 4;
}

/// RD_base register offsets.
mod rd {
    pub(super) const CTLR: u64 = 0x0000;
    pub(super) const IIDR: u64 = 0x0004;
    pub(super) const TYPER: u64 = 0x0008;
    pub(super) const TYPER_HIGH: u64 = 0x000c;
    pub(super) const STATUSR: u64 = 0x0010;
    pub(super) const WAKER: u64 = 0x0014;
    pub(super) const ID_REGISTERS: core::ops::RangeInclusive<u64> = 0xffd0..=0xfffc;
}

/// SGI_base register offsets (from the frame's start).
mod sgi {
    pub(super) const IGROUPR0: u64 = 0x0080;
    pub(super) const ISENABLER0: u64 = 0x0100;
    pub(super) const ICENABLER0: u64 = 0x0180;
    pub(super) const ISPENDR0: u64 = 0x0200;
    pub(super) const ICPENDR0: u64 = 0x0280;
    pub(super) const ISACTIVER0: u64 = 0x0300;
    pub(super) const ICACTIVER0: u64 = 0x0380;
    pub(super) const IPRIORITYR: core::ops::Range<u64> = 0x0400..0x0420;
    pub(super) const ICFGR0: u64 = 0x0c00;
    pub(super) const ICFGR1: u64 = 0x0c04;
}

/// GICR_CTLR.EnableLPIs.
const ENABLE_LPIS: u32 = 1 << 0;
/// GICR_WAKER.ProcessorSleep and ChildrenAsleep.
const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;

/// Where each CPU's redistributor is, as read from the hardware at boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub struct Layout {
    /// The redistributor region (the device tree's second GIC `reg`).
    pub region: PhysRange,
    /// Bytes from one redistributor to the next: two frames, or four with VLPIs.
    pub stride: u64,
    /// How many redistributors the region holds (up to the one with GICR_TYPER.Last).
    pub count: usize,
}

/// Why the redistributors could not be laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum LayoutError {
    /// The region is not 64 KiB aligned or not a whole number of frames.
    Misaligned,
    /// No redistributor says it is the last within the region, or there are more than
    /// [`MAX_REDISTRIBUTORS`].
    NoLast,
}

impl Layout {
    /// Walks the region as the GIC architecture lays it out: redistributors one after the
    /// other, two frames each (four with GICR_TYPER.VLPIS), until the one whose GICR_TYPER has
    /// Last set. `typer` reads GICR_TYPER of the redistributor at a physical address.
    pub fn discover(region: PhysRange, typer: impl Fn(u64) -> u64) -> Result<Self, LayoutError> {
        if !region.base.is_aligned(FRAME_SIZE) || !region.size.is_multiple_of(FRAME_SIZE) {
            return Err(LayoutError::Misaligned);
        }
        let mut address = region.base.get();
        for count in 1..=MAX_REDISTRIBUTORS {
            let value = typer(address);
            let stride = if value & typer::VLPIS != 0 {
                4 * FRAME_SIZE
            } else {
                2 * FRAME_SIZE
            };
            if address + stride > region.end() {
                return Err(LayoutError::NoLast);
            }
            if value & typer::LAST != 0 {
                return Ok(Self {
                    region,
                    stride,
                    count,
                });
            }
            address += stride;
        }
        Err(LayoutError::NoLast)
    }

    /// The frame an offset into the region falls in: (CPU index, frame base, offset within,
    /// whether it is the SGI_base frame); `None` for any other frame or past the last
    /// redistributor.
    fn locate(&self, offset: u64) -> Option<(usize, u64, u64, bool)> {
        let index = offset / self.stride;
        let within = offset % self.stride;
        if index >= self.count as u64 || within >= 2 * FRAME_SIZE {
            return None;
        }
        let frame_base = self.region.base.get() + index * self.stride;
        #[allow(clippy::cast_possible_truncation, reason = "below MAX_REDISTRIBUTORS")]
        let cpu = index as usize;
        Some(if within < FRAME_SIZE {
            (cpu, frame_base, within, false)
        } else {
            (cpu, frame_base + FRAME_SIZE, within - FRAME_SIZE, true)
        })
    }
}

/// The guest's redistributors.
#[derive(Debug)]
pub struct GuestRedistributors<H> {
    layout: Layout,
    hardware: H,
    ownership: Ownership,
    /// The guest's GICR_WAKER.ProcessorSleep, per CPU.
    asleep: [bool; MAX_REDISTRIBUTORS],
}

impl<H: GicMmio> GuestRedistributors<H> {
    /// The region laid out as `layout`, reached through `hardware`, for a guest that owns what
    /// `ownership` says.
    pub fn new(layout: Layout, hardware: H, ownership: Ownership) -> Self {
        Self {
            layout,
            hardware,
            ownership,
            asleep: [true; MAX_REDISTRIBUTORS],
        }
    }

    /// The guest's priority for SGI or PPI `intid` on CPU `cpu`, for injection.
    #[must_use]
    pub fn priority(&self, cpu: usize, intid: u32) -> u8 {
        let frame = self.layout.region.base.get() + cpu as u64 * self.layout.stride + FRAME_SIZE;
        self.hardware
            .read8(frame + sgi::IPRIORITYR.start + u64::from(intid))
    }

    /// A guest load of `width` at `offset` into the region.
    ///
    /// # Errors
    ///
    /// An [`MmioError`] whose outcome is an external abort for an access outside the RD_base
    /// and SGI_base frames, or of a width or alignment the architecture does not allow.
    pub fn read(&self, offset: u64, width: AccessWidth) -> Result<u64, MmioError> {
        let (cpu, frame, within, is_sgi) = self
            .layout
            .locate(offset)
            .ok_or(MmioError::OutsideWindow(MmioOffset(offset)))?;
        if is_sgi {
            self.read_sgi(frame, within, width)
        } else {
            self.read_rd(cpu, frame, within, width)
        }
    }

    /// A guest store of the low `width` bits of `value` at `offset` into the region.
    ///
    /// # Errors
    ///
    /// As [`GuestRedistributors::read`].
    pub fn write(&mut self, offset: u64, width: AccessWidth, value: u64) -> Result<(), MmioError> {
        let (cpu, frame, within, is_sgi) = self
            .layout
            .locate(offset)
            .ok_or(MmioError::OutsideWindow(MmioOffset(offset)))?;
        if is_sgi {
            self.write_sgi(frame, within, width, value)
        } else {
            self.write_rd(cpu, frame, within, width, value)
        }
    }

    fn read_rd(
        &self,
        cpu: usize,
        frame: u64,
        within: u64,
        width: AccessWidth,
    ) -> Result<u64, MmioError> {
        check_width(within, width, true)?;
        let hardware = &self.hardware;
        let value = match (within, width) {
            (rd::CTLR, AccessWidth::Bits32) => {
                u64::from(hardware.read32(frame + rd::CTLR) & !ENABLE_LPIS)
            }
            (rd::TYPER, AccessWidth::Bits64) => hide_lpis(hardware.read64(frame + rd::TYPER)),
            (rd::TYPER, AccessWidth::Bits32) => {
                hide_lpis(hardware.read64(frame + rd::TYPER)) & 0xffff_ffff
            }
            (rd::TYPER_HIGH, AccessWidth::Bits32) => {
                hide_lpis(hardware.read64(frame + rd::TYPER)) >> 32
            }
            (rd::WAKER, AccessWidth::Bits32) if self.asleep.get(cpu).copied().unwrap_or(true) => {
                u64::from(WAKER_PROCESSOR_SLEEP | WAKER_CHILDREN_ASLEEP)
            }
            (rd::WAKER, AccessWidth::Bits32) => 0,
            (rd::IIDR | rd::STATUSR, AccessWidth::Bits32) => {
                u64::from(hardware.read32(frame + within))
            }
            (id, AccessWidth::Bits32) if rd::ID_REGISTERS.contains(&id) => {
                u64::from(hardware.read32(frame + id))
            }
            // The LPI registers, and everything reserved or not implemented here, read as zero.
            _ => 0,
        };
        Ok(value)
    }

    fn write_rd(
        &mut self,
        cpu: usize,
        frame: u64,
        within: u64,
        width: AccessWidth,
        value: u64,
    ) -> Result<(), MmioError> {
        check_width(within, width, true)?;
        #[allow(
            clippy::cast_possible_truncation,
            reason = "32-bit registers take the low word"
        )]
        let word = value as u32;
        match (within, width) {
            (rd::CTLR, AccessWidth::Bits32) => {
                self.hardware.write32(frame + rd::CTLR, word & !ENABLE_LPIS);
            }
            // STATUSR is write-one-to-clear.
            (rd::STATUSR, AccessWidth::Bits32) => self.hardware.write32(frame + within, word),
            (rd::WAKER, AccessWidth::Bits32) => {
                if let Some(asleep) = self.asleep.get_mut(cpu) {
                    *asleep = word & WAKER_PROCESSOR_SLEEP != 0;
                }
            }
            // Read-only registers, the LPI registers, and everything else: ignored.
            _ => {}
        }
        Ok(())
    }

    /// The guest's bits among SGIs and PPIs (INTIDs 0..32).
    fn private_mask(&self) -> u32 {
        self.ownership.mask32(0)
    }

    fn read_sgi(&self, frame: u64, within: u64, width: AccessWidth) -> Result<u64, MmioError> {
        let mask = self.private_mask();
        match within {
            o if sgi::IPRIORITYR.contains(&o) => {
                let bytes = priority_bytes(o, width)?;
                #[allow(clippy::cast_possible_truncation, reason = "below 32")]
                let first = (o - sgi::IPRIORITYR.start) as u32;
                Ok((0..bytes).fold(0, |value, i| {
                    let byte = if self.ownership.is_guest(first + i) {
                        self.hardware.read8(frame + o + u64::from(i))
                    } else {
                        0
                    };
                    value | u64::from(byte) << (8 * i)
                }))
            }
            _ => {
                check_width(within, width, false)?;
                let value = match within {
                    sgi::IGROUPR0 => mask,
                    sgi::ISENABLER0
                    | sgi::ICENABLER0
                    | sgi::ISPENDR0
                    | sgi::ICPENDR0
                    | sgi::ISACTIVER0
                    | sgi::ICACTIVER0 => self.hardware.read32(frame + within) & mask,
                    sgi::ICFGR0 => self.hardware.read32(frame + within),
                    sgi::ICFGR1 => self.hardware.read32(frame + within) & ppi_config_mask(mask),
                    _ => 0,
                };
                Ok(u64::from(value))
            }
        }
    }

    fn write_sgi(
        &mut self,
        frame: u64,
        within: u64,
        width: AccessWidth,
        value: u64,
    ) -> Result<(), MmioError> {
        let mask = self.private_mask();
        match within {
            o if sgi::IPRIORITYR.contains(&o) => {
                let bytes = priority_bytes(o, width)?;
                #[allow(clippy::cast_possible_truncation, reason = "below 32")]
                let first = (o - sgi::IPRIORITYR.start) as u32;
                for i in 0..bytes {
                    if self.ownership.is_guest(first + i) {
                        #[allow(clippy::cast_possible_truncation, reason = "one byte")]
                        let byte = (value >> (8 * i)) as u8;
                        self.hardware.write8(frame + o + u64::from(i), byte);
                    }
                }
                Ok(())
            }
            _ => {
                check_width(within, width, false)?;
                #[allow(clippy::cast_possible_truncation, reason = "a word register")]
                let word = value as u32;
                match within {
                    sgi::ISENABLER0
                    | sgi::ICENABLER0
                    | sgi::ISPENDR0
                    | sgi::ICPENDR0
                    | sgi::ISACTIVER0
                    | sgi::ICACTIVER0 => {
                        if word & mask != 0 {
                            self.hardware.write32(frame + within, word & mask);
                        }
                    }
                    // PPI configuration (SGIs' ICFGR0 is read-only): the guest's fields only.
                    sgi::ICFGR1 => {
                        let fields = ppi_config_mask(mask);
                        if fields != 0 {
                            let old = self.hardware.read32(frame + within);
                            self.hardware
                                .write32(frame + within, old & !fields | word & fields);
                        }
                    }
                    // IGROUPR0 (every interrupt is Group 1), ICFGR0, IGRPMODR0, NSACR, reserved.
                    _ => return Err(MmioError::WriteIgnored(MmioOffset(within))),
                }
                Ok(())
            }
        }
    }
}

/// The two-bit fields of GICR_ICFGR1 (PPIs 16..32) that belong to the guest.
fn ppi_config_mask(private_mask: u32) -> u32 {
    (0..16).fold(0, |fields, i| {
        let owned = private_mask >> (FIRST_PPI + i) & 1 == 1;
        fields | if owned { 0b11 << (2 * i) } else { 0 }
    })
}

/// IPRIORITYR takes bytes and aligned words.
fn priority_bytes(offset: u64, width: AccessWidth) -> Result<u32, MmioError> {
    match width {
        AccessWidth::Bits8 => Ok(1),
        AccessWidth::Bits32 if offset.is_multiple_of(4) => Ok(4),
        AccessWidth::Bits32 => Err(MmioError::Unaligned(MmioOffset(offset))),
        _ => Err(MmioError::UnsupportedWidth(width)),
    }
}

/// Words, aligned; in RD_base also doublewords (GICR_TYPER and the LPI registers).
fn check_width(offset: u64, width: AccessWidth, doublewords: bool) -> Result<(), MmioError> {
    let size = match width {
        AccessWidth::Bits32 => 4,
        AccessWidth::Bits64 if doublewords => 8,
        _ => return Err(MmioError::UnsupportedWidth(width)),
    };
    if offset.is_multiple_of(size) {
        Ok(())
    } else {
        Err(MmioError::Unaligned(MmioOffset(offset)))
    }
}

fn hide_lpis(typer: u64) -> u64 {
    typer & !(typer::PLPIS | typer::DIRECT_LPI)
}

impl<H: GicMmio> MmioDevice for GuestRedistributors<H> {
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

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]
mod tests {
    use super::*;
    use crate::gic::fake::FakeGic;
    use AccessWidth::{Bits8, Bits16, Bits32, Bits64};
    use nested::MmioOutcome;

    /// QEMU virt's redistributors with two CPUs, LPIs on, as seen at boot.
    const REGION: PhysRange = PhysRange::new(0x080a_0000, 0xf6_0000);
    const TYPER_CPU0: u64 = 0x0000_0000_0000_0001 | 1 << 3 | 1 << 5;
    const TYPER_CPU1: u64 = 0x0000_0001_0000_0101 | 1 << 4;
    const SGI0: u64 = 0x080b_0000;

    fn fake() -> FakeGic {
        let gic = FakeGic::default();
        gic.set(0x080a_0008, 8, TYPER_CPU0);
        gic.set(0x080c_0008, 8, TYPER_CPU1);
        gic.set(0x080a_0000, 4, 0x1); // CTLR with EnableLPIs set by someone
        gic.set(0x080a_ffe8, 4, 0x3b); // GICR_PIDR2: GICv3
        gic
    }

    fn guest() -> GuestRedistributors<FakeGic> {
        let gic = fake();
        let layout = Layout::discover(REGION, |address| gic.read64(address + 8)).unwrap();
        GuestRedistributors::new(layout, gic, Ownership::new(288, &[25, 26, 106]))
    }

    fn writes(r: &GuestRedistributors<FakeGic>) -> Vec<(u64, u8, u64)> {
        r.hardware.writes.borrow().clone()
    }

    #[test]
    fn the_layout_follows_the_hardware_to_the_last_redistributor() {
        let r = guest();
        assert_eq!((r.layout.stride, r.layout.count), (0x2_0000, 2));
        // With VLPIs, four frames per redistributor.
        let vlpi = Layout::discover(REGION, |a| if a == REGION.base.get() { 2 } else { 0x12 });
        assert_eq!(vlpi.map(|l| (l.stride, l.count)), Ok((0x4_0000, 2)));
        assert_eq!(
            Layout::discover(PhysRange::new(0x080a_0000, 0x6_0000), |_| 0),
            Err(LayoutError::NoLast)
        );
        assert_eq!(
            Layout::discover(PhysRange::new(0x080a_8000, 0x2_0000), |_| 0x10),
            Err(LayoutError::Misaligned)
        );
    }

    #[test]
    fn typer_hides_lpis_at_every_width() {
        let r = guest();
        let full = r.read(0x8, Bits64).unwrap();
        assert_eq!(full & 1, 0, "PLPIS");
        assert_eq!(full & 1 << 3, 0, "DirectLPI");
        assert_eq!(full & 1 << 5, 1 << 5, "other bits kept");
        assert_eq!(r.read(0x8, Bits32), Ok(full & 0xffff_ffff));
        assert_eq!(r.read(0xc, Bits32), Ok(full >> 32));
        assert_eq!(r.read(0x2_0008, Bits64), Ok(TYPER_CPU1 & !1));
    }

    #[test]
    fn enable_lpis_never_reaches_the_hardware_nor_reads_back() {
        let mut r = guest();
        r.write(0x0, Bits32, 0xffff_ffff).unwrap();
        assert_eq!(writes(&r)[0], (0x080a_0000, 4, 0xffff_fffe));
        // Even if the hardware had it set (the fake keeps whatever is written, and was preset
        // with EnableLPIs), the guest never sees it.
        r.hardware.set(0x080a_0000, 4, 0x1);
        assert_eq!(r.read(0x0, Bits32), Ok(0));
    }

    #[test]
    fn the_lpi_table_registers_are_res0_and_writes_to_them_are_dropped() {
        let mut r = guest();
        for register in [0x40, 0x48, 0x70, 0x78, 0xa0, 0xb0] {
            for (offset, width) in [
                (register, Bits64),
                (register, Bits32),
                (register + 4, Bits32),
            ] {
                r.write(offset, width, 0x4000_0000).unwrap();
                assert_eq!(r.read(offset, width), Ok(0), "{offset:#x}");
            }
        }
        assert_eq!(r.read(0xc0, Bits32), Ok(0), "SYNCR: never busy");
        assert!(writes(&r).is_empty());
    }

    #[test]
    fn waker_is_the_guests_view_and_the_hardware_never_sleeps() {
        let mut r = guest();
        assert_eq!(
            r.read(0x14, Bits32),
            Ok(0b110),
            "asleep until woken, as at reset"
        );
        r.write(0x14, Bits32, 0).unwrap();
        assert_eq!(r.read(0x14, Bits32), Ok(0));
        r.write(0x2_0014, Bits32, 0b10).unwrap();
        assert_eq!(r.read(0x2_0014, Bits32), Ok(0b110));
        assert!(writes(&r).is_empty());
        assert_eq!(r.read(0xffe8, Bits32), Ok(0x3b));
    }

    #[test]
    fn the_hypervisors_ppis_are_invisible_in_the_sgi_frame() {
        let mut r = guest();
        // Enable everything; the maintenance interrupt (25) and the EL2 timer (26) stay off.
        r.write(0x1_0100, Bits32, 0xffff_ffff).unwrap();
        assert_eq!(
            writes(&r)[0],
            (SGI0 + 0x100, 4, u64::from(!(0b11u32 << 25)))
        );
        r.hardware.set(SGI0 + 0x100, 4, 0xffff_ffff);
        assert_eq!(r.read(0x1_0100, Bits32), Ok(u64::from(!(0b11u32 << 25))));
        // Pending, active, priority, configuration: the same.
        r.write(0x1_0200, Bits32, 1 << 26).unwrap();
        assert_eq!(
            writes(&r).len(),
            1,
            "a write of only the hypervisor's bits does nothing"
        );
        r.hardware.set(SGI0 + 0x418, 4, 0x2020_2020);
        // INTIDs 24..=27: 25 and 26 are the hypervisor's.
        assert_eq!(r.read(0x1_0418, Bits32), Ok(0x2000_0020));
        r.write(0x1_0419, Bits8, 0x80).unwrap();
        assert_eq!(r.hardware.get(SGI0 + 0x419, 1), 0x20);
        r.write(0x1_0c04, Bits32, 0).unwrap();
        let fields = r.hardware.get(SGI0 + 0xc04, 4);
        assert_eq!(fields, 0, "no PPI was configured");
        r.hardware.set(SGI0 + 0xc04, 4, 0b10 << 18);
        r.write(0x1_0c04, Bits32, 0xffff_ffff).unwrap();
        assert_eq!(
            r.hardware.get(SGI0 + 0xc04, 4) as u32,
            !(0b1111 << 18) | 0b10 << 18
        );
        // Groups are fixed: Group 1 for the guest's, reads as zero for the hypervisor's.
        assert_eq!(r.read(0x1_0080, Bits32), Ok(u64::from(!(0b11u32 << 25))));
        assert!(r.write(0x1_0080, Bits32, 0).is_err());
        assert_eq!(r.priority(0, 27), 0x20);
    }

    #[test]
    fn accesses_outside_the_two_frames_or_of_the_wrong_width_are_external_aborts() {
        let mut r = guest();
        for (offset, width) in [
            (0x4_0000, Bits32), // past the last redistributor
            (0x0, Bits8),
            (0x0, Bits16),
            (0x2, Bits32),
            (0x4, Bits64),
            (0x1_0100, Bits64),
            (0x1_0402, Bits32),
        ] {
            assert_eq!(
                r.read(offset, width).map_err(MmioError::outcome),
                Err(MmioOutcome::ExternalAbort),
                "read {offset:#x}"
            );
            assert_eq!(
                r.write(offset, width, 0).map_err(MmioError::outcome),
                Err(MmioOutcome::ExternalAbort),
                "write {offset:#x}"
            );
        }
    }
}
