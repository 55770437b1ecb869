//! Self-tests that drive real (emulated) hardware from EL2, selected by `hyp.selftest=NAME` and
//! run by `cargo xtask test` scenarios. Builds only for `aarch64-unknown-none`.
//!
//! - [`smmu`]: `smmu-conformance`, the hypervisor's SMMU stack (stage-2 tables, `smmu::entry`'s
//!   make and install, the driver's queues) against the physical SMMU, with `edu` DMA.
//! - [`conformance`]: `conformance-suite`, the whole `smmu-conformance` suite (the crate's
//!   cases, written once against its harness trait) against the physical SMMU, with `edu` DMA.
//! - [`edu`]: QEMU's `edu` PCI device as a DMA master at EL2.
//!
//! A self-test may map device windows the normal boot never maps (the PCIe configuration page
//! and BAR of its device), with [`map_device_windows`], only once it has been selected.

pub mod conformance;
pub mod edu;
pub mod smmu;

use crate::layout::RegionKind;
use crate::page_pool::PagePool;
use ::smmu::PhysRange;
use aarch64_paging::{
    Mapping,
    descriptor::PhysicalAddress,
    paging::{Constraints, El2, MemoryRegion},
};

/// Adds `windows` to the live EL2 map as device memory (identity mapped), page-widened.
///
/// The pages must not be mapped already: they are added from invalid, so no break-before-make
/// is involved, and the TLB is invalidated afterwards anyway.
///
/// # Errors
///
/// The name of the first window the table builder refused.
pub fn map_device_windows(
    map: &mut Mapping<PagePool, El2>,
    windows: &[(&'static str, PhysRange)],
) -> Result<(), &'static str> {
    const PAGE: u64 = crate::layout::PAGE_SIZE;
    for &(name, window) in windows {
        let start = window.base.get() & !(PAGE - 1);
        let end = window
            .end()
            .checked_add(PAGE - 1)
            .map(|end| end & !(PAGE - 1))
            .ok_or(name)?;
        map.map_range(
            &MemoryRegion::new(start as usize, end as usize),
            PhysicalAddress(start as usize),
            RegionKind::Device.attributes(),
            Constraints::empty(),
        )
        .map_err(|_| name)?;
        defmt::info!(
            "EL2 map: self-test window {=str} {=u64:#x}..{=u64:#x} (device)",
            name,
            start,
            end
        );
    }
    crate::arch::sysreg::invalidate_el2_tlb();
    Ok(())
}
