//! The QEMU scenarios: each boots the hypervisor with a purpose and checks how the run ended
//! and what the hypervisor logged.

use crate::linux::{GuestVerdict, KernelSeries, find_verdict, verdict_field};

/// The guest a scenario boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ScenarioGuest {
    /// The hypervisor alone.
    None,
    /// The bare-metal test guest (`tools/test-guest`).
    TestGuest,
    /// The unmodified Debian kernel of this series with the tooling's initramfs and disk.
    DebianLinux(KernelSeries),
}

/// One scenario.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scenario {
    /// What runs at EL1.
    pub(crate) guest: ScenarioGuest,
    /// Text that must appear on the guest console, in this order.
    pub(crate) expect_console: &'static [&'static str],
    /// Lines the guest console must have: for each entry, some line holds all its parts, in
    /// this order.
    pub(crate) expect_console_lines: &'static [&'static [&'static str]],
    /// Fields (`key=value`) the guest's `GUEST VERDICT: PASS` line must have, and what each
    /// must be; when there are any, a missing or failing verdict fails the scenario.
    pub(crate) expect_verdict: &'static [(&'static str, VerdictField)],
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
    /// Words or phrases that must not appear in any line of the hypervisor's log, matched as
    /// whole words (`ERROR` is the log level, not the `ERROR` in `CERROR_ILL`; `global error`
    /// is the error line, not a count of `0 global errors`)...
    pub(crate) forbid_log: &'static [&'static str],
    /// ...except in a line that also holds one of these (an error the scenario provokes on
    /// purpose, which it should then count in `expect_counts`).
    pub(crate) allow_log: &'static [&'static str],
    /// Numbers the log must report: `("text {} text", count)` names every line where that text
    /// surrounds a decimal number (`{}`); at least one line must, and each one's number must
    /// satisfy the count.
    pub(crate) expect_counts: &'static [(&'static str, Count)],
    /// The most times one kind of log line (its numbers ignored) may appear: a bound on what a
    /// guest can make the hypervisor log.
    pub(crate) max_repeats: Option<usize>,
}

/// What a number in the log must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Count {
    /// Exactly this.
    Exactly(u64),
    /// This or more.
    AtLeast(u64),
}

impl Count {
    fn accepts(self, value: u64) -> bool {
        match self {
            Self::Exactly(n) => value == n,
            Self::AtLeast(n) => value >= n,
        }
    }
}

/// What a field of the guest's verdict must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VerdictField {
    /// Exactly this text.
    Is(&'static str),
    /// One of these.
    OneOf(&'static [&'static str]),
    /// A decimal number (not `unknown`) that satisfies the count.
    Number(Count),
}

impl VerdictField {
    fn accepts(self, value: &str) -> bool {
        match self {
            Self::Is(text) => value == text,
            Self::OneOf(texts) => texts.contains(&value),
            Self::Number(count) => value.parse().is_ok_and(|n| count.accepts(n)),
        }
    }
}

/// What no scenario may log unless it says otherwise: an error, a global error of the SMMU
/// (logged at ERROR, but named too in case its level changes), a panic.
const FORBIDDEN: &[&str] = &["ERROR", "global error", "panic"];

/// What a scenario does not say otherwise.
const DEFAULTS: Scenario = Scenario {
    guest: ScenarioGuest::None,
    expect_console: &[],
    expect_console_lines: &[],
    expect_verdict: &[],
    name: "",
    description: "",
    hyp_args: None,
    qemu_args: &[],
    expect_status: 0,
    expect_log: &[],
    timeout_secs: 60,
    guest_args: "",
    forbid_log: FORBIDDEN,
    allow_log: &[],
    expect_counts: &[],
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

/// What the Linux scenarios check on the guest's console about its IOMMU.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LinuxIommuExpectations {
    pub(crate) console: &'static [&'static str],
    pub(crate) console_lines: &'static [&'static [&'static str]],
    pub(crate) verdict: &'static [(&'static str, VerdictField)],
}

/// The guest sees the vSMMU: Linux's `arm-smmu-v3` driver probes it at 0x0905_0000 (its
/// `ias/oas` line, which it prints only once the ID registers are read and accepted, shows up in
/// the `dmesg:` lines /init echoes), registers it as `smmu3.0x0000000009050000`, puts the disk in
/// an IOMMU group with a DMA domain (`DMA`, strict, Debian's default; `DMA-FQ` if lazy), and the
/// disk's I/O maps and unmaps IOVAs through it.
pub(crate) const LINUX_WITH_VSMMU: LinuxIommuExpectations = LinuxIommuExpectations {
    console: &[
        "guest: IOMMU devices: smmu3.0x0000000009050000",
        "GUEST VERDICT: PASS",
    ],
    console_lines: &[&[
        "guest: dmesg: ",
        "arm-smmu-v3 9050000.",
        ": ias ",
        "-bit, oas ",
    ]],
    verdict: &[
        ("iommu", VerdictField::Is("smmu3.0x0000000009050000")),
        ("groups", VerdictField::Number(Count::AtLeast(1))),
        ("vda-group", VerdictField::Number(Count::AtLeast(0))),
        ("domain", VerdictField::OneOf(&["DMA", "DMA-FQ"])),
        ("iommu-maps", VerdictField::Number(Count::AtLeast(1))),
        ("iommu-unmaps", VerdictField::Number(Count::AtLeast(1))),
    ],
};

/// The Debian Linux scenario, for either kernel series.
const LINUX_VIRTIO_BLK: Scenario = Scenario {
    name: "linux-virtio-blk",
    description: "an unmodified Debian arm64 kernel (bookworm-backports 6.12) boots under the \
                  hypervisor with 2 vCPUs, its busybox /init does block I/O on a virtio-blk disk \
                  (iommu_platform=on) through its vSMMU, nested over the SMMU's stage 2, without a \
                  single SMMU event, \
                  reports what its IOMMU did (IOMMU, groups, domain, map and unmap tracepoint \
                  counts during the I/O), prints its verdict, then powers off",
    guest: ScenarioGuest::DebianLinux(KernelSeries::Linux6_12),
    hyp_args: None,
    qemu_args: &[],
    expect_status: 0,
    expect_console: LINUX_WITH_VSMMU.console,
    expect_console_lines: LINUX_WITH_VSMMU.console_lines,
    expect_verdict: LINUX_WITH_VSMMU.verdict,
    expect_log: &[
        // The count is what the driver installed; the range is what was asked for.
        "SMMU: 65536 guest streams 0x0 to 0xffff translate through stage 2",
        "vSMMU at 0x9050000: streams 0x0 to 0xff",
        "entering Linux",
        "vCPU 0x1 starting",
        "guest asked for system off",
        "hypervisor exit: status 0",
    ],
    // Every transfer of the disk stays inside the guest's RAM.
    expect_counts: &[
        ("SMMU events: {} in all", Count::Exactly(0)),
        ("{} stage-2 read faults", Count::Exactly(0)),
        ("{} stage-2 write faults", Count::Exactly(0)),
        ("{} overflows", Count::Exactly(0)),
        ("{} global errors", Count::Exactly(0)),
        // Timers, IPIs and virtio's interrupts all arrive as virtual interrupts.
        ("exits: InterruptTimer {}", Count::AtLeast(100)),
        ("exits: InterruptSgi {}", Count::AtLeast(10)),
        ("exits: InterruptDevice {}", Count::AtLeast(10)),
        ("exits: SgiSent {}", Count::AtLeast(10)),
        ("exits: SgiRefused {}", Count::Exactly(0)),
        // The guest drove its vSMMU, and nothing it did was refused or failed.
        ("{} MSI writes", Count::AtLeast(1)),
        ("{} CD installs", Count::AtLeast(1)),
        ("{} STE rejections", Count::Exactly(0)),
        ("{} CD rejections", Count::Exactly(0)),
        ("{} illegal commands", Count::Exactly(0)),
        ("{} physical failures", Count::Exactly(0)),
    ],
    timeout_secs: 300,
    ..DEFAULTS
};

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
        // The fault report is the scenario's purpose, and it is logged at ERROR.
        forbid_log: &["global error", "panic"],
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
        forbid_log: &["recursed", "global error", "panic"],
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
        // Each mismatch, and the stop, are logged at ERROR: they are what the scenario shows.
        forbid_log: &["global error", "panic"],
        timeout_secs: 60,
        ..DEFAULTS
    },
    Scenario {
        name: "test-guest-is-contained",
        description: "the bare-metal test guest boots at EL1 under stage 2 with 2 vCPUs: its RAM works; \
                      the hypervisor's memory and UART, and an ISV=0 access, give it external aborts; \
                      the SMMU's address holds its virtual SMMU (stage 1 only); \
                      an unknown hypercall returns NOT_SUPPORTED; an IMPDEF register is \
                      UNDEFINED; PSCI is proxied; edu DMA reaches its RAM, its small reads of the \
                      hypervisor's device tree and image bring back zeros and its writes there are \
                      stopped (exact fault counts, no overflow); every DMA path around the SMMU is \
                      closed (fw_cfg DMA, a virtio-mmio device the operator attached, the GIC's LPI \
                      tables); its FP/SIMD registers survive traps taken with SMMU events pending; \
                      the hypervisor finds its code, tables and boot device tree unchanged at the end",
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
            "GUEST: PASS smmu-registers-are-virtual",
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
            "SMMU: 65536 guest streams 0x0 to 0xffff translate through stage 2 (guest RAM only",
            "entering the bare-metal guest",
            "vCPU 0x1 starting",
            "SMMU event FTranslation stream 0x8 read (stage 2) at 0x40000000",
            "guest asked for system off",
            // The canary of every blocked write: the boot device tree and the image (code) that
            // edu's DMA was aimed at are among the fingerprinted regions.
            "hypervisor memory check: 6 regions intact",
            "hypervisor exit: status 0",
        ],
        expect_counts: &[
            // edu: 64-byte reads of the device tree and the image (16 records each, one per
            // 4 bytes), 64-byte writes to both, and the 8-byte write of the FP/SIMD check. A
            // lost record (a full queue) would change these, and is counted on its own.
            ("SMMU events: {} in all", Count::Exactly(66)),
            ("{} stage-2 read faults", Count::Exactly(32)),
            ("{} stage-2 write faults", Count::Exactly(34)),
            ("{} overflows", Count::Exactly(0)),
            ("{} global errors", Count::Exactly(0)),
            // The LPI check's 11 redistributor and 2 distributor accesses, all emulated, and
            // the vSMMU's IDR0.
            ("exits: MmioHandled {}", Count::Exactly(14)),
            // 5 named checks, 2 fw_cfg registers, 32 virtio-mmio probes and 16 register writes.
            ("exits: ExternalAbortInjected {}", Count::Exactly(55)),
            ("exits: UndefinedInjected {}", Count::Exactly(1)),
            ("exits: UnsupportedCall {}", Count::Exactly(2)),
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
        expect_log: &["hypervisor exit: status 0"],
        expect_counts: &[("exits: Hvc {}", Count::Exactly(100))],
        forbid_log: &["ERROR", "global error", "panic", "benchmark mode"],
        ..DEFAULTS
    },
    Scenario {
        name: "guest-cannot-touch-hypervisor-interrupts",
        description: "the test guest, given one vCPU on a two-CPU machine, takes its virtual timer and \
                      an SGI to itself as virtual interrupts; SGI 15 (the hypervisor's) cannot be \
                      enabled and never arrives; an SGI it aims at the other CPU is refused; edu's level-sensitive interrupt arrives twice (so the guest's end deactivated the \
                      physical one); it writes every distributor and redistributor register that could \
                      disable, retarget, reprioritise, regroup, pend or activate the hypervisor's \
                      interrupts: the maintenance interrupt and the EL2 timer read back as \
                      unimplemented, the SMMU's SPIs as its vSMMU's virtual SPIs (its own state, \
                      Group 0, level and a foreign route refused); then, with every interrupt masked at its \
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
            "GUEST: PASS list-register-overflow-loses-nothing",
            "GUEST: PASS hypervisors-sgi-refused",
            "GUEST: PASS device-interrupt-arrives",
            "GUEST: PASS hypervisor-interrupts-untouchable",
            "GUEST: PASS smmu-interrupt-fires-while-masked",
            "GUEST VERDICT: PASS 7 checks",
        ],
        expect_log: &[
            "guest GIC: distributor and 2 redistributors emulated",
            "entering the bare-metal guest",
            "SMMU event FTranslation stream 0x8 write (stage 2) at 0x40000000",
            "guest call 0xc6000bad: not supported",
            "hypervisor memory check: 6 regions intact",
            "hypervisor exit: status 0",
        ],
        expect_counts: &[
            // SGI 5 to itself, then SGIs 0 to 7 to itself with interrupts masked: more than
            // the 4 list registers, so some waited (counted as overflows).
            ("exits: SgiSent {}", Count::Exactly(9)),
            ("exits: ListRegisterOverflow {}", Count::AtLeast(1)),
            // SGI 15 (the hypervisor's) to itself, and SGI 6 to the CPU it does not have.
            ("exits: SgiRefused {}", Count::Exactly(2)),
            // edu's interrupt, twice.
            ("exits: InterruptDevice {}", Count::Exactly(2)),
            // The 64-byte blocked write: one record per 4 bytes.
            ("{} stage-2 write faults", Count::Exactly(16)),
            ("{} stage-2 read faults", Count::Exactly(0)),
            ("{} global errors", Count::Exactly(0)),
        ],
        ..DEFAULTS
    },
    Scenario {
        name: "guest-log-flood",
        description: "the test guest repeats everything that makes the hypervisor log (64 refused CPU_ONs, \
                      2000 aborts, 1000 unknown calls, 1000 UNDEFINED traps, 4096 SMMU fault records, \
                      four times the event queue, which the hypervisor drains on the SMMU's interrupt \
                      between transfers): every call is answered, every record counted with none lost, \
                      and no kind of line appears more than 17 times",
        guest: ScenarioGuest::TestGuest,
        guest_args: "flood",
        qemu_args: &["-device", "edu,addr=1,dma_mask=0xffffffffffffffff"],
        expect_console: &["GUEST VERDICT: PASS flood answered"],
        expect_log: &[
            "guest-caused CpuOnRefused: 64, the first 16 logged",
            "hypervisor memory check: 6 regions intact",
            "hypervisor exit: status 0",
        ],
        expect_counts: &[
            // Each 4 KiB transfer gives 1024 records, which fill the 1024-entry queue; the
            // SMMU's interrupt has the hypervisor drain it before the next. (When the queue was
            // only looked at on guest traps, all but about 1024 were lost with
            // GERROR.EVTQ_ABT_ERR.)
            ("SMMU events: {} in all", Count::Exactly(4096)),
            ("{} stage-2 write faults", Count::Exactly(4096)),
            ("{} overflows", Count::Exactly(0)),
            ("{} global errors", Count::Exactly(0)),
            ("{} stage-2 read faults", Count::Exactly(0)),
            ("exits: Smc {}", Count::Exactly(65)),
            ("exits: ExternalAbortInjected {}", Count::Exactly(2000)),
            ("exits: UndefinedInjected {}", Count::Exactly(1000)),
            ("exits: UnsupportedCall {}", Count::Exactly(1000)),
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
    // The `smmu-conformance` crate's whole suite at EL2 (its QEMU column): every case's outcome
    // on QEMU 10.0 exactly, the deviations from the architecture by the check that fails.
    Scenario {
        name: "smmu-conformance-suite",
        description: "the hypervisor runs the smmu-conformance crate's 38 cases against QEMU's SMMU \
                      from EL2, with edu DMA (hyp.selftest=conformance-suite): 18 pass, the 7 known \
                      QEMU deviations fail exactly where the list says, 13 are not applicable \
                      (substreams, ATS, PRI, stall, MSI; invalidations QEMU completes before a sync)",
        guest: ScenarioGuest::None,
        hyp_args: Some("hyp.selftest=conformance-suite"),
        qemu_args: &["-device", "edu,addr=1,dma_mask=0xffffffffffffffff"],
        expect_status: 0,
        expect_console: &[],
        expect_log: &[
            "SMMU enabled: GBPA abort",
            "conformance-suite: 38 cases, stream 0x8, 64 test pages",
            "conformance-case stage2-dma-translates: PASS",
            "conformance-case unmapped-iova-faults: PASS",
            "conformance-case abort-ste-blocks: PASS",
            "conformance-case missing-ste-aborts: PASS",
            "conformance-case stage1-translates: PASS",
            "conformance-case nested-translates: PASS",
            "conformance-case hitless-stage2-replace: PASS",
            "conformance-case illegal-command-recovered: PASS",
            "conformance-case s2aa64-zero-refused: PASS",
            "conformance-case stage2-domain-unmap-pins: PASS",
            "conformance-case stage1-permission-fault: PASS",
            "conformance-case cd-r-clear-suppresses-record: PASS",
            "conformance-case stage2-permission-fault: PASS",
            "conformance-case s2r-clear-suppresses-record: PASS",
            // QEMU keeps stale translations and STEs until invalidated (the harness says so,
            // so the cases insist; the notes show it happened).
            "note: before TLBI_S2_IPA the old translation was used (1) or not (0): [0x1]",
            "conformance-case stale-translation-until-tlbi: PASS",
            "note: before CFGI_STE the old STE was used (1) or not (0): [0x1]",
            "conformance-case stale-ste-until-cfgi: PASS",
            "note: before TLBI_NH_ASID the old address space was used (1) or not (0): [0x1]",
            "conformance-case cd-replace-hitless: PASS",
            "conformance-case invalidation-completes-at-sync: NOT APPLICABLE (invalidations may \
             complete before a sync here: nothing to observe)",
            // QEMU keeps the 1024 records that fit, sets no OVFLG and raises EVTQ_ABT_ERR (0x4).
            "note: events, overflows, global errors: [0x400, 0x0, 0x4]",
            "conformance-case event-queue-overflow: KNOWN DEVIATION: a full event queue raised a \
             global error",
            "conformance-case atc-inv-illegal-without-ats: KNOWN DEVIATION: the SMMU did not \
             report CERROR_ILL",
            "conformance-case pri-resp-illegal-without-pri: KNOWN DEVIATION: the SMMU did not \
             report CERROR_ILL",
            "conformance-case resume-illegal-without-stall: KNOWN DEVIATION: the SMMU did not \
             report CERROR_ILL",
            "conformance-case tlbi-el2-illegal-without-hyp: KNOWN DEVIATION: the SMMU did not \
             report CERROR_ILL",
            "conformance-case tlbi-el3-illegal-on-non-secure-queue: KNOWN DEVIATION: the SMMU \
             did not report CERROR_ILL",
            "conformance-case s1cdmax-ignored-without-substreams: KNOWN DEVIATION: C_BAD_STE for \
             an S1CDMax the SMMU must ignore",
            "conformance-case cd-a-zero-illegal-when-abort-only: PASS",
            "conformance-case substreams-select-address-spaces: NOT APPLICABLE (the SMMU has too \
             few substreams)",
            "conformance-case two-level-cd-table: NOT APPLICABLE (the SMMU has too few substreams)",
            "conformance-case substream-rules: NOT APPLICABLE (the SMMU has too few substreams)",
            "conformance-case ats-translation-and-atc-invalidation: NOT APPLICABLE (the SMMU has \
             no ATS)",
            "conformance-case ats-refused-and-faulting-requests: NOT APPLICABLE (the SMMU has no \
             ATS)",
            "conformance-case pri-group-answered-and-retried: NOT APPLICABLE (the SMMU has no PRI)",
            "conformance-case pri-failure-responses: NOT APPLICABLE (the SMMU has no PRI)",
            "conformance-case pri-stop-marker: NOT APPLICABLE (the SMMU has no PRI)",
            "conformance-case pri-queue-overflow: NOT APPLICABLE (the SMMU has no PRI)",
            "conformance-case stall-resume-retries: NOT APPLICABLE (the SMMU cannot choose to \
             stall)",
            "conformance-case stall-term-terminates: NOT APPLICABLE (the SMMU cannot choose to \
             stall)",
            "conformance-case cmd-sync-msi: NOT APPLICABLE (the SMMU has no MSIs)",
            "hypervisor exit: status 0",
        ],
        expect_counts: &[
            ("conformance-suite: {} passed", Count::Exactly(18)),
            ("passed, {} failed", Count::Exactly(0)),
            ("failed, {} known deviations", Count::Exactly(7)),
            ("deviations, {} not applicable", Count::Exactly(13)),
            ("applicable, {} deviations passed", Count::Exactly(0)),
        ],
        forbid_log: &[
            "ERROR",
            "global error",
            "panic",
            "FAIL",
            "DEVIATION PASSED",
            "stray events before the case",
            "could not put the stream back to abort",
            "store behind the driver refused",
        ],
        // The overflow case's deviation is the global error QEMU raises.
        allow_log: &["conformance-case event-queue-overflow: KNOWN DEVIATION"],
        timeout_secs: 60,
        ..DEFAULTS
    },
    Scenario {
        name: "bench-runs",
        description: "the hypervisor's cost self-test (hyp.selftest=bench, the source of `cargo xtask \
                      bench`'s EL2 figures) runs to completion with the PMU counting at EL2, and \
                      every operation it measures succeeds (a failed one ends the run with an error)",
        guest: ScenarioGuest::None,
        hyp_args: Some("hyp.selftest=bench"),
        qemu_args: &["-icount", "shift=0"],
        expect_status: 0,
        expect_console: &[],
        expect_log: &[
            "bench: command encode",
            "bench: guest command decode and validate (CFGI_STE)",
            "bench: guest command decode and validate, reserved bits set",
            "bench: CFGI_STE + CMD_SYNC on the SMMU",
            "bench: batch of 32 CFGI_STE + CMD_SYNC",
            "bench: SMMU event queue look (empty)",
            "hypervisor exit: status 0",
        ],
        timeout_secs: 60,
        ..DEFAULTS
    },
    LINUX_VIRTIO_BLK,
    Scenario {
        name: "linux-6.1-virtio-blk",
        description: "the same with bookworm's own Debian 6.1 kernel (linux-image-6.1.0-*-arm64), \
                      whose virtio-pci is a module: the same I/O, the same IOMMU report, no SMMU \
                      event",
        guest: ScenarioGuest::DebianLinux(KernelSeries::Linux6_1),
        ..LINUX_VIRTIO_BLK
    },
    TEST_GUEST_VSMMU,
];

/// The test guest's own SMMUv3 driver on the virtual SMMU (`tools/test-guest/src/guest/vsmmu.rs`).
/// The same guest mode runs against QEMU's own SMMUv3 without the hypervisor, where all five
/// checks pass too: `qemu-system-aarch64 -M virt,iommu=smmuv3,gic-version=3 -cpu max -m 1G
/// -nographic -nic none -device edu,addr=1,dma_mask=0xffffffffffffffff -kernel
/// target/aarch64-unknown-none/release/test-guest -append vsmmu`.
pub(crate) const TEST_GUEST_VSMMU: Scenario = Scenario {
    name: "test-guest-vsmmu",
    description: "the bare-metal test guest drives the virtual SMMU with its own minimal driver: the \
                  ID registers say stage 1 and AArch64 tables, CR0ACK, GBPA and the queue registers \
                  behave; edu (stream 8) translates through the guest's stage-1 CD and tables over \
                  the hypervisor's stage 2, exactly onto the mapped pages in both directions, \
                  CMD_SYNC completes by MSI into guest RAM and by CMDQ_CONS, an unmapped IOVA gives \
                  F_TRANSLATION; an STE with V=0 gives C_BAD_STE, a reserved Config aborts \
                  silently, a stage-2 Config is ILLEGAL; an undefined command is CERROR_ILL and \
                  the queue recovers; a stream table, CD, stage-1 table, command queue, event queue \
                  or sync MSI at the hypervisor's memory gives the architected abort outcome and \
                  nothing from there reaches edu, nothing reaches the hypervisor's memory",
    guest: ScenarioGuest::TestGuest,
    guest_args: "vsmmu",
    qemu_args: &["-device", "edu,addr=1,dma_mask=0xffffffffffffffff"],
    expect_console: &[
        "GUEST: PASS vsmmu-probe",
        "GUEST: PASS nested-translation-edu",
        "GUEST: PASS invalid-ste-c-bad-ste",
        "GUEST: PASS illegal-command-cerror-ill",
        "GUEST: PASS pointers-at-hypervisor-memory",
        "GUEST VERDICT: PASS 5 checks",
    ],
    expect_log: &[
        "entering the bare-metal guest",
        "guest asked for system off",
        // The canary of every write the guest aimed at the hypervisor's device tree (its event
        // queue and sync MSI) and image (its stream table, stage-1 table and command queue).
        "hypervisor memory check: 6 regions intact",
        "hypervisor exit: status 0",
    ],
    expect_counts: &[
        // Nothing the guest programs may cause a global error or a lost record on the
        // physical SMMU (its own queue errors are the vSMMU's, virtual).
        ("{} overflows", Count::Exactly(0)),
        ("{} global errors", Count::Exactly(0)),
        // The one undefined opcode of `illegal-command-cerror-ill`.
        ("{} illegal commands", Count::Exactly(1)),
        // Three syncs signal by MSI into guest RAM (one into the command queue itself, as
        // Linux does); the two aimed at the hypervisor's memory abort instead.
        ("{} MSI writes", Count::Exactly(3)),
        ("{} physical failures", Count::Exactly(0)),
    ],
    timeout_secs: 120,
    ..DEFAULTS
};

/// Checks `console` (the guest's UART) against the scenario's expected console text, lines
/// and verdict fields.
pub(crate) fn check_console(scenario: &Scenario, console: &str) -> Result<(), String> {
    let mut rest = console;
    for expected in scenario.expect_console {
        match rest.find(expected) {
            Some(at) => rest = &rest[at..],
            None => return Err(format!("guest console lacks `{expected}` (in order)")),
        }
    }
    for parts in scenario.expect_console_lines {
        if !console.lines().any(|line| holds_in_order(line, parts)) {
            return Err(format!(
                "no guest console line holds `{}` (in order)",
                parts.join("` ... `")
            ));
        }
    }
    if scenario.expect_verdict.is_empty() {
        return Ok(());
    }
    let details = match find_verdict(console) {
        Some(GuestVerdict::Pass(details)) => details,
        Some(GuestVerdict::Fail(reason)) => return Err(format!("guest verdict: FAIL {reason}")),
        None => return Err("the guest printed no verdict".into()),
    };
    for &(key, expected) in scenario.expect_verdict {
        match verdict_field(&details, key) {
            Some(value) if expected.accepts(value) => {}
            Some(value) => {
                return Err(format!(
                    "guest verdict has {key}={value}, expected {expected:?}"
                ));
            }
            None => {
                return Err(format!(
                    "guest verdict has no {key}= (expected {expected:?})"
                ));
            }
        }
    }
    Ok(())
}

/// Whether `line` holds every one of `parts`, each after the one before.
fn holds_in_order(line: &str, parts: &[&str]) -> bool {
    let mut rest = line;
    parts.iter().all(|part| match rest.find(part) {
        Some(at) => {
            rest = &rest[at + part.len()..];
            true
        }
        None => false,
    })
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
        let allowed = |line: &&String| scenario.allow_log.iter().any(|a| line.contains(a));
        if let Some(line) = log
            .iter()
            .find(|line| contains_word(line, forbidden) && !allowed(line))
        {
            return Err(format!("log has `{forbidden}`: {line}"));
        }
    }
    for &(pattern, count) in scenario.expect_counts {
        let found: Vec<u64> = log
            .iter()
            .flat_map(|line| numbers_in(line, pattern))
            .collect();
        if found.is_empty() {
            return Err(format!("log reports no `{pattern}`"));
        }
        if let Some(bad) = found.iter().find(|&&n| !count.accepts(n)) {
            return Err(format!(
                "log reports `{pattern}` as {bad}, expected {count:?}"
            ));
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

/// Whether `phrase` occurs in `line` with no letter, digit or `_` right before or after it.
fn contains_word(line: &str, phrase: &str) -> bool {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    line.match_indices(phrase).any(|(at, _)| {
        !word(line[..at].chars().next_back()) && !word(line[at + phrase.len()..].chars().next())
    })
}

/// Every decimal number in `line` that `pattern`'s text surrounds (`{}` marks the number): the
/// text before it must end right before the number's first digit, and the text after must
/// begin right after its last, so `exits: Smc {}` does not read `exits: Smc 650` as 65.
fn numbers_in(line: &str, pattern: &str) -> Vec<u64> {
    let (before, after) = pattern.split_once("{}").unwrap_or((pattern, ""));
    // The maximal runs of decimal digits, as byte ranges.
    let mut runs = Vec::new();
    let mut start = None;
    for (at, c) in line.char_indices().chain([(line.len(), ' ')]) {
        match (c.is_ascii_digit(), start) {
            (true, None) => start = Some(at),
            (false, Some(first)) => {
                runs.push((first, at));
                start = None;
            }
            _ => {}
        }
    }
    runs.into_iter()
        .filter_map(|(first, end)| {
            let (head, digits, tail) =
                (line.get(..first)?, line.get(first..end)?, line.get(end..)?);
            // With no text before the number, it must still start a word (not `0x32`).
            let glued =
                before.is_empty() && head.chars().next_back().is_some_and(char::is_alphanumeric);
            (head.ends_with(before) && tail.starts_with(after) && !glued)
                .then(|| digits.parse().ok())
                .flatten()
        })
        .collect()
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
#[allow(clippy::unwrap_used)]
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
    fn the_conformance_suite_scenario_expects_one_outcome_per_case_and_every_listed_deviation() {
        let scenario = SCENARIOS
            .iter()
            .find(|s| s.name == "smmu-conformance-suite");
        assert!(scenario.is_some(), "no smmu-conformance-suite scenario");
        let Some(scenario) = scenario else { return };
        let lines: Vec<&str> = scenario
            .expect_log
            .iter()
            .filter_map(|line| line.strip_prefix("conformance-case "))
            .collect();
        let names: Vec<&str> = lines
            .iter()
            .map(|line| line.split(':').next().unwrap_or(""))
            .collect();
        let cases: Vec<&str> = smmu_conformance::CASES.iter().map(|c| c.name).collect();
        assert_eq!(
            names, cases,
            "one expected line per case, in the suite's order"
        );
        for (name, line) in names.iter().zip(&lines) {
            let listed = smmu_conformance::qemu_deviation(name).is_some();
            assert_eq!(line.contains(": KNOWN DEVIATION: "), listed, "{line}");
        }
        let expected = |text: &str| {
            scenario
                .expect_counts
                .iter()
                .find(|(pattern, _)| *pattern == text)
                .map(|(_, count)| *count)
        };
        let listed = smmu_conformance::QEMU_DEVIATIONS.len() as u64;
        assert_eq!(
            expected("failed, {} known deviations"),
            Some(Count::Exactly(listed))
        );
        let total = [
            "conformance-suite: {} passed",
            "deviations, {} not applicable",
        ]
        .iter()
        .filter_map(|text| match expected(text) {
            Some(Count::Exactly(n)) => Some(n),
            _ => None,
        })
        .sum::<u64>()
            + listed;
        assert_eq!(total, cases.len() as u64);
    }

    #[test]
    fn the_vsmmu_scenario_is_well_formed_enabled_or_not() {
        let s = &TEST_GUEST_VSMMU;
        assert!(
            SCENARIOS
                .iter()
                .all(|o| o.name != s.name || o.guest_args == "vsmmu")
        );
        assert_eq!((s.guest, s.guest_args), (ScenarioGuest::TestGuest, "vsmmu"));
        assert_eq!(s.forbid_log, FORBIDDEN);
        assert_eq!(
            s.expect_console.last(),
            Some(&"GUEST VERDICT: PASS 5 checks")
        );
        assert_eq!(
            s.expect_console
                .iter()
                .filter(|l| l.starts_with("GUEST: PASS "))
                .count(),
            5
        );
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
    fn every_scenario_forbids_errors_unless_it_says_why_not() {
        let s = Scenario {
            name: "t",
            ..DEFAULTS
        };
        for bad in [
            "0.9 ERROR SMMU global error: EventQueueAbort",
            "0.9 WARN  SMMU global error: CommandQueue",
            "0.9 ERROR panic: at x",
            "0.9 ERROR anything",
        ] {
            let log = vec!["0.1 INFO fine".to_string(), bad.to_string()];
            assert!(check(&s, Some(0), false, &log).is_err(), "{bad}");
        }
        // Only the three scenarios whose purpose is an error line relax the default, and they
        // still forbid panics and global errors.
        for scenario in SCENARIOS {
            if scenario.forbid_log == FORBIDDEN {
                continue;
            }
            assert!(scenario.forbid_log.contains(&"panic"), "{}", scenario.name);
            assert!(
                scenario.forbid_log.contains(&"global error"),
                "{}",
                scenario.name
            );
            if !scenario.forbid_log.contains(&"ERROR") {
                assert!(
                    [
                        "el2-fault-is-reported",
                        "el2-stack-overflow-is-caught",
                        "board-mismatch-stops-boot"
                    ]
                    .contains(&scenario.name),
                    "{} allows ERROR lines",
                    scenario.name
                );
            }
        }
    }

    #[test]
    fn forbidden_words_match_whole_words_only() {
        assert!(contains_word("0.9 ERROR SMMU global error: X", "ERROR"));
        assert!(contains_word(
            "0.9 ERROR SMMU global error: X",
            "global error"
        ));
        assert!(contains_word("0.9 ERROR panic: at x", "panic"));
        assert!(!contains_word("bench: validate (CERROR_ILL): 109", "ERROR"));
        assert!(!contains_word(
            "SMMU events: 0 overflows, 0 global errors",
            "global error"
        ));
        assert!(!contains_word("ERROR_LOG", "ERROR"));
    }

    #[test]
    fn an_allowed_line_is_exempt_from_the_forbidden_list_and_nothing_else_is() {
        let s = Scenario {
            name: "t",
            allow_log: &["SMMU global error: EventQueueAbort"],
            ..DEFAULTS
        };
        let expected = vec!["0.9 ERROR SMMU global error: EventQueueAbort".to_string()];
        assert_eq!(check(&s, Some(0), false, &expected), Ok(()));
        let other = vec!["0.9 ERROR SMMU global error: CommandQueue".to_string()];
        assert!(check(&s, Some(0), false, &other).is_err());
    }

    #[test]
    fn counts_are_read_exactly_next_to_their_text() {
        let line = "7.7 INFO  SMMU events: 66 in all, 32 stage-2 read faults, 34 stage-2 write \
                    faults, 0 overflows, 0 global errors";
        assert_eq!(numbers_in(line, "{} stage-2 read faults"), [32]);
        assert_eq!(numbers_in(line, "{} stage-2 write faults"), [34]);
        assert_eq!(numbers_in(line, "SMMU events: {} in all"), [66]);
        assert_eq!(numbers_in(line, "{} global errors"), [0]);
        assert_eq!(numbers_in("exits: Smc 650", "exits: Smc {}"), [650]);
        assert_eq!(numbers_in("exits: Smc 65", "exits: Smc {}"), [65]);
        assert!(numbers_in("exits: Smc 65", "exits: Hvc {}").is_empty());
        assert!(numbers_in("at 0x32 stage-2 read faults", "{} stage-2 read faults").is_empty());
    }

    #[test]
    fn a_count_fails_when_missing_wrong_or_too_small() {
        let s = Scenario {
            name: "t",
            expect_counts: &[
                ("{} stage-2 write faults", Count::AtLeast(1)),
                ("exits: Smc {}", Count::Exactly(65)),
            ],
            ..DEFAULTS
        };
        let log = |faults: u32, smc: u32| {
            vec![
                format!("1.0 INFO  SMMU events: 1 in all, {faults} stage-2 write faults"),
                format!("1.1 INFO  exits: Smc {smc}"),
            ]
        };
        assert_eq!(check(&s, Some(0), false, &log(1, 65)), Ok(()));
        assert_eq!(check(&s, Some(0), false, &log(16, 65)), Ok(()));
        assert!(check(&s, Some(0), false, &log(0, 65)).is_err());
        assert!(check(&s, Some(0), false, &log(1, 650)).is_err());
        assert!(check(&s, Some(0), false, &log(1, 64)).is_err());
        let without = vec!["1.1 INFO  exits: Smc 65".to_string()];
        assert!(check(&s, Some(0), false, &without).is_err());
    }

    /// The guest's console lines (kernel messages left out) under today's hypervisor, which
    /// gives it no IOMMU (Debian 6.1, from the `linux-6.1-virtio-blk` scenario).
    const CONSOLE_WITHOUT_IOMMU: &str = "\
guest: kernel 6.1.0-57-arm64: Linux version 6.1.0-57-arm64 (gcc-12) #1 SMP Debian 6.1.192-3\r
guest: IOMMU devices: none\r
guest: insmod /lib/modules/6.1.0-57-arm64/kernel/drivers/block/virtio_blk.ko\r
guest: /dev/vda is 0000:00:01.0, IOMMU group none, domain type none (0 IOMMU groups)\r
guest: counting iommu:map and iommu:unmap in /sys/kernel/tracing\r
guest: IOMMU during the I/O: 0 maps, 0 unmaps\r
GUEST VERDICT: PASS kernel=6.1.0-57-arm64 iommu=none groups=0 vda-group=none domain=none \
iommu-maps=0 iommu-unmaps=0 read=64KiB-direct write+readback=64KiB@block1024 md5=70f83c1a\r
";

    /// The same guest (Debian 6.12) booted straight on QEMU virt with `iommu=smmuv3`, no
    /// hypervisor: what it prints when it has an SMMUv3 at 0x0905_0000, as it will with the vSMMU.
    const CONSOLE_WITH_SMMU: &str = "\
[    1.180487] arm-smmu-v3 9050000.smmuv3: ias 44-bit, oas 44-bit (features 0x00088705)\r
guest: kernel 6.12.95+deb12-arm64: Linux version 6.12.95+deb12-arm64 #1 SMP Debian\r
guest: IOMMU devices: smmu3.0x0000000009050000 \r
guest: dmesg: [    1.180487] arm-smmu-v3 9050000.smmuv3: ias 44-bit, oas 44-bit (features 0x00088705)\r
guest: dmesg: [    1.193944] arm-smmu-v3 9050000.smmuv3: allocated 65536 entries for cmdq\r
guest: insmod /lib/modules/6.12.95+deb12-arm64/kernel/drivers/block/virtio_blk.ko\r
guest: /dev/vda is 0000:00:01.0, IOMMU group 0, domain type DMA (1 IOMMU groups)\r
guest: counting iommu:map and iommu:unmap in /sys/kernel/tracing\r
guest: IOMMU during the I/O: 195 maps, 195 unmaps\r
GUEST VERDICT: PASS kernel=6.12.95+deb12-arm64 iommu=smmu3.0x0000000009050000 groups=1 \
vda-group=0 domain=DMA iommu-maps=195 iommu-unmaps=195 read=64KiB-direct \
write+readback=64KiB@block1024 md5=d087eb10\r
";

    fn linux_scenario(expectations: LinuxIommuExpectations) -> Scenario {
        Scenario {
            expect_console: expectations.console,
            expect_console_lines: expectations.console_lines,
            expect_verdict: expectations.verdict,
            ..LINUX_VIRTIO_BLK
        }
    }

    #[test]
    fn the_linux_scenarios_check_that_the_guest_used_its_vsmmu() {
        let linux: Vec<&Scenario> = SCENARIOS
            .iter()
            .filter(|s| matches!(s.guest, ScenarioGuest::DebianLinux(_)))
            .collect();
        let series: Vec<KernelSeries> = linux
            .iter()
            .map(|s| match s.guest {
                ScenarioGuest::DebianLinux(series) => series,
                _ => KernelSeries::default(),
            })
            .collect();
        assert_eq!(series, [KernelSeries::Linux6_12, KernelSeries::Linux6_1]);
        let selected = LINUX_WITH_VSMMU;
        for scenario in linux {
            assert_eq!(
                scenario.expect_console, selected.console,
                "{}",
                scenario.name
            );
            assert_eq!(scenario.expect_console_lines, selected.console_lines);
            assert_eq!(scenario.expect_verdict, selected.verdict);
            assert!(!scenario.expect_verdict.is_empty());
        }
    }

    #[test]
    fn with_the_vsmmu_the_guest_must_probe_it_map_and_unmap() {
        let vsmmu = linux_scenario(LINUX_WITH_VSMMU);
        assert_eq!(check_console(&vsmmu, CONSOLE_WITH_SMMU), Ok(()));
        assert!(check_console(&vsmmu, CONSOLE_WITHOUT_IOMMU).is_err());
        // A lazy (flush-queue) domain is as good as a strict one; identity or blocked is not.
        let lazy = CONSOLE_WITH_SMMU.replace("domain=DMA ", "domain=DMA-FQ ");
        assert_eq!(check_console(&vsmmu, &lazy), Ok(()));
        for (from, to) in [
            ("domain=DMA ", "domain=identity "),
            ("iommu-unmaps=195", "iommu-unmaps=0"),
            ("iommu-unmaps=195", "iommu-unmaps=unknown"),
            ("iommu-maps=195", "iommu-maps=0"),
            ("groups=1 ", "groups=0 "),
            ("vda-group=0 ", "vda-group=none "),
            (
                "iommu=smmu3.0x0000000009050000",
                "iommu=smmu3.0x0000000009060000",
            ),
        ] {
            let console = CONSOLE_WITH_SMMU.replace(from, to);
            assert!(check_console(&vsmmu, &console).is_err(), "{to}");
        }
        // The probe line must be among /init's `dmesg:` lines, with the driver's ias/oas report:
        // a driver that gave up after naming the device does not count.
        let unprobed: String = CONSOLE_WITH_SMMU
            .lines()
            .filter(|line| !line.contains("ias 44-bit"))
            .map(|line| format!("{line}\n"))
            .collect();
        assert_eq!(
            check_console(&vsmmu, &unprobed),
            Err(
                "no guest console line holds `guest: dmesg: ` ... `arm-smmu-v3 9050000.` ... \
                 `: ias ` ... `-bit, oas ` (in order)"
                    .into()
            )
        );
        let kernel_only: String = CONSOLE_WITH_SMMU
            .lines()
            .filter(|line| !line.starts_with("guest: dmesg:"))
            .map(|line| format!("{line}\n"))
            .collect();
        assert!(check_console(&vsmmu, &kernel_only).is_err());
    }

    #[test]
    fn console_lines_hold_their_parts_in_order() {
        assert!(holds_in_order("a b c", &["a", "c"]));
        assert!(!holds_in_order("a b c", &["c", "a"]));
        assert!(!holds_in_order("aa", &["aa", "a"]));
        assert!(holds_in_order("anything", &[]));
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
