//! The output queues' rules (IHI 0070 7.2, 7.4, chapter 8) on the model, below the level the
//! conformance suite can see: a disabled queue, the PRI queue's overflow and unavailability
//! auto-responses, stall events that wait for room, and interrupt signalling.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use smmu::PhysAddr;
use smmu::cd::Cd;
use smmu::command::Cmd;
use smmu::driver::EventIntake;
use smmu::entry::make::make_stage1_ste;
use smmu::hardware::RegisterAccess;
use smmu::registers::offset;
use smmu::ste::{Eats, S1Dss, S1Fmt};
use smmu_conformance::suite::{ids, page};
use smmu_conformance::tables::Addressing;
use smmu_conformance::{Harness, Suite};
use smmu_model::trace::{PageRequestFate, ResponseCode, ResponseSource};
use smmu_model::{ModelConfig, ModelHarness, PageRequest, ResponseHandled, SmmuModel};

/// A stage-1 stream (full preset) with PASID 1's CD mapping nothing, EATS and PPAR set, and
/// `cd` adjusted; CD.S = 1 needs S1STALLD clear, which `stall` does.
fn setup(harness: &mut ModelHarness, adjust: impl Fn(&mut Cd), stall: bool) {
    let mut s = Suite::new(harness).unwrap();
    let table = s.allocate().unwrap();
    let root = s.new_table().unwrap();
    let mut cd = s.make_cd(root, ids::ASID, Addressing::Physical).unwrap();
    adjust(&mut cd);
    s.write_cd_words(table, 1, &cd);
    let features = *s.driver().features();
    let context = s
        .context_table(PhysAddr(s.pa(table)), S1Fmt::Linear, 1, S1Dss::Terminate)
        .unwrap();
    let mut ste = make_stage1_ste(&context, ids::VMID_STAGE1, &features).unwrap();
    ste.set_eats(Eats::Translate);
    ste.set_ppar(true);
    ste.set_s1stalld(!stall);
    s.install(&ste).unwrap();
}

fn write32(model: &SmmuModel, register: smmu::registers::RegisterOffset, value: u32) {
    let mut handle = model.clone();
    handle.write32(register, value);
}

#[test]
fn events_are_discarded_without_overflow_while_the_event_queue_is_disabled() {
    let mut harness = ModelHarness::new(ModelConfig::full()).unwrap();
    setup(&mut harness, |_| {}, false);
    let model = harness.model().clone();
    let function = harness.function().clone();
    let cr0 = model.peek32(0x20);
    write32(&model, offset::CR0, cr0 & !(1 << 2));
    let _ = function.dma_write(
        Some(1),
        Suite::<ModelHarness>::va(page::DESTINATION),
        &[0; 8],
    );
    write32(&model, offset::CR0, cr0);
    let mut seen = Vec::new();
    harness.driver().drain_events(64, |e| seen.push(e)).unwrap();
    assert!(seen.is_empty(), "nothing recorded, no overflow: {seen:?}");
}

#[test]
fn page_requests_are_answered_response_failure_while_the_pri_queue_is_disabled() {
    let mut harness = ModelHarness::new(ModelConfig::full()).unwrap();
    setup(&mut harness, |_| {}, false);
    let model = harness.model().clone();
    let function = harness.function().clone();
    let cr0 = model.peek32(0x20);
    write32(&model, offset::CR0, cr0 & !(1 << 1));
    let page = PageRequest {
        address: 0x1000,
        read: true,
        ..PageRequest::default()
    };
    function.page_request_group(Some(1), &[page]).unwrap();
    let groups = function.outstanding_groups();
    assert_eq!(
        groups[0].fates,
        [PageRequestFate::AutoResponded(
            ResponseCode::ResponseFailure
        )]
    );
    let responses = function.pending_responses();
    assert_eq!(responses.len(), 1);
    assert_eq!(responses[0].source, ResponseSource::QueueUnavailable);
    assert_eq!(
        responses[0].ssid, None,
        "no PASID on a queue-unavailable response"
    );
    // A stop marker gets nothing.
    assert_eq!(function.stop_marker(1), Ok(PageRequestFate::Discarded));
    assert_eq!(function.pending_responses().len(), 1);
    // The function, which requires the PASID, finds no group for a response without one, but
    // a Response Failure stops its PRI anyway.
    let handled = function.handle_responses();
    assert!(matches!(
        handled.as_slice(),
        [ResponseHandled::PriStopped { group: None, .. }]
    ));
    assert!(function.pri_stopped());
    write32(&model, offset::CR0, cr0);
}

#[test]
fn a_stall_event_waits_for_room_instead_of_overflowing() {
    // More stall resources than event queue entries.
    let features = smmu_model::Features {
        stall_max: 128,
        ..smmu_model::Features::FULL
    };
    let mut harness = ModelHarness::new(ModelConfig::full().with_features(features)).unwrap();
    setup(&mut harness, |cd| cd.set_s(true), true);
    let model = harness.model().clone();
    let function = harness.function().clone();
    let entries = harness.driver().event_queue_entries();
    // Fill the event queue with stall events (each a separate 8-byte write).
    let va = Suite::<ModelHarness>::va(page::DESTINATION);
    for i in 0..entries {
        let report = function.dma_write(Some(1), va + u64::from(i) * 8, &[0; 8]);
        assert_eq!(report.stalled, 1);
    }
    let prod = model.peek32(0x1_00A8);
    // One more: the queue is full, but a stall event is not discarded and is no overflow.
    let report = function.dma_write(Some(1), va + 0x800, &[0; 8]);
    assert_eq!(report.stalled, 1);
    assert_eq!(
        model.peek32(0x1_00A8),
        prod,
        "PROD unchanged, OVFLG not toggled"
    );
    let mut stags = Vec::new();
    harness
        .driver()
        .drain_events(256, |e| {
            if let EventIntake::Event(e) = e {
                assert!(e.stall);
                stags.push(e.stag);
            }
        })
        .unwrap();
    assert_eq!(u32::try_from(stags.len()).unwrap(), entries);
    // Draining made room: the waiting record was written when CONS moved.
    harness
        .driver()
        .drain_events(256, |e| {
            if let EventIntake::Event(e) = e {
                stags.push(e.stag);
            }
        })
        .unwrap();
    assert_eq!(
        u32::try_from(stags.len()).unwrap(),
        entries + 1,
        "the waiting stall event arrived"
    );
    // Every stalled transaction is still held; terminate them all.
    let stream = harness.stream();
    harness
        .driver()
        .submit_and_sync(&[Cmd::StallTerm { sid: stream }])
        .unwrap();
    let late = function.take_late_completions();
    assert_eq!(late.len(), stags.len());
}

#[test]
fn queue_interrupts_are_signalled_when_enabled() {
    let mut harness = ModelHarness::new(ModelConfig::qemu_virt()).unwrap();
    let model = harness.model().clone();
    let before = model.signals();
    let function = harness.function().clone();
    let _ = function.dma_write(None, 0x1000, &[0; 8]);
    assert_eq!(model.signals().event_queue, before.event_queue + 1);
    harness
        .driver()
        .submit(&[Cmd::Sync {
            completion: smmu::command::SyncCompletion::Irq,
            msh: 0,
            msi_attr: 0,
            msi_data: 0,
            msi_addr: PhysAddr(0),
        }])
        .unwrap();
    assert_eq!(model.signals().sync_interrupt, before.sync_interrupt + 1);
    assert_eq!(
        model.signals().msi_writes,
        0,
        "QEMU's feature set has no MSIs"
    );
}

/// The driver numbers PRI queue entries in the order the SMMU wrote them, across drains and
/// wraps, and a position read between two writes separates them; an overflow is reported with
/// the position the SMMU was writing at (nothing after it was written).
#[test]
fn pri_queue_positions_count_every_entry_written_and_mark_the_overflow_point() {
    let mut harness = ModelHarness::new(ModelConfig::full()).unwrap();
    setup(&mut harness, |_| {}, false);
    let function = harness.function().clone();
    function.reconfigure(|c| c.respect_credits = false);
    let page = PageRequest {
        address: 0x1000,
        read: true,
        ..PageRequest::default()
    };
    let driver = harness.driver();
    assert_eq!(driver.pri_queue_position().unwrap().0, 0);
    let mut seen = Vec::new();
    // 24 single-request groups through a 16-entry queue, drained in between: positions
    // continue across the wrap.
    for round in 0..3u64 {
        for _ in 0..8 {
            function.page_request_group(Some(1), &[page]).unwrap();
        }
        assert_eq!(driver.pri_queue_position().unwrap().0, round * 8 + 8);
        driver
            .drain_page_requests_at(64, |position, _| seen.push(position.0))
            .unwrap();
    }
    assert_eq!(seen, (0..24).collect::<Vec<_>>());
    // Fill the queue (16) and overflow it: the overflow is at position 24 + 16.
    for _ in 0..20 {
        let _ = function.page_request_group(Some(1), &[page]);
    }
    let mut intake = Vec::new();
    driver
        .drain_page_requests_at(64, |position, item| intake.push((position.0, item)))
        .unwrap();
    assert_eq!(intake[0], (40, smmu::driver::PriIntake::Overflowed));
    let positions: Vec<u64> = intake[1..].iter().map(|(p, _)| *p).collect();
    assert_eq!(positions, (24..40).collect::<Vec<_>>());
    assert_eq!(driver.pri_queue_position().unwrap().0, 40);
}

/// A group can be sent in two parts: its first requests, and later (or never) its Last one.
#[test]
fn a_group_begun_and_ended_later_reaches_the_queue_in_two_parts() {
    let mut harness = ModelHarness::new(ModelConfig::full()).unwrap();
    setup(&mut harness, |_| {}, false);
    let function = harness.function().clone();
    let page = PageRequest {
        address: 0x1000,
        read: true,
        ..PageRequest::default()
    };
    let index = function.begin_page_request_group(Some(1), &[page]).unwrap();
    let mut seen = Vec::new();
    let driver = harness.driver();
    driver
        .drain_page_requests(8, |intake| seen.push(intake))
        .unwrap();
    assert!(matches!(seen.as_slice(),
        [smmu::driver::PriIntake::Request(r)] if !r.last && r.prg_index == index));
    assert_eq!(function.outstanding_groups().len(), 1);
    let fate = function.end_page_request_group(index, page).unwrap();
    assert!(matches!(fate, PageRequestFate::Queued { .. }));
    seen.clear();
    driver
        .drain_page_requests(8, |intake| seen.push(intake))
        .unwrap();
    assert!(matches!(seen.as_slice(),
        [smmu::driver::PriIntake::Request(r)] if r.last && r.prg_index == index));
    assert_eq!(function.outstanding_groups()[0].pages.len(), 2);
}
