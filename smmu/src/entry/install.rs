//! "Install": moving a live STE or CD to a made target without ever exposing a state the
//! SMMU would mis-translate, and with no break when a hitless sequence exists.
//!
//! # What the hardware may see
//!
//! The SMMU may fetch an entry at any moment, one 64-bit qword at a time, and keep a cached
//! copy until told to forget it. So between two syncs it may hold *any mix*, qword by qword,
//! of what the entry held at the last sync and what has been stored since. Each step below is
//! chosen so that every such mix behaves (for the bits the SMMU reads, see [`super::used`])
//! either like the old entry, like the target, or, only where no other order exists, like an
//! invalid (V=0) entry. Each step ends with [`EntryWriter::sync`].
//!
//! # The plan
//!
//! Call a qword *critical* when a bit that both the current and the target configuration read
//! differs there. Then:
//!
//! - **No critical qword** ([`UpdatePath::InPlace`]): every differing bit is unused by the
//!   current entry or by the target's (and then, since it differs in no bit both read, the
//!   entry behaves as both); one step writes them all. One sync, or none if nothing differs.
//! - **One critical qword** ([`UpdatePath::Hitless`]): (1) write, in the other qwords, the
//!   target's value of every bit the current entry does not read; sync. (2) Store the target's
//!   critical qword: a single 64-bit store switches the configuration. Sync. (3) Write the rest
//!   of the target (clearing what only the old configuration read); sync. Up to three syncs;
//!   a step that changes nothing is skipped with its sync.
//! - **Two or more critical qwords** ([`UpdatePath::Breaking`]): no order of single-qword
//!   stores can avoid a state that reads one critical qword new and another old, which is
//!   neither configuration. (1) Store qword 0 = 0 (V=0); sync. (2) Write qwords 1..8; sync.
//!   (3) Store the target's qword 0; sync. Three syncs.
//!
//! The break is therefore taken exactly when it is unavoidable; a replace with a hitless path
//! never passes through "removed". For the entries [`super::make`] builds, that means:
//!
//! | entry | breaks when | because |
//! |---|---|---|
//! | STE | stage 2 changes VMID *and* S2TTB (stage-2-only or nested) | word 2 tags TLB entries walked from word 3: a mix would fill one VMID's TLB from the other VM's tables |
//! | STE | Config changes between stage 1, stage 2 and nested *and* S2VMID changes | Config (word 0) and the VMID tag (word 2) are both read by both configurations |
//! | STE | a nested STE changes its CD table *and* its stage 2 | word 0 and words 2/3 |
//! | CD | ASID changes together with TTB0 (or MAIR) | word 0 (ASID) and word 1 (TTB0) / word 3 (MAIR): a mix tags one address space's walks with the other's ASID |
//! | CD | a walk control in word 0 (T0SZ, TG0, IPS...) changes together with TTB0 or MAIR | as above |
//!
//! Everything else is hitless: any change from or to an invalid, abort or bypass STE; stage 1,
//! stage 2 and nested between each other under one VMID; a new CD table for a stage-1 or
//! nested stream; a new VMID *or* a new S2TTB alone; a new ASID alone; a new TTB0 alone; a CD
//! going valid or invalid.
//!
//! # The guard
//!
//! The target is a [`PhysicalSte`] or [`PhysicalCd`]: a value only the physical guard
//! ([`check_physical_ste`], [`check_physical_cd`]) makes, so an entry that fails it cannot even
//! be handed to the installer. Before each store the installer also builds the entry as it will
//! be after that store and runs the guard on it. A current entry that fails the guard (written
//! by someone else, or left by a bug) is replaced through a break, so its bad bits are not kept
//! live while the rest is updated.
//!
//! # The one way to the hardware
//!
//! Nothing reaches memory the physical SMMU reads except through this module: the driver's
//! only STE write is [`Driver::install_ste`](crate::driver::Driver::install_ste) (and its bulk
//! form for fresh streams), which takes a [`PhysicalSte`] and runs this installer over the
//! driver's own [`EntryWriter`]; CDs, which live in memory their owner holds (the driver has no
//! CD tables), go through [`install_cd`], which takes a [`PhysicalCd`]. `Ste::from_words` and
//! `Cd::from_words` stay public because a guest's entries must be decoded, but a decoded entry
//! is only ever data until [`PhysicalSte::check`] or [`PhysicalCd::check`] accepts it.
//!
//! # What the installer does not do
//!
//! The sync covers the SMMU's configuration caches only. TLB entries tagged by the old VMID or
//! ASID, and ATC entries, are the caller's to invalidate after the install (a change of S2TTB
//! under one VMID, or of TTB0 under one ASID, leaves stale translations otherwise).

use crate::cd::{Cd, CdError};
use crate::entry::used::{ENTRY_QWORDS, cd_used_bits, ste_used_bits};
use crate::ste::{Ste, SteError};

/// Where the installer's stores and syncs go: implemented by the driver over the real tables
/// and command queue, and by tests over a recording model.
pub trait EntryWriter {
    /// What a failed sync reports (a command queue error, a timeout).
    type Error;

    /// Stores `value` into qword `index` (0..8) of the entry with a single 64-bit,
    /// single-copy-atomic store, so the SMMU sees either the old or the new qword, never a
    /// torn one. The store must be visible to the SMMU before the next `sync` is issued (a
    /// DSB, or cache maintenance on a non-coherent SMMU).
    fn write_qword(&mut self, index: usize, value: u64);

    /// Makes the SMMU forget any cached copy of the entry and waits until it has: for an STE,
    /// CFGI_STE (Leaf=0, so the CDs cached through the STE go too) then CMD_SYNC; for a CD,
    /// CFGI_CD then CMD_SYNC.
    ///
    /// # Errors
    ///
    /// Whatever prevented the sync from completing. The installer stops there.
    fn sync(&mut self) -> Result<(), Self::Error>;
}

/// Which sequence an update takes (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum UpdatePath {
    /// No bit read by both configurations differs: one step writes every difference.
    InPlace,
    /// Exactly one qword holds bits read by both that differ: it is stored alone, between
    /// steps that update only bits one side does not read.
    Hitless {
        /// The qword whose single store switches the configuration.
        critical_qword: usize,
    },
    /// Two or more qwords hold such bits: the entry goes through V=0.
    Breaking,
}

/// What an install did.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct InstallReport {
    /// The sequence taken.
    pub path: UpdatePath,
    /// How many 64-bit stores were made.
    pub writes: u8,
    /// How many syncs were issued.
    pub syncs: u8,
}

/// An entry the hypervisor must never make visible to the physical SMMU.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PhysicalEntryError {
    /// A valid STE enables stage 2 (Config = stage 2 or nested) with S2AA64 = 0. QEMU aborts
    /// the machine on it; the hypervisor only builds AArch64 stage-2 tables.
    Stage2WithoutAArch64,
    /// A valid STE holds an undefined encoding in a field its Config reads.
    SteEncoding(SteError),
    /// A valid CD has AA64 = 0: the hypervisor only passes AArch64 stage-1 tables.
    CdWithoutAArch64,
    /// A valid CD holds an undefined encoding in a field the SMMU reads.
    CdEncoding(CdError),
}

/// An STE that passed the physical guard: the only kind of STE the installer, and so the
/// driver, will make visible to the SMMU.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PhysicalSte(Ste);

impl PhysicalSte {
    /// Runs the physical guard ([`check_physical_ste`]) on `ste` and wraps it if it passes.
    ///
    /// This is the only constructor, and it must stay the only one: the installer and
    /// [`Driver::install_ste`](crate::driver::Driver::install_ste) take nothing but a
    /// `PhysicalSte`, so an STE that would crash or mislead the SMMU (stage 2 with S2AA64 = 0,
    /// an undefined encoding) cannot be written by forgetting a check. A second way to make
    /// one (a `From<Ste>`, a `new`, a public field) would make the guard opt-in again.
    ///
    /// # Errors
    ///
    /// What [`check_physical_ste`] finds.
    pub const fn check(ste: Ste) -> Result<Self, PhysicalEntryError> {
        match check_physical_ste(&ste) {
            Ok(()) => Ok(Self(ste)),
            Err(error) => Err(error),
        }
    }

    /// The entry.
    #[must_use]
    pub const fn ste(&self) -> &Ste {
        &self.0
    }

    /// The entry's qwords.
    #[must_use]
    pub const fn words(&self) -> [u64; ENTRY_QWORDS] {
        self.0.words()
    }
}

/// A CD that passed the physical guard: the only kind of CD [`install_cd`] will make visible.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PhysicalCd(Cd);

impl PhysicalCd {
    /// Runs the physical guard ([`check_physical_cd`]) on `cd` and wraps it if it passes.
    ///
    /// The only constructor, for the reason given at [`PhysicalSte::check`]: [`install_cd`]
    /// takes nothing else, so the guard cannot be skipped.
    ///
    /// # Errors
    ///
    /// What [`check_physical_cd`] finds.
    pub const fn check(cd: Cd) -> Result<Self, PhysicalEntryError> {
        match check_physical_cd(&cd) {
            Ok(()) => Ok(Self(cd)),
            Err(error) => Err(error),
        }
    }

    /// The entry.
    #[must_use]
    pub const fn cd(&self) -> &Cd {
        &self.0
    }

    /// The entry's qwords.
    #[must_use]
    pub const fn words(&self) -> [u64; ENTRY_QWORDS] {
        self.0.words()
    }
}

/// Why an install stopped.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum InstallError<E> {
    /// A store would have made an entry visible that fails the guard; it was not made. Cannot
    /// happen (the target passed the guard, and every intermediate state behaves as the old
    /// entry, the target, or V=0); kept as a second line of defence.
    IntermediateRefused {
        /// The qword whose store was refused.
        qword: usize,
        /// What the guard found.
        error: PhysicalEntryError,
    },
    /// A sync failed. The entry holds what was stored so far (the installer's `current`
    /// argument says exactly what), which behaves as the old entry, the target, or V=0.
    Sync(E),
}

/// The physical guard for STEs: refuses an STE the hypervisor must never write where the SMMU
/// can read it. An invalid (V=0) STE always passes.
///
/// # Errors
///
/// [`PhysicalEntryError::Stage2WithoutAArch64`] for a valid stage-2 or nested STE with
/// S2AA64 = 0; [`PhysicalEntryError::SteEncoding`] for an undefined encoding the Config reads.
pub const fn check_physical_ste(ste: &Ste) -> Result<(), PhysicalEntryError> {
    if !ste.v() {
        return Ok(());
    }
    if ste.config().stage2_enabled() && !ste.s2aa64() {
        return Err(PhysicalEntryError::Stage2WithoutAArch64);
    }
    match ste.check_encodings() {
        Ok(()) => Ok(()),
        Err(e) => Err(PhysicalEntryError::SteEncoding(e)),
    }
}

/// The physical guard for CDs (as [`check_physical_ste`]). An invalid (V=0) CD always passes.
///
/// # Errors
///
/// [`PhysicalEntryError::CdWithoutAArch64`] for a valid CD with AA64 = 0;
/// [`PhysicalEntryError::CdEncoding`] for an undefined encoding the SMMU reads.
pub const fn check_physical_cd(cd: &Cd) -> Result<(), PhysicalEntryError> {
    if !cd.v() {
        return Ok(());
    }
    if !cd.aa64() {
        return Err(PhysicalEntryError::CdWithoutAArch64);
    }
    match cd.check_encodings() {
        Ok(()) => Ok(()),
        Err(e) => Err(PhysicalEntryError::CdEncoding(e)),
    }
}

type Words = [u64; ENTRY_QWORDS];

/// How one kind of entry is read: its used bits and its guard.
struct EntryKind {
    used_bits: fn(&Words) -> Words,
    check: fn(&Words) -> Result<(), PhysicalEntryError>,
}

const STE_KIND: EntryKind = EntryKind {
    used_bits: |words| ste_used_bits(&Ste::from_words(*words)),
    check: |words| check_physical_ste(&Ste::from_words(*words)),
};

const CD_KIND: EntryKind = EntryKind {
    used_bits: |words| cd_used_bits(&Cd::from_words(*words)),
    check: |words| check_physical_cd(&Cd::from_words(*words)),
};

/// The plan for one update: its path, and the entry with every bit the current configuration
/// does not read already set to the target's value.
struct Plan {
    path: UpdatePath,
    unused_update: Words,
}

fn plan(kind: &EntryKind, current: &Words, target: &Words) -> Plan {
    let current_used = (kind.used_bits)(current);
    let target_used = (kind.used_bits)(target);
    let mut unused_update = [0; ENTRY_QWORDS];
    let mut critical: Option<usize> = None;
    let mut critical_count = 0u8;
    let qwords = current
        .iter()
        .zip(&current_used)
        .zip(target.iter().zip(&target_used))
        .zip(unused_update.iter_mut())
        .enumerate();
    for (index, (((&now, &now_used), (&want, &want_used)), update)) in qwords {
        *update = (now & now_used) | (want & !now_used);
        // Bits the target reads but the current entry does not already hold the target's
        // value in `update`; what remains is a bit both read, with different values.
        if *update & want_used != want & want_used {
            critical = Some(index);
            critical_count = critical_count.saturating_add(1);
        }
    }
    let path = match (critical_count, critical) {
        (1, Some(critical_qword)) => UpdatePath::Hitless { critical_qword },
        (0, _) => UpdatePath::InPlace,
        _ => UpdatePath::Breaking,
    };
    Plan {
        path,
        unused_update,
    }
}

/// The sequence [`install_ste`] would take from `current` to `target`, without writing.
#[must_use]
pub fn ste_update_path(current: &Ste, target: &Ste) -> UpdatePath {
    plan(&STE_KIND, &current.words(), &target.words()).path
}

/// The sequence [`install_cd`] would take from `current` to `target`, without writing.
#[must_use]
pub fn cd_update_path(current: &Cd, target: &Cd) -> UpdatePath {
    plan(&CD_KIND, &current.words(), &target.words()).path
}

/// Moves the STE the SMMU reads from `current` to `target` (see the module docs).
///
/// `current` must be what the entry holds (the hypervisor is its only writer); it is updated
/// store by store, so after an error it still says what the entry holds.
///
/// # Errors
///
/// [`InstallError::Sync`] if a sync fails; [`InstallError::IntermediateRefused`] never (the
/// target passed the guard to become a [`PhysicalSte`]).
pub fn install_ste<W: EntryWriter>(
    writer: &mut W,
    current: &mut Ste,
    target: &PhysicalSte,
) -> Result<InstallReport, InstallError<W::Error>> {
    let mut words = current.words();
    let result = install(&STE_KIND, writer, &mut words, &target.words());
    *current = Ste::from_words(words);
    result
}

/// Moves the CD the SMMU reads from `current` to `target`, as [`install_ste`] does for STEs.
///
/// # Errors
///
/// As [`install_ste`], with [`check_physical_cd`] as the guard.
pub fn install_cd<W: EntryWriter>(
    writer: &mut W,
    current: &mut Cd,
    target: &PhysicalCd,
) -> Result<InstallReport, InstallError<W::Error>> {
    let mut words = current.words();
    let result = install(&CD_KIND, writer, &mut words, &target.words());
    *current = Cd::from_words(words);
    result
}

/// A set of qword indices, bit `i` for qword `i`.
#[derive(Clone, Copy)]
struct Qwords(u8);

impl Qwords {
    const ALL: Self = Self(0xff);

    const fn only(index: usize) -> Self {
        Self(1 << (index % ENTRY_QWORDS))
    }

    const fn without(self, index: usize) -> Self {
        Self(self.0 & !Self::only(index).0)
    }

    const fn contains(self, index: usize) -> bool {
        index < ENTRY_QWORDS && self.0 & (1 << index) != 0
    }
}

/// The stores and syncs of one install, counted, each store guarded.
struct Installer<'a, W: EntryWriter> {
    kind: &'a EntryKind,
    writer: &'a mut W,
    entry: &'a mut Words,
    writes: u8,
    syncs: u8,
}

impl<W: EntryWriter> Installer<'_, W> {
    /// One step: stores `values[i]` into every qword `i` of `qwords` that differs, then syncs
    /// if anything was stored.
    fn step(&mut self, values: &Words, qwords: Qwords) -> Result<(), InstallError<W::Error>> {
        let mut stored = false;
        for (index, &value) in values.iter().enumerate() {
            if !qwords.contains(index) || self.entry.get(index) == Some(&value) {
                continue;
            }
            let mut after = *self.entry;
            if let Some(slot) = after.get_mut(index) {
                *slot = value;
            }
            (self.kind.check)(&after).map_err(|error| InstallError::IntermediateRefused {
                qword: index,
                error,
            })?;
            self.writer.write_qword(index, value);
            *self.entry = after;
            self.writes = self.writes.saturating_add(1);
            stored = true;
        }
        if stored {
            self.writer.sync().map_err(InstallError::Sync)?;
            self.syncs = self.syncs.saturating_add(1);
        }
        Ok(())
    }
}

fn install<W: EntryWriter>(
    kind: &EntryKind,
    writer: &mut W,
    entry: &mut Words,
    target: &Words,
) -> Result<InstallReport, InstallError<W::Error>> {
    // The target passed the guard to become a `PhysicalSte`/`PhysicalCd`; each store below
    // is still checked.
    let mut plan = plan(kind, entry, target);
    if (kind.check)(entry).is_err() {
        plan.path = UpdatePath::Breaking;
    }
    let mut installer = Installer {
        kind,
        writer,
        entry,
        writes: 0,
        syncs: 0,
    };
    match plan.path {
        UpdatePath::InPlace => installer.step(target, Qwords::ALL)?,
        UpdatePath::Hitless { critical_qword } => {
            // The critical qword's unused bits are left for its own store: writing them first
            // would cost a sync and gain nothing.
            installer.step(&plan.unused_update, Qwords::ALL.without(critical_qword))?;
            installer.step(target, Qwords::only(critical_qword))?;
            installer.step(target, Qwords::ALL)?;
        }
        UpdatePath::Breaking => {
            // Qword 0 = 0 clears V: the SMMU then reads nothing else of the entry.
            installer.step(&[0; ENTRY_QWORDS], Qwords::only(0))?;
            installer.step(target, Qwords::ALL.without(0))?;
            installer.step(target, Qwords::only(0))?;
        }
    }
    Ok(InstallReport {
        path: plan.path,
        writes: installer.writes,
        syncs: installer.syncs,
    })
}
