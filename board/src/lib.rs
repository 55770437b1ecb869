//! Platform data and device-tree discovery.
//!
//! The hypervisor needs to know, before it trusts anything it was handed, where the
//! devices it keeps for itself are: its log UART, the GIC, the SMMUv3 and the PCIe host
//! whose stream IDs it owns. This crate owns that knowledge and nothing else: it touches
//! no hardware and allocates nothing, so it builds for `aarch64-unknown-none` and is tested
//! on the host.
//!
//! - [`platform`]: the board data, [`QEMU_VIRT`] and [`FVP_BASE_REVC`], and [`by_name`].
//! - [`discovery`]: [`discover`] reads a DTB into a [`Discovered`], bounded and panic-free.
//! - [`cross_check`](mod@cross_check): [`identify`] picks the platform a DTB names, and [`cross_check()`]
//!   reports each [`Mismatch`] between the board data and the DTB.
//! - [`guest_devices`]: the allow-list of devices a guest may have, and [`guest_devices::plan`],
//!   which judges every device node of a DTB against it.
//! - [`guest_tree`]: [`build_guest_tree`] derives the guest's DTB from the platform's: the
//!   guest's RAM, the hypervisor's devices removed, `/chosen` set, and the virtual SMMU
//!   described with the PCIe host bridge's `iommu-map` pointing at it.
//! - [`stream_ids`]: requester IDs, bus ranges and the `iommu-map` arithmetic that gives
//!   the stream IDs a host bridge occupies.
//! - [`interrupt`]: GIC interrupt specifiers.
//!
//! At boot the hypervisor does, in order:
//!
//! ```
//! # let dtb = include_bytes!("../testdata/qemu-virt.dtb");
//! let discovered = board::discover(dtb)?;
//! let platform = board::identify(&discovered)?;
//! board::cross_check(platform, &discovered)?;
//! assert_eq!(platform.uart1.base, smmu::PhysAddr(0x0904_0000));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod cross_check;
pub mod discovery;
pub mod guest_devices;
pub mod guest_tree;
pub mod interrupt;
pub mod platform;
pub mod stream_ids;

pub use crate::cross_check::{
    Device, IdentifyError, Mismatch, Value, cross_check, for_each_mismatch, identify,
};
pub use crate::discovery::{
    BlobError, Discovered, DiscoveredGic, DiscoveredPcieHost, DiscoveredSmmu, DiscoveryError,
    NodeKind, blob_size, discover,
};
pub use crate::guest_tree::{
    GuestTreeEdits, GuestTreeError, IpaRange, SmmuInterruptName, VirtualSmmuNode, build_guest_tree,
};
pub use crate::interrupt::{Interrupt, InterruptKind, Trigger};
pub use crate::platform::{
    FVP_BASE_REVC, Gic, PLATFORMS, PcieHost, Platform, PsciConduit, QEMU_VIRT, Smmu,
    SmmuInterrupts, by_name,
};
pub use crate::stream_ids::{BusRange, IommuMapEntry, RequesterId, StreamIdError, StreamIdRange};

impl core::error::Error for DiscoveryError {}
impl core::error::Error for IdentifyError {}
impl core::error::Error for Mismatch {}
