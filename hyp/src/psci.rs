//! PSCI calls from a guest, decoded, and what the hypervisor does with each.
//!
//! The hypervisor proxies PSCI: calls that only concern the calling CPU or ask questions are
//! forwarded to firmware unchanged; `CPU_ON` is forwarded with the hypervisor's own entry point
//! (the new CPU must get its EL2 state before it enters the guest at the guest's entry point);
//! `CPU_SUSPEND` is never forwarded, because firmware would resume a powered-down CPU at the
//! *caller's* exception level, EL2, at the guest's chosen address: it is emulated as a standby
//! (a WFI, then success, which the specification allows for any requested state);
//! `SYSTEM_OFF` and `SYSTEM_RESET` end the run, after the hypervisor has reported. Anything
//! else returns `NOT_SUPPORTED`, as SMCCC requires for an unknown function.

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
    /// A function the hypervisor does not offer: return `NOT_SUPPORTED`.
    NotSupported,
}

/// Decides what a call with function ID `x0` and arguments `x1..x3` is.
#[must_use]
pub fn decode(x0: u64, x1: u64, x2: u64, x3: u64) -> GuestCall {
    use function::*;
    // SMCCC: bits 63:32 of the function ID must be zero for a valid call.
    let Ok(id) = u32::try_from(x0) else {
        return GuestCall::NotSupported;
    };
    match id {
        VERSION | CPU_SUSPEND_32 | CPU_SUSPEND_64 | CPU_OFF | AFFINITY_INFO_32
        | AFFINITY_INFO_64 | MIGRATE_INFO_TYPE | FEATURES | SMCCC_VERSION => GuestCall::Forward,
        CPU_ON_32 => GuestCall::CpuOn {
            target: x1 & 0xffff_ffff,
            entry: x2 & 0xffff_ffff,
            context: x3 & 0xffff_ffff,
        },
        CPU_ON_64 => GuestCall::CpuOn {
            target: x1,
            entry: x2,
            context: x3,
        },
        SYSTEM_OFF => GuestCall::SystemOff,
        SYSTEM_RESET => GuestCall::SystemReset,
        // SMCCC_ARCH_FEATURES would advertise firmware workarounds the hypervisor has not vetted.
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
        // A function ID with upper bits set is not a valid SMCCC call.
        assert_eq!(decode(0x1_8400_0000, 0, 0, 0), GuestCall::NotSupported);
    }
}
