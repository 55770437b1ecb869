//! Everything that touches the CPU or a device directly. Builds only for `aarch64-unknown-none`.
//!
//! Nothing here decides anything, and nothing here calls up into the rest of the hypervisor:
//! the vectors hand a saved frame to `hyp_handle_exception` (defined by `crate::entry`) by
//! symbol, and every other function is a register access, a barrier or a device window.
//! (`smmu` still holds the physical SMMU's bring-up and event intake; it moves out with the
//! one-way STE installation.)
//!
//! Each `unsafe` block here carries a `SAFETY:` comment naming the invariant it relies on and
//! who established it.

pub mod el2;
pub mod gic;
pub mod log;
pub mod mmio;
pub mod pmu;
pub mod power;
pub mod smmu;
pub mod sysreg;
pub mod vectors;
