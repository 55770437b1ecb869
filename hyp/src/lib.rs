//! The EL2 runtime that embeds the SMMUv3 component.
//!
//! Pure modules (the EL2 memory layout, the page-table pool, exception syndrome decoding) build
//! and are tested on the host. Modules that touch the CPU or devices build only for
//! `aarch64-unknown-none` and live under [`arch`] and [`boot`].

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod cmdline;
pub mod exception;
pub mod integrity;
pub mod layout;
pub mod mmio;
pub mod page_pool;
pub mod psci;
pub mod redistributor;
pub mod stage2;
pub mod stats;

#[cfg(target_os = "none")]
pub mod arch;
#[cfg(target_os = "none")]
pub mod bench;
#[cfg(target_os = "none")]
pub mod boot;
#[cfg(target_os = "none")]
pub mod guest_boot;
// Issue 3 item 5: EL2 self-tests that own the SMMU and drive `edu` DMA (`hyp.selftest=...`).
#[cfg(target_os = "none")]
pub mod selftest;
