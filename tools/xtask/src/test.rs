//! `cargo xtask test`: host tests of every crate, then the QEMU scenarios, each reported by name,
//! and a closing `N passed, N failed` line.

use crate::image::{self, BuildOptions};
use crate::runner::{self, Guest, RunOptions};
use crate::scenarios::{self, SCENARIOS, ScenarioGuest};
use crate::{Result, setup, workspace_root};
use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// The name that selects the host tests.
const HOST: &str = "host";

#[derive(Debug, Default)]
struct Tally {
    passed: usize,
    failed: Vec<String>,
}

pub(crate) fn test_command(args: &[String]) -> Result<ExitCode> {
    if args.iter().any(|a| a == "--list") {
        println!("{HOST:<28} host tests of every crate (cargo test --workspace)");
        for scenario in SCENARIOS {
            println!("{:<28} {}", scenario.name, scenario.description);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let selected: Vec<&str> = args.iter().map(String::as_str).collect();
    for name in &selected {
        if *name != HOST && !SCENARIOS.iter().any(|s| s.name == *name) {
            return Err(format!("no test named `{name}` (see `cargo xtask test --list`)").into());
        }
    }
    let wants = |name: &str| selected.is_empty() || selected.contains(&name);
    let tools = setup::ensure()?;
    let mut tally = Tally::default();
    if wants(HOST) {
        host_tests(&mut tally)?;
    }
    let scenarios: Vec<_> = SCENARIOS.iter().filter(|s| wants(s.name)).collect();
    if !scenarios.is_empty() {
        println!("xtask: building the hypervisor image");
        let image = image::build(&tools, &BuildOptions::default())?;
        let mut test_guest = None;
        // One Linux guest per kernel series, prepared when a scenario first needs it.
        let mut linux = std::collections::BTreeMap::new();
        let log_dir = workspace_root().join("target/xtask/scenarios");
        std::fs::create_dir_all(&log_dir)?;
        for scenario in scenarios {
            let start = Instant::now();
            let guest = match scenario.guest {
                ScenarioGuest::None => Guest::None,
                ScenarioGuest::TestGuest => {
                    if test_guest.is_none() {
                        println!("xtask: building the test guest");
                    }
                    let elf = match &test_guest {
                        Some(elf) => elf,
                        None => test_guest.insert(image::build_test_guest(&tools)?.elf),
                    };
                    Guest::BareMetal {
                        elf: elf.clone(),
                        args: scenario.guest_args.to_string(),
                    }
                }
                ScenarioGuest::DebianLinux(series) => {
                    let assets = linux.entry(series).or_insert_with(|| {
                        runner::debian_linux_guest(series).map_err(|e| e.to_string())
                    });
                    match assets {
                        Ok(guest) => guest.clone(),
                        Err(error) => {
                            println!("FAIL {}: no Linux guest: {error}", scenario.name);
                            tally.failed.push(scenario.name.to_string());
                            continue;
                        }
                    }
                }
            };
            let options = RunOptions {
                guest,
                timeout: Duration::from_secs(scenario.timeout_secs),
                hyp_args: scenario.hyp_args.map(str::to_string),
                extra_qemu_args: scenario
                    .qemu_args
                    .iter()
                    .map(|s| (*s).to_string())
                    .collect(),
                echo: false,
                raw_log: Some(log_dir.join(format!("{}.defmt", scenario.name))),
                ..RunOptions::default()
            };
            let outcome = runner::run(&tools, &image, &options)?;
            let text_log = log_dir.join(format!("{}.log", scenario.name));
            std::fs::write(
                &text_log,
                outcome.log.lines.join("\n") + "\n" + &outcome.console,
            )?;
            let verdict = scenarios::check(
                scenario,
                outcome.log.exit_status,
                outcome.timed_out,
                &outcome.log.lines,
            )
            .and_then(|()| scenarios::check_console(scenario, &outcome.console));
            let seconds = start.elapsed().as_secs_f32();
            // Self-tests that run several cases in one boot report each as `smmu-case NAME:
            // PASS|FAIL ...` (or `conformance-case NAME: VERDICT`); list them by name under
            // the scenario.
            for line in &outcome.log.lines {
                let case = ["smmu-case ", "conformance-case "]
                    .iter()
                    .find_map(|marker| line.split(marker).nth(1));
                if let Some(case) = case {
                    println!("    {}", case.trim());
                }
            }
            if let Some(figures) = crate::linux::dma_figures(&outcome.console, &outcome.log.lines) {
                println!("    {}", figures.summary());
            }
            match verdict {
                Ok(()) => {
                    println!("PASS {} ({seconds:.1} s)", scenario.name);
                    tally.passed += 1;
                }
                Err(reason) => {
                    println!(
                        "FAIL {}: {reason} ({seconds:.1} s); log in {}",
                        scenario.name,
                        text_log.display()
                    );
                    for line in outcome.log.lines.iter().rev().take(15).rev() {
                        println!("    [hyp] {line}");
                    }
                    let console: Vec<&str> = outcome.console.lines().collect();
                    for line in console.iter().skip(console.len().saturating_sub(10)) {
                        println!("    [console] {line}");
                    }
                    tally.failed.push(scenario.name.to_string());
                }
            }
        }
    }
    if !tally.failed.is_empty() {
        println!("failed: {}", tally.failed.join(", "));
    }
    println!("{} passed, {} failed", tally.passed, tally.failed.len());
    Ok(if tally.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs `cargo test --workspace` and counts every test by name.
fn host_tests(tally: &mut Tally) -> Result<()> {
    println!("xtask: host tests (cargo test --workspace)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(cargo)
        .current_dir(workspace_root())
        .args(["test", "--workspace", "--no-fail-fast", "--color", "never"])
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no cargo stdout")?;
    let (mut passed, mut failed) = (0usize, Vec::new());
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(rest) = line.strip_prefix("test ") {
            if let Some(name) = rest.strip_suffix(" ... ok") {
                let _ = name;
                passed += 1;
            } else if let Some(name) = rest.strip_suffix(" ... FAILED") {
                println!("FAIL host: {name}");
                failed.push(format!("host: {name}"));
            }
        } else if line.starts_with("test result:") || line.starts_with("     Running") {
            println!("  {}", line.trim());
        }
    }
    let status = child.wait()?;
    if !status.success() && failed.is_empty() {
        failed.push("host: cargo test (build failed; see above)".into());
        println!("FAIL host: cargo test exited with {status}");
    }
    let verdict = if failed.is_empty() { "PASS" } else { "FAIL" };
    println!(
        "{verdict} host ({passed} tests passed, {} failed)",
        failed.len()
    );
    tally.passed += passed;
    tally.failed.extend(failed);
    Ok(())
}
