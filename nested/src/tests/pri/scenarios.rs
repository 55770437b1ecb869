//! Scripted edges of PRI forwarding and the PASID lifecycle, each on a fresh [`World`].

use smmu::command::{Cmd, PriResponse};
use smmu::registers::offset as o;
use smmu::{StreamId, SubstreamId};
use smmu_model::trace::{ResponseCode, ResponseSource, TraceEvent, crossings};
use smmu_model::{AtsCompletion, PageRequest, ResponseHandled};

use super::*;
use crate::pri::{PriRefusal, ResponseDrop};

const PASID: u32 = 1;

fn page(write: bool) -> PageRequest {
    PageRequest {
        address: VA,
        read: true,
        write,
        ..PageRequest::default()
    }
}

/// A world with the stream attached (4 CDs) and PASID 1 live in address space A (data page 0).
fn live_world(config: WorldConfig) -> World {
    let mut world = World::new(config);
    let root = world.address_space(0);
    world.guest_write_cd(PASID, Some(World::cd(1, root)));
    world.guest_attach(2);
    assert_eq!(world.vsmmu.pasids().live, 1, "PASID 1 is live");
    world
}

fn generation(world: &World) -> smmu_model::trace::Generation {
    world
        .model
        .live_generation(PSID.0, Some(PASID))
        .expect("PASID 1 has an address space")
}

#[test]
fn pri_is_advertised_only_where_the_physical_smmu_offers_its_pri_queue() {
    let mut with = World::new(WorldConfig::default());
    assert_ne!(with.read32(o::IDR0) & 1 << 16, 0, "IDR0.PRI");
    assert_ne!(with.read32(o::IDR1) >> 6 & 0x1f, 0, "SSIDSIZE");
    assert_ne!(with.read32(o::IDR1) >> 11 & 0x1f, 0, "PRIQS");
    let mut without = World::new(WorldConfig {
        offer_pri: false,
        ..WorldConfig::default()
    });
    assert_eq!(without.read32(o::IDR0) & 1 << 16, 0);
    assert_eq!(without.read32(o::IDR1) >> 11 & 0x1f, 0);
    assert_eq!(without.read32(o::PRIQ_PROD), 0, "RES0 without PRI");
    assert_eq!(without.read32(o::CR0) & 0b10, 0, "PRIQEN is RES0");
}

#[test]
fn a_group_reaches_the_guest_with_its_virtual_stream_and_only_its_answer_reaches_the_device() {
    let mut world = live_world(WorldConfig::default());
    let sent_under = generation(&world);
    let prg = world
        .function
        .page_request_group(Some(PASID), &[page(false), page(true)])
        .unwrap();
    assert_eq!(
        world.hyp_drain(),
        [PriDisposition::Forwarded, PriDisposition::Forwarded]
    );
    let read = world.guest_read_priq();
    assert_eq!(read.len(), 2);
    assert!(
        read.iter().all(|r| r.sid == StreamId(VSID.0)),
        "virtual stream ID"
    );
    assert_eq!(read[1].ssid, Some(SubstreamId(PASID)));
    assert!(read[1].last && !read[0].last);
    world.guest_answer(None, PriResponse::Success);
    assert_eq!(
        world.physical_responses(),
        [Cmd::PriResp {
            sid: PSID,
            ssid: Some(SubstreamId(PASID)),
            prg_index: prg,
            response: PriResponse::Success,
        }],
        "the physical stream ID, once"
    );
    let handled = world.function.handle_responses();
    let [ResponseHandled::Retried { completions, .. }] = handled.as_slice() else {
        panic!("the device retries: {handled:?}");
    };

    assert!(completions.iter().all(|c| matches!(
        c,
        AtsCompletion::Success { read: true, generation: Some(g), .. } if *g == sent_under
    )));
    world.take_trace();
    assert!(crossings(&world.trace).is_empty());
    let counters = world.vsmmu.counters();
    assert_eq!(counters.pri_requests_forwarded, 2);
    assert_eq!(counters.pri_responses_forwarded, 1);
}

/// The seeds' case (the 2017 thread): a page request is in the physical PRI queue when the
/// guest unbinds PASID 1 and at once binds it to another address space. The request is
/// answered InvalidRequest by the hypervisor (the PASID is parked when it is taken from the
/// queue), the new CD goes live only once the queue has been drained past the teardown, and
/// the device never retries the old request in the new address space.
#[test]
fn unbind_between_enqueue_and_dequeue_then_immediate_rebind_never_resolves_in_the_new_space() {
    let mut world = live_world(WorldConfig::default());
    let first = generation(&world);
    let prg = world
        .function
        .page_request_group(Some(PASID), &[page(true)])
        .unwrap();
    // Unbind, then rebind at once, before hyp has drained the request.
    world.guest_write_cd(PASID, None);
    let root_b = world.address_space(1);
    world.guest_write_cd(PASID, Some(World::cd(2, root_b)));
    assert_eq!(world.vsmmu.pasids().parked, 1, "parked, not reused");
    assert_eq!(world.model.live_generation(PSID.0, Some(PASID)), None);
    assert_eq!(world.vsmmu.counters().pasid_refusals, 1);
    // hyp drains: the request is the old address space's.
    assert_eq!(
        world.hyp_drain(),
        [PriDisposition::Answered(PriRefusal::PasidParked)]
    );
    assert_eq!(
        world.physical_responses(),
        [Cmd::PriResp {
            sid: PSID,
            ssid: Some(SubstreamId(PASID)),
            prg_index: prg,
            response: PriResponse::InvalidRequest,
        }]
    );
    // Drained past the teardown point: the PASID is free, and the guest's new CD went live.
    let counters = world.vsmmu.counters();
    assert_eq!((counters.pasid_frees, counters.pasid_reuses), (1, 1));
    assert_eq!(world.vsmmu.pasids().live, 1);
    let second = generation(&world);
    assert_ne!(first, second);
    let handled = world.function.handle_responses();
    assert!(
        matches!(handled.as_slice(), [ResponseHandled::GaveUp { .. }]),
        "the device gave up on the old request: {handled:?}"
    );
    assert!(world.guest_read_priq().is_empty(), "the guest never saw it");
    // A request in the new address space is forwarded and resolved there.
    world
        .function
        .page_request_group(Some(PASID), &[page(true)])
        .unwrap();
    assert_eq!(world.hyp_drain(), [PriDisposition::Forwarded]);
    world.guest_read_priq();
    world.guest_answer(None, PriResponse::Success);
    for handled in world.function.handle_responses() {
        assert_eq!(handled.crossing(), None);
        let ResponseHandled::Retried { completions, .. } = handled else {
            panic!("retried");
        };
        assert!(matches!(
            completions[0],
            AtsCompletion::Success { generation: Some(g), .. } if g == second
        ));
    }
    world.take_trace();
    assert!(crossings(&world.trace).is_empty());
    // The Invalid Request went out while the PASID had no address space.
    assert!(world.trace.iter().any(|e| matches!(
        e,
        TraceEvent::PrgResponse {
            code: ResponseCode::InvalidRequest,
            source: ResponseSource::Command,
            live: None,
            ..
        }
    )));
}

fn response(prg_index: u16, ssid: Option<u32>) -> Cmd {
    Cmd::PriResp {
        sid: StreamId(VSID.0),
        ssid: ssid.map(SubstreamId),
        prg_index,
        response: PriResponse::Success,
    }
}

#[test]
fn duplicate_forged_and_premature_responses_are_dropped_and_counted_by_cause() {
    let mut world = live_world(WorldConfig::default());
    let prg = world
        .function
        .page_request_group(Some(PASID), &[page(true)])
        .unwrap();
    world.hyp_drain();
    world.guest_read_priq();
    world.submit_sync(&[response(prg, Some(PASID))]);
    // The same answer again; one for a group never sent; one naming another stream; one
    // without the group's PASID.
    world.submit_sync(&[response(prg, Some(PASID))]);
    world.submit_sync(&[response(0x1ff, Some(PASID))]);
    world.submit_sync(&[Cmd::PriResp {
        sid: StreamId(9),
        ssid: Some(SubstreamId(PASID)),
        prg_index: prg,
        response: PriResponse::Success,
    }]);
    world.submit_sync(&[response(prg, None)]);
    // A group whose Last has not arrived yet.
    let open = world
        .function
        .begin_page_request_group(Some(PASID), &[page(false)])
        .unwrap();
    world.hyp_drain();
    world.guest_read_priq();
    world.submit_sync(&[response(open, Some(PASID))]);
    assert_eq!(world.physical_responses().len(), 1, "only the first answer");
    let counters = world.vsmmu.counters();
    assert_eq!(counters.pri_responses_forwarded, 1);
    let dropped = |cause: ResponseDrop| counters.pri_responses_dropped[cause.index()];
    assert_eq!(dropped(ResponseDrop::Duplicate), 1);
    assert_eq!(
        dropped(ResponseDrop::UnknownGroup),
        2,
        "forged, and without its PASID"
    );
    assert_eq!(dropped(ResponseDrop::StreamNotOwned), 1);
    assert_eq!(dropped(ResponseDrop::GroupIncomplete), 1);
    // The device saw one response, for its group.
    let handled = world.function.handle_responses();
    assert!(matches!(
        handled.as_slice(),
        [ResponseHandled::Retried { .. }]
    ));
}

/// The physical PRI queue (two entries) overflows in the middle of a group: its Last is
/// answered Success by the SMMU. The vSMMU forwards the two requests that were queued, then,
/// drained to the overflow point, discards the group and sets the guest's overflow flag; the
/// guest drops its partial group, and an answer to it is dropped as a duplicate.
#[test]
fn a_physical_overflow_in_the_middle_of_a_group_discards_it_and_tells_the_guest() {
    let mut world = live_world(WorldConfig {
        physical_priq: 2,
        ..WorldConfig::default()
    });
    world.function.reconfigure(|c| c.respect_credits = false);
    let prg = world
        .function
        .page_request_group(Some(PASID), &[page(false), page(false), page(true)])
        .unwrap();
    let dispositions = world.hyp_drain();
    assert_eq!(
        dispositions,
        [
            PriDisposition::Overflow,
            PriDisposition::Forwarded,
            PriDisposition::Forwarded
        ]
    );
    let counters = world.vsmmu.counters().clone();
    assert_eq!(counters.pri_physical_overflows, 1);
    assert_eq!(counters.pri_groups_discarded_by_overflow, 1);
    assert_eq!(counters.pri_guest_overflows, 1);
    let prod = world.read32(o::PRIQ_PROD);
    assert_ne!(
        prod & 1 << 31,
        world.read32(o::PRIQ_CONS) & 1 << 31,
        "OVFLG"
    );
    let read = world.guest_read_priq();
    assert_eq!(read.len(), 2);
    assert!(world.guest_partial.is_empty() && world.guest_pending.is_empty());
    world.submit_sync(&[response(prg, Some(PASID))]);
    assert_eq!(
        world.vsmmu.counters().pri_responses_dropped[ResponseDrop::Duplicate.index()],
        1
    );
    assert!(
        world.physical_responses().is_empty(),
        "the SMMU answered it"
    );
    let handled = world.function.handle_responses();
    assert!(
        matches!(handled.as_slice(), [ResponseHandled::Retried { response, .. }]
            if response.source == ResponseSource::Overflow),
        "{handled:?}"
    );
    // Normal service resumes.
    world.function.reconfigure(|c| c.respect_credits = true);
    world
        .function
        .page_request_group(Some(PASID), &[page(true)])
        .unwrap();
    assert_eq!(world.hyp_drain(), [PriDisposition::Forwarded]);
    world.take_trace();
    assert!(crossings(&world.trace).is_empty());
}

/// The guest's own PRI queue (two entries) overflows: a Last request that does not fit is
/// answered Success by the vSMMU (with its PASID), requests are refused while the overflow
/// is not acknowledged, and forwarding resumes once it is.
#[test]
fn the_guests_queue_overflows_as_the_architecture_says() {
    let mut world = live_world(WorldConfig {
        guest_priq_log2: 1,
        ..WorldConfig::default()
    });
    let mut prgs = Vec::new();
    for _ in 0..4 {
        prgs.push(
            world
                .function
                .page_request_group(Some(PASID), &[page(false)])
                .unwrap(),
        );
    }
    assert_eq!(
        world.hyp_drain(),
        [
            PriDisposition::Forwarded,
            PriDisposition::Forwarded,
            PriDisposition::Answered(PriRefusal::GuestQueueOverflow),
            PriDisposition::Answered(PriRefusal::GuestQueueOverflow),
        ]
    );
    assert_eq!(
        world.vsmmu.counters().pri_guest_overflows,
        1,
        "entered once"
    );
    let auto: Vec<Cmd> = prgs[2..]
        .iter()
        .map(|&prg_index| Cmd::PriResp {
            sid: PSID,
            ssid: Some(SubstreamId(PASID)),
            prg_index,
            response: PriResponse::Success,
        })
        .collect();
    assert_eq!(world.physical_responses(), auto);
    assert_eq!(world.guest_read_priq().len(), 2);
    world.guest_answer(None, PriResponse::Success);
    world
        .function
        .page_request_group(Some(PASID), &[page(false)])
        .unwrap();
    assert_eq!(world.hyp_drain(), [PriDisposition::Forwarded]);
}

#[test]
fn a_disabled_guest_queue_answers_response_failure_without_a_pasid() {
    let mut world = live_world(WorldConfig::default());
    world.write32(o::CR0, 0b1101);
    let prg = world
        .function
        .page_request_group(Some(PASID), &[page(false)])
        .unwrap();
    assert_eq!(
        world.hyp_drain(),
        [PriDisposition::Answered(PriRefusal::GuestQueueDisabled)]
    );
    assert_eq!(
        world.physical_responses(),
        [Cmd::PriResp {
            sid: PSID,
            ssid: None,
            prg_index: prg,
            response: PriResponse::ResponseFailure,
        }]
    );
}

/// A device that never sends a stop marker: the parked PASID waits for the physical queue to
/// be drained past its teardown point, even when what is queued is another PASID's.
#[test]
fn without_a_stop_marker_a_parked_pasid_waits_for_the_drain_past_its_teardown() {
    let mut world = live_world(WorldConfig::default());
    let root = world.address_space(2);
    world.guest_write_cd(2, Some(World::cd(3, root)));
    world
        .function
        .page_request_group(Some(2), &[page(false)])
        .unwrap();
    world.guest_write_cd(PASID, None);
    let root_b = world.address_space(1);
    world.guest_write_cd(PASID, Some(World::cd(1, root_b)));
    assert_eq!(
        world.vsmmu.pasids().parked,
        1,
        "PASID 2's request is still queued"
    );
    assert_eq!(world.hyp_drain(), [PriDisposition::Forwarded]);
    assert_eq!(
        world.vsmmu.pasids(),
        crate::vsmmu::PasidSummary { live: 2, parked: 0 }
    );
    assert_eq!(world.vsmmu.counters().pasid_reuses, 1);
}

/// A device that leaves a group open and never sends its stop marker: the PASID never
/// quiesces, so it is never reused. The guest's new CD stays out of the shadow and its DMA
/// gets C_BAD_CD, as for an invalid CD; nothing waits at EL2. A late stop marker ends it.
#[test]
fn a_pasid_that_never_quiesces_is_never_reused_and_the_guest_sees_c_bad_cd() {
    let mut world = live_world(WorldConfig::default());
    let open = world
        .function
        .begin_page_request_group(Some(PASID), &[page(false)])
        .unwrap();
    assert_eq!(world.hyp_drain(), [PriDisposition::Forwarded]);
    world.guest_write_cd(PASID, None);
    let root_b = world.address_space(1);
    world.guest_write_cd(PASID, Some(World::cd(2, root_b)));
    for _ in 0..8 {
        world.hyp_drain();
        assert!(!world.vsmmu.run_pending(), "no work left to spin on");
        world.submit_sync(&[Cmd::CfgiCd {
            sid: StreamId(VSID.0),
            ssid: SubstreamId(PASID),
            leaf: true,
        }]);
    }
    assert_eq!(world.vsmmu.pasids().parked, 1);
    assert_eq!(world.vsmmu.counters().pasid_reuses, 0);
    assert!(world.vsmmu.counters().pasid_refusals >= 9);
    // The guest's DMA on the PASID: aborted, C_BAD_CD with its virtual stream.
    let report = world.function.dma_write(Some(PASID), VA, &[7; 8]);
    assert_eq!(report.aborted, 1);
    let events = world.guest_events();
    assert!(
        events.iter().any(|e| e.id == smmu::event::EventId::CBadCd
            && e.sid == StreamId(VSID.0)
            && e.ssid == Some(SubstreamId(PASID))),
        "{events:?}"
    );
    // Its answer to the open group, late, goes nowhere.
    world.submit_sync(&[response(open, Some(PASID))]);
    assert!(world.physical_responses().is_empty());
    // The device finally sends its stop marker: the PASID quiesces and the CD goes live.
    world.function.stop_marker(PASID).unwrap();
    assert_eq!(world.hyp_drain(), [PriDisposition::StopMarker]);
    assert_eq!(world.vsmmu.pasids().live, 1);
    assert!(
        world
            .function
            .dma_write(Some(PASID), VA, &[7; 8])
            .all_completed()
    );
}

/// Stop-marker shutdown (PCIe "send a stop marker and forget"): the device sends a group and
/// its stop marker, the guest unbinds before hyp drained them. The group is answered
/// InvalidRequest by the hypervisor, the stop marker by no one, and the PASID quiesces on it.
#[test]
fn a_stop_marker_is_never_answered_and_quiesces_the_pasid() {
    let mut world = live_world(WorldConfig::default());
    // A stop marker while live reaches the guest; an answer to it goes nowhere.
    world.function.stop_marker(PASID).unwrap();
    assert_eq!(world.hyp_drain(), [PriDisposition::StopMarker]);
    let read = world.guest_read_priq();
    assert!(read.len() == 1 && read[0].stop_marker);
    world.submit_sync(&[response(0, Some(PASID))]);
    assert!(world.physical_responses().is_empty());

    let prg = world
        .function
        .page_request_group(Some(PASID), &[page(true)])
        .unwrap();
    world.function.stop_marker(PASID).unwrap();
    world.guest_write_cd(PASID, None);
    assert_eq!(world.vsmmu.pasids().parked, 1);
    assert_eq!(
        world.hyp_drain(),
        [
            PriDisposition::Answered(PriRefusal::PasidParked),
            PriDisposition::StopMarker
        ]
    );
    assert_eq!(world.vsmmu.pasids().parked, 0, "quiesced");
    assert_eq!(
        world.physical_responses(),
        [Cmd::PriResp {
            sid: PSID,
            ssid: Some(SubstreamId(PASID)),
            prg_index: prg,
            response: PriResponse::InvalidRequest,
        }],
        "one answer, none for either stop marker"
    );
    assert_eq!(world.vsmmu.counters().pri_stop_markers, 2);
}

/// A live PASID's CD replaced by another valid one (same ASID, new tables): DMA never
/// faults, the group of the old address space is answered by the hypervisor, the guest's late
/// answer to it is dropped as stale, and the device never retries it in the new space.
#[test]
fn replace_is_hitless_and_keeps_pri_coherent() {
    let mut world = live_world(WorldConfig::default());
    let first = generation(&world);
    assert!(
        world
            .function
            .dma_write(Some(PASID), VA, &[1; 8])
            .all_completed()
    );
    let prg = world
        .function
        .page_request_group(Some(PASID), &[page(true)])
        .unwrap();
    world.hyp_drain();
    world.guest_read_priq();
    let root_b = world.address_space(1);
    world.guest_write_cd(PASID, Some(World::cd(1, root_b)));
    let second = generation(&world);
    assert_ne!(first, second);
    let counters = world.vsmmu.counters();
    assert_eq!((counters.pasid_replaces, counters.pasid_parks), (1, 0));
    assert!(
        world
            .function
            .dma_write(Some(PASID), VA, &[2; 8])
            .all_completed()
    );
    assert_eq!(
        world.memory.read_u64(World::data(1)).unwrap(),
        0x0202_0202_0202_0202
    );
    world.guest_answer(None, PriResponse::Success);
    assert_eq!(
        world.vsmmu.counters().pri_responses_dropped[ResponseDrop::StaleGeneration.index()],
        1
    );
    assert_eq!(
        world.physical_responses(),
        [Cmd::PriResp {
            sid: PSID,
            ssid: Some(SubstreamId(PASID)),
            prg_index: prg,
            response: PriResponse::InvalidRequest,
        }]
    );
    let handled = world.function.handle_responses();
    assert!(matches!(
        handled.as_slice(),
        [ResponseHandled::GaveUp { .. }]
    ));
    world.take_trace();
    assert!(crossings(&world.trace).is_empty());
    // No transaction was aborted across the replace.
    assert!(!world.trace.iter().any(|e| matches!(
        e,
        TraceEvent::Transaction {
            result: smmu_model::trace::TransactionResult::Aborted { .. },
            ..
        }
    )));
}

/// Disabling the stream parks every live PASID; re-enabling it brings them back as new
/// address spaces once they have quiesced.
#[test]
fn disabling_the_stream_parks_every_live_pasid() {
    let mut world = live_world(WorldConfig::default());
    let root = world.address_space(2);
    world.guest_write_cd(2, Some(World::cd(3, root)));
    let before = generation(&world);
    world.guest_disable_stream();
    assert_eq!(world.vsmmu.counters().pasid_parks, 2);
    assert_eq!(world.vsmmu.pasids().live, 0);
    world.guest_attach(2);
    assert_eq!(
        world.vsmmu.pasids().live,
        2,
        "quiesced at once: nothing was queued"
    );
    assert_eq!(world.vsmmu.counters().pasid_reuses, 2);
    assert_eq!(
        generation(&world),
        before,
        "the same CD content: the model's same number"
    );
}

/// The pinning rule with ATS: a page a live PASID's function holds in its ATC stays pinned
/// after the stage-2 unmap, its TLB invalidation and sync, until the vSMMU has invalidated the
/// VM's ATCs after them. Completing without that (as `smmu::domain` alone would) releases a
/// page the function still writes to.
#[test]
fn a_page_a_function_caches_is_released_only_after_its_atc_is_invalidated() {
    use smmu::domain::{PageState, PinError, Stage2Invalidation};
    use smmu::{Ipa, PhysAddr, PhysRange};

    let check = |release_through_nested: bool| {
        let mut world = live_world(WorldConfig::default());
        let data = World::data(0);
        let completion = world.function.ats_translate(Some(PASID), VA, true).unwrap();
        assert!(matches!(completion, AtsCompletion::Success { pa, write: true, .. } if pa == data));
        let mut pending = world.domain.unmap(Ipa(data), 4096).unwrap();
        pending.invalidate(&mut *world.driver.borrow_mut()).unwrap();
        let proof = world.driver.borrow_mut().sync_with_proof().unwrap();
        let page = PhysRange::new(data, 4096);
        let released = if release_through_nested {
            // Without the device caches' invalidation the vSMMU refuses to complete.
            let pending = world
                .vsmmu
                .complete_stage2_unmap(pending, None, |_| unreachable!())
                .unwrap_err();
            assert!(matches!(
                world.pins.release(page),
                Err(PinError::Busy { .. })
            ));
            let caches = world.vsmmu.invalidate_device_caches(&pending).unwrap();
            let (domain, pins) = (&mut world.domain, &mut world.pins);
            world
                .vsmmu
                .complete_stage2_unmap(pending, Some(&caches), |p| domain.complete(pins, p, &proof))
                .unwrap()
                .unwrap();
            world.pins.release(page)
        } else {
            world
                .domain
                .complete(&mut world.pins, pending, &proof)
                .unwrap();
            world.pins.release(page)
        };
        assert_eq!(released, Ok(()));
        assert_eq!(world.pins.state(PhysAddr(data)), Some(PageState::Released));
        // The page belongs to someone else now: a canary.
        world.memory.write_u64(data, 0xcaca).unwrap();
        let wrote = world.function.translated_write(Some(PASID), VA, &[0xee; 8]);
        (wrote.is_ok(), world.memory.read_u64(data).unwrap())
    };
    assert_eq!(
        check(false),
        (true, 0xeeee_eeee_eeee_eeee),
        "smmu::domain alone: the ATC still reaches the released page"
    );
    assert_eq!(
        check(true),
        (false, 0xcaca),
        "through the vSMMU: the ATC entry is gone before the page is released"
    );
}

/// The PRI queue registers' rules: Guarded by PRIQEN and PRIQ_IRQEN, and a queue outside RAM
/// aborts (GERROR.PRIQ_ABT_ERR, Response Failure) without touching anything else.
#[test]
fn the_pri_queue_registers_are_guarded_and_a_queue_outside_ram_aborts() {
    let mut world = live_world(WorldConfig::default());
    let base = world.read32(o::PRIQ_BASE);
    world.write64(o::PRIQ_BASE, 0x1234_0000 | 4);
    assert_eq!(world.read32(o::PRIQ_BASE), base, "ignored while PRIQEN = 1");
    let prod = world.read32(o::PRIQ_PROD);
    world.write32(o::PRIQ_PROD, prod + 3);
    assert_eq!(
        world.read32(o::PRIQ_PROD),
        prod,
        "PROD is the SMMU's while enabled"
    );
    world.write32(o::PRIQ_IRQ_CFG1, 0x55);
    assert_eq!(world.read32(o::PRIQ_IRQ_CFG1), 0, "guarded by PRIQ_IRQEN");
    // Disable, move the queue outside RAM, enable: the next request aborts.
    world.write32(o::CR0, 0b1101);
    world.write64(o::PRIQ_BASE, 0x1_0000_0000 | 4);
    world.write32(o::CR0, 0b1111);
    let prg = world
        .function
        .page_request_group(Some(PASID), &[page(false)])
        .unwrap();
    assert_eq!(
        world.hyp_drain(),
        [PriDisposition::Answered(PriRefusal::GuestQueueAborted)]
    );
    assert_ne!(world.read32(o::GERROR) & 1 << 3, 0, "PRIQ_ABT_ERR");
    assert_eq!(
        world.physical_responses(),
        [Cmd::PriResp {
            sid: PSID,
            ssid: None,
            prg_index: prg,
            response: PriResponse::ResponseFailure,
        }]
    );
}
