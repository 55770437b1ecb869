//! Each fault the model raises, with the record the driver decodes (IHI 0070 7.3) and what the
//! transaction becomes (5.5): fetch aborts of STEs, CDs and descriptors, stage-2 faults met
//! while fetching a CD or walking stage 1, address size and access flag faults, an ILLEGAL CD,
//! and RAZ/WI termination.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use smmu::cd::Cd;
use smmu::entry::make::{make_nested_ste, make_stage1_ste};
use smmu::event::{Event, EventAddress, EventId, FaultClass};
use smmu::ste::{S1Dss, S1Fmt};
use smmu::{Ipa, PhysAddr};
use smmu_conformance::Suite;
use smmu_conformance::suite::{ids, page};
use smmu_conformance::tables::{Addressing, S1Access, S2Access};
use smmu_model::{DmaReport, ModelConfig, ModelHarness};

type S<'a, 'h> = &'a mut Suite<'h, ModelHarness>;

/// A stage-1-only stream whose CD maps the destination VA (tables at PAs); `adjust` edits the
/// CD before it is written (without the installer's guard). Returns (CD table, stage-1 root).
fn stage1(s: S<'_, '_>, adjust: impl Fn(&mut Cd)) -> (usize, usize) {
    let table = s.allocate().unwrap();
    let root = s.new_table().unwrap();
    let destination = s.pa(page::DESTINATION);
    s.map_stage1(
        root,
        Suite::<ModelHarness>::va(page::DESTINATION),
        destination,
        S1Access::ReadWrite,
        Addressing::Physical,
    )
    .unwrap();
    let mut cd = s.make_cd(root, ids::ASID, Addressing::Physical).unwrap();
    adjust(&mut cd);
    s.write_cd_words(table, 0, &cd);
    let features = *s.driver().features();
    let context = s
        .context_table(PhysAddr(s.pa(table)), S1Fmt::Linear, 0, S1Dss::Terminate)
        .unwrap();
    let ste = make_stage1_ste(&context, ids::VMID_STAGE1, &features).unwrap();
    s.install(&ste).unwrap();
    (table, root)
}

fn write_destination(s: S<'_, '_>) -> DmaReport {
    let function = s.h.function().clone();
    let _ = s.drain();
    function.dma_write(
        None,
        Suite::<ModelHarness>::va(page::DESTINATION),
        &[0x5a; 8],
    )
}

fn one_event(s: S<'_, '_>) -> Event {
    let seen = s.drain();
    assert_eq!(seen.total, 1, "{:?}", seen.events);
    seen.events[0]
}

#[test]
fn a_cd_fetch_abort_is_f_cd_fetch_with_the_cd_address() {
    let mut harness = ModelHarness::new(ModelConfig::qemu_virt()).unwrap();
    let memory = harness.model().memory();
    let mut s = Suite::new(&mut harness).unwrap();
    let (table, _) = stage1(&mut s, |_| {});
    let cd_address = s.pa(table);
    memory.inject_abort(cd_address, 64);
    assert_eq!(write_destination(&mut s).aborted, 1);
    let event = one_event(&mut s);
    assert_eq!(event.id, EventId::FCdFetch);
    assert_eq!(event.addr2, EventAddress::Fetch(PhysAddr(cd_address)));
    // A failed fetch is not cached: once the memory answers, the stream translates.
    memory.clear_aborts();
    assert!(write_destination(&mut s).all_completed());
}

#[test]
fn a_descriptor_fetch_abort_is_f_walk_eabt_at_stage_1_class_tt() {
    let mut harness = ModelHarness::new(ModelConfig::qemu_virt()).unwrap();
    let memory = harness.model().memory();
    let mut s = Suite::new(&mut harness).unwrap();
    let (_, root) = stage1(&mut s, |_| {});
    let root_address = s.pa(root);
    memory.inject_abort(root_address, 4096);
    assert_eq!(write_destination(&mut s).aborted, 1);
    let event = one_event(&mut s);
    assert_eq!(event.id, EventId::FWalkEabt);
    assert!(!event.s2 && !event.rnw);
    assert_eq!(event.class, FaultClass::TranslationTable);
    assert_eq!(
        event.input_addr.0,
        Suite::<ModelHarness>::va(page::DESTINATION)
    );
    let EventAddress::Fetch(fetch) = event.addr2 else {
        panic!("no fetch address")
    };
    assert_eq!(fetch.0 & !0xfff, root_address);
}

#[test]
fn an_ste_fetch_abort_is_f_ste_fetch() {
    let mut harness = ModelHarness::new(ModelConfig::qemu_virt()).unwrap();
    let memory = harness.model().memory();
    let mut s = Suite::new(&mut harness).unwrap();
    stage1(&mut s, |_| {});
    let stream = s.stream();
    let ste = s.driver().ste_address(stream).unwrap().unwrap();
    // Once cached, the STE is not fetched again until a CFGI.
    assert!(write_destination(&mut s).all_completed());
    memory.inject_abort(ste.0, 64);
    assert!(write_destination(&mut s).all_completed());
    s.submit_and_sync(&[smmu::command::Cmd::CfgiSte {
        sid: stream,
        leaf: true,
    }])
    .unwrap();
    assert_eq!(write_destination(&mut s).aborted, 1);
    let event = one_event(&mut s);
    assert_eq!(event.id, EventId::FSteFetch);
    assert_eq!(event.addr2, EventAddress::Fetch(ste));
    memory.clear_aborts();
}

/// An ILLEGAL CD (T0SZ below 16) is C_BAD_CD.
#[test]
fn an_illegal_cd_is_c_bad_cd() {
    let mut harness = ModelHarness::new(ModelConfig::qemu_virt()).unwrap();
    let mut s = Suite::new(&mut harness).unwrap();
    stage1(&mut s, |cd| cd.set_t0sz(10));
    assert_eq!(write_destination(&mut s).aborted, 1);
    assert_eq!(one_event(&mut s).id, EventId::CBadCd);
}

/// A stage-1 leaf whose output is beyond the CD's IPS is F_ADDR_SIZE at stage 1.
#[test]
fn an_output_beyond_ips_is_f_addr_size() {
    let mut harness = ModelHarness::new(ModelConfig::qemu_virt()).unwrap();
    let mut s = Suite::new(&mut harness).unwrap();
    let (_, root) = stage1(&mut s, |cd| {
        cd.set_ips(smmu::translation::AddressSize::Bits32)
    });
    let va = Suite::<ModelHarness>::va(page::DESTINATION);
    s.map_stage1(root, va, 1 << 32, S1Access::ReadWrite, Addressing::Physical)
        .unwrap();
    assert_eq!(write_destination(&mut s).aborted, 1);
    let event = one_event(&mut s);
    assert_eq!(
        (event.id, event.s2, event.class),
        (EventId::FAddrSize, false, FaultClass::Input)
    );
}

#[test]
fn a_clear_access_flag_is_f_access_unless_affd() {
    for affd in [false, true] {
        let mut harness = ModelHarness::new(ModelConfig::qemu_virt()).unwrap();
        let memory = harness.model().memory();
        let mut s = Suite::new(&mut harness).unwrap();
        let (_, root) = stage1(&mut s, |cd| cd.set_affd(affd));
        // Clear AF in the leaf: walk the suite's tables (levels 1..3, one entry each).
        let va = Suite::<ModelHarness>::va(page::DESTINATION);
        let mut table = s.pa(root);
        for shift in [30, 21] {
            table = memory.read_u64(table + ((va >> shift) & 511) * 8).unwrap() & !0xfff;
        }
        let leaf = table + ((va >> 12) & 511) * 8;
        let descriptor = memory.read_u64(leaf).unwrap();
        memory.write_u64(leaf, descriptor & !(1 << 10)).unwrap();
        let report = write_destination(&mut s);
        if affd {
            assert!(report.all_completed());
            assert_eq!(s.drain().total, 0);
        } else {
            assert_eq!(report.aborted, 1);
            assert_eq!(one_event(&mut s).id, EventId::FAccess);
        }
    }
}

/// With RAZ/WI termination (CD.A = 0, on an SMMU with TERM_MODEL = 0) a faulting write is
/// dropped and completes without error at the device; a faulting read returns zeros.
#[test]
fn cd_a_clear_terminates_raz_wi() {
    let mut harness = ModelHarness::new(ModelConfig::full()).unwrap();
    let memory = harness.model().memory();
    let function = harness.function().clone();
    let mut s = Suite::new(&mut harness).unwrap();
    stage1(&mut s, |cd| cd.set_a(false));
    s.fill(page::CANARY, |_| 0x1111);
    let unmapped = Suite::<ModelHarness>::va(page::CANARY);
    let report = function.dma_write(None, unmapped, &[0xff; 8]);
    assert_eq!((report.raz_wi, report.aborted), (1, 0));
    let (data, report) = function.dma_read(None, unmapped, 8);
    assert_eq!((report.raz_wi, data), (1, vec![0; 8]));
    assert_eq!(memory.read_u64(s.pa(page::CANARY)), Ok(0x1111));
    // Both recorded (CD.R = 1).
    assert_eq!(s.drain().total, 2);
}

/// Nested: a CD whose IPA stage 2 does not map is a stage-2 fault with CLASS = CD and the
/// CD's IPA; a stage-1 table whose IPA stage 2 maps read-only is fine (walks only read), but
/// one it does not map is a stage-2 fault with CLASS = TT and the descriptor's IPA.
#[test]
fn stage2_faults_while_fetching_a_cd_or_walking_stage_1() {
    let mut harness = ModelHarness::new(ModelConfig::qemu_virt()).unwrap();
    let mut s = Suite::new(&mut harness).unwrap();
    let s2_root = s.new_table().unwrap();
    s.map_window(s2_root).unwrap();
    let stage2 = s.stage2(s2_root, ids::VMID).unwrap();
    let table = s.allocate().unwrap();
    let s1_root = s.new_table().unwrap();
    let va = Suite::<ModelHarness>::va(page::DESTINATION);
    s.map_stage1(
        s1_root,
        va,
        Suite::<ModelHarness>::ipa(page::DESTINATION),
        S1Access::ReadWrite,
        Addressing::Window,
    )
    .unwrap();
    let cd = s.make_cd(s1_root, ids::ASID, Addressing::Window).unwrap();
    s.write_cd_words(table, 0, &cd);
    let context = s
        .context_table(
            Ipa(Suite::<ModelHarness>::ipa(table)),
            S1Fmt::Linear,
            0,
            S1Dss::Terminate,
        )
        .unwrap();
    s.install(&make_nested_ste(&context, &stage2).unwrap())
        .unwrap();
    assert!(write_destination(&mut s).all_completed());

    // The stage-1 root's IPA read-only at stage 2: still walks.
    let root_ipa = Suite::<ModelHarness>::ipa(s1_root);
    let root_pa = s.pa(s1_root);
    s.map_stage2(s2_root, root_ipa, root_pa, S2Access::ReadOnly)
        .unwrap();
    s.invalidate_tlbs().unwrap();
    assert!(write_destination(&mut s).all_completed());

    // Unmapped: F_TRANSLATION at stage 2, CLASS = TT, the descriptor's IPA.
    s.unmap_stage2(s2_root, root_ipa).unwrap();
    s.invalidate_tlbs().unwrap();
    assert_eq!(write_destination(&mut s).aborted, 1);
    let event = one_event(&mut s);
    assert_eq!(
        (event.id, event.s2, event.class),
        (EventId::FTranslation, true, FaultClass::TranslationTable)
    );
    let EventAddress::Ipa(ipa) = event.addr2 else {
        panic!()
    };
    assert_eq!(ipa.0, root_ipa);

    // The CD's IPA unmapped (and the CD no longer cached): CLASS = CD.
    s.map_stage2(s2_root, root_ipa, root_pa, S2Access::ReadWrite)
        .unwrap();
    let cd_ipa = Suite::<ModelHarness>::ipa(table);
    s.unmap_stage2(s2_root, cd_ipa).unwrap();
    let stream = s.stream();
    s.submit_and_sync(&[smmu::command::Cmd::CfgiCdAll { sid: stream }])
        .unwrap();
    s.invalidate_tlbs().unwrap();
    assert_eq!(write_destination(&mut s).aborted, 1);
    let event = one_event(&mut s);
    assert_eq!(
        (event.id, event.s2, event.class),
        (EventId::FTranslation, true, FaultClass::ContextDescriptor)
    );
    assert_eq!(event.addr2, EventAddress::Ipa(Ipa(cd_ipa)));
}
