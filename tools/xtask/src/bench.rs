//! `cargo xtask bench`: deterministic cost figures, in retired instructions.
//!
//! QEMU runs with `-icount shift=0`, where the PMU's instruction counter is exact and identical
//! from run to run (wall-clock time under TCG says little, and these machines are shared). Two
//! runs:
//! 1. the hypervisor alone with `hyp.selftest=bench`: its own costs at EL2 (command encode and
//!    decode, CMD_SYNC round trips and batches on the SMMU, the event-queue look each SMMU interrupt makes);
//! 2. the test guest with `bench` on its command line: it counts with its PMU the instructions
//!    of each kind of trap, at EL1 and EL2 together and at EL2 alone. The hypervisor hides EL2
//!    from the guest's PMU unless told otherwise: this run passes `hyp.pmu=el2-visible`, and
//!    the hypervisor says so in its log.
//!
//! The figures are printed and written to `target/xtask/bench.txt`.

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
    let icount = vec!["-icount".to_string(), "shift=0".to_string()];
    let hypervisor = runner::run(
        &tools,
        &image,
        &RunOptions {
            hyp_args: Some("hyp.selftest=bench".into()),
            extra_qemu_args: icount.clone(),
            timeout: Duration::from_secs(120),
            echo: false,
            ..RunOptions::default()
        },
    )?;
    let mut report = String::new();
    for line in &hypervisor.log.lines {
        if let Some(at) = line.find("bench: ") {
            report.push_str(&format!("BENCH hypervisor {}\n", &line[at + 7..]));
        }
    }
    if report.is_empty() || hypervisor.exit_code() != 0 {
        println!("xtask: bench (hypervisor) failed: {}", hypervisor.verdict());
        for line in hypervisor.log.lines.iter().rev().take(10).rev() {
            println!("    [hyp] {line}");
        }
        return Ok(ExitCode::FAILURE);
    }
    // Benchmark mode: the guest's PMU may count at EL2 (it cannot otherwise).
    let options = RunOptions {
        hyp_args: Some("hyp.pmu=el2-visible".into()),
        guest: Guest::BareMetal {
            elf: guest.elf,
            args: "bench".into(),
        },
        extra_qemu_args: [
            icount,
            vec![
                "-device".to_string(),
                "edu,addr=1,dma_mask=0xffffffffffffffff".to_string(),
            ],
        ]
        .concat(),
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
    // The hypervisor must have said that it opened EL2 to the guest's PMU for this run.
    let Some(mode) = outcome
        .log
        .lines
        .iter()
        .find(|line| line.contains("benchmark mode"))
    else {
        println!("xtask: bench failed: the hypervisor did not report benchmark mode");
        return Ok(ExitCode::FAILURE);
    };
    report.push_str(&format!(
        "BENCH note: {}\n",
        mode.split("WARN").last().unwrap_or(mode).trim()
    ));
    report.extend(lines.iter().map(|l| {
        format!(
            "BENCH guest {}\n",
            l.trim_start_matches("BENCH ").trim_end()
        )
    }));
    // Linux on the vSMMU: the hypervisor's traps per DMA unmap the guest made.
    let linux = runner::run(
        &tools,
        &image,
        &RunOptions {
            guest: runner::debian_linux_guest(crate::linux::KernelSeries::default())?,
            timeout: Duration::from_secs(300),
            echo: false,
            ..RunOptions::default()
        },
    )?;
    match linux_figures(&linux.console, &linux.log.lines) {
        Some(line) => report.push_str(&line),
        None => {
            println!(
                "xtask: bench (Linux) failed: {}; no verdict with IOMMU counts or no vSMMU report",
                linux.verdict()
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    print!("{report}");
    let path = workspace_root().join("target/xtask/bench.txt");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, &report)?;
    println!("xtask: figures written to {}", path.display());
    Ok(ExitCode::SUCCESS)
}

/// The number before `marker` in the first log line holding it: `vSMMU: 242 register traps`.
fn count_before(lines: &[String], marker: &str) -> Option<u64> {
    lines.iter().find_map(|line| {
        let (before, _) = line.split_once(marker)?;
        before.split_whitespace().last()?.parse().ok()
    })
}

/// The Linux figures: vSMMU register traps and CMDQ_PROD writes in the whole run, against the
/// unmaps the guest's IOMMU made during its I/O (so an upper bound: boot's traps are counted,
/// its unmaps are not).
fn linux_figures(console: &str, log: &[String]) -> Option<String> {
    let figures = crate::linux::dma_figures(console, log)?;
    let unmaps = figures.unmaps.filter(|&n| n > 0)?;
    let traps = count_before(log, " register traps")?;
    let prod_writes = log.iter().find_map(|line| {
        let (_, rest) = line.split_once("vSMMU: CMDQ_PROD: ")?;
        let (_, writes) = rest.split_once(" reads, ")?;
        writes.split_whitespace().next()?.parse::<u64>().ok()
    })?;
    #[allow(
        clippy::cast_precision_loss,
        reason = "small counts, shown to 2 decimals"
    )]
    let ratio = |n: u64| n as f64 / unmaps as f64;
    Some(format!(
        "BENCH linux vSMMU register traps per guest DMA unmap: {:.2} ({traps} traps in the whole run, boot included; {unmaps} unmaps during the I/O)\n\
         BENCH linux CMDQ_PROD writes per guest DMA unmap: {:.2} ({prod_writes} writes)\n",
        ratio(traps),
        ratio(prod_writes),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_linux_figures_come_from_the_verdict_and_the_vsmmu_report() {
        let console = "GUEST VERDICT: PASS kernel=6.12 iommu=smmu3.0x0000000009050000 groups=1 \
                       vda-group=0 domain=DMA iommu-maps=195 iommu-unmaps=195 read=64KiB\n";
        let log = [
            "7.1 INFO  vSMMU: 242 register traps, 413 guest commands".to_string(),
            "7.2 INFO  vSMMU: CMDQ_PROD: 0 reads, 208 writes".to_string(),
        ];
        let text = linux_figures(console, &log).unwrap();
        assert!(
            text.contains("per guest DMA unmap: 1.24 (242 traps"),
            "{text}"
        );
        assert!(text.contains("CMDQ_PROD writes per guest DMA unmap: 1.07 (208 writes)"));
        assert!(linux_figures(console, &log[..1]).is_none());
        assert!(linux_figures("GUEST VERDICT: PASS iommu-unmaps=0", &log).is_none());
    }
}
