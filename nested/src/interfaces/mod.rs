//! The consumer-side interfaces of the virtual SMMU: what `nested` needs from the world and
//! what it offers a trap handler, owned here and implemented by `hyp` at EL2 and by fakes in
//! host tests (rust-vmm `vm-memory`'s "define consumer-side interfaces").
//!
//! - [`mmio`] (a): a virtual device's registers as a trapped access sees them.
//! - [`guest_memory`] (b): copying from and to a VM's RAM by IPA, bounded and checked.
//! - [`physical`] (c): the physical SMMU as the vSMMU needs it, and its implementation over
//!   `smmu`'s [`Driver`](smmu::driver::Driver).
//! - [`interrupts`] (e): the vSMMU's virtual interrupts and CMD_SYNC's wake-up event.
//!
//! (d), the events: physical events come in through
//! [`VirtualSmmu::handle_physical_event`](crate::VirtualSmmu::handle_physical_event), which
//! says what became of each ([`EventDisposition`](crate::EventDisposition)); the guest's event
//! queue is written through (b), as an SMMU writes it to memory.
//!
//! This module owns the traits and their error types; it holds no state.

pub mod guest_memory;
pub mod interrupts;
pub mod mmio;
pub mod physical;
