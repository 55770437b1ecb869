//! The PASID lifecycle of a VM's streams: which substream IDs have a live address space, which
//! are parked until the hardware and the device have let go of the old one, and the proofs that
//! move a PASID from one state to the next.
//!
//! ```text
//!  Free ──(a valid CD is shadowed: go_live)──────────────▶ Live(epoch n)
//!  Live(n) ──(another valid CD: replace, hitless)────────▶ Live(n + 1)
//!  Live(n) ──(CD invalid, stream disabled: park)─────────▶ Parked
//!  Parked ──(release(Quiescent))─────────────────────────▶ Free ──▶ Live(m), m > n
//! ```
//!
//! A `Quiescent` is made only by [`ParkedPasid::quiescence`], and only when both hold:
//!
//! - the invalidation made at parking completed: `CMD_TLBI_NH_ASID` for the old ASID and
//!   `CMD_ATC_INV` for the PASID, then a `CMD_SYNC` whose [`SyncProof`] is newer than every
//!   proof the vSMMU held before it submitted them ([`Invalidated`]);
//! - no page request of the old address space can still be in flight: the physical PRI queue
//!   has been drained past the position it had reached when the PASID was parked (so every
//!   request sent before the teardown has been seen, and answered), and no group of the PASID
//!   is left open (requests seen, its Last not yet) unless the device has since sent its stop
//!   marker, which says it completed or abandoned everything before it.
//!
//! A stop marker taken while the PASID was live says nothing about requests the device may
//! have sent after it (a restarted PASID) that are still queued: only the drain can say that,
//! which is why it is required either way. The stop marker is what lets a PASID whose device
//! abandoned a group quiesce; without it such a PASID never does.
//!
//! A [`FreePasid`] comes only from [`PasidTable::claim`] (a PASID never used, or released) and
//! is the only way into [`PasidTable::go_live`]: a PASID cannot go live again while parked
//! because no code path outside this module can make the token, and the one inside demands the
//! proof. A PASID that never quiesces (a device that never sends its stop marker and leaves a
//! group open) stays parked for good: the vSMMU never reuses it.
//!
//! Epochs number address spaces across the whole VM (never reused), so a page request group or
//! a guest response remembers which address space it belonged to.
//!
//! This module owns the table and the tokens; it touches no hardware and no guest memory (the
//! shadow code in [`crate::shadow::cd`] does both and asks here what it may do).

use smmu::domain::{Sequence, SyncProof};
use smmu::driver::PriPosition;

/// The most PASIDs (live or parked) one vSMMU tracks, over all its streams. A CD that would
/// need one more stays invalid in the shadow (the guest sees C_BAD_CD), counted as a refusal.
pub const MAX_TRACKED_PASIDS: usize = 64;

/// A PASID of one of the VM's streams: the stream's slot and the CD index (the SubstreamID;
/// traffic without a PASID uses CD 0).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub(crate) struct PasidKey {
    pub(crate) slot: usize,
    pub(crate) cd: u32,
}

/// One address space of one PASID, numbered across the VM from 1.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash, Default)]
pub struct Epoch(pub u64);

/// The proof that an invalidation submitted at parking completed: made only by
/// [`Invalidated::from_sync`], from a proof newer than the last one held before submission.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Invalidated {
    _private: (),
}

impl Invalidated {
    /// The invalidation commands were submitted after the vSMMU last held a proof numbered
    /// `held_before` (none: it never held one); `proof` is the result of a CMD_SYNC issued after
    /// them. `None` if the proof is not newer.
    pub(crate) fn from_sync(held_before: Option<Sequence>, proof: &SyncProof) -> Option<Self> {
        let newer = held_before.is_none_or(|before| proof.sequence() > before);
        newer.then_some(Self { _private: () })
    }
}

/// A live PASID: its epoch, and where its page requests start in the physical PRI queue.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct LivePasid {
    pub(crate) epoch: Epoch,
    /// Page requests at earlier positions were written before this address space was
    /// reachable: they belong to an earlier one.
    pub(crate) since: PriPosition,
    /// A stop marker was taken after the PASID's last page request.
    pub(crate) stopped: bool,
}

/// A parked PASID: its shadow CD is invalid; it waits for [`ParkedPasid::quiescence`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct ParkedPasid {
    key: PasidKey,
    /// The epoch torn down.
    pub(crate) epoch: Epoch,
    /// The physical PRI queue's write position once the shadow CD was invalid (`None`: the
    /// vSMMU forwards no PRI, so no page request can be in flight).
    teardown: Option<PriPosition>,
    invalidated: Option<Invalidated>,
    /// The old ASID and whether ATC entries may exist, to invalidate again if the first try
    /// did not complete.
    pub(crate) asid: smmu::Asid,
    /// A stop marker was taken after the PASID's last page request.
    stopped: bool,
    /// The guest has installed a valid CD meanwhile: it goes live once the PASID is free.
    pub(crate) waiting: bool,
}

/// Proof that a parked PASID has quiesced (see the module docs).
#[derive(Debug)]
pub(crate) struct Quiescent {
    key: PasidKey,
}

impl ParkedPasid {
    /// Whether the PASID has quiesced, given that every physical PRI queue entry before
    /// `drained` has been handed to the vSMMU and `open_groups` of its groups are still open.
    pub(crate) fn quiescence(&self, drained: PriPosition, open_groups: usize) -> Option<Quiescent> {
        self.invalidated?;
        let no_request_in_flight = match self.teardown {
            None => true,
            Some(teardown) => drained >= teardown && (open_groups == 0 || self.stopped),
        };
        no_request_in_flight.then_some(Quiescent { key: self.key })
    }

    /// Whether the invalidation is still to complete.
    pub(crate) fn needs_invalidation(&self) -> bool {
        self.invalidated.is_none()
    }
}

/// A PASID that may go live: never used, or released after quiescing.
#[derive(Debug)]
pub(crate) struct FreePasid {
    key: PasidKey,
    /// It was live before (going live again is a reuse).
    pub(crate) reused: bool,
}

/// What a PASID is doing now.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum PasidState {
    Free,
    Live(LivePasid),
    Parked(ParkedPasid),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Entry {
    Live(PasidKey, LivePasid),
    Parked(ParkedPasid),
    /// Released: free, remembered so going live again counts as a reuse (the slot is given
    /// back first when the table is full).
    Released(PasidKey),
}

impl Entry {
    fn key(&self) -> PasidKey {
        match self {
            Self::Live(key, _) | Self::Released(key) => *key,
            Self::Parked(parked) => parked.key,
        }
    }
}

/// The PASIDs of one vSMMU that are not free.
#[derive(Clone, Debug, Default)]
pub(crate) struct PasidTable {
    entries: heapless::Vec<Entry, MAX_TRACKED_PASIDS>,
    next_epoch: u64,
}

/// Why a PASID could not go live.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Refusal {
    /// It is parked and has not quiesced.
    Parked,
    /// It is live already.
    Live,
    /// The table is full.
    TableFull,
}

impl PasidTable {
    fn position(&self, key: PasidKey) -> Option<usize> {
        self.entries.iter().position(|e| e.key() == key)
    }

    /// The state of `key`.
    pub(crate) fn state(&self, key: PasidKey) -> PasidState {
        match self.position(key).and_then(|i| self.entries.get(i)) {
            Some(Entry::Live(_, live)) => PasidState::Live(*live),
            Some(Entry::Parked(parked)) => PasidState::Parked(*parked),
            Some(Entry::Released(_)) | None => PasidState::Free,
        }
    }

    /// A token to make `key` live, if it is free.
    ///
    /// # Errors
    ///
    /// [`Refusal::Parked`] or [`Refusal::Live`].
    pub(crate) fn claim(&self, key: PasidKey) -> Result<FreePasid, Refusal> {
        match self.position(key).and_then(|i| self.entries.get(i)) {
            None => Ok(FreePasid { key, reused: false }),
            Some(Entry::Released(_)) => Ok(FreePasid { key, reused: true }),
            Some(Entry::Parked(_)) => Err(Refusal::Parked),
            Some(Entry::Live(..)) => Err(Refusal::Live),
        }
    }

    /// Whether `key` could go live without the table overflowing.
    pub(crate) fn has_room(&self, key: PasidKey) -> bool {
        self.position(key).is_some()
            || !self.entries.is_full()
            || self.entries.iter().any(|e| matches!(e, Entry::Released(_)))
    }

    fn epoch(&mut self) -> Epoch {
        self.next_epoch = self.next_epoch.saturating_add(1);
        Epoch(self.next_epoch)
    }

    /// Makes `free` live from `since`; returns its epoch.
    ///
    /// # Errors
    ///
    /// [`Refusal::TableFull`]; the token is given back.
    pub(crate) fn go_live(
        &mut self,
        free: FreePasid,
        since: PriPosition,
    ) -> Result<Epoch, (Refusal, FreePasid)> {
        let key = free.key;
        let index = match self.position(key) {
            Some(index) => index,
            None => {
                if self.entries.is_full() {
                    // Forget a released PASID to make room (only its reuse count is lost).
                    match self
                        .entries
                        .iter()
                        .position(|e| matches!(e, Entry::Released(_)))
                    {
                        Some(released) => {
                            self.entries.swap_remove(released);
                        }
                        None => return Err((Refusal::TableFull, free)),
                    }
                }
                if self.entries.push(Entry::Released(key)).is_err() {
                    return Err((Refusal::TableFull, free));
                }
                self.entries.len() - 1
            }
        };
        let epoch = self.epoch();
        if let Some(entry) = self.entries.get_mut(index) {
            *entry = Entry::Live(
                key,
                LivePasid {
                    epoch,
                    since,
                    stopped: false,
                },
            );
        }
        Ok(epoch)
    }

    /// A live PASID's address space is replaced by another (hitless): a new epoch from
    /// `since`. Returns (old, new), or `None` if it is not live.
    pub(crate) fn replace(&mut self, key: PasidKey, since: PriPosition) -> Option<(Epoch, Epoch)> {
        let index = self.position(key)?;
        let Some(Entry::Live(_, live)) = self.entries.get(index).copied() else {
            return None;
        };
        let epoch = self.epoch();
        if let Some(Entry::Live(_, entry)) = self.entries.get_mut(index) {
            *entry = LivePasid {
                epoch,
                since,
                stopped: false,
            };
        }
        Some((live.epoch, epoch))
    }

    /// Parks a live PASID: its shadow CD is invalid now, the physical PRI queue was at
    /// `teardown`, `invalidated` says whether the TLB/ATC invalidation completed. Returns the
    /// epoch torn down, or `None` if it was not live.
    pub(crate) fn park(
        &mut self,
        key: PasidKey,
        teardown: Option<PriPosition>,
        asid: smmu::Asid,
        invalidated: Option<Invalidated>,
    ) -> Option<Epoch> {
        let index = self.position(key)?;
        let Some(Entry::Live(_, live)) = self.entries.get(index).copied() else {
            return None;
        };
        if let Some(entry) = self.entries.get_mut(index) {
            *entry = Entry::Parked(ParkedPasid {
                key,
                epoch: live.epoch,
                teardown,
                invalidated,
                asid,
                stopped: live.stopped,
                waiting: false,
            });
        }
        Some(live.epoch)
    }

    /// A later invalidation of a parked PASID completed.
    pub(crate) fn invalidated(&mut self, key: PasidKey, invalidated: Invalidated) {
        if let Some(Entry::Parked(parked)) = self
            .position(key)
            .and_then(|index| self.entries.get_mut(index))
        {
            parked.invalidated = Some(invalidated);
        }
    }

    /// The guest installed a valid CD for a parked PASID (it waits) or an invalid one (it no
    /// longer waits).
    pub(crate) fn set_waiting(&mut self, key: PasidKey, waiting: bool) {
        if let Some(Entry::Parked(parked)) = self
            .position(key)
            .and_then(|index| self.entries.get_mut(index))
        {
            parked.waiting = waiting;
        }
    }

    /// A page request for `key` was taken from the physical queue: a stop marker seen before it
    /// no longer says the device is done.
    pub(crate) fn note_request(&mut self, key: PasidKey) {
        self.set_stopped(key, false);
    }

    /// A stop marker for `key` was taken from the physical queue.
    pub(crate) fn note_stop_marker(&mut self, key: PasidKey) {
        self.set_stopped(key, true);
    }

    fn set_stopped(&mut self, key: PasidKey, stopped: bool) {
        match self
            .position(key)
            .and_then(|index| self.entries.get_mut(index))
        {
            Some(Entry::Live(_, live)) => live.stopped = stopped,
            Some(Entry::Parked(parked)) => parked.stopped = stopped,
            _ => {}
        }
    }

    /// Releases `key` with `proof` of its quiescence: it is free again.
    pub(crate) fn release(&mut self, proof: Quiescent) -> Option<FreePasid> {
        let index = self.position(proof.key)?;
        let entry = self.entries.get_mut(index)?;
        if !matches!(entry, Entry::Parked(_)) {
            return None;
        }
        *entry = Entry::Released(proof.key);
        Some(FreePasid {
            key: proof.key,
            reused: true,
        })
    }

    /// The live PASIDs of the stream in `slot` whose CD index is at least `from`.
    pub(crate) fn live_in(&self, slot: usize, from: u32) -> impl Iterator<Item = PasidKey> + '_ {
        self.entries.iter().filter_map(move |e| match e {
            Entry::Live(key, _) if key.slot == slot && key.cd >= from => Some(*key),
            _ => None,
        })
    }

    /// Every parked PASID, with its state.
    pub(crate) fn parked(&self) -> impl Iterator<Item = ParkedPasid> + '_ {
        self.entries.iter().filter_map(|e| match e {
            Entry::Parked(parked) => Some(*parked),
            _ => None,
        })
    }

    /// How many PASIDs are live and how many parked.
    pub(crate) fn counts(&self) -> (usize, usize) {
        self.entries
            .iter()
            .fold((0, 0), |(live, parked), e| match e {
                Entry::Live(..) => (live + 1, parked),
                Entry::Parked(_) => (live, parked + 1),
                Entry::Released(_) => (live, parked),
            })
    }

    /// Moves the start of a live PASID's page requests to `since` (its CD became reachable
    /// only now).
    pub(crate) fn restart(&mut self, key: PasidKey, since: PriPosition) {
        if let Some(Entry::Live(_, live)) = self
            .position(key)
            .and_then(|index| self.entries.get_mut(index))
        {
            live.since = live.since.max(since);
        }
    }
}

impl ParkedPasid {
    /// The PASID.
    pub(crate) fn key(&self) -> PasidKey {
        self.key
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const KEY: PasidKey = PasidKey { slot: 0, cd: 1 };

    fn invalidated() -> Invalidated {
        Invalidated { _private: () }
    }

    fn live(table: &mut PasidTable, since: u64) -> Epoch {
        let free = table.claim(KEY).unwrap();
        table.go_live(free, PriPosition(since)).unwrap()
    }

    #[test]
    fn a_parked_pasid_cannot_be_claimed_until_it_is_released_with_a_proof() {
        let mut table = PasidTable::default();
        let first = live(&mut table, 0);
        assert_eq!(table.claim(KEY).unwrap_err(), Refusal::Live);
        table.park(
            KEY,
            Some(PriPosition(10)),
            smmu::Asid(1),
            Some(invalidated()),
        );
        assert_eq!(table.claim(KEY).unwrap_err(), Refusal::Parked);
        let PasidState::Parked(parked) = table.state(KEY) else {
            panic!("parked");
        };
        assert!(
            parked.quiescence(PriPosition(9), 0).is_none(),
            "not drained"
        );
        assert!(
            parked.quiescence(PriPosition(10), 1).is_none(),
            "a group open"
        );
        let proof = parked.quiescence(PriPosition(10), 0).unwrap();
        let free = table.release(proof).unwrap();
        assert!(free.reused);
        let second = table.go_live(free, PriPosition(12)).unwrap();
        assert!(second > first, "a new epoch");
    }

    #[test]
    fn a_stop_marker_after_the_last_request_excuses_an_open_group_but_not_the_drain() {
        let mut table = PasidTable::default();
        live(&mut table, 0);
        table.note_stop_marker(KEY);
        let teardown = Some(PriPosition(10));
        table.park(KEY, teardown, smmu::Asid(1), Some(invalidated()));
        let PasidState::Parked(parked) = table.state(KEY) else {
            panic!("parked");
        };
        assert!(
            parked.quiescence(PriPosition(9), 0).is_none(),
            "not drained"
        );
        assert!(parked.quiescence(PriPosition(10), 3).is_some());
        // A request after the marker cancels it.
        table.note_request(KEY);
        let PasidState::Parked(parked) = table.state(KEY) else {
            panic!("parked");
        };
        assert!(parked.quiescence(PriPosition(10), 1).is_none());
    }

    #[test]
    fn without_a_completed_invalidation_nothing_quiesces() {
        let mut table = PasidTable::default();
        live(&mut table, 0);
        table.park(KEY, None, smmu::Asid(1), None);
        let PasidState::Parked(parked) = table.state(KEY) else {
            panic!("parked");
        };
        assert!(parked.quiescence(PriPosition(u64::MAX), 0).is_none());
        table.invalidated(KEY, invalidated());
        let PasidState::Parked(parked) = table.state(KEY) else {
            panic!("parked");
        };
        assert!(parked.quiescence(PriPosition(0), 0).is_some());
    }

    #[test]
    fn a_full_table_refuses_a_new_pasid_and_gives_the_token_back() {
        let mut table = PasidTable::default();
        for cd in 0..u32::try_from(MAX_TRACKED_PASIDS).unwrap() {
            let key = PasidKey { slot: 1, cd };
            let free = table.claim(key).unwrap();
            table.go_live(free, PriPosition(0)).unwrap();
        }
        let free = table.claim(KEY).unwrap();
        let (refusal, _token) = table.go_live(free, PriPosition(0)).unwrap_err();
        assert_eq!(refusal, Refusal::TableFull);
    }
}
