//! Cases for behaviour every SMMUv3 must show (or that the feature registers say it has), run
//! wherever they apply: fault records and their suppression, stale cached configuration and
//! translations until invalidated, queue overflow, and the commands the architecture makes
//! ILLEGAL on an SMMU without ATS, PRI or stall.

use smmu::command::{Cmd, PriResponse, ResumeAction, TlbiScope};
use smmu::entry::install::UpdatePath;
use smmu::entry::make::{make_stage1_ste, make_stage2_ste};
use smmu::event::{EventAddress, EventId, FaultClass};
use smmu::registers::{StallModel, TermModel};
use smmu::ste::{S1Dss, S1Fmt};
use smmu::{Iova, Ipa, PhysAddr};

use super::ported::{BLOCKED_BYTES, stage1_space, stage2_pair, window_stage2};
use crate::harness::{Direction, Harness};
use crate::suite::{CANARY, CaseResult, PAGE, Stop, Suite, check, ids, page, require};
use crate::tables::{Addressing, S1Access, S2Access};

type S<'a, 'h, H> = &'a mut Suite<'h, H>;

/// Installs a stage-1-only stream whose destination VA maps read-only (everything else as
/// `stage1_space`), with `adjust` applied to the CD.
fn stage1_read_only_destination<H: Harness>(
    s: S<'_, '_, H>,
    adjust: impl Fn(&mut smmu::cd::Cd),
) -> CaseResult {
    let (table, mut cd) = stage1_space(s, ids::ASID, Addressing::Physical, page::DESTINATION)?;
    // Re-map the destination read-only in the same tables.
    let ttb0 = cd.ttb0().0;
    let root = (0..s.h.page_count())
        .find(|&i| s.pa(i) == ttb0)
        .ok_or(Stop::Fail("the CD's TTB0 names no test page"))?;
    let destination = s.pa(page::DESTINATION);
    s.map_stage1(
        root,
        Suite::<H>::va(page::DESTINATION),
        destination,
        S1Access::ReadOnly,
        Addressing::Physical,
    )?;
    adjust(&mut cd);
    s.install_cd(table, 0, &cd)?;
    let features = *s.driver().features();
    let context = s.context_table(PhysAddr(s.pa(table)), S1Fmt::Linear, 0, S1Dss::Terminate)?;
    let ste = make_stage1_ste(&context, ids::VMID_STAGE1, &features)
        .map_err(|_| Stop::Fail("stage-1 STE refused by make"))?;
    s.install(&ste)?;
    Ok(())
}

/// A write to the destination VA, which must not land.
fn write_destination_va<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    s.copy(
        page::SOURCE,
        Suite::<H>::va(page::SOURCE),
        Suite::<H>::va(page::SOURCE),
        None,
    )?;
    s.fill(page::DESTINATION, |_| CANARY);
    let _ = s.drain();
    s.dma(
        Direction::DeviceToRam,
        Suite::<H>::va(page::DESTINATION),
        BLOCKED_BYTES,
        None,
    )?;
    s.expect_canary(page::DESTINATION)
}

/// Case: a write to a page stage 1 maps read-only is refused and recorded as F_PERMISSION at
/// stage 1 (S2 = 0, CLASS = IN, the VA as input, a write) while CD.R = 1.
pub(crate) fn stage1_permission_fault<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    stage1_read_only_destination(s, |_| {})?;
    write_destination_va(s)?;
    let stream = s.stream();
    let va = Suite::<H>::va(page::DESTINATION);
    s.drain().expect(s.faults_for(BLOCKED_BYTES), |event| {
        event.id == EventId::FPermission
            && event.sid == stream
            && !event.s2
            && !event.rnw
            && event.class == FaultClass::Input
            && event.input_addr.0 & !0xfff == va
    })
}

/// Case: with CD.R = 0 the same stage-1 fault is not recorded; the write is still refused.
pub(crate) fn cd_r_clear_suppresses_record<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    stage1_read_only_destination(s, |cd| cd.set_r(false))?;
    write_destination_va(s)?;
    s.drain().expect_none()
}

/// Case: a write to a page stage 2 maps read-only is refused and recorded as F_PERMISSION at
/// stage 2 (S2 = 1, CLASS = IN, the IPA).
pub(crate) fn stage2_permission_fault<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    let root = s.new_table()?;
    s.map_window(root)?;
    let destination = s.pa(page::DESTINATION);
    let ipa = Suite::<H>::ipa(page::DESTINATION);
    s.map_stage2(root, ipa, destination, S2Access::ReadOnly)?;
    let stage2 = s.stage2(root, ids::VMID)?;
    s.install(&make_stage2_ste(&stage2))?;
    s.fill(page::DESTINATION, |_| CANARY);
    let _ = s.drain();
    s.dma(Direction::DeviceToRam, ipa, BLOCKED_BYTES, None)?;
    s.expect_canary(page::DESTINATION)?;
    let stream = s.stream();
    s.drain().expect(s.faults_for(BLOCKED_BYTES), |event| {
        event.id == EventId::FPermission
            && event.sid == stream
            && event.s2
            && !event.rnw
            && event.class == FaultClass::Input
            && event.addr2 == EventAddress::Ipa(Ipa(ipa))
    })
}

/// Case: with STE.S2R = 0 a stage-2 translation fault is not recorded; the write is still
/// refused.
pub(crate) fn s2r_clear_suppresses_record<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    let stage2 = window_stage2(s)?;
    let mut ste = make_stage2_ste(&stage2);
    ste.set_s2r(false);
    s.install(&ste)?;
    s.fill(page::CANARY, |_| CANARY);
    let _ = s.drain();
    let canary = s.pa(page::CANARY);
    s.dma(Direction::DeviceToRam, canary, BLOCKED_BYTES, None)?;
    s.expect_canary(page::CANARY)?;
    s.drain().expect_none()
}

/// Where a copy to the destination IPA landed.
fn landed<H: Harness>(s: S<'_, '_, H>, seed: u64) -> Option<usize> {
    [page::DESTINATION, page::DESTINATION_B]
        .into_iter()
        .find(|&p| {
            s.first_difference(p, 512, crate::suite::pattern(seed))
                .is_none()
        })
}

/// Case: after a stage-2 leaf is changed, the SMMU may keep using the old translation until
/// CMD_TLBI_S2_IPA and CMD_SYNC (where it keeps stale entries, it must); after them it uses the
/// new one.
pub(crate) fn stale_translation_until_tlbi<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    let root = s.new_table()?;
    s.map_window(root)?;
    let stage2 = s.stage2(root, ids::VMID)?;
    s.install(&make_stage2_ste(&stage2))?;
    let (source, destination) = (
        Suite::<H>::ipa(page::SOURCE),
        Suite::<H>::ipa(page::DESTINATION),
    );
    s.copy(page::SOURCE, source, destination, None)?;
    let b = s.pa(page::DESTINATION_B);
    s.map_stage2(root, destination, b, S2Access::ReadWrite)?;
    let stale = s.copy(page::SOURCE, source, destination, None)?;
    let used_old = landed(s, stale) == Some(page::DESTINATION);
    s.h.note(
        "before TLBI_S2_IPA the old translation was used (1) or not (0)",
        &[u64::from(used_old)],
    );
    if s.h.device().keeps_stale_entries {
        check(
            used_old,
            "a cached translation was not used until invalidated",
        )?;
    }
    s.submit_and_sync(&[Cmd::TlbiS2Ipa {
        vmid: ids::VMID,
        scope: TlbiScope::default(),
        addr: Ipa(destination),
    }])?;
    let fresh = s.copy(page::SOURCE, source, destination, None)?;
    check(
        landed(s, fresh) == Some(page::DESTINATION_B),
        "the new translation is not used after TLBI_S2_IPA and CMD_SYNC",
    )?;
    s.drain().expect_none()
}

/// Case: an STE changed in memory (S2TTB to another table, one store) without CMD_CFGI_STE
/// may still be used from the configuration cache (where stale entries are kept, it must);
/// after CMD_CFGI_STE and CMD_SYNC the new one is.
pub(crate) fn stale_ste_until_cfgi<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    let (a, b) = stage2_pair(s)?;
    s.install(&make_stage2_ste(&a))?;
    let (source, destination) = (
        Suite::<H>::ipa(page::SOURCE),
        Suite::<H>::ipa(page::DESTINATION),
    );
    s.copy(page::SOURCE, source, destination, None)?;
    let target = make_stage2_ste(&b);
    let stream = s.stream();
    let address = s
        .driver()
        .ste_address(stream)
        .ok()
        .flatten()
        .ok_or(Stop::Fail("the stream has no STE"))?;
    // Qword 3 holds S2TTB: stage 2 A becomes B, with no CFGI_STE.
    s.h.store_behind_driver(PhysAddr(address.0 + 3 * 8), target.words()[3])
        .map_err(|_| Stop::NotApplicable("the harness cannot store behind the driver"))?;
    s.h.barrier();
    // Only the TLB is invalidated: stage 2 A's translations cannot hide a stale STE.
    s.invalidate_tlbs()?;
    let stale = s.copy(page::SOURCE, source, destination, None)?;
    let used_old = landed(s, stale) == Some(page::DESTINATION);
    s.h.note(
        "before CFGI_STE the old STE was used (1) or not (0)",
        &[u64::from(used_old)],
    );
    if s.h.device().keeps_stale_entries {
        check(used_old, "a cached STE was not used until invalidated")?;
    }
    s.submit_and_sync(&[Cmd::CfgiSte {
        sid: stream,
        leaf: true,
    }])?;
    s.invalidate_tlbs()?;
    let fresh = s.copy(page::SOURCE, source, destination, None)?;
    check(
        landed(s, fresh) == Some(page::DESTINATION_B),
        "the new STE is not used after CFGI_STE and CMD_SYNC",
    )?;
    s.drain().expect_none()
}

/// Case: a CD whose TTB0 moves to other tables under the same ASID is replaced in one store
/// (no window without translation); until TLBI_NH_ASID the old translations may stay in use
/// (where stale entries are kept, they must), after it the new ones are.
pub(crate) fn cd_replace_hitless<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    let (table, cd_a) = stage1_space(s, ids::ASID, Addressing::Physical, page::DESTINATION)?;
    let (_, cd_b) = stage1_space(s, ids::ASID, Addressing::Physical, page::DESTINATION_B)?;
    s.install_cd(table, 0, &cd_a)?;
    let features = *s.driver().features();
    let context = s.context_table(PhysAddr(s.pa(table)), S1Fmt::Linear, 0, S1Dss::Terminate)?;
    let ste = make_stage1_ste(&context, ids::VMID_STAGE1, &features)
        .map_err(|_| Stop::Fail("stage-1 STE refused by make"))?;
    s.install(&ste)?;
    let (source, destination) = (
        Suite::<H>::va(page::SOURCE),
        Suite::<H>::va(page::DESTINATION),
    );
    s.copy(page::SOURCE, source, destination, None)?;
    let path = smmu::entry::install::cd_update_path(&cd_a, &cd_b);
    check(
        path == (UpdatePath::Hitless { critical_qword: 1 }),
        "a new TTB0 under the same ASID is not a one-store replace",
    )?;
    s.install_cd(table, 0, &cd_b)?;
    let stale = s.copy(page::SOURCE, source, destination, None)?;
    let used_old = landed(s, stale) == Some(page::DESTINATION);
    s.h.note(
        "before TLBI_NH_ASID the old address space was used (1) or not (0)",
        &[u64::from(used_old)],
    );
    if s.h.device().keeps_stale_entries {
        check(
            used_old,
            "cached translations were not used until invalidated",
        )?;
    }
    s.submit_and_sync(&[Cmd::TlbiNhAsid {
        vmid: ids::VMID_STAGE1,
        asid: ids::ASID,
    }])?;
    let fresh = s.copy(page::SOURCE, source, destination, None)?;
    check(
        landed(s, fresh) == Some(page::DESTINATION_B),
        "the replaced address space is not used after TLBI_NH_ASID and CMD_SYNC",
    )?;
    s.drain().expect_none()
}

/// Case: an invalidation consumed but not followed by CMD_SYNC need not have taken effect
/// (where the SMMU completes invalidations only at a sync, it must not have); the sync
/// completes it.
pub(crate) fn invalidation_completes_at_sync<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    require(
        s.h.device().invalidation_waits_for_sync,
        "invalidations may complete before a sync here: nothing to observe",
    )?;
    let root = s.new_table()?;
    s.map_window(root)?;
    let stage2 = s.stage2(root, ids::VMID)?;
    s.install(&make_stage2_ste(&stage2))?;
    let (source, destination) = (
        Suite::<H>::ipa(page::SOURCE),
        Suite::<H>::ipa(page::DESTINATION),
    );
    s.copy(page::SOURCE, source, destination, None)?;
    let b = s.pa(page::DESTINATION_B);
    s.map_stage2(root, destination, b, S2Access::ReadWrite)?;
    s.driver()
        .submit(&[Cmd::TlbiS2Ipa {
            vmid: ids::VMID,
            scope: TlbiScope::default(),
            addr: Ipa(destination),
        }])
        .map_err(|_| Stop::Fail("submit failed"))?;
    let before = s.copy(page::SOURCE, source, destination, None)?;
    check(
        landed(s, before) == Some(page::DESTINATION),
        "a TLBI took effect before its CMD_SYNC",
    )?;
    s.driver().sync().map_err(|_| Stop::Fail("sync failed"))?;
    let after = s.copy(page::SOURCE, source, destination, None)?;
    check(
        landed(s, after) == Some(page::DESTINATION_B),
        "the CMD_SYNC did not complete the TLBI",
    )?;
    s.drain().expect_none()
}

/// Case: filling the event queue past its size sets EVENTQ_PROD.OVFLG (reported once by the
/// driver), keeps every record that fitted, raises no global error, and the queue works again
/// once drained (IHI 0070 7.4).
pub(crate) fn event_queue_overflow<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    let entries = s.driver().event_queue_entries();
    let per_dma = s.faults_for(PAGE);
    let dmas = entries / per_dma.max(1) + 2;
    require(dmas <= 64, "the event queue is too large to fill quickly")?;
    let stage2 = window_stage2(s)?;
    s.install(&make_stage2_ste(&stage2))?;
    let canary = s.pa(page::CANARY);
    s.fill(page::CANARY, |_| CANARY);
    let _ = s.drain();
    for _ in 0..dmas {
        s.dma(Direction::DeviceToRam, canary, PAGE, None)?;
    }
    s.expect_canary(page::CANARY)?;
    let seen = s.drain();
    s.h.note(
        "events, overflows, global errors",
        &[
            u64::from(seen.total),
            u64::from(seen.overflows),
            u64::from(seen.global_errors),
        ],
    );
    check(
        seen.global_errors == 0,
        "a full event queue raised a global error",
    )?;
    check(seen.overflows == 1, "the overflow was not reported once")?;
    check(
        seen.total == entries,
        "the queue did not keep every record that fitted",
    )?;
    s.dma(Direction::DeviceToRam, canary, BLOCKED_BYTES, None)?;
    let after = s.drain();
    check(
        after.total == s.faults_for(BLOCKED_BYTES) && after.overflows == 0,
        "the event queue does not record again after the overflow",
    )
}

/// Case: CMD_ATC_INV on an SMMU without ATS is ILLEGAL (IHI 0070 4.5.1).
pub(crate) fn atc_inv_illegal_without_ats<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    require(!s.driver().features().ats, "the SMMU has ATS")?;
    let stream = s.stream();
    let command = Cmd::AtcInv {
        sid: stream,
        ssid: None,
        global: false,
        size: 0,
        addr: Iova(0),
    };
    super::ported::expect_illegal(s, command.encode(), 0x40)
}

/// Case: CMD_PRI_RESP on an SMMU without PRI is ILLEGAL (4.5.2).
pub(crate) fn pri_resp_illegal_without_pri<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    require(!s.driver().features().pri, "the SMMU has PRI")?;
    let stream = s.stream();
    let command = Cmd::PriResp {
        sid: stream,
        ssid: None,
        prg_index: 0,
        response: PriResponse::Success,
    };
    super::ported::expect_illegal(s, command.encode(), 0x41)
}

/// Case: CMD_RESUME on an SMMU without the stall model is ILLEGAL (4.7.1).
pub(crate) fn resume_illegal_without_stall<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    require(
        s.driver().features().stall_model == StallModel::TerminateOnly,
        "the SMMU can stall",
    )?;
    let stream = s.stream();
    let command = Cmd::Resume {
        sid: stream,
        action: ResumeAction::Terminate,
        stag: 0,
    };
    super::ported::expect_illegal(s, command.encode(), 0x44)
}

/// Case: the TLBI_EL2_* commands on an SMMU without IDR0.HYP are ILLEGAL (4.4.2).
pub(crate) fn tlbi_el2_illegal_without_hyp<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    require(!s.driver().features().hyp, "the SMMU has EL2 contexts")?;
    super::ported::expect_illegal(s, Cmd::TlbiEl2All.encode(), 0x20)
}

/// Case: the TLBI_EL3_* commands are ILLEGAL on the Non-secure command queue (4.4.2).
pub(crate) fn tlbi_el3_illegal_on_non_secure_queue<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    super::ported::expect_illegal(s, Cmd::TlbiEl3All.encode(), 0x18)
}

/// Case: with IDR1.SSIDSIZE = 0, STE.S1CDMax is IGNORED (5.2): a stage-1 STE with S1CDMax = 1
/// translates with its single CD.
pub(crate) fn s1cdmax_ignored_without_substreams<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    require(
        s.driver().features().ssidsize == 0,
        "the SMMU has substreams",
    )?;
    let (table, cd) = stage1_space(s, ids::ASID, Addressing::Physical, page::DESTINATION)?;
    s.install_cd(table, 0, &cd)?;
    let features = *s.driver().features();
    let context = s.context_table(PhysAddr(s.pa(table)), S1Fmt::Linear, 0, S1Dss::Terminate)?;
    let mut ste = make_stage1_ste(&context, ids::VMID_STAGE1, &features)
        .map_err(|_| Stop::Fail("stage-1 STE refused by make"))?;
    ste.set_s1cdmax(1);
    s.install(&ste)?;
    s.fill(page::DESTINATION, |_| 0);
    let seed = s.copy(
        page::SOURCE,
        Suite::<H>::va(page::SOURCE),
        Suite::<H>::va(page::DESTINATION),
        None,
    )?;
    let seen = s.drain();
    if seen.events.iter().any(|e| e.id == EventId::CBadSte) {
        return Err(Stop::Fail("C_BAD_STE for an S1CDMax the SMMU must ignore"));
    }
    s.expect_pattern(page::DESTINATION, seed)?;
    seen.expect_none()
}

/// Case: on an SMMU whose terminations always abort (TERM_MODEL = 1), a CD with A = 0 is
/// ILLEGAL: C_BAD_CD, and nothing is translated through it.
pub(crate) fn cd_a_zero_illegal_when_abort_only<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    require(
        s.driver().features().term_model == TermModel::AbortOnly,
        "the SMMU can terminate with RAZ/WI",
    )?;
    let (table, mut cd) = stage1_space(s, ids::ASID, Addressing::Physical, page::DESTINATION)?;
    cd.set_a(false);
    s.write_cd_words(table, 0, &cd);
    let features = *s.driver().features();
    let context = s.context_table(PhysAddr(s.pa(table)), S1Fmt::Linear, 0, S1Dss::Terminate)?;
    let ste = make_stage1_ste(&context, ids::VMID_STAGE1, &features)
        .map_err(|_| Stop::Fail("stage-1 STE refused by make"))?;
    s.install(&ste)?;
    s.fill(page::DESTINATION, |_| CANARY);
    let _ = s.drain();
    s.dma(
        Direction::DeviceToRam,
        Suite::<H>::va(page::DESTINATION),
        BLOCKED_BYTES,
        None,
    )?;
    s.expect_canary(page::DESTINATION)?;
    let stream = s.stream();
    s.drain().expect(s.faults_for(BLOCKED_BYTES), |event| {
        event.id == EventId::CBadCd && event.sid == stream
    })
}
