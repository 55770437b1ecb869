//! A bare-metal guest for the hypervisor's QEMU scenarios.
//!
//! It boots at EL1 like any guest (x0 = its device tree) and checks, from the inside, what the
//! hypervisor lets it do: its RAM works; the hypervisor's memory, log UART and SMMU give an
//! external abort; an access the hypervisor cannot decode (ISV = 0) gives an external abort; an
//! unknown hypercall returns NOT_SUPPORTED; a trapped instruction the hypervisor does not
//! emulate is UNDEFINED; PSCI works, including starting a second vCPU. Each check prints
//! `GUEST: PASS name` or `GUEST: FAIL name: why` on UART0, and the run ends with one line,
//! `GUEST VERDICT: PASS n checks` or `GUEST VERDICT: FAIL ...`, then PSCI SYSTEM_OFF.
//!
//! The first word of its command line (`/chosen/bootargs`) picks another set of checks: `bench`,
//! `pmu`, `flood`, `gic`, or `vsmmu` (its own SMMUv3 driver against the SMMU its device tree
//! names, see `guest/vsmmu.rs`). Loaded by QEMU alone (x0 = 0), it finds QEMU's device tree at
//! the start of RAM and powers off through the tree's PSCI conduit: `vsmmu` then runs against
//! QEMU's own SMMUv3 (`-M virt,iommu=smmuv3 -kernel test-guest -append vsmmu`).

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("the test guest runs only on aarch64-unknown-none, under the hypervisor");
    std::process::exit(2);
}
