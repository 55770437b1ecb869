//! The Arm SMMUv3 architecture (IHI 0070) as types, and the driver of a physical SMMUv3.
//!
//! This crate knows the architecture and the hardware, and nothing of guests: the virtual SMMU
//! a guest sees lives in `nested`, which builds on these types.
//!
//! - [`registers`]: register offsets, typed register values, ID-register decoding.
//! - [`hardware`]: the register-access trait and the probe.
//! - [`ste`], [`cd`]: stream table entries and context descriptors.
//! - [`command`], [`event`], [`page_request`]: command, event and PRI queue entries.
//! - [`queue`]: queue pointers (index, wrap, overflow).
//! - [`testing`]: a fake register file for host tests.

#![cfg_attr(not(test), no_std)]
// The crate touches no hardware itself: registers and DMA memory come through traits the
// hypervisor implements (with its own `unsafe`). Host tests may need `unsafe` for test doubles.
#![cfg_attr(not(test), forbid(unsafe_code))]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

// Descriptors are held as native `u64` words and the SMMU reads them little-endian; both
// targets (aarch64 at EL2 and x86-64 hosts) are little-endian.
const _: () = assert!(cfg!(target_endian = "little"));

mod bits;
pub mod cd;
pub mod command;
pub mod domain;
pub mod driver;
pub mod entry;
pub mod event;
pub mod field;
pub mod hardware;
pub mod ids;
pub mod page_request;
pub mod queue;
pub mod registers;
pub mod ste;
pub mod testing;
pub mod translation;

pub use ids::{
    Asid, Iova, Ipa, IpaRange, PhysAddr, PhysRange, StreamId, SubstreamId, VirtualStreamId, Vmid,
};
