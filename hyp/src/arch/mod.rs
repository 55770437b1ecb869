//! Everything that touches the CPU or a device directly. Builds only for `aarch64-unknown-none`.
//!
//! Each `unsafe` block here carries a `SAFETY:` comment naming the invariant it relies on and
//! who established it.

pub mod guest;
pub mod log;
pub mod mmio;
pub mod pmu;
pub mod power;
pub mod smmu;
pub mod sysreg;
pub mod vectors;
