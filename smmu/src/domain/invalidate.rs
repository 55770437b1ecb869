//! Invalidation of an SMMU's cached stage-2 translations, through SMMU commands only, and the
//! values that prove it happened.
//!
//! This module owns the [`Stage2Invalidation`] trait, its implementation for the physical
//! [`Driver`], the command sequences it issues, and the only constructors of [`Invalidated`]
//! and [`SyncProof`]. The CPU's TLB maintenance (`TLBI IPAS2E1IS`, which `aarch64-paging`
//! issues for tables it believes live) never reaches the SMMU's TLBs: the driver sets CR2.PTM,
//! and domains never mark their tables live.
//!
//! # Sequence numbers
//!
//! Every unmap, every invalidation and every sync takes a number from one counter, in the
//! order they happen (all under `&mut` of the domain or the driver). An [`Invalidated`] records
//! one number taken *before* its commands were submitted ([`Invalidated::begun`]: it must be
//! later than the unmap, so the commands follow the descriptor writes) and one taken *after*
//! ([`Invalidated::sequence`]); a [`SyncProof`] the number taken just *before* its CMD_SYNC was
//! submitted. So `proof.sequence > invalidated.sequence` means the CMD_SYNC sits after the
//! invalidation in the same queue, and the SMMU consumes a CMD_SYNC only once every earlier
//! command has completed.
//!
//! # Commands
//!
//! For `pages` 4 KiB pages from `ipa` in `vmid`:
//!
//! - with IDR3.RIL: `TLBI_S2_IPA` range commands, TG = 4 KiB, TTL = 3 for leaf-only (our
//!   leaves are all level-3 pages), each covering `(NUM + 1) * 2^SCALE` pages from its
//!   address, as Linux's `__arm_smmu_tlb_inv_range` splits a range: at most 13 commands;
//! - without RIL, up to [`PER_PAGE_LIMIT`] pages: one `TLBI_S2_IPA` per page (TG = 0, no
//!   range, no level hint);
//! - without RIL, above that: one `TLBI_S12_VMALL` for the VMID.
//!
//! When the stage 2 may sit under a guest's stage 1 ([`Stage2Use::NestingParent`]), an SMMU
//! may hold combined stage-1+2 entries that `TLBI_S2_IPA` need not remove; as Linux does for a
//! nesting parent, the S2 invalidation is followed by a CMD_SYNC and `TLBI_NH_ALL` for the
//! VMID (the sync orders them: otherwise a walk could refill a combined entry from a stage-2
//! entry not yet invalidated). `TLBI_S12_VMALL` covers both stages by itself.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::command::{Cmd, TlbiGranule, TlbiScope};
use crate::driver::{DmaMemory, Driver, Error as DriverError, Platform};
use crate::hardware::RegisterAccess;
use crate::ids::{Ipa, Vmid};
use crate::registers::offset;

use super::pins::PAGE_SIZE;

/// Without range invalidation, ranges of more pages than this are invalidated by VMID
/// (`TLBI_S12_VMALL`) rather than page by page. Linux switches at 512 for a queue of thousands
/// of entries; the hypervisor's queue is smaller, and a whole-VMID invalidation of a VM that
/// is unmapping this much costs it little.
pub const PER_PAGE_LIMIT: u64 = 64;

/// Commands are encoded into a buffer of this many and submitted buffer by buffer.
const BATCH: usize = 16;

/// How a stage 2 is used, which decides what its invalidation must also remove.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Stage2Use {
    /// Only stage-2-only STEs use the VMID: no combined stage-1+2 TLB entries exist.
    Stage2Only,
    /// Nested STEs (a guest's stage 1 over this stage 2) may use the VMID: combined entries
    /// must be invalidated too (`TLBI_NH_ALL` after the stage-2 invalidation).
    NestingParent,
}

/// Which SMMU an invalidation or a sync went to: the physical address of its command queue
/// (CMDQ_BASE), which two SMMUs never share.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct InvalidatorId(u64);

/// A point in the order of unmaps, invalidations and syncs.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Sequence(u64);

impl Sequence {
    /// The raw number, for logs.
    #[must_use]
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// The one counter. `SeqCst` so the order of numbers is the order of the calls that took them,
/// on any CPU; 64 bits never wrap.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// The highest sync sequence at which a command failure was reported: invalidations numbered
/// below it may have been dropped by the driver's recovery (an illegal command is replaced by
/// a CMD_SYNC), so they prove nothing.
static LOST_BEFORE: AtomicU64 = AtomicU64::new(0);

pub(super) fn next_sequence() -> Sequence {
    Sequence(SEQUENCE.fetch_add(1, Ordering::SeqCst).saturating_add(1))
}

/// Whether no reported command failure could have dropped the commands of `invalidated`.
pub(super) fn survived_failures(invalidated: &Invalidated) -> bool {
    invalidated.begun.0 > LOST_BEFORE.load(Ordering::SeqCst)
}

/// Evidence that invalidation commands for a range of a VMID's stage 2 were submitted to an
/// SMMU. Only [`Stage2Invalidation`] implementations in this module construct it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Invalidated {
    smmu: InvalidatorId,
    vmid: Vmid,
    /// `[start, end)` in IPA bytes; the whole address space for a VMID-wide invalidation.
    start: u64,
    end: u64,
    /// Combined stage-1+2 entries were invalidated too.
    stage1_included: bool,
    begun: Sequence,
    sequence: Sequence,
    /// The driver's command-failure count before the commands were submitted.
    failures: u64,
}

impl Invalidated {
    /// The SMMU the commands went to.
    #[must_use]
    pub fn smmu(&self) -> InvalidatorId {
        self.smmu
    }

    /// The VMID invalidated.
    #[must_use]
    pub fn vmid(&self) -> Vmid {
        self.vmid
    }

    /// A number taken before the commands were submitted.
    #[must_use]
    pub fn begun(&self) -> Sequence {
        self.begun
    }

    /// A number taken after the commands were submitted.
    #[must_use]
    pub fn sequence(&self) -> Sequence {
        self.sequence
    }

    /// The SMMU driver's command-failure count before the commands were submitted.
    #[must_use]
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// Whether `[start, end)` of `vmid` is covered, with combined entries if `need_stage1`.
    pub(super) fn covers(&self, vmid: Vmid, start: u64, end: u64, need_stage1: bool) -> bool {
        self.vmid == vmid
            && self.start <= start
            && end <= self.end
            && (self.stage1_included || !need_stage1)
    }
}

/// Proof that a CMD_SYNC completed on an SMMU: every command submitted to that SMMU before it
/// has completed. Only [`Stage2Invalidation::sync_with_proof`] implementations in this module
/// construct it, and only when the sync completed without a reported failure.
///
/// It is `Copy`: a completed sync stays completed, and one proof completes every pending
/// unmap invalidated before it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SyncProof {
    smmu: InvalidatorId,
    sequence: Sequence,
    /// The SMMU driver's command-failure count once the sync completed.
    failures: u64,
}

impl SyncProof {
    /// The SMMU that synced.
    #[must_use]
    pub fn smmu(&self) -> InvalidatorId {
        self.smmu
    }

    /// The SMMU driver's command-failure count once the sync completed: if it differs from an
    /// [`Invalidated::failures`], some command failed in between, whoever's sync reported it,
    /// and that invalidation may never have run.
    #[must_use]
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// When the CMD_SYNC was submitted (just before).
    #[must_use]
    pub fn sequence(&self) -> Sequence {
        self.sequence
    }
}

mod sealed {
    /// Only this module implements [`super::Stage2Invalidation`]: an implementation must produce
    /// [`super::SyncProof`]s, which must mean the hardware let go.
    #[allow(unreachable_pub)] // The sealed-trait pattern: public, in a private module.
    pub trait Sealed {}
}

/// What a stage-2 domain needs from an SMMU to make an unmapping take effect.
///
/// Sealed: the proofs it returns are what allow pinned memory to be released (STYLE.md
/// practice 7), so only implementations in this module, over a real command queue, exist.
pub trait Stage2Invalidation: sealed::Sealed {
    /// Why a command could not be issued or did not complete.
    type Error;

    /// Submits (does not wait for) the invalidation of the stage-2 translations of
    /// `[ipa, ipa + size)` in `vmid`. `leaf`: only leaf entries changed (no table was removed).
    ///
    /// # Errors
    ///
    /// The range or VMID cannot be encoded, or the commands could not be submitted.
    fn invalidate_ipa_range(
        &mut self,
        vmid: Vmid,
        ipa: Ipa,
        size: u64,
        leaf: bool,
        usage: Stage2Use,
    ) -> Result<Invalidated, Self::Error>;

    /// Submits (does not wait for) the invalidation of every stage-1 and stage-2 translation
    /// of `vmid`.
    ///
    /// # Errors
    ///
    /// The VMID cannot be encoded, or the command could not be submitted.
    fn invalidate_vmid(&mut self, vmid: Vmid) -> Result<Invalidated, Self::Error>;

    /// Submits a CMD_SYNC and waits (bounded) for it to complete. (Named apart from
    /// [`Driver::sync`], which proves nothing to a domain.)
    ///
    /// # Errors
    ///
    /// The sync timed out, or a command before it failed (then no proof is given, and
    /// invalidations submitted before it prove nothing: re-invalidate).
    fn sync_with_proof(&mut self) -> Result<SyncProof, Self::Error>;
}

/// Why the driver could not invalidate.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum InvalidationError {
    /// The VMID has bits above 7 and the SMMU has 8-bit VMIDs (no IDR0.VMID16).
    VmidTooWide(Vmid),
    /// The range is empty, not 4 KiB-aligned, or its end does not fit in 64 bits.
    BadRange,
    /// The driver failed: submission or sync timed out, or a command failed.
    Driver(DriverError),
}

impl From<DriverError> for InvalidationError {
    fn from(error: DriverError) -> Self {
        Self::Driver(error)
    }
}

/// The commands for one range invalidation, before submission.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[allow(clippy::large_enum_variant)] // Built and consumed at once, on the stack, never stored.
pub(super) enum Plan {
    /// RIL range commands, `count` of them in `commands`.
    Ranges {
        commands: [Cmd; BATCH],
        count: usize,
    },
    /// One non-range `TLBI_S2_IPA` per page.
    PerPage { pages: u64 },
    /// `TLBI_S12_VMALL`.
    WholeVmid,
}

/// A `TLBI_S2_IPA` with these fields.
const fn tlbi_s2_ipa(vmid: Vmid, addr: u64, scope: TlbiScope) -> Cmd {
    Cmd::TlbiS2Ipa {
        vmid,
        scope,
        addr: Ipa(addr),
    }
}

/// The largest SCALE the 5-bit field holds.
const MAX_SCALE: u32 = 31;

/// Decides the commands that invalidate `pages` pages from `ipa`.
///
/// The range split follows Linux's `__arm_smmu_tlb_inv_range`: each command covers the run
/// of up to 31 chunks of `2^SCALE` pages named by the lowest set bits of the remaining count
/// (SCALE = its trailing zeros, NUM + 1 = the next five bits). Each command clears at least
/// one set bit and at most five bit positions, so a 64-bit count needs at most 13 commands.
/// For a non-leaf invalidation TTL is 0; Linux then avoids NUM = SCALE = 0 (an erratum
/// workaround) by invalidating one page more, and so do we.
pub(super) fn plan(vmid: Vmid, ipa: u64, pages: u64, leaf: bool, ril: bool) -> Plan {
    if !ril {
        return if pages <= PER_PAGE_LIMIT {
            Plan::PerPage { pages }
        } else {
            Plan::WholeVmid
        };
    }
    let mut remaining = pages;
    if !leaf && remaining & 0x1f == 1 {
        remaining = remaining.saturating_add(1);
    }
    let mut commands = [Cmd::TlbiNsnhAll; BATCH];
    let mut count = 0;
    let mut addr = ipa;
    // At most 13 rounds (see above); `count` is checked against the buffer anyway.
    while remaining != 0 {
        let scale = remaining.trailing_zeros();
        let (Some(slot), true) = (commands.get_mut(count), scale <= MAX_SCALE) else {
            return Plan::WholeVmid;
        };
        let num = (remaining >> scale) & 0x1f;
        let chunk = num << scale;
        *slot = tlbi_s2_ipa(
            vmid,
            addr,
            TlbiScope {
                num: u8::try_from(num.saturating_sub(1)).unwrap_or(0),
                scale: u8::try_from(scale).unwrap_or(0),
                leaf,
                ttl: if leaf { 3 } else { 0 },
                granule: TlbiGranule::Size4K,
            },
        );
        count += 1;
        addr = addr.wrapping_add(chunk.wrapping_mul(PAGE_SIZE));
        remaining -= chunk;
    }
    Plan::Ranges { commands, count }
}

impl<R, M, P> sealed::Sealed for Driver<R, M, P> {}

impl<R: RegisterAccess, M: DmaMemory, P: Platform> Driver<R, M, P> {
    fn invalidator_id(&self) -> InvalidatorId {
        InvalidatorId(self.registers().read64(offset::CMDQ_BASE))
    }

    fn check_vmid(&self, vmid: Vmid) -> Result<(), InvalidationError> {
        if self.features().vmid16 || vmid.0 <= 0xff {
            Ok(())
        } else {
            Err(InvalidationError::VmidTooWide(vmid))
        }
    }

    /// A sync that, when it reports a command failure, marks every invalidation before it as
    /// possibly lost.
    fn sync_noting_failures(&mut self) -> Result<Sequence, InvalidationError> {
        let sequence = next_sequence();
        match Driver::sync(self) {
            Ok(()) => Ok(sequence),
            Err(error) => {
                if matches!(error, DriverError::CommandError { .. }) {
                    LOST_BEFORE.fetch_max(sequence.0, Ordering::SeqCst);
                }
                Err(error.into())
            }
        }
    }

    /// Submits `count` commands produced by `command`, `BATCH` at a time.
    fn submit_batched(
        &mut self,
        count: u64,
        mut command: impl FnMut(u64) -> Cmd,
    ) -> Result<(), InvalidationError> {
        let mut buffer = [Cmd::TlbiNsnhAll; BATCH];
        let mut next = 0;
        // `count` is at most PER_PAGE_LIMIT: at most PER_PAGE_LIMIT / BATCH rounds.
        while next < count {
            let mut filled = 0;
            for slot in &mut buffer {
                if next == count {
                    break;
                }
                *slot = command(next);
                next += 1;
                filled += 1;
            }
            self.submit(buffer.get(..filled).unwrap_or(&[]))?;
        }
        Ok(())
    }
}

impl<R: RegisterAccess, M: DmaMemory, P: Platform> Stage2Invalidation for Driver<R, M, P> {
    type Error = InvalidationError;

    fn invalidate_ipa_range(
        &mut self,
        vmid: Vmid,
        ipa: Ipa,
        size: u64,
        leaf: bool,
        usage: Stage2Use,
    ) -> Result<Invalidated, InvalidationError> {
        self.check_vmid(vmid)?;
        let begun = next_sequence();
        let failures = self.command_failures();
        if size == 0 || !size.is_multiple_of(PAGE_SIZE) || !ipa.0.is_multiple_of(PAGE_SIZE) {
            return Err(InvalidationError::BadRange);
        }
        let end = ipa.0.checked_add(size).ok_or(InvalidationError::BadRange)?;
        let pages = size / PAGE_SIZE;
        let whole_vmid = match plan(vmid, ipa.0, pages, leaf, self.features().ril) {
            Plan::WholeVmid => true,
            Plan::Ranges { commands, count } => {
                self.submit(commands.get(..count).unwrap_or(&[]))?;
                false
            }
            Plan::PerPage { pages } => {
                self.submit_batched(pages, |page| {
                    let addr = ipa.0.wrapping_add(page.wrapping_mul(PAGE_SIZE));
                    tlbi_s2_ipa(
                        vmid,
                        addr,
                        TlbiScope {
                            leaf,
                            ..TlbiScope::default()
                        },
                    )
                })?;
                false
            }
        };
        if whole_vmid {
            self.submit(&[Cmd::TlbiS12Vmall { vmid }])?;
            return Ok(Invalidated {
                smmu: self.invalidator_id(),
                vmid,
                start: 0,
                end: u64::MAX,
                stage1_included: true,
                begun,
                sequence: next_sequence(),
                failures,
            });
        }
        if usage == Stage2Use::NestingParent {
            self.sync_noting_failures()?;
            self.submit(&[Cmd::TlbiNhAll { vmid }])?;
        }
        Ok(Invalidated {
            smmu: self.invalidator_id(),
            vmid,
            start: ipa.0,
            end,
            stage1_included: usage == Stage2Use::NestingParent,
            begun,
            sequence: next_sequence(),
            failures,
        })
    }

    fn invalidate_vmid(&mut self, vmid: Vmid) -> Result<Invalidated, InvalidationError> {
        self.check_vmid(vmid)?;
        let begun = next_sequence();
        let failures = self.command_failures();
        self.submit(&[Cmd::TlbiS12Vmall { vmid }])?;
        Ok(Invalidated {
            smmu: self.invalidator_id(),
            vmid,
            start: 0,
            end: u64::MAX,
            stage1_included: true,
            begun,
            sequence: next_sequence(),
            failures,
        })
    }

    fn sync_with_proof(&mut self) -> Result<SyncProof, InvalidationError> {
        let smmu = self.invalidator_id();
        let sequence = self.sync_noting_failures()?;
        Ok(SyncProof {
            smmu,
            sequence,
            failures: self.command_failures(),
        })
    }
}
