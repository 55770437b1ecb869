//! Finding a guest's structures in its RAM: the STE of a virtual stream through its stream
//! table (linear or two-level), and the CD of a substream through its CD table (one CD,
//! linear, or two-level). Every address comes from the guest and is checked before use; every
//! read is a bounded copy through [`GuestMemory`].
//!
//! This module owns the walks and their faults ([`SteFault`], [`CdFault`]); what an STE or CD
//! may contain is [`crate::validate`]'s question.

use smmu::cd::{Cd, CdTableL1Descriptor};
use smmu::registers::{StreamTableFormat, StrtabBase, StrtabBaseCfg};
use smmu::ste::{Ste, StreamTableL1Descriptor};
use smmu::{Ipa, IpaRange, VirtualStreamId};

use crate::interfaces::guest_memory::{GuestMemory, read_words};
use crate::validate::ste::InvalidSte;

/// Why a virtual stream has no usable STE. Each becomes the event a real SMMU records for the
/// stream's first transaction (the physical STE is then V=0, see [`crate::shadow`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SteFault {
    /// The stream ID is beyond the stream table (LOG2SIZE, or the level-2 span), or its
    /// level-1 descriptor is invalid: C_BAD_STREAMID (recorded only with CR2.RECINVSID).
    StreamIdOutOfRange,
    /// Reading the stream table at this IPA failed (not RAM): F_STE_FETCH.
    FetchAbort(Ipa),
    /// The STE is invalid or ILLEGAL: C_BAD_STE.
    Illegal(InvalidSte),
}

/// Why a substream has no usable CD. The shadow CD is then V=0 and the physical SMMU reports
/// C_BAD_CD, which is forwarded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CdFault {
    /// The level-1 CD descriptor for the substream has V=0.
    L1Invalid,
    /// Reading the CD table at this IPA failed (not RAM).
    FetchAbort(Ipa),
}

/// The shape of a guest's CD table.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum CdTableFormat {
    /// S1CDMax = 0: S1ContextPtr points at one CD.
    Single,
    /// A linear table of 2^S1CDMax CDs.
    Linear,
    /// Level-1 descriptors to leaf tables of 2^`leaf_log2` CDs (64 or 1024).
    TwoLevel {
        /// log2 of the CDs per leaf table: 6 (4 KiB leaves) or 10 (64 KiB leaves).
        leaf_log2: u8,
    },
}

/// Where a guest's CD table is, from a validated STE.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct GuestCdTable {
    /// S1ContextPtr: the CD or the level-1 table, an IPA.
    pub ptr: Ipa,
    /// The table's shape.
    pub format: CdTableFormat,
    /// log2 of the number of CDs.
    pub s1cdmax: u8,
}

impl GuestCdTable {
    /// The bytes S1ContextPtr addresses: the one CD, the linear table, or the level-1 table.
    #[must_use]
    pub fn first_level_bytes(&self) -> u64 {
        match self.format {
            CdTableFormat::Single => 64,
            CdTableFormat::Linear => 64 << self.s1cdmax,
            CdTableFormat::TwoLevel { leaf_log2 } => {
                8 << u32::from(self.s1cdmax.saturating_sub(leaf_log2))
            }
        }
    }
}

/// The IPA of virtual stream `vsid`'s STE, walking the guest's stream table as configured in
/// `base`/`cfg`, with the vSMMU's `sid_bits`.
///
/// # Errors
///
/// [`SteFault::StreamIdOutOfRange`] or [`SteFault::FetchAbort`].
pub(crate) fn locate_ste(
    memory: &impl GuestMemory,
    base: StrtabBase,
    cfg: StrtabBaseCfg,
    sid_bits: u8,
    vsid: VirtualStreamId,
) -> Result<Ipa, SteFault> {
    let log2size = cfg.log2size().min(sid_bits);
    if u64::from(vsid.0) >> log2size != 0 {
        return Err(SteFault::StreamIdOutOfRange);
    }
    let table = Ipa(base.addr().0);
    match cfg.fmt() {
        Ok(StreamTableFormat::Linear) => table
            .checked_add(u64::from(vsid.0) * 64)
            .ok_or(SteFault::StreamIdOutOfRange),
        Ok(StreamTableFormat::TwoLevel) => {
            let split = cfg.split();
            if !matches!(split, 6 | 8 | 10) {
                // SPLIT takes only these values: a table built with another cannot be walked.
                return Err(SteFault::StreamIdOutOfRange);
            }
            let l1_index = if split >= log2size {
                0
            } else {
                u64::from(vsid.0 >> split)
            };
            let l1_address = table
                .checked_add(l1_index * 8)
                .ok_or(SteFault::StreamIdOutOfRange)?;
            let [raw] = read_words::<1>(memory, l1_address)
                .map_err(|_| SteFault::FetchAbort(l1_address))?;
            let descriptor = StreamTableL1Descriptor::from_raw(raw);
            let span = descriptor.span();
            if span == 0 || span > split + 1 {
                return Err(SteFault::StreamIdOutOfRange);
            }
            let within = u64::from(vsid.0) & ((1 << split) - 1);
            if within >= descriptor.ste_count() {
                return Err(SteFault::StreamIdOutOfRange);
            }
            // L2Ptr is aligned to its table's size: bits below it are taken as zero.
            let l2_bytes = descriptor.ste_count() * 64;
            let l2 = descriptor.l2_ptr().0 & !(l2_bytes - 1);
            Ipa(l2)
                .checked_add(within * 64)
                .ok_or(SteFault::StreamIdOutOfRange)
        }
        // FMT 2 and 3 are reserved: no stream can be found.
        Err(_) => Err(SteFault::StreamIdOutOfRange),
    }
}

/// Copies the STE at `ipa` out of guest memory.
///
/// # Errors
///
/// [`SteFault::FetchAbort`] if it is not in RAM.
pub(crate) fn read_ste(memory: &impl GuestMemory, ipa: Ipa) -> Result<Ste, SteFault> {
    read_words::<8>(memory, ipa)
        .map(Ste::from_words)
        .map_err(|_| SteFault::FetchAbort(ipa))
}

/// Copies the CD of substream `ssid` out of `table`, through a level-1 descriptor for a
/// two-level table. The caller has checked `ssid < 2^s1cdmax`.
///
/// # Errors
///
/// A [`CdFault`].
pub(crate) fn read_cd(
    memory: &impl GuestMemory,
    table: &GuestCdTable,
    ssid: u32,
) -> Result<Cd, CdFault> {
    let cd_address = match table.format {
        CdTableFormat::Single => table.ptr,
        CdTableFormat::Linear => table
            .ptr
            .checked_add(u64::from(ssid) * 64)
            .ok_or(CdFault::FetchAbort(table.ptr))?,
        CdTableFormat::TwoLevel { leaf_log2 } => {
            let l1_index = u64::from(ssid >> leaf_log2);
            let l1_address = table
                .ptr
                .checked_add(l1_index * 8)
                .ok_or(CdFault::FetchAbort(table.ptr))?;
            let [raw] =
                read_words::<1>(memory, l1_address).map_err(|_| CdFault::FetchAbort(l1_address))?;
            let descriptor = CdTableL1Descriptor::from_raw(raw);
            if !descriptor.v() {
                return Err(CdFault::L1Invalid);
            }
            let leaf_bytes = 64u64 << leaf_log2;
            let leaf = descriptor.l2_ptr().0 & !(leaf_bytes - 1);
            let within = u64::from(ssid) & ((1 << leaf_log2) - 1);
            Ipa(leaf)
                .checked_add(within * 64)
                .ok_or(CdFault::FetchAbort(Ipa(leaf)))?
        }
    };
    read_words::<8>(memory, cd_address)
        .map(Cd::from_words)
        .map_err(|_| CdFault::FetchAbort(cd_address))
}

/// The range a CD table's first level occupies, for the RAM check at STE validation.
pub(crate) fn first_level_range(table: &GuestCdTable) -> IpaRange {
    IpaRange::new(table.ptr, table.first_level_bytes())
}
