//! The driver against the behavioural fake SMMU.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use proptest::prelude::*;

use super::fake::{FakeBehaviour, FakeBus, FakePlatform, FakeRegion, FakeSmmu};
use super::*;
use crate::command::{Command, Opcode, PriResponse};
use crate::entry::install::{PhysicalSte, UpdatePath};
use crate::event::{Event, EventId, EventRecord};
use crate::ids::{Iova, PhysAddr, StreamId, SubstreamId, Vmid};
use crate::page_request::PageRequest;
use crate::registers::{
    CmdqCons, CommandError, Cr0, Gbpa, Gerror, IdRegisters, IrqCtrl, QueueBase, StrtabBase,
    StrtabBaseCfg, offset,
};
use crate::ste::{Ste, StreamConfig};

const BASE: u64 = 0x4000_0000;
const L1: u64 = BASE;
const POOL: u64 = BASE + 0x1_0000;
const L2_BYTES: u64 = 256 * 64;
const CMDQ: u64 = BASE + 0x4_0000;
const EVTQ: u64 = BASE + 0x4_1000;
const PRIQ: u64 = BASE + 0x4_2000;
const BUS_BYTES: usize = 0x5_0000;

/// QEMU `virt` plus PRI (IDR0.PRI, IDR1.PRIQS = 4).
const WITH_PRI: IdRegisters = IdRegisters {
    idr0: IdRegisters::QEMU_VIRT.idr0 | 1 << 16,
    idr1: IdRegisters::QEMU_VIRT.idr1 | 4 << 11,
    ..IdRegisters::QEMU_VIRT
};

/// QEMU `virt` plus ATS (IDR0.ATS).
const WITH_ATS: IdRegisters = IdRegisters {
    idr0: IdRegisters::QEMU_VIRT.idr0 | 1 << 10,
    ..IdRegisters::QEMU_VIRT
};

type TestDriver = Driver<FakeSmmu, FakeRegion, FakePlatform>;

struct Rig {
    smmu: FakeSmmu,
    bus: FakeBus,
    platform: FakePlatform,
}

/// How a test wants the memory laid out.
#[derive(Clone, Copy)]
struct Layout {
    pool_tables: usize,
    cmdq_entries: usize,
    evtq_entries: usize,
    cmdq_phys: u64,
}

const LAYOUT: Layout = Layout {
    pool_tables: 4,
    cmdq_entries: 16,
    evtq_entries: 8,
    cmdq_phys: CMDQ,
};

const SMALL_BUDGETS: PollBudgets = PollBudgets {
    acknowledge: 5,
    sync: 20,
    queue_space: 10,
};

impl Rig {
    fn new(ids: IdRegisters) -> Self {
        let bus = FakeBus::new(PhysAddr(BASE), BUS_BYTES);
        Self {
            smmu: FakeSmmu::new(ids, &bus),
            bus,
            platform: FakePlatform::default(),
        }
    }

    fn memory(&self, layout: Layout) -> DriverMemory<FakeRegion> {
        DriverMemory {
            stream_table_l1: self.bus.region(PhysAddr(L1), 256 * 8),
            stream_table_l2_pool: self
                .bus
                .region(PhysAddr(POOL), layout.pool_tables * 256 * 64),
            command_queue: self
                .bus
                .region(PhysAddr(layout.cmdq_phys), layout.cmdq_entries * 16),
            event_queue: self.bus.region(PhysAddr(EVTQ), layout.evtq_entries * 32),
            pri_queue: Some(self.bus.region(PhysAddr(PRIQ), 8 * 16)),
        }
    }

    fn driver_with(&self, layout: Layout, config: DriverConfig) -> Result<TestDriver, Error> {
        Driver::new(
            self.smmu.clone(),
            self.memory(layout),
            self.platform.clone(),
            config,
        )
    }

    fn driver(&self) -> TestDriver {
        self.driver_with(
            LAYOUT,
            DriverConfig {
                budgets: SMALL_BUDGETS,
                ..DriverConfig::DEFAULT
            },
        )
        .unwrap()
    }

    fn active_errors(&self) -> Gerror {
        Gerror::active(
            Gerror(self.smmu.peek32(offset::GERROR)),
            Gerror(self.smmu.peek32(offset::GERRORN)),
        )
    }
}

fn qemu() -> (Rig, TestDriver) {
    let rig = Rig::new(IdRegisters::QEMU_VIRT);
    let driver = rig.driver();
    (rig, driver)
}

fn tlbi(vmid: u16) -> Cmd {
    Cmd::TlbiS12Vmall { vmid: Vmid(vmid) }
}

fn opcodes(commands: &[Command]) -> Vec<u8> {
    commands.iter().map(Command::opcode_raw).collect()
}

const SYNC: u8 = Opcode::Sync.value();

fn stage2_ste(vmid: u16) -> Ste {
    let mut ste = Ste::INVALID;
    ste.set_v(true);
    ste.set_config(StreamConfig::Stage2);
    ste.set_s2vmid(Vmid(vmid));
    ste.set_s2aa64(true);
    ste
}

// ---------------------------------------------------------------------------------------------
// Reset

#[test]
fn reset_ends_with_gbpa_abort_smmuen_queues_enabled_and_tables_programmed() {
    let (rig, driver) = qemu();
    let s = &rig.smmu;
    let cr0 = Cr0(s.peek32(offset::CR0ACK));
    assert!(cr0.smmuen() && cr0.cmdqen() && cr0.evtqen() && !cr0.priqen());
    let gbpa = Gbpa(s.peek32(offset::GBPA));
    assert!(gbpa.abort() && !gbpa.update());
    let strtab = StrtabBase(s.peek64(offset::STRTAB_BASE));
    assert_eq!((strtab.addr(), strtab.ra()), (PhysAddr(L1), true));
    assert_eq!(
        s.peek32(offset::STRTAB_BASE_CFG),
        StrtabBaseCfg::default()
            .with_log2size(16)
            .with_split(8)
            .with_fmt(crate::registers::StreamTableFormat::TwoLevel)
            .0
    );
    let cmdq = QueueBase(s.peek64(offset::CMDQ_BASE));
    assert_eq!((cmdq.addr(), cmdq.log2size()), (PhysAddr(CMDQ), 4));
    let evtq = QueueBase(s.peek64(offset::EVTQ_BASE));
    assert_eq!((evtq.addr(), evtq.log2size()), (PhysAddr(EVTQ), 3));
    assert_eq!(
        (driver.command_queue_entries(), driver.event_queue_entries()),
        (16, 8)
    );
    // QEMU has no PRI: its queue is left alone even though memory was given.
    assert_eq!(driver.pri_queue_entries(), None);
    assert_eq!(s.peek64(offset::PRIQ_BASE), 0);
    // COHACC: write-back, inner shareable, for queues and tables.
    assert_eq!(s.peek32(offset::CR1), 0b11_01_01_11_01_01);
    assert_eq!(s.peek32(offset::CR2), 0b110);
    let irq = IrqCtrl(s.peek32(offset::IRQ_CTRLACK));
    assert!(irq.gerror_irqen() && irq.evtq_irqen() && !irq.priq_irqen());
    // Caches invalidated with one sync, completed.
    assert_eq!(
        opcodes(&s.consumed()),
        [
            Opcode::CfgiSteRange.value(),
            Opcode::TlbiNsnhAll.value(),
            SYNC
        ]
    );
    assert_eq!(s.consumed()[0], Cmd::cfgi_all().encode());
    // Every span starts without a level-2 table.
    assert_eq!(s.ste(StreamId(8)), None);
    assert_eq!(driver.stream_table_pool_usage(), (0, 4));
}

#[test]
fn reset_aborts_before_it_disables_and_enables_translation_last() {
    let rig = Rig::new(IdRegisters::QEMU_VIRT);
    let mut previous_owner = rig.smmu.clone();
    previous_owner.write32(offset::CR0, Cr0::default().with_smmuen(true).0);
    let _driver = rig.driver();
    let writes = rig.smmu.writes();
    let position = |predicate: &dyn Fn(&(crate::registers::RegisterOffset, u64)) -> bool| {
        writes.iter().position(predicate).unwrap()
    };
    let gbpa_abort = position(&|(r, v)| *r == offset::GBPA && *v & 1 << 20 != 0);
    let disable = position(&|(r, v)| *r == offset::CR0 && *v == 0);
    assert!(gbpa_abort < disable, "{writes:x?}");
    let cr0_writes: Vec<u64> = writes
        .iter()
        .filter(|(r, _)| *r == offset::CR0)
        .map(|(_, v)| *v)
        .collect();
    // Previous owner's enable, disable, CMDQ, +EVTQ, +SMMUEN.
    assert_eq!(cr0_writes, [0b0001, 0, 0b1000, 0b1100, 0b1101]);
    assert_eq!(
        writes.last().map(|(r, _)| *r),
        Some(offset::CR0),
        "SMMUEN is the last write"
    );
}

/// IHI 0070 6.3.9 (SMMU_CR0.ATSCHK): with ATSCHK = 0 an SMMU that has ATS lets every
/// ATS-Translated transaction through without an STE lookup, whatever STE.EATS says; the bit
/// is RES0 without ATS. 6.3.9.2: a change of ATSCHK must be followed by invalidating the STEs,
/// so it is set with CMDQEN, before the reset's CFGI_ALL, and stays set.
#[test]
fn atschk_is_set_before_the_first_invalidation_exactly_when_the_smmu_has_ats() {
    for (ids, ats) in [(WITH_ATS, true), (IdRegisters::QEMU_VIRT, false)] {
        let rig = Rig::new(ids);
        let _driver = rig.driver();
        let writes = rig.smmu.writes();
        let cr0_writes: Vec<Cr0> = writes
            .iter()
            .filter(|(r, _)| *r == offset::CR0)
            .map(|(_, v)| Cr0(u32::try_from(*v).unwrap()))
            .collect();
        let enabling = cr0_writes.iter().filter(|cr0| cr0.0 != 0);
        assert!(
            enabling.clone().all(|cr0| cr0.atschk() == ats),
            "{cr0_writes:x?}"
        );
        assert_eq!(Cr0(rig.smmu.peek32(offset::CR0ACK)).atschk(), ats);
        if ats {
            let first_atschk = writes
                .iter()
                .position(|(r, v)| *r == offset::CR0 && Cr0(u32::try_from(*v).unwrap()).atschk());
            // The first PROD write that hands over commands (the reset writes 0 first).
            let first_command = writes
                .iter()
                .position(|(r, v)| *r == offset::CMDQ_PROD && *v != 0);
            assert!(first_atschk < first_command, "{writes:x?}");
        }
    }
}

/// QEMU `virt` with IDR0.STALL_MODEL = 0b10 (stall forced).
const STALL_FORCED: IdRegisters = IdRegisters {
    idr0: (IdRegisters::QEMU_VIRT.idr0 & !(0b11 << 24)) | 0b10 << 24,
    ..IdRegisters::QEMU_VIRT
};

#[test]
fn a_stall_forced_smmu_is_refused_before_it_is_touched() {
    let rig = Rig::new(STALL_FORCED);
    let driver = rig.driver_with(LAYOUT, DriverConfig::DEFAULT);
    assert_eq!(driver.map(|_| ()), Err(Error::StallForcedUnsupported));
    assert_eq!(rig.smmu.writes(), []);
}

#[test]
fn reset_acknowledges_errors_left_by_a_previous_owner() {
    let rig = Rig::new(IdRegisters::QEMU_VIRT);
    rig.smmu.raise_global_errors(
        Gerror::default()
            .with_cmdq_err(true)
            .with_evtq_abt_err(true),
    );
    let _driver = rig.driver();
    assert!(rig.active_errors().is_clear());
    assert_eq!(rig.smmu.consumed().len(), 3);
}

#[test]
fn pri_queue_is_enabled_when_the_smmu_has_pri() {
    let rig = Rig::new(WITH_PRI);
    let driver = rig.driver();
    assert_eq!(driver.pri_queue_entries(), Some(8));
    assert!(Cr0(rig.smmu.peek32(offset::CR0ACK)).priqen());
    assert!(IrqCtrl(rig.smmu.peek32(offset::IRQ_CTRLACK)).priq_irqen());
    let priq = QueueBase(rig.smmu.peek64(offset::PRIQ_BASE));
    assert_eq!((priq.addr(), priq.log2size()), (PhysAddr(PRIQ), 3));
}

#[test]
fn queue_size_is_bounded_by_idr1_as_well_as_memory() {
    // IDR1.CMDQS = 2: four entries even though the memory holds sixteen.
    let ids = IdRegisters {
        idr1: (IdRegisters::QEMU_VIRT.idr1 & !(0x1f << 21)) | 2 << 21,
        ..IdRegisters::QEMU_VIRT
    };
    let driver = Rig::new(ids).driver();
    assert_eq!(driver.command_queue_entries(), 4);
}

#[test]
fn each_missing_acknowledgement_times_out_within_its_budget() {
    let cases = [
        (
            FakeBehaviour {
                acknowledge_cr0: false,
                ..FakeBehaviour::default()
            },
            Acknowledgement::Cr0,
        ),
        (
            FakeBehaviour {
                complete_gbpa_update: false,
                ..FakeBehaviour::default()
            },
            Acknowledgement::GbpaUpdate,
        ),
        (
            FakeBehaviour {
                acknowledge_irq_ctrl: false,
                ..FakeBehaviour::default()
            },
            Acknowledgement::IrqCtrl,
        ),
    ];
    for (behaviour, which) in cases {
        let rig = Rig::new(IdRegisters::QEMU_VIRT);
        // IRQ_CTRLACK and CR0ACK start at 0, which matches the first write; make them stale.
        rig.smmu.poke32(offset::CR0ACK, 1);
        rig.smmu.poke32(offset::IRQ_CTRLACK, 1);
        rig.smmu.set_behaviour(behaviour);
        let result = rig.driver_with(
            LAYOUT,
            DriverConfig {
                budgets: SMALL_BUDGETS,
                ..DriverConfig::DEFAULT
            },
        );
        assert_eq!(result.err(), Some(Error::AcknowledgeTimeout(which)));
        assert!(rig.platform.pauses() <= u64::from(SMALL_BUDGETS.acknowledge) * 2);
    }
}

#[test]
fn unusable_memory_and_geometry_are_errors() {
    let rig = Rig::new(IdRegisters::QEMU_VIRT);
    let config = DriverConfig::DEFAULT;
    let misaligned = Layout {
        cmdq_phys: CMDQ + 0x20,
        ..LAYOUT
    };
    assert_eq!(
        rig.driver_with(misaligned, config).err(),
        Some(Error::Memory(MemoryError::Misaligned {
            region: Region::CommandQueue,
            align: 256,
            phys: PhysAddr(CMDQ + 0x20),
        }))
    );
    let tiny = Layout {
        cmdq_entries: 1,
        ..LAYOUT
    };
    assert!(matches!(
        rig.driver_with(tiny, config).err(),
        Some(Error::Memory(MemoryError::TooSmall {
            region: Region::CommandQueue,
            ..
        }))
    ));
    // 20 stream ID bits need a 4096-entry level-1 table; QEMU's SIDSIZE of 16 clamps it.
    assert!(
        rig.driver_with(
            LAYOUT,
            DriverConfig {
                sid_bits: 20,
                ..config
            }
        )
        .is_ok()
    );
    let rig = Rig::new(IdRegisters {
        idr1: (IdRegisters::QEMU_VIRT.idr1 & !0x3f) | 20,
        ..IdRegisters::QEMU_VIRT
    });
    assert!(matches!(
        rig.driver_with(
            LAYOUT,
            DriverConfig {
                sid_bits: 20,
                ..config
            }
        )
        .err(),
        Some(Error::Memory(MemoryError::TooSmall {
            region: Region::StreamTableL1,
            needed: 32768,
            ..
        }))
    ));
    for split in [0, 7, 9, 11, 17] {
        assert_eq!(
            rig.driver_with(LAYOUT, DriverConfig { split, ..config })
                .err(),
            Some(Error::StreamTableGeometry {
                sid_bits: 16,
                split
            })
        );
    }
    let linear_only = Rig::new(IdRegisters {
        idr0: IdRegisters::QEMU_VIRT.idr0 & !(3 << 27),
        ..IdRegisters::QEMU_VIRT
    });
    assert_eq!(
        linear_only.driver_with(LAYOUT, config).err(),
        Some(Error::TwoLevelStreamTableUnsupported)
    );
}

// ---------------------------------------------------------------------------------------------
// Command queue

#[test]
fn a_batch_that_fits_is_published_with_one_prod_write() {
    let (rig, mut driver) = qemu();
    let before = (rig.smmu.prod_writes(), rig.smmu.consumed().len());
    let batch: Vec<Cmd> = (0..5).map(tlbi).collect();
    driver.submit(&batch).unwrap();
    assert_eq!(rig.smmu.prod_writes(), before.0 + 1);
    let consumed = rig.smmu.consumed();
    let encoded: Vec<Command> = batch.iter().map(Cmd::encode).collect();
    assert_eq!(consumed[before.1..], encoded[..]);
}

#[test]
fn a_batch_larger_than_the_queue_is_written_in_queue_sized_pieces() {
    let (rig, mut driver) = qemu();
    let before = (rig.smmu.prod_writes(), rig.smmu.consumed().len());
    let batch: Vec<Cmd> = (0..40).map(tlbi).collect();
    driver.submit(&batch).unwrap();
    assert_eq!(rig.smmu.prod_writes(), before.0 + 3); // 16 + 16 + 8
    assert_eq!(rig.smmu.consumed().len(), before.1 + 40);
}

#[test]
fn sync_completes_once_the_smmu_has_consumed_it() {
    let (rig, mut driver) = qemu();
    driver.submit_and_sync(&[tlbi(1), tlbi(2)]).unwrap();
    let consumed = opcodes(&rig.smmu.consumed());
    assert_eq!(consumed[consumed.len() - 3..], [0x28, 0x28, SYNC]);
    // QEMU has no SEV: CS=none.
    let last = rig.smmu.consumed().last().copied().unwrap();
    assert_eq!(
        last.decode().ok(),
        Some(Cmd::Sync {
            completion: crate::command::SyncCompletion::None,
            msh: 0,
            msi_attr: 0,
            msi_data: 0,
            msi_addr: PhysAddr(0)
        })
    );
}

#[test]
fn sync_times_out_when_the_smmu_never_consumes() {
    let (rig, mut driver) = qemu();
    rig.smmu.set_behaviour(FakeBehaviour {
        consume_commands: false,
        ..FakeBehaviour::default()
    });
    let pauses = rig.platform.pauses();
    assert_eq!(driver.sync(), Err(Error::SyncTimeout));
    assert_eq!(
        rig.platform.pauses() - pauses,
        u64::from(SMALL_BUDGETS.sync) + 1
    );
    // The SMMU comes back: the next sync sees both complete.
    rig.smmu.set_behaviour(FakeBehaviour::default());
    rig.smmu.run_command_queue();
    assert_eq!(driver.sync(), Ok(()));
}

#[test]
fn a_full_queue_that_never_drains_times_out() {
    let (rig, mut driver) = qemu();
    rig.smmu.set_behaviour(FakeBehaviour {
        consume_commands: false,
        ..FakeBehaviour::default()
    });
    let batch: Vec<Cmd> = (0..16).map(tlbi).collect();
    driver.submit(&batch).unwrap();
    assert_eq!(
        driver.submit(&[tlbi(99)]),
        Err(Error::CommandQueueFullTimeout)
    );
}

#[test]
fn many_submissions_wrap_the_queue_and_every_command_completes_in_order() {
    let (rig, mut driver) = qemu();
    let start = rig.smmu.consumed().len();
    let mut expected = Vec::new();
    for round in 0..100u16 {
        let batch = [tlbi(round), tlbi(round + 1000), tlbi(round + 2000)];
        driver.submit_and_sync(&batch).unwrap();
        expected.extend(batch.iter().map(Cmd::encode));
        expected.push(driver_sync_command());
    }
    assert_eq!(rig.smmu.consumed()[start..], expected[..]);
    // 3 reset commands + 400: 25 times round the 16-entry queue, plus 3.
    let prod = driver.command_queue_prod();
    assert_eq!((prod.index(), prod.wrap()), (403 % 16, (403 / 16) % 2 == 1));
}

fn driver_sync_command() -> Command {
    Cmd::Sync {
        completion: crate::command::SyncCompletion::None,
        msh: 0,
        msi_attr: 0,
        msi_data: 0,
        msi_addr: PhysAddr(0),
    }
    .encode()
}

#[test]
fn an_illegal_command_mid_batch_is_reported_replaced_acknowledged_and_the_rest_completes() {
    let (rig, mut driver) = qemu();
    let start = rig.smmu.consumed().len();
    let first_index = driver.command_queue_prod().index();
    let illegal = Command::from_words([0x7f, 0]);
    let batch = [
        tlbi(1).encode(),
        tlbi(2).encode(),
        illegal,
        tlbi(3).encode(),
    ];
    driver.submit_raw(&batch).unwrap();
    // QEMU's behaviour: CONS stops at the bad command with CERROR_ILL and CMDQ_ERR active.
    let cons = CmdqCons(rig.smmu.peek32(offset::CMDQ_CONS));
    assert_eq!(cons.err(), Ok(CommandError::Illegal));
    assert_eq!(cons.pointer_bits(), first_index + 2);
    assert!(rig.active_errors().cmdq_err());

    assert_eq!(
        driver.sync(),
        Err(Error::CommandError {
            kind: CommandErrorKind::Illegal,
            index: first_index + 2,
            opcode: 0x7f,
        })
    );
    assert!(rig.active_errors().is_clear(), "GERRORN acknowledged");
    assert_eq!(
        rig.smmu.consumed()[start..],
        [
            batch[0],
            batch[1],
            driver_sync_command(),
            batch[3],
            driver_sync_command()
        ]
    );
    // Reported once; the queue works on.
    assert_eq!(driver.submit_and_sync(&[tlbi(4)]), Ok(()));
}

fn pri_resp(response: PriResponse) -> Cmd {
    Cmd::PriResp {
        sid: StreamId(8),
        ssid: None,
        prg_index: 5,
        response,
    }
}

/// IHI 0070 4.5.2: CMD_PRI_RESP's Resp 0b11 is "Reserved: ILLEGAL"; 0b00 ResponseFailure,
/// 0b01 InvalidRequest and 0b10 Success are answered.
#[test]
fn a_pri_resp_with_the_reserved_response_is_an_illegal_command() {
    let rig = Rig::new(WITH_PRI);
    let mut driver = rig.driver();
    let responses = [
        PriResponse::ResponseFailure,
        PriResponse::InvalidRequest,
        PriResponse::Success,
    ];
    for response in responses {
        assert_eq!(driver.submit_and_sync(&[pri_resp(response)]), Ok(()));
    }
    let [w0, w1] = pri_resp(PriResponse::Success).encode().words();
    let reserved = Command::from_words([w0, w1 | 0b11 << 12]);
    let index = driver.command_queue_prod().index();
    driver.submit_raw(&[reserved]).unwrap();
    assert_eq!(
        driver.sync(),
        Err(Error::CommandError {
            kind: CommandErrorKind::Illegal,
            index,
            opcode: Opcode::PriResp.value(),
        })
    );
}

/// IHI 0070 4.5.1 and 4.5.2: CMD_ATC_INV is ILLEGAL where IDR0.ATS = 0, CMD_PRI_RESP where
/// IDR0.PRI = 0 (QEMU virt has neither).
#[test]
fn atc_inv_and_pri_resp_are_illegal_without_ats_and_pri() {
    let atc_inv = Cmd::AtcInv {
        sid: StreamId(8),
        ssid: None,
        global: false,
        size: 0,
        addr: Iova(0x1000),
    };
    let cases = [
        (IdRegisters::QEMU_VIRT, atc_inv, Some(Opcode::AtcInv)),
        (WITH_ATS, atc_inv, None),
        (
            IdRegisters::QEMU_VIRT,
            pri_resp(PriResponse::Success),
            Some(Opcode::PriResp),
        ),
        (WITH_PRI, pri_resp(PriResponse::Success), None),
    ];
    for (ids, command, illegal) in cases {
        let rig = Rig::new(ids);
        let mut driver = rig.driver();
        let index = driver.command_queue_prod().index();
        let want = match illegal {
            Some(opcode) => Err(Error::CommandError {
                kind: CommandErrorKind::Illegal,
                index,
                opcode: opcode.value(),
            }),
            None => Ok(()),
        };
        assert_eq!(
            driver.submit_and_sync(&[command]),
            want,
            "{command:?} on {ids:x?}"
        );
    }
}

#[test]
fn an_aborted_command_fetch_is_retried_not_replaced() {
    let (rig, mut driver) = qemu();
    rig.smmu.set_behaviour(FakeBehaviour {
        consume_commands: false,
        ..FakeBehaviour::default()
    });
    driver.submit(&[tlbi(7)]).unwrap();
    let index = driver.command_queue_prod().index() - 1;
    // The SMMU reports an abort at the command, then works again.
    let cons = CmdqCons(index).with_err(CommandError::Abort);
    rig.smmu.poke32(offset::CMDQ_CONS, cons.0);
    rig.smmu
        .raise_global_errors(Gerror::default().with_cmdq_err(true));
    rig.smmu.set_behaviour(FakeBehaviour::default());
    let start = rig.smmu.consumed().len();
    assert_eq!(
        driver.sync(),
        Err(Error::CommandError {
            kind: CommandErrorKind::Abort,
            index,
            opcode: 0x28
        })
    );
    assert_eq!(
        rig.smmu.consumed()[start..],
        [tlbi(7).encode(), driver_sync_command()]
    );
}

#[test]
fn a_command_error_found_by_the_interrupt_handler_is_recovered_and_still_reported_by_sync() {
    let (rig, mut driver) = qemu();
    driver
        .submit_raw(&[Command::from_words([0xff, 0]), tlbi(5).encode()])
        .unwrap();
    let mut reported = Vec::new();
    let active = driver.handle_global_errors(|e| reported.push(e)).unwrap();
    assert!(active.cmdq_err());
    assert!(matches!(
        reported[..],
        [GlobalError::Command(CommandFailure {
            kind: CommandErrorKind::Illegal,
            opcode: 0xff,
            ..
        })]
    ));
    assert!(rig.active_errors().is_clear());
    assert!(matches!(driver.sync(), Err(Error::CommandError { .. })));
    assert_eq!(driver.sync(), Ok(()));
}

#[test]
fn a_cons_register_that_cannot_be_is_an_error_not_a_panic() {
    let cases = [
        // Bits above the wrap bit of a 16-entry queue.
        (0x0000_0100, true),
        (0x00ff_ffff, true),
        // Well-formed, but more entries outstanding than were ever submitted.
        (0x0000_0009, false),
    ];
    for (raw, corrupt) in cases {
        let (rig, mut driver) = qemu();
        rig.smmu.set_behaviour(FakeBehaviour {
            consume_commands: false,
            ..FakeBehaviour::default()
        });
        rig.smmu.poke32(offset::CMDQ_CONS, raw);
        let expected = if corrupt {
            Error::CorruptPointer {
                queue: crate::queue::QueueKind::Command,
                raw,
            }
        } else {
            Error::InconsistentPointer {
                queue: crate::queue::QueueKind::Command,
                raw,
            }
        };
        assert_eq!(driver.sync(), Err(expected), "{raw:#x}");
    }
}

// ---------------------------------------------------------------------------------------------
// Stream table

/// `ste` through the physical guard, as every STE the driver writes must be.
fn physical(ste: Ste) -> PhysicalSte {
    PhysicalSte::check(ste).unwrap()
}

#[test]
fn stes_land_where_the_smmu_looks_for_them_across_spans() {
    let (rig, mut driver) = qemu();
    let sids = [0u32, 1, 255, 256, 0x1234, 0xffff];
    for (i, &sid) in sids.iter().enumerate() {
        let vmid = u16::try_from(i + 1).unwrap();
        driver
            .install_ste(StreamId(sid), &physical(stage2_ste(vmid)))
            .unwrap();
    }
    for (i, &sid) in sids.iter().enumerate() {
        let vmid = u16::try_from(i + 1).unwrap();
        assert_eq!(
            rig.smmu.ste(StreamId(sid)),
            Some(stage2_ste(vmid)),
            "{sid:#x}"
        );
        assert_eq!(driver.read_ste(StreamId(sid)), Ok(stage2_ste(vmid)));
    }
    // Four spans (0, 1, 0x12, 0xff), in order of first use.
    assert_eq!(driver.stream_table_pool_usage(), (4, 4));
    let expected = [
        (0, 0),
        (255, 255 * 64),
        (256, L2_BYTES),
        (0x1234, 2 * L2_BYTES + 0x34 * 64),
        (0xffff, 3 * L2_BYTES + 0xff * 64),
    ];
    for (sid, offset) in expected {
        assert_eq!(
            driver.ste_address(StreamId(sid)),
            Ok(Some(PhysAddr(POOL + offset)))
        );
    }
    // A neighbour in a populated span aborts (V=0); a stream in an empty span has no STE.
    assert_eq!(rig.smmu.ste(StreamId(2)), Some(Ste::INVALID));
    assert_eq!(rig.smmu.ste(StreamId(0x200)), None);
    assert_eq!(driver.read_ste(StreamId(0x200)), Ok(Ste::INVALID));
    assert_eq!(driver.ste_address(StreamId(0x200)), Ok(None));
    assert_eq!(
        driver.install_ste(StreamId(0x1_0000), &physical(Ste::INVALID)),
        Err(Error::StreamIdOutOfRange(StreamId(0x1_0000)))
    );
}

#[test]
fn pool_exhaustion_is_an_error_and_populated_spans_keep_working() {
    let rig = Rig::new(IdRegisters::QEMU_VIRT);
    let mut driver = rig
        .driver_with(
            Layout {
                pool_tables: 2,
                ..LAYOUT
            },
            DriverConfig::DEFAULT,
        )
        .unwrap();
    driver
        .install_ste(StreamId(0x100), &physical(stage2_ste(1)))
        .unwrap();
    driver
        .install_ste(StreamId(0x200), &physical(stage2_ste(2)))
        .unwrap();
    assert_eq!(
        driver.install_ste(StreamId(0x300), &physical(stage2_ste(3))),
        Err(Error::StreamTablePoolExhausted)
    );
    assert_eq!(rig.smmu.ste(StreamId(0x300)), None);
    assert_eq!(
        driver.install_stes(StreamId(0x2fe), StreamId(0x300), &physical(stage2_ste(3))),
        Err(Error::StreamTablePoolExhausted)
    );
    // The streams of the range that were prepared before the pool ran out still abort.
    assert!(!rig.smmu.ste(StreamId(0x2fe)).unwrap().v());
    assert!(!rig.smmu.ste(StreamId(0x2ff)).unwrap().v());
    driver
        .install_ste(StreamId(0x2ff), &physical(stage2_ste(4)))
        .unwrap();
    assert_eq!(rig.smmu.ste(StreamId(0x2ff)), Some(stage2_ste(4)));
}

#[test]
fn a_live_ste_is_replaced_by_the_hitless_installer_with_one_sync_per_step() {
    let (rig, mut driver) = qemu();
    let sid = StreamId(8);
    let cfgi = Cmd::CfgiSte { sid, leaf: false }.encode();
    // Fresh (V=0) to valid: qwords 1 to 7, a sync, then qword 0 (with V), a sync.
    let start = rig.smmu.consumed().len();
    let report = driver.install_ste(sid, &physical(stage2_ste(1))).unwrap();
    assert_eq!(report.path, UpdatePath::Hitless { critical_qword: 0 });
    assert_eq!((report.writes, report.syncs), (2, 2));
    assert_eq!(
        rig.smmu.consumed()[start..],
        [cfgi, driver_sync_command(), cfgi, driver_sync_command()]
    );
    // A new VMID alone (word 2): one store, one sync, never through V=0.
    let start = rig.smmu.consumed().len();
    let report = driver.install_ste(sid, &physical(stage2_ste(2))).unwrap();
    assert_eq!(report.path, UpdatePath::Hitless { critical_qword: 2 });
    assert_eq!((report.writes, report.syncs), (1, 1));
    assert_eq!(rig.smmu.consumed()[start..], [cfgi, driver_sync_command()]);
    assert_eq!(rig.smmu.ste(sid), Some(stage2_ste(2)));
    // The same STE again: nothing written, nothing synced.
    let start = rig.smmu.consumed().len();
    let report = driver.install_ste(sid, &physical(stage2_ste(2))).unwrap();
    assert_eq!((report.writes, report.syncs), (0, 0));
    assert_eq!(rig.smmu.consumed().len(), start);
}

#[test]
fn an_observed_install_shows_each_step_before_and_after_its_sync() {
    let (rig, mut driver) = qemu();
    let sid = StreamId(0x42);
    rig.smmu.watch_stes(&[sid]);
    let target = stage2_ste(7);
    let mut seen = Vec::new();
    driver
        .install_ste_observed(sid, &physical(target), |point, ste| {
            seen.push((point, *ste));
        })
        .unwrap();
    let mut prepared = target;
    prepared.set_v(false);
    let prepared = Ste::from_words([0, prepared.words()[1], prepared.words()[2], 0, 0, 0, 0, 0]);
    assert_eq!(
        seen,
        [
            (InstallPoint::Stored, prepared),
            (InstallPoint::Synced, prepared),
            (InstallPoint::Stored, target),
            (InstallPoint::Synced, target),
        ]
    );
    // What the SMMU read at each sync is what the observer was shown.
    assert_eq!(
        rig.smmu.ste_snapshots(),
        [vec![Some(prepared)], vec![Some(target)]]
    );
}

/// Every qword mix of `before` and `after` (what the SMMU may see between two syncs) is
/// invalid or equal to one of `allowed`.
fn every_mix_is_invalid_or(before: &Ste, after: &Ste, allowed: &[Ste]) -> bool {
    let (b, a) = (before.words(), after.words());
    (0u32..256).all(|subset| {
        let mix: [u64; 8] =
            core::array::from_fn(|i| if subset & 1 << i != 0 { a[i] } else { b[i] });
        let mix = Ste::from_words(mix);
        !mix.v() || allowed.contains(&mix)
    })
}

#[test]
fn fresh_streams_are_installed_in_bulk_with_two_range_invalidations() {
    let (rig, mut driver) = qemu();
    let target = stage2_ste(1);
    let watched = [StreamId(0), StreamId(0x17f), StreamId(0x2ff)];
    rig.smmu.watch_stes(&watched);
    let start = rig.smmu.consumed().len();
    let report = driver
        .install_stes(StreamId(0), StreamId(0x2ff), &physical(target))
        .unwrap();
    assert_eq!(
        report,
        BulkInstallReport {
            fresh: 0x300,
            live: 0,
            unchanged: 0,
            syncs: 2
        }
    );
    assert_eq!(report.streams(), 0x300);
    // One CFGI_STE_RANGE over the 1024 IDs holding 0..=0x2ff, and one sync, per step.
    let range = Cmd::CfgiSteRange {
        sid: StreamId(0),
        range: 9,
    }
    .encode();
    assert_eq!(
        rig.smmu.consumed()[start..],
        [range, driver_sync_command(), range, driver_sync_command()]
    );
    for sid in 0..0x300 {
        assert_eq!(rig.smmu.ste(StreamId(sid)), Some(target), "{sid:#x}");
    }
    assert_eq!(rig.smmu.ste(StreamId(0x300)), None);
    // At the first sync every stream is still invalid with qwords 1 to 7 in place; between the
    // syncs, whatever mix the SMMU reads is invalid or the target.
    let snapshots = rig.smmu.ste_snapshots();
    assert_eq!(snapshots.len(), 2);
    for (column, _) in watched.iter().enumerate() {
        let first = snapshots[0][column].unwrap();
        let second = snapshots[1][column].unwrap();
        assert!(!first.v());
        assert_eq!(first.words()[1..], target.words()[1..]);
        assert_eq!(second, target);
        assert!(every_mix_is_invalid_or(&Ste::INVALID, &first, &[]));
        assert!(every_mix_is_invalid_or(&first, &second, &[target]));
    }
}

#[test]
fn a_live_stream_in_a_bulk_range_takes_the_hitless_path_on_its_own() {
    let (rig, mut driver) = qemu();
    let live = StreamId(5);
    driver.install_ste(live, &physical(stage2_ste(1))).unwrap();
    rig.smmu.watch_stes(&[live]);
    let target = stage2_ste(2);
    let start = rig.smmu.consumed().len();
    let report = driver
        .install_stes(StreamId(0), StreamId(15), &physical(target))
        .unwrap();
    // The live stream: one store (its VMID), one CFGI_STE and sync; then the fifteen fresh
    // ones together.
    assert_eq!(
        report,
        BulkInstallReport {
            fresh: 15,
            live: 1,
            unchanged: 0,
            syncs: 3
        }
    );
    let range = Cmd::CfgiSteRange {
        sid: StreamId(0),
        range: 3,
    }
    .encode();
    assert_eq!(
        rig.smmu.consumed()[start..],
        [
            Cmd::CfgiSte {
                sid: live,
                leaf: false
            }
            .encode(),
            driver_sync_command(),
            range,
            driver_sync_command(),
            range,
            driver_sync_command(),
        ]
    );
    // The live stream never looked like anything but its old STE or the target.
    let snapshots = rig.smmu.ste_snapshots();
    let mut before = stage2_ste(1);
    for row in &snapshots {
        let now = row[0].unwrap();
        assert!(now == stage2_ste(1) || now == target);
        assert!(every_mix_is_invalid_or(
            &before,
            &now,
            &[stage2_ste(1), target]
        ));
        assert!(
            (0u32..256).all(|subset| {
                let mix: [u64; 8] = core::array::from_fn(|i| {
                    if subset & 1 << i != 0 {
                        now.words()[i]
                    } else {
                        before.words()[i]
                    }
                });
                Ste::from_words(mix).v()
            }),
            "the live stream passed through V=0"
        );
        before = now;
    }
    for sid in 0..16 {
        assert_eq!(rig.smmu.ste(StreamId(sid)), Some(target), "{sid}");
    }
    // Again: every stream already holds the target; nothing is written or synced.
    let start = rig.smmu.consumed().len();
    let again = driver
        .install_stes(StreamId(0), StreamId(15), &physical(target))
        .unwrap();
    assert_eq!((again.unchanged, again.syncs), (16, 0));
    assert_eq!(rig.smmu.consumed().len(), start);
}

#[test]
fn a_bulk_range_is_checked_before_anything_is_written() {
    let (rig, mut driver) = qemu();
    let target = physical(stage2_ste(1));
    assert_eq!(
        driver.install_stes(StreamId(9), StreamId(8), &target),
        Err(Error::StreamRangeReversed {
            first: StreamId(9),
            last: StreamId(8)
        })
    );
    assert_eq!(
        driver.install_stes(StreamId(0xff00), StreamId(0x1_0000), &target),
        Err(Error::StreamIdOutOfRange(StreamId(0x1_0000)))
    );
    assert_eq!(rig.smmu.ste(StreamId(0xff00)), None);
    assert_eq!(driver.stream_table_pool_usage().0, 0);
    // A one-stream range is a range of two IDs (Range = 0).
    let start = rig.smmu.consumed().len();
    driver
        .install_stes(StreamId(8), StreamId(8), &target)
        .unwrap();
    assert_eq!(
        rig.smmu.consumed()[start],
        Cmd::CfgiSteRange {
            sid: StreamId(8),
            range: 0
        }
        .encode()
    );
    assert_eq!(rig.smmu.ste(StreamId(9)), Some(Ste::INVALID));
}

#[test]
fn a_corrupted_level_1_descriptor_is_reported_not_followed() {
    let (rig, mut driver) = qemu();
    driver
        .install_ste(StreamId(0), &physical(stage2_ste(1)))
        .unwrap();
    // Point span 0 outside the pool.
    rig.bus.write(PhysAddr(L1), 0x9 | 0x1000_0000);
    assert_eq!(
        driver.install_ste(StreamId(1), &physical(stage2_ste(1))),
        Err(Error::CorruptStreamTable(StreamId(1)))
    );
    assert_eq!(
        driver.install_stes(StreamId(1), StreamId(2), &physical(stage2_ste(1))),
        Err(Error::CorruptStreamTable(StreamId(1)))
    );
}

// ---------------------------------------------------------------------------------------------
// Event and PRI queues

fn event(sid: u32) -> EventRecord {
    let mut e = Event::new(EventId::FTranslation, StreamId(sid));
    e.input_addr = Iova(0x1000 * u64::from(sid));
    e.encode()
}

fn collect_events(driver: &mut TestDriver, budget: u32) -> (DrainReport, Vec<EventIntake>) {
    let mut seen = Vec::new();
    let report = driver.drain_events(budget, |e| seen.push(e)).unwrap();
    (report, seen)
}

#[test]
fn event_drain_respects_its_budget_and_decodes_in_order() {
    let (rig, mut driver) = qemu();
    for sid in 1..=5 {
        assert!(rig.smmu.inject_event(&event(sid)));
    }
    let (report, seen) = collect_events(&mut driver, 3);
    assert_eq!(
        report,
        DrainReport {
            delivered: 3,
            remaining: 2,
            overflowed: false
        }
    );
    let sids: Vec<u32> = seen
        .iter()
        .map(|e| match e {
            EventIntake::Event(e) => e.sid.0,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(sids, [1, 2, 3]);
    assert_eq!(seen[0], EventIntake::Event(event(1).decode().unwrap()));
    assert_eq!(rig.smmu.peek32(offset::EVTQ_CONS), 3);
    let (report, seen) = collect_events(&mut driver, 10);
    assert_eq!((report.delivered, report.remaining, seen.len()), (2, 0, 2));
    let (report, _) = collect_events(&mut driver, 10);
    assert_eq!(report, DrainReport::default());
}

#[test]
fn overflow_is_reported_once_and_acknowledged() {
    let (rig, mut driver) = qemu();
    for sid in 0..8 {
        assert!(rig.smmu.inject_event(&event(sid)));
    }
    assert!(!rig.smmu.inject_event(&event(8)), "the ninth is lost");
    let (report, seen) = collect_events(&mut driver, 100);
    assert!(report.overflowed);
    assert_eq!(seen[0], EventIntake::Overflowed);
    assert_eq!(seen.len(), 9);
    assert_eq!(
        rig.smmu.peek32(offset::EVTQ_CONS),
        crate::queue::OVERFLOW_FLAG | 8,
        "OVACKFLG copied from OVFLG with the CONS write"
    );
    assert!(rig.smmu.inject_event(&event(9)));
    let (report, seen) = collect_events(&mut driver, 100);
    assert!(!report.overflowed);
    assert_eq!(seen.len(), 1);
}

#[test]
fn an_undecodable_record_is_delivered_raw() {
    let (rig, mut driver) = qemu();
    let record = EventRecord::from_words([0xee | 5 << 32, 0, 0, 0]);
    rig.smmu.inject_event(&record);
    let (_, seen) = collect_events(&mut driver, 1);
    assert!(matches!(
        seen[..],
        [EventIntake::Undecodable { record: r, .. }] if r == record
    ));
}

#[test]
fn a_prod_beyond_the_queue_is_an_error_and_nothing_is_consumed() {
    let (rig, mut driver) = qemu();
    rig.smmu.inject_event(&event(1));
    for raw in [0x10, 0x7fff_ffff, 0x8000_0100] {
        rig.smmu.poke32(offset::EVTQ_PROD, raw);
        let mut calls = 0;
        assert_eq!(
            driver.drain_events(8, |_| calls += 1),
            Err(Error::CorruptPointer {
                queue: crate::queue::QueueKind::Event,
                raw
            })
        );
        assert_eq!(calls, 0);
        assert_eq!(rig.smmu.peek32(offset::EVTQ_CONS), 0);
    }
}

#[test]
fn page_requests_drain_with_stop_markers_and_overflow() {
    let rig = Rig::new(WITH_PRI);
    let mut driver = rig.driver();
    let request = |prg: u16, last: bool, read: bool| PageRequest {
        sid: StreamId(8),
        ssid: Some(SubstreamId(3)),
        privileged: false,
        exec: false,
        read,
        write: false,
        last,
        prg_index: prg,
        addr: Iova(0x8000),
    };
    let requests = [
        request(1, false, true),
        request(1, true, true),
        request(0, true, false),
    ];
    for r in &requests {
        assert!(rig.smmu.inject_page_request(&r.encode()));
    }
    let mut seen = Vec::new();
    let report = driver.drain_page_requests(10, |r| seen.push(r)).unwrap();
    assert_eq!(report.delivered, 3);
    let decoded: Vec<PriIntake> = requests.iter().map(|r| PriIntake::Request(*r)).collect();
    assert_eq!(seen, decoded);
    assert!(matches!(seen[2], PriIntake::Request(r) if r.is_stop_marker()));

    for i in 0..9 {
        rig.smmu
            .inject_page_request(&request(i, true, true).encode());
    }
    seen.clear();
    let report = driver.drain_page_requests(2, |r| seen.push(r)).unwrap();
    assert_eq!(
        (report.overflowed, report.delivered, report.remaining),
        (true, 2, 6)
    );
    assert_eq!(seen[0], PriIntake::Overflowed);
    seen.clear();
    driver.drain_page_requests(10, |r| seen.push(r)).unwrap();
    assert!(!seen.contains(&PriIntake::Overflowed));
    assert_eq!(seen.len(), 6);
}

#[test]
fn page_requests_without_a_pri_queue_are_an_error() {
    let (_rig, mut driver) = qemu();
    assert_eq!(
        driver.drain_page_requests(1, |_| {}),
        Err(Error::NoPriQueue)
    );
}

// ---------------------------------------------------------------------------------------------
// Global errors

#[test]
fn each_global_error_is_reported_once_and_acknowledged() {
    let (rig, mut driver) = qemu();
    let raised = Gerror::default()
        .with_evtq_abt_err(true)
        .with_priq_abt_err(true)
        .with_msi_cmdq_abt_err(true)
        .with_msi_evtq_abt_err(true)
        .with_msi_priq_abt_err(true)
        .with_msi_gerror_abt_err(true)
        .with_sfm_err(true);
    rig.smmu.raise_global_errors(raised);
    let mut seen = Vec::new();
    let active = driver.handle_global_errors(|e| seen.push(e)).unwrap();
    assert_eq!(active, raised);
    assert_eq!(
        seen,
        [
            GlobalError::EventQueueAbort,
            GlobalError::PriQueueAbort,
            GlobalError::CommandSyncMsiAbort,
            GlobalError::EventQueueMsiAbort,
            GlobalError::PriQueueMsiAbort,
            GlobalError::GlobalErrorMsiAbort,
            GlobalError::ServiceFailureMode,
        ]
    );
    assert!(rig.active_errors().is_clear());
    seen.clear();
    assert!(
        driver
            .handle_global_errors(|e| seen.push(e))
            .unwrap()
            .is_clear()
    );
    assert!(seen.is_empty());
    // Raised again after acknowledgement: active again (GERROR toggles back).
    rig.smmu
        .raise_global_errors(Gerror::default().with_evtq_abt_err(true));
    assert!(driver.active_global_errors().evtq_abt_err());
}

// ---------------------------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_sequence_of_batches_completes_in_order(sizes in proptest::collection::vec(0usize..40, 1..12)) {
        let (rig, mut driver) = qemu();
        let start = rig.smmu.consumed().len();
        let mut expected = Vec::new();
        let mut vmid = 0u16;
        for size in sizes {
            let batch: Vec<Cmd> = (0..size).map(|_| { vmid += 1; tlbi(vmid) }).collect();
            driver.submit_and_sync(&batch).unwrap();
            expected.extend(batch.iter().map(Cmd::encode));
            expected.push(driver_sync_command());
        }
        prop_assert_eq!(&rig.smmu.consumed()[start..], &expected[..]);
    }

    #[test]
    fn no_event_prod_value_makes_the_drain_panic_or_overrun(raw in any::<u32>(), budget in 0u32..20) {
        let (rig, mut driver) = qemu();
        rig.smmu.poke32(offset::EVTQ_PROD, raw);
        let mut calls = 0u32;
        if let Ok(report) = driver.drain_events(budget, |_| calls += 1) {
            prop_assert!(report.delivered <= budget);
            prop_assert!(report.delivered + report.remaining <= 8);
            prop_assert_eq!(calls, report.delivered + u32::from(report.overflowed));
        }
    }

    #[test]
    fn no_cmdq_cons_value_makes_a_sync_panic(raw in any::<u32>()) {
        let (rig, mut driver) = qemu();
        rig.smmu.set_behaviour(FakeBehaviour { consume_commands: false, ..FakeBehaviour::default() });
        rig.smmu.poke32(offset::CMDQ_CONS, raw);
        let _ = driver.sync();
    }
}
