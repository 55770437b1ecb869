//! Stage-2 domains for the SMMU: one VMID's stage-2 table, the DMA pins on the pages it maps,
//! and the unmap lifecycle that releases a page only once the SMMU has provably let go.
//!
//! This module owns [`Stage2Domain`] (a table built with `aarch64-paging`'s `Stage2` regime
//! from tables the caller's allocator provides), its geometry, the stage-2 STE parameters it
//! implies ([`Stage2Domain::stage2_parameters`]), and [`PendingUnmap`]. It may not touch
//! STEs, the stream table or the command queue directly: an STE for a domain is made only by
//! [`crate::entry::make`] (`Stage2Translation::new(domain.stage2_parameters(), features)`,
//! then `make_stage2_ste` or `make_nested_ste`), and invalidation goes through
//! [`Stage2Invalidation`] ([`invalidate`]), pin counts live in a caller's [`PinTable`]
//! ([`pins`]).
//!
//! # Lifecycle of a page (per mapping)
//!
//! ```text
//!            map (pins the page)
//!   Free ───────────────────────────────▶ Mapped ──── owner's release/reassign ──▶ Busy
//!    ▲                                      │
//!    │                                      │ unmap: descriptor invalid, still pinned,
//!    │                                      ▼        IPA reserved; returns PendingUnmap
//!    │                                   Unmapped ── owner's release/reassign ──▶ Busy
//!    │                                      │
//!    │                                      │ pending.invalidate(smmu): TLBI_S2_IPA (range
//!    │                                      ▼ form with RIL) or TLBI_S12_VMALL submitted
//!    │                                  Invalidating ── owner's release/reassign ──▶ Busy
//!    │                                      │
//!    │  complete(pending, proof):           │ smmu.sync_with_proof()
//!    └──────────────────────────────────────┘ proof later than the invalidation,
//!       page unpinned, IPA free again          same SMMU, no command failure since
//! ```
//!
//! A stale proof (a sync submitted before the invalidation), a proof of another SMMU, or a
//! pending that was never invalidated is refused and the pending handed back. Dropping a
//! [`PendingUnmap`] leaves its pages pinned and its IPAs reserved forever: a leak, the safe
//! direction. There is no other way to drop a pin.
//!
//! # Why "unpin before the SMMU let go" cannot be written
//!
//! - Pins are dropped only in [`Stage2Domain::complete`], which takes a [`SyncProof`].
//! - A [`SyncProof`] is built only by [`Stage2Invalidation::sync_with_proof`] after a
//!   CMD_SYNC completed, and an [`Invalidated`] only after invalidation commands were
//!   submitted; the trait is sealed and both types have private fields ([`invalidate`]).
//! - `complete` compares sequence numbers: the invalidation after the unmap (checked when it
//!   is recorded), the sync after the invalidation, no reported command failure in between.
//!
//! # Decisions
//!
//! - **Pages only.** Every mapping is 4 KiB pages (`Constraints::NO_BLOCK_MAPPINGS`): any
//!   subrange can be unmapped without splitting a live block (break-before-make on a table
//!   the SMMU walks), pins are per page, and every leaf is level 3 (TTL = 3).
//! - **Tables are never freed while the domain lives.** Unmap rewrites leaf descriptors only
//!   (`modify_range`), never `map_range` with an invalid descriptor, which frees subtables at
//!   once: the SMMU's walk caches may still hold them. Dropping a domain leaks its tables
//!   (and its allocator); freeing them needs proof that no STE names the table any more,
//!   which belongs with the STE installer.
//! - **Unmap of something not mapped is an error** ([`DomainError::NotMapped`]), as is any
//!   partial overlap, and nothing changes: a caller that unmaps what it never mapped has lost
//!   track, and silently succeeding would hide it.
//! - **The table is never marked live** (`Mapping::mark_active`), so `aarch64-paging` issues
//!   no CPU TLB maintenance; the SMMU's is this module's job. Map only fills empty
//!   descriptors (no TLB caches a translation fault, so nothing to invalidate); unmap is
//!   followed by SMMU commands.
//! - **Bounded.** Every operation names at most `max_pages_per_call` pages
//!   ([`DomainError::TooLarge`] otherwise), and every loop (the table walks, the pin passes,
//!   the invalidation commands) runs at most a small constant times over those pages.
//!
//! Visibility: descriptor stores are ordered before the SMMU sees an invalidation by the
//! DMA barrier the driver issues before each CMDQ_PROD write. A new mapping is visible to the
//! SMMU after the next such barrier; the tables are assumed to be walked coherently (STE
//! S2IR0/S2OR0 write-back, IDR0.COHACC).

pub mod invalidate;
pub mod pins;

#[cfg(test)]
mod tests;

use core::fmt;
use core::mem::ManuallyDrop;

use aarch64_paging::Mapping;
use aarch64_paging::descriptor::{PhysicalAddress, Stage2Attributes};
use aarch64_paging::paging::{Constraints, MemoryRegion, Stage2, Translation};

use crate::entry::make::{Stage2Parameters, StartLevel};
use crate::ids::{Ipa, PhysAddr, Vmid};
use crate::registers::Features;
use crate::translation::{AddressSize, Cacheability, Granule, Shareability};

pub use invalidate::{
    Invalidated, InvalidationError, InvalidatorId, PER_PAGE_LIMIT, Sequence, Stage2Invalidation,
    Stage2Use, SyncProof,
};
pub use pins::{MAX_PINS, PAGE_SIZE, PageState, PinError, PinTable};

use invalidate::next_sequence;

/// The leaf level of a 4 KiB-granule table.
const LEAF_LEVEL: usize = 3;

/// Software marker of an unmapped page awaiting invalidation: VALID clear (the SMMU ignores
/// every other bit), the output address kept so completion knows which page to unpin.
const UNMAP_PENDING: Stage2Attributes = Stage2Attributes::SWFLAG_0;

/// Why a geometry was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum GeometryError {
    /// The IPA size is outside 25..=48 bits (S2T0SZ 16..=39 with a 4 KiB granule; 52-bit
    /// IPAs need LPA2 tables, which `aarch64-paging` does not build).
    IpaBitsOutOfRange(u8),
    /// With one root table (no concatenation), a walk starting at this level resolves a
    /// different number of IPA bits: level 0 takes 40..=48, level 1 31..=39, level 2
    /// 25..=30. Level 3 starts are not supported (S2SL0 reserved).
    StartLevelMismatch {
        /// The IPA size.
        ipa_bits: u8,
        /// The start level asked for.
        start_level: u8,
    },
    /// The SMMU has no stage 2 (IDR0.S2P).
    NoStage2,
    /// The SMMU has no 4 KiB granule (IDR5.GRAN4K).
    No4KGranule,
    /// The IPA size exceeds the SMMU's output address size (IDR5.OAS), which bounds stage-2
    /// input.
    IpaBeyondOas {
        /// The IPA size.
        ipa_bits: u8,
        /// IDR5.OAS in bits.
        oas_bits: u8,
    },
    /// S2PS exceeds the SMMU's output address size.
    OutputBeyondOas {
        /// The asked S2PS in bits.
        output_bits: u8,
        /// IDR5.OAS in bits.
        oas_bits: u8,
    },
}

/// The shape of a stage-2 table: 4 KiB granule, one root table.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Stage2Geometry {
    ipa_bits: u8,
    start_level: u8,
    output_size: AddressSize,
}

impl Stage2Geometry {
    /// QEMU `virt`: 44-bit IPA from level 0 (S2T0SZ 20, S2SL0 2), 44-bit output, as the
    /// hypervisor's own stage 2 (`hyp::stage2`).
    pub const QEMU_VIRT: Self = Self {
        ipa_bits: 44,
        start_level: 0,
        output_size: AddressSize::Bits44,
    };

    /// A geometry of `ipa_bits` of IPA walked from `start_level`, with output size
    /// `output_size` (STE.S2PS).
    ///
    /// # Errors
    ///
    /// [`GeometryError::IpaBitsOutOfRange`] or [`GeometryError::StartLevelMismatch`].
    pub const fn new(
        ipa_bits: u8,
        start_level: u8,
        output_size: AddressSize,
    ) -> Result<Self, GeometryError> {
        if ipa_bits < 25 || ipa_bits > 48 {
            return Err(GeometryError::IpaBitsOutOfRange(ipa_bits));
        }
        let (low, high) = match start_level {
            0 => (40, 48),
            1 => (31, 39),
            2 => (25, 30),
            _ => (1, 0),
        };
        if ipa_bits < low || ipa_bits > high {
            return Err(GeometryError::StartLevelMismatch {
                ipa_bits,
                start_level,
            });
        }
        Ok(Self {
            ipa_bits,
            start_level,
            output_size,
        })
    }

    /// The geometry for `ipa_bits` with the one start level that suits it.
    ///
    /// # Errors
    ///
    /// [`GeometryError::IpaBitsOutOfRange`].
    pub const fn for_ipa_bits(
        ipa_bits: u8,
        output_size: AddressSize,
    ) -> Result<Self, GeometryError> {
        let start_level = if ipa_bits > 39 {
            0
        } else if ipa_bits > 30 {
            1
        } else {
            2
        };
        Self::new(ipa_bits, start_level, output_size)
    }

    /// The IPA size in bits.
    #[must_use]
    pub const fn ipa_bits(&self) -> u8 {
        self.ipa_bits
    }

    /// The level walks start at.
    #[must_use]
    pub const fn start_level(&self) -> u8 {
        self.start_level
    }

    /// STE.S2PS.
    #[must_use]
    pub const fn output_size(&self) -> AddressSize {
        self.output_size
    }

    /// STE.S2T0SZ: 64 minus the IPA size.
    #[must_use]
    pub const fn t0sz(&self) -> u8 {
        64 - self.ipa_bits
    }

    /// STE.S2SL0: the level walks start at (the maker encodes it for the 4 KiB granule).
    #[must_use]
    pub const fn s2sl0(&self) -> StartLevel {
        match self.start_level {
            0 => StartLevel::Level0,
            1 => StartLevel::Level1,
            // `new` accepts only 0, 1 and 2.
            _ => StartLevel::Level2,
        }
    }

    /// One past the highest IPA.
    #[must_use]
    pub const fn ipa_limit(&self) -> u64 {
        1 << self.ipa_bits
    }

    /// One past the highest output address.
    #[must_use]
    pub const fn output_limit(&self) -> u64 {
        1 << self.output_size.bits()
    }

    /// Checks the geometry against what the SMMU can do.
    ///
    /// # Errors
    ///
    /// The [`GeometryError`] of the first mismatch.
    pub const fn check(&self, features: &Features) -> Result<(), GeometryError> {
        let oas_bits = features.oas.bits();
        if !features.s2p {
            Err(GeometryError::NoStage2)
        } else if !features.gran4k {
            Err(GeometryError::No4KGranule)
        } else if self.ipa_bits > oas_bits {
            Err(GeometryError::IpaBeyondOas {
                ipa_bits: self.ipa_bits,
                oas_bits,
            })
        } else if self.output_size.bits() > oas_bits {
            Err(GeometryError::OutputBeyondOas {
                output_bits: self.output_size.bits(),
                oas_bits,
            })
        } else {
            Ok(())
        }
    }
}

/// Attributes of the SMMU's stage-2 table walks (STE.S2IR0, S2OR0, S2SH0).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct WalkAttributes {
    /// S2IR0.
    pub inner: Cacheability,
    /// S2OR0.
    pub outer: Cacheability,
    /// S2SH0.
    pub shareability: Shareability,
}

impl WalkAttributes {
    /// Write-back write-allocate, inner shareable: a coherent SMMU (IDR0.COHACC) walking
    /// tables the CPU writes through its caches.
    pub const COHERENT: Self = Self {
        inner: Cacheability::WriteBackWriteAllocate,
        outer: Cacheability::WriteBackWriteAllocate,
        shareability: Shareability::InnerShareable,
    };
}

/// How a domain is built.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DomainConfig {
    /// The VMID tagging this domain's TLB entries.
    pub vmid: Vmid,
    /// The table's shape.
    pub geometry: Stage2Geometry,
    /// How the SMMU walks it.
    pub walk: WalkAttributes,
    /// Whether nested STEs use it (decides what an invalidation must also remove, and
    /// STE.S2PTW).
    pub usage: Stage2Use,
    /// STE.S2R: record the stage-2 faults of streams translated by the domain as events.
    pub record_faults: bool,
    /// The most pages one map or unmap may name. Boot code mapping a VM's RAM calls in chunks
    /// of this size; hypercall paths pass guest-chosen sizes through it.
    pub max_pages_per_call: u64,
}

/// A default budget: 2 MiB of 4 KiB pages per call.
pub const DEFAULT_MAX_PAGES_PER_CALL: u64 = 512;

/// What a device may do with a mapped page.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Access {
    /// Reads only (S2AP 01).
    ReadOnly,
    /// Writes only (S2AP 10): an MSI doorbell.
    WriteOnly,
    /// Reads and writes (S2AP 11).
    ReadWrite,
}

/// The memory type of a mapped page.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MemoryType {
    /// Normal, inner and outer write-back, inner shareable: RAM.
    Normal,
    /// Device-nGnRE: an MMIO page such as an MSI doorbell.
    Device,
}

/// The permissions and type of a mapping. Devices never execute: XN is always set.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Permissions {
    /// Read, write or both.
    pub access: Access,
    /// Memory type.
    pub memory: MemoryType,
}

impl Permissions {
    /// RAM a device reads and writes.
    pub const RAM: Self = Self {
        access: Access::ReadWrite,
        memory: MemoryType::Normal,
    };
    /// An MSI doorbell.
    pub const DOORBELL: Self = Self {
        access: Access::WriteOnly,
        memory: MemoryType::Device,
    };

    /// The leaf descriptor attributes (without TABLE_OR_PAGE, which `aarch64-paging` adds).
    #[must_use]
    pub fn attributes(self) -> Stage2Attributes {
        let access = match self.access {
            Access::ReadOnly => Stage2Attributes::S2AP_ACCESS_RO,
            Access::WriteOnly => Stage2Attributes::S2AP_ACCESS_WO,
            Access::ReadWrite => Stage2Attributes::S2AP_ACCESS_RW,
        };
        let memory = match self.memory {
            MemoryType::Normal => {
                Stage2Attributes::MEMATTR_NORMAL_INNER_WB
                    | Stage2Attributes::MEMATTR_NORMAL_OUTER_WB
                    | Stage2Attributes::SH_INNER
            }
            MemoryType::Device => Stage2Attributes::MEMATTR_DEVICE_nGnRE,
        };
        Stage2Attributes::VALID
            | Stage2Attributes::ACCESS_FLAG
            | Stage2Attributes::XN
            | access
            | memory
    }
}

/// Why a domain operation was refused. Every refusal leaves the table and the pins as they
/// were.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DomainError {
    /// The budget is zero.
    ZeroBudget,
    /// The size is zero.
    EmptyRange,
    /// The IPA is not 4 KiB-aligned.
    MisalignedIpa(Ipa),
    /// The physical address is not 4 KiB-aligned.
    MisalignedPhysical(PhysAddr),
    /// The size is not a multiple of 4 KiB.
    MisalignedSize(u64),
    /// The end of the IPA or physical range does not fit in 64 bits (or in `usize`).
    AddressOverflow,
    /// The range names more pages than one call may touch.
    TooLarge {
        /// Pages named.
        pages: u64,
        /// The domain's budget.
        budget: u64,
    },
    /// The IPA range ends beyond the domain's IPA size.
    BeyondIpaSize {
        /// One past the last IPA asked for.
        end: u64,
    },
    /// The physical range ends beyond the domain's output size (S2PS).
    BeyondOutputSize {
        /// One past the last physical address asked for.
        end: u64,
    },
    /// Map: a page of the IPA range is already mapped, or unmapped and awaiting completion.
    Overlap {
        /// The first such page.
        ipa: Ipa,
    },
    /// Unmap: a page of the range is not mapped.
    NotMapped {
        /// The first such page.
        ipa: Ipa,
    },
    /// Unmap: a page of the range is already unmapped and awaiting completion.
    UnmapInProgress {
        /// The first such page.
        ipa: Ipa,
    },
    /// Map: the pages could not be pinned (outside the table, released, count at its limit).
    Pin(PinError),
    /// `aarch64-paging` refused a range this module had checked: a bug, reported rather than
    /// hidden.
    Table,
}

impl From<PinError> for DomainError {
    fn from(error: PinError) -> Self {
        Self::Pin(error)
    }
}

/// Why a [`PendingUnmap`] cannot record an invalidation or be completed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CompletionError {
    /// The pending belongs to another domain.
    WrongDomain,
    /// No invalidation has been recorded for it.
    NotInvalidated,
    /// The invalidation is for another VMID, does not cover the range, or lacks the
    /// stage-1 (combined-entry) invalidation a nesting parent needs.
    InvalidationDoesNotCover,
    /// The invalidation began before the unmap ended, so it cannot be relied on to have
    /// removed what the unmap left cached.
    InvalidationBeforeUnmap,
    /// The proof is from another SMMU than the invalidation.
    WrongSmmu,
    /// The proof's sync was submitted before the invalidation.
    StaleProof {
        /// The proof's sequence.
        proof: Sequence,
        /// The invalidation's sequence, which the proof must exceed.
        invalidated: Sequence,
    },
    /// A command failure was reported since the invalidation: its commands may have been
    /// dropped. Invalidate again, sync, and complete.
    InvalidationMayBeLost,
    /// A page of the pending lies outside the pin table given.
    WrongPinTable {
        /// The first such page.
        page: PhysAddr,
    },
}

/// An unmapping whose pages are still pinned: the descriptors are invalid but the SMMU may
/// still hold cached translations. Only [`Stage2Domain::complete`] with a [`SyncProof`]
/// turns it into unpinned pages. Dropping it leaks the pins (safe, permanent).
#[must_use = "dropping a PendingUnmap leaves its pages pinned forever; invalidate, sync, complete"]
#[derive(Debug)]
pub struct PendingUnmap {
    domain: PhysAddr,
    vmid: Vmid,
    ipa: Ipa,
    pages: u64,
    usage: Stage2Use,
    unmapped_at: Sequence,
    invalidated: Option<Invalidated>,
}

impl PendingUnmap {
    /// The first IPA unmapped.
    #[must_use]
    pub fn ipa(&self) -> Ipa {
        self.ipa
    }

    /// How many pages.
    #[must_use]
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// When the descriptors were cleared.
    #[must_use]
    pub fn unmapped_at(&self) -> Sequence {
        self.unmapped_at
    }

    /// The invalidation recorded, if any.
    #[must_use]
    pub fn invalidation(&self) -> Option<Invalidated> {
        self.invalidated
    }

    fn end(&self) -> u64 {
        self.ipa
            .0
            .saturating_add(self.pages.saturating_mul(PAGE_SIZE))
    }

    /// Submits the invalidation of this unmapping to `smmu` and records it.
    ///
    /// # Errors
    ///
    /// The SMMU's error; nothing is recorded, and the call may be repeated.
    pub fn invalidate<I: Stage2Invalidation>(&mut self, smmu: &mut I) -> Result<(), I::Error> {
        let size = self.pages.saturating_mul(PAGE_SIZE);
        let invalidated = smmu.invalidate_ipa_range(self.vmid, self.ipa, size, true, self.usage)?;
        // Covers the range and comes after the unmap by construction; if it somehow did not,
        // nothing is recorded and completion is refused with `NotInvalidated`.
        let _ = self.record(&invalidated);
        Ok(())
    }

    /// Records an invalidation submitted separately (for example one `TLBI_S12_VMALL` for
    /// many pendings), replacing any earlier record.
    ///
    /// # Errors
    ///
    /// [`CompletionError::InvalidationDoesNotCover`] or
    /// [`CompletionError::InvalidationBeforeUnmap`]; nothing is recorded.
    pub fn record(&mut self, invalidated: &Invalidated) -> Result<(), CompletionError> {
        let need_stage1 = self.usage == Stage2Use::NestingParent;
        if !invalidated.covers(self.vmid, self.ipa.0, self.end(), need_stage1) {
            return Err(CompletionError::InvalidationDoesNotCover);
        }
        // Numbered before its commands were submitted: they follow the descriptor writes.
        if invalidated.begun() <= self.unmapped_at {
            return Err(CompletionError::InvalidationBeforeUnmap);
        }
        self.invalidated = Some(*invalidated);
        Ok(())
    }
}

/// A completion refused: why, and the pending, handed back.
#[must_use = "the pending inside must be completed later, or its pages stay pinned"]
#[derive(Debug)]
pub struct Refused {
    /// Why.
    pub reason: CompletionError,
    /// The pending, unchanged.
    pub pending: PendingUnmap,
}

/// What a completion released.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Unpinned {
    /// The first IPA, free again.
    pub ipa: Ipa,
    /// How many pages were unpinned.
    pub pages: u64,
}

/// A checked IPA range.
#[derive(Clone, Copy)]
struct IpaRange {
    start: usize,
    end: usize,
    pages: u64,
}

impl IpaRange {
    fn region(self) -> MemoryRegion {
        MemoryRegion::new(self.start, self.end)
    }
}

/// One VMID's stage-2 table for the SMMU, over tables from `T`.
pub struct Stage2Domain<T: Translation<Stage2Attributes>> {
    /// Never dropped: freeing tables needs proof that no STE still names them (see the
    /// module docs).
    mapping: ManuallyDrop<Mapping<T, Stage2>>,
    config: DomainConfig,
    root: PhysAddr,
    mapped_pages: u64,
    pending_pages: u64,
}

impl<T: Translation<Stage2Attributes>> fmt::Debug for Stage2Domain<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stage2Domain")
            .field("config", &self.config)
            .field("root", &self.root)
            .field("mapped_pages", &self.mapped_pages)
            .field("pending_pages", &self.pending_pages)
            .finish_non_exhaustive()
    }
}

impl<T: Translation<Stage2Attributes>> Stage2Domain<T> {
    /// An empty domain: allocates the root table from `tables` (which cannot fail; a fixed
    /// pool that runs dry is a sizing bug of the caller's).
    ///
    /// # Errors
    ///
    /// [`DomainError::ZeroBudget`] for a zero budget, [`DomainError::AddressOverflow`] if the
    /// root table's address does not fit in 64 bits.
    pub fn new(tables: T, config: DomainConfig) -> Result<Self, DomainError> {
        if config.max_pages_per_call == 0 {
            return Err(DomainError::ZeroBudget);
        }
        let mapping = Mapping::new(tables, usize::from(config.geometry.start_level()), Stage2);
        let root = PhysAddr(
            u64::try_from(mapping.root_address().0).map_err(|_| DomainError::AddressOverflow)?,
        );
        Ok(Self {
            mapping: ManuallyDrop::new(mapping),
            config,
            root,
            mapped_pages: 0,
            pending_pages: 0,
        })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &DomainConfig {
        &self.config
    }

    /// The VMID.
    #[must_use]
    pub fn vmid(&self) -> Vmid {
        self.config.vmid
    }

    /// The root table's physical address (STE.S2TTB).
    #[must_use]
    pub fn root(&self) -> PhysAddr {
        self.root
    }

    /// Pages mapped now.
    #[must_use]
    pub fn mapped_pages(&self) -> u64 {
        self.mapped_pages
    }

    /// Pages unmapped and not yet completed.
    #[must_use]
    pub fn pending_pages(&self) -> u64 {
        self.pending_pages
    }

    /// The table, for walks (diagnostics, tests).
    #[must_use]
    pub fn mapping(&self) -> &Mapping<T, Stage2> {
        &self.mapping
    }

    /// The stage-2 half of an STE for streams translated by this domain, for
    /// [`Stage2Translation::new`](crate::entry::make::Stage2Translation::new) and the STE
    /// makers in [`crate::entry::make`] (which set S2AA64 and validate against the SMMU).
    ///
    /// S2AFFD is clear: every leaf is made with AF set, so no access-flag fault can arise.
    /// S2PTW, which matters only under a stage 1, is set for a nesting parent: a guest's
    /// stage-1 walk that stage 2 sends to Device memory faults rather than reading a device
    /// register as a table.
    #[must_use]
    pub fn stage2_parameters(&self) -> Stage2Parameters {
        let geometry = self.config.geometry;
        let walk = self.config.walk;
        Stage2Parameters {
            vmid: self.config.vmid,
            s2ttb: self.root,
            s2t0sz: geometry.t0sz(),
            s2sl0: geometry.s2sl0(),
            s2tg: Granule::Size4K,
            s2ps: geometry.output_size(),
            s2ir0: walk.inner,
            s2or0: walk.outer,
            s2sh0: walk.shareability,
            s2r: self.config.record_faults,
            s2affd: false,
            s2ptw: self.config.usage == Stage2Use::NestingParent,
        }
    }

    /// The physical address and attributes `ipa` translates to, if mapped.
    #[must_use]
    pub fn translate(&self, ipa: Ipa) -> Option<(PhysAddr, Stage2Attributes)> {
        let start = usize::try_from(ipa.0 & !(PAGE_SIZE - 1)).ok()?;
        if ipa.0 >= self.config.geometry.ipa_limit() {
            return None;
        }
        let mut found = None;
        let region = MemoryRegion::new(start, start.checked_add(1)?);
        self.mapping
            .walk_range(&region, &mut |_, descriptor, level| {
                if level == LEAF_LEVEL && descriptor.is_valid() {
                    let pa = u64::try_from(descriptor.output_address().0).unwrap_or(u64::MAX);
                    let offset = ipa.0 & (PAGE_SIZE - 1);
                    found = Some((
                        PhysAddr(pa | offset),
                        descriptor.flags() & !Stage2Attributes::TABLE_OR_PAGE,
                    ));
                }
                Ok(())
            })
            .ok()?;
        found
    }

    /// Maps `size` bytes from `ipa` to `pa` for DMA, pinning every page in `pins`.
    ///
    /// Checks, in order: size, alignment, budget, overflow, IPA and output sizes, that no page
    /// of the IPA range is mapped or awaiting completion, then pins (all or none), then writes
    /// the table. If the table write fails the pins are dropped again: on any error nothing
    /// has changed.
    ///
    /// # Errors
    ///
    /// The first [`DomainError`] met.
    pub fn map(
        &mut self,
        pins: &mut PinTable<'_>,
        ipa: Ipa,
        pa: PhysAddr,
        size: u64,
        permissions: Permissions,
    ) -> Result<(), DomainError> {
        let range = self.check_ipa_range(ipa, size)?;
        if !pa.is_aligned(PAGE_SIZE) {
            return Err(DomainError::MisalignedPhysical(pa));
        }
        let pa_end = pa.0.checked_add(size).ok_or(DomainError::AddressOverflow)?;
        if pa_end > self.config.geometry.output_limit() {
            return Err(DomainError::BeyondOutputSize { end: pa_end });
        }
        let output =
            PhysicalAddress(usize::try_from(pa.0).map_err(|_| DomainError::AddressOverflow)?);
        self.first_occupied(range)?;
        pins.pin(pa, range.pages)?;
        let mapped = self.mapping.map_range(
            &range.region(),
            output,
            permissions.attributes(),
            Constraints::NO_BLOCK_MAPPINGS,
        );
        if mapped.is_err() {
            // `map_range` checks before it writes, so the table is unchanged: undo the pins.
            for page in 0..range.pages {
                pins.unpin(PhysAddr(
                    pa.0.saturating_add(page.saturating_mul(PAGE_SIZE)),
                ));
            }
            return Err(DomainError::Table);
        }
        self.mapped_pages = self.mapped_pages.saturating_add(range.pages);
        Ok(())
    }

    /// Unmaps `size` bytes from `ipa`: every page must be mapped. The descriptors become
    /// invalid (so no new walk reaches the pages), but the pages stay pinned and the IPAs
    /// reserved until the returned [`PendingUnmap`] is invalidated, synced and completed.
    ///
    /// # Errors
    ///
    /// A range error, [`DomainError::NotMapped`] or [`DomainError::UnmapInProgress`]; nothing
    /// changes.
    pub fn unmap(&mut self, ipa: Ipa, size: u64) -> Result<PendingUnmap, DomainError> {
        let range = self.check_ipa_range(ipa, size)?;
        let mut refusal = None;
        let walked = self
            .mapping
            .walk_range(&range.region(), &mut |chunk, descriptor, level| {
                let here = Ipa(u64::try_from(chunk.start().0).unwrap_or(u64::MAX));
                if level == LEAF_LEVEL && descriptor.is_valid() {
                    Ok(())
                } else {
                    refusal = Some(
                        if level == LEAF_LEVEL && descriptor.flags() == UNMAP_PENDING {
                            DomainError::UnmapInProgress { ipa: here }
                        } else {
                            DomainError::NotMapped { ipa: here }
                        },
                    );
                    Err(())
                }
            });
        if let Some(error) = refusal {
            return Err(error);
        }
        walked.map_err(|_| DomainError::Table)?;
        // Every page is a valid level-3 leaf, so this splits nothing and allocates nothing.
        self.mapping
            .modify_range(&range.region(), &|_, descriptor| {
                let pa = descriptor.output_address();
                descriptor.set(pa, UNMAP_PENDING)
            })
            .map_err(|_| DomainError::Table)?;
        self.mapped_pages = self.mapped_pages.saturating_sub(range.pages);
        self.pending_pages = self.pending_pages.saturating_add(range.pages);
        Ok(PendingUnmap {
            domain: self.root,
            vmid: self.config.vmid,
            ipa,
            pages: range.pages,
            usage: self.config.usage,
            unmapped_at: next_sequence(),
            invalidated: None,
        })
    }

    /// Completes an unmapping: with a proof of a sync later than the pending's recorded
    /// invalidation, on the same SMMU, with no command failure reported in between, unpins
    /// its pages in `pins` and frees its IPAs.
    ///
    /// # Errors
    ///
    /// [`Refused`], with the pending handed back unchanged.
    pub fn complete(
        &mut self,
        pins: &mut PinTable<'_>,
        pending: PendingUnmap,
        proof: &SyncProof,
    ) -> Result<Unpinned, Refused> {
        let range = match self.check_completion(pins, &pending, proof) {
            Ok(range) => range,
            Err(reason) => return Err(Refused { reason, pending }),
        };
        let unpinned = self
            .mapping
            .walk_range(&range.region(), &mut |_, descriptor, _| {
                let pa = u64::try_from(descriptor.output_address().0).unwrap_or(u64::MAX);
                pins.unpin(PhysAddr(pa));
                Ok(())
            });
        let cleared = self
            .mapping
            .modify_range(&range.region(), &|_, descriptor| {
                descriptor.set(PhysicalAddress(0), Stage2Attributes::empty())
            });
        // `check_completion` walked the same range and found only pending level-3 leaves, so
        // neither walk can fail; there is nothing to undo if one somehow did.
        let _ = (unpinned, cleared);
        self.pending_pages = self.pending_pages.saturating_sub(range.pages);
        Ok(Unpinned {
            ipa: pending.ipa,
            pages: pending.pages,
        })
    }

    fn check_completion(
        &self,
        pins: &PinTable<'_>,
        pending: &PendingUnmap,
        proof: &SyncProof,
    ) -> Result<IpaRange, CompletionError> {
        if pending.domain != self.root || pending.vmid != self.config.vmid {
            return Err(CompletionError::WrongDomain);
        }
        let invalidated = pending.invalidated.ok_or(CompletionError::NotInvalidated)?;
        if proof.smmu() != invalidated.smmu() {
            return Err(CompletionError::WrongSmmu);
        }
        if proof.sequence() <= invalidated.sequence() {
            return Err(CompletionError::StaleProof {
                proof: proof.sequence(),
                invalidated: invalidated.sequence(),
            });
        }
        // A failure recovered between the invalidation and the proof, reported to whichever sync,
        // may have replaced one of its commands: the invalidation proves nothing.
        if !invalidate::survived_failures(&invalidated)
            || proof.failures() != invalidated.failures()
        {
            return Err(CompletionError::InvalidationMayBeLost);
        }
        let range = self
            .check_ipa_range(pending.ipa, pending.pages.saturating_mul(PAGE_SIZE))
            .map_err(|_| CompletionError::WrongDomain)?;
        let mut refusal = None;
        let walked = self
            .mapping
            .walk_range(&range.region(), &mut |_, descriptor, level| {
                let pa = PhysAddr(u64::try_from(descriptor.output_address().0).unwrap_or(u64::MAX));
                if level != LEAF_LEVEL || descriptor.flags() != UNMAP_PENDING {
                    // The pending's IPAs are reserved from unmap to completion; another state here
                    // means this pending was already completed through a twin, which cannot be.
                    refusal = Some(CompletionError::WrongDomain);
                    Err(())
                } else if !pins.covers(pa) {
                    refusal = Some(CompletionError::WrongPinTable { page: pa });
                    Err(())
                } else {
                    Ok(())
                }
            });
        match (refusal, walked) {
            (Some(reason), _) => Err(reason),
            (None, Err(_)) => Err(CompletionError::WrongDomain),
            (None, Ok(())) => Ok(range),
        }
    }

    /// Checks a range's size, alignment, budget, overflow and IPA bound.
    fn check_ipa_range(&self, ipa: Ipa, size: u64) -> Result<IpaRange, DomainError> {
        if size == 0 {
            return Err(DomainError::EmptyRange);
        }
        if !ipa.0.is_multiple_of(PAGE_SIZE) {
            return Err(DomainError::MisalignedIpa(ipa));
        }
        if !size.is_multiple_of(PAGE_SIZE) {
            return Err(DomainError::MisalignedSize(size));
        }
        let pages = size / PAGE_SIZE;
        if pages > self.config.max_pages_per_call {
            return Err(DomainError::TooLarge {
                pages,
                budget: self.config.max_pages_per_call,
            });
        }
        let end = ipa
            .0
            .checked_add(size)
            .ok_or(DomainError::AddressOverflow)?;
        if end > self.config.geometry.ipa_limit() {
            return Err(DomainError::BeyondIpaSize { end });
        }
        let (Ok(start), Ok(end)) = (usize::try_from(ipa.0), usize::try_from(end)) else {
            return Err(DomainError::AddressOverflow);
        };
        Ok(IpaRange { start, end, pages })
    }

    /// Fails with the first page of `range` whose descriptor is not empty.
    fn first_occupied(&self, range: IpaRange) -> Result<(), DomainError> {
        let mut occupied = None;
        let walked = self
            .mapping
            .walk_range(&range.region(), &mut |chunk, descriptor, _| {
                let empty = descriptor.flags().is_empty() && descriptor.output_address().0 == 0;
                if empty {
                    Ok(())
                } else {
                    occupied = Some(Ipa(u64::try_from(chunk.start().0).unwrap_or(u64::MAX)));
                    Err(())
                }
            });
        match (occupied, walked) {
            (Some(ipa), _) => Err(DomainError::Overlap { ipa }),
            (None, Err(_)) => Err(DomainError::Table),
            (None, Ok(())) => Ok(()),
        }
    }
}
