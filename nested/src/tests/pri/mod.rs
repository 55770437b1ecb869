//! Host integration of PRI forwarding and the PASID lifecycle: a `VirtualSmmu` over the real
//! `smmu` driver on the reference model (`smmu-model`), with a simulated PCIe function (PASID,
//! ATS, PRI), the VM's stage 2 built by `smmu::domain`, and a guest driver written here that
//! programs the vSMMU through its registers and a command queue in guest RAM, as Linux would.
//!
//! [`World`] is that machine; `hyp_drain` is what `hyp` does at EL2 (drain the physical PRI
//! queue with only the physical lock held, then hand each entry to the owning vSMMU);
//! `scenarios` are the scripted lifecycle edges; `explorer` enumerates interleavings.

#![allow(dead_code)] // Helpers some scenarios use and others do not.

mod explorer;
mod scenarios;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use smmu::command::{Cmd, Command, PriResponse, SyncCompletion};
use smmu::domain::{
    DomainConfig, Permissions, PinTable, Stage2Domain, Stage2Geometry, Stage2Use, SyncProof,
    WalkAttributes,
};
use smmu::driver::{Driver, DriverConfig, DriverMemory, PriIntake, PriPosition};
use smmu::entry::install::InstallReport;
use smmu::entry::make::Stage2Translation;
use smmu::page_request::PriEntry;
use smmu::registers::{Features, offset as o};
use smmu::{Ipa, IpaRange, PhysAddr, StreamId, SubstreamId, VirtualStreamId, Vmid};
use smmu_model::trace::TraceEvent;
use smmu_model::{
    FunctionConfig, ModelConfig, ModelPlatform, ModelRegion, ModelTables, PcieFunction,
    PhysicalMemory, SmmuModel,
};

use crate::config::{StreamAssignment, VsmmuConfig};
use crate::interfaces::guest_memory::{GuestMemory, GuestMemoryError};
use crate::interfaces::mmio::{AccessWidth, MmioDevice, MmioOffset, VcpuId};
use crate::interfaces::physical::{DriverBackendError, PhysicalCommand, PhysicalSmmu, ShadowSte};
use crate::pri::PriDisposition;
use crate::testing::RecordingInterrupts;
use crate::vsmmu::{Backends, VirtualSmmu};

/// The driver as it runs on the model.
type ModelDriver = Driver<SmmuModel, ModelRegion, ModelPlatform>;

/// The machine's RAM: the hypervisor's part first, then the guest's.
const RAM_BASE: u64 = 0x8000_0000;
const RAM_BYTES: u64 = 32 << 20;
const SHADOW_CDS: u64 = RAM_BASE + 0x30_0000;
const SHADOW_BYTES: usize = 0x4000;
const S2_TABLES: u64 = RAM_BASE + 0x40_0000;
const S2_TABLE_BYTES: u64 = 64 * 4096;
/// The guest's RAM, identity-mapped by stage 2 (IPA == PA), as `hyp` maps a VM.
pub(crate) const GUEST_RAM: u64 = RAM_BASE + 0x100_0000;
const GUEST_BYTES: u64 = 0x10_0000;
/// The shadow CD window, outside the guest's RAM.
const CD_WINDOW: Ipa = Ipa(0x80_0000_0000);

/// The function's stream: physical, and as the guest calls it.
pub(crate) const PSID: StreamId = StreamId(0x10);
pub(crate) const VSID: VirtualStreamId = VirtualStreamId(3);
/// The VM's VMID.
const VMID: Vmid = Vmid(7);

/// Where the guest keeps its structures, from the base of its RAM.
mod layout {
    pub(super) const STREAM_TABLE: u64 = 0x1_0000;
    pub(super) const COMMAND_QUEUE: u64 = 0x2_0000;
    pub(super) const EVENT_QUEUE: u64 = 0x3_0000;
    pub(super) const PRI_QUEUE: u64 = 0x3_8000;
    pub(super) const CDS: u64 = 0x4_0000;
    pub(super) const TABLES: u64 = 0x5_0000;
    pub(super) const DATA: u64 = 0x8_0000;
}

/// The VA every test address space maps (to a page of its own).
pub(crate) const VA: u64 = 0x4000_0000;

/// The guest's RAM, reached at IPA == PA in the model's memory.
#[derive(Clone, Debug)]
pub(crate) struct ModelGuestMemory {
    memory: PhysicalMemory,
    ram: IpaRange,
}

impl GuestMemory for ModelGuestMemory {
    fn is_ram(&self, range: IpaRange) -> bool {
        self.ram.covers(&range)
    }

    fn overlaps_ram(&self, range: IpaRange) -> bool {
        self.ram.overlaps(&range)
    }

    fn read(&self, ipa: Ipa, buffer: &mut [u8]) -> Result<(), GuestMemoryError> {
        let error = GuestMemoryError::OutsideRam {
            ipa,
            len: buffer.len(),
        };
        if !self.is_ram(IpaRange::new(ipa, buffer.len() as u64)) {
            return Err(error);
        }
        self.memory.read_bytes(ipa.0, buffer).map_err(|_| error)
    }

    fn write(&mut self, ipa: Ipa, data: &[u8]) -> Result<(), GuestMemoryError> {
        let error = GuestMemoryError::OutsideRam {
            ipa,
            len: data.len(),
        };
        if !self.is_ram(IpaRange::new(ipa, data.len() as u64)) {
            return Err(error);
        }
        self.memory.write_bytes(ipa.0, data).map_err(|_| error)
    }
}

/// The physical SMMU behind the vSMMU: the real driver on the model, shared with the code that
/// plays `hyp` (which drains the PRI queue), and a record of every command the vSMMU submitted.
#[derive(Clone, Debug)]
pub(crate) struct ModelPhysical {
    driver: Rc<RefCell<ModelDriver>>,
    pub(crate) submitted: Rc<RefCell<Vec<PhysicalCommand>>>,
    /// When false, the PRI queue position is not offered (the vSMMU then has no PRI).
    offer_pri: bool,
}

impl PhysicalSmmu for ModelPhysical {
    type Error = DriverBackendError;

    fn features(&self) -> Features {
        PhysicalSmmu::features(&*self.driver.borrow())
    }

    fn install_ste(
        &mut self,
        sid: StreamId,
        target: &ShadowSte,
    ) -> Result<InstallReport, DriverBackendError> {
        PhysicalSmmu::install_ste(&mut *self.driver.borrow_mut(), sid, target)
    }

    fn submit(&mut self, commands: &[PhysicalCommand]) -> Result<(), DriverBackendError> {
        self.submitted.borrow_mut().extend_from_slice(commands);
        PhysicalSmmu::submit(&mut *self.driver.borrow_mut(), commands)
    }

    fn sync(&mut self) -> Result<SyncProof, DriverBackendError> {
        PhysicalSmmu::sync(&mut *self.driver.borrow_mut())
    }

    fn pri_queue_position(&mut self) -> Option<PriPosition> {
        if !self.offer_pri {
            return None;
        }
        PhysicalSmmu::pri_queue_position(&mut *self.driver.borrow_mut())
    }
}

/// The vSMMU of the tests.
pub(crate) type ModelVsmmu =
    VirtualSmmu<ModelGuestMemory, ModelPhysical, RecordingInterrupts, ModelRegion, 2>;

/// How a world is built.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WorldConfig {
    /// Entries of the physical PRI queue (a power of two, at least 2).
    pub(crate) physical_priq: usize,
    /// log2 of the guest's PRI queue entries.
    pub(crate) guest_priq_log2: u8,
    /// The function's PRI credits.
    pub(crate) credits: u32,
    /// Whether the physical SMMU offers its PRI queue to the vSMMU.
    pub(crate) offer_pri: bool,
}

impl Default for WorldConfig {
    fn default() -> Self {
        Self {
            physical_priq: 16,
            guest_priq_log2: 4,
            credits: 16,
            offer_pri: true,
        }
    }
}

/// One page request as the guest read it from its PRI queue.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct GuestPageRequest {
    pub(crate) sid: StreamId,
    pub(crate) ssid: Option<SubstreamId>,
    pub(crate) prg_index: u16,
    pub(crate) last: bool,
    pub(crate) stop_marker: bool,
}

/// The machine: model, driver, a VM with its vSMMU, one PCIe function, and the guest.
pub(crate) struct World {
    pub(crate) memory: PhysicalMemory,
    pub(crate) model: SmmuModel,
    pub(crate) driver: Rc<RefCell<ModelDriver>>,
    pub(crate) vsmmu: ModelVsmmu,
    pub(crate) function: PcieFunction,
    pub(crate) submitted: Rc<RefCell<Vec<PhysicalCommand>>>,
    /// `hyp`'s record of how far the physical PRI queue has been handed over.
    pub(crate) hyp_next: PriPosition,
    /// What `hyp` handed over, with what the vSMMU did.
    pub(crate) handed: Vec<(PriPosition, PriIntake, PriDisposition)>,
    /// The guest's command queue producer.
    cmdq_prod: u32,
    /// The guest's PRI queue: log2 size, consumer, and requests of groups not yet complete.
    priq_log2: u8,
    pub(crate) guest_partial: BTreeMap<(Option<u32>, u16), usize>,
    /// Complete groups the guest has read and not yet answered, in arrival order.
    pub(crate) guest_pending: Vec<GuestPageRequest>,
    /// Pages handed out for the guest's stage-1 tables.
    next_table: u64,
    /// Every trace event taken so far.
    pub(crate) trace: Vec<TraceEvent>,
    /// The VM's stage-2 domain and the pins of the pages it maps, as `hyp` keeps them.
    pub(crate) domain: Stage2Domain<ModelTables>,
    pub(crate) pins: PinTable<'static>,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World").finish_non_exhaustive()
    }
}

fn mmio_offset(register: smmu::registers::RegisterOffset) -> u64 {
    u64::from(register.get())
}

impl World {
    pub(crate) fn new(config: WorldConfig) -> Self {
        let memory = PhysicalMemory::with_ram(RAM_BASE, RAM_BYTES);
        let model = SmmuModel::new(ModelConfig::full(), &memory);
        let regions = DriverMemory {
            stream_table_l1: memory.region(RAM_BASE, 2048),
            stream_table_l2_pool: memory.region(RAM_BASE + 0x10_0000, 4 * 16384),
            command_queue: memory.region(RAM_BASE + 0x20_0000, 4096),
            event_queue: memory.region(RAM_BASE + 0x21_0000, 64 * 32),
            pri_queue: Some(memory.region(RAM_BASE + 0x22_0000, config.physical_priq * 16)),
        };
        let driver = Driver::new(
            model.clone(),
            regions,
            ModelPlatform::default(),
            DriverConfig::DEFAULT,
        )
        .expect("the driver brings the model up");
        let features = *driver.features();
        assert_eq!(
            driver.pri_queue_entries(),
            Some(u32::try_from(config.physical_priq).unwrap())
        );
        let driver = Rc::new(RefCell::new(driver));
        let (stage2, domain, pins) = Self::stage2(&memory, &features);
        let function = model.attach_function(
            PSID.0,
            FunctionConfig {
                pri_credits: config.credits,
                ..FunctionConfig::SVA_CAPABLE
            },
        );
        let submitted = Rc::new(RefCell::new(Vec::new()));
        let physical = ModelPhysical {
            driver: driver.clone(),
            submitted: submitted.clone(),
            offer_pri: config.offer_pri,
        };
        let streams = [StreamAssignment {
            virtual_sid: VSID,
            physical_sid: PSID,
        }];
        let vsmmu = VirtualSmmu::new(
            &VsmmuConfig {
                stage2,
                streams: &streams,
                sid_bits: 8,
                cd_window_base: CD_WINDOW,
                work_budget: 512,
                forward_ats: true,
                abort_until_enabled: true,
            },
            Backends {
                guest_memory: ModelGuestMemory {
                    memory: memory.clone(),
                    ram: IpaRange::new(Ipa(GUEST_RAM), GUEST_BYTES),
                },
                physical,
                interrupts: RecordingInterrupts::default(),
                shadow_cds: memory.region(SHADOW_CDS, SHADOW_BYTES),
            },
        )
        .expect("the vSMMU builds");
        let mut world = Self {
            memory,
            model,
            driver,
            vsmmu,
            function,
            submitted,
            hyp_next: PriPosition(0),
            handed: Vec::new(),
            cmdq_prod: 0,
            priq_log2: config.guest_priq_log2,
            guest_partial: BTreeMap::new(),
            guest_pending: Vec::new(),
            next_table: GUEST_RAM + layout::TABLES,
            trace: Vec::new(),
            domain,
            pins,
        };
        world.guest_reset();
        world
    }

    /// The VM's SMMU stage 2, as `hyp` builds it with `smmu::domain`: guest RAM at IPA == PA,
    /// the shadow CD memory read-only at the CD window.
    fn stage2(
        memory: &PhysicalMemory,
        features: &Features,
    ) -> (
        Stage2Translation,
        Stage2Domain<ModelTables>,
        PinTable<'static>,
    ) {
        let tables = ModelTables::new(memory, S2_TABLES, S2_TABLE_BYTES);
        let counts: &'static mut [u16] = Box::leak(vec![0u16; 0x2000].into_boxed_slice());
        let mut pins = PinTable::new(PhysAddr(RAM_BASE), counts, 512).unwrap();
        let mut domain = Stage2Domain::new(
            tables,
            DomainConfig {
                vmid: VMID,
                geometry: Stage2Geometry::QEMU_VIRT,
                walk: WalkAttributes::COHERENT,
                usage: Stage2Use::NestingParent,
                record_faults: true,
                max_pages_per_call: 512,
            },
        )
        .unwrap();
        let chunk = 512 * 4096;
        for at in (GUEST_RAM..GUEST_RAM + GUEST_BYTES).step_by(chunk) {
            let size = (GUEST_RAM + GUEST_BYTES - at).min(chunk as u64);
            domain
                .map(&mut pins, Ipa(at), PhysAddr(at), size, Permissions::RAM)
                .unwrap();
        }
        domain
            .map(
                &mut pins,
                CD_WINDOW,
                PhysAddr(SHADOW_CDS),
                SHADOW_BYTES as u64,
                Permissions {
                    access: smmu::domain::Access::ReadOnly,
                    memory: smmu::domain::MemoryType::Normal,
                },
            )
            .unwrap();
        let translation = Stage2Translation::new(domain.stage2_parameters(), features).unwrap();
        (translation, domain, pins)
    }

    pub(crate) fn ipa(offset: u64) -> u64 {
        GUEST_RAM + offset
    }

    fn put(&self, address: u64, words: &[u64]) {
        for (i, word) in words.iter().enumerate() {
            self.memory
                .write_u64(address + i as u64 * 8, *word)
                .unwrap();
        }
    }

    pub(crate) fn write32(&mut self, register: smmu::registers::RegisterOffset, value: u32) {
        let _ = self.vsmmu.mmio_write(
            MmioOffset(mmio_offset(register)),
            AccessWidth::Bits32,
            u64::from(value),
            VcpuId(0),
        );
    }

    pub(crate) fn write64(&mut self, register: smmu::registers::RegisterOffset, value: u64) {
        let _ = self.vsmmu.mmio_write(
            MmioOffset(mmio_offset(register)),
            AccessWidth::Bits64,
            value,
            VcpuId(0),
        );
    }

    pub(crate) fn read32(&mut self, register: smmu::registers::RegisterOffset) -> u32 {
        u32::try_from(
            self.vsmmu
                .mmio_read(
                    MmioOffset(mmio_offset(register)),
                    AccessWidth::Bits32,
                    VcpuId(0),
                )
                .unwrap_or(0),
        )
        .unwrap()
    }

    /// The guest driver's reset of its vSMMU, Linux's order, with a PRI queue.
    fn guest_reset(&mut self) {
        self.write32(o::CR0, 0);
        self.write32(o::CR1, 0xd75);
        self.write32(o::CR2, 0b110);
        self.write64(o::STRTAB_BASE, 1 << 62 | Self::ipa(layout::STREAM_TABLE));
        self.write32(o::STRTAB_BASE_CFG, 8);
        self.write64(o::CMDQ_BASE, 1 << 62 | Self::ipa(layout::COMMAND_QUEUE) | 8);
        self.write32(o::CMDQ_PROD, 0);
        self.write32(o::CMDQ_CONS, 0);
        self.write32(o::CR0, 0b1000);
        self.submit_sync(&[Cmd::cfgi_all(), Cmd::TlbiNsnhAll]);
        self.write64(o::EVTQ_BASE, 1 << 62 | Self::ipa(layout::EVENT_QUEUE) | 6);
        self.write32(o::EVTQ_PROD, 0);
        self.write32(o::EVTQ_CONS, 0);
        let priq = Self::ipa(layout::PRI_QUEUE) | u64::from(self.priq_log2);
        self.write64(o::PRIQ_BASE, 1 << 62 | priq);
        self.write32(o::PRIQ_PROD, 0);
        self.write32(o::PRIQ_CONS, 0);
        self.write32(o::CR0, 0b1110);
        self.write32(o::IRQ_CTRL, 0b111);
        self.write32(o::CR0, 0b1111);
        let priqen = if self.vsmmu.features().pri { 0b10 } else { 0 };
        assert_eq!(
            self.read32(o::CR0ACK),
            0b1101 | priqen,
            "the guest's vSMMU is enabled"
        );
    }

    /// Writes `commands` and a CMD_SYNC (MSI into its own slot, as Linux polls) into the
    /// guest's command queue and publishes them.
    pub(crate) fn submit_sync(&mut self, commands: &[Cmd]) {
        let base = Self::ipa(layout::COMMAND_QUEUE);
        let mut raw: Vec<Command> = commands.iter().map(Cmd::encode).collect();
        let sync_slot = base + u64::from((self.cmdq_prod + raw.len() as u32) & 0xff) * 16;
        raw.push(
            Cmd::Sync {
                completion: SyncCompletion::Irq,
                msh: 3,
                msi_attr: 0xf,
                msi_data: 0,
                msi_addr: PhysAddr(sync_slot),
            }
            .encode(),
        );
        for command in raw {
            let slot = base + u64::from(self.cmdq_prod & 0xff) * 16;
            self.put(slot, &command.words());
            self.cmdq_prod = (self.cmdq_prod + 1) & 0x1ff;
        }
        let prod = self.cmdq_prod;
        self.write32(o::CMDQ_PROD, prod);
        assert_eq!(
            self.read32(o::CMDQ_CONS) & 0x1ff,
            prod,
            "the guest's commands were consumed"
        );
    }

    /// A fresh page of guest RAM for a table.
    fn table_page(&mut self) -> u64 {
        let page = self.next_table;
        self.next_table += 4096;
        for word in 0..512 {
            self.memory.write_u64(page + word * 8, 0).unwrap();
        }
        page
    }

    /// A new stage-1 address space (T0SZ = 25, three levels) mapping [`VA`] to data page
    /// `page`; returns its root.
    pub(crate) fn address_space(&mut self, page: u64) -> u64 {
        let root = self.table_page();
        let l2 = self.table_page();
        let l3 = self.table_page();
        let index = |shift: u32| (VA >> shift) & 511;
        self.put(root + index(30) * 8, &[l2 | 0b11]);
        self.put(l2 + index(21) * 8, &[l3 | 0b11]);
        let output = Self::ipa(layout::DATA) + page * 4096;
        // AP = 01 (read/write at any level), AF, inner shareable, nG, XN.
        let leaf = output | 0b11 | 0b01 << 6 | 1 << 10 | 0b11 << 8 | 1 << 11 | 3 << 53;
        self.put(l3 + index(12) * 8, &[leaf]);
        root
    }

    /// The guest's CD for an address space rooted at `root`.
    pub(crate) fn cd(asid: u16, root: u64) -> [u64; 8] {
        let w0 = 25 // T0SZ
            | 1 << 8 | 1 << 10 | 3 << 12 // IR0, OR0 WB; SH0 inner
            | 1 << 30 // EPD1
            | 1 << 31 // V
            | 4 << 32 // IPS 44 bits
            | 1 << 41 // AA64
            | 1 << 45 | 1 << 46 | 1 << 47 // R, A, ASET
            | u64::from(asid) << 48;
        [w0, root, 0, 0x04ff, 0, 0, 0, 0]
    }

    /// Writes CD `ssid` of the guest's CD table (invalid for `None`) and invalidates it, as
    /// Linux does: CFGI_CD, TLBI_NH_ASID of the old ASID, ATC_INV, CMD_SYNC.
    pub(crate) fn guest_write_cd(&mut self, ssid: u32, cd: Option<[u64; 8]>) {
        let at = Self::ipa(layout::CDS) + u64::from(ssid) * 64;
        self.put(at, &cd.unwrap_or([0; 8]));
        self.submit_sync(&[Cmd::CfgiCd {
            sid: StreamId(VSID.0),
            ssid: SubstreamId(ssid),
            leaf: true,
        }]);
    }

    /// The guest attaches its stream: a stage-1 STE with 2^`s1cdmax` CDs, EATS = 1.
    pub(crate) fn guest_attach(&mut self, s1cdmax: u8) {
        let cds = Self::ipa(layout::CDS);
        let w0 = 1 | 5 << 1 | cds | u64::from(s1cdmax) << 59;
        // S1DSS substream 0, S1CIR/S1COR WB, S1CSH inner, EATS = 1.
        let w1 = 2 | 1 << 2 | 1 << 4 | 3 << 6 | 1 << 28;
        let ste = Self::ipa(layout::STREAM_TABLE) + u64::from(VSID.0) * 64;
        self.put(ste, &[w0, w1, 0, 0, 0, 0, 0, 0]);
        self.submit_sync(&[Cmd::CfgiSte {
            sid: StreamId(VSID.0),
            leaf: true,
        }]);
    }

    /// The guest disables its stream (STE Config = abort).
    pub(crate) fn guest_disable_stream(&mut self) {
        let ste = Self::ipa(layout::STREAM_TABLE) + u64::from(VSID.0) * 64;
        self.put(ste, &[1, 0, 0, 0, 0, 0, 0, 0]);
        self.submit_sync(&[Cmd::CfgiSte {
            sid: StreamId(VSID.0),
            leaf: true,
        }]);
    }

    /// What `hyp` does at EL2 on a PRI interrupt or tick: drains the physical PRI queue with
    /// only the physical lock held, then hands every entry to the owning vSMMU (an overflow to
    /// every vSMMU), tells it how far the drain got, and lets it continue pending work.
    pub(crate) fn hyp_drain(&mut self) -> Vec<PriDisposition> {
        let mut entries = Vec::new();
        {
            let mut driver = self.driver.borrow_mut();
            loop {
                let report = driver
                    .drain_page_requests_at(64, |position, intake| {
                        entries.push((position, intake));
                    })
                    .expect("the PRI queue drains");
                if report.remaining == 0 {
                    break;
                }
            }
        }
        let mut dispositions = Vec::new();
        for (position, intake) in entries {
            let sid = match intake {
                PriIntake::Request(request) => Some(request.sid),
                PriIntake::Undecodable { entry, .. } => Some(entry.raw_sid()),
                PriIntake::Overflowed => None,
            };
            if sid.is_none_or(|sid| self.vsmmu.owns_physical_stream(sid).is_some()) {
                let disposition = self.vsmmu.handle_physical_page_request(position, &intake);
                self.handed.push((position, intake, disposition));
                dispositions.push(disposition);
            }
            if sid.is_some() {
                self.hyp_next = self.hyp_next.max(position.next());
            }
        }
        self.vsmmu.handle_pri_drained(self.hyp_next);
        let _ = self.vsmmu.run_pending();
        dispositions
    }

    /// The guest reads its PRI queue: every entry from CONS to PROD, groups assembled; an
    /// overflow makes it drop its partial groups (IHI 0070 8.1.1) and acknowledge.
    pub(crate) fn guest_read_priq(&mut self) -> Vec<GuestPageRequest> {
        let prod = self.read32(o::PRIQ_PROD);
        let mut cons = self.read32(o::PRIQ_CONS);
        let size = 1u32 << self.priq_log2;
        let pointer_mask = (size << 1) - 1;
        let mut read = Vec::new();
        while (cons & pointer_mask) != (prod & pointer_mask) {
            let index = u64::from(cons & (size - 1));
            let at = Self::ipa(layout::PRI_QUEUE) + index * 16;
            let words = [
                self.memory.read_u64(at).unwrap(),
                self.memory.read_u64(at + 8).unwrap(),
            ];
            let request = PriEntry::from_words(words).decode().unwrap();
            let seen = GuestPageRequest {
                sid: request.sid,
                ssid: request.ssid,
                prg_index: request.prg_index,
                last: request.last,
                stop_marker: request.is_stop_marker(),
            };
            read.push(seen);
            if !seen.stop_marker {
                let key = (request.ssid.map(|s| s.0), request.prg_index);
                if request.last {
                    self.guest_partial.remove(&key);
                    self.guest_pending.push(seen);
                } else {
                    *self.guest_partial.entry(key).or_default() += 1;
                }
            }
            cons = (cons & pointer_mask).wrapping_add(1) & pointer_mask | cons & 1 << 31;
        }
        let overflow = prod & 1 << 31;
        if overflow != cons & 1 << 31 {
            // The groups whose Last the guest has not seen are gone (8.1.1).
            self.guest_partial.clear();
        }
        self.write32(o::PRIQ_CONS, cons & pointer_mask | overflow);
        read
    }

    /// The guest answers its pending groups, in the order `order` picks (indices into the
    /// pending list; all of them when `None`), with `response`.
    pub(crate) fn guest_answer(&mut self, order: Option<&[usize]>, response: PriResponse) {
        let pending = std::mem::take(&mut self.guest_pending);
        let picked: Vec<GuestPageRequest> = match order {
            Some(order) => order
                .iter()
                .filter_map(|&i| pending.get(i).copied())
                .collect(),
            None => pending.clone(),
        };
        self.guest_pending = pending
            .into_iter()
            .filter(|p| !picked.contains(p))
            .collect();
        let commands: Vec<Cmd> = picked
            .iter()
            .map(|p| Cmd::PriResp {
                sid: p.sid,
                ssid: p.ssid,
                prg_index: p.prg_index,
                response,
            })
            .collect();
        if !commands.is_empty() {
            self.submit_sync(&commands);
        }
    }

    /// Collects the model's trace so far into [`World::trace`].
    pub(crate) fn take_trace(&mut self) {
        self.trace.extend(self.model.take_trace());
    }

    /// The data page IPA of test page `page`.
    pub(crate) fn data(page: u64) -> u64 {
        Self::ipa(layout::DATA) + page * 4096
    }

    /// What `hyp` does with the physical event queue: drained with only the physical lock
    /// held, then each event handed to the owning vSMMU.
    pub(crate) fn hyp_drain_events(&mut self) {
        let mut events = Vec::new();
        self.driver
            .borrow_mut()
            .drain_events(64, |intake| {
                if let smmu::driver::EventIntake::Event(event) = intake {
                    events.push(event);
                }
            })
            .expect("the event queue drains");
        for event in events {
            if self.vsmmu.owns_physical_stream(event.sid).is_some() {
                let _ = self.vsmmu.handle_physical_event(&event);
            }
        }
    }

    /// The guest's event queue, decoded (every record written so far), after `hyp` has
    /// drained the physical one.
    pub(crate) fn guest_events(&mut self) -> Vec<smmu::event::Event> {
        self.hyp_drain_events();
        let prod = self.read32(o::EVTQ_PROD) & 0x7f;
        let base = Self::ipa(layout::EVENT_QUEUE);
        (0..prod)
            .filter_map(|i| {
                let at = base + u64::from(i) * 32;
                let words = [0, 8, 16, 24].map(|o| self.memory.read_u64(at + o).unwrap());
                smmu::event::EventRecord::from_words(words).decode().ok()
            })
            .collect()
    }

    /// The physical CMD_PRI_RESPs the vSMMU submitted.
    pub(crate) fn physical_responses(&self) -> Vec<Cmd> {
        self.submitted
            .borrow()
            .iter()
            .map(|c| *c.command())
            .filter(|c| matches!(c, Cmd::PriResp { .. }))
            .collect()
    }
}
