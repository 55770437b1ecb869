//! Cases for substreams (PASIDs), ATS, PRI, the stall model and MSIs: features QEMU's SMMU
//! does not have, so these run on the reference model (and on any SMMU and device that have
//! them).

use smmu::cd::Cd;
use smmu::command::{Cmd, PriResponse, ResumeAction, SyncCompletion, TlbiScope};
use smmu::entry::make::{make_stage1_ste, make_stage2_ste};
use smmu::event::{EventId, FaultClass};
use smmu::registers::StallModel;
use smmu::ste::{Eats, S1Dss, S1Fmt, Ste};
use smmu::{Asid, Iova, Ipa, PhysAddr, SubstreamId};

use super::ported::{BLOCKED_BYTES, window_stage2};
use crate::harness::{AtsResult, DeviceReaction, Direction, Harness, PageRequestSpec};
use crate::suite::{CANARY, CaseResult, PAGE, Stop, Suite, check, ids, page, pattern, require};
use crate::tables::{Addressing, S1Access};

type S<'a, 'h, H> = &'a mut Suite<'h, H>;

/// The substream size the cases use: 4 CDs.
const CDMAX: u8 = 2;

/// Requires substreams at the SMMU and PASIDs at the device.
fn require_substreams<H: Harness>(s: S<'_, '_, H>, bits: u8) -> CaseResult {
    require(
        s.driver().features().ssidsize >= bits,
        "the SMMU has too few substreams",
    )?;
    require(s.h.device().pasid, "the device cannot tag a PASID")
}

/// A stage-1 address space (tables at physical addresses) mapping the source VA to SOURCE and
/// the destination VA to `destination`, as a CD with `asid`.
fn address_space<H: Harness>(s: S<'_, '_, H>, asid: Asid, destination: usize) -> Result<Cd, Stop> {
    let root = s.new_table()?;
    let (source_pa, destination_pa) = (s.pa(page::SOURCE), s.pa(destination));
    s.map_stage1(
        root,
        Suite::<H>::va(page::SOURCE),
        source_pa,
        S1Access::ReadWrite,
        Addressing::Physical,
    )?;
    s.map_stage1(
        root,
        Suite::<H>::va(page::DESTINATION),
        destination_pa,
        S1Access::ReadWrite,
        Addressing::Physical,
    )?;
    s.make_cd(root, asid, Addressing::Physical)
}

/// Installs a stage-1-only STE for the linear CD table in page `table` with S1CDMax and S1DSS.
fn install_substream_ste<H: Harness>(
    s: S<'_, '_, H>,
    table: usize,
    fmt: S1Fmt,
    cdmax: u8,
    dss: S1Dss,
    adjust: impl Fn(&mut Ste),
) -> CaseResult {
    let features = *s.driver().features();
    let context = s.context_table(PhysAddr(s.pa(table)), fmt, cdmax, dss)?;
    let mut ste = make_stage1_ste(&context, ids::VMID_STAGE1, &features)
        .map_err(|_| Stop::Fail("stage-1 STE refused by make"))?;
    adjust(&mut ste);
    s.install(&ste)?;
    Ok(())
}

/// Copies through the VA window with `ssid` and returns where the data landed.
fn copy_with<H: Harness>(s: S<'_, '_, H>, ssid: Option<u32>) -> Result<Option<usize>, Stop> {
    s.fill(page::DESTINATION, |_| 0);
    s.fill(page::DESTINATION_B, |_| 0);
    let seed = s.copy(
        page::SOURCE,
        Suite::<H>::va(page::SOURCE),
        Suite::<H>::va(page::DESTINATION),
        ssid.map(SubstreamId),
    )?;
    Ok([page::DESTINATION, page::DESTINATION_B]
        .into_iter()
        .find(|&p| s.first_difference(p, 512, pattern(seed)).is_none()))
}

/// Case: two substreams of one stream translate in their own address spaces (CDs 1 and 2 of
/// a linear CD table, ASIDs 1 and 2): the same VA lands in different pages.
pub(crate) fn substreams_select_address_spaces<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    require_substreams(s, CDMAX)?;
    let table = s.allocate()?;
    let a = address_space(s, ids::ASID, page::DESTINATION)?;
    let b = address_space(s, ids::ASID_B, page::DESTINATION_B)?;
    s.install_cd(table, 1, &a)?;
    s.install_cd(table, 2, &b)?;
    install_substream_ste(s, table, S1Fmt::Linear, CDMAX, S1Dss::Terminate, |_| {})?;
    check(
        copy_with(s, Some(1))? == Some(page::DESTINATION),
        "substream 1 did not translate with CD 1",
    )?;
    check(
        copy_with(s, Some(2))? == Some(page::DESTINATION_B),
        "substream 2 did not translate with CD 2",
    )?;
    s.drain().expect_none()
}

/// Case: a two-level CD table (4 KiB leaves): substream 0x85 is found through L1CD 2, slot 5;
/// substream 0xc5 meets an L1CD with V = 0 and is C_BAD_SUBSTREAMID, naming 0xc5.
pub(crate) fn two_level_cd_table<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    require_substreams(s, 8)?;
    require(
        s.driver().features().cd2l,
        "the SMMU has no two-level CD tables",
    )?;
    let l1 = s.allocate()?;
    let leaf = s.allocate()?;
    let leaf_pa = s.pa(leaf);
    s.h.write_word(l1, 2, leaf_pa | 1);
    s.h.barrier();
    let cd = address_space(s, ids::ASID, page::DESTINATION)?;
    s.install_cd_at(leaf, 5, SubstreamId(0x85), &cd)?;
    install_substream_ste(s, l1, S1Fmt::TwoLevel4K, 8, S1Dss::Terminate, |_| {})?;
    check(
        copy_with(s, Some(0x85))? == Some(page::DESTINATION),
        "substream 0x85 did not translate through the two-level table",
    )?;
    s.drain().expect_none()?;
    s.fill(page::DESTINATION, |_| CANARY);
    s.dma(
        Direction::DeviceToRam,
        Suite::<H>::va(page::DESTINATION),
        BLOCKED_BYTES,
        Some(SubstreamId(0xc5)),
    )?;
    s.expect_canary(page::DESTINATION)?;
    let stream = s.stream();
    s.drain().expect(s.faults_for(BLOCKED_BYTES), |event| {
        event.id == EventId::CBadSubstreamid
            && event.sid == stream
            && event.ssid == Some(SubstreamId(0xc5))
    })
}

/// A blocked 8-byte write through the VA window with `ssid`; the events it caused.
fn blocked_with<H: Harness>(
    s: S<'_, '_, H>,
    ssid: Option<u32>,
) -> Result<crate::suite::Seen, Stop> {
    s.fill(page::DESTINATION, |_| CANARY);
    let _ = s.drain();
    s.dma(
        Direction::DeviceToRam,
        Suite::<H>::va(page::DESTINATION),
        BLOCKED_BYTES,
        ssid.map(SubstreamId),
    )?;
    s.expect_canary(page::DESTINATION)?;
    Ok(s.drain())
}

/// Case: the substream rules of the STE (5.2 S1CDMax, S1DSS; 7.3.7, 7.3.9): a SubstreamID
/// beyond S1CDMax is C_BAD_SUBSTREAMID; no SubstreamID with S1DSS = terminate is
/// F_STREAM_DISABLED; with S1DSS = substream 0, no SubstreamID uses CD 0 and SubstreamID 0 is
/// F_STREAM_DISABLED; with S1DSS = bypass, no SubstreamID bypasses stage 1; a SubstreamID on a
/// stream without stage 1 is C_BAD_SUBSTREAMID.
pub(crate) fn substream_rules<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    require_substreams(s, CDMAX)?;
    let stream = s.stream();
    let faults = s.faults_for(BLOCKED_BYTES);
    let table = s.allocate()?;
    let cd = address_space(s, ids::ASID, page::DESTINATION)?;
    s.install_cd(table, 0, &cd)?;
    s.install_cd(table, 1, &cd)?;
    install_substream_ste(s, table, S1Fmt::Linear, CDMAX, S1Dss::Terminate, |_| {})?;
    blocked_with(s, Some(4))?.expect(faults, |e| {
        e.id == EventId::CBadSubstreamid && e.sid == stream && e.ssid == Some(SubstreamId(4))
    })?;
    blocked_with(s, None)?.expect(faults, |e| {
        e.id == EventId::FStreamDisabled && e.sid == stream && e.ssid.is_none()
    })?;

    install_substream_ste(s, table, S1Fmt::Linear, CDMAX, S1Dss::Substream0, |_| {})?;
    check(
        copy_with(s, None)? == Some(page::DESTINATION),
        "S1DSS = substream 0 did not translate non-substream traffic with CD 0",
    )?;
    blocked_with(s, Some(0))?.expect(faults, |e| {
        e.id == EventId::FStreamDisabled && e.sid == stream
    })?;

    install_substream_ste(s, table, S1Fmt::Linear, CDMAX, S1Dss::Bypass, |_| {})?;
    // Stage 1 bypassed, no stage 2: the IOVA is the physical address.
    s.fill(page::DESTINATION_B, |_| 0);
    let seed = s.copy(
        page::SOURCE,
        s.pa(page::SOURCE),
        s.pa(page::DESTINATION_B),
        None,
    )?;
    s.expect_pattern(page::DESTINATION_B, seed)?;
    check(
        copy_with(s, Some(1))? == Some(page::DESTINATION),
        "substream 1 stopped translating",
    )?;

    let stage2 = window_stage2(s)?;
    s.install(&make_stage2_ste(&stage2))?;
    let _ = s.drain();
    s.dma(
        Direction::DeviceToRam,
        Suite::<H>::ipa(page::DESTINATION),
        BLOCKED_BYTES,
        Some(SubstreamId(1)),
    )?;
    s.drain().expect(faults, |e| {
        e.id == EventId::CBadSubstreamid && e.ssid == Some(SubstreamId(1))
    })
}

/// Requires ATS at the SMMU and the device, and empties the device's ATC (CMD_ATC_INV of
/// everything, and a sync) so the case starts from nothing cached.
fn require_ats<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    require(s.driver().features().ats, "the SMMU has no ATS")?;
    require(s.h.device().ats, "the device has no ATS")?;
    let stream = s.stream();
    s.submit_and_sync(&[Cmd::AtcInv {
        sid: stream,
        ssid: None,
        global: false,
        size: 52,
        addr: Iova(0),
    }])?;
    check(
        s.h.atc_entries() == Ok(0),
        "CMD_ATC_INV of everything left ATC entries",
    )
}

/// A stage-2-only STE over the window with EATS = full ATS.
fn install_ats_stage2<H: Harness>(s: S<'_, '_, H>, eats: Eats) -> Result<usize, Stop> {
    let root = s.new_table()?;
    s.map_window(root)?;
    let stage2 = s.stage2(root, ids::VMID)?;
    let mut ste = make_stage2_ste(&stage2);
    ste.set_eats(eats);
    s.install(&ste)?;
    Ok(root)
}

/// The device's ATS translation of `iova` (no PASID).
fn ats<H: Harness>(
    s: S<'_, '_, H>,
    ssid: Option<u32>,
    iova: u64,
    write: bool,
) -> Result<AtsResult, Stop> {
    s.h.ats_translate(ssid.map(SubstreamId), iova, write)
        .map_err(|_| Stop::NotApplicable("the device has no ATS"))
}

/// Case: an ATS translation request is answered with the stage-2 output and cached in the
/// device's ATC, whose translated writes reach that page; after the mapping changes, TLBI +
/// sync + CMD_ATC_INV + sync empty the ATC and a new request returns the new page.
pub(crate) fn ats_translation_and_atc_invalidation<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    require_ats(s)?;
    let root = install_ats_stage2(s, Eats::Translate)?;
    let destination = Suite::<H>::ipa(page::DESTINATION);
    let result = ats(s, None, destination, true)?;
    let expected = s.pa(page::DESTINATION);
    check(
        result
            == AtsResult::Success {
                pa: expected,
                read: true,
                write: true,
            },
        "the translation completion is not the stage-2 output with read and write",
    )?;
    check(
        s.h.atc_entries() == Ok(1),
        "the completion was not cached in the ATC",
    )?;
    // Translated traffic from the ATC: the device buffer (a fresh pattern) lands in place.
    let seed = s.next_seed();
    s.fill(page::SOURCE, pattern(seed));
    s.dma(
        Direction::RamToDevice,
        Suite::<H>::ipa(page::SOURCE),
        PAGE,
        None,
    )?;
    s.fill(page::DESTINATION, |_| 0);
    let written =
        s.h.translated_write(None, destination, PAGE)
            .map_err(|_| Stop::NotApplicable("the device has no ATS"))?;
    check(
        written.is_some(),
        "the ATC had no entry for a translated write",
    )?;
    s.expect_pattern(page::DESTINATION, seed)?;

    let b = s.pa(page::DESTINATION_B);
    s.map_stage2(root, destination, b, crate::tables::S2Access::ReadWrite)?;
    let stream = s.stream();
    s.submit_and_sync(&[Cmd::TlbiS2Ipa {
        vmid: ids::VMID,
        scope: TlbiScope::default(),
        addr: Ipa(destination),
    }])?;
    s.submit_and_sync(&[Cmd::AtcInv {
        sid: stream,
        ssid: None,
        global: false,
        size: 0,
        addr: Iova(destination),
    }])?;
    check(
        s.h.atc_entries() == Ok(0),
        "CMD_ATC_INV and CMD_SYNC left the ATC entry",
    )?;
    let written =
        s.h.translated_write(None, destination, PAGE)
            .map_err(|_| Stop::NotApplicable("the device has no ATS"))?;
    check(
        written.is_none(),
        "a translated write used an invalidated ATC entry",
    )?;
    let result = ats(s, None, destination, true)?;
    check(
        matches!(result, AtsResult::Success { pa, .. } if pa == b),
        "a new translation request did not return the new page",
    )?;
    s.drain().expect_none()
}

/// Case: ATS requests for a stream with EATS = 0 are Unsupported Requests and record
/// F_BAD_ATS_TREQ; with EATS = 1, a translation fault is a success granting nothing, and
/// records no event (3.9.1.2).
pub(crate) fn ats_refused_and_faulting_requests<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    require_ats(s)?;
    install_ats_stage2(s, Eats::Abort)?;
    let destination = Suite::<H>::ipa(page::DESTINATION);
    check(
        ats(s, None, destination, false)? == AtsResult::UnsupportedRequest,
        "an ATS request with EATS = 0 was not an Unsupported Request",
    )?;
    let stream = s.stream();
    s.drain()
        .expect(1, |e| e.id == EventId::FBadAtsTreq && e.sid == stream)?;
    install_ats_stage2(s, Eats::Translate)?;
    let unmapped = s.pa(page::CANARY);
    check(
        matches!(
            ats(s, None, unmapped, true)?,
            AtsResult::Success {
                read: false,
                write: false,
                ..
            }
        ),
        "a translation fault was not answered with R = W = 0",
    )?;
    check(
        s.h.atc_entries() == Ok(0),
        "a denied translation was cached",
    )?;
    s.drain().expect_none()
}

/// Requires PRI at the SMMU and the device, with PASIDs and ATS.
fn require_pri<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    require(s.driver().features().pri, "the SMMU has no PRI")?;
    require(s.h.device().pri, "the device has no PRI")?;
    require_ats(s)?;
    require_substreams(s, 1)
}

/// A PASID (substream 1) whose CD has tables mapping nothing yet, with EATS = full ATS and
/// PPAR = 1: the stage-1 root, for pages to be "paged in" later.
///
/// PPAR must match the function's "PRG Response PASID Required" (IHI 0070 8.1): an automatic
/// response to an overflowed request carries the PASID only if PPAR (or IDR3.PPS) says so,
/// and a function that requires it treats a response without one as unexpected.
/// `smmu::entry::make` never sets PPAR, so the hypervisor must for such functions.
fn pri_space<H: Harness>(s: S<'_, '_, H>) -> Result<usize, Stop> {
    let table = s.allocate()?;
    let root = s.new_table()?;
    let cd = s.make_cd(root, ids::ASID, Addressing::Physical)?;
    s.install_cd(table, 1, &cd)?;
    install_substream_ste(s, table, S1Fmt::Linear, 1, S1Dss::Terminate, |ste| {
        ste.set_eats(Eats::Translate);
        ste.set_ppar(true);
    })?;
    Ok(root)
}

/// Sends a group for `pages` VA-window pages from substream 1.
fn send_group<H: Harness>(s: S<'_, '_, H>, pages: &[usize]) -> Result<Option<u16>, Stop> {
    let mut spec = [PageRequestSpec::default(); 4];
    for (slot, &p) in spec.iter_mut().zip(pages) {
        *slot = PageRequestSpec {
            address: Suite::<H>::va(p),
            write: true,
        };
    }
    let count = pages.len().min(spec.len());
    s.h.page_request_group(Some(SubstreamId(1)), spec.get(..count).unwrap_or_default())
        .map_err(|_| Stop::NotApplicable("the device has no PRI"))
}

/// Answers PRG `prg` of substream 1.
fn respond<H: Harness>(s: S<'_, '_, H>, prg: u16, response: PriResponse) -> CaseResult {
    let stream = s.stream();
    s.submit_and_sync(&[Cmd::PriResp {
        sid: stream,
        ssid: Some(SubstreamId(1)),
        prg_index: prg,
        response,
    }])
}

/// The device's reactions to the responses it has.
fn reactions<H: Harness>(s: S<'_, '_, H>) -> Result<heapless::Vec<DeviceReaction, 16>, Stop> {
    let mut seen = heapless::Vec::new();
    s.h.handle_responses(&mut |reaction| {
        let _ = seen.push(reaction);
    })
    .map_err(|_| Stop::NotApplicable("the device has no PRI"))?;
    Ok(seen)
}

/// Case: a page request group (two pages, PASID 1) reaches the PRI queue as two requests with
/// one PRG index, Last on the second; once the pages are mapped, CMD_PRI_RESP(Success) makes
/// the device retry and its translations succeed.
pub(crate) fn pri_group_answered_and_retried<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    require_pri(s)?;
    let root = pri_space(s)?;
    let denied = ats(s, Some(1), Suite::<H>::va(page::DESTINATION), true)?;
    check(
        matches!(
            denied,
            AtsResult::Success {
                read: false,
                write: false,
                ..
            }
        ),
        "an unmapped page was translated",
    )?;
    let prg = send_group(s, &[page::DESTINATION, page::DESTINATION_B])?
        .ok_or(Stop::Fail("the device refused to send the group"))?;
    let (requests, overflows) = s.drain_page_requests::<8>()?;
    let stream = s.stream();
    check(
        overflows == 0 && requests.len() == 2,
        "the group did not arrive as two requests",
    )?;
    let well_formed = requests.iter().enumerate().all(|(i, r)| {
        r.sid == stream
            && r.ssid == Some(SubstreamId(1))
            && r.prg_index == prg
            && r.write
            && r.last == (i == 1)
            && !r.is_stop_marker()
    });
    check(well_formed, "the page requests do not describe the group")?;
    for p in [page::DESTINATION, page::DESTINATION_B] {
        let pa = s.pa(p);
        s.map_stage1(
            root,
            Suite::<H>::va(p),
            pa,
            S1Access::ReadWrite,
            Addressing::Physical,
        )?;
    }
    respond(s, prg, PriResponse::Success)?;
    let seen = reactions(s)?;
    check(
        seen.as_slice()
            == [DeviceReaction::Retried {
                prg_index: prg,
                pages: 2,
                translated: 2,
            }],
        "the device did not retry the group successfully",
    )?;
    check(
        s.h.atc_entries() == Ok(2),
        "the retried translations were not cached",
    )?;
    s.drain().expect_none()
}

/// Case: Invalid Request makes the device give up on a group; Response Failure makes it stop
/// using PRI, after which it sends no more groups.
pub(crate) fn pri_failure_responses<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    require_pri(s)?;
    pri_space(s)?;
    let first = send_group(s, &[page::DESTINATION])?.ok_or(Stop::Fail("group refused"))?;
    respond(s, first, PriResponse::InvalidRequest)?;
    let seen = reactions(s)?;
    check(
        seen.as_slice() == [DeviceReaction::GaveUp { prg_index: first }],
        "Invalid Request did not make the device give up",
    )?;
    let second = send_group(s, &[page::DESTINATION])?.ok_or(Stop::Fail("group refused"))?;
    respond(s, second, PriResponse::ResponseFailure)?;
    let seen = reactions(s)?;
    check(
        seen.as_slice() == [DeviceReaction::PriStopped { prg_index: second }],
        "Response Failure did not stop the device's PRI",
    )?;
    check(
        send_group(s, &[page::DESTINATION])?.is_none(),
        "the device sent a group after Response Failure",
    )?;
    let _ = s.drain_page_requests::<8>()?;
    // Software re-enables PRI at the function, as after any Response Failure.
    s.h.reset_pri()
        .map_err(|_| Stop::NotApplicable("the device cannot reset its PRI"))?;
    s.drain().expect_none()
}

/// Case: a stop marker reaches the PRI queue with the PASID, R = W = 0 and Last = 1, and is
/// decoded as one; it needs no response.
pub(crate) fn pri_stop_marker<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    require_pri(s)?;
    pri_space(s)?;
    s.h.stop_marker(SubstreamId(1))
        .map_err(|_| Stop::NotApplicable("the device cannot send stop markers"))?;
    let (requests, _) = s.drain_page_requests::<4>()?;
    let stream = s.stream();
    check(
        matches!(requests.as_slice(), [r] if r.is_stop_marker()
            && r.sid == stream
            && r.ssid == Some(SubstreamId(1))
            && !r.read && !r.write && r.last),
        "the stop marker did not arrive as one",
    )?;
    check(reactions(s)?.is_empty(), "a stop marker was answered")?;
    s.drain().expect_none()
}

/// Case: a device ignoring its credits fills the PRI queue; further requests are discarded
/// (8.1): a Last request gets an automatic Success, which the device retries; a stop marker is
/// dropped; the driver reports the overflow once; once drained, requests are queued again.
pub(crate) fn pri_queue_overflow<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    require_pri(s)?;
    let entries = s
        .driver()
        .pri_queue_entries()
        .ok_or(Stop::NotApplicable("no PRI queue"))?;
    require(entries <= 64, "the PRI queue is too large to fill quickly")?;
    s.h.ignore_pri_credits(true)
        .map_err(|_| Stop::NotApplicable("the device cannot ignore its credits"))?;
    let outcome = overflow_steps(s, entries);
    let restored = s.h.ignore_pri_credits(false);
    outcome?;
    restored.map_err(|_| Stop::Fail("the device's credits could not be restored"))
}

fn overflow_steps<H: Harness>(s: S<'_, '_, H>, entries: u32) -> CaseResult {
    pri_space(s)?;
    let mut queued = heapless::Vec::<u16, 64>::new();
    for _ in 0..entries {
        let prg = send_group(s, &[page::DESTINATION])?.ok_or(Stop::Fail("group refused"))?;
        let _ = queued.push(prg);
    }
    let overflowing = send_group(s, &[page::DESTINATION, page::DESTINATION_B])?
        .ok_or(Stop::Fail("group refused"))?;
    s.h.stop_marker(SubstreamId(1))
        .map_err(|_| Stop::NotApplicable("the device cannot send stop markers"))?;
    let seen = reactions(s)?;
    check(
        matches!(seen.as_slice(), [DeviceReaction::Retried { prg_index, .. }] if *prg_index == overflowing),
        "the Last request discarded in overflow was not answered Success automatically",
    )?;
    let (requests, overflows) = s.drain_page_requests::<64>()?;
    check(overflows == 1, "the overflow was not reported once")?;
    check(
        requests.len() == usize::try_from(entries).unwrap_or(0)
            && requests.iter().all(|r| !r.is_stop_marker() && r.last),
        "the queue does not hold exactly the groups that fitted",
    )?;
    for prg in queued {
        respond(s, prg, PriResponse::InvalidRequest)?;
    }
    let answered = reactions(s)?;
    check(
        answered
            .iter()
            .all(|r| matches!(r, DeviceReaction::GaveUp { .. })),
        "the queued groups were not answered",
    )?;
    let after = send_group(s, &[page::DESTINATION])?.ok_or(Stop::Fail("group refused"))?;
    let (requests, overflows) = s.drain_page_requests::<4>()?;
    check(
        overflows == 0 && matches!(requests.as_slice(), [r] if r.prg_index == after),
        "requests are not queued again after the overflow was acknowledged",
    )?;
    respond(s, after, PriResponse::InvalidRequest)?;
    let _ = reactions(s)?;
    s.drain().expect_none()
}

/// A stage-1 stream whose CD stalls faults (S = 1, S1STALLD = 0), with the destination VA
/// unmapped: the stage-1 root.
fn stalling_space<H: Harness>(s: S<'_, '_, H>) -> Result<usize, Stop> {
    require(
        s.driver().features().stall_model == StallModel::StallAndTerminate,
        "the SMMU cannot choose to stall",
    )?;
    let table = s.allocate()?;
    let root = s.new_table()?;
    let source = s.pa(page::SOURCE);
    s.map_stage1(
        root,
        Suite::<H>::va(page::SOURCE),
        source,
        S1Access::ReadWrite,
        Addressing::Physical,
    )?;
    let mut cd = s.make_cd(root, ids::ASID, Addressing::Physical)?;
    cd.set_s(true);
    s.write_cd_words(table, 0, &cd);
    install_substream_ste(s, table, S1Fmt::Linear, 0, S1Dss::Terminate, |ste| {
        ste.set_s1stalld(false);
    })?;
    Ok(root)
}

/// Case: a stage-1 fault with CD.S = 1 stalls the write and records an event with Stall = 1
/// and a STAG; once the page is mapped, CMD_RESUME(retry) completes the write.
pub(crate) fn stall_resume_retries<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    let root = stalling_space(s)?;
    let seed = s.next_seed();
    s.fill(page::SOURCE, pattern(seed));
    s.dma(
        Direction::RamToDevice,
        Suite::<H>::va(page::SOURCE),
        PAGE,
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
    s.expect_canary(page::DESTINATION)?;
    let seen = s.drain();
    let stream = s.stream();
    let faults = s.faults_for(BLOCKED_BYTES);
    seen.expect(faults, |e| {
        e.id == EventId::FTranslation && e.stall && e.sid == stream && e.class == FaultClass::Input
    })?;
    let destination = s.pa(page::DESTINATION);
    s.map_stage1(
        root,
        Suite::<H>::va(page::DESTINATION),
        destination,
        S1Access::ReadWrite,
        Addressing::Physical,
    )?;
    let resumes: heapless::Vec<Cmd, { crate::suite::SEEN }> = seen
        .events
        .iter()
        .map(|e| Cmd::Resume {
            sid: stream,
            action: ResumeAction::Retry,
            stag: e.stag,
        })
        .collect();
    s.submit_and_sync(&resumes)?;
    let landed = (0..usize::try_from(BLOCKED_BYTES / 8).unwrap_or(1))
        .all(|word| s.h.read_word(page::DESTINATION, word) == pattern(seed)(word));
    check(landed, "the resumed write did not complete")?;
    s.drain().expect_none()
}

/// Case: CMD_STALL_TERM terminates a stream's stalled transactions: nothing lands even once
/// the page is mapped.
pub(crate) fn stall_term_terminates<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    let root = stalling_space(s)?;
    s.fill(page::DESTINATION, |_| CANARY);
    let _ = s.drain();
    s.dma(
        Direction::DeviceToRam,
        Suite::<H>::va(page::DESTINATION),
        BLOCKED_BYTES,
        None,
    )?;
    let seen = s.drain();
    check(
        seen.total > 0 && seen.events.iter().all(|e| e.stall),
        "the write did not stall",
    )?;
    let destination = s.pa(page::DESTINATION);
    s.map_stage1(
        root,
        Suite::<H>::va(page::DESTINATION),
        destination,
        S1Access::ReadWrite,
        Addressing::Physical,
    )?;
    let stream = s.stream();
    s.install(&smmu::entry::make::make_abort_ste())?;
    s.submit_and_sync(&[Cmd::StallTerm { sid: stream }])?;
    s.expect_canary(page::DESTINATION)?;
    // A resume after the termination has nothing left to retry.
    let late: heapless::Vec<Cmd, { crate::suite::SEEN }> = seen
        .events
        .iter()
        .map(|e| Cmd::Resume {
            sid: stream,
            action: ResumeAction::Retry,
            stag: e.stag,
        })
        .collect();
    s.submit_and_sync(&late)?;
    s.expect_canary(page::DESTINATION)?;
    s.drain().expect_none()
}

/// Case: a CMD_SYNC with CS = IRQ and an MSI address writes its MSI data there when it
/// completes (4.7.3).
pub(crate) fn cmd_sync_msi<H: Harness>(s: S<'_, '_, H>) -> CaseResult {
    require(s.driver().features().msi, "the SMMU has no MSIs")?;
    s.fill(page::SCRATCH, |_| 0);
    let address = s.pa(page::SCRATCH) + 8;
    s.driver()
        .submit(&[Cmd::Sync {
            completion: SyncCompletion::Irq,
            msh: 3,
            msi_attr: 0xf,
            msi_data: 0x1234_5678,
            msi_addr: PhysAddr(address),
        }])
        .map_err(|_| Stop::Fail("submit failed"))?;
    s.driver().sync().map_err(|_| Stop::Fail("sync failed"))?;
    s.h.barrier();
    check(
        s.h.read_word(page::SCRATCH, 1) & 0xffff_ffff == 0x1234_5678,
        "the CMD_SYNC's MSI data did not arrive",
    )?;
    check(
        s.h.read_word(page::SCRATCH, 0) == 0,
        "the MSI wrote outside its word",
    )?;
    s.drain().expect_none()
}
