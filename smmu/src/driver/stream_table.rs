//! The two-level stream table: the level-1 array, the pool of level-2 tables, and the writes
//! of STEs.
//!
//! This module owns the stream table's memory. The level-1 array covers 2^sid_bits stream IDs
//! in spans of 2^SPLIT; a span gets a level-2 table from the fixed pool the first time one of
//! its stream IDs is written, and keeps it (tables are never returned, so a level-1 descriptor
//! never has to be torn down under a live SMMU). Until then its descriptor has SPAN=0 and every
//! stream in it aborts. A fresh level-2 table is zeroed before it is published: every STE in it
//! has V=0 and aborts (C_BAD_STE) until it is written.
//!
//! It does not decide what an STE contains, nor the order in which a live STE's words change:
//! the hitless installer does that, through a writer private to this module whose only write
//! is one 64-bit store of one word. The one way in is [`Driver::install_ste`] (and
//! [`Driver::install_stes`] for many streams at once), which takes a [`PhysicalSte`]: an STE
//! the physical guard accepted.

use crate::command::Cmd;
use crate::entry::install::{EntryWriter, InstallError, InstallReport, PhysicalSte, install_ste};
use crate::hardware::RegisterAccess;
use crate::ids::{PhysAddr, StreamId};
use crate::registers::{StreamTableFormat, StrtabBase, StrtabBaseCfg};
use crate::ste::{Ste, StreamTableL1Descriptor};

use super::memory::{DmaMemory, Platform, Region, check_region, zero};
use super::{Driver, Error};

/// Bytes per STE.
pub const STE_BYTES: usize = 64;
/// Words per STE.
pub const STE_WORDS: usize = 8;
/// Bytes per level-1 descriptor.
pub const L1_DESCRIPTOR_BYTES: usize = 8;

/// The stream table's memory and geometry.
#[derive(Debug)]
pub(crate) struct StreamTable<M> {
    l1: M,
    pool: M,
    sid_bits: u8,
    split: u8,
    l1_entries: usize,
    l2_bytes: usize,
    pool_tables: usize,
    pool_used: usize,
}

impl<M: DmaMemory> StreamTable<M> {
    pub(crate) fn new(l1: M, pool: M, sid_bits: u8, split: u8) -> Result<Self, Error> {
        if !matches!(split, 6 | 8 | 10) || split > sid_bits || sid_bits > 32 {
            return Err(Error::StreamTableGeometry { sid_bits, split });
        }
        let l1_entries = 1usize
            .checked_shl(u32::from(sid_bits - split))
            .ok_or(Error::StreamTableGeometry { sid_bits, split })?;
        let l1_bytes = l1_entries.saturating_mul(L1_DESCRIPTOR_BYTES);
        let align = u64::try_from(l1_bytes).unwrap_or(u64::MAX).max(64);
        check_region(&l1, Region::StreamTableL1, l1_bytes, align)?;
        let l2_bytes = STE_BYTES << split;
        // A level-2 table is aligned to its size (L2Ptr keeps only the bits above it).
        let l2_align = u64::try_from(l2_bytes).unwrap_or(u64::MAX);
        check_region(&pool, Region::StreamTableL2Pool, 0, l2_align)?;
        let pool_tables = pool.size() / l2_bytes;
        check_region(
            &pool,
            Region::StreamTableL2Pool,
            pool_tables.saturating_mul(l2_bytes),
            l2_align,
        )?;
        Ok(Self {
            l1,
            pool,
            sid_bits,
            split,
            l1_entries,
            l2_bytes,
            pool_tables,
            pool_used: 0,
        })
    }

    /// Every span without a table, the pool full again.
    pub(crate) fn reset(&mut self) {
        zero(
            &mut self.l1,
            0,
            self.l1_entries.saturating_mul(L1_DESCRIPTOR_BYTES),
        );
        self.pool_used = 0;
    }

    pub(crate) fn base_register(&self) -> StrtabBase {
        StrtabBase::default()
            .with_addr(self.l1.phys())
            .with_ra(true)
    }

    pub(crate) fn config_register(&self) -> StrtabBaseCfg {
        StrtabBaseCfg::default()
            .with_log2size(self.sid_bits)
            .with_split(self.split)
            .with_fmt(StreamTableFormat::TwoLevel)
    }

    fn check_sid(&self, sid: StreamId) -> Result<(), Error> {
        if u64::from(sid.0) >> self.sid_bits != 0 {
            return Err(Error::StreamIdOutOfRange(sid));
        }
        Ok(())
    }

    fn l1_offset(&self, sid: StreamId) -> usize {
        usize::try_from(sid.0 >> self.split)
            .unwrap_or(usize::MAX)
            .saturating_mul(L1_DESCRIPTOR_BYTES)
    }

    fn span(&self) -> u8 {
        self.split + 1
    }

    /// The byte offset in the pool of `sid`'s STE, if its span has a table.
    fn ste_offset(&self, sid: StreamId) -> Result<Option<usize>, Error> {
        self.check_sid(sid)?;
        let descriptor = StreamTableL1Descriptor::from_raw(self.l1.read_u64(self.l1_offset(sid)));
        if descriptor.span() == 0 {
            return Ok(None);
        }
        // The driver wrote this descriptor; check it anyway, since a wrong one would send
        // STE writes outside the pool.
        let table = descriptor
            .l2_ptr()
            .0
            .checked_sub(self.pool.phys().0)
            .and_then(|o| usize::try_from(o).ok())
            .filter(|o| {
                descriptor.span() == self.span()
                    && o % self.l2_bytes == 0
                    && *o / self.l2_bytes < self.pool_used
            })
            .ok_or(Error::CorruptStreamTable(sid))?;
        let within = usize::try_from(sid.0 & ((1 << self.split) - 1)).unwrap_or(0);
        Ok(Some(table.saturating_add(within.saturating_mul(STE_BYTES))))
    }

    /// The byte offset in the pool of `sid`'s STE, giving its span a zeroed table from the
    /// pool first if it has none. True with it if the table is new.
    fn ensure_ste_offset(
        &mut self,
        sid: StreamId,
        platform: &impl Platform,
    ) -> Result<(usize, bool), Error> {
        if let Some(offset) = self.ste_offset(sid)? {
            return Ok((offset, false));
        }
        if self.pool_used >= self.pool_tables {
            return Err(Error::StreamTablePoolExhausted);
        }
        let table = self.pool_used.saturating_mul(self.l2_bytes);
        zero(&mut self.pool, table, self.l2_bytes);
        let l2_ptr = u64::try_from(table)
            .ok()
            .and_then(|t| self.pool.phys().checked_add(t))
            .ok_or(Error::CorruptStreamTable(sid))?;
        let mut descriptor = StreamTableL1Descriptor::INVALID;
        descriptor.set_span(self.span());
        descriptor.set_l2_ptr(l2_ptr);
        // The zeroed table must be visible before the descriptor that publishes it.
        platform.dma_barrier();
        self.l1.write_u64(self.l1_offset(sid), descriptor.raw());
        self.pool_used += 1;
        self.ste_offset(sid)?
            .map(|offset| (offset, true))
            .ok_or(Error::CorruptStreamTable(sid))
    }

    fn read_ste(&self, offset: usize) -> Ste {
        let mut words = [0; STE_WORDS];
        for (i, word) in words.iter_mut().enumerate() {
            *word = self
                .pool
                .read_u64(offset.saturating_add(i.saturating_mul(8)));
        }
        Ste::from_words(words)
    }

    /// Stores qword `index` (below 8) of the STE at `offset` with one 64-bit store. Only the
    /// driver's STE installs call this.
    fn write_word(&mut self, offset: usize, index: usize, value: u64) {
        let at = offset.saturating_add(index.saturating_mul(8));
        self.pool.write_u64(at, value);
    }
}

impl<R: RegisterAccess, M: DmaMemory, P: Platform> Driver<R, M, P> {
    /// The stream ID width the stream table covers.
    #[must_use]
    pub fn sid_bits(&self) -> u8 {
        self.stream_table.sid_bits
    }

    /// (level-2 tables in use, level-2 tables in the pool).
    #[must_use]
    pub fn stream_table_pool_usage(&self) -> (usize, usize) {
        (self.stream_table.pool_used, self.stream_table.pool_tables)
    }

    /// The physical address of `sid`'s STE, if its span has a level-2 table.
    ///
    /// # Errors
    ///
    /// [`Error::StreamIdOutOfRange`], [`Error::CorruptStreamTable`].
    pub fn ste_address(&self, sid: StreamId) -> Result<Option<PhysAddr>, Error> {
        Ok(self.stream_table.ste_offset(sid)?.and_then(|offset| {
            u64::try_from(offset)
                .ok()
                .and_then(|o| self.stream_table.pool.phys().checked_add(o))
        }))
    }

    /// The STE the SMMU would read for `sid`: [`Ste::INVALID`] if its span has no table.
    ///
    /// # Errors
    ///
    /// [`Error::StreamIdOutOfRange`], [`Error::CorruptStreamTable`].
    pub fn read_ste(&self, sid: StreamId) -> Result<Ste, Error> {
        Ok(match self.stream_table.ste_offset(sid)? {
            Some(offset) => self.stream_table.read_ste(offset),
            None => Ste::INVALID,
        })
    }

    /// Moves `sid`'s STE to `target` with the hitless installer
    /// ([`install_ste`]) over the driver's own writer: one
    /// 64-bit store at a time, each step followed by CFGI_STE (Leaf=0) and CMD_SYNC. The
    /// stream's span gets a level-2 table from the pool first if it has none (every STE in it
    /// V=0). This is the only way the driver writes an STE.
    ///
    /// The sync covers the configuration caches only: TLB entries of an old VMID, or of an
    /// old S2TTB under the same VMID, are the caller's to invalidate afterwards.
    ///
    /// # Errors
    ///
    /// [`Error::StreamTablePoolExhausted`], [`Error::StreamIdOutOfRange`],
    /// [`Error::CorruptStreamTable`] before any store; an error of [`Driver::sync`] if a step's
    /// sync fails (the entry then behaves as the old one, the target, or V=0);
    /// [`Error::EntryRefused`] never.
    pub fn install_ste(
        &mut self,
        sid: StreamId,
        target: &PhysicalSte,
    ) -> Result<InstallReport, Error> {
        self.install_ste_observed(sid, target, |_, _| {})
    }

    /// As [`Driver::install_ste`], calling `observe` at every point of the install where the
    /// SMMU may see something new: after each step's stores (visible to the SMMU, not yet
    /// invalidated) and after each step's sync, with the entry as memory holds it. For tests
    /// that run traffic through every state an install exposes; `observe` must not touch the
    /// SMMU.
    ///
    /// # Errors
    ///
    /// As [`Driver::install_ste`].
    pub fn install_ste_observed(
        &mut self,
        sid: StreamId,
        target: &PhysicalSte,
        observe: impl FnMut(InstallPoint, &Ste),
    ) -> Result<InstallReport, Error> {
        let (offset, new_table) = self.stream_table.ensure_ste_offset(sid, &self.platform)?;
        let mut current = self.stream_table.read_ste(offset);
        let mut writer = StreamTableWriter {
            driver: self,
            sid,
            offset,
            refused: None,
            observe,
        };
        let report =
            install_ste(&mut writer, &mut current, target).map_err(|error| match error {
                InstallError::Sync(error) => error,
                InstallError::IntermediateRefused { qword, error } => {
                    Error::EntryRefused { qword, error }
                }
            })?;
        // A new level-2 table changed the level-1 descriptor, which the SMMU may have cached
        // as invalid (C_BAD_STREAMID). An install that stored nothing (the target is the
        // zeroed table's V=0) issued no CFGI_STE of its own to cover it.
        if new_table && report.syncs == 0 {
            self.invalidate_ste(sid)?;
        }
        Ok(report)
    }

    /// Gives every stream in `first..=last` the STE `target`, as [`Driver::install_ste`] would
    /// stream by stream, with far fewer syncs when many of them are fresh:
    ///
    /// - a stream whose STE is invalid (V=0, as every stream is after reset) is *fresh*. The
    ///   installer's own plan for V=0 to a valid target is hitless with qword 0 critical:
    ///   qwords 1 to 7 first (the SMMU reads nothing of an invalid STE but V), a sync, then
    ///   qword 0, a sync. The architecture requires that middle sync because the SMMU may cache
    ///   an invalid STE and read its qwords in any order (IHI 0070 3.21.3.1). Here each step is
    ///   taken for every fresh stream of the range at once, each followed by one CFGI_STE_RANGE
    ///   covering the range and one CMD_SYNC: two syncs for the whole range;
    /// - a stream whose STE is valid and differs from `target` is *live*: it goes through
    ///   [`Driver::install_ste`], on its own, with that install's syncs;
    /// - a stream that already holds `target` is left alone.
    ///
    /// # Errors
    ///
    /// [`Error::StreamRangeReversed`] or [`Error::StreamIdOutOfRange`] before anything is
    /// written; [`Error::StreamTablePoolExhausted`] or [`Error::CorruptStreamTable`] part way
    /// (the fresh streams written so far still have V=0, so they abort); an error of
    /// [`Driver::install_ste`] for a live stream, or of [`Driver::sync`].
    pub fn install_stes(
        &mut self,
        first: StreamId,
        last: StreamId,
        target: &PhysicalSte,
    ) -> Result<BulkInstallReport, Error> {
        if first.0 > last.0 {
            return Err(Error::StreamRangeReversed { first, last });
        }
        self.stream_table.check_sid(last)?;
        let target_words = target.words();
        let mut report = BulkInstallReport::default();
        for sid in (first.0..=last.0).map(StreamId) {
            let (offset, _) = self.stream_table.ensure_ste_offset(sid, &self.platform)?;
            let current = self.stream_table.read_ste(offset);
            if current == *target.ste() {
                report.unchanged = report.unchanged.saturating_add(1);
            } else if current.v() {
                let installed = self.install_ste(sid, target)?;
                report.live = report.live.saturating_add(1);
                report.syncs = report.syncs.saturating_add(u32::from(installed.syncs));
            } else {
                // Step 1: the SMMU reads only V (qword 0) of this entry, so every other qword
                // takes the target's value now; the entry stays invalid whatever mix it sees.
                for (index, (&now, &want)) in current
                    .words()
                    .iter()
                    .zip(&target_words)
                    .enumerate()
                    .skip(1)
                {
                    if now != want {
                        self.stream_table.write_word(offset, index, want);
                    }
                }
                report.fresh = report.fresh.saturating_add(1);
            }
        }
        if report.fresh == 0 {
            return Ok(report);
        }
        self.invalidate_ste_range(first, last)?;
        report.syncs = report.syncs.saturating_add(1);
        // Step 2: qword 0, with V, of every stream step 1 prepared. A stream that differs from
        // the target here in anything but qword 0 was changed by someone else.
        let [target_w0, ..] = target_words;
        for sid in (first.0..=last.0).map(StreamId) {
            let offset = self
                .stream_table
                .ste_offset(sid)?
                .ok_or(Error::CorruptStreamTable(sid))?;
            let current = self.stream_table.read_ste(offset);
            if current == *target.ste() {
                continue;
            }
            let [_, rest @ ..] = current.words();
            let [_, target_rest @ ..] = target_words;
            if current.v() || rest != target_rest {
                return Err(Error::CorruptStreamTable(sid));
            }
            self.stream_table.write_word(offset, 0, target_w0);
        }
        self.invalidate_ste_range(first, last)?;
        report.syncs = report.syncs.saturating_add(1);
        Ok(report)
    }

    /// Invalidates the SMMU's cached copy of `sid`'s configuration and waits for it: CFGI_STE
    /// with Leaf=0 (so a level-1 descriptor just published for a fresh span is refetched too;
    /// negligible next to the sync) and CMD_SYNC.
    ///
    /// # Errors
    ///
    /// As [`Driver::sync`].
    pub fn invalidate_ste(&mut self, sid: StreamId) -> Result<(), Error> {
        self.submit_and_sync(&[Cmd::CfgiSte { sid, leaf: false }])
    }

    /// CFGI_STE_RANGE over the smallest aligned range holding `first..=last` (its level-1
    /// descriptors included), then CMD_SYNC.
    fn invalidate_ste_range(&mut self, first: StreamId, last: StreamId) -> Result<(), Error> {
        // The bits in which the two differ must lie inside the range's 2^(range+1) IDs.
        let differing = u32::BITS - (first.0 ^ last.0).leading_zeros();
        let range = u8::try_from(differing.saturating_sub(1))
            .unwrap_or(31)
            .min(31);
        self.submit_and_sync(&[Cmd::CfgiSteRange { sid: first, range }])
    }
}

/// Where an install is when [`Driver::install_ste_observed`] calls its observer.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum InstallPoint {
    /// A step's stores are made and visible to the SMMU, not yet invalidated: the SMMU may use
    /// its cached copy, the new qwords, or any mix of the two.
    Stored,
    /// The step's CFGI_STE and CMD_SYNC completed.
    Synced,
}

/// What [`Driver::install_stes`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BulkInstallReport {
    /// Streams whose STE was invalid, given the target together in two steps.
    pub fresh: u32,
    /// Streams whose valid STE differed from the target, each moved by the hitless installer.
    pub live: u32,
    /// Streams that already held the target.
    pub unchanged: u32,
    /// CMD_SYNCs issued in all.
    pub syncs: u32,
}

impl BulkInstallReport {
    /// Every stream of the range.
    #[must_use]
    pub const fn streams(&self) -> u32 {
        self.fresh
            .saturating_add(self.live)
            .saturating_add(self.unchanged)
    }
}

/// The driver's [`EntryWriter`]: the installer's stores go to one STE in the stream table, its
/// syncs are CFGI_STE and CMD_SYNC. Private: every STE the driver writes comes through
/// [`Driver::install_ste`], so only a [`PhysicalSte`] reaches it.
struct StreamTableWriter<'d, R, M, P, F> {
    driver: &'d mut Driver<R, M, P>,
    sid: StreamId,
    offset: usize,
    /// A store refused (a qword index above 7: the installer never makes one), reported by
    /// the next sync.
    refused: Option<Error>,
    observe: F,
}

impl<R, M, P, F> EntryWriter for StreamTableWriter<'_, R, M, P, F>
where
    R: RegisterAccess,
    M: DmaMemory,
    P: Platform,
    F: FnMut(InstallPoint, &Ste),
{
    type Error = Error;

    fn write_qword(&mut self, index: usize, value: u64) {
        if index >= STE_WORDS {
            self.refused.get_or_insert(Error::SteWordOutOfRange(index));
            return;
        }
        // Ordered after the stores before it, so the SMMU never sees this one first.
        self.driver.platform.dma_barrier();
        self.driver
            .stream_table
            .write_word(self.offset, index, value);
    }

    fn sync(&mut self) -> Result<(), Error> {
        if let Some(error) = self.refused.take() {
            return Err(error);
        }
        self.driver.platform.dma_barrier();
        let entry = self.driver.stream_table.read_ste(self.offset);
        (self.observe)(InstallPoint::Stored, &entry);
        self.driver.invalidate_ste(self.sid)?;
        (self.observe)(InstallPoint::Synced, &entry);
        Ok(())
    }
}
