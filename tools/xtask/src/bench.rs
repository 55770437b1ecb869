//! `cargo xtask bench`: deterministic cost figures, in retired instructions.
//!
//! QEMU runs with `-icount shift=0`, where the PMU's instruction counter is exact and identical
//! from run to run (wall-clock time under TCG says little, and these machines are shared). The
//! test guest, booted with `bench` on its command line, counts with its PMU the instructions of
//! each kind of trap, at EL1 and EL2 together and at EL2 alone (the hypervisor leaves the PMU to
//! the guest, EL2 counting included). The figures are printed and written to
//! `target/xtask/bench.txt`.

use crate::image::{self, BuildOptions};
use crate::runner::{self, Guest, RunOptions};
use crate::{Result, setup, workspace_root};
use std::process::ExitCode;
use std::time::Duration;

pub(crate) fn bench_command(args: &[String]) -> Result<ExitCode> {
    if let Some(arg) = args.first() {
        return Err(format!("bench: unknown option `{arg}`").into());
    }
    let tools = setup::ensure()?;
    let image = image::build(&tools, &BuildOptions::default())?;
    let guest = image::build_test_guest(&tools)?;
    let options = RunOptions {
        guest: Guest::BareMetal {
            elf: guest.elf,
            args: "bench".into(),
        },
        extra_qemu_args: vec!["-icount".into(), "shift=0".into()],
        timeout: Duration::from_secs(120),
        echo: false,
        ..RunOptions::default()
    };
    let outcome = runner::run(&tools, &image, &options)?;
    let lines: Vec<&str> = outcome
        .console
        .lines()
        .filter(|l| l.starts_with("BENCH"))
        .collect();
    if lines.is_empty() || outcome.exit_code() != 0 {
        println!("xtask: bench failed: {}", outcome.verdict());
        for line in outcome.log.lines.iter().rev().take(10).rev() {
            println!("    [hyp] {line}");
        }
        return Ok(ExitCode::FAILURE);
    }
    let report: String = lines
        .iter()
        .map(|l| format!("{}\n", l.trim_end()))
        .collect();
    print!("{report}");
    let path = workspace_root().join("target/xtask/bench.txt");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, &report)?;
    println!("xtask: figures written to {}", path.display());
    Ok(ExitCode::SUCCESS)
}
