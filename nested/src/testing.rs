//! Fakes behind the consumer-side traits, for host tests here and in crates built on this one
//! (the `testing` feature): guest RAM in a vector, an interrupt sink that records, and one
//! physical SMMU shared by several vSMMUs, the real `smmu` driver over `smmu`'s behavioural
//! fake SMMU.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::missing_panics_doc,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

#[cfg(not(test))]
extern crate std;

use std::cell::{RefCell, RefMut};
use std::rc::Rc;
use std::vec;
use std::vec::Vec;

use smmu::domain::SyncProof;
use smmu::driver::fake::{FakeBus, FakePlatform, FakeRegion, FakeSmmu};
use smmu::driver::{Driver, DriverConfig, DriverMemory};
use smmu::entry::install::InstallReport;
use smmu::registers::{Features, IdRegisters};
use smmu::{Ipa, IpaRange, PhysAddr, StreamId};

use crate::interfaces::guest_memory::{GuestMemory, GuestMemoryError};
use crate::interfaces::interrupts::{InterruptSink, VirtualInterrupt};
use crate::interfaces::physical::{
    DriverBackendError, PhysicalCommand, PhysicalSmmu, ShadowSte,
};

/// A VM's RAM: one range, in a vector, with a count of every access.
#[derive(Clone, Debug)]
pub struct FakeGuestMemory {
    ram: IpaRange,
    bytes: Rc<RefCell<Vec<u8>>>,
    /// Reads and writes made, in bytes.
    pub traffic: Rc<RefCell<(u64, u64)>>,
}

impl FakeGuestMemory {
    /// `size` bytes of zeroed RAM at `base`.
    #[must_use]
    pub fn new(base: Ipa, size: usize) -> Self {
        Self {
            ram: IpaRange::new(base, size as u64),
            bytes: Rc::new(RefCell::new(vec![0; size])),
            traffic: Rc::new(RefCell::new((0, 0))),
        }
    }

    /// The RAM range.
    #[must_use]
    pub fn ram(&self) -> IpaRange {
        self.ram
    }

    fn offset(&self, ipa: Ipa, len: usize) -> Option<usize> {
        self.ram
            .covers(&IpaRange::new(ipa, len as u64))
            .then(|| usize::try_from(ipa.0 - self.ram.base.0).ok())
            .flatten()
    }

    /// Writes `words` little-endian at `ipa` (test setup; panics outside RAM).
    pub fn put_words(&self, ipa: Ipa, words: &[u64]) {
        let offset = self.offset(ipa, words.len() * 8).expect("inside RAM");
        let mut bytes = self.bytes.borrow_mut();
        for (i, word) in words.iter().enumerate() {
            bytes[offset + i * 8..offset + i * 8 + 8].copy_from_slice(&word.to_le_bytes());
        }
    }

    /// Reads `n` little-endian words at `ipa` (test checks; panics outside RAM).
    #[must_use]
    pub fn words(&self, ipa: Ipa, n: usize) -> Vec<u64> {
        let offset = self.offset(ipa, n * 8).expect("inside RAM");
        let bytes = self.bytes.borrow();
        (0..n)
            .map(|i| {
                u64::from_le_bytes(bytes[offset + i * 8..offset + i * 8 + 8].try_into().unwrap())
            })
            .collect()
    }

    /// Reads a little-endian 32-bit word at `ipa`.
    #[must_use]
    pub fn word32(&self, ipa: Ipa) -> u32 {
        let offset = self.offset(ipa, 4).expect("inside RAM");
        let bytes = self.bytes.borrow();
        u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
    }
}

impl GuestMemory for FakeGuestMemory {
    fn is_ram(&self, range: IpaRange) -> bool {
        self.ram.covers(&range)
    }

    fn overlaps_ram(&self, range: IpaRange) -> bool {
        self.ram.overlaps(&range)
    }

    fn read(&self, ipa: Ipa, buffer: &mut [u8]) -> Result<(), GuestMemoryError> {
        let offset = self.offset(ipa, buffer.len()).ok_or(GuestMemoryError::OutsideRam {
            ipa,
            len: buffer.len(),
        })?;
        buffer.copy_from_slice(&self.bytes.borrow()[offset..offset + buffer.len()]);
        self.traffic.borrow_mut().0 += buffer.len() as u64;
        Ok(())
    }

    fn write(&mut self, ipa: Ipa, data: &[u8]) -> Result<(), GuestMemoryError> {
        let offset = self
            .offset(ipa, data.len())
            .ok_or(GuestMemoryError::OutsideRam {
                ipa,
                len: data.len(),
            })?;
        self.bytes.borrow_mut()[offset..offset + data.len()].copy_from_slice(data);
        self.traffic.borrow_mut().1 += data.len() as u64;
        Ok(())
    }
}

/// What a vSMMU signalled.
#[derive(Clone, Debug, Default)]
pub struct RecordingInterrupts {
    /// Every interrupt raised, in order.
    pub raised: Rc<RefCell<Vec<VirtualInterrupt>>>,
    /// How many wake-up events were sent.
    pub events: Rc<RefCell<u64>>,
}

impl RecordingInterrupts {
    /// How many times `interrupt` was raised.
    #[must_use]
    pub fn count(&self, interrupt: VirtualInterrupt) -> usize {
        self.raised
            .borrow()
            .iter()
            .filter(|&&i| i == interrupt)
            .count()
    }
}

impl InterruptSink for RecordingInterrupts {
    fn raise(&mut self, interrupt: VirtualInterrupt) {
        self.raised.borrow_mut().push(interrupt);
    }

    fn send_event(&mut self) {
        *self.events.borrow_mut() += 1;
    }
}

/// The physical driver the tests use.
pub type TestDriver = Driver<FakeSmmu, FakeRegion, FakePlatform>;

/// The physical address of the fake bus: the driver's memory, then the shadow CD regions.
pub const BUS_BASE: u64 = 0x10_0000_0000;
/// The bus size.
pub const BUS_BYTES: usize = 0x40_0000;

/// One physical SMMU (the real driver over `smmu`'s fake SMMU), shared by the vSMMUs of
/// several VMs, and the bus its memory and the shadow CD tables are on.
#[derive(Clone, Debug)]
pub struct SharedPhysical {
    driver: Rc<RefCell<TestDriver>>,
    /// The fake SMMU (the driver holds a clone).
    pub fake: FakeSmmu,
    /// The bus.
    pub bus: FakeBus,
    /// Every command submitted through this handle, in order.
    pub submitted: Rc<RefCell<Vec<PhysicalCommand>>>,
    /// Every STE install through this handle: the stream and the target.
    pub installs: Rc<RefCell<Vec<(StreamId, ShadowSte)>>>,
    /// How many syncs were asked through this handle.
    pub syncs: Rc<RefCell<u64>>,
    next_region: Rc<RefCell<u64>>,
}

impl SharedPhysical {
    /// A physical SMMU with `ids`, reset by the driver, and a bus for shadow memory.
    #[must_use]
    pub fn new(ids: IdRegisters) -> Self {
        let bus = FakeBus::new(PhysAddr(BUS_BASE), BUS_BYTES);
        let fake = FakeSmmu::new(ids, &bus);
        let memory = DriverMemory {
            stream_table_l1: bus.region(PhysAddr(BUS_BASE), 256 * 8),
            stream_table_l2_pool: bus.region(PhysAddr(BUS_BASE + 0x1_0000), 8 * 256 * 64),
            command_queue: bus.region(PhysAddr(BUS_BASE + 0x8_0000), 1024 * 16),
            event_queue: bus.region(PhysAddr(BUS_BASE + 0x9_0000), 64 * 32),
            pri_queue: None,
        };
        let driver =
            Driver::new(fake.clone(), memory, FakePlatform::default(), DriverConfig::DEFAULT)
                .expect("the driver resets the fake SMMU");
        Self {
            driver: Rc::new(RefCell::new(driver)),
            fake,
            bus,
            submitted: Rc::new(RefCell::new(Vec::new())),
            installs: Rc::new(RefCell::new(Vec::new())),
            syncs: Rc::new(RefCell::new(0)),
            next_region: Rc::new(RefCell::new(BUS_BASE + 0x10_0000)),
        }
    }

    /// QEMU `virt`'s SMMU.
    #[must_use]
    pub fn qemu_virt() -> Self {
        Self::new(IdRegisters::QEMU_VIRT)
    }

    /// The driver (tests inspect it; the vSMMUs reach it through the trait).
    #[must_use]
    pub fn driver(&self) -> RefMut<'_, TestDriver> {
        self.driver.borrow_mut()
    }

    /// A fresh, zeroed, page-aligned region of `bytes` on the bus for a VM's shadow CDs.
    #[must_use]
    pub fn shadow_region(&self, bytes: usize) -> FakeRegion {
        let mut next = self.next_region.borrow_mut();
        let base = *next;
        *next += (bytes as u64).next_multiple_of(0x1_0000);
        self.bus.region(PhysAddr(base), bytes)
    }
}

impl PhysicalSmmu for SharedPhysical {
    type Error = DriverBackendError;

    fn features(&self) -> Features {
        *self.driver.borrow().features()
    }

    fn install_ste(
        &mut self,
        sid: StreamId,
        target: &ShadowSte,
    ) -> Result<InstallReport, DriverBackendError> {
        self.installs.borrow_mut().push((sid, *target));
        PhysicalSmmu::install_ste(&mut *self.driver.borrow_mut(), sid, target)
    }

    fn submit(&mut self, commands: &[PhysicalCommand]) -> Result<(), DriverBackendError> {
        self.submitted.borrow_mut().extend_from_slice(commands);
        PhysicalSmmu::submit(&mut *self.driver.borrow_mut(), commands)
    }

    fn sync(&mut self) -> Result<SyncProof, DriverBackendError> {
        *self.syncs.borrow_mut() += 1;
        PhysicalSmmu::sync(&mut *self.driver.borrow_mut())
    }
}
