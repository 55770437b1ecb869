//! Stream table entries and context descriptors, from parameters to hardware: "make", then
//! "install", as two separate steps.
//!
//! - [`make`] turns typed, validated parameters into the target [`Ste`](crate::ste::Ste) or
//!   [`Cd`](crate::cd::Cd). It is pure: no memory the SMMU reads is touched, and every invalid
//!   combination is refused there, with its own error, before an entry exists.
//! - [`used`] says which bits the SMMU reads for a given entry. It is the whole basis of the
//!   install plan, and of the tests' notion of "this state behaves like the old entry".
//! - [`install`] moves a live entry from what it holds to a made target through single 64-bit
//!   stores, hitless whenever one exists, each step followed by the invalidation and `CMD_SYNC`
//!   the architecture requires. Its targets are [`PhysicalSte`] and [`PhysicalCd`], which only
//!   the physical guard ([`install::check_physical_ste`], [`install::check_physical_cd`])
//!   constructs, and it runs the guard again on every state it is about to make visible.
//!
//! This module owns none of the memory and none of the queues: the driver owns the stream and
//! CD tables and the command queue, and lends them to the installer through
//! [`install::EntryWriter`]. Whether a guest's request may become an entry at all is `nested`'s
//! question, answered before `make` is called.

pub mod install;
pub mod make;
pub mod used;

pub use install::{PhysicalCd, PhysicalSte};

#[cfg(test)]
mod tests;
