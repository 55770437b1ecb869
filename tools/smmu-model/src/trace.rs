//! What the model observed, for tests and for an explorer of interleavings: every DMA
//! transaction, ATS translation, page request, PRG response, ATC invalidation and command,
//! tagged with the address-space generation that resolved it and the one live at the time.
//!
//! This module owns [`Generation`] and the bookkeeping that numbers generations, and the
//! [`TraceEvent`] records. It decides nothing about the SMMU's behaviour.
//!
//! # Generations
//!
//! The address space of a stream's substream (its PASID) is what the CD at that substream's
//! index says, under the STE's stage-2 configuration. The model numbers the distinct contents it
//! sees for each (StreamID, CD index), in the order it first sees them, when it fetches them
//! from memory or takes a live look (below). Content that comes back after a change is the
//! generation it was before: the SMMU cannot tell a rebind to identical tables and ASID from
//! no change, and neither can this bookkeeping. Cached CDs and TLB
//! entries keep the generation they were filled under, so a translation served from a cache
//! reports the generation that produced it ([`TraceEvent`]'s `resolved`), while `live` is the
//! generation memory holds at that moment (read without touching any cache). When the two
//! differ, the SMMU acted on an address space software has already replaced: exactly what a
//! missing invalidation, or a reuse before quiescence, looks like.
//!
//! Streams without stage 1 have one "address space" keyed with no CD index, numbered from the
//! STE's words.

use std::collections::BTreeMap;

use crate::walk::Access;

/// One address-space generation of a (StreamID, CD index).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Hash, PartialOrd, Ord)]
pub struct Generation {
    /// The StreamID.
    pub sid: u32,
    /// The CD index (the SubstreamID, or 0 for non-substream traffic through CD 0); `None` for
    /// a stream without stage 1.
    pub cd_index: Option<u32>,
    /// The generation number, from 1.
    pub number: u64,
}

/// The content that identifies an address space: STE words 0-3 and the CD.
pub(crate) type AddressSpaceContent = [u64; 12];

/// Numbers the address-space contents seen per (StreamID, CD index): each distinct content
/// gets the next number the first time it is seen, and keeps it (so a stale cached copy read
/// after the memory changed still reports the number of the content it holds).
#[derive(Clone, Debug, Default)]
pub(crate) struct Generations {
    seen: BTreeMap<(u32, Option<u32>), Vec<AddressSpaceContent>>,
}

impl Generations {
    /// The generation of `content` for `(sid, cd_index)`.
    pub(crate) fn observe(
        &mut self,
        sid: u32,
        cd_index: Option<u32>,
        content: AddressSpaceContent,
    ) -> Generation {
        let seen = self.seen.entry((sid, cd_index)).or_default();
        let position = match seen.iter().position(|c| *c == content) {
            Some(position) => position,
            None => {
                seen.push(content);
                seen.len() - 1
            }
        };
        Generation {
            sid,
            cd_index,
            number: position as u64 + 1,
        }
    }
}

/// A PCIe PRG Response code (PCIe, as the device receives it; IHI 0070 8.3).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum ResponseCode {
    /// 0b0000: the pages are in; retry the translations.
    Success,
    /// 0b0001: one or more pages could not be made available.
    InvalidRequest,
    /// 0b1111: a permanent failure; the function stops using PRI.
    ResponseFailure,
}

/// Why a PRG response was sent.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum ResponseSource {
    /// CMD_PRI_RESP.
    Command,
    /// Automatic: the PRI queue was in overflow and the request had Last = 1.
    Overflow,
    /// Automatic: PRIQEN = 0, PRIQ_ABT_ERR active, or a queue write aborted.
    QueueUnavailable,
}

/// What became of a page request at the SMMU.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum PageRequestFate {
    /// Written to the PRI queue at this index.
    Queued {
        /// The queue index.
        index: u32,
    },
    /// Discarded; an automatic response was sent (Last = 1 in overflow, or queue unavailable).
    AutoResponded(ResponseCode),
    /// Discarded silently (Last = 0 or a stop marker, in overflow).
    Discarded,
}

/// How a transaction ended, in the trace.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum TransactionResult {
    /// It reached memory at this physical address.
    Completed {
        /// The physical address.
        pa: u64,
    },
    /// The memory system refused the physical address (outside RAM): an abort to the device,
    /// not an SMMU event.
    BusError {
        /// The physical address.
        pa: u64,
    },
    /// Terminated with an abort, with this event ID (recorded or not).
    Aborted {
        /// The event the fault is (0 for silent aborts, e.g. STE.Config = abort or GBPA).
        event: u8,
    },
    /// Terminated with RAZ/WI (CD.A = 0).
    RazWi {
        /// The event.
        event: u8,
    },
    /// Stalled, awaiting CMD_RESUME.
    Stalled {
        /// STAG.
        stag: u16,
    },
}

/// One observation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TraceEvent {
    /// An untranslated (ordinary) transaction or a retried stalled one.
    Transaction {
        /// StreamID.
        sid: u32,
        /// SubstreamID, when SSV = 1.
        ssid: Option<u32>,
        /// The input address.
        address: u64,
        /// What it asked for.
        access: Access,
        /// How it ended.
        result: TransactionResult,
        /// Whether a TLB entry served it.
        tlb_hit: bool,
        /// The generation whose configuration (and cached translation) resolved it.
        resolved: Option<Generation>,
        /// The generation memory held at the time.
        live: Option<Generation>,
    },
    /// A transaction marked Translated (an ATC hit at the function).
    TranslatedTransaction {
        /// StreamID.
        sid: u32,
        /// SubstreamID the function used.
        ssid: Option<u32>,
        /// The (physical) address.
        address: u64,
        /// How it ended.
        result: TransactionResult,
        /// The generation of the ATS translation the function cached.
        resolved: Option<Generation>,
        /// The generation memory held at the time.
        live: Option<Generation>,
    },
    /// An ATS Translation Request and its completion.
    AtsTranslation {
        /// StreamID.
        sid: u32,
        /// SubstreamID (PASID).
        ssid: Option<u32>,
        /// The untranslated address.
        address: u64,
        /// Granted read, write (false, false for a fault answered R = W = 0).
        granted: (bool, bool),
        /// The translated address, if any permission was granted.
        pa: Option<u64>,
        /// UR or CA: the request was refused outright.
        refused: bool,
        /// The generation that resolved it.
        resolved: Option<Generation>,
        /// The generation memory held at the time.
        live: Option<Generation>,
    },
    /// A page request (or stop marker) arriving at the SMMU.
    PageRequest {
        /// StreamID.
        sid: u32,
        /// PASID.
        ssid: Option<u32>,
        /// PRG index.
        prg_index: u16,
        /// Last = 1.
        last: bool,
        /// A stop marker.
        stop_marker: bool,
        /// What the SMMU did with it.
        fate: PageRequestFate,
        /// The generation live when it arrived.
        live: Option<Generation>,
    },
    /// A PRG response delivered to a function.
    PrgResponse {
        /// StreamID.
        sid: u32,
        /// The PASID carried (a response has one only where the rules say so).
        ssid: Option<u32>,
        /// PRG index.
        prg_index: u16,
        /// The code.
        code: ResponseCode,
        /// Who sent it.
        source: ResponseSource,
        /// The generation live when it was sent, for the PASID it names (or the request's).
        live: Option<Generation>,
    },
    /// An ATS invalidation taking effect at a function.
    AtcInvalidation {
        /// StreamID.
        sid: u32,
        /// PASID, when SSV = 1.
        ssid: Option<u32>,
        /// First address.
        start: u64,
        /// One past the last address.
        end: u64,
        /// ATC entries removed.
        removed: usize,
    },
    /// A command consumed (`illegal`: it stopped the queue with CERROR_ILL instead).
    Command {
        /// The opcode.
        opcode: u8,
        /// The queue index.
        index: u32,
        /// It was illegal.
        illegal: bool,
    },
    /// A CMD_SYNC completed; pending invalidations took effect.
    SyncCompleted {
        /// Invalidations applied by it.
        invalidations: usize,
    },
    /// An event record: written to the queue, or lost (queue disabled, full or aborted).
    Event {
        /// The record.
        record: [u64; 4],
        /// Written (else discarded).
        written: bool,
    },
}

impl TraceEvent {
    /// The (resolved, live) generations of a translation the SMMU or a function acted on, when
    /// they differ: the translation came from an address space memory no longer holds (a
    /// stale cache entry, an ATC entry not invalidated, a reuse before quiescence). `None` for
    /// other events and for translations of the live generation.
    #[must_use]
    pub fn crossing(&self) -> Option<(Generation, Generation)> {
        let (resolved, live) = match *self {
            Self::Transaction { resolved, live, .. }
            | Self::TranslatedTransaction { resolved, live, .. }
            | Self::AtsTranslation { resolved, live, .. } => (resolved?, live?),
            _ => return None,
        };
        (resolved != live).then_some((resolved, live))
    }
}

/// Every crossing in `trace`, in order (see [`TraceEvent::crossing`]).
pub fn crossings(trace: &[TraceEvent]) -> Vec<(Generation, Generation)> {
    trace.iter().filter_map(TraceEvent::crossing).collect()
}
