//! The EL2 runtime that embeds the SMMUv3 component.
//!
//! Policy is plain code, built and tested on the host: the trap path ([`trap`]: syndrome
//! decoding, the answer to each trap, exception injection), emulated MMIO ([`mmio`], the
//! redistributors' view in [`redistributor`]), PSCI decoding ([`psci`]), CPU stack slots
//! ([`cpus`]), the EL2 map ([`layout`]) and a guest's stage 2 ([`stage2`]), memory
//! fingerprints ([`integrity`]), counters ([`stats`]).
//!
//! Built only for the target: `arch` (everything that touches the CPU or a device; it decides
//! nothing and calls nothing above it), `entry` (where the vectors land), `vm` (the VM every CPU
//! runs), `boot` and `guest_boot` (the boot sequence), `report` (the end of a run), and the
//! self-tests. A guest's trapped access flows `arch::vectors` -> `entry` -> `trap::handler` ->
//! `mmio` -> a device.

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod cmdline;
pub mod cpus;
pub mod gic;
pub mod guest_memory;
pub mod integrity;
pub mod layout;
pub mod mmio;
pub mod page_pool;
pub mod psci;
pub mod stage2;
pub mod stats;
pub mod trap;

#[cfg(target_os = "none")]
pub mod arch;
#[cfg(target_os = "none")]
pub mod bench;
#[cfg(target_os = "none")]
pub mod boot;
#[cfg(target_os = "none")]
pub mod entry;
#[cfg(target_os = "none")]
pub mod guest_boot;
#[cfg(target_os = "none")]
pub mod interrupts;
#[cfg(target_os = "none")]
pub mod report;
#[cfg(target_os = "none")]
pub mod vm;
#[cfg(target_os = "none")]
pub mod vsmmu;
// Issue 3 item 5: EL2 self-tests that own the SMMU and drive `edu` DMA (`hyp.selftest=...`).
#[cfg(target_os = "none")]
pub mod selftest;
