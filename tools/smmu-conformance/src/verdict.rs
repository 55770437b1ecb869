//! How a runner on QEMU reads a case's [`Outcome`] against
//! [`QEMU_DEVIATIONS`](crate::QEMU_DEVIATIONS): a failure the list names is a known deviation,
//! any other failure is a failure, and a listed case that passes is reported apart, so that a
//! deviation that went away (or a list that was wrong) stands out instead of passing quietly.
//!
//! This module owns that classification and the tally of a run. It decides nothing about what
//! a case checks, and does no logging: the runner prints each [`QemuVerdict`] as it can.

use crate::{Outcome, qemu_deviation};

/// A case's outcome on QEMU, read against the deviation list.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum QemuVerdict {
    /// Every check held, and the case is not a listed deviation.
    Pass,
    /// A check failed in a case the list does not name: what did not happen.
    Fail(&'static str),
    /// The platform lacks what the case needs.
    NotApplicable(&'static str),
    /// A listed case failed, as the list says it does on QEMU.
    KnownDeviation {
        /// The check that failed.
        failed: &'static str,
        /// The list's entry: what QEMU does and where the architecture says otherwise.
        deviation: &'static str,
    },
    /// A listed case passed: QEMU no longer deviates there, or the list is wrong. Either way
    /// the list must change, so a runner treats this as a failure of the run.
    DeviationPassed {
        /// The list's entry.
        deviation: &'static str,
    },
}

impl QemuVerdict {
    /// Whether the run must fail because of this case.
    #[must_use]
    pub const fn fails_run(&self) -> bool {
        matches!(self, Self::Fail(_) | Self::DeviationPassed { .. })
    }
}

/// The verdict on case `name` that ended with `outcome` on QEMU.
#[must_use]
pub fn qemu_verdict(name: &str, outcome: Outcome) -> QemuVerdict {
    match (outcome, qemu_deviation(name)) {
        (Outcome::Pass, None) => QemuVerdict::Pass,
        (Outcome::Pass, Some(deviation)) => QemuVerdict::DeviationPassed { deviation },
        (Outcome::Fail(why), None) => QemuVerdict::Fail(why),
        (Outcome::Fail(failed), Some(deviation)) => {
            QemuVerdict::KnownDeviation { failed, deviation }
        }
        (Outcome::NotApplicable(why), _) => QemuVerdict::NotApplicable(why),
    }
}

/// Counts of verdicts over a run.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct QemuTally {
    /// [`QemuVerdict::Pass`].
    pub passed: u32,
    /// [`QemuVerdict::Fail`].
    pub failed: u32,
    /// [`QemuVerdict::NotApplicable`].
    pub not_applicable: u32,
    /// [`QemuVerdict::KnownDeviation`].
    pub known_deviations: u32,
    /// [`QemuVerdict::DeviationPassed`].
    pub deviations_passed: u32,
}

impl QemuTally {
    /// Counts `verdict`.
    pub fn add(&mut self, verdict: &QemuVerdict) {
        let count = match verdict {
            QemuVerdict::Pass => &mut self.passed,
            QemuVerdict::Fail(_) => &mut self.failed,
            QemuVerdict::NotApplicable(_) => &mut self.not_applicable,
            QemuVerdict::KnownDeviation { .. } => &mut self.known_deviations,
            QemuVerdict::DeviationPassed { .. } => &mut self.deviations_passed,
        };
        *count += 1;
    }

    /// Whether the run succeeded: no failure outside the list, and no listed case passing.
    #[must_use]
    pub const fn succeeded(&self) -> bool {
        self.failed == 0 && self.deviations_passed == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CASES, QEMU_DEVIATIONS};

    const LISTED: &str = "event-queue-overflow";
    const UNLISTED: &str = "stage2-dma-translates";

    #[test]
    fn a_failure_outside_the_list_fails_the_run() {
        let verdict = qemu_verdict(UNLISTED, Outcome::Fail("why"));
        assert_eq!(verdict, QemuVerdict::Fail("why"));
        assert!(verdict.fails_run());
    }

    #[test]
    fn a_listed_failure_is_a_known_deviation_with_both_reasons() {
        let verdict = qemu_verdict(LISTED, Outcome::Fail("why"));
        assert!(matches!(
            verdict,
            QemuVerdict::KnownDeviation { failed: "why", deviation } if deviation.contains("7.4")
        ));
        assert!(!verdict.fails_run());
    }

    #[test]
    fn a_listed_case_that_passes_stands_out_and_fails_the_run() {
        let verdict = qemu_verdict(LISTED, Outcome::Pass);
        assert!(matches!(verdict, QemuVerdict::DeviationPassed { .. }));
        assert!(verdict.fails_run());
    }

    #[test]
    fn not_applicable_is_neither_pass_nor_failure_listed_or_not() {
        for name in [LISTED, UNLISTED] {
            let verdict = qemu_verdict(name, Outcome::NotApplicable("no"));
            assert_eq!(verdict, QemuVerdict::NotApplicable("no"));
            assert!(!verdict.fails_run());
        }
    }

    #[test]
    fn the_tally_succeeds_only_without_failures_or_vanished_deviations() {
        let mut tally = QemuTally::default();
        for verdict in [
            QemuVerdict::Pass,
            QemuVerdict::NotApplicable("no"),
            QemuVerdict::KnownDeviation {
                failed: "f",
                deviation: "d",
            },
        ] {
            tally.add(&verdict);
        }
        assert!(tally.succeeded());
        let mut failing = tally;
        failing.add(&QemuVerdict::Fail("f"));
        assert!(!failing.succeeded());
        let mut vanished = tally;
        vanished.add(&QemuVerdict::DeviationPassed { deviation: "d" });
        assert!(!vanished.succeeded());
        assert_eq!(
            (
                vanished.passed,
                vanished.not_applicable,
                vanished.known_deviations
            ),
            (1, 1, 1)
        );
    }

    #[test]
    fn every_listed_deviation_names_a_case_and_cites_the_architecture() {
        for (name, why) in QEMU_DEVIATIONS {
            assert!(CASES.iter().any(|case| case.name == *name), "{name}");
            assert!(why.contains("IHI 0070"), "{name}: {why}");
        }
    }
}
