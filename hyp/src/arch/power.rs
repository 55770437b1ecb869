//! Ending the run: PSCI SYSTEM_OFF after a final, machine-readable status line.
//!
//! The runner (`cargo xtask run`) reads the log line `hypervisor exit: status N` and turns N into
//! its own exit code; QEMU itself always exits 0 on SYSTEM_OFF, so that line is the channel.

use smccc::Smc;

/// Exit statuses the hypervisor reports. Any non-zero value is a failure for the runner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitStatus {
    /// Everything the run was asked to do succeeded.
    Success = 0,
    /// A check failed (board data disagrees with the device tree, a probe failed, ...).
    Failure = 1,
    /// An exception the hypervisor does not expect was taken at EL2.
    UnexpectedException = 2,
    /// The hypervisor panicked.
    Panic = 101,
}

/// Logs the exit status and powers the machine off. Never returns.
pub fn exit(status: ExitStatus) -> ! {
    defmt::info!("hypervisor exit: status {=u32}", status as u32);
    // PSCI from EL2 goes to EL3 (or QEMU's emulation of it) through SMC.
    let _ = smccc::psci::system_off::<Smc>();
    // SYSTEM_OFF does not return on success; if firmware refused, park this CPU.
    defmt::error!("PSCI SYSTEM_OFF returned; parking");
    loop {
        core::hint::spin_loop();
    }
}
