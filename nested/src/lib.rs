//! The virtual SMMUv3 that a guest sees.
//!
//! Everything a guest writes to its emulated SMMU (registers, stream table entries, context
//! descriptors, commands) is an allegation until this crate has validated it. The crate is pure
//! logic against traits that `hyp` implements on hardware and tests implement on the host; it
//! never touches MMIO or page tables itself, and never allocates.
//!
//! # The path of a guest write, by file
//!
//! 1. [`registers`]: where a trapped access lands ([`VirtualSmmu`] implements
//!    [`MmioDevice`]); the register file and its rules; [`registers::id`]: what is advertised.
//! 2. [`command_queue`]: a CMDQ_PROD write consumes guest commands, a budget's worth per trap.
//! 3. [`validate`]: each command, STE and CD, from a copy, into a `Validated*` value or an
//!    error with its architected outcome; [`guest_tables`] finds STEs and CDs in guest RAM.
//! 4. [`shadow`]: the physical STE and the shadow CD table built from validated values, and
//!    installed hitlessly; [`streams`]: which streams the VM owns, virtual and physical.
//! 5. [`events`]: physical events back to the guest's event queue, rewritten; [`pri`]: page
//!    requests to the guest's PRI queue and its answers back, and [`pasid`]: the PASID
//!    lifecycle that decides which address space a request or an answer belongs to;
//!    [`reach`]: the pinning rule's device side (ATCs) for `hyp`'s stage-2 unmaps.
//! 6. [`counters`]: what happened, for the shutdown report; [`budget`]: what a trap may spend.
//!
//! [`interfaces`] holds the consumer-side traits `hyp` implements; [`config`] what it decides
//! at construction and what it must map and describe in return (the CD window, the device
//! tree). [`vsmmu`] ties them together and lists the entry points.
//!
//! # Testing
//!
//! - `cargo test -p nested`: the host tests (`src/tests/`), the real `smmu` driver over its
//!   fake SMMU behind [`PhysicalSmmu`], and a property test of `testing::hostile`.
//! - `cd nested && RUSTC_BOOTSTRAP=1 cargo fuzz run vsmmu -- -max_total_time=60`: the same
//!   hostile driver, coverage-guided by libFuzzer (`cargo install cargo-fuzz` once; stable
//!   Rust with `RUSTC_BOOTSTRAP=1` for the sanitizer flags). `-runs=20000` is a bounded run for
//!   CI. A finding is a panic: a broken promise, with the input under `fuzz/artifacts/`.

#![cfg_attr(not(any(test, feature = "testing")), no_std)]
#![forbid(unsafe_code)]

pub use smmu;

pub mod budget;
pub mod command_queue;
pub mod config;
pub mod counters;
pub mod events;
pub mod guest_tables;
pub mod interfaces;
pub mod pasid;
pub mod pri;
pub mod reach;
pub mod registers;
pub mod shadow;
pub mod streams;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod validate;
pub mod vsmmu;

pub use config::{ConfigError, StreamAssignment, VsmmuConfig};
pub use counters::Counters;
pub use events::{DropReason, EventDisposition, WithheldReason};
pub use interfaces::guest_memory::{GuestMemory, GuestMemoryError};
pub use interfaces::interrupts::{InterruptSink, VirtualInterrupt};
pub use interfaces::mmio::{AccessWidth, MmioDevice, MmioError, MmioOffset, MmioOutcome, VcpuId};
pub use interfaces::physical::{PhysicalCommand, PhysicalSmmu, ShadowSte};
pub use pasid::Epoch;
pub use pri::{PriDisposition, PriRefusal, ResponseDrop};
pub use reach::{DeviceCacheError, DeviceCachesInvalidated};
pub use smmu::driver::{PriIntake, PriPosition};
pub use vsmmu::{Backends, PasidSummary, VirtualSmmu};

#[cfg(test)]
mod tests;
