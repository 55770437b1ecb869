//! The stall fault model (IHI 0070 3.12.2, 4.7.1, 4.7.2): a transaction that meets a
//! translation-related fault with S = 1 is held, its event carries Stall = 1 and a STAG, and
//! CMD_RESUME retries or terminates it; CMD_STALL_TERM or SMMUEN going to 0 terminates every
//! one of a stream's.
//!
//! This module owns the stalled transactions and their stall events, which are never discarded
//! (a queue that cannot take one keeps it until it can, without an overflow). When a stalled
//! transaction finally completes, its function is told (`pcie`'s late completions).

use crate::model::{QueueWrite, State};
use crate::translate::{Fault, Outcome, Transaction};

/// A transaction held by the SMMU.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct Stalled {
    pub(crate) stag: u16,
    pub(crate) tx: Transaction,
    /// A write's data, performed if a retry completes.
    pub(crate) payload: Option<Vec<u8>>,
}

impl State {
    /// Stalls `tx`, recording its event (kept if the queue cannot take it now). `None` when
    /// the SMMU already holds STALL_MAX transactions: the transaction is then terminated.
    pub(crate) fn stall(
        &mut self,
        tx: &Transaction,
        fault: &Fault,
        payload: Option<Vec<u8>>,
    ) -> Option<u16> {
        if self.stalls.len() >= usize::from(self.features().stall_max) {
            return None;
        }
        let mut stag = self.next_stag;
        // STAGs of held transactions are not reused.
        while self.stalls.iter().any(|s| s.stag == stag) {
            stag = stag.wrapping_add(1);
        }
        self.next_stag = stag.wrapping_add(1);
        let record = Self::event_record(tx, fault, Some(stag));
        if !matches!(self.write_stall_event(record), QueueWrite::Written(_)) {
            self.pending_stall_events.push(record);
        }
        self.stalls.push(Stalled {
            stag,
            tx: *tx,
            payload,
        });
        Some(stag)
    }

    /// Writes the stall events that could not be written, in order, while the queue takes them.
    pub(crate) fn flush_stall_events(&mut self) {
        while let Some(&record) = self.pending_stall_events.first() {
            if !matches!(self.write_stall_event(record), QueueWrite::Written(_)) {
                return;
            }
            self.pending_stall_events.remove(0);
        }
    }

    /// CMD_RESUME: retry (as a new arrival) or terminate the transaction `stag` of `sid`; no
    /// effect if there is none.
    pub(crate) fn resume(&mut self, sid: u32, stag: u16, retry: bool, abort: bool) {
        let Some(position) = self
            .stalls
            .iter()
            .position(|s| s.tx.sid == sid && s.stag == stag)
        else {
            return;
        };
        let stalled = self.stalls.remove(position);
        let outcome = if retry {
            self.transaction(&stalled.tx, stalled.payload.clone())
        } else if abort || self.features().term_model_abort_only {
            Outcome::Aborted { event: 0 }
        } else {
            Outcome::RazWi { event: 0 }
        };
        self.complete_late(stalled, outcome);
    }

    /// CMD_STALL_TERM: terminates every transaction `sid` has stalled, with an abort.
    pub(crate) fn stall_term(&mut self, sid: u32) {
        let (mine, others): (Vec<_>, Vec<_>) = std::mem::take(&mut self.stalls)
            .into_iter()
            .partition(|s| s.tx.sid == sid);
        self.stalls = others;
        for stalled in mine {
            self.complete_late(stalled, Outcome::Aborted { event: 0 });
        }
    }

    /// SMMUEN going to 0: every stalled transaction is terminated with an abort.
    pub(crate) fn terminate_all_stalls(&mut self) {
        for stalled in std::mem::take(&mut self.stalls) {
            self.complete_late(stalled, Outcome::Aborted { event: 0 });
        }
    }
}
