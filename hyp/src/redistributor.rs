//! The guest's view of the GICv3 redistributors: everything passes through except what would
//! make the GIC read or write memory.
//!
//! With LPIs, a redistributor reads its LPI property table and reads and writes its pending
//! table at the addresses in GICR_PROPBASER and GICR_PENDBASER, as a bus master outside the
//! SMMU. A guest that aims them at hypervisor memory reads it bit by bit (an LPI is pending
//! where a bit is set) and clears bits in it (by acknowledging those LPIs). So each CPU's
//! RD_base frame traps to the hypervisor, which answers from this module: GICR_TYPER shows no
//! LPIs (PLPIS = 0, DirectLPI = 0), GICR_CTLR.EnableLPIs stays 0, and the LPI registers
//! (PROPBASER, PENDBASER, SETLPIR, CLRLPIR, INVLPIR, INVALLR, SYNCR) are RES0, as the GICv3
//! architecture makes them when LPIs are not implemented. The other RD_base registers reach
//! the hardware; the SGI_base frames (SGI and PPI control) are mapped into the guest and never
//! trap. Frames beyond those two (GICv4's VLPI frames) are neither mapped nor emulated: an
//! access to them is an external abort.
//!
//! Policy only: the hardware is reached through [`RedistributorRegisters`], which the
//! hypervisor implements over MMIO and tests implement over a fake.

use nested::{AccessWidth, MmioDevice, MmioError, MmioOffset, VcpuId};
use smmu::PhysRange;

/// One 64 KiB frame of a redistributor.
pub const FRAME_SIZE: u64 = 0x1_0000;

/// The most redistributors the hypervisor handles (one per CPU).
pub const MAX_REDISTRIBUTORS: usize = 8;

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
mod offset {
    pub(super) const CTLR: u64 = 0x0000;
    pub(super) const IIDR: u64 = 0x0004;
    pub(super) const TYPER: u64 = 0x0008;
    pub(super) const STATUSR: u64 = 0x0010;
    pub(super) const WAKER: u64 = 0x0014;
    pub(super) const ID_REGISTERS: core::ops::RangeInclusive<u64> = 0xffd0..=0xfffc;
}

/// GICR_CTLR.EnableLPIs.
const ENABLE_LPIS: u32 = 1 << 0;

/// Access to the redistributors' registers by physical address.
pub trait RedistributorRegisters {
    /// Reads the 32-bit register at `address`.
    fn read32(&self, address: u64) -> u32;
    /// Reads the 64-bit register at `address`.
    fn read64(&self, address: u64) -> u64;
    /// Writes the 32-bit register at `address`.
    fn write32(&self, address: u64, value: u32);
}

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

    /// The SGI_base frame of each redistributor: what the guest's stage 2 maps.
    pub fn sgi_frames(&self) -> impl Iterator<Item = PhysRange> + '_ {
        (0..self.count).map(|index| {
            PhysRange::new(
                self.region.base.get() + index as u64 * self.stride + FRAME_SIZE,
                FRAME_SIZE,
            )
        })
    }

    /// The RD_base frame an offset into the region falls in, with the offset within it; `None`
    /// for any other frame or past the last redistributor.
    fn rd_base(&self, offset: u64) -> Option<(u64, u64)> {
        let index = offset / self.stride;
        let within = offset % self.stride;
        (index < self.count as u64 && within < FRAME_SIZE)
            .then(|| (self.region.base.get() + index * self.stride, within))
    }
}

/// The access widths the GICv3 allows for RD_base: 32-bit registers as words, 64-bit ones as
/// doublewords or as either word half; anything else is an external abort.
fn check_width(register_offset: u64, size: u8) -> Result<(), MmioError> {
    if !matches!(size, 4 | 8) {
        let width = if size == 1 {
            AccessWidth::Bits8
        } else {
            AccessWidth::Bits16
        };
        return Err(MmioError::UnsupportedWidth(width));
    }
    if register_offset.is_multiple_of(u64::from(size)) {
        Ok(())
    } else {
        Err(MmioError::Unaligned(MmioOffset(register_offset)))
    }
}

/// A guest load of `size` bytes at `offset` into the redistributor region.
///
/// # Errors
///
/// An [`MmioError`] whose outcome is an external abort for an access outside the RD_base
/// frames, or of a width or alignment the architecture does not allow.
pub fn read(
    layout: &Layout,
    hardware: &impl RedistributorRegisters,
    offset: u64,
    size: u8,
) -> Result<u64, MmioError> {
    let (frame, within) = layout
        .rd_base(offset)
        .ok_or(MmioError::OutsideWindow(MmioOffset(offset)))?;
    check_width(within, size)?;
    let value = match (within, size) {
        (offset::CTLR, 4) => u64::from(hardware.read32(frame + offset::CTLR) & !ENABLE_LPIS),
        (offset::TYPER, 8) => hide_lpis(hardware.read64(frame + offset::TYPER)),
        (offset::TYPER, 4) => hide_lpis(hardware.read64(frame + offset::TYPER)) & 0xffff_ffff,
        (0x000c, 4) => hide_lpis(hardware.read64(frame + offset::TYPER)) >> 32,
        (offset::IIDR | offset::STATUSR | offset::WAKER, 4) => {
            u64::from(hardware.read32(frame + within))
        }
        (id, 4) if offset::ID_REGISTERS.contains(&id) => u64::from(hardware.read32(frame + id)),
        // The LPI registers, and everything reserved or not implemented here, read as zero.
        _ => 0,
    };
    Ok(value)
}

/// A guest store of `size` bytes of `value` at `offset` into the redistributor region.
///
/// # Errors
///
/// As [`read`].
pub fn write(
    layout: &Layout,
    hardware: &impl RedistributorRegisters,
    offset: u64,
    size: u8,
    value: u64,
) -> Result<(), MmioError> {
    let (frame, within) = layout
        .rd_base(offset)
        .ok_or(MmioError::OutsideWindow(MmioOffset(offset)))?;
    check_width(within, size)?;
    #[allow(
        clippy::cast_possible_truncation,
        reason = "32-bit registers take the low word"
    )]
    let word = value as u32;
    match (within, size) {
        (offset::CTLR, 4) => hardware.write32(frame + offset::CTLR, word & !ENABLE_LPIS),
        // STATUSR is write-one-to-clear; WAKER puts the CPU's interface to sleep or wakes it.
        (offset::STATUSR | offset::WAKER, 4) => hardware.write32(frame + within, word),
        // Read-only registers, the LPI registers, and everything else: ignored.
        _ => {}
    }
    Ok(())
}

fn hide_lpis(typer: u64) -> u64 {
    typer & !(typer::PLPIS | typer::DIRECT_LPI)
}

/// The guest's view of the redistributor region, as a virtual device over `hardware`.
#[derive(Debug)]
pub struct GuestRedistributors<H> {
    layout: Layout,
    hardware: H,
}

impl<H: RedistributorRegisters> GuestRedistributors<H> {
    /// The region laid out as `layout`, reaching the hardware through `hardware`.
    pub const fn new(layout: Layout, hardware: H) -> Self {
        Self { layout, hardware }
    }
}

#[allow(
    clippy::cast_possible_truncation,
    reason = "an access is at most 8 bytes"
)]
impl<H: RedistributorRegisters> MmioDevice for GuestRedistributors<H> {
    fn mmio_read(
        &mut self,
        offset: MmioOffset,
        width: AccessWidth,
        _vcpu: VcpuId,
    ) -> Result<u64, MmioError> {
        read(&self.layout, &self.hardware, offset.0, width.bytes() as u8)
    }

    fn mmio_write(
        &mut self,
        offset: MmioOffset,
        width: AccessWidth,
        value: u64,
        _vcpu: VcpuId,
    ) -> Result<(), MmioError> {
        write(
            &self.layout,
            &self.hardware,
            offset.0,
            width.bytes() as u8,
            value,
        )
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
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// QEMU virt's redistributors with two CPUs, LPIs on, as seen at boot.
    const REGION: PhysRange = PhysRange::new(0x080a_0000, 0xf6_0000);
    const TYPER_CPU0: u64 = 0x0000_0000_0000_0001 | 1 << 3 | 1 << 5;
    const TYPER_CPU1: u64 = 0x0000_0001_0000_0101 | 1 << 4;

    #[derive(Default)]
    struct Fake {
        registers: RefCell<BTreeMap<u64, u64>>,
        writes: RefCell<Vec<(u64, u32)>>,
    }

    impl Fake {
        fn qemu() -> Self {
            let fake = Self::default();
            let mut registers = fake.registers.borrow_mut();
            registers.insert(0x080a_0008, TYPER_CPU0);
            registers.insert(0x080c_0008, TYPER_CPU1);
            registers.insert(0x080a_0000, 0x1); // CTLR with EnableLPIs set by someone
            registers.insert(0x080a_ffe8, 0x3b); // GICR_PIDR2: GICv3
            registers.insert(0x080a_0014, 0x6); // WAKER: asleep
            drop(registers);
            fake
        }
    }

    impl RedistributorRegisters for Fake {
        fn read32(&self, address: u64) -> u32 {
            self.registers
                .borrow()
                .get(&address)
                .map_or(0, |&v| v as u32)
        }
        fn read64(&self, address: u64) -> u64 {
            self.registers.borrow().get(&address).copied().unwrap_or(0)
        }
        fn write32(&self, address: u64, value: u32) {
            self.writes.borrow_mut().push((address, value));
        }
    }

    fn layout(fake: &Fake) -> Layout {
        Layout::discover(REGION, |address| fake.read64(address + 8)).unwrap()
    }

    #[test]
    fn the_layout_follows_the_hardware_to_the_last_redistributor() {
        let fake = Fake::qemu();
        let layout = layout(&fake);
        assert_eq!((layout.stride, layout.count), (0x2_0000, 2));
        let frames: Vec<_> = layout.sgi_frames().collect();
        assert_eq!(
            frames,
            [
                PhysRange::new(0x080b_0000, 0x1_0000),
                PhysRange::new(0x080d_0000, 0x1_0000)
            ]
        );
        // With VLPIs, four frames per redistributor.
        let vlpi = Layout::discover(REGION, |a| if a == REGION.base.get() { 2 } else { 0x12 });
        assert_eq!(vlpi.map(|l| (l.stride, l.count)), Ok((0x4_0000, 2)));
    }

    #[test]
    fn a_region_without_a_last_redistributor_is_refused() {
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
        let fake = Fake::qemu();
        let layout = layout(&fake);
        let full = read(&layout, &fake, 0x8, 8).unwrap();
        assert_eq!(full & 1, 0, "PLPIS");
        assert_eq!(full & 1 << 3, 0, "DirectLPI");
        assert_eq!(full & 1 << 5, 1 << 5, "other bits kept");
        assert_eq!(read(&layout, &fake, 0x8, 4), Ok(full & 0xffff_ffff));
        assert_eq!(read(&layout, &fake, 0xc, 4), Ok(full >> 32));
        // The second CPU's TYPER, with Last, through its own frame.
        let second = read(&layout, &fake, 0x2_0008, 8).unwrap();
        assert_eq!(second, TYPER_CPU1 & !1);
    }

    #[test]
    fn enable_lpis_never_reaches_the_hardware_nor_reads_back() {
        let fake = Fake::qemu();
        let layout = layout(&fake);
        write(&layout, &fake, 0x0, 4, 0xffff_ffff).unwrap();
        assert_eq!(fake.writes.borrow()[0], (0x080a_0000, 0xffff_fffe));
        assert_eq!(read(&layout, &fake, 0x0, 4), Ok(0));
    }

    #[test]
    fn the_lpi_table_registers_are_res0_and_writes_to_them_are_dropped() {
        let fake = Fake::qemu();
        let layout = layout(&fake);
        for register in [0x40, 0x48, 0x70, 0x78, 0xa0, 0xb0] {
            for (offset, size) in [(register, 8), (register, 4), (register + 4, 4)] {
                write(&layout, &fake, offset, size, 0x4000_0000).unwrap();
                assert_eq!(read(&layout, &fake, offset, size), Ok(0), "{offset:#x}");
            }
        }
        assert_eq!(read(&layout, &fake, 0xc0, 4), Ok(0), "SYNCR: never busy");
        assert!(fake.writes.borrow().is_empty());
    }

    #[test]
    fn the_cpu_interface_power_and_id_registers_pass_through() {
        let fake = Fake::qemu();
        let layout = layout(&fake);
        assert_eq!(read(&layout, &fake, 0xffe8, 4), Ok(0x3b));
        assert_eq!(read(&layout, &fake, 0x14, 4), Ok(0x6));
        write(&layout, &fake, 0x2_0014, 4, 0).unwrap();
        write(&layout, &fake, 0x10, 4, 0x1f).unwrap();
        assert_eq!(
            *fake.writes.borrow(),
            [(0x080c_0014, 0), (0x080a_0010, 0x1f)]
        );
    }

    #[test]
    fn accesses_outside_rd_base_or_of_the_wrong_width_are_external_aborts() {
        let fake = Fake::qemu();
        let layout = layout(&fake);
        for (offset, size) in [
            (0x1_0000, 4), // the SGI_base frame (mapped, so never trapped, but not ours)
            (0x4_0000, 4), // past the last redistributor
            (0x0, 1),      // a byte
            (0x0, 2),      // a halfword
            (0x2, 4),      // misaligned
            (0x4, 8),      // a doubleword across two registers
        ] {
            let read = read(&layout, &fake, offset, size);
            assert_eq!(
                read.map_err(MmioError::outcome),
                Err(nested::MmioOutcome::ExternalAbort),
                "read {offset:#x}/{size}"
            );
            let write = write(&layout, &fake, offset, size, 0);
            assert_eq!(
                write.map_err(MmioError::outcome),
                Err(nested::MmioOutcome::ExternalAbort),
                "write {offset:#x}/{size}"
            );
        }
    }
}
