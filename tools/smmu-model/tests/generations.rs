//! The trace's address-space generations: what an explorer of PASID interleavings checks its
//! invariant ("no request, response or translation crosses from one generation of a PASID to
//! the next") with. These tests build the two situations the project's background threads
//! describe and show the model tags them as crossings.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use smmu::cd::Cd;
use smmu::command::{Cmd, PriResponse};
use smmu::entry::make::make_stage1_ste;
use smmu::ste::{Eats, S1Dss, S1Fmt};
use smmu::{PhysAddr, SubstreamId};
use smmu_conformance::suite::{ids, page};
use smmu_conformance::tables::{Addressing, S1Access};
use smmu_conformance::{Harness, Suite};
use smmu_model::trace::{Generation, TraceEvent, TransactionResult, crossings};
use smmu_model::{AtsCompletion, ModelConfig, ModelHarness, PageRequest, ResponseHandled};

const PASID: u32 = 1;

/// A stage-1-only stream with two CDs (PASIDs 0 and 1), EATS = full ATS and PPAR = 1, PASID 1
/// installed with `cd`. Returns the CD table page.
fn stream_with_pasid(s: &mut Suite<'_, ModelHarness>, cd: &Cd) -> usize {
    let table = s.allocate().unwrap();
    s.install_cd(table, PASID as usize, cd).unwrap();
    let features = *s.driver().features();
    let context = s
        .context_table(PhysAddr(s.pa(table)), S1Fmt::Linear, 1, S1Dss::Terminate)
        .unwrap();
    let mut ste = make_stage1_ste(&context, ids::VMID_STAGE1, &features).unwrap();
    ste.set_eats(Eats::Translate);
    ste.set_ppar(true);
    s.install(&ste).unwrap();
    table
}

/// A CD for fresh stage-1 tables mapping the destination VA to `destination` (or nothing).
fn address_space(
    s: &mut Suite<'_, ModelHarness>,
    asid: smmu::Asid,
    destination: Option<usize>,
) -> (usize, Cd) {
    let root = s.new_table().unwrap();
    if let Some(destination) = destination {
        let pa = s.pa(destination);
        let va = Suite::<ModelHarness>::va(page::DESTINATION);
        s.map_stage1(root, va, pa, S1Access::ReadWrite, Addressing::Physical)
            .unwrap();
    }
    (root, s.make_cd(root, asid, Addressing::Physical).unwrap())
}

fn last_transaction(
    trace: &[TraceEvent],
) -> (Option<Generation>, Option<Generation>, TransactionResult) {
    trace
        .iter()
        .rev()
        .find_map(|e| match *e {
            TraceEvent::Transaction {
                resolved,
                live,
                result,
                ..
            } => Some((resolved, live, result)),
            _ => None,
        })
        .expect("a transaction was traced")
}

/// A PASID's CD replaced (new tables, same ASID) and invalidated with CFGI_CD, but the TLB not:
/// the next DMA is resolved by the old generation while memory holds the new one. After
/// TLBI_NH_ASID the two agree again.
#[test]
fn a_translation_from_a_stale_tlb_entry_crosses_generations() {
    let mut harness = ModelHarness::new(ModelConfig::full()).unwrap();
    let model = harness.model().clone();
    let function = harness.function().clone();
    let mut s = Suite::new(&mut harness).unwrap();
    let (_, first) = address_space(&mut s, ids::ASID, Some(page::DESTINATION));
    let table = stream_with_pasid(&mut s, &first);
    let va = Suite::<ModelHarness>::va(page::DESTINATION);

    let _ = function.dma_write(Some(PASID), va, &[1; 8]);
    let (resolved, live, result) = last_transaction(&model.take_trace());
    assert!(matches!(result, TransactionResult::Completed { .. }));
    assert_eq!(
        resolved, live,
        "a fresh translation is of the live generation"
    );
    let old = resolved.unwrap();
    assert_eq!(old.cd_index, Some(PASID));

    let (_, second) = address_space(&mut s, ids::ASID, Some(page::DESTINATION_B));
    s.install_cd(table, PASID as usize, &second).unwrap();
    let _ = function.dma_write(Some(PASID), va, &[2; 8]);
    let (resolved, live, _) = last_transaction(&model.take_trace());
    assert_eq!(resolved, Some(old), "the stale TLB entry resolved it");
    assert!(
        live.unwrap().number > old.number,
        "memory holds a newer generation"
    );

    s.submit_and_sync(&[Cmd::TlbiNhAsid {
        vmid: ids::VMID_STAGE1,
        asid: ids::ASID,
    }])
    .unwrap();
    let _ = function.dma_write(Some(PASID), va, &[3; 8]);
    let trace = model.take_trace();
    assert!(crossings(&trace).is_empty());
    let (resolved, live, _) = last_transaction(&trace);
    assert_eq!(resolved, live);
    assert!(resolved.unwrap().number > old.number);
}

/// The 2017 thread's hazard: a page request for PASID 1 is still queued when PASID 1 is unbound
/// and rebound to another address space; its response then makes the function retry in the
/// new address space. The function's group remembers the generation it was sent under, and
/// the retried translations report theirs: they differ.
#[test]
fn a_page_request_answered_after_a_rebind_crosses_generations() {
    let mut harness = ModelHarness::new(ModelConfig::full()).unwrap();
    let function = harness.function().clone();
    let mut s = Suite::new(&mut harness).unwrap();
    let (_, first) = address_space(&mut s, ids::ASID, None);
    let table = stream_with_pasid(&mut s, &first);
    let va = Suite::<ModelHarness>::va(page::DESTINATION);

    let prg = function
        .page_request_group(
            Some(PASID),
            &[PageRequest {
                address: va,
                read: true,
                write: true,
                ..PageRequest::default()
            }],
        )
        .unwrap();
    let (requests, _) = s.drain_page_requests::<4>().unwrap();
    assert_eq!(requests.len(), 1);

    // Unbind (CD V = 0) and rebind to another address space, as a careless hypervisor would,
    // before answering the queued request.
    s.install_cd(table, PASID as usize, &Cd::INVALID).unwrap();
    let (_, second) = address_space(&mut s, ids::ASID_B, Some(page::DESTINATION_B));
    s.install_cd(table, PASID as usize, &second).unwrap();
    let stream = s.stream();
    s.submit_and_sync(&[Cmd::PriResp {
        sid: stream,
        ssid: Some(SubstreamId(PASID)),
        prg_index: prg,
        response: PriResponse::Success,
    }])
    .unwrap();

    let handled = function.handle_responses();
    let [
        ResponseHandled::Retried {
            group, completions, ..
        },
    ] = handled.as_slice()
    else {
        panic!("expected one retried group, got {handled:?}");
    };
    let sent_under = group.generation.unwrap();
    let AtsCompletion::Success {
        read: true,
        generation: Some(retried_under),
        ..
    } = completions[0]
    else {
        panic!("the retry did not translate: {completions:?}");
    };
    assert_eq!(sent_under.cd_index, Some(PASID));
    assert_ne!(
        sent_under, retried_under,
        "the request crossed from one generation of the PASID to the next"
    );
    assert_eq!(handled[0].crossing(), Some((sent_under, retried_under)));
    // And the translation the function now caches points into the new address space.
    let atc = function.atc();
    assert_eq!(atc.len(), 1);
    assert_eq!(atc[0].pa, s.pa(page::DESTINATION_B));
    let _ = s.h.stream();
}
