//! Simulated PCIe functions behind the SMMU: DMA (untranslated, and translated through an ATC),
//! ATS translation requests, PRI page request groups and stop markers, and the function's side
//! of PRG responses (PCIe ATS/PRI behaviour, as IHI 0070 3.9 and chapter 8 expect of it).
//!
//! This module owns [`PcieFunction`] (a handle, like [`SmmuModel`]) and the function's state
//! ([`Endpoint`]: its ATC, its device-side buffer, its outstanding page request groups, the PRG
//! responses it has received). The state lives inside the model so that an ATS invalidation
//! completed by a CMD_SYNC reaches the ATC before the sync is seen complete, as the
//! architecture requires; responses, in contrast, are only queued at the function and acted on
//! when the test calls [`PcieFunction::handle_responses`], so an interleaving explorer decides
//! when the device reacts.
//!
//! What a function does with a response (PCIe PRI): Success, retry the group's translations
//! (ATS translation requests, whose results fill the ATC); Invalid Request, give up on the
//! group; Response Failure, stop using PRI altogether.

use std::collections::{BTreeMap, VecDeque};

use crate::events::PriFields;
use crate::model::{QueueWrite, SmmuModel, State};
use crate::structures::decode_ste;
use crate::trace::{
    Generation, PageRequestFate, ResponseCode, ResponseSource, TraceEvent, TransactionResult,
};
use crate::translate::{AtsCompletion, Lookup, Outcome, Transaction, result_of};
use crate::walk::Access;

/// A function's PCIe capabilities and behaviour.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[allow(clippy::struct_excessive_bools)] // One per capability.
pub struct FunctionConfig {
    /// The PASID capability is enabled: requests may carry a PASID.
    pub pasid: bool,
    /// ATS is enabled.
    pub ats: bool,
    /// PRI is enabled.
    pub pri: bool,
    /// PRI Status "PRG Response PASID Required": a response must carry the group's PASID.
    pub prg_response_pasid_required: bool,
    /// The largest DMA transaction in bytes (Max Payload Size); transactions never cross a
    /// 4 KiB boundary.
    pub max_payload: u32,
    /// Outstanding Page Request Allocation: credits for page requests in flight.
    pub pri_credits: u32,
    /// Whether the function respects its credits (a non-compliant one does not, and can
    /// overflow the PRI queue).
    pub respect_credits: bool,
    /// The size of the device's own buffer (QEMU's `edu` has 4 KiB).
    pub buffer_bytes: usize,
}

impl FunctionConfig {
    /// A function like QEMU's `edu` (no PASID, ATS or PRI; a 4 KiB buffer), issuing 128-byte
    /// transactions.
    pub const EDU_LIKE: Self = Self {
        pasid: false,
        ats: false,
        pri: false,
        prg_response_pasid_required: false,
        max_payload: 128,
        pri_credits: 0,
        respect_credits: true,
        buffer_bytes: 4096,
    };

    /// A function with PASID, ATS and PRI (32 credits, PASID required on responses).
    pub const SVA_CAPABLE: Self = Self {
        pasid: true,
        ats: true,
        pri: true,
        prg_response_pasid_required: true,
        pri_credits: 32,
        ..Self::EDU_LIKE
    };
}

/// One ATC entry: a 4 KiB translation the function may use without asking the SMMU.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[allow(clippy::struct_excessive_bools)] // One per permission.
pub struct AtcEntry {
    /// The PASID it was requested under.
    pub ssid: Option<u32>,
    /// The untranslated page.
    pub page: u64,
    /// The translated page.
    pub pa: u64,
    /// Read allowed.
    pub read: bool,
    /// Write allowed.
    pub write: bool,
    /// Execute allowed.
    pub exec: bool,
    /// The address-space generation that produced it.
    pub generation: Option<Generation>,
}

/// A page of a page request group.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[allow(clippy::struct_excessive_bools)] // One per PRI bit.
pub struct PageRequest {
    /// The page's untranslated address.
    pub address: u64,
    /// Read access requested.
    pub read: bool,
    /// Write access requested.
    pub write: bool,
    /// Execute access requested.
    pub exec: bool,
    /// Privileged access requested.
    pub privileged: bool,
}

/// A page request group the function has sent and not had answered.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PageRequestGroup {
    /// PRGIndex.
    pub index: u16,
    /// PASID.
    pub ssid: Option<u32>,
    /// The pages.
    pub pages: Vec<PageRequest>,
    /// The generation live when the group was sent.
    pub generation: Option<Generation>,
    /// What became of each request at the SMMU.
    pub fates: Vec<PageRequestFate>,
}

/// A PRG response as the function receives it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PrgResponse {
    /// PRGIndex.
    pub prg_index: u16,
    /// The PASID carried, if any.
    pub ssid: Option<u32>,
    /// The response code.
    pub code: ResponseCode,
    /// Who sent it.
    pub source: ResponseSource,
    /// The generation live when it was sent.
    pub generation: Option<Generation>,
}

/// What the function did with one response.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ResponseHandled {
    /// Success: the group's pages were translated again (ATS), in order.
    Retried {
        /// The group.
        group: PageRequestGroup,
        /// The response.
        response: PrgResponse,
        /// Each page's translation completion.
        completions: Vec<AtsCompletion>,
    },
    /// Invalid Request: the function gave up on the group.
    GaveUp {
        /// The group.
        group: PageRequestGroup,
        /// The response.
        response: PrgResponse,
    },
    /// Response Failure: the function stopped using PRI.
    PriStopped {
        /// The group answered, if it was outstanding.
        group: Option<PageRequestGroup>,
        /// The response.
        response: PrgResponse,
    },
    /// No outstanding group matched (index unknown, or PASID missing/different while
    /// required): PCIe's Unexpected Page Request Group Index.
    Unexpected {
        /// The response.
        response: PrgResponse,
    },
}

impl ResponseHandled {
    /// For a retried group: the generation it was sent under and the first different one a
    /// retried translation was resolved under. A page request that crosses from one generation
    /// of its PASID to the next (answered, or retried, after the PASID was rebound).
    #[must_use]
    pub fn crossing(&self) -> Option<(Generation, Generation)> {
        let Self::Retried {
            group, completions, ..
        } = self
        else {
            return None;
        };
        let sent = group.generation?;
        completions.iter().find_map(|c| match *c {
            AtsCompletion::Success {
                generation: Some(g),
                ..
            } if g != sent => Some((sent, g)),
            _ => None,
        })
    }
}

/// A transaction that stalled and was later retried or terminated.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LateCompletion {
    /// The STAG it stalled with.
    pub stag: u16,
    /// The transaction.
    pub transaction: Transaction,
    /// How it ended.
    pub result: TransactionResult,
    /// For a read that completed, the data.
    pub data: Option<Vec<u8>>,
}

/// Why a function could not do what it was asked.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FunctionError {
    /// The capability is not enabled (PASID, ATS, PRI), or PRI stopped after a Response
    /// Failure.
    NotEnabled,
    /// Not enough PRI credits for the group.
    NoCredit,
    /// Every PRG index is in use.
    NoPrgIndex,
    /// A translated access without an ATC entry allowing it.
    AtcMiss,
    /// The device buffer is too small.
    BufferTooSmall,
}

/// What a DMA transfer met, per transaction.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct DmaReport {
    /// Transactions issued.
    pub transactions: u32,
    /// Transactions that reached memory.
    pub completed: u32,
    /// Transactions terminated with an abort (SMMU or memory system).
    pub aborted: u32,
    /// Transactions terminated RAZ/WI.
    pub raz_wi: u32,
    /// Transactions stalled.
    pub stalled: u32,
}

impl DmaReport {
    fn count(&mut self, result: TransactionResult) {
        self.transactions += 1;
        match result {
            TransactionResult::Completed { .. } => self.completed += 1,
            TransactionResult::Aborted { .. } | TransactionResult::BusError { .. } => {
                self.aborted += 1;
            }
            TransactionResult::RazWi { .. } => self.raz_wi += 1,
            TransactionResult::Stalled { .. } => self.stalled += 1,
        }
    }

    /// Every transaction reached memory.
    #[must_use]
    pub const fn all_completed(&self) -> bool {
        self.completed == self.transactions
    }
}

/// The function's state, held by the model.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    config: FunctionConfig,
    atc: Vec<AtcEntry>,
    buffer: Vec<u8>,
    groups: BTreeMap<u16, PageRequestGroup>,
    inbox: VecDeque<PrgResponse>,
    pri_stopped: bool,
    stopped_pasids: Vec<u32>,
    late: Vec<LateCompletion>,
    next_prg: u16,
}

impl Endpoint {
    fn new(config: FunctionConfig) -> Self {
        Self {
            config,
            atc: Vec::new(),
            buffer: vec![0; config.buffer_bytes],
            groups: BTreeMap::new(),
            inbox: VecDeque::new(),
            pri_stopped: false,
            stopped_pasids: Vec::new(),
            late: Vec::new(),
            next_prg: 0,
        }
    }

    /// An ATS invalidation: with a PASID, that PASID's entries in the range; without, every
    /// entry in the range whatever its PASID (PCIe ATS). Returns how many went.
    pub(crate) fn invalidate_atc(&mut self, ssid: Option<u32>, start: u64, end: u64) -> usize {
        let before = self.atc.len();
        self.atc.retain(|e| {
            let in_range = e.page < end && start < e.page.saturating_add(4096);
            let pasid_matches = ssid.is_none() || e.ssid == ssid;
            !(in_range && pasid_matches)
        });
        before - self.atc.len()
    }

    fn outstanding_requests(&self) -> u32 {
        self.groups
            .values()
            .map(|g| u32::try_from(g.pages.len()).unwrap_or(u32::MAX))
            .sum()
    }
}

impl State {
    /// A PRG response reaching function `sid` (from CMD_PRI_RESP or automatic).
    pub(crate) fn deliver_prg_response(
        &mut self,
        sid: u32,
        ssid: Option<u32>,
        prg_index: u16,
        code: ResponseCode,
        source: ResponseSource,
    ) {
        let live = self.live_generation(sid, ssid);
        let response = PrgResponse {
            prg_index,
            ssid,
            code,
            source,
            generation: live,
        };
        match self.endpoints.get_mut(&sid) {
            Some(endpoint) => endpoint.inbox.push_back(response),
            // The function is busy sending (an automatic response to its own request).
            None => self.mailbox.push((sid, response)),
        }
        self.trace.push(TraceEvent::PrgResponse {
            sid,
            ssid,
            prg_index,
            code,
            source,
            live,
        });
    }

    /// A page request (or stop marker) arriving at the SMMU (IHI 0070 chapter 8).
    pub(crate) fn page_request(&mut self, request: PriFields) -> PageRequestFate {
        let live = self.live_generation(request.sid, request.ssid);
        let stop = request.is_stop_marker();
        let fate = match self.write_page_request(request.encode()) {
            QueueWrite::Written(index) => PageRequestFate::Queued { index },
            // PRIQEN = 0 (or SMMUEN = 0), PRIQ_ABT_ERR active, or a write that aborted: every
            // page request is answered Response Failure without PASID (8.2).
            QueueWrite::Unavailable | QueueWrite::Aborted if !stop => {
                self.deliver_prg_response(
                    request.sid,
                    None,
                    request.prg_index,
                    ResponseCode::ResponseFailure,
                    ResponseSource::QueueUnavailable,
                );
                PageRequestFate::AutoResponded(ResponseCode::ResponseFailure)
            }
            // In overflow, a Last request is answered automatically (8.1); others and stop
            // markers are dropped.
            QueueWrite::Full if request.last && !stop => {
                let (code, ssid) = self.overflow_response(&request);
                self.deliver_prg_response(
                    request.sid,
                    ssid,
                    request.prg_index,
                    code,
                    ResponseSource::Overflow,
                );
                PageRequestFate::AutoResponded(code)
            }
            _ => PageRequestFate::Discarded,
        };
        self.trace.push(TraceEvent::PageRequest {
            sid: request.sid,
            ssid: request.ssid,
            prg_index: request.prg_index,
            last: request.last,
            stop_marker: stop,
            fate,
            live,
        });
        fate
    }

    /// The automatic response to a Last request discarded in overflow (8.1): Success, with the
    /// request's PASID if IDR3.PPS or the STE's PPAR say so; Response Failure without PASID if
    /// the STE cannot be found to check PPAR.
    fn overflow_response(&mut self, request: &PriFields) -> (ResponseCode, Option<u32>) {
        let Some(ssid) = request.ssid.filter(|_| self.features().ssidsize != 0) else {
            return (ResponseCode::Success, None);
        };
        if self.features().pps {
            return (ResponseCode::Success, Some(ssid));
        }
        let e2h = self.regs.cr2 & 1 != 0;
        let ste = if self.smmu_enabled() {
            self.fetch_ste_for_ppar(request.sid)
                .and_then(|raw| decode_ste(raw, self.features(), e2h).ok())
        } else {
            None
        };
        match ste {
            Some(ste) if ste.ppar => (ResponseCode::Success, Some(ssid)),
            Some(_) => (ResponseCode::Success, None),
            None => (ResponseCode::ResponseFailure, None),
        }
    }

    /// A transaction stalled earlier has been retried or terminated: tells its function,
    /// performing a write's data if it completed.
    pub(crate) fn complete_late(&mut self, stalled: crate::stall::Stalled, outcome: Outcome) {
        let tx = stalled.tx;
        let mut result = result_of(outcome);
        let mut data = None;
        if let Outcome::Completed { pa } = outcome {
            match &stalled.payload {
                Some(bytes) => {
                    if self.memory.write_bytes(pa, bytes).is_err() {
                        result = TransactionResult::BusError { pa };
                    }
                }
                None => {
                    let mut buffer = vec![0; 8];
                    if self.memory.read_bytes(pa, &mut buffer).is_err() {
                        result = TransactionResult::BusError { pa };
                    } else {
                        data = Some(buffer);
                    }
                }
            }
        }
        if let Some(endpoint) = self.endpoints.get_mut(&tx.sid) {
            endpoint.late.push(LateCompletion {
                stag: stalled.stag,
                transaction: tx,
                result,
                data,
            });
        }
    }

    /// One untranslated transaction of a DMA, performing its memory access.
    fn dma_transaction(
        &mut self,
        tx: &Transaction,
        write: Option<&[u8]>,
        read: Option<&mut [u8]>,
    ) -> TransactionResult {
        let outcome = self.transaction(tx, write.map(<[u8]>::to_vec));
        match outcome {
            Outcome::Completed { pa } => {
                let ok = match (write, read) {
                    (Some(bytes), _) => self.memory.write_bytes(pa, bytes).is_ok(),
                    (None, Some(buffer)) => self.memory.read_bytes(pa, buffer).is_ok(),
                    (None, None) => true,
                };
                if ok {
                    TransactionResult::Completed { pa }
                } else {
                    TransactionResult::BusError { pa }
                }
            }
            Outcome::RazWi { event } => {
                if let Some(buffer) = read {
                    buffer.fill(0);
                }
                TransactionResult::RazWi { event }
            }
            other => result_of(other),
        }
    }
}

/// The pieces of a DMA: (offset in the transfer, length), each at most `max_payload` bytes and
/// never crossing a 4 KiB boundary of the address.
fn chunks(address: u64, length: usize, max_payload: u32) -> Vec<(usize, usize)> {
    let mut pieces = Vec::new();
    let mut offset = 0usize;
    let max = usize::try_from(max_payload.max(1)).unwrap_or(usize::MAX);
    while offset < length {
        let at = address.wrapping_add(offset as u64);
        let to_boundary = usize::try_from(4096 - (at & 0xfff)).unwrap_or(4096);
        let piece = (length - offset).min(max).min(to_boundary);
        pieces.push((offset, piece));
        offset += piece;
    }
    pieces
}

/// A simulated PCIe function behind the model's SMMU. Clones share the function.
#[derive(Clone, Debug)]
pub struct PcieFunction {
    model: SmmuModel,
    sid: u32,
}

impl SmmuModel {
    /// Attaches a function with `config` at StreamID `sid` (replacing any function there).
    #[must_use]
    pub fn attach_function(&self, sid: u32, config: FunctionConfig) -> PcieFunction {
        self.state
            .borrow_mut()
            .endpoints
            .insert(sid, Endpoint::new(config));
        PcieFunction {
            model: self.clone(),
            sid,
        }
    }
}

impl State {
    /// The STE of `sid` for a PPAR check (through the configuration cache).
    fn fetch_ste_for_ppar(&mut self, sid: u32) -> Option<[u64; 8]> {
        self.fetch_ste(sid, Lookup::Cached).ok().map(|ste| ste.raw)
    }
}

impl PcieFunction {
    /// The function's StreamID (its RequesterID).
    #[must_use]
    pub fn sid(&self) -> u32 {
        self.sid
    }

    fn with<R>(&self, f: impl FnOnce(&mut State, &mut Endpoint) -> R) -> Option<R> {
        let mut state = self.model.state.borrow_mut();
        let mut endpoint = state.endpoints.remove(&self.sid)?;
        let result = f(&mut state, &mut endpoint);
        let (mine, others): (Vec<_>, Vec<_>) = std::mem::take(&mut state.mailbox)
            .into_iter()
            .partition(|(sid, _)| *sid == self.sid);
        state.mailbox = others;
        endpoint
            .inbox
            .extend(mine.into_iter().map(|(_, response)| response));
        state.endpoints.insert(self.sid, endpoint);
        Some(result)
    }

    fn config(&self) -> Option<FunctionConfig> {
        self.with(|_, e| e.config)
    }

    /// The function's configuration now.
    #[must_use]
    pub fn function_config(&self) -> FunctionConfig {
        self.config().unwrap_or(FunctionConfig::EDU_LIKE)
    }

    /// Changes the function's configuration (a device turning a capability on or off, or
    /// starting to ignore its PRI credits).
    pub fn reconfigure(&self, change: impl FnOnce(&mut FunctionConfig)) {
        self.with(|_, e| change(&mut e.config));
    }

    fn access(write: bool) -> Access {
        if write { Access::WRITE } else { Access::READ }
    }

    /// Writes `data` at `iova` with untranslated transactions.
    #[must_use]
    pub fn dma_write(&self, ssid: Option<u32>, iova: u64, data: &[u8]) -> DmaReport {
        let sid = self.sid;
        self.with(|state, endpoint| {
            let mut report = DmaReport::default();
            for (offset, length) in chunks(iova, data.len(), endpoint.config.max_payload) {
                let tx = Transaction {
                    sid,
                    ssid,
                    address: iova.wrapping_add(offset as u64),
                    access: Self::access(true),
                };
                let bytes = data.get(offset..offset + length).unwrap_or_default();
                report.count(state.dma_transaction(&tx, Some(bytes), None));
            }
            report
        })
        .unwrap_or_default()
    }

    /// Reads `length` bytes at `iova` with untranslated transactions. Bytes of transactions
    /// that did not complete read as zero.
    #[must_use]
    pub fn dma_read(&self, ssid: Option<u32>, iova: u64, length: usize) -> (Vec<u8>, DmaReport) {
        let sid = self.sid;
        self.with(|state, endpoint| {
            let mut data = vec![0; length];
            let mut report = DmaReport::default();
            for (offset, piece) in chunks(iova, length, endpoint.config.max_payload) {
                let tx = Transaction {
                    sid,
                    ssid,
                    address: iova.wrapping_add(offset as u64),
                    access: Self::access(false),
                };
                let buffer = data.get_mut(offset..offset + piece).unwrap_or_default();
                report.count(state.dma_transaction(&tx, None, Some(buffer)));
            }
            (data, report)
        })
        .unwrap_or_default()
    }

    /// Like `edu`'s RAM-to-device DMA: reads `length` bytes at `iova` into the device buffer.
    ///
    /// # Errors
    ///
    /// [`FunctionError::BufferTooSmall`].
    pub fn copy_to_buffer(
        &self,
        ssid: Option<u32>,
        iova: u64,
        length: usize,
    ) -> Result<DmaReport, FunctionError> {
        if self.config().is_none_or(|c| c.buffer_bytes < length) {
            return Err(FunctionError::BufferTooSmall);
        }
        let (data, report) = self.dma_read(ssid, iova, length);
        self.with(|_, endpoint| {
            if let Some(buffer) = endpoint.buffer.get_mut(..length) {
                buffer.copy_from_slice(&data);
            }
        });
        Ok(report)
    }

    /// Like `edu`'s device-to-RAM DMA: writes the first `length` bytes of the device buffer at
    /// `iova`.
    ///
    /// # Errors
    ///
    /// [`FunctionError::BufferTooSmall`].
    pub fn copy_from_buffer(
        &self,
        ssid: Option<u32>,
        iova: u64,
        length: usize,
    ) -> Result<DmaReport, FunctionError> {
        let data = self
            .with(|_, endpoint| endpoint.buffer.get(..length).map(<[u8]>::to_vec))
            .flatten()
            .ok_or(FunctionError::BufferTooSmall)?;
        Ok(self.dma_write(ssid, iova, &data))
    }

    /// The device buffer's content.
    #[must_use]
    pub fn buffer(&self) -> Vec<u8> {
        self.with(|_, e| e.buffer.clone()).unwrap_or_default()
    }

    /// Sets the device buffer's content (from offset 0).
    pub fn fill_buffer(&self, data: &[u8]) {
        self.with(|_, e| {
            let n = data.len().min(e.buffer.len());
            if let (Some(to), Some(from)) = (e.buffer.get_mut(..n), data.get(..n)) {
                to.copy_from_slice(from);
            }
        });
    }

    /// An ATS Translation Request for the page of `iova` (read, plus write unless
    /// `write` is false: NW). A completion that grants anything fills the ATC.
    ///
    /// # Errors
    ///
    /// [`FunctionError::NotEnabled`] if ATS (or PASID, for a `ssid`) is not enabled.
    pub fn ats_translate(
        &self,
        ssid: Option<u32>,
        iova: u64,
        write: bool,
    ) -> Result<AtsCompletion, FunctionError> {
        let sid = self.sid;
        self.with(|state, endpoint| {
            if !endpoint.config.ats || (ssid.is_some() && !endpoint.config.pasid) {
                return Err(FunctionError::NotEnabled);
            }
            let page = iova & !0xfff;
            let tx = Transaction {
                sid,
                ssid,
                address: page,
                access: Self::access(write),
            };
            let live = state.live_generation(sid, ssid);
            let completion = state.ats_translation(&tx);
            let (granted, pa, refused, resolved) = match completion {
                AtsCompletion::Success {
                    pa,
                    read,
                    write,
                    exec,
                    generation,
                } => {
                    if read || write {
                        endpoint.atc.retain(|e| !(e.ssid == ssid && e.page == page));
                        endpoint.atc.push(AtcEntry {
                            ssid,
                            page,
                            pa,
                            read,
                            write,
                            exec,
                            generation,
                        });
                    }
                    (
                        (read, write),
                        (read || write).then_some(pa),
                        false,
                        generation,
                    )
                }
                _ => ((false, false), None, true, None),
            };
            state.trace.push(TraceEvent::AtsTranslation {
                sid,
                ssid,
                address: page,
                granted,
                pa,
                refused,
                resolved,
                live,
            });
            Ok(completion)
        })
        .unwrap_or(Err(FunctionError::NotEnabled))
    }

    /// Writes `data` at `iova` with transactions marked Translated, using the ATC.
    ///
    /// # Errors
    ///
    /// [`FunctionError::AtcMiss`] if a page of the range has no ATC entry allowing writes
    /// (nothing is sent then).
    pub fn translated_write(
        &self,
        ssid: Option<u32>,
        iova: u64,
        data: &[u8],
    ) -> Result<DmaReport, FunctionError> {
        self.translated(ssid, iova, data.len(), Some(data))
            .map(|(_, r)| r)
    }

    /// Reads `length` bytes at `iova` with transactions marked Translated, using the ATC.
    ///
    /// # Errors
    ///
    /// [`FunctionError::AtcMiss`] as [`PcieFunction::translated_write`], for reads.
    pub fn translated_read(
        &self,
        ssid: Option<u32>,
        iova: u64,
        length: usize,
    ) -> Result<(Vec<u8>, DmaReport), FunctionError> {
        self.translated(ssid, iova, length, None)
    }

    fn translated(
        &self,
        ssid: Option<u32>,
        iova: u64,
        length: usize,
        write: Option<&[u8]>,
    ) -> Result<(Vec<u8>, DmaReport), FunctionError> {
        let sid = self.sid;
        self.with(|state, endpoint| {
            let pieces = chunks(iova, length, endpoint.config.max_payload);
            let mut plan = Vec::new();
            for &(offset, piece) in &pieces {
                let address = iova.wrapping_add(offset as u64);
                let entry = endpoint
                    .atc
                    .iter()
                    .find(|e| {
                        e.ssid == ssid
                            && e.page == address & !0xfff
                            && if write.is_some() { e.write } else { e.read }
                    })
                    .ok_or(FunctionError::AtcMiss)?;
                plan.push((
                    offset,
                    piece,
                    entry.pa | (address & 0xfff),
                    entry.generation,
                ));
            }
            let mut data = vec![0; length];
            let mut report = DmaReport::default();
            for (offset, piece, pa, resolved) in plan {
                let live = state.live_generation(sid, ssid);
                let tx = Transaction {
                    sid,
                    ssid,
                    address: pa,
                    access: Self::access(write.is_some()),
                };
                let mut result = result_of(state.translated_transaction(&tx));
                if let TransactionResult::Completed { pa } = result {
                    let ok = match write {
                        Some(bytes) => state
                            .memory
                            .write_bytes(pa, bytes.get(offset..offset + piece).unwrap_or_default())
                            .is_ok(),
                        None => state
                            .memory
                            .read_bytes(
                                pa,
                                data.get_mut(offset..offset + piece).unwrap_or_default(),
                            )
                            .is_ok(),
                    };
                    if !ok {
                        result = TransactionResult::BusError { pa };
                    }
                }
                report.count(result);
                state.trace.push(TraceEvent::TranslatedTransaction {
                    sid,
                    ssid,
                    address: pa,
                    result,
                    resolved,
                    live,
                });
            }
            Ok((data, report))
        })
        .unwrap_or(Err(FunctionError::NotEnabled))
    }

    /// The ATC's entries.
    #[must_use]
    pub fn atc(&self) -> Vec<AtcEntry> {
        self.with(|_, e| e.atc.clone()).unwrap_or_default()
    }

    /// Sends a page request group: one request per page, Last on the final one. Returns the
    /// PRG index.
    ///
    /// # Errors
    ///
    /// [`FunctionError::NotEnabled`] (PRI not enabled, or stopped by a Response Failure; PASID
    /// not enabled for a `ssid`), [`FunctionError::NoCredit`], [`FunctionError::NoPrgIndex`].
    pub fn page_request_group(
        &self,
        ssid: Option<u32>,
        pages: &[PageRequest],
    ) -> Result<u16, FunctionError> {
        let sid = self.sid;
        self.with(|state, endpoint| {
            let c = endpoint.config;
            if !c.pri || endpoint.pri_stopped || (ssid.is_some() && !c.pasid) || pages.is_empty() {
                return Err(FunctionError::NotEnabled);
            }
            let wanted = u32::try_from(pages.len()).unwrap_or(u32::MAX);
            if c.respect_credits && endpoint.outstanding_requests() + wanted > c.pri_credits {
                return Err(FunctionError::NoCredit);
            }
            let index = (0..512u16)
                .map(|i| (endpoint.next_prg + i) % 512)
                .find(|i| !endpoint.groups.contains_key(i))
                .ok_or(FunctionError::NoPrgIndex)?;
            endpoint.next_prg = (index + 1) % 512;
            let generation = state.live_generation(sid, ssid);
            let mut fates = Vec::new();
            for (i, page) in pages.iter().enumerate() {
                fates.push(state.page_request(PriFields {
                    sid,
                    ssid,
                    privileged: page.privileged,
                    exec: page.exec,
                    read: page.read,
                    write: page.write,
                    last: i + 1 == pages.len(),
                    prg_index: index,
                    address: page.address & !0xfff,
                }));
            }
            endpoint.groups.insert(
                index,
                PageRequestGroup {
                    index,
                    ssid,
                    pages: pages.to_vec(),
                    generation,
                    fates,
                },
            );
            Ok(index)
        })
        .unwrap_or(Err(FunctionError::NotEnabled))
    }

    /// Sends the requests of a page request group for `pages` without its Last one: a group
    /// the function is still sending (it may end it later with
    /// [`PcieFunction::end_page_request_group`], or never). Returns the PRG index. The group's
    /// generation is the one live now.
    ///
    /// # Errors
    ///
    /// As [`PcieFunction::page_request_group`] (an empty `pages` is allowed: nothing is sent
    /// yet, the index is taken).
    pub fn begin_page_request_group(
        &self,
        ssid: Option<u32>,
        pages: &[PageRequest],
    ) -> Result<u16, FunctionError> {
        let sid = self.sid;
        self.with(|state, endpoint| {
            let c = endpoint.config;
            if !c.pri || endpoint.pri_stopped || (ssid.is_some() && !c.pasid) {
                return Err(FunctionError::NotEnabled);
            }
            let wanted = u32::try_from(pages.len() + 1).unwrap_or(u32::MAX);
            if c.respect_credits && endpoint.outstanding_requests() + wanted > c.pri_credits {
                return Err(FunctionError::NoCredit);
            }
            let index = (0..512u16)
                .map(|i| (endpoint.next_prg + i) % 512)
                .find(|i| !endpoint.groups.contains_key(i))
                .ok_or(FunctionError::NoPrgIndex)?;
            endpoint.next_prg = (index + 1) % 512;
            let generation = state.live_generation(sid, ssid);
            let mut fates = Vec::new();
            for page in pages {
                fates.push(state.page_request(PriFields {
                    sid,
                    ssid,
                    privileged: page.privileged,
                    exec: page.exec,
                    read: page.read,
                    write: page.write,
                    last: false,
                    prg_index: index,
                    address: page.address & !0xfff,
                }));
            }
            endpoint.groups.insert(
                index,
                PageRequestGroup {
                    index,
                    ssid,
                    pages: pages.to_vec(),
                    generation,
                    fates,
                },
            );
            Ok(index)
        })
        .unwrap_or(Err(FunctionError::NotEnabled))
    }

    /// Sends the Last request, for `page`, of group `index` begun with
    /// [`PcieFunction::begin_page_request_group`] and not yet answered.
    ///
    /// # Errors
    ///
    /// [`FunctionError::NotEnabled`] if PRI stopped or no such group is outstanding.
    pub fn end_page_request_group(
        &self,
        index: u16,
        page: PageRequest,
    ) -> Result<PageRequestFate, FunctionError> {
        let sid = self.sid;
        self.with(|state, endpoint| {
            if endpoint.pri_stopped {
                return Err(FunctionError::NotEnabled);
            }
            let group = endpoint
                .groups
                .get_mut(&index)
                .ok_or(FunctionError::NotEnabled)?;
            let fate = state.page_request(PriFields {
                sid,
                ssid: group.ssid,
                privileged: page.privileged,
                exec: page.exec,
                read: page.read,
                write: page.write,
                last: true,
                prg_index: index,
                address: page.address & !0xfff,
            });
            group.pages.push(page);
            group.fates.push(fate);
            Ok(fate)
        })
        .unwrap_or(Err(FunctionError::NotEnabled))
    }

    /// Sends a stop marker for `ssid`: the function has stopped using the PASID and has no
    /// requests for it in flight (it expects no response).
    ///
    /// # Errors
    ///
    /// [`FunctionError::NotEnabled`] if PRI or PASID is not enabled.
    pub fn stop_marker(&self, ssid: u32) -> Result<PageRequestFate, FunctionError> {
        let sid = self.sid;
        self.with(|state, endpoint| {
            if !endpoint.config.pri || !endpoint.config.pasid {
                return Err(FunctionError::NotEnabled);
            }
            endpoint.stopped_pasids.push(ssid);
            Ok(state.page_request(PriFields {
                sid,
                ssid: Some(ssid),
                last: true,
                ..PriFields::default()
            }))
        })
        .unwrap_or(Err(FunctionError::NotEnabled))
    }

    /// The responses received and not yet handled.
    #[must_use]
    pub fn pending_responses(&self) -> Vec<PrgResponse> {
        self.with(|_, e| e.inbox.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The groups sent and not yet answered.
    #[must_use]
    pub fn outstanding_groups(&self) -> Vec<PageRequestGroup> {
        self.with(|_, e| e.groups.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Resets PRI at the function (PCIe PRI Control Reset): it may send requests again, and
    /// forgets every outstanding group and unhandled response.
    pub fn reset_pri(&self) {
        self.with(|_, e| {
            e.pri_stopped = false;
            e.groups.clear();
            e.inbox.clear();
        });
    }

    /// Whether PRI stopped after a Response Failure.
    #[must_use]
    pub fn pri_stopped(&self) -> bool {
        self.with(|_, e| e.pri_stopped).unwrap_or(false)
    }

    /// Stalled transactions that have since completed or been terminated.
    pub fn take_late_completions(&self) -> Vec<LateCompletion> {
        self.with(|_, e| std::mem::take(&mut e.late))
            .unwrap_or_default()
    }

    /// Acts on every response received, in order (see the module docs).
    pub fn handle_responses(&self) -> Vec<ResponseHandled> {
        let mut handled = Vec::new();
        // Bounded by the responses queued now: handling one sends no new response.
        while let Some(Some((response, group, required))) = self.with(|_, e| {
            e.inbox.pop_front().map(|response| {
                let required = e.config.prg_response_pasid_required;
                let group = e.groups.get(&response.prg_index).cloned();
                (response, group, required)
            })
        }) {
            let matches = group
                .as_ref()
                .is_some_and(|g| !required || g.ssid.is_none() || g.ssid == response.ssid);
            let group = match (group, matches) {
                (Some(group), true) => group,
                _ => {
                    if response.code == ResponseCode::ResponseFailure {
                        self.with(|_, e| e.pri_stopped = true);
                        handled.push(ResponseHandled::PriStopped {
                            group: None,
                            response,
                        });
                    } else {
                        handled.push(ResponseHandled::Unexpected { response });
                    }
                    continue;
                }
            };
            self.with(|_, e| e.groups.remove(&group.index));
            match response.code {
                ResponseCode::Success => {
                    let completions = group
                        .pages
                        .iter()
                        .map(|page| {
                            self.ats_translate(group.ssid, page.address, page.write)
                                .unwrap_or(AtsCompletion::UnsupportedRequest)
                        })
                        .collect();
                    handled.push(ResponseHandled::Retried {
                        group,
                        response,
                        completions,
                    });
                }
                ResponseCode::InvalidRequest => {
                    handled.push(ResponseHandled::GaveUp { group, response });
                }
                ResponseCode::ResponseFailure => {
                    self.with(|_, e| e.pri_stopped = true);
                    handled.push(ResponseHandled::PriStopped {
                        group: Some(group),
                        response,
                    });
                }
            }
        }
        handled
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::chunks;

    #[test]
    fn dma_is_split_at_the_payload_size_and_at_page_boundaries() {
        assert_eq!(chunks(0x1000, 256, 128), vec![(0, 128), (128, 128)]);
        assert_eq!(chunks(0x1ffc, 8, 128), vec![(0, 4), (4, 4)]);
        assert_eq!(chunks(0x1000, 8, 4), vec![(0, 4), (4, 4)]);
        assert!(chunks(0, 0, 128).is_empty());
    }
}
