//! PSCI calls from a guest, decoded, and what the hypervisor does with each.
//!
//! The hypervisor proxies PSCI: calls that only concern the calling CPU or ask questions are
//! forwarded to firmware unchanged; `CPU_ON` is forwarded with the hypervisor's own entry point
//! (the new CPU must get its EL2 state before it enters the guest at the guest's entry point);
//! `CPU_SUSPEND` is never forwarded, because firmware would resume a powered-down CPU at the
//! *caller's* exception level, EL2, at the guest's chosen address: it is emulated as a standby
//! (a WFI, then success, which the specification allows for any requested state);
//! `SYSTEM_OFF` and `SYSTEM_RESET` end the run, after the hypervisor has reported. Anything
//! else returns `NOT_SUPPORTED`, as SMCCC requires for an unknown function, except the
//! hypervisor's two benchmark calls ([`function::BENCH_FLOOR_EMPTY`],
//! [`function::BENCH_FLOOR_SAVE_ALL`]), which it answers only in benchmark mode.

/// SMCCC return value for an unknown function.
pub const NOT_SUPPORTED: u64 = -1i64 as u64;
/// PSCI `INVALID_PARAMETERS`.
pub const INVALID_PARAMETERS: u64 = -2i64 as u64;
/// PSCI `ALREADY_ON`: CPU_ON for a CPU that is already on.
pub const ALREADY_ON: u64 = -4i64 as u64;

/// PSCI function IDs (SMC32 and SMC64 forms where both exist).
pub mod function {
    /// PSCI_VERSION.
    pub const VERSION: u32 = 0x8400_0000;
    /// CPU_SUSPEND (SMC32).
    pub const CPU_SUSPEND_32: u32 = 0x8400_0001;
    /// CPU_SUSPEND (SMC64).
    pub const CPU_SUSPEND_64: u32 = 0xc400_0001;
    /// CPU_OFF.
    pub const CPU_OFF: u32 = 0x8400_0002;
    /// CPU_ON (SMC32).
    pub const CPU_ON_32: u32 = 0x8400_0003;
    /// CPU_ON (SMC64).
    pub const CPU_ON_64: u32 = 0xc400_0003;
    /// AFFINITY_INFO (SMC32).
    pub const AFFINITY_INFO_32: u32 = 0x8400_0004;
    /// AFFINITY_INFO (SMC64).
    pub const AFFINITY_INFO_64: u32 = 0xc400_0004;
    /// MIGRATE_INFO_TYPE.
    pub const MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
    /// SYSTEM_OFF.
    pub const SYSTEM_OFF: u32 = 0x8400_0008;
    /// SYSTEM_RESET.
    pub const SYSTEM_RESET: u32 = 0x8400_0009;
    /// PSCI_FEATURES.
    pub const FEATURES: u32 = 0x8400_000a;
    /// SMCCC_VERSION.
    pub const SMCCC_VERSION: u32 = 0x8000_0000;
    /// SMCCC_ARCH_FEATURES.
    pub const SMCCC_ARCH_FEATURES: u32 = 0x8000_0001;
    /// The hypervisor's own (vendor-specific hypervisor service, SMC64): in benchmark mode,
    /// switch this CPU to the floor vectors that only check the syndrome and return, until an
    /// `HVC #1`.
    pub const BENCH_FLOOR_EMPTY: u32 = 0xc600_0f10;
    /// As [`BENCH_FLOOR_EMPTY`], with vectors that also save and restore all 31 registers.
    pub const BENCH_FLOOR_SAVE_ALL: u32 = 0xc600_0f11;
}

/// What to do with a guest's SMC or HVC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum GuestCall {
    /// Pass to firmware as is and return its result (x0..x3).
    Forward,
    /// Start the CPU `target` at the guest's `entry` with `context` in x0.
    CpuOn {
        /// MPIDR affinity of the CPU to start.
        target: u64,
        /// The guest's entry point (an IPA, equal to the PA).
        entry: u64,
        /// The guest's x0 on entry.
        context: u64,
    },
    /// Suspend this CPU: emulated as standby (WFI) and answered with success.
    CpuSuspend,
    /// Power the system off: the run ends as the guest asked.
    SystemOff,
    /// Reset the system: the run ends as the guest asked.
    SystemReset,
    /// Benchmark mode only: measure the trap floor with the floor vectors.
    BenchFloor {
        /// The vectors save and restore all 31 registers (otherwise they only check ESR).
        save_all: bool,
    },
    /// A function the hypervisor does not offer: return `NOT_SUPPORTED`.
    NotSupported,
}

/// Decides what a call with function ID `x0` and arguments `x1..x3` is.
#[must_use]
#[inline]
pub fn decode(x0: u64, x1: u64, x2: u64, x3: u64) -> GuestCall {
    use function::BENCH_FLOOR_SAVE_ALL;
    // SMCCC: bits 63:32 of the function ID must be zero for a valid call.
    let Ok(id) = u32::try_from(x0) else {
        return GuestCall::NotSupported;
    };
    // Fast calls only (bit 31); then by owning entity (bits 29:24): the Arm architecture
    // calls, the standard secure service (PSCI) and the hypervisor's own service have something
    // to offer, the rest is refused without looking further.
    let smc64 = id & 1 << 30 != 0;
    match (id & 1 << 31 != 0, (id >> 24) & 0x3f, id & 0xff_ffff) {
        (true, 4, number @ 0..=0x1f) => psci(number, smc64, x1, x2, x3),
        (true, 0, 0) if !smc64 => GuestCall::Forward, // SMCCC_VERSION
        (true, 6, 0xf10 | 0xf11) if smc64 => GuestCall::BenchFloor {
            save_all: id == BENCH_FLOOR_SAVE_ALL,
        },
        // SMCCC_ARCH_FEATURES would advertise firmware workarounds the hypervisor has not vetted.
        _ => GuestCall::NotSupported,
    }
}

/// PSCI function `number`, in its SMC32 or SMC64 form.
#[inline]
fn psci(number: u32, smc64: bool, x1: u64, x2: u64, x3: u64) -> GuestCall {
    match (number, smc64) {
        // VERSION, CPU_OFF, AFFINITY_INFO, MIGRATE_INFO_TYPE, FEATURES: questions, or about
        // the calling CPU alone.
        (0x0 | 0x2 | 0x6 | 0xa, false) | (0x4, _) => GuestCall::Forward,
        // CPU_SUSPEND, never forwarded: firmware would resume a powered-down CPU at EL2, at the
        // guest's chosen entry point.
        (0x1, _) => GuestCall::CpuSuspend,
        (0x3, false) => GuestCall::CpuOn {
            target: x1 & 0xffff_ffff,
            entry: x2 & 0xffff_ffff,
            context: x3 & 0xffff_ffff,
        },
        (0x3, true) => GuestCall::CpuOn {
            target: x1,
            entry: x2,
            context: x3,
        },
        (0x8, false) => GuestCall::SystemOff,
        (0x9, false) => GuestCall::SystemReset,
        _ => GuestCall::NotSupported,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_on_is_intercepted_in_both_widths() {
        assert_eq!(
            decode(u64::from(function::CPU_ON_64), 1, 0x4220_0000, 7),
            GuestCall::CpuOn {
                target: 1,
                entry: 0x4220_0000,
                context: 7
            }
        );
        assert_eq!(
            decode(
                u64::from(function::CPU_ON_32),
                0x1_0000_0001,
                0x1_4220_0000,
                0x1_0000_0007
            ),
            GuestCall::CpuOn {
                target: 1,
                entry: 0x4220_0000,
                context: 7
            }
        );
    }

    #[test]
    fn harmless_calls_are_forwarded_and_the_rest_refused() {
        assert_eq!(
            decode(u64::from(function::VERSION), 0, 0, 0),
            GuestCall::Forward
        );
        assert_eq!(
            decode(u64::from(function::CPU_OFF), 0, 0, 0),
            GuestCall::Forward
        );
        assert_eq!(
            decode(u64::from(function::SYSTEM_OFF), 0, 0, 0),
            GuestCall::SystemOff
        );
        assert_eq!(
            decode(u64::from(function::SYSTEM_RESET), 0, 0, 0),
            GuestCall::SystemReset
        );
        assert_eq!(decode(0xdead_beef, 0, 0, 0), GuestCall::NotSupported);
        assert_eq!(
            decode(u64::from(function::SMCCC_ARCH_FEATURES), 0x8000_7fff, 0, 0),
            GuestCall::NotSupported
        );
        // CPU_SUSPEND is emulated: firmware would resume a powered-down CPU at EL2.
        for suspend in [function::CPU_SUSPEND_32, function::CPU_SUSPEND_64] {
            assert_eq!(
                decode(u64::from(suspend), 1 << 16, 0x4020_0000, 0),
                GuestCall::CpuSuspend
            );
        }
        // Another owner's call (a trusted OS, say) is refused, not forwarded; so are PSCI
        // functions in the width they do not have, and yielding (non-fast) calls.
        for refused in [
            0xb200_0000,
            0xc400_0000,
            0xc400_0008,
            0x0400_0000,
            0x8000_0001,
        ] {
            assert_eq!(
                decode(refused, 0, 0, 0),
                GuestCall::NotSupported,
                "{refused:#x}"
            );
        }
        // Every function the hypervisor knows, decoded as the table in `function` names it.
        use function::*;
        for (id, call) in [
            (VERSION, GuestCall::Forward),
            (CPU_OFF, GuestCall::Forward),
            (AFFINITY_INFO_32, GuestCall::Forward),
            (AFFINITY_INFO_64, GuestCall::Forward),
            (MIGRATE_INFO_TYPE, GuestCall::Forward),
            (FEATURES, GuestCall::Forward),
            (SMCCC_VERSION, GuestCall::Forward),
            (SYSTEM_OFF, GuestCall::SystemOff),
            (SYSTEM_RESET, GuestCall::SystemReset),
            (BENCH_FLOOR_EMPTY, GuestCall::BenchFloor { save_all: false }),
            (
                BENCH_FLOOR_SAVE_ALL,
                GuestCall::BenchFloor { save_all: true },
            ),
        ] {
            assert_eq!(decode(u64::from(id), 0, 0, 0), call, "{id:#x}");
        }
        // A function ID with upper bits set is not a valid SMCCC call.
        assert_eq!(decode(0x1_8400_0000, 0, 0, 0), GuestCall::NotSupported);
    }
}
