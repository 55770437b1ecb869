//! The virtual SMMUv3 that a guest sees.
//!
//! Everything a guest writes to its emulated SMMU (registers, stream table entries, context
//! descriptors, commands) is an allegation until this crate has validated it. The crate is pure
//! logic against traits that `hyp` implements on hardware and tests implement on the host; it
//! never touches MMIO or page tables itself.
//!
//! The guest-facing emulation arrives with the vSMMU work; today the crate holds only what the
//! layering needs.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub use smmu;
