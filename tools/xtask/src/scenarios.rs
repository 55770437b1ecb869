//! The QEMU scenarios: each boots the hypervisor with a purpose and checks how the run ended
//! and what the hypervisor logged.

/// The guest a scenario boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ScenarioGuest {
    /// The hypervisor alone.
    None,
    /// The bare-metal test guest (`tools/test-guest`).
    TestGuest,
    /// The unmodified Debian kernel with the tooling's initramfs and disk.
    DebianLinux,
}

/// One scenario.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scenario {
    /// What runs at EL1.
    pub(crate) guest: ScenarioGuest,
    /// Text that must appear on the guest console, in this order.
    pub(crate) expect_console: &'static [&'static str],
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
    /// The test guest's command line (its mode; empty for its containment checks).
    pub(crate) guest_args: &'static str,
    /// Text that must not appear in any line of the hypervisor's log.
    pub(crate) forbid_log: &'static [&'static str],
    /// The most times one kind of log line (its numbers ignored) may appear: a bound on what a
    /// guest can make the hypervisor log.
    pub(crate) max_repeats: Option<usize>,
}

/// What a scenario does not say otherwise.
const DEFAULTS: Scenario = Scenario {
    guest: ScenarioGuest::None,
    expect_console: &[],
    name: "",
    description: "",
    hyp_args: None,
    qemu_args: &[],
    expect_status: 0,
    expect_log: &[],
    timeout_secs: 60,
    guest_args: "",
    forbid_log: &["panic"],
    max_repeats: None,
};

/// QEMU arguments for the test guest's containment checks: the `edu` DMA device behind the
/// SMMU, and a virtio device attached to a virtio-mmio transport (modern, version 2), which
/// masters memory around the SMMU and must be refused.
const CONTAINMENT_DEVICES: &[&str] = &[
    "-device",
    "edu,addr=1,dma_mask=0xffffffffffffffff",
    "-device",
    "virtio-rng-device",
    "-global",
    "virtio-mmio.force-legacy=false",
];

/// Every scenario, in the order they run.
pub(crate) const SCENARIOS: &[Scenario] = &[
    Scenario {
        guest: ScenarioGuest::None,
        expect_console: &[],
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
        ..DEFAULTS
    },
    Scenario {
        guest: ScenarioGuest::None,
        expect_console: &[],
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
        ..DEFAULTS
    },
    Scenario {
        name: "el2-stack-overflow-is-caught",
        description: "a hypervisor that recurses until its stack overflows hits the unmapped guard \
                      page below the stack: the data abort is reported and the run fails with status 2, \
                      instead of the statics below the stack being silently overwritten",
        hyp_args: Some("hyp.selftest=el2-stack-overflow"),
        expect_status: 2,
        expect_log: &[
            "self-test: overflowing the boot stack",
            "unexpected exception SyncCurrent: DataAbortCurrent",
            "data abort: Translation",
            "hypervisor exit: status 2",
        ],
        forbid_log: &["recursed"],
        ..DEFAULTS
    },
    Scenario {
        guest: ScenarioGuest::None,
        expect_console: &[],
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
        ..DEFAULTS
    },
    Scenario {
        name: "test-guest-is-contained",
        description: "the bare-metal test guest boots at EL1 under stage 2 with 2 vCPUs: its RAM works; \
                      the hypervisor's memory, UART and SMMU, and an ISV=0 access, give it external \
                      aborts; an unknown hypercall returns NOT_SUPPORTED; an IMPDEF register is \
                      UNDEFINED; PSCI is proxied; every DMA path around the SMMU is closed (fw_cfg \
                      DMA, a virtio-mmio device the operator attached, the GIC's LPI tables); its \
                      FP/SIMD registers survive traps taken with SMMU events pending; the hypervisor \
                      finds its code, tables and boot device tree unchanged at the end",
        guest: ScenarioGuest::TestGuest,
        hyp_args: None,
        qemu_args: CONTAINMENT_DEVICES,
        expect_status: 0,
        expect_console: &[
            "GUEST: PASS device-tree-ram",
            "GUEST: PASS ram-reads-back",
            "GUEST: PASS hypervisor-image-aborts",
            "GUEST: PASS hypervisor-dtb-aborts",
            "GUEST: PASS hypervisor-uart-aborts",
            "GUEST: PASS smmu-registers-abort",
            "GUEST: PASS isv0-access-aborts",
            "GUEST: PASS its-withheld-aborts",
            "GUEST: PASS unknown-hypercall-not-supported",
            "GUEST: PASS impdef-register-undefined",
            "GUEST: PASS psci-version",
            "GUEST: PASS cpu-on-outside-ram-refused",
            "GUEST: PASS secondary-vcpu-runs",
            "GUEST: PASS cpu-on-running-cpu-refused",
            "GUEST: PASS edu-dma-into-guest-ram",
            "GUEST: PASS edu-cannot-read-hypervisor-memory",
            "GUEST: PASS edu-dma-at-hypervisor-memory-completes",
            "GUEST: PASS fw-cfg-dma-refused",
            "GUEST: PASS virtio-mmio-dma-refused",
            "GUEST: PASS lpi-tables-confined",
            "GUEST: PASS fp-simd-preserved-across-traps",
            "GUEST VERDICT: PASS 21 checks",
        ],
        expect_log: &[
            "guest gets UART0 (PL011)",
            "guest does not get 1 x qemu,fw-cfg-mmio",
            "guest does not get 32 x virtio,mmio",
            "refused: a virtio device (ID 4) attached to /virtio_mmio@a003e00 masters memory around the SMMU",
            "SMMU enabled: GBPA abort",
            "guest device tree:",
            "guest GIC: distributor and 2 redistributors emulated",
            "guest streams 0x0 to 0xffff translate through stage 2 (guest RAM only",
            "entering the bare-metal guest",
            "vCPU 0x1 starting",
            "SMMU event FTranslation stream 0x8 read (stage 2) at 0x40000000",
            "guest asked for system off",
            "stage-2 faults",
            // The LPI check's 11 redistributor and 2 distributor accesses, all emulated.
            "exits: MmioHandled 13",
            // 6 named checks, 2 fw_cfg registers, 32 virtio-mmio probes and 16 register writes.
            "exits: ExternalAbortInjected 56",
            "exits: UndefinedInjected 1",
            "exits: UnsupportedCall 2",
            "hypervisor memory check: 6 regions intact",
            "hypervisor exit: status 0",
        ],
        timeout_secs: 60,
        ..DEFAULTS
    },
    Scenario {
        name: "guest-pmu-blind-to-el2",
        description: "the test guest programs its PMU (instructions and cycles) to count at EL2 only and \
                      traps 100 times under -icount: both counters stay at 0, while the same counter \
                      filtered to EL1 counts (so the PMU works and the check can fail)",
        guest: ScenarioGuest::TestGuest,
        guest_args: "pmu",
        qemu_args: &["-icount", "shift=0"],
        expect_console: &[
            "GUEST: PASS pmu-blind-to-el2",
            "GUEST VERDICT: PASS 1 checks",
        ],
        expect_log: &["exits: Hvc 100", "hypervisor exit: status 0"],
        forbid_log: &["panic", "benchmark mode"],
        ..DEFAULTS
    },
    Scenario {
        name: "guest-cannot-touch-hypervisor-interrupts",
        description: "the test guest, given one vCPU on a two-CPU machine, takes its virtual timer and \
                      an SGI to itself as virtual interrupts; an SGI it aims at the other CPU is \
                      refused; edu's level-sensitive interrupt arrives twice (so the guest's end deactivated the \
                      physical one); it writes every distributor and redistributor register that could \
                      disable, retarget, reprioritise, regroup, pend or activate the hypervisor's \
                      interrupts (the SMMU's SPIs, the maintenance interrupt, the EL2 timer) and \
                      reads them back as unimplemented; then, with every interrupt masked at its \
                      CPU interface and the distributor it sees disabled, it makes edu DMA fault \
                      and spins without a trap: the hypervisor reports the SMMU event before the \
                      guest's next call",
        guest: ScenarioGuest::TestGuest,
        guest_args: "gic",
        hyp_args: Some("hyp.smp=1"),
        qemu_args: &["-device", "edu,addr=1,dma_mask=0xffffffffffffffff"],
        expect_console: &[
            "GUEST: PASS virtual-timer-arrives",
            "GUEST: PASS own-sgi-arrives",
            "GUEST: PASS device-interrupt-arrives",
            "GUEST: PASS hypervisor-interrupts-untouchable",
            "GUEST: PASS smmu-interrupt-fires-while-masked",
            "GUEST VERDICT: PASS 5 checks",
        ],
        expect_log: &[
            "guest GIC: distributor and 2 redistributors emulated",
            "entering the bare-metal guest",
            "SMMU event FTranslation stream 0x8 write (stage 2) at 0x40000000",
            "guest call 0xc6000bad: not supported",
            "exits: SgiSent 1",
            "exits: SgiRefused 1",
            "hypervisor memory check: 6 regions intact",
            "hypervisor exit: status 0",
        ],
        ..DEFAULTS
    },
    Scenario {
        name: "guest-log-flood",
        description: "the test guest repeats everything that makes the hypervisor log (64 refused CPU_ONs, \
                      2000 aborts, 1000 unknown calls, 1000 UNDEFINED traps, 4096 SMMU fault records): \
                      every call is answered, and no kind of line appears more than 17 times",
        guest: ScenarioGuest::TestGuest,
        guest_args: "flood",
        qemu_args: &["-device", "edu,addr=1,dma_mask=0xffffffffffffffff"],
        expect_console: &["GUEST VERDICT: PASS flood answered"],
        expect_log: &[
            "exits: Smc 65",
            "exits: ExternalAbortInjected 2000",
            "exits: UndefinedInjected 1000",
            "exits: UnsupportedCall 1000",
            "guest-caused CpuOnRefused: 64, the first 16 logged",
            "hypervisor memory check: 6 regions intact",
            "hypervisor exit: status 0",
        ],
        max_repeats: Some(17),
        timeout_secs: 120,
        ..DEFAULTS
    },
    // Issue 3 item 5: the SMMU conformance cases, run at EL2 against QEMU's SMMU with `edu` DMA.
    Scenario {
        name: "smmu-conformance",
        description: "the hypervisor alone owns the SMMU and drives edu DMA (stream 8) from EL2: \
                      stage-2, stage-1 and nested translation; an unmapped IOVA, an abort STE and \
                      an invalid STE block DMA with the events QEMU reports; a hitless stage-2 \
                      replace; recovery from an illegal command; an S2AA64=0 STE refused; a stage-2 \
                      domain's pages stay pinned from unmap until a sync after its invalidation",
        guest: ScenarioGuest::None,
        hyp_args: Some("hyp.selftest=smmu-conformance"),
        qemu_args: &["-device", "edu,addr=1,dma_mask=0xffffffffffffffff"],
        expect_status: 0,
        expect_console: &[],
        expect_log: &[
            "SMMU enabled: GBPA abort",
            "smmu-case stage2-dma-translates: PASS",
            "smmu-case unmapped-iova-faults: PASS",
            "smmu-case abort-ste-blocks: PASS",
            "smmu-case missing-ste-aborts: PASS",
            "smmu-case stage1-translates: PASS",
            "smmu-case nested-translates: PASS",
            "smmu-case hitless-stage2-replace: PASS",
            "smmu-case illegal-command-recovered: PASS",
            "smmu-case s2aa64-zero-refused: PASS",
            "smmu-case stage2-domain-unmap-pins: PASS",
            "smmu-conformance: 10 passed, 0 failed",
            "hypervisor exit: status 0",
        ],
        timeout_secs: 120,
        ..DEFAULTS
    },
    Scenario {
        name: "bench-runs",
        description: "the hypervisor's cost self-test (hyp.selftest=bench, the source of `cargo xtask \
                      bench`'s EL2 figures) runs to completion with the PMU counting at EL2",
        guest: ScenarioGuest::None,
        hyp_args: Some("hyp.selftest=bench"),
        qemu_args: &["-icount", "shift=0"],
        expect_status: 0,
        expect_console: &[],
        expect_log: &[
            "bench: command encode",
            "bench: batch of 32 CFGI_STE + CMD_SYNC",
            "hypervisor exit: status 0",
        ],
        timeout_secs: 60,
        ..DEFAULTS
    },
    Scenario {
        name: "linux-virtio-blk",
        description: "an unmodified Debian arm64 kernel boots under the hypervisor with 2 vCPUs, its \
                      busybox /init does block I/O on a virtio-blk disk (iommu_platform=on) and \
                      prints its verdict, then powers off",
        guest: ScenarioGuest::DebianLinux,
        hyp_args: None,
        qemu_args: &[],
        expect_status: 0,
        expect_console: &["GUEST VERDICT: PASS"],
        expect_log: &[
            "entering Linux",
            "vCPU 0x1 starting",
            "guest asked for system off",
            "hypervisor exit: status 0",
        ],
        timeout_secs: 300,
        ..DEFAULTS
    },
];

/// Checks `console` (the guest's UART) against the scenario's expected console text.
pub(crate) fn check_console(scenario: &Scenario, console: &str) -> Result<(), String> {
    let mut rest = console;
    for expected in scenario.expect_console {
        match rest.find(expected) {
            Some(at) => rest = &rest[at..],
            None => return Err(format!("guest console lacks `{expected}` (in order)")),
        }
    }
    Ok(())
}

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
    for forbidden in scenario.forbid_log {
        if let Some(line) = log.iter().find(|line| line.contains(forbidden)) {
            return Err(format!("log has `{forbidden}`: {line}"));
        }
    }
    if let Some(limit) = scenario.max_repeats {
        let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
        for line in log {
            *kinds.entry(line_kind(line)).or_default() += 1;
        }
        if let Some((kind, count)) = kinds.iter().find(|(_, count)| **count > limit) {
            return Err(format!(
                "{count} log lines of one kind, more than {limit}: {kind}"
            ));
        }
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

/// A log line with its timestamp dropped and every number replaced by `#`: lines that differ
/// only in addresses, counts or times are of one kind.
fn line_kind(line: &str) -> String {
    let mut kind = String::new();
    let mut in_number = false;
    for c in line
        .trim_start_matches(|c: char| c.is_ascii_digit() || c == '.' || c == ' ')
        .chars()
    {
        if c.is_ascii_hexdigit() || (in_number && c == 'x') {
            if !in_number {
                kind.push('#');
                in_number = true;
            }
        } else {
            in_number = false;
            kind.push(c);
        }
    }
    kind
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
            expect_log: &["a", "b"],
            ..DEFAULTS
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

    #[test]
    fn a_forbidden_line_fails_the_scenario() {
        let s = Scenario {
            name: "t",
            forbid_log: &["ERROR"],
            ..DEFAULTS
        };
        let clean = vec!["INFO fine".to_string()];
        let dirty = vec![
            "INFO fine".to_string(),
            "ERROR SMMU global error".to_string(),
        ];
        assert_eq!(check(&s, Some(0), false, &clean), Ok(()));
        assert!(check(&s, Some(0), false, &dirty).is_err());
    }

    #[test]
    fn lines_differing_only_in_numbers_count_as_one_kind() {
        assert_eq!(
            line_kind("0.104566 WARN  guest read at IPA 0x9050000 (PC 0x422096e0): abort"),
            line_kind("12.5 WARN  guest read at IPA 0x40200000 (PC 0x42209290): abort")
        );
        assert_ne!(line_kind("WARN guest read"), line_kind("WARN guest write"));
        let s = Scenario {
            name: "t",
            max_repeats: Some(2),
            ..DEFAULTS
        };
        let lines = |n: usize| -> Vec<String> {
            (0..n)
                .map(|i| format!("0.{i} WARN refused CPU_ON {i:#x}"))
                .collect()
        };
        assert_eq!(check(&s, Some(0), false, &lines(2)), Ok(()));
        assert!(check(&s, Some(0), false, &lines(3)).is_err());
    }
}
