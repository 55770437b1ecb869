//! The Arm SMMUv3 architecture (IHI 0070) as types, and the driver of a physical SMMUv3.
//!
//! This crate knows the architecture and the hardware, and nothing of guests: the virtual SMMU
//! a guest sees lives in `nested`, which builds on these types.

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod ids;
pub mod registers;

pub use ids::{Asid, Iova, Ipa, PhysAddr, PhysRange, StreamId, SubstreamId, VirtualStreamId, Vmid};
