//! What a platform provides for the suite to test its SMMU: the [`Harness`] trait.
//!
//! This module owns the trait and the small types of its signatures. It is the only thing a
//! new platform implements; everything else in the crate is written against it.
//!
//! # Implemented at EL2 over QEMU's `edu`
//!
//! `hyp/src/selftest/conformance.rs` (`El2Harness`, run by `hyp.selftest=conformance-suite`):
//!
//! - `Registers`, `Memory`, `Platform`: the hypervisor's own `SmmuRegisters`, `StaticDma`,
//!   `HypPlatform`; [`Harness::driver`] returns its reset, enabled `PhysicalSmmu`.
//! - `Tables`: its `PagePool` over a static frame array; [`Harness::domain_tables`] hands it
//!   over once.
//! - The test pages: a static, page-aligned array of 64 frames in the image's bss (identity
//!   mapped, so an address is a pointer), read and written with volatile 64-bit accesses;
//!   [`Harness::barrier`] is `DSB SY`.
//! - [`Harness::dma`]: `edu`'s DMA registers (source, destination, count, command) with the
//!   device buffer at 0x40000, polled to completion with a deadline. `edu` cannot say whether a
//!   transfer faulted, so [`DmaResult::faulted`] is `None`; QEMU translates every 4 bytes of a
//!   blocked transfer on its own, so [`Harness::transaction_bytes`] is 4. No substreams: a
//!   `ssid` is [`HarnessError::Unsupported`].
//! - [`Harness::stream`]: `edu`'s stream ID (8 on QEMU `virt`).
//! - [`Harness::device`]: no PASID, ATS or PRI; `keeps_stale_entries` (QEMU's configuration
//!   cache and IOTLB keep an entry until a CFGI or TLBI names it, the IOTLB being emptied whole
//!   only at 256 entries); not `invalidation_waits_for_sync` (QEMU performs each command when
//!   it consumes it).
//! - [`Harness::store_behind_driver`]: one volatile store into the test stream's own STE.
//! - The optional device operations (ATS, PRI) keep their defaults ([`Unsupported`]).
//! - [`Harness::note`]: `defmt::info!` of the message and values.

use aarch64_paging::descriptor::Stage2Attributes;
use aarch64_paging::paging::Translation;
use smmu::driver::{DmaMemory, Driver, Platform};
use smmu::hardware::RegisterAccess;
use smmu::{PhysAddr, StreamId, SubstreamId};

/// The fewest test pages a harness must provide.
pub const MIN_PAGES: usize = 48;

/// Which way a DMA transfer goes (as `edu` names them).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Direction {
    /// The device reads memory into its buffer (DMA reads).
    RamToDevice,
    /// The device writes its buffer to memory (DMA writes).
    DeviceToRam,
}

/// What a DMA transfer met, as far as the platform can tell.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct DmaResult {
    /// How many of its transactions were terminated (aborted, RAZ/WI or stalled), if the
    /// device can tell; `None` for a device that cannot (QEMU's `edu`).
    pub faulted: Option<u32>,
}

/// A device operation the platform does not have (no PASID, ATS or PRI at the device).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Unsupported;

/// Why a harness operation failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HarnessError {
    /// The operation is not available here.
    Unsupported,
    /// The device did not complete the operation (a DMA that timed out).
    DeviceFailed,
}

impl From<Unsupported> for HarnessError {
    fn from(_: Unsupported) -> Self {
        Self::Unsupported
    }
}

/// What the device (and platform) offer beyond plain DMA.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[allow(clippy::struct_excessive_bools)] // One per capability.
pub struct DeviceCapabilities {
    /// The device can tag DMA with a PASID (SubstreamID).
    pub pasid: bool,
    /// The device has ATS (translation requests, an ATC, translated traffic).
    pub ats: bool,
    /// The device has PRI (page request groups, stop markers).
    pub pri: bool,
    /// The SMMU keeps every configuration and TLB entry until it is invalidated (the reference
    /// model's documented choice). The architecture allows an SMMU to drop entries at any
    /// time, so where this is false the stale-entry cases only observe, they do not insist.
    pub keeps_stale_entries: bool,
    /// Invalidations take effect only when a later CMD_SYNC completes (the model's choice);
    /// where false, a missing CMD_SYNC is not observable.
    pub invalidation_waits_for_sync: bool,
}

/// One page of a page request group, as the device asks for it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct PageRequestSpec {
    /// The page's (untranslated) address.
    pub address: u64,
    /// Write access wanted (read always is).
    pub write: bool,
}

/// What an ATS Translation Request got back.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AtsResult {
    /// A Translation Completion: the page's translated address and what it allows (R = W = 0
    /// for a translation fault).
    Success {
        /// The translated page.
        pa: u64,
        /// Read allowed.
        read: bool,
        /// Write allowed.
        write: bool,
    },
    /// Unsupported Request (ATS not allowed for the stream).
    UnsupportedRequest,
    /// Completer Abort (a configuration error).
    CompleterAbort,
}

/// What the device did with a PRG response it received.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DeviceReaction {
    /// Success: it translated the group's pages again; `translated` of `pages` got a
    /// translation allowing what was asked.
    Retried {
        /// PRG index.
        prg_index: u16,
        /// Pages in the group.
        pages: u32,
        /// Pages whose retry succeeded.
        translated: u32,
    },
    /// Invalid Request: it gave up on the group.
    GaveUp {
        /// PRG index.
        prg_index: u16,
    },
    /// Response Failure: it stopped using PRI.
    PriStopped {
        /// PRG index.
        prg_index: u16,
    },
    /// The response matched no outstanding group.
    Unexpected {
        /// PRG index.
        prg_index: u16,
    },
}

/// An SMMU under test, its DMA master, and memory both can reach.
pub trait Harness {
    /// The driver's register access.
    type Registers: RegisterAccess;
    /// The driver's DMA memory.
    type Memory: DmaMemory;
    /// The driver's platform hooks.
    type Platform: Platform;
    /// A table allocator for a stage-2 domain.
    type Tables: Translation<Stage2Attributes>;

    /// The `smmu` driver of the SMMU under test, reset and enabled.
    fn driver(&mut self) -> &mut Driver<Self::Registers, Self::Memory, Self::Platform>;

    /// The DMA master's stream.
    fn stream(&self) -> StreamId;

    /// What the device offers.
    fn device(&self) -> DeviceCapabilities;

    /// How many test pages there are (at least [`MIN_PAGES`]).
    fn page_count(&self) -> usize;

    /// The physical address of test page `index`: 4 KiB of normal, coherent memory the SMMU
    /// and the device can reach, not used by anything else.
    fn page_address(&self, index: usize) -> PhysAddr;

    /// Reads word `word` (0..512) of test page `page`.
    fn read_word(&self, page: usize, word: usize) -> u64;

    /// Writes word `word` of test page `page` with one 64-bit store.
    fn write_word(&mut self, page: usize, word: usize, value: u64);

    /// Makes every store before it visible to the SMMU and the device, and their writes to
    /// every load after it.
    fn barrier(&self);

    /// A DMA transfer of `length` bytes (at most 4 KiB) between the device's buffer and `iova`,
    /// tagged with `ssid` if given; returns when the device says it is done.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Unsupported`] for a `ssid` on a device without PASID;
    /// [`HarnessError::DeviceFailed`] if the transfer did not complete.
    fn dma(
        &mut self,
        direction: Direction,
        iova: u64,
        length: u64,
        ssid: Option<SubstreamId>,
    ) -> Result<DmaResult, HarnessError>;

    /// The bytes one transaction of the device's DMA covers: a transfer of `n` bytes that the
    /// SMMU blocks gives `n / transaction_bytes` faults (each reported once if recorded).
    fn transaction_bytes(&self) -> u64;

    /// The table allocator for the stage-2 domain case, once; `None` if there is none (the
    /// case is then not applicable).
    fn domain_tables(&mut self) -> Option<Self::Tables>;

    /// A diagnostic: the harness logs it as it can.
    fn note(&mut self, message: &'static str, values: &[u64]);

    /// Stores `value` at `address` (8-byte aligned, in the driver's stream table) behind the
    /// driver's back, with no invalidation: for the case that shows a cached STE staying in
    /// use until invalidated. The driver itself offers no such store (a physical STE only
    /// changes through its installer).
    ///
    /// # Errors
    ///
    /// [`HarnessError::Unsupported`] where the harness cannot (the case is then not
    /// applicable).
    fn store_behind_driver(&mut self, address: PhysAddr, value: u64) -> Result<(), HarnessError>;

    /// An ATS Translation Request from the device for the page of `iova`.
    ///
    /// # Errors
    ///
    /// [`Unsupported`] without ATS at the device.
    fn ats_translate(
        &mut self,
        _ssid: Option<SubstreamId>,
        _iova: u64,
        _write: bool,
    ) -> Result<AtsResult, Unsupported> {
        Err(Unsupported)
    }

    /// A DMA write of `data` marked Translated, using the device's ATC for the page of `iova`.
    /// `Ok(None)` if the ATC has no entry allowing it (nothing is sent).
    ///
    /// # Errors
    ///
    /// [`Unsupported`] without ATS at the device.
    fn translated_write(
        &mut self,
        _ssid: Option<SubstreamId>,
        _iova: u64,
        _length: u64,
    ) -> Result<Option<DmaResult>, Unsupported> {
        Err(Unsupported)
    }

    /// How many entries the device's ATC holds.
    ///
    /// # Errors
    ///
    /// [`Unsupported`] without ATS at the device.
    fn atc_entries(&mut self) -> Result<usize, Unsupported> {
        Err(Unsupported)
    }

    /// Sends a page request group; returns its PRG index, or `None` if the device refused to
    /// (no credit, PRI stopped).
    ///
    /// # Errors
    ///
    /// [`Unsupported`] without PRI at the device.
    fn page_request_group(
        &mut self,
        _ssid: Option<SubstreamId>,
        _pages: &[PageRequestSpec],
    ) -> Result<Option<u16>, Unsupported> {
        Err(Unsupported)
    }

    /// Sends a stop marker for `ssid`.
    ///
    /// # Errors
    ///
    /// [`Unsupported`] without PRI and PASID at the device.
    fn stop_marker(&mut self, _ssid: SubstreamId) -> Result<(), Unsupported> {
        Err(Unsupported)
    }

    /// Lets the device act on the PRG responses it has received, reporting each reaction.
    ///
    /// # Errors
    ///
    /// [`Unsupported`] without PRI at the device.
    fn handle_responses(
        &mut self,
        _report: &mut dyn FnMut(DeviceReaction),
    ) -> Result<(), Unsupported> {
        Err(Unsupported)
    }

    /// Resets the device's PRI (PCIe PRI Control: Enable cleared, Reset, Enable set): a
    /// device stopped by a Response Failure uses PRI again, with no group outstanding.
    ///
    /// # Errors
    ///
    /// [`Unsupported`] without PRI at the device.
    fn reset_pri(&mut self) -> Result<(), Unsupported> {
        Err(Unsupported)
    }

    /// Makes the device ignore its PRI credits (a non-compliant device), or respect them again.
    ///
    /// # Errors
    ///
    /// [`Unsupported`] without PRI at the device, or a device that cannot misbehave.
    fn ignore_pri_credits(&mut self, _ignore: bool) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
}
