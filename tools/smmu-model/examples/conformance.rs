//! Prints the conformance suite's results on the model, both presets, as a Markdown table
//! (the README's), with a column for QEMU that the EL2 runner fills.
//!
//! `cargo run -p smmu-model --example conformance`

use smmu_conformance::{CASES, Outcome, qemu_deviation, run};
use smmu_model::{ModelConfig, ModelHarness};

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
        let qemu = match qemu_deviation(case.name) {
            Some(_) => "not yet run; known deviation, see below",
            None => "not yet run",
        };
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
