//! The QEMU scenarios: each boots the hypervisor with a purpose and checks how the run ended
//! and what the hypervisor logged.

/// One scenario.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scenario {
    /// Its name, as `cargo xtask test NAME` selects it.
    pub(crate) name: &'static str,
    /// What it shows.
    pub(crate) description: &'static str,
    /// The hypervisor's command line.
    pub(crate) hyp_args: Option<&'static str>,
    /// Extra QEMU arguments.
    pub(crate) qemu_args: &'static [&'static str],
    /// The exit status the hypervisor must report.
    pub(crate) expect_status: u32,
    /// Text that must appear in the hypervisor's log, each in some line, in this order.
    pub(crate) expect_log: &'static [&'static str],
    /// Seconds before the run is stopped and failed.
    pub(crate) timeout_secs: u64,
}

/// Every scenario, in the order they run.
pub(crate) const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "boot",
        description: "the hypervisor boots at EL2 on QEMU virt, cross-checks the board against the \
                      device tree, installs its EL2 map, probes the SMMU and powers off with status 0",
        hyp_args: None,
        qemu_args: &[],
        expect_status: 0,
        expect_log: &[
            "hypervisor starting at EL2",
            "board qemu-virt matches the device tree",
            "EL2 map active",
            "IDR0=0x0d44101b IDR1=0x02730010 IDR3=0x00001414 IDR5=0x00000074",
            "stage-1 and stage-2",
            "2-level stream table",
            "OAS 44 bits",
            "SIDSIZE 16",
            "hypervisor exit: status 0",
        ],
        timeout_secs: 60,
    },
    Scenario {
        name: "el2-fault-is-reported",
        description: "a hypervisor that reads an address its EL2 map leaves unmapped (guest RAM) takes \
                      a data abort, reports ESR/FAR/ELR decoded, and the run fails with status 2",
        hyp_args: Some("hyp.selftest=el2-unmapped-read"),
        qemu_args: &[],
        expect_status: 2,
        expect_log: &[
            "self-test: reading unmapped address",
            "unexpected exception SyncCurrent: DataAbortCurrent",
            "data abort: Translation",
            "hypervisor exit: status 2",
        ],
        timeout_secs: 60,
    },
    Scenario {
        name: "board-mismatch-stops-boot",
        description: "when the device tree disagrees with the board data (QEMU virt with its PCIe ECAM \
                      moved low), the hypervisor names the mismatch and stops with status 1",
        hyp_args: None,
        qemu_args: &["-M", "highmem-ecam=off"],
        expect_status: 1,
        expect_log: &[
            "does not match the device tree",
            "hypervisor exit: status 1",
        ],
        timeout_secs: 60,
    },
];

/// Checks `log` against the scenario; `Err` says what was wrong.
pub(crate) fn check(
    scenario: &Scenario,
    status: Option<u32>,
    timed_out: bool,
    log: &[String],
) -> Result<(), String> {
    if timed_out {
        return Err(format!("timed out after {} s", scenario.timeout_secs));
    }
    match status {
        Some(status) if status == scenario.expect_status => {}
        Some(status) => {
            return Err(format!(
                "exit status {status}, expected {}",
                scenario.expect_status
            ));
        }
        None => return Err("no exit status in the log".into()),
    }
    // Each expected text must appear at or after the line where the previous one was found
    // (several may share a line).
    let mut from = 0;
    for expected in scenario.expect_log {
        match log
            .iter()
            .skip(from)
            .position(|line| line.contains(expected))
        {
            Some(offset) => from += offset,
            None => return Err(format!("log lacks `{expected}` (in order)")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_names_are_unique_and_not_host() {
        let mut names: Vec<_> = SCENARIOS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SCENARIOS.len());
        assert!(!names.contains(&"host"));
    }

    #[test]
    fn a_check_fails_on_wrong_status_missing_text_or_wrong_order() {
        let s = Scenario {
            name: "t",
            description: "",
            hyp_args: None,
            qemu_args: &[],
            expect_status: 0,
            expect_log: &["a", "b"],
            timeout_secs: 1,
        };
        let log = vec!["x a".to_string(), "y b".to_string()];
        let same_line = vec!["a b".to_string()];
        assert_eq!(check(&s, Some(0), false, &same_line), Ok(()));
        assert_eq!(check(&s, Some(0), false, &log), Ok(()));
        assert!(check(&s, Some(1), false, &log).is_err());
        assert!(check(&s, None, false, &log).is_err());
        assert!(check(&s, Some(0), true, &log).is_err());
        let reversed: Vec<String> = log.iter().rev().cloned().collect();
        assert!(check(&s, Some(0), false, &reversed).is_err());
    }
}
