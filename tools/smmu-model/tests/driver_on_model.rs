//! The real `smmu` driver, unchanged, on the model: bring-up, commands, events.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use smmu::driver::{Driver, DriverConfig, DriverMemory, EventIntake};
use smmu::hardware::RegisterAccess;
use smmu::registers::offset;
use smmu_model::{ModelConfig, ModelPlatform, ModelRegion, PhysicalMemory, SmmuModel};

const RAM: u64 = 0x4000_0000;

fn bring_up(config: ModelConfig) -> (SmmuModel, Driver<SmmuModel, ModelRegion, ModelPlatform>) {
    let memory = PhysicalMemory::with_ram(RAM, 64 << 20);
    let model = SmmuModel::new(config, &memory);
    let regions = DriverMemory {
        stream_table_l1: memory.region(RAM, 2048),
        stream_table_l2_pool: memory.region(RAM + 0x10_0000, 4 * 16384),
        command_queue: memory.region(RAM + 0x20_0000, 4096),
        event_queue: memory.region(RAM + 0x21_0000, 32 * 64),
        pri_queue: Some(memory.region(RAM + 0x22_0000, 16 * 64)),
    };
    let driver = Driver::new(
        model.clone(),
        regions,
        ModelPlatform::default(),
        DriverConfig::DEFAULT,
    )
    .expect("the driver brings the model up");
    (model, driver)
}

#[test]
fn the_driver_brings_up_both_presets() {
    for config in [ModelConfig::qemu_virt(), ModelConfig::full()] {
        let (model, driver) = bring_up(config);
        let cr0 = model.read32(offset::CR0ACK);
        assert_eq!(cr0 & 0b1101, 0b1101, "SMMUEN, EVENTQEN, CMDQEN");
        assert_eq!(cr0 & 0b10 != 0, config.features.pri, "PRIQEN with PRI only");
        assert_eq!(
            model.read32(offset::GBPA) & (1 << 20),
            1 << 20,
            "GBPA abort"
        );
        assert_eq!(
            model.pending_invalidations(),
            0,
            "reset's invalidations were synced"
        );
        assert_eq!(driver.pri_queue_entries().is_some(), config.features.pri);
    }
}

#[test]
fn an_unassigned_stream_aborts_with_c_bad_streamid_or_c_bad_ste() {
    let (model, mut driver) = bring_up(ModelConfig::qemu_virt());
    let function = model.attach_function(8, smmu_model::FunctionConfig::EDU_LIKE);
    let report = function.dma_write(None, RAM, &[1; 8]);
    assert_eq!(report.aborted, 1);
    // The span of stream 8 has no level-2 table: C_BAD_STREAMID (CR2.RECINVSID is set).
    let mut events = Vec::new();
    driver.drain_events(16, |e| events.push(e)).unwrap();
    assert!(
        matches!(events.as_slice(), [EventIntake::Event(e)] if e.id == smmu::event::EventId::CBadStreamid)
    );
    // A level-2 table for the span: V=0 STEs, C_BAD_STE.
    let invalid = smmu::entry::install::PhysicalSte::check(smmu::ste::Ste::INVALID).unwrap();
    driver.install_ste(smmu::StreamId(8), &invalid).unwrap();
    let _ = function.dma_write(None, RAM, &[1; 8]);
    events.clear();
    driver.drain_events(16, |e| events.push(e)).unwrap();
    assert!(
        matches!(events.as_slice(), [EventIntake::Event(e)] if e.id == smmu::event::EventId::CBadSte)
    );
}

/// The driver only builds two-level stream tables; a linear one, programmed by hand, works the
/// same way, and a stream beyond LOG2SIZE is C_BAD_STREAMID.
#[test]
fn a_linear_stream_table_programmed_by_hand() {
    let (mut model, mut driver) = bring_up(ModelConfig::qemu_virt());
    let memory = model.memory();
    let table = RAM + 0x30_0000;
    // STE 8: bypass.
    memory.write_u64(table + 8 * 64, 1 | (4 << 1)).unwrap();
    model.write32(offset::CR0, model.read32(offset::CR0) & !1);
    model.write64(offset::STRTAB_BASE, table);
    model.write32(offset::STRTAB_BASE_CFG, 4); // Linear, 16 streams.
    driver
        .submit_and_sync(&[smmu::command::Cmd::cfgi_all()])
        .unwrap();
    model.write32(offset::CR0, model.read32(offset::CR0) | 1);
    let function = model.attach_function(8, smmu_model::FunctionConfig::EDU_LIKE);
    let report = function.dma_write(None, RAM + 0x40_0000, &[7; 8]);
    assert!(report.all_completed());
    assert_eq!(memory.read_u64(RAM + 0x40_0000), Ok(0x0707_0707_0707_0707));
    let far = model.attach_function(16, smmu_model::FunctionConfig::EDU_LIKE);
    assert_eq!(far.dma_write(None, RAM, &[1; 8]).aborted, 1);
    let mut events = Vec::new();
    driver.drain_events(16, |e| events.push(e)).unwrap();
    assert!(matches!(events.as_slice(), [EventIntake::Event(e)]
        if e.id == smmu::event::EventId::CBadStreamid && e.sid == smmu::StreamId(16)));
}
