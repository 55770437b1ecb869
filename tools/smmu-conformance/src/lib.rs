//! SMMUv3 conformance cases, written once against an abstract SMMU-under-test ([`Harness`]),
//! run on the host against the reference model (`smmu-model`) and, from EL2, against QEMU's
//! SMMU with the `edu` device. `no_std`, no allocation: the hypervisor links it as it is.
//!
//! Each case drives the project's own `smmu` driver, entry makers and installer, and checks
//! what the architecture (IHI 0070) says must happen: where DMA lands, which events are
//! recorded with which fields, which commands are refused. A case the platform cannot run
//! (no substreams, ATS, PRI, stall or MSI; a device that cannot tag a PASID) is
//! [`Outcome::NotApplicable`], never a pass.
//!
//! - [`harness`]: the trait a platform implements (and how to implement it at EL2).
//! - [`suite`]: the cases' shared steps (test pages, installs, DMA, event intake).
//! - [`tables`]: stage-1/stage-2 tables and CDs built in test pages.
//! - `cases`: the cases; [`CASES`] lists them in the order they run.
//!
//! Running them: [`run`] calls a report function with each case's name and [`Outcome`].
//! Where QEMU's SMMU departs from the architecture, the case fails there; [`QEMU_DEVIATIONS`]
//! names those cases and why, so that a runner on QEMU can report them as known deviations
//! (and a deviation that disappears, or a new failure, stands out): [`verdict`] reads each
//! outcome that way for the hypervisor's EL2 runner (`hyp.selftest=conformance-suite`).

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

mod cases;
pub mod harness;
pub mod suite;
pub mod tables;
pub mod verdict;

pub use harness::{
    AtsResult, DeviceCapabilities, DeviceReaction, Direction, DmaResult, Harness, HarnessError,
    MIN_PAGES, PageRequestSpec, Unsupported,
};
pub use suite::{CaseResult, Stop, Suite};
pub use verdict::{QemuTally, QemuVerdict, qemu_verdict};

use smmu::entry::make::make_abort_ste;

/// How one case ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// Every check held.
    Pass,
    /// A check failed: what did not happen.
    Fail(&'static str),
    /// The platform lacks what the case needs.
    NotApplicable(&'static str),
}

impl Outcome {
    /// A short word for tables: PASS, FAIL, n/a.
    #[must_use]
    pub const fn label(&self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Fail(_) => "FAIL",
            Self::NotApplicable(_) => "n/a",
        }
    }
}

/// A named case.
pub struct Case {
    /// Its name, as reports print it.
    pub name: &'static str,
    /// What it shows, in one line.
    pub summary: &'static str,
    /// Which group it belongs to: `el2` (the ten cases the EL2 self-test always ran), `spec`
    /// (architecture checks for every SMMU), `pasid` (substreams, ATS, PRI, stall, MSI).
    pub group: &'static str,
}

impl core::fmt::Debug for Case {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name)
    }
}

macro_rules! cases {
    ($($group:literal $name:literal $function:path : $summary:literal;)*) => {
        /// Every case, in the order [`run`] runs them.
        pub const CASES: &[Case] = &[$(Case { name: $name, summary: $summary, group: $group },)*];

        fn run_case<H: Harness>(name: &str, suite: &mut Suite<'_, H>) -> Option<CaseResult> {
            match name {
                $($name => Some($function(suite)),)*
                _ => None,
            }
        }
    };
}

cases! {
    "el2" "stage2-dma-translates" cases::ported::stage2_dma_translates:
        "DMA through stage 2 lands where the IPAs point";
    "el2" "unmapped-iova-faults" cases::ported::unmapped_iova_faults:
        "a write to an unmapped IPA is blocked and recorded as F_TRANSLATION (S2, IN, IPA)";
    "el2" "abort-ste-blocks" cases::ported::abort_ste_blocks:
        "an abort STE blocks DMA silently";
    "el2" "missing-ste-aborts" cases::ported::missing_ste_aborts:
        "an STE with V=0 blocks DMA with C_BAD_STE";
    "el2" "stage1-translates" cases::ported::stage1_translates:
        "stage 1 alone translates with a CD and tables at PAs";
    "el2" "nested-translates" cases::ported::nested_translates:
        "stage 1 nested in stage 2: every pointer an IPA";
    "el2" "hitless-stage2-replace" cases::ported::hitless_stage2_replace:
        "a live stage-2 STE moves to new tables in one store and one sync";
    "el2" "illegal-command-recovered" cases::ported::illegal_command_recovered:
        "an undefined opcode is CERROR_ILL at its index; the queue recovers";
    "el2" "s2aa64-zero-refused" cases::ported::s2aa64_zero_refused:
        "an STE with stage 2 and S2AA64=0 never reaches the SMMU";
    "el2" "stage2-domain-unmap-pins" cases::ported::stage2_domain_unmap_pins:
        "a domain's unmapped page stays pinned until a sync after its TLBI";
    "spec" "stage1-permission-fault" cases::spec::stage1_permission_fault:
        "a write to a read-only stage-1 page is F_PERMISSION at stage 1";
    "spec" "cd-r-clear-suppresses-record" cases::spec::cd_r_clear_suppresses_record:
        "CD.R=0 blocks the same write without an event";
    "spec" "stage2-permission-fault" cases::spec::stage2_permission_fault:
        "a write to a read-only stage-2 page is F_PERMISSION at stage 2 with the IPA";
    "spec" "s2r-clear-suppresses-record" cases::spec::s2r_clear_suppresses_record:
        "STE.S2R=0 blocks a stage-2 fault without an event";
    "spec" "stale-translation-until-tlbi" cases::spec::stale_translation_until_tlbi:
        "a changed stage-2 leaf is used only after TLBI_S2_IPA and CMD_SYNC";
    "spec" "stale-ste-until-cfgi" cases::spec::stale_ste_until_cfgi:
        "a changed STE is used only after CFGI_STE and CMD_SYNC";
    "spec" "cd-replace-hitless" cases::spec::cd_replace_hitless:
        "a CD's tables are replaced in one store; TLBI_NH_ASID makes them used";
    "spec" "invalidation-completes-at-sync" cases::spec::invalidation_completes_at_sync:
        "a TLBI without its CMD_SYNC has not completed";
    "spec" "event-queue-overflow" cases::spec::event_queue_overflow:
        "a full event queue sets OVFLG, keeps what fitted, raises no global error";
    "spec" "atc-inv-illegal-without-ats" cases::spec::atc_inv_illegal_without_ats:
        "CMD_ATC_INV without IDR0.ATS is CERROR_ILL";
    "spec" "pri-resp-illegal-without-pri" cases::spec::pri_resp_illegal_without_pri:
        "CMD_PRI_RESP without IDR0.PRI is CERROR_ILL";
    "spec" "resume-illegal-without-stall" cases::spec::resume_illegal_without_stall:
        "CMD_RESUME without the stall model is CERROR_ILL";
    "spec" "tlbi-el2-illegal-without-hyp" cases::spec::tlbi_el2_illegal_without_hyp:
        "CMD_TLBI_EL2_ALL without IDR0.HYP is CERROR_ILL";
    "spec" "tlbi-el3-illegal-on-non-secure-queue" cases::spec::tlbi_el3_illegal_on_non_secure_queue:
        "CMD_TLBI_EL3_ALL on the Non-secure queue is CERROR_ILL";
    "spec" "s1cdmax-ignored-without-substreams" cases::spec::s1cdmax_ignored_without_substreams:
        "with SSIDSIZE=0, STE.S1CDMax is ignored";
    "spec" "cd-a-zero-illegal-when-abort-only" cases::spec::cd_a_zero_illegal_when_abort_only:
        "with TERM_MODEL=1, a CD with A=0 is C_BAD_CD";
    "pasid" "substreams-select-address-spaces" cases::pasid::substreams_select_address_spaces:
        "two PASIDs of one stream translate in their own address spaces";
    "pasid" "two-level-cd-table" cases::pasid::two_level_cd_table:
        "a two-level CD table translates; an L1CD with V=0 is C_BAD_SUBSTREAMID";
    "pasid" "substream-rules" cases::pasid::substream_rules:
        "S1CDMax and S1DSS: C_BAD_SUBSTREAMID, F_STREAM_DISABLED, substream 0, bypass";
    "pasid" "ats-translation-and-atc-invalidation" cases::pasid::ats_translation_and_atc_invalidation:
        "ATS fills the ATC; TLBI, ATC_INV and syncs replace the translation";
    "pasid" "ats-refused-and-faulting-requests" cases::pasid::ats_refused_and_faulting_requests:
        "EATS=0 gives UR and F_BAD_ATS_TREQ; a fault gives R=W=0 and no event";
    "pasid" "pri-group-answered-and-retried" cases::pasid::pri_group_answered_and_retried:
        "a PRG reaches the PRI queue; PRI_RESP Success makes the device retry";
    "pasid" "pri-failure-responses" cases::pasid::pri_failure_responses:
        "Invalid Request gives up the group; Response Failure stops PRI";
    "pasid" "pri-stop-marker" cases::pasid::pri_stop_marker:
        "a stop marker is queued with its PASID and gets no response";
    "pasid" "pri-queue-overflow" cases::pasid::pri_queue_overflow:
        "PRI queue overflow: Last requests auto-answered, stop markers dropped";
    "pasid" "stall-resume-retries" cases::pasid::stall_resume_retries:
        "a stalled write completes after CMD_RESUME(retry)";
    "pasid" "stall-term-terminates" cases::pasid::stall_term_terminates:
        "CMD_STALL_TERM terminates a stream's stalled writes";
    "pasid" "cmd-sync-msi" cases::pasid::cmd_sync_msi:
        "CMD_SYNC with CS=IRQ writes its MSI";
}

/// Cases QEMU 10.0's SMMU is known to fail because it departs from the architecture, with
/// where the architecture says otherwise. A runner on QEMU reports these as deviations; the
/// hypervisor's (`hyp.selftest=conformance-suite`, scenario `smmu-conformance-suite`) confirms
/// each fails there at the check described, and fails its run if one passes.
pub const QEMU_DEVIATIONS: &[(&str, &str)] = &[
    (
        "event-queue-overflow",
        "QEMU drops the event and sets GERROR.EVTQ_ABT_ERR; IHI 0070 7.4: EVENTQ_PROD.OVFLG, no global error",
    ),
    (
        "atc-inv-illegal-without-ats",
        "QEMU consumes CMD_ATC_INV as a no-op; IHI 0070 4.5.1: ILLEGAL when IDR0.ATS = 0",
    ),
    (
        "pri-resp-illegal-without-pri",
        "QEMU consumes CMD_PRI_RESP as a no-op; IHI 0070 4.5.2: ILLEGAL when IDR0.PRI = 0",
    ),
    (
        "resume-illegal-without-stall",
        "QEMU consumes CMD_RESUME as a no-op; IHI 0070 4.7.1: CERROR_ILL when STALL_MODEL = 0b01",
    ),
    (
        "tlbi-el2-illegal-without-hyp",
        "QEMU consumes the TLBI_EL2_* commands as no-ops; IHI 0070 4.4.2: CERROR_ILL when IDR0.HYP = 0",
    ),
    (
        "tlbi-el3-illegal-on-non-secure-queue",
        "QEMU consumes the TLBI_EL3_* commands as no-ops; IHI 0070 4.4.2: CERROR_ILL on the Non-secure queue",
    ),
    (
        "s1cdmax-ignored-without-substreams",
        "QEMU reports C_BAD_STE for S1CDMax != 0; IHI 0070 5.2: the field is IGNORED when SSIDSIZE = 0",
    ),
];

/// The deviation QEMU is known for in case `name`, if any.
#[must_use]
pub fn qemu_deviation(name: &str) -> Option<&'static str> {
    QEMU_DEVIATIONS
        .iter()
        .find(|(case, _)| *case == name)
        .map(|(_, why)| *why)
}

/// Counts of outcomes.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Summary {
    /// Cases that passed.
    pub passed: u32,
    /// Cases that failed.
    pub failed: u32,
    /// Cases not applicable here.
    pub not_applicable: u32,
}

/// Runs every case of [`CASES`] on `harness`, in order, reporting each; then puts the stream
/// back to an abort STE. `only`, if given, selects the cases to run by name.
pub fn run<H: Harness>(
    harness: &mut H,
    only: Option<&[&str]>,
    mut report: impl FnMut(&Case, Outcome),
) -> Summary {
    let mut summary = Summary::default();
    let mut suite = match Suite::new(harness) {
        Ok(suite) => suite,
        Err(stop) => {
            for case in CASES {
                report(case, outcome_of(Err(stop)));
                summary.not_applicable += 1;
            }
            return summary;
        }
    };
    for case in CASES {
        if only.is_some_and(|names| !names.contains(&case.name)) {
            continue;
        }
        let stray = suite.begin_case();
        if stray.total != 0 || stray.overflows != 0 {
            suite
                .h
                .note("stray events before the case", &[u64::from(stray.total)]);
        }
        let outcome = outcome_of(run_case(case.name, &mut suite).unwrap_or(Ok(())));
        match outcome {
            Outcome::Pass => summary.passed += 1,
            Outcome::Fail(_) => summary.failed += 1,
            Outcome::NotApplicable(_) => summary.not_applicable += 1,
        }
        report(case, outcome);
    }
    if suite.install(&make_abort_ste()).is_err() {
        suite.h.note("could not put the stream back to abort", &[]);
    }
    let _ = suite.drain();
    summary
}

fn outcome_of(result: CaseResult) -> Outcome {
    match result {
        Ok(()) => Outcome::Pass,
        Err(Stop::Fail(why)) => Outcome::Fail(why),
        Err(Stop::NotApplicable(why)) => Outcome::NotApplicable(why),
    }
}
