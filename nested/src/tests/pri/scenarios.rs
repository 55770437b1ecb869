//! Scripted edges of PRI forwarding and the PASID lifecycle, each on a fresh [`World`].

use smmu::command::{Cmd, PriResponse};
use smmu::registers::offset as o;
use smmu::{StreamId, SubstreamId};
use smmu_model::trace::{ResponseCode, ResponseSource, TraceEvent, crossings};
use smmu_model::{AtsCompletion, PageRequest, ResponseHandled};

use super::*;
use crate::pri::PriRefusal;

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
