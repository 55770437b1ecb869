//! The end of a run the guest asked to end: what happened (exits, SMMU events, guest-caused
//! log lines), whether hypervisor memory is intact, then power-off with the status.

use crate::arch::power::{ExitStatus, exit};
use crate::stats::{self, ExitReason, GuestNoise};

/// Reports and powers off; never returns.
pub fn end_run(reset: bool) -> ! {
    defmt::info!(
        "guest asked for system {=str}",
        if reset { "reset" } else { "off" }
    );
    crate::arch::smmu::report_events(crate::vsmmu::offer_event);
    crate::vsmmu::report();
    report_statistics();
    if !crate::integrity::check() {
        exit(ExitStatus::Failure);
    }
    exit(ExitStatus::Success);
}

/// Prints the exit counters, and how often each kind of guest-caused log line happened.
pub fn report_statistics() {
    for reason in ExitReason::ALL {
        defmt::info!("exits: {} {=u64}", reason, stats::get(reason));
    }
    for kind in GuestNoise::ALL {
        let count = stats::noise_count(kind);
        if count > stats::LOGGED_PER_REASON {
            defmt::info!(
                "guest-caused {}: {=u64}, the first {=u64} logged",
                kind,
                count,
                stats::LOGGED_PER_REASON
            );
        }
    }
}
