//! Prints the conformance suite's results on the model, both presets, as a Markdown table
//! (the README's), with the results of the EL2 runner on QEMU 10.0.
//!
//! `cargo run -p smmu-model --example conformance`
//!
//! The QEMU column cannot be computed on the host: it is what `hyp.selftest=conformance-suite`
//! reported, and what the `smmu-conformance-suite` scenario (`cargo xtask test
//! smmu-conformance-suite`) checks case by case on every test run. Keep [`QEMU_10_0`] and that
//! scenario in step.

use smmu_conformance::{CASES, Outcome, qemu_deviation, run};
use smmu_model::{ModelConfig, ModelHarness};

/// Each case's outcome on QEMU 10.0 at EL2 (`edu` as the DMA master), as the scenario checks it.
const QEMU_10_0: &[(&str, &str)] = &[
    ("stage2-dma-translates", "PASS"),
    ("unmapped-iova-faults", "PASS"),
    ("abort-ste-blocks", "PASS"),
    ("missing-ste-aborts", "PASS"),
    ("stage1-translates", "PASS"),
    ("nested-translates", "PASS"),
    ("hitless-stage2-replace", "PASS"),
    ("illegal-command-recovered", "PASS"),
    ("s2aa64-zero-refused", "PASS"),
    ("stage2-domain-unmap-pins", "PASS"),
    ("stage1-permission-fault", "PASS"),
    ("cd-r-clear-suppresses-record", "PASS"),
    ("stage2-permission-fault", "PASS"),
    ("s2r-clear-suppresses-record", "PASS"),
    (
        "stale-translation-until-tlbi",
        "PASS (the old translation was used until the TLBI)",
    ),
    (
        "stale-ste-until-cfgi",
        "PASS (the old STE was used until CFGI_STE)",
    ),
    (
        "cd-replace-hitless",
        "PASS (the old address space was used until the TLBI)",
    ),
    (
        "invalidation-completes-at-sync",
        "n/a (QEMU completes an invalidation when it consumes it; see below)",
    ),
    (
        "event-queue-overflow",
        "known deviation: a full event queue raised a global error",
    ),
    (
        "atc-inv-illegal-without-ats",
        "known deviation: no CERROR_ILL",
    ),
    (
        "pri-resp-illegal-without-pri",
        "known deviation: no CERROR_ILL",
    ),
    (
        "resume-illegal-without-stall",
        "known deviation: no CERROR_ILL",
    ),
    (
        "tlbi-el2-illegal-without-hyp",
        "known deviation: no CERROR_ILL",
    ),
    (
        "tlbi-el3-illegal-on-non-secure-queue",
        "known deviation: no CERROR_ILL",
    ),
    (
        "s1cdmax-ignored-without-substreams",
        "known deviation: C_BAD_STE",
    ),
    ("cd-a-zero-illegal-when-abort-only", "PASS"),
    ("substreams-select-address-spaces", "n/a (no substreams)"),
    ("two-level-cd-table", "n/a (no substreams)"),
    ("substream-rules", "n/a (no substreams)"),
    ("ats-translation-and-atc-invalidation", "n/a (no ATS)"),
    ("ats-refused-and-faulting-requests", "n/a (no ATS)"),
    ("pri-group-answered-and-retried", "n/a (no PRI)"),
    ("pri-failure-responses", "n/a (no PRI)"),
    ("pri-stop-marker", "n/a (no PRI)"),
    ("pri-queue-overflow", "n/a (no PRI)"),
    ("stall-resume-retries", "n/a (no stall)"),
    ("stall-term-terminates", "n/a (no stall)"),
    ("cmd-sync-msi", "n/a (no MSIs)"),
];

fn results(config: ModelConfig) -> Vec<Outcome> {
    let mut harness = match ModelHarness::new(config) {
        Ok(harness) => harness,
        Err(error) => {
            eprintln!("the driver could not bring the model up: {error:?}");
            std::process::exit(1);
        }
    };
    let mut outcomes = Vec::new();
    run(&mut harness, None, |_, outcome| outcomes.push(outcome));
    outcomes
}

fn cell(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Pass => "PASS".to_owned(),
        Outcome::Fail(why) => format!("**FAIL**: {why}"),
        Outcome::NotApplicable(why) => format!("n/a ({why})"),
    }
}

fn main() {
    let qemu_preset = results(ModelConfig::qemu_virt());
    let full = results(ModelConfig::full());
    println!("| case | shows | model, QEMU `virt` features | model, full | QEMU 10.0 (EL2) |");
    println!("|---|---|---|---|---|");
    for (i, case) in CASES.iter().enumerate() {
        let Some(&(_, qemu)) = QEMU_10_0.iter().find(|(name, _)| *name == case.name) else {
            eprintln!("{}: no QEMU result recorded", case.name);
            std::process::exit(1);
        };
        if qemu.starts_with("known deviation") != qemu_deviation(case.name).is_some() {
            eprintln!("{}: QEMU_10_0 and QEMU_DEVIATIONS disagree", case.name);
            std::process::exit(1);
        }
        println!(
            "| `{}` | {} | {} | {} | {} |",
            case.name,
            case.summary,
            qemu_preset.get(i).map_or_else(String::new, cell),
            full.get(i).map_or_else(String::new, cell),
            qemu
        );
    }
    let failed = qemu_preset
        .iter()
        .chain(&full)
        .filter(|o| matches!(o, Outcome::Fail(_)))
        .count();
    if failed != 0 {
        eprintln!("{failed} cases failed on the model");
        std::process::exit(1);
    }
}
