//! What `hyp` decides for a vSMMU at construction, and what it must do in return: the streams
//! the VM owns, the shadow CD window it must map, the register window and interrupts its device
//! tree must describe.
//!
//! # The shadow CD window
//!
//! In nested translation the physical SMMU fetches CDs through the VM's stage 2: an STE's
//! S1ContextPtr is an IPA. The vSMMU's CDs live in hypervisor memory (a [`DmaMemory`] region
//! `hyp` gives it), and `hyp` maps that region, **read-only**, at
//! [`VsmmuConfig::cd_window_base`] in the VM's **SMMU** stage 2 only: not in its CPU stage 2,
//! so the guest's CPUs cannot see it, and not writable, so no device can change a CD. The
//! window must lie outside the VM's RAM (the constructor refuses an overlap) and below its IPA
//! size. Its size is the region's; [`VirtualSmmu::cd_window`](crate::VirtualSmmu::cd_window)
//! says exactly what to map.
//!
//! Each stream the VM owns has a slot of `2^k` CDs there (a linear CD table: the shadow
//! flattens a guest's two-level CD table), `k` as large as the region allows for the number of
//! streams, at most [`MAX_SHADOW_CDS_PER_STREAM`]. A device of the VM can read the window
//! through stage 1 if the guest maps it: it holds only CDs built from this VM's own CDs.
//!
//! # The device tree
//!
//! An `arm,smmu-v3` node at the IPA where `hyp` traps [`REGISTER_WINDOW_SIZE`] bytes, with
//! `#iommu-cells = <1>`, `dma-coherent` (Linux uses MSI polling for CMD_SYNC only when the
//! firmware says the SMMU is coherent), the interrupts of
//! [`VirtualInterrupt::ALL`](crate::VirtualInterrupt::ALL) as edge-triggered SPIs named by
//! [`VirtualInterrupt::device_tree_name`](crate::VirtualInterrupt::device_tree_name), no
//! `msi-parent` (wired interrupts), and an `iommu-map` on the PCIe host bridge that sends each
//! requester ID to its virtual stream ID.

use smmu::driver::DmaMemory;
use smmu::entry::make::Stage2Translation;
use smmu::{Ipa, IpaRange, StreamId, VirtualStreamId};

/// The size of the vSMMU's MMIO window: register pages 0 and 1.
pub const REGISTER_WINDOW_SIZE: u64 = 0x2_0000;

/// The most CDs the shadow holds for one stream: substream IDs of up to 6 bits. The per-stream
/// state keeps one bit per CD in a `u64`.
pub const MAX_SHADOW_CDS_PER_STREAM: u64 = 64;

/// Bytes per CD.
pub const CD_BYTES: u64 = 64;

/// The default work budget of one trap (see [`VsmmuConfig::work_budget`]).
pub const DEFAULT_WORK_BUDGET: u32 = 256;

/// One stream the VM owns: what the guest calls it, and what the SMMU calls it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct StreamAssignment {
    /// The guest's stream ID (its device tree's `iommu-map` output).
    pub virtual_sid: VirtualStreamId,
    /// The physical stream ID. No two VMs may be given the same one.
    pub physical_sid: StreamId,
}

/// How a vSMMU is built.
#[derive(Clone, Copy, Debug)]
pub struct VsmmuConfig<'a> {
    /// The VM's SMMU stage 2 (its `smmu::domain`'s parameters, validated against the physical
    /// SMMU): its VMID and root are forced into every STE that lets traffic through.
    pub stage2: Stage2Translation,
    /// The streams the VM owns. At most the vSMMU's `STREAMS` parameter.
    pub streams: &'a [StreamAssignment],
    /// IDR1.SIDSIZE of the vSMMU: every virtual stream ID must be below 2^this.
    pub sid_bits: u8,
    /// Where the shadow CD window starts in the VM's IPA space (see the module docs).
    pub cd_window_base: Ipa,
    /// Work units one trap may spend (a command or a structure read costs 1, a physical
    /// CMD_SYNC [`crate::budget::SYNC_COST`]); what is left continues on the next trap.
    pub work_budget: u32,
    /// Forward ATS (IDR0.ATS, STE.EATS, CMD_ATC_INV) if the physical SMMU has it.
    pub forward_ats: bool,
    /// GBPA.ABORT at reset: whether the VM's streams abort (rather than translate through stage
    /// 2 alone) until the guest's driver enables its vSMMU.
    pub abort_until_enabled: bool,
}

/// Why a vSMMU could not be built.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ConfigError {
    /// The physical SMMU cannot nest (IDR0.S1P and S2P), or cannot walk AArch64 tables.
    PhysicalCannotNest,
    /// More streams than the vSMMU's `STREAMS` capacity.
    TooManyStreams {
        /// Streams given.
        given: usize,
        /// Capacity.
        capacity: usize,
    },
    /// No stream was given (the vSMMU would have nothing to translate).
    NoStreams,
    /// `sid_bits` is above 32.
    SidBitsTooLarge(u8),
    /// A virtual stream ID is not below 2^`sid_bits`.
    VirtualStreamOutOfRange(VirtualStreamId),
    /// A physical stream ID is beyond the physical SMMU's SIDSIZE.
    PhysicalStreamOutOfRange(StreamId),
    /// Two assignments name the same virtual stream.
    DuplicateVirtualStream(VirtualStreamId),
    /// Two assignments name the same physical stream.
    DuplicatePhysicalStream(StreamId),
    /// The shadow CD memory is not page-aligned, not a whole number of pages, or too small
    /// for one CD per stream.
    ShadowMemory,
    /// The CD window is not aligned to its size, overlaps the VM's RAM, or lies beyond the
    /// VM's IPA size.
    CdWindow(IpaRange),
    /// A zero work budget.
    ZeroBudget,
    /// The initial (GBPA) STEs could not be installed.
    InitialInstall,
}

/// Where each stream's shadow CDs are: in the window and in the shadow memory.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct CdLayout {
    /// The window in the VM's IPA space.
    pub(crate) window: IpaRange,
    /// log2 of the CDs per stream slot.
    pub(crate) cds_log2: u8,
}

/// Page size of the stage-2 mapping of the window.
const PAGE: u64 = 4096;

impl CdLayout {
    /// The layout for `streams` streams in `memory`, at `base`.
    pub(crate) fn new(
        memory: &impl DmaMemory,
        base: Ipa,
        streams: usize,
        ssid_bits: u8,
    ) -> Result<Self, ConfigError> {
        let size = u64::try_from(memory.size()).map_err(|_| ConfigError::ShadowMemory)?;
        if !memory.phys().is_aligned(PAGE) || size == 0 || size % PAGE != 0 {
            return Err(ConfigError::ShadowMemory);
        }
        let streams = u64::try_from(streams.max(1)).map_err(|_| ConfigError::ShadowMemory)?;
        let per_stream = size / CD_BYTES / streams;
        if per_stream == 0 {
            return Err(ConfigError::ShadowMemory);
        }
        let fit = per_stream.min(MAX_SHADOW_CDS_PER_STREAM).ilog2();
        let cds_log2 = u8::try_from(fit).unwrap_or(0).min(ssid_bits);
        let window = IpaRange::new(base, size);
        // Every slot must be aligned to its own size (a linear CD table is), and the window to
        // a page; slots start at multiples of their size from the base.
        let slot_bytes = CD_BYTES << cds_log2;
        if !base.is_aligned(PAGE.max(slot_bytes)) || window.checked_end().is_none() {
            return Err(ConfigError::CdWindow(window));
        }
        Ok(Self { window, cds_log2 })
    }

    /// Bytes of one stream's slot.
    pub(crate) fn slot_bytes(&self) -> u64 {
        CD_BYTES << self.cds_log2
    }

    /// The byte offset in the shadow memory of `slot`'s CD `ssid`.
    pub(crate) fn offset(&self, slot: usize, ssid: u32) -> Option<usize> {
        let slot = u64::try_from(slot).ok()?;
        let offset = slot
            .checked_mul(self.slot_bytes())?
            .checked_add(u64::from(ssid).checked_mul(CD_BYTES)?)?;
        if u64::from(ssid) >= 1 << self.cds_log2 || offset.checked_add(CD_BYTES)? > self.window.size
        {
            return None;
        }
        usize::try_from(offset).ok()
    }

    /// The IPA of `slot`'s CD table (its S1ContextPtr).
    pub(crate) fn table_ipa(&self, slot: usize) -> Option<Ipa> {
        let offset = u64::try_from(self.offset(slot, 0)?).ok()?;
        self.window.base.checked_add(offset)
    }
}
