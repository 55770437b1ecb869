//! `hyp.selftest=bench`: the hypervisor's own costs, in instructions retired at EL2.
//!
//! Run by `cargo xtask bench` under QEMU `-icount shift=0`, where counts are exact and
//! repeatable. Each figure is an average over many iterations and is logged as a `bench:` line
//! that the runner collects. The SMMU figures include the driver's MMIO and the poll for the
//! CMD_SYNC, but not QEMU's own work behind the registers (it is not guest code).
//!
//! A figure is only worth something if the operation it times did what it should: every
//! measured operation's outcome is checked, and the first one that fails ends the run with an
//! error and a failure status, not a figure.

use crate::arch::pmu::instructions_per_iteration;
use crate::arch::power::{ExitStatus, exit};
use crate::arch::smmu::SMMU;
use core::hint::black_box;
use nested::registers::id::VirtualFeatures;
use nested::validate::command::{CommandContext, GuestCommand, validate_command};
use smmu::command::{Cmd, Command};
use smmu::{StreamId, VirtualStreamId, Vmid};

/// Runs every figure and logs it; ends the run with a failure if a measured operation failed.
pub fn run() {
    const N: u64 = 1000;
    let cfgi = Cmd::CfgiSte {
        sid: StreamId(8),
        leaf: true,
    };
    let encoded = cfgi.encode();
    defmt::info!(
        "bench: command encode (CFGI_STE): {=u64} instructions",
        instructions_per_iteration(N, || {
            let _ = black_box(black_box(cfgi).encode());
        })
    );

    let mut guard = SMMU.lock();
    let Some(driver) = guard.as_mut() else {
        failed("the SMMU is not up")
    };
    // What the vSMMU's command consumer does with each command a guest queues: decode it and
    // validate it for the VM (a guest's view of this SMMU, 16-bit stream IDs, identity stream
    // map), as `nested` does before anything reaches the hardware.
    let features = VirtualFeatures::derive(driver.features(), 40, 16, 0, false);
    let context = CommandContext {
        features: &features,
        vmid: Vmid(1),
        physical_stream: |vsid: VirtualStreamId| Some(StreamId(vsid.0)),
    };
    let valid = GuestCommand(encoded);
    let mut refused = 0u64;
    defmt::info!(
        "bench: guest command decode and validate (CFGI_STE): {=u64} instructions",
        instructions_per_iteration(N, || {
            let outcome = black_box(validate_command(black_box(&valid), &context));
            refused += u64::from(outcome.is_err());
        })
    );
    if refused != 0 {
        failed("the validator refused a valid CFGI_STE");
    }
    let garbage = GuestCommand(Command::from_words([0xffff_ffff_ffff_ff03, u64::MAX]));
    let mut accepted = 0u64;
    defmt::info!(
        "bench: guest command decode and validate, reserved bits set (CERROR_ILL): {=u64} instructions",
        instructions_per_iteration(N, || {
            let outcome = black_box(validate_command(black_box(&garbage), &context));
            accepted += u64::from(outcome.is_ok());
        })
    );
    if accepted != 0 {
        failed("the validator accepted a command with reserved bits set");
    }

    let mut failure = None;
    let single = instructions_per_iteration(100, || {
        if let Err(error) = driver.submit_and_sync(&[cfgi]) {
            failure.get_or_insert(error);
        }
    });
    if let Some(error) = failure {
        defmt::error!("bench: CFGI_STE + CMD_SYNC failed: {}", error);
        failed("a CMD_SYNC failed");
    }
    defmt::info!(
        "bench: CFGI_STE + CMD_SYNC on the SMMU: {=u64} instructions",
        single
    );
    let batch = [cfgi; 32];
    let per_batch = instructions_per_iteration(100, || {
        if let Err(error) = driver.submit_and_sync(&batch) {
            failure.get_or_insert(error);
        }
    });
    if let Some(error) = failure {
        defmt::error!("bench: 32 CFGI_STE + CMD_SYNC failed: {}", error);
        failed("a batched CMD_SYNC failed");
    }
    defmt::info!(
        "bench: batch of 32 CFGI_STE + CMD_SYNC: {=u64} instructions ({=u64} per command)",
        per_batch,
        per_batch / 32
    );
    let mut records = 0u64;
    let look = instructions_per_iteration(N, || match driver.drain_events(8, |_| {}) {
        Ok(report) => records += u64::from(report.delivered),
        Err(error) => {
            failure.get_or_insert(error);
        }
    });
    if let Some(error) = failure {
        defmt::error!("bench: the event queue look failed: {}", error);
        failed("looking at the event queue failed");
    }
    if records != 0 {
        failed("the event queue was not empty, so the figure is not an empty look");
    }
    defmt::info!(
        "bench: SMMU event queue look (empty), as each SMMU interrupt does: {=u64} instructions",
        look
    );
}

fn failed(why: &str) -> ! {
    defmt::error!("bench: {=str}; no figure is reported for it", why);
    exit(ExitStatus::Failure)
}
