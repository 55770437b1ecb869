//! A bare-metal guest for the hypervisor's QEMU scenarios.
//!
//! It boots at EL1 like any guest (x0 = its device tree) and checks, from the inside, what the
//! hypervisor lets it do: its RAM works; the hypervisor's memory, log UART and SMMU give an
//! external abort; an access the hypervisor cannot decode (ISV = 0) gives an external abort; an
//! unknown hypercall returns NOT_SUPPORTED; a trapped instruction the hypervisor does not
//! emulate is UNDEFINED; PSCI works, including starting a second vCPU. Each check prints
//! `GUEST: PASS name` or `GUEST: FAIL name: why` on UART0, and the run ends with one line,
//! `GUEST VERDICT: PASS n checks` or `GUEST VERDICT: FAIL ...`, then PSCI SYSTEM_OFF.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("the test guest runs only on aarch64-unknown-none, under the hypervisor");
    std::process::exit(2);
}
