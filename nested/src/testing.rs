//! Fakes behind the consumer-side traits, for host tests here and in crates built on this one
//! (the `testing` feature): guest RAM in a vector, an interrupt sink that records, and one
//! physical SMMU shared by several vSMMUs, the real `smmu` driver over `smmu`'s behavioural
//! fake SMMU.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::missing_panics_doc,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::panic
)]

#[cfg(not(test))]
extern crate std;

use std::cell::{RefCell, RefMut};
use std::rc::Rc;
use std::vec;
use std::vec::Vec;

use smmu::domain::SyncProof;
use smmu::driver::fake::{FakeBus, FakePlatform, FakeRegion, FakeSmmu};
use smmu::driver::{Driver, DriverConfig, DriverMemory, PriPosition};
use smmu::entry::install::InstallReport;
use smmu::registers::{Features, IdRegisters};
use smmu::{Ipa, IpaRange, PhysAddr, StreamId};

use crate::interfaces::guest_memory::{GuestMemory, GuestMemoryError};
use crate::interfaces::interrupts::{InterruptSink, VirtualInterrupt};
use crate::interfaces::physical::{DriverBackendError, PhysicalCommand, PhysicalSmmu, ShadowSte};

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
                u64::from_le_bytes(
                    bytes[offset + i * 8..offset + i * 8 + 8]
                        .try_into()
                        .unwrap(),
                )
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
        let offset = self
            .offset(ipa, buffer.len())
            .ok_or(GuestMemoryError::OutsideRam {
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
    /// A physical SMMU with `ids`, reset by the driver, and a bus for shadow memory. With
    /// IDR0.PRI, a 16-entry PRI queue.
    #[must_use]
    pub fn new(ids: IdRegisters) -> Self {
        let bus = FakeBus::new(PhysAddr(BUS_BASE), BUS_BYTES);
        let fake = FakeSmmu::new(ids, &bus);
        let memory = DriverMemory {
            stream_table_l1: bus.region(PhysAddr(BUS_BASE), 256 * 8),
            stream_table_l2_pool: bus.region(PhysAddr(BUS_BASE + 0x1_0000), 8 * 256 * 64),
            command_queue: bus.region(PhysAddr(BUS_BASE + 0x8_0000), 1024 * 16),
            event_queue: bus.region(PhysAddr(BUS_BASE + 0x9_0000), 64 * 32),
            pri_queue: Some(bus.region(PhysAddr(BUS_BASE + 0x9_8000), 16 * 16)),
        };
        let driver = Driver::new(
            fake.clone(),
            memory,
            FakePlatform::default(),
            DriverConfig::DEFAULT,
        )
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

    /// QEMU `virt`'s SMMU with ATS, PRI (16-entry queue) and 4-bit substreams: what a vSMMU
    /// forwards PRI from.
    #[must_use]
    pub fn with_pri() -> Self {
        let qemu = IdRegisters::QEMU_VIRT;
        Self::new(IdRegisters {
            idr0: qemu.idr0 | 1 << 10 | 1 << 16,
            idr1: qemu.idr1 | 4 << 6 | 4 << 11,
            ..qemu
        })
    }

    /// What `hyp` does with the physical PRI queue: drains it (the physical lock only), then
    /// hands each entry to the vSMMU owning its stream (an overflow to each of `vsmmus`), and
    /// tells each how far the drain got.
    pub fn hand_page_requests(&self, vsmmus: &mut [&mut TestVsmmu]) {
        let mut entries = Vec::new();
        if self
            .driver()
            .drain_page_requests_at(64, |position, intake| entries.push((position, intake)))
            .is_err()
        {
            return;
        }
        let mut next = PriPosition(0);
        for (position, intake) in entries {
            let sid = match intake {
                smmu::driver::PriIntake::Request(request) => Some(request.sid),
                smmu::driver::PriIntake::Undecodable { entry, .. } => Some(entry.raw_sid()),
                smmu::driver::PriIntake::Overflowed => None,
            };
            if sid.is_some() {
                next = next.max(position.next());
            }
            for vsmmu in vsmmus.iter_mut() {
                if sid.is_none_or(|sid| vsmmu.owns_physical_stream(sid).is_some()) {
                    let _ = vsmmu.handle_physical_page_request(position, &intake);
                }
            }
        }
        if next.0 > 0 {
            for vsmmu in vsmmus.iter_mut() {
                vsmmu.handle_pri_drained(next);
            }
        }
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

    fn pri_queue_position(&mut self) -> Option<PriPosition> {
        PhysicalSmmu::pri_queue_position(&mut *self.driver.borrow_mut())
    }
}

// ---------------------------------------------------------------------------------------------
// A VM with a vSMMU, and a guest driver that programs it as Linux's arm-smmu-v3 does.

use smmu::command::{Cmd, Command, SyncCompletion};
use smmu::entry::make::{Stage2Parameters, Stage2Translation, StartLevel};
use smmu::translation::{AddressSize, Cacheability, Granule, Shareability};
use smmu::{VirtualStreamId, Vmid};

use crate::config::{DEFAULT_WORK_BUDGET, StreamAssignment, VsmmuConfig};
use crate::interfaces::mmio::{AccessWidth, MmioDevice, MmioError, MmioOffset, VcpuId};
use crate::vsmmu::{Backends, VirtualSmmu};

/// The streams a test vSMMU can own.
pub const TEST_STREAMS: usize = 8;

/// The vSMMU the tests build.
pub type TestVsmmu =
    VirtualSmmu<FakeGuestMemory, SharedPhysical, RecordingInterrupts, FakeRegion, TEST_STREAMS>;

/// A VM's SMMU stage 2 as a `smmu::domain` for a nesting parent gives it: 44-bit IPA, 4 KiB
/// granule from level 0, walks write-back, S2R and S2PTW set.
#[must_use]
pub fn stage2(vmid: Vmid, root: PhysAddr) -> Stage2Translation {
    let features = Features::decode(&IdRegisters::QEMU_VIRT).unwrap();
    Stage2Translation::new(
        Stage2Parameters {
            vmid,
            s2ttb: root,
            s2t0sz: 20,
            s2sl0: StartLevel::Level0,
            s2tg: Granule::Size4K,
            s2ps: AddressSize::Bits44,
            s2ir0: Cacheability::WriteBackWriteAllocate,
            s2or0: Cacheability::WriteBackWriteAllocate,
            s2sh0: Shareability::InnerShareable,
            s2r: true,
            s2affd: false,
            s2ptw: true,
        },
        &features,
    )
    .unwrap()
}

/// A VM: its vSMMU and handles on the fakes behind it.
#[derive(Debug)]
pub struct TestVm {
    /// The vSMMU.
    pub vsmmu: TestVsmmu,
    /// The VM's RAM (shares storage with the vSMMU's).
    pub memory: FakeGuestMemory,
    /// What the vSMMU signalled.
    pub interrupts: RecordingInterrupts,
    /// The physical SMMU (shared).
    pub physical: SharedPhysical,
    /// The VM's VMID.
    pub vmid: Vmid,
    /// The VM's stage-2 root.
    pub root: PhysAddr,
    /// The guest's command queue producer, as its driver tracks it.
    pub prod: u32,
    /// The guest's command queue base and log2 size.
    pub cmdq: (Ipa, u8),
}

/// Where a test VM's guest puts its structures, from the base of its RAM.
pub mod layout {
    /// The linear stream table: 256 STEs.
    pub const STREAM_TABLE: u64 = 0x1_0000;
    /// The command queue: 256 entries.
    pub const COMMAND_QUEUE: u64 = 0x2_0000;
    /// The event queue: 64 entries.
    pub const EVENT_QUEUE: u64 = 0x3_0000;
    /// The PRI queue: 16 entries.
    pub const PRI_QUEUE: u64 = 0x3_8000;
    /// CD tables.
    pub const CDS: u64 = 0x4_0000;
    /// Stage-1 page tables.
    pub const TABLES: u64 = 0x5_0000;
    /// The RAM size.
    pub const RAM_BYTES: usize = 0x10_0000;
}

/// The IPA where test VMs put their CD window (outside their RAM).
pub const CD_WINDOW: Ipa = Ipa(0x80_0000_0000);

impl TestVm {
    /// A VM with RAM at `ram_base`, owning `streams`, on `physical`.
    #[must_use]
    pub fn new(
        physical: &SharedPhysical,
        vmid: Vmid,
        ram_base: Ipa,
        streams: &[StreamAssignment],
    ) -> Self {
        Self::with_budget(physical, vmid, ram_base, streams, DEFAULT_WORK_BUDGET)
    }

    /// As [`TestVm::new`], with a work budget.
    #[must_use]
    pub fn with_budget(
        physical: &SharedPhysical,
        vmid: Vmid,
        ram_base: Ipa,
        streams: &[StreamAssignment],
        work_budget: u32,
    ) -> Self {
        Self::with_options(physical, vmid, ram_base, streams, work_budget, false)
    }

    /// As [`TestVm::with_budget`], forwarding ATS (and so PRI, where the physical SMMU has
    /// it) if `forward_ats`.
    #[must_use]
    pub fn with_options(
        physical: &SharedPhysical,
        vmid: Vmid,
        ram_base: Ipa,
        streams: &[StreamAssignment],
        work_budget: u32,
        forward_ats: bool,
    ) -> Self {
        let memory = FakeGuestMemory::new(ram_base, layout::RAM_BYTES);
        let interrupts = RecordingInterrupts::default();
        let root = PhysAddr(0x2000_0000 + u64::from(vmid.0) * 0x10_0000);
        let config = VsmmuConfig {
            stage2: stage2(vmid, root),
            streams,
            sid_bits: 8,
            cd_window_base: CD_WINDOW,
            work_budget,
            forward_ats,
            abort_until_enabled: true,
        };
        let vsmmu = VirtualSmmu::new(
            &config,
            Backends {
                guest_memory: memory.clone(),
                physical: physical.clone(),
                interrupts: interrupts.clone(),
                shadow_cds: physical.shadow_region(0x4000),
            },
        )
        .expect("the test VM's vSMMU builds");
        Self {
            vsmmu,
            memory,
            interrupts,
            physical: physical.clone(),
            vmid,
            root,
            prod: 0,
            cmdq: (Ipa(ram_base.0 + layout::COMMAND_QUEUE), 8),
        }
    }

    /// The IPA `offset` bytes into RAM.
    #[must_use]
    pub fn ram(&self, offset: u64) -> Ipa {
        Ipa(self.memory.ram().base.0 + offset)
    }

    /// A 32-bit store from vCPU 0.
    pub fn write32(&mut self, offset: u64, value: u32) -> Result<(), MmioError> {
        self.vsmmu.mmio_write(
            MmioOffset(offset),
            AccessWidth::Bits32,
            u64::from(value),
            VcpuId(0),
        )
    }

    /// A 64-bit store from vCPU 0.
    pub fn write64(&mut self, offset: u64, value: u64) -> Result<(), MmioError> {
        self.vsmmu
            .mmio_write(MmioOffset(offset), AccessWidth::Bits64, value, VcpuId(0))
    }

    /// A 32-bit load from vCPU 0 (a refused one reads as zero).
    pub fn read32(&mut self, offset: u64) -> u32 {
        self.vsmmu
            .mmio_read(MmioOffset(offset), AccessWidth::Bits32, VcpuId(0))
            .unwrap_or(0) as u32
    }

    /// What Linux's `arm_smmu_device_reset` does, in its order, with a linear stream table of
    /// 256 STEs, a 256-entry command queue and a 64-entry event queue in guest RAM, wired
    /// interrupts and MSI polling. Returns false if an acknowledgement never came.
    pub fn linux_reset(&mut self) -> bool {
        use smmu::registers::offset as o;
        let o = |r: smmu::registers::RegisterOffset| u64::from(r.get());
        let mut acknowledged = true;
        self.write32(o(o::CR0), 0).unwrap();
        acknowledged &= self.read32(o(o::CR0ACK)) == 0;
        self.write32(o(o::CR1), 0xd75).unwrap();
        self.write32(o(o::CR2), 0b110).unwrap();
        let strtab = self.ram(layout::STREAM_TABLE).0;
        self.write64(o(o::STRTAB_BASE), 1 << 62 | strtab).unwrap();
        self.write32(o(o::STRTAB_BASE_CFG), 8).unwrap();
        let (cmdq, log2) = self.cmdq;
        self.write64(o(o::CMDQ_BASE), 1 << 62 | cmdq.0 | u64::from(log2))
            .unwrap();
        self.write32(o(o::CMDQ_PROD), 0).unwrap();
        self.write32(o(o::CMDQ_CONS), 0).unwrap();
        self.prod = 0;
        self.write32(o(o::CR0), 0b1000).unwrap();
        acknowledged &= self.read32(o(o::CR0ACK)) == 0b1000;
        self.submit_sync(&[Cmd::cfgi_all()]);
        self.submit_sync(&[Cmd::TlbiNsnhAll]);
        let evtq = self.ram(layout::EVENT_QUEUE).0;
        self.write64(o(o::EVTQ_BASE), 1 << 62 | evtq | 6).unwrap();
        self.write32(o(o::EVTQ_PROD), 0).unwrap();
        self.write32(o(o::EVTQ_CONS), 0).unwrap();
        // With PRI: a 16-entry PRI queue, enabled with the event queue.
        let priqen = if self.vsmmu.features().pri {
            let priq = self.ram(layout::PRI_QUEUE).0;
            self.write64(o(o::PRIQ_BASE), 1 << 62 | priq | 4).unwrap();
            self.write32(o(o::PRIQ_PROD), 0).unwrap();
            self.write32(o(o::PRIQ_CONS), 0).unwrap();
            0b10
        } else {
            0
        };
        self.write32(o(o::CR0), 0b1100 | priqen).unwrap();
        acknowledged &= self.read32(o(o::CR0ACK)) == 0b1100 | priqen;
        self.write32(o(o::IRQ_CTRL), 0).unwrap();
        self.write64(o(o::GERROR_IRQ_CFG0), 0).unwrap();
        self.write64(o(o::EVTQ_IRQ_CFG0), 0).unwrap();
        let priq_irqen = priqen;
        self.write32(o(o::IRQ_CTRL), 0b101 | priq_irqen).unwrap();
        acknowledged &= self.read32(o(o::IRQ_CTRLACK)) == 0b101 | priq_irqen;
        self.write32(o(o::CR0), 0b1101 | priqen).unwrap();
        acknowledged &= self.read32(o(o::CR0ACK)) == 0b1101 | priqen;
        acknowledged
    }

    /// Writes `commands` into the command queue at the guest's PROD and publishes them with
    /// one CMDQ_PROD write.
    pub fn submit_raw(&mut self, commands: &[Command]) {
        let (base, log2) = self.cmdq;
        let mask = (2u32 << log2) - 1;
        for command in commands {
            let index = u64::from(self.prod & ((1 << log2) - 1));
            self.memory
                .put_words(Ipa(base.0 + index * 16), &command.words());
            self.prod = (self.prod + 1) & mask;
        }
        let prod = self.prod;
        self.write32(u64::from(smmu::registers::offset::CMDQ_PROD.get()), prod)
            .unwrap();
    }

    /// Submits `commands` followed by a CMD_SYNC that signals by MSI into its own queue slot,
    /// as Linux does with MSI polling. Returns whether the sync's first word was cleared.
    pub fn submit_sync(&mut self, commands: &[Cmd]) -> bool {
        let (base, log2) = self.cmdq;
        let mut raw: Vec<Command> = commands.iter().map(Cmd::encode).collect();
        let sync_index = (self.prod + raw.len() as u32) & ((1 << log2) - 1);
        let sync_slot = Ipa(base.0 + u64::from(sync_index) * 16);
        raw.push(linux_sync(sync_slot));
        self.submit_raw(&raw);
        self.memory.word32(sync_slot) == 0
    }

    /// The guest's STE for `vsid` in its linear stream table.
    pub fn put_ste(&self, vsid: VirtualStreamId, words: [u64; 8]) {
        self.memory.put_words(
            self.ram(layout::STREAM_TABLE + u64::from(vsid.0) * 64),
            &words,
        );
    }
}

/// Linux's CMD_SYNC with MSI polling: CS=SIG_IRQ, MSH inner shareable, MSIAttr OIWB, MSIData 0,
/// MSIAddress the sync's own queue slot.
#[must_use]
pub fn linux_sync(slot: Ipa) -> Command {
    Cmd::Sync {
        completion: SyncCompletion::Irq,
        msh: 3,
        msi_attr: 0xf,
        msi_data: 0,
        msi_addr: PhysAddr(slot.0),
    }
    .encode()
}

/// A hostile guest for the fuzz target and the property tests: bytes become register accesses,
/// guest memory contents and physical events for two VMs sharing one physical SMMU, and after
/// every step the vSMMUs' promises are checked (a violation panics, which the fuzzer reports).
pub mod hostile {
    use super::*;
    use smmu::entry::install::check_physical_ste;
    use smmu::event::EventRecord;

    use crate::budget::MAX_STEP_COST;

    /// The work budget of the hostile VMs: small, so continuations happen.
    pub const BUDGET: u32 = 24;

    /// What a run did.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Report {
        /// Operations executed.
        pub operations: u64,
        /// Guest commands consumed, both VMs.
        pub commands: u64,
        /// Physical STE installs checked.
        pub installs: u64,
        /// Page requests handed to the VMs (forwarded, answered or discarded).
        pub page_requests: u64,
    }

    /// Offsets a hostile guest favours: every register, and a few around them.
    const OFFSETS: [u64; 30] = [
        0x20, 0x24, 0x28, 0x2C, 0x44, 0x50, 0x60, 0x64, 0x68, 0x70, 0x80, 0x84, 0x88, 0x90, 0x94,
        0x98, 0x9C, 0xA0, 0xA8, 0xAC, 0xB0, 0x1_00A8, 0x1_00AC, 0x1_00C8, 0x1_00CC, 0xC0, 0xC4,
        0xD0, 0xD8, 0xDC,
    ];

    struct Cursor<'a> {
        data: &'a [u8],
    }

    impl Cursor<'_> {
        fn byte(&mut self) -> Option<u8> {
            let (&first, rest) = self.data.split_first()?;
            self.data = rest;
            Some(first)
        }

        fn u64(&mut self) -> Option<u64> {
            let mut value = 0u64;
            for _ in 0..8 {
                value = value << 8 | u64::from(self.byte()?);
            }
            Some(value)
        }

        fn u32(&mut self) -> Option<u32> {
            Some(self.u64()? as u32)
        }
    }

    /// Two VMs on one physical SMMU, with non-identity stream maps; with `pri`, the physical
    /// SMMU has ATS, PRI and substreams and the first VM forwards them.
    fn vms(pri: bool) -> [TestVm; 2] {
        let physical = if pri {
            SharedPhysical::with_pri()
        } else {
            SharedPhysical::qemu_virt()
        };
        let a = [
            StreamAssignment {
                virtual_sid: VirtualStreamId(8),
                physical_sid: StreamId(0x10),
            },
            StreamAssignment {
                virtual_sid: VirtualStreamId(1),
                physical_sid: StreamId(0x11),
            },
        ];
        let b = [StreamAssignment {
            virtual_sid: VirtualStreamId(8),
            physical_sid: StreamId(0x20),
        }];
        [
            TestVm::with_options(&physical, Vmid(1), Ipa(0x4000_0000), &a, BUDGET, pri),
            TestVm::with_budget(&physical, Vmid(2), Ipa(0x8000_0000), &b, BUDGET),
        ]
    }

    fn owner(vms: &[TestVm; 2], sid: StreamId) -> Option<usize> {
        vms.iter()
            .position(|vm| vm.vsmmu.owns_physical_stream(sid).is_some())
    }

    /// Checks everything the physical SMMU was given since `installs`/`submitted`, made on
    /// behalf of `vms[actor]` (or either, for `None`).
    fn check(
        vms: &[TestVm; 2],
        actor: Option<usize>,
        seen: &mut (usize, usize),
        report: &mut Report,
    ) {
        let physical = &vms[0].physical;
        let installs = physical.installs.borrow();
        for (sid, shadow) in &installs[seen.0..] {
            let ste = shadow.ste();
            assert_eq!(check_physical_ste(ste), Ok(()), "guard: {ste:?}");
            let owner = owner(vms, *sid).expect("an STE install for a stream no VM owns");
            if let Some(actor) = actor {
                assert_eq!(owner, actor, "a VM installed another VM's stream");
            }
            let vm = &vms[owner];
            if ste.v() && ste.config() != smmu::ste::StreamConfig::Abort {
                assert!(
                    ste.config().stage2_enabled(),
                    "traffic without stage 2: {ste:?}"
                );
                assert_eq!(ste.s2vmid(), vm.vmid, "another VMID");
                assert_eq!(ste.s2ttb(), vm.root, "another stage-2 root");
                if ste.config().stage1_enabled() {
                    assert!(vm.vsmmu.cd_window().contains(ste.s1_context_ptr()));
                }
            }
            report.installs += 1;
        }
        seen.0 = installs.len();
        let submitted = physical.submitted.borrow();
        for command in &submitted[seen.1..] {
            let actor = actor.expect("commands submitted outside a VM's call");
            let vm = &vms[actor];
            match *command.command() {
                Cmd::TlbiNhAll { vmid }
                | Cmd::TlbiNhAsid { vmid, .. }
                | Cmd::TlbiNhVa { vmid, .. }
                | Cmd::TlbiNhVaa { vmid, .. } => assert_eq!(vmid, vm.vmid),
                Cmd::CfgiCd { sid, .. } | Cmd::AtcInv { sid, .. } | Cmd::PriResp { sid, .. } => {
                    assert_eq!(owner(vms, sid), Some(actor), "another VM's stream");
                }
                other => panic!("a command the vSMMU never forwards: {other:?}"),
            }
        }
        seen.1 = submitted.len();
        for vm in vms {
            assert!(
                vm.vsmmu.counters().max_work_per_call <= BUDGET + MAX_STEP_COST,
                "a call did unbounded work"
            );
            let streams = vm.vsmmu.streams.len();
            assert!(
                vm.vsmmu.pri.iter().all(|g| g.slot < streams),
                "a group on a stream the VM does not own"
            );
            if !vm.vsmmu.features().pri {
                assert_eq!(
                    vm.vsmmu.counters().pri_requests_forwarded,
                    0,
                    "page requests forwarded to a VM without PRI"
                );
            }
        }
    }

    /// Runs the operations `data` encodes. Panics if a promise is broken.
    #[must_use]
    pub fn run(data: &[u8]) -> Report {
        let mut cursor = Cursor { data };
        // The first byte: bit 1, a physical SMMU with PRI (the first VM forwards it); bit 0, a
        // start from a working Linux configuration, to reach deeper states.
        let first = cursor.byte().unwrap_or(0);
        let mut vms = vms(first & 2 != 0);
        let mut report = Report::default();
        let mut seen = (0, 0);
        check(&vms, None, &mut seen, &mut report);
        if first & 1 == 1 {
            for actor in 0..2 {
                let _ = vms[actor].linux_reset();
                check(&vms, Some(actor), &mut seen, &mut report);
            }
        }
        while let Some(op) = cursor.byte() {
            let actor = usize::from(op >> 7);
            let vm = &mut vms[actor];
            let vcpu = VcpuId(u16::from(op >> 6 & 1));
            let ram = vm.memory.ram();
            match op & 0x7 {
                0 | 1 => {
                    let Some(pick) = cursor.byte() else { break };
                    let offset = if pick & 0x80 == 0 {
                        OFFSETS[usize::from(pick) % OFFSETS.len()]
                    } else {
                        u64::from(pick) << 4 ^ u64::from(cursor.byte().unwrap_or(0)) << 8
                    };
                    let Some(value) = cursor.u64() else { break };
                    let width = match op >> 3 & 3 {
                        0 => AccessWidth::Bits32,
                        1 => AccessWidth::Bits64,
                        2 => AccessWidth::Bits8,
                        _ => AccessWidth::Bits16,
                    };
                    let value = if op & 1 == 1 {
                        // Addresses into this VM's RAM, or just outside it.
                        ram.base.0 + value % (ram.size + 0x1000)
                    } else {
                        value
                    };
                    let _ = vm.vsmmu.mmio_write(MmioOffset(offset), width, value, vcpu);
                }
                2 => {
                    let Some(pick) = cursor.byte() else { break };
                    let offset = OFFSETS[usize::from(pick) % OFFSETS.len()];
                    let _ = vm
                        .vsmmu
                        .mmio_read(MmioOffset(offset), AccessWidth::Bits32, vcpu);
                }
                3 | 4 => {
                    // Guest memory: a structure slot gets two words.
                    let Some(slot) = cursor.u32() else { break };
                    let (Some(w0), Some(w1)) = (cursor.u64(), cursor.u64()) else {
                        break;
                    };
                    let region = [layout::STREAM_TABLE, layout::COMMAND_QUEUE, layout::CDS]
                        [usize::from(op >> 3 & 3) % 3];
                    let offset = region + u64::from(slot % 1024) * 16;
                    let w0 = if op & 7 == 4 {
                        // Plausible: a valid-looking STE, CD or command head.
                        w0 & 0xf800_0fff_ffff_f0ff | 1 | ram.base.0
                    } else {
                        w0
                    };
                    vm.memory.put_words(vm.ram(offset), &[w0, w1]);
                }
                5 if op >> 6 & 1 == 1 => {
                    // A page request (or stop marker, or overflow) from the physical PRI queue,
                    // for a stream of either VM, or none, handed over as hyp would.
                    let (Some(w0), Some(w1)) = (cursor.u64(), cursor.u64()) else {
                        break;
                    };
                    let sid = [0x10u64, 0x11, 0x20, 0x30][usize::from(op >> 3 & 3)];
                    // Plausible: SSV with a small PASID, most reserved bits clear.
                    let w0 = if w1 & 1 == 0 {
                        w0 & 0xfc00_0003_0000_0000 | 1 << 63 | sid
                    } else {
                        w0 & !0xffff_ffff | sid
                    };
                    let physical = vms[0].physical.clone();
                    for _ in 0..=(w1 >> 60) {
                        let _ = physical.fake.inject_page_request(
                            &smmu::page_request::PriEntry::from_words([
                                w0,
                                w1 & 0xffff_ffff_ffff_f1ff,
                            ]),
                        );
                    }
                    let owner = owner(&vms, StreamId(sid as u32));
                    let [a, b] = &mut vms;
                    physical.hand_page_requests(&mut [&mut a.vsmmu, &mut b.vsmmu]);
                    report.operations += 1;
                    check(&vms, owner, &mut seen, &mut report);
                    continue;
                }
                5 => {
                    // A physical event for a stream of either VM, or none.
                    let (Some(w0), Some(w1)) = (cursor.u64(), cursor.u64()) else {
                        break;
                    };
                    let sid = [0x10u64, 0x11, 0x20, 0x30][usize::from(op >> 3 & 3)];
                    let record =
                        EventRecord::from_words([w0 & 0xffff_ffff | sid << 32, w1, w0, w1]);
                    if let Ok(event) = record.decode()
                        && let Some(owner) = owner(&vms, event.sid)
                    {
                        let _ = vms[owner].vsmmu.handle_physical_event(&event);
                    }
                }
                6 => {
                    let _ = vm.vsmmu.run_pending();
                }
                _ => {
                    // A burst of Linux-like commands through the queue.
                    let Some(n) = cursor.byte() else { break };
                    let commands: Vec<Cmd> = (0..n % 40)
                        // With bit 6 of the count: CMD_PRI_RESPs too (CERROR_ILL without PRI).
                        .map(|i| match i % if n & 0x40 != 0 { 5 } else { 4 } {
                            4 => Cmd::PriResp {
                                sid: StreamId(u32::from([8u8, 1][usize::from(n & 1)])),
                                ssid: (i & 8 != 0).then_some(smmu::SubstreamId(u32::from(i % 4))),
                                prg_index: u16::from(n) + u16::from(i),
                                response: smmu::command::PriResponse::Success,
                            },
                            0 => Cmd::TlbiNhAsid {
                                vmid: Vmid(u16::from(n)),
                                asid: smmu::Asid(u16::from(i)),
                            },
                            1 => Cmd::CfgiSte {
                                sid: StreamId(u32::from(n % 16)),
                                leaf: true,
                            },
                            2 => Cmd::CfgiCdAll { sid: StreamId(8) },
                            _ => Cmd::TlbiNsnhAll,
                        })
                        .collect();
                    let _ = vm.submit_sync(&commands);
                }
            }
            report.operations += 1;
            check(&vms, Some(actor), &mut seen, &mut report);
        }
        report.commands = vms
            .iter()
            .map(|vm| vm.vsmmu.counters().total_commands())
            .sum();
        report.page_requests = vms
            .iter()
            .map(|vm| {
                let c = vm.vsmmu.counters();
                c.pri_requests_forwarded + c.pri_requests_refused() + c.pri_stop_markers
            })
            .sum();
        report
    }
}
