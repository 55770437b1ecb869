//! Counters per exit reason, printed when the run ends.
//!
//! Updated from trap handlers on any CPU with relaxed atomic increments: a counter is a
//! statistic, not a synchronisation point.

use core::sync::atomic::{AtomicU64, Ordering};

/// Why the guest left EL1 for EL2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
#[repr(usize)]
pub enum ExitReason {
    /// HVC: PSCI or another SMCCC call.
    Hvc,
    /// SMC (trapped by HCR_EL2.TSC): PSCI or another SMCCC call.
    Smc,
    /// A stage-2 data abort handled by an MMIO handler.
    MmioHandled,
    /// A stage-2 data abort answered with an external abort (no handler, or ISV=0).
    ExternalAbortInjected,
    /// A stage-2 instruction abort (the guest executed from outside its RAM).
    InstructionAbort,
    /// A trap the hypervisor does not handle, answered with an undefined-instruction exception.
    UndefinedInjected,
    /// A call the hypervisor refused with NOT_SUPPORTED.
    UnsupportedCall,
    /// An IRQ, FIQ or SError taken to EL2 from the guest.
    Asynchronous,
    /// A guest SGI (a trapped ICC_SGI1R_EL1 write) sent to one of its CPUs.
    SgiSent,
    /// A guest SGI target that is not one of its CPUs, dropped.
    SgiRefused,
    /// A guest-owned SPI taken at EL2 and injected.
    InterruptDevice,
    /// A guest-owned PPI (a timer) taken at EL2 and injected.
    InterruptTimer,
    /// A guest SGI taken at EL2 on its target and injected.
    InterruptSgi,
    /// One of the hypervisor's own interrupts (the SMMU's, its timer, maintenance).
    InterruptHypervisor,
    /// An injection that found every list register in use and waited for one.
    ListRegisterOverflow,
}

impl ExitReason {
    /// Every reason, in report order.
    pub const ALL: [ExitReason; 15] = [
        Self::Hvc,
        Self::Smc,
        Self::MmioHandled,
        Self::ExternalAbortInjected,
        Self::InstructionAbort,
        Self::UndefinedInjected,
        Self::UnsupportedCall,
        Self::Asynchronous,
        Self::SgiSent,
        Self::SgiRefused,
        Self::InterruptDevice,
        Self::InterruptTimer,
        Self::InterruptSgi,
        Self::InterruptHypervisor,
        Self::ListRegisterOverflow,
    ];
}

/// Exits of one reason logged in full; later ones are only counted, so that a guest repeating
/// a bad access cannot flood the hypervisor's log (or slow every trap by the log's cost).
pub const LOGGED_PER_REASON: u64 = 16;

/// Every counter: exits by reason and guest-caused log lines by kind.
#[derive(Debug)]
pub struct Counters {
    exits: [AtomicU64; ExitReason::ALL.len()],
    noise: [AtomicU64; GuestNoise::ALL.len()],
}

impl Default for Counters {
    fn default() -> Self {
        Self::new()
    }
}

impl Counters {
    /// All zero.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            exits: [const { AtomicU64::new(0) }; ExitReason::ALL.len()],
            noise: [const { AtomicU64::new(0) }; GuestNoise::ALL.len()],
        }
    }

    /// Counts one exit; returns whether it is among the first [`LOGGED_PER_REASON`] of its
    /// kind (and so worth a log line).
    pub fn count(&self, reason: ExitReason) -> bool {
        self.exits
            .get(reason as usize)
            .is_some_and(|counter| counter.fetch_add(1, Ordering::Relaxed) < LOGGED_PER_REASON)
    }

    /// The count for `reason`.
    #[must_use]
    pub fn get(&self, reason: ExitReason) -> u64 {
        self.exits
            .get(reason as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Counts one occurrence of `kind`; returns whether it may still be logged.
    pub fn noise(&self, kind: GuestNoise) -> bool {
        self.noise
            .get(kind as usize)
            .is_some_and(|counter| counter.fetch_add(1, Ordering::Relaxed) < LOGGED_PER_REASON)
    }

    /// How many times `kind` happened.
    #[must_use]
    pub fn noise_count(&self, kind: GuestNoise) -> u64 {
        self.noise
            .get(kind as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// The hypervisor's counters.
pub static COUNTERS: Counters = Counters::new();

/// Counts one exit in [`COUNTERS`]; see [`Counters::count`].
pub fn count(reason: ExitReason) -> bool {
    COUNTERS.count(reason)
}

/// The count for `reason` in [`COUNTERS`].
#[must_use]
pub fn get(reason: ExitReason) -> u64 {
    COUNTERS.get(reason)
}

/// Kinds of log line a guest can cause other than by an exit (those are [`ExitReason`]s): each
/// is logged for its first [`LOGGED_PER_REASON`] occurrences and only counted after that.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
#[repr(usize)]
pub enum GuestNoise {
    /// A PSCI CPU_ON the hypervisor refused.
    CpuOnRefused,
    /// An SMMU event record (a device's fault).
    SmmuEvent,
    /// An event record the hypervisor could not decode.
    SmmuUndecodableEvent,
    /// Events lost to a full event queue.
    SmmuEventsLost,
    /// An SMMU global error (an event queue abort, say).
    SmmuGlobalError,
}

impl GuestNoise {
    /// Every kind, in report order.
    pub const ALL: [GuestNoise; 5] = [
        Self::CpuOnRefused,
        Self::SmmuEvent,
        Self::SmmuUndecodableEvent,
        Self::SmmuEventsLost,
        Self::SmmuGlobalError,
    ];
}

/// Counts one occurrence of `kind` in [`COUNTERS`]; see [`Counters::noise`].
pub fn noise(kind: GuestNoise) -> bool {
    COUNTERS.noise(kind)
}

/// How many times `kind` happened, in [`COUNTERS`].
#[must_use]
pub fn noise_count(kind: GuestNoise) -> u64 {
    COUNTERS.noise_count(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_has_its_own_counter() {
        let before: Vec<u64> = ExitReason::ALL.iter().map(|&r| get(r)).collect();
        let _ = count(ExitReason::Smc);
        let _ = count(ExitReason::Smc);
        let _ = count(ExitReason::UndefinedInjected);
        for (reason, before) in ExitReason::ALL.iter().zip(before) {
            let expected = match reason {
                ExitReason::Smc => before + 2,
                ExitReason::UndefinedInjected => before + 1,
                _ => before,
            };
            assert_eq!(get(*reason), expected, "{reason:?}");
        }
    }

    #[test]
    fn noise_is_logged_for_the_first_occurrences_only_and_always_counted() {
        let logged = (0..100).filter(|_| noise(GuestNoise::CpuOnRefused)).count();
        assert_eq!(logged as u64, LOGGED_PER_REASON);
        assert_eq!(noise_count(GuestNoise::CpuOnRefused), 100);
        assert_eq!(noise_count(GuestNoise::SmmuGlobalError), 0);
    }
}
