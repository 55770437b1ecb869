//! QEMU's `edu` PCI device driven from EL2: a DMA master behind the SMMU for self-tests.
//!
//! The self-test that uses it owns the SMMU and the device's stream, so every transfer goes
//! through translation the test set up. This module owns the device's configuration (its ECAM
//! page: identification, BAR0, memory decoding and bus mastering) and its DMA registers; it
//! knows nothing of the SMMU.
//!
//! Device facts (QEMU's `hw/misc/edu.c`, see `ENVIRONMENT.md`): PCI ID 1234:11e8; BAR0 is 1 MiB
//! of 32-bit memory space whose register 0x00 reads 0x010000ed; DMA registers 0x80 source, 0x88
//! destination, 0x90 count, 0x98 command (bit 0 run, bit 1 device-to-RAM); the device's own
//! buffer is 4 KiB at device address 0x40000. A transfer completes on a timer about 100 ms of
//! virtual time after it starts, so completion is polled, with a deadline.

use crate::arch::mmio::DeviceWindow;
use crate::arch::sysreg;
use crate::page_pool::PagePool;
use aarch64_paging::{Mapping, paging::El2};
use board::RequesterId;
use smmu::{PhysRange, StreamId};

/// Where the self-tests expect `edu`: bus 0, device 1, function 0.
const EDU_FUNCTION: (u8, u8, u8) = (0, 1, 0);

/// Configuration space offsets and values.
const CONFIG_ID: usize = 0x00;
const CONFIG_COMMAND: usize = 0x04;
const CONFIG_BAR0: usize = 0x10;
/// Vendor 0x1234, device 0x11e8, as the 32-bit register at offset 0 reads.
const VENDOR_DEVICE: u32 = 0x11e8_1234;
/// PCI command register: memory space decoding and bus mastering.
const COMMAND_MEMORY_AND_BUS_MASTER: u32 = (1 << 1) | (1 << 2);

/// BAR0 register offsets and values.
const REGISTER_ID: usize = 0x00;
const REGISTER_DMA_SOURCE: usize = 0x80;
const REGISTER_DMA_DESTINATION: usize = 0x88;
const REGISTER_DMA_COUNT: usize = 0x90;
const REGISTER_DMA_COMMAND: usize = 0x98;
/// What register 0x00 reads: major 1, minor 0, 0xed.
const IDENTIFICATION: u32 = 0x0100_00ed;
const DMA_RUN: u32 = 1 << 0;
const DMA_DEVICE_TO_RAM: u32 = 1 << 1;

/// The device's internal buffer, as its DMA engine addresses it.
pub const DEVICE_BUFFER: u64 = 0x4_0000;
/// Its size: no transfer may reach past it (QEMU stops the machine if one does).
pub const DEVICE_BUFFER_SIZE: u64 = 0x1000;
/// The size of the configuration page of one function in the ECAM.
pub const CONFIG_PAGE_SIZE: u64 = 0x1000;
/// The part of BAR0 the self-test maps: the registers above fit in the first page.
pub const REGISTER_PAGE_SIZE: u64 = 0x1000;
/// How long one transfer may take, in milliseconds of the generic timer (about 100 ms is normal).
const DMA_DEADLINE_MS: u64 = 2_000;

/// Why the device could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, defmt::Format)]
pub enum EduError {
    /// Configuration space at 00:01.0 does not identify an `edu` (the value read).
    NotPresent(u32),
    /// BAR0 (a 32-bit BAR) cannot be placed at this address.
    BarAbove4GiB(u64),
    /// BAR0 was assigned but its identification register reads something else (the value).
    BarNotDecoding(u32),
    /// A transfer was asked for while the previous one still runs.
    Busy,
    /// A transfer did not complete before the deadline.
    Timeout,
    /// The device-side range lies outside the device's buffer.
    OutsideDeviceBuffer,
}

/// Which way a transfer goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, defmt::Format)]
pub enum Direction {
    /// RAM (an address the SMMU translates) to the device's buffer: a DMA read.
    RamToDevice,
    /// The device's buffer to RAM: a DMA write.
    DeviceToRam,
}

/// The `edu` function, configured: BAR0 assigned, memory decoding and bus mastering on.
#[derive(Debug)]
pub struct Edu {
    registers: DeviceWindow,
}

/// Finds `edu` at 00:01.0, maps its configuration page and the first page of BAR0 into the
/// live EL2 map, places BAR0 at the start of the 32-bit PCI memory window and probes it;
/// returns the device and its stream ID.
///
/// Only a self-test that owns the SMMU may call this, with no guest running: the device's DMA
/// then reaches only what the test's STE for the returned stream lets it.
///
/// # Errors
///
/// What could not be set up, in words (the detail is logged).
pub fn attach(
    platform: &board::Platform,
    el2_map: &mut Mapping<PagePool, El2>,
) -> Result<(Edu, StreamId), &'static str> {
    let (bus, device, function) = EDU_FUNCTION;
    let requester = RequesterId::new(bus, device, function).ok_or("edu's requester ID")?;
    let stream = platform
        .pcie
        .stream_id(requester)
        .ok_or("edu's stream ID: the platform's iommu-map does not cover 00:01.0")?;
    let config = PhysRange::new(
        platform.pcie.ecam.base.get() + (u64::from(requester.0) << 12),
        CONFIG_PAGE_SIZE,
    );
    let bar0 = PhysRange::new(platform.pcie.mmio32.base.get(), REGISTER_PAGE_SIZE);
    if let Err(window) = super::map_device_windows(
        el2_map,
        &[("edu configuration page", config), ("edu BAR0", bar0)],
    ) {
        defmt::error!("could not map {=str}", window);
        return Err("EL2 map");
    }
    // SAFETY: `config` is 00:01.0's ECAM page and `bar0` the start of the 32-bit PCI memory
    // window, which nothing else uses (no guest runs), both just mapped as device memory and
    // never unmapped (the self-test ends the run); the caller owns the function's stream.
    let edu = unsafe { Edu::probe(config.base.get(), bar0.base.get()) }.map_err(|error| {
        defmt::error!("edu at 00:01.0: {}", error);
        "no edu device (QEMU needs -device edu,addr=1,dma_mask=...)"
    })?;
    defmt::info!(
        "edu at 00:01.0, stream {=u32:#x}, BAR0 at {=u64:#x}",
        stream.get(),
        bar0.base.get()
    );
    Ok((edu, stream))
}

impl Edu {
    /// Identifies the function whose configuration page is at `config`, assigns BAR0 at `bar0`,
    /// enables memory decoding and bus mastering, and checks the BAR answers.
    ///
    /// # Safety
    ///
    /// `config` must be the ECAM page of the function at 00:01.0 and `bar0` the first page of a
    /// range of PCI memory space (1 MiB, aligned) that no other device decodes, both mapped as
    /// device memory at EL2 for as long as the returned value lives. Once bus mastering is on,
    /// the device's DMA reaches whatever the SMMU lets its stream reach: the caller must own
    /// that stream's STE.
    pub unsafe fn probe(config: u64, bar0: u64) -> Result<Self, EduError> {
        // SAFETY: the caller guarantees the page is the function's configuration space, mapped as
        // device memory; reads and writes of its header registers affect only the function.
        let mut config_space =
            unsafe { DeviceWindow::new(config as usize, CONFIG_PAGE_SIZE as usize) };
        let id = config_space.read32(CONFIG_ID).unwrap_or(0);
        if id != VENDOR_DEVICE {
            return Err(EduError::NotPresent(id));
        }
        // BAR0 is a 32-bit memory BAR.
        let bar0_register = u32::try_from(bar0).map_err(|_| EduError::BarAbove4GiB(bar0))?;
        let _ = config_space.write32(CONFIG_BAR0, bar0_register);
        // The 32-bit write also writes the status register with zeros, which clears nothing
        // (its error bits are write-one-to-clear).
        let _ = config_space.write32(CONFIG_COMMAND, COMMAND_MEMORY_AND_BUS_MASTER);
        // SAFETY: the caller guarantees `bar0` is a page of PCI memory space only this function
        // decodes (BAR0 was just placed there), mapped as device memory; its registers affect the
        // device, and its DMA goes through the SMMU stream the caller owns.
        let registers = unsafe { DeviceWindow::new(bar0 as usize, REGISTER_PAGE_SIZE as usize) };
        let identification = registers.read32(REGISTER_ID).unwrap_or(0);
        if identification != IDENTIFICATION {
            return Err(EduError::BarNotDecoding(identification));
        }
        Ok(Self { registers })
    }

    fn running(&self) -> bool {
        self.registers.read32(REGISTER_DMA_COMMAND).unwrap_or(0) & DMA_RUN != 0
    }

    /// Copies `count` bytes between the device's buffer at `device_offset` and `address` (as the
    /// device issues it: an IOVA the SMMU translates), and waits, bounded, for completion.
    ///
    /// Completion says nothing about whether the SMMU let the transfer through: a blocked
    /// transfer completes too. The caller checks memory and the event queue.
    ///
    /// # Errors
    ///
    /// [`EduError::OutsideDeviceBuffer`], [`EduError::Busy`], [`EduError::Timeout`].
    pub fn dma(
        &mut self,
        direction: Direction,
        address: u64,
        device_offset: u64,
        count: u64,
    ) -> Result<(), EduError> {
        let in_buffer = device_offset
            .checked_add(count)
            .is_some_and(|end| end <= DEVICE_BUFFER_SIZE);
        if !in_buffer || count == 0 {
            return Err(EduError::OutsideDeviceBuffer);
        }
        if self.running() {
            return Err(EduError::Busy);
        }
        let device = DEVICE_BUFFER + device_offset;
        let (source, destination, command) = match direction {
            Direction::RamToDevice => (address, device, DMA_RUN),
            Direction::DeviceToRam => (device, address, DMA_RUN | DMA_DEVICE_TO_RAM),
        };
        let _ = self.registers.write64(REGISTER_DMA_SOURCE, source);
        let _ = self
            .registers
            .write64(REGISTER_DMA_DESTINATION, destination);
        let _ = self.registers.write64(REGISTER_DMA_COUNT, count);
        let _ = self.registers.write32(REGISTER_DMA_COMMAND, command);
        let (start, frequency) = sysreg::counter();
        let deadline = start.saturating_add(frequency.saturating_mul(DMA_DEADLINE_MS) / 1000);
        // Bounded by the generic timer: at most DMA_DEADLINE_MS of virtual time.
        loop {
            if !self.running() {
                return Ok(());
            }
            if sysreg::counter().0 >= deadline {
                return Err(EduError::Timeout);
            }
            core::hint::spin_loop();
        }
    }
}
