//! `hyp.selftest=bench`: the hypervisor's own costs, in instructions retired at EL2.
//!
//! Run by `cargo xtask bench` under QEMU `-icount shift=0`, where counts are exact and
//! repeatable. Each figure is an average over many iterations and is logged as a `bench:` line
//! that the runner collects. The SMMU figures include the driver's MMIO and the poll for the
//! CMD_SYNC, but not QEMU's own work behind the registers (it is not guest code).

use crate::arch::pmu::instructions_per_iteration;
use crate::arch::smmu::SMMU;
use core::hint::black_box;
use smmu::StreamId;
use smmu::command::{Cmd, Command};

/// Runs every figure and logs it.
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
    defmt::info!(
        "bench: command decode and validate (CFGI_STE): {=u64} instructions",
        instructions_per_iteration(N, || {
            let _ = black_box(black_box(encoded).decode());
        })
    );
    let garbage = Command::from_words([0xffff_ffff_ffff_ff03, u64::MAX]);
    defmt::info!(
        "bench: command decode rejecting reserved bits: {=u64} instructions",
        instructions_per_iteration(N, || {
            let _ = black_box(black_box(garbage).decode());
        })
    );

    let mut guard = SMMU.lock();
    let Some(driver) = guard.as_mut() else {
        defmt::error!("bench: the SMMU is not up");
        return;
    };
    defmt::info!(
        "bench: CFGI_STE + CMD_SYNC on the SMMU: {=u64} instructions",
        instructions_per_iteration(100, || {
            let _ = driver.submit_and_sync(&[cfgi]);
        })
    );
    let batch = [cfgi; 32];
    let per_batch = instructions_per_iteration(100, || {
        let _ = driver.submit_and_sync(&batch);
    });
    defmt::info!(
        "bench: batch of 32 CFGI_STE + CMD_SYNC: {=u64} instructions ({=u64} per command)",
        per_batch,
        per_batch / 32
    );
    defmt::info!(
        "bench: SMMU event queue look (empty), as each SMMU interrupt does: {=u64} instructions",
        instructions_per_iteration(N, || {
            let _ = driver.drain_events(8, |_| {});
        })
    );
}
