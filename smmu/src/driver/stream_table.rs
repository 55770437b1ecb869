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
//! the hitless installer does that through [`SteWriter`], whose only write is one 64-bit store
//! of one word.

use crate::command::Cmd;
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

    /// A writer for `sid`'s STE, for the hitless installer. Gives the span a level-2 table from
    /// the pool if it has none (every STE in it V=0).
    ///
    /// # Errors
    ///
    /// [`Error::StreamTablePoolExhausted`], [`Error::StreamIdOutOfRange`],
    /// [`Error::CorruptStreamTable`].
    pub fn ste_writer(&mut self, sid: StreamId) -> Result<SteWriter<'_, R, M, P>, Error> {
        let (offset, _) = self.stream_table.ensure_ste_offset(sid, &self.platform)?;
        Ok(SteWriter {
            driver: self,
            sid,
            offset,
        })
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

    /// Installs `ste` for `sid` the simple way, break-before-make: if the current STE is
    /// valid, it is first made invalid (V=0) and invalidated, so the SMMU never sees a mix of
    /// old and new words; then words 1 to 7 are written, then word 0, then the STE is
    /// invalidated. Between the two steps the stream aborts. Use the hitless installer through
    /// [`Driver::ste_writer`] when a transition must not abort.
    ///
    /// # Errors
    ///
    /// As [`Driver::ste_writer`] and [`Driver::sync`].
    pub fn write_ste(&mut self, sid: StreamId, ste: &Ste) -> Result<(), Error> {
        let mut writer = self.ste_writer(sid)?;
        let current = writer.read();
        if current.v() {
            let [w0, ..] = current.words();
            writer.write_word(0, w0 & !Ste::V.mask())?;
            writer.invalidate()?;
        }
        let words = ste.words();
        for (index, word) in words.iter().enumerate().skip(1) {
            writer.write_word(index, *word)?;
        }
        let [w0, ..] = words;
        writer.write_word(0, w0)?;
        writer.invalidate()
    }
}

/// Write access to one stream's STE, for code that sequences STE updates (the hitless
/// installer). Each write is one single-copy-atomic 64-bit store; [`SteWriter::invalidate`]
/// makes the SMMU see the result.
#[derive(Debug)]
pub struct SteWriter<'d, R, M, P> {
    driver: &'d mut Driver<R, M, P>,
    sid: StreamId,
    offset: usize,
}

impl<R: RegisterAccess, M: DmaMemory, P: Platform> SteWriter<'_, R, M, P> {
    /// The stream this writer writes.
    #[must_use]
    pub fn sid(&self) -> StreamId {
        self.sid
    }

    /// The STE as it is in memory now.
    #[must_use]
    pub fn read(&self) -> Ste {
        self.driver.stream_table.read_ste(self.offset)
    }

    /// Writes word `index` (0 to 7) of the STE with one 64-bit store, after a barrier so that
    /// it cannot be observed before the writes that preceded it.
    ///
    /// # Errors
    ///
    /// [`Error::SteWordOutOfRange`] for an index above 7.
    pub fn write_word(&mut self, index: usize, value: u64) -> Result<(), Error> {
        if index >= STE_WORDS {
            return Err(Error::SteWordOutOfRange(index));
        }
        self.driver.platform.dma_barrier();
        let offset = self.offset.saturating_add(index.saturating_mul(8));
        self.driver.stream_table.pool.write_u64(offset, value);
        Ok(())
    }

    /// Makes the SMMU drop its cached copy of the STE and waits until it has (CFGI_STE and
    /// CMD_SYNC, see [`Driver::invalidate_ste`]).
    ///
    /// # Errors
    ///
    /// As [`Driver::sync`].
    pub fn invalidate(&mut self) -> Result<(), Error> {
        self.driver.platform.dma_barrier();
        self.driver.invalidate_ste(self.sid)
    }
}
