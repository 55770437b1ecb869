//! The ten cases the hypervisor's `smmu-conformance` self-test has run on QEMU from EL2 since
//! before this crate, with the same meaning, written against the harness.

use smmu::command::Command;
use smmu::domain::{
    CompletionError, DomainConfig, PageState, Permissions, PinError, PinTable, Refused,
    Stage2Domain, Stage2Geometry, Stage2Invalidation, Stage2Use, WalkAttributes,
};
use smmu::driver::{CommandErrorKind, Error as DriverError};
use smmu::entry::install::{PhysicalEntryError, UpdatePath, check_physical_ste};
use smmu::entry::make::{
    Stage2Translation, make_abort_ste, make_nested_ste, make_stage1_ste, make_stage2_ste,
};
use smmu::event::{EventAddress, EventId, FaultClass};
use smmu::ste::{S1Dss, S1Fmt, Ste};
use smmu::{Ipa, PhysAddr, PhysRange};

use crate::harness::{Direction, Harness};
use crate::suite::{
    CANARY, CaseResult, PAGE, Stop, Suite, TryInstallError, check, ids, page, require,
};
use crate::tables::{Addressing, S1Access};

/// Bytes of each DMA meant to be blocked: two 4-byte accesses on QEMU.
pub(crate) const BLOCKED_BYTES: u64 = 8;
/// An undefined opcode.
const UNDEFINED_OPCODE: u8 = 0x7f;
/// The IOVAs (IPA == IOVA) the stage-2 domain maps.
const IPA_DOMAIN_SOURCE: u64 = 0x3_0000_0000;
const IPA_DOMAIN_A: u64 = 0x3_0000_1000;
/// The most pages one domain call may name.
const DOMAIN_BUDGET: u64 = 16;

type S<'a, 'h, H> = &'a mut Suite<'h, H>;

/// A stage-2 translation of the whole window (every test page at its window IPA).
pub(crate) fn window_stage2<H: Harness>(s: S<'_, '_, H>) -> Result<Stage2Translation, Stop> {
    let root = s.new_table()?;
    s.map_window(root)?;
    s.stage2(root, ids::VMID)
}

/// Case: the device reads and writes through stage 2 at IPAs that differ from the buffers'
/// physical addresses; the data arrives where stage 2 points.
pub(crate) fn stage2_dma_translates<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    let stage2 = window_stage2(s)?;
    s.install(&make_stage2_ste(&stage2))?;
    s.fill(page::DESTINATION, |_| 0);
    let seed = s.copy(
        page::SOURCE,
        Suite::<H>::ipa(page::SOURCE),
        Suite::<H>::ipa(page::DESTINATION),
        None,
    )?;
    s.expect_pattern(page::DESTINATION, seed)?;
    s.drain().expect_none()
}

/// Case: a write to an IOVA stage 2 does not map (the canary's physical address, so a bypass
/// would hit it) changes nothing and is reported as F_TRANSLATION at stage 2, once per
/// transaction, for the stream, with the input address and the IPA (S2R = 1).
pub(crate) fn unmapped_iova_faults<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    let stage2 = window_stage2(s)?;
    s.install(&make_stage2_ste(&stage2))?;
    // Give the device buffer known content, so a write that got through would show.
    s.copy(
        page::SOURCE,
        Suite::<H>::ipa(page::SOURCE),
        Suite::<H>::ipa(page::DESTINATION),
        None,
    )?;
    s.fill(page::CANARY, |_| CANARY);
    let canary = s.pa(page::CANARY);
    let _ = s.drain();
    s.dma(Direction::DeviceToRam, canary, BLOCKED_BYTES, None)?;
    s.expect_canary(page::CANARY)?;
    let seen = s.drain();
    let stream = s.stream();
    let step = s.h.transaction_bytes();
    seen.expect(s.faults_for(BLOCKED_BYTES), |event| {
        event.id == EventId::FTranslation
            && event.sid == stream
            && event.ssid.is_none()
            && event.s2
            && !event.rnw
            && event.class == FaultClass::Input
            && event.addr2 == EventAddress::Ipa(Ipa(canary))
    })?;
    let in_order = seen
        .events
        .iter()
        .zip((canary..).step_by(usize::try_from(step).unwrap_or(1)))
        .all(|(event, expected)| event.input_addr.0 == expected);
    check(in_order, "the events do not name the faulting addresses")
}

/// The two writes the blocking cases issue: to the canary's physical address (a bypass would
/// land there) and to the destination's IPA (a stage 2 still in use would land in
/// DESTINATION). Both pages must keep the canary.
fn blocked_writes<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    s.fill(page::CANARY, |_| CANARY);
    s.fill(page::DESTINATION, |_| CANARY);
    let canary = s.pa(page::CANARY);
    s.dma(Direction::DeviceToRam, canary, BLOCKED_BYTES, None)?;
    s.dma(
        Direction::DeviceToRam,
        Suite::<H>::ipa(page::DESTINATION),
        BLOCKED_BYTES,
        None,
    )?;
    s.expect_canary(page::CANARY)?;
    s.expect_canary(page::DESTINATION)
}

/// Case: an abort STE stops DMA before memory, silently (Config = abort records nothing).
pub(crate) fn abort_ste_blocks<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    let stage2 = window_stage2(s)?;
    s.install(&make_stage2_ste(&stage2))?;
    s.copy(
        page::SOURCE,
        Suite::<H>::ipa(page::SOURCE),
        Suite::<H>::ipa(page::DESTINATION),
        None,
    )?;
    s.install(&make_abort_ste())?;
    let _ = s.drain();
    blocked_writes(s)?;
    s.drain().expect_none()
}

/// Case: a stream whose STE is invalid (V = 0) is blocked and reported as C_BAD_STE once per
/// transaction, naming the stream only.
pub(crate) fn missing_ste_aborts<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    s.install(&Ste::INVALID)?;
    let _ = s.drain();
    blocked_writes(s)?;
    let stream = s.stream();
    let count = 2 * s.faults_for(BLOCKED_BYTES);
    s.drain().expect(count, |event| {
        event.id == EventId::CBadSte && event.sid == stream && event.ssid.is_none() && !event.s2
    })
}

/// A stage-1 address space mapping VA `va(p)` to `output(p)` for the source and destination,
/// with its CD in a fresh page: (CD table page, CD).
pub(crate) fn stage1_space<H: Harness>(
    s: S<'_, '_, H>,
    asid: smmu::Asid,
    addressing: Addressing,
    destination: usize,
) -> Result<(usize, smmu::cd::Cd), Stop> {
    let root = s.new_table()?;
    let output = |s: &Suite<'_, H>, index: usize| match addressing {
        Addressing::Physical => s.pa(index),
        Addressing::Window => Suite::<H>::ipa(index),
    };
    let (source_out, destination_out) = (output(s, page::SOURCE), output(s, destination));
    s.map_stage1(
        root,
        Suite::<H>::va(page::SOURCE),
        source_out,
        S1Access::ReadWrite,
        addressing,
    )?;
    s.map_stage1(
        root,
        Suite::<H>::va(page::DESTINATION),
        destination_out,
        S1Access::ReadWrite,
        addressing,
    )?;
    let cd = s.make_cd(root, asid, addressing)?;
    let table = s.allocate()?;
    Ok((table, cd))
}

/// Case: stage 1 alone, with tables and a CD at physical addresses.
pub(crate) fn stage1_translates<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    let (table, cd) = stage1_space(s, ids::ASID, Addressing::Physical, page::DESTINATION)?;
    s.install_cd(table, 0, &cd)?;
    let features = *s.driver().features();
    let context = s.context_table(PhysAddr(s.pa(table)), S1Fmt::Linear, 0, S1Dss::Terminate)?;
    let ste = make_stage1_ste(&context, ids::VMID_STAGE1, &features)
        .map_err(|_| Stop::Fail("stage-1 STE refused by make"))?;
    s.install(&ste)?;
    s.fill(page::DESTINATION, |_| 0);
    let seed = s.copy(
        page::SOURCE,
        Suite::<H>::va(page::SOURCE),
        Suite::<H>::va(page::DESTINATION),
        None,
    )?;
    s.expect_pattern(page::DESTINATION, seed)?;
    s.drain().expect_none()
}

/// Case: stage 1 nested over stage 2. The STE's CD pointer, the CD's TTB0, every table pointer
/// and every stage-1 output are IPAs, none equal to the physical address behind it.
pub(crate) fn nested_translates<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    let stage2 = window_stage2(s)?;
    let (table, cd) = stage1_space(s, ids::ASID_B, Addressing::Window, page::DESTINATION)?;
    s.install_cd(table, 0, &cd)?;
    let context = s.context_table(
        Ipa(Suite::<H>::ipa(table)),
        S1Fmt::Linear,
        0,
        S1Dss::Terminate,
    )?;
    let ste =
        make_nested_ste(&context, &stage2).map_err(|_| Stop::Fail("nested STE refused by make"))?;
    s.install(&ste)?;
    s.fill(page::DESTINATION, |_| 0);
    let seed = s.copy(
        page::SOURCE,
        Suite::<H>::va(page::SOURCE),
        Suite::<H>::va(page::DESTINATION),
        None,
    )?;
    s.expect_pattern(page::DESTINATION, seed)?;
    s.drain().expect_none()
}

/// Two stage-2 tables under one VMID: A (the window) and B (the window with the destination's
/// IPA pointing at DESTINATION_B).
pub(crate) fn stage2_pair<H: Harness>(
    s: S<'_, '_, H>,
) -> Result<(Stage2Translation, Stage2Translation), Stop> {
    let a = window_stage2(s)?;
    let root_b = s.new_table()?;
    s.map_window(root_b)?;
    let b_page = s.pa(page::DESTINATION_B);
    s.map_stage2(
        root_b,
        Suite::<H>::ipa(page::DESTINATION),
        b_page,
        crate::tables::S2Access::ReadWrite,
    )?;
    let b = s.stage2(root_b, ids::VMID)?;
    Ok((a, b))
}

/// Case: the live stage-2 STE moves from table A to table B (same VMID, new S2TTB) with one
/// store to qword 3 and one sync; DMA before lands in A's destination, after in B's.
pub(crate) fn hitless_stage2_replace<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    let (a, b) = stage2_pair(s)?;
    s.install(&make_stage2_ste(&a))?;
    s.fill(page::DESTINATION, |_| 0);
    s.fill(page::DESTINATION_B, |_| 0);
    let (source, destination) = (
        Suite::<H>::ipa(page::SOURCE),
        Suite::<H>::ipa(page::DESTINATION),
    );
    let before = s.copy(page::SOURCE, source, destination, None)?;
    let report = s.install(&make_stage2_ste(&b))?;
    check(
        report.path == (UpdatePath::Hitless { critical_qword: 3 })
            && report.writes == 1
            && report.syncs == 1,
        "the installer did not take the one-store hitless path",
    )?;
    let after = s.copy(page::SOURCE, source, destination, None)?;
    s.expect_pattern(page::DESTINATION, before)?;
    s.expect_pattern(page::DESTINATION_B, after)?;
    s.drain().expect_none()
}

/// Case: an undefined opcode stops the queue with CERROR_ILL; the driver reports it (kind,
/// index, opcode), acknowledges GERROR.CMDQ_ERR, and the queue and DMA keep working.
pub(crate) fn illegal_command_recovered<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    expect_illegal(
        s,
        Command::from_words([u64::from(UNDEFINED_OPCODE), 0]),
        UNDEFINED_OPCODE,
    )?;
    let stage2 = window_stage2(s)?;
    s.install(&make_stage2_ste(&stage2))?;
    let seed = s.copy(
        page::SOURCE,
        Suite::<H>::ipa(page::SOURCE),
        Suite::<H>::ipa(page::DESTINATION),
        None,
    )?;
    s.expect_pattern(page::DESTINATION, seed)?;
    s.drain().expect_none()
}

/// Submits `command` alone and checks that the SMMU refused it with CERROR_ILL at its index,
/// that the driver recovered, and that a following sync completes.
pub(crate) fn expect_illegal<H: Harness>(
    s: S<'_, '_, H>,
    command: Command,
    opcode: u8,
) -> CaseResult {
    let index = s.driver().command_queue_prod().index();
    s.driver()
        .submit_raw(&[command])
        .map_err(|_| Stop::Fail("could not submit"))?;
    let reported = s.driver().sync();
    let expected = DriverError::CommandError {
        kind: CommandErrorKind::Illegal,
        index,
        opcode,
    };
    if reported != Err(expected) {
        s.h.note(
            "sync after the command: Ok (0) or another error (1)",
            &[u64::from(reported.is_err())],
        );
        return Err(Stop::Fail(
            "the SMMU did not report CERROR_ILL at the command's index",
        ));
    }
    check(
        !s.driver().active_global_errors().cmdq_err(),
        "GERROR.CMDQ_ERR is still active",
    )?;
    s.driver()
        .sync()
        .map_err(|_| Stop::Fail("a CMD_SYNC after recovery failed"))
}

/// Case: an STE enabling stage 2 with S2AA64 = 0 (which makes QEMU abort) is refused by the
/// physical guard and by the installer before any store; the SMMU still answers and
/// translates afterwards.
pub(crate) fn s2aa64_zero_refused<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    let stage2 = window_stage2(s)?;
    let good = make_stage2_ste(&stage2);
    s.install(&good)?;
    let mut bad = good;
    bad.set_s2aa64(false);
    check(
        check_physical_ste(&bad) == Err(PhysicalEntryError::Stage2WithoutAArch64),
        "check_physical_ste accepted S2AA64 = 0",
    )?;
    let stream = s.stream();
    let before = s
        .driver()
        .read_ste(stream)
        .map_err(|_| Stop::Fail("STE unreadable"))?;
    let outcome = s.try_install(&bad)?;
    check(
        matches!(
            outcome,
            Err(TryInstallError::Refused(
                PhysicalEntryError::Stage2WithoutAArch64
            ))
        ),
        "the target became a physical STE",
    )?;
    let after = s
        .driver()
        .read_ste(stream)
        .map_err(|_| Stop::Fail("STE unreadable"))?;
    check(
        before == after,
        "the STE changed although the install was refused",
    )?;
    s.driver()
        .sync()
        .map_err(|_| Stop::Fail("the SMMU no longer answers CMD_SYNC"))?;
    let seed = s.copy(
        page::SOURCE,
        Suite::<H>::ipa(page::SOURCE),
        Suite::<H>::ipa(page::DESTINATION),
        None,
    )?;
    s.expect_pattern(page::DESTINATION, seed)?;
    s.drain().expect_none()
}

/// Checks that the owner cannot release `range` (one pinned page).
fn expect_busy(pins: &mut PinTable<'_>, range: PhysRange) -> CaseResult {
    check(
        matches!(pins.release(range), Err(PinError::Busy { page }) if page == range.base),
        "buffer A's release was not refused as Busy",
    )
}

/// Case: the unmap lifecycle of a `smmu::domain::Stage2Domain` against the SMMU: buffer A
/// stays pinned through map, unmap and invalidation; a proof from before the unmap is refused;
/// after a fresh sync the IOVA faults (F_TRANSLATION, buffer A untouched), completion unpins,
/// and the release succeeds. The stream goes back to abort whatever the outcome.
pub(crate) fn stage2_domain_unmap_pins<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    let outcome = domain_lifecycle(s);
    let restored = s.install(&make_abort_ste());
    outcome?;
    restored.map(|_| ())
}

fn domain_lifecycle<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    let features = *s.driver().features();
    let source = PhysAddr(s.pa(page::DOMAIN_SOURCE));
    let buffer_a = PhysAddr(s.pa(page::DOMAIN_A));
    require(
        buffer_a.0 == source.0 + PAGE,
        "the domain's two pages are not physically contiguous",
    )?;
    let tables =
        s.h.domain_tables()
            .ok_or(Stop::NotApplicable("no table pool for a stage-2 domain"))?;
    let page_a = PhysRange::new(buffer_a.0, PAGE);
    let mut counts = [0u16; 2];
    let mut pins = PinTable::new(source, &mut counts, DOMAIN_BUDGET)
        .map_err(|_| Stop::Fail("pin table refused"))?;
    let config = DomainConfig {
        vmid: ids::VMID_DOMAIN,
        geometry: Stage2Geometry::QEMU_VIRT,
        walk: WalkAttributes::COHERENT,
        usage: Stage2Use::Stage2Only,
        record_faults: true,
        max_pages_per_call: DOMAIN_BUDGET,
    };
    config
        .geometry
        .check(&features)
        .map_err(|_| Stop::NotApplicable("the SMMU cannot walk the domain's geometry"))?;
    let mut domain = Stage2Domain::new(tables, config).map_err(|_| Stop::Fail("domain refused"))?;
    for (ipa, pa) in [(IPA_DOMAIN_SOURCE, source), (IPA_DOMAIN_A, buffer_a)] {
        domain
            .map(&mut pins, Ipa(ipa), pa, PAGE, Permissions::RAM)
            .map_err(|_| Stop::Fail("domain map failed"))?;
    }
    let translation = Stage2Translation::new(domain.stage2_parameters(), &features)
        .map_err(|_| Stop::Fail("the domain's stage-2 parameters were refused by make"))?;
    s.install(&make_stage2_ste(&translation))?;

    s.fill(page::DOMAIN_A, |_| 0);
    let seed = s.copy(page::DOMAIN_SOURCE, IPA_DOMAIN_SOURCE, IPA_DOMAIN_A, None)?;
    s.expect_pattern(page::DOMAIN_A, seed)?;
    s.drain().expect_none()?;
    expect_busy(&mut pins, page_a)?;

    let stale = s
        .driver()
        .sync_with_proof()
        .map_err(|_| Stop::Fail("sync_with_proof failed"))?;
    let mut pending = domain
        .unmap(Ipa(IPA_DOMAIN_A), PAGE)
        .map_err(|_| Stop::Fail("domain unmap failed"))?;
    check(
        domain.translate(Ipa(IPA_DOMAIN_A)).is_none(),
        "the unmapped IOVA still translates in the domain's table",
    )?;
    expect_busy(&mut pins, page_a)?;
    pending
        .invalidate(s.driver())
        .map_err(|_| Stop::Fail("the domain's invalidation failed"))?;
    expect_busy(&mut pins, page_a)?;

    let pending = match domain.complete(&mut pins, pending, &stale) {
        Ok(_) => {
            return Err(Stop::Fail(
                "complete accepted a proof taken before the unmap",
            ));
        }
        Err(Refused {
            reason: CompletionError::StaleProof { .. },
            pending,
        }) => pending,
        Err(_) => return Err(Stop::Fail("a stale proof was refused for the wrong reason")),
    };
    check(
        pending.ipa() == Ipa(IPA_DOMAIN_A) && pending.pages() == 1,
        "the refused pending came back changed",
    )?;
    expect_busy(&mut pins, page_a)?;

    let proof = s
        .driver()
        .sync_with_proof()
        .map_err(|_| Stop::Fail("sync_with_proof failed"))?;
    // The sync has completed the invalidation: the write must fault, not reach buffer A.
    s.fill(page::DOMAIN_A, |_| CANARY);
    let _ = s.drain();
    s.dma(Direction::DeviceToRam, IPA_DOMAIN_A, BLOCKED_BYTES, None)?;
    s.expect_canary(page::DOMAIN_A)?;
    let stream = s.stream();
    let count = s.faults_for(BLOCKED_BYTES);
    s.drain().expect(count, |event| {
        event.id == EventId::FTranslation
            && event.sid == stream
            && event.ssid.is_none()
            && event.s2
            && !event.rnw
            && event.class == FaultClass::Input
            && event.addr2 == EventAddress::Ipa(Ipa(IPA_DOMAIN_A))
    })?;

    let unpinned = domain
        .complete(&mut pins, pending, &proof)
        .map_err(|_| Stop::Fail("complete refused a fresh proof"))?;
    check(
        unpinned.pages == 1 && pins.state(buffer_a) == Some(PageState::Pinned(0)),
        "completion did not unpin buffer A",
    )?;
    check(
        domain.pending_pages() == 0 && domain.mapped_pages() == 1,
        "the domain's page counts are wrong after completion",
    )?;
    pins.release(page_a)
        .map_err(|_| Stop::Fail("buffer A could not be released after completion"))?;
    check(
        pins.state(buffer_a) == Some(PageState::Released),
        "buffer A is not released",
    )?;
    // Dropping the domain leaks its tables (the stream still names them until the caller
    // puts it back to abort), which is the safe direction.
    Ok(())
}
