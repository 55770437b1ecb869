//! Make and install together: every ordered pair of configurations goes through the installer
//! into a model of what the SMMU may observe, and every observable state is checked.
//!
//! The model ([`RecordingWriter`]) is stricter than "the state after each store": between two
//! syncs the SMMU may fetch the entry qword by qword and keep a cached copy, so it may observe
//! any mix of the entry as it was at the last sync and the qwords stored since. Every such mix
//! must pass the physical guard and behave, for the bits the SMMU reads, as the old entry, the
//! target, or (only for the transitions the module docs list as breaking) an invalid entry.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use proptest::prelude::*;

use super::install::{
    EntryWriter, InstallError, InstallReport, PhysicalCd, PhysicalEntryError, PhysicalSte,
    UpdatePath, check_physical_cd, check_physical_ste, install_cd, install_ste, ste_update_path,
};
use super::make::{
    ContextTable, ContextTableParameters, Mair, Stage1Parameters, Stage1Translation,
    Stage2Parameters, Stage2Translation, StartLevel, make_abort_ste, make_bypass_ste, make_cd,
    make_nested_ste, make_stage1_ste, make_stage2_ste,
};
use super::used::{ENTRY_QWORDS, cd_used_bits, ste_used_bits};
use crate::cd::Cd;
use crate::ids::{Asid, Ipa, PhysAddr, Vmid};
use crate::registers::{Features, IdRegisters};
use crate::ste::{S1Dss, S1Fmt, Ste, StreamConfig};
use crate::translation::{AddressSize, Cacheability, Granule, Shareability};

type Words = [u64; ENTRY_QWORDS];

/// A sync that the test told the writer to fail.
#[derive(Debug, PartialEq, Eq)]
struct SyncFailed;

/// The SMMU's view of one entry: memory, the entry as of the last sync, and every state the
/// SMMU could have observed.
struct RecordingWriter {
    entry: Words,
    at_last_sync: Words,
    stored_since_sync: u8,
    observable: Vec<Words>,
    after_each_store: Vec<Words>,
    stores: Vec<(usize, u64)>,
    stored_twice_between_syncs: bool,
    syncs: u8,
    fail_sync_number: Option<u8>,
}

impl RecordingWriter {
    fn new(entry: Words) -> Self {
        Self {
            entry,
            at_last_sync: entry,
            stored_since_sync: 0,
            observable: Vec::new(),
            after_each_store: Vec::new(),
            stores: Vec::new(),
            stored_twice_between_syncs: false,
            syncs: 0,
            fail_sync_number: None,
        }
    }

    /// Every mix, qword by qword, of the entry at the last sync and the qwords stored since.
    fn record_mixes(&mut self) {
        let stored = self.stored_since_sync;
        let mut subset = stored;
        loop {
            let mut mix = self.at_last_sync;
            for (i, word) in mix.iter_mut().enumerate() {
                if subset & (1 << i) != 0 {
                    *word = self.entry[i];
                }
            }
            self.observable.push(mix);
            if subset == 0 {
                break;
            }
            subset = (subset - 1) & stored;
        }
    }
}

impl EntryWriter for RecordingWriter {
    type Error = SyncFailed;

    fn write_qword(&mut self, index: usize, value: u64) {
        assert!(index < ENTRY_QWORDS, "store to qword {index}");
        if self.stored_since_sync & (1 << index) != 0 {
            self.stored_twice_between_syncs = true;
        }
        self.stored_since_sync |= 1 << index;
        self.entry[index] = value;
        self.stores.push((index, value));
        self.after_each_store.push(self.entry);
        self.record_mixes();
    }

    fn sync(&mut self) -> Result<(), SyncFailed> {
        self.syncs += 1;
        if self.fail_sync_number == Some(self.syncs) {
            return Err(SyncFailed);
        }
        self.at_last_sync = self.entry;
        self.stored_since_sync = 0;
        Ok(())
    }
}

fn ste_equivalent_words(a: &Words, b: &Words) -> bool {
    super::used::ste_equivalent(&Ste::from_words(*a), &Ste::from_words(*b))
}

fn cd_equivalent_words(a: &Words, b: &Words) -> bool {
    super::used::cd_equivalent(&Cd::from_words(*a), &Cd::from_words(*b))
}

/// How many qwords hold a bit that both entries read with different values, computed directly
/// from the used masks (independently of the installer's plan). Two or more means no order of
/// single-qword stores avoids a state that is neither entry.
fn qwords_differing_in_shared_used_bits(
    old: &Words,
    new: &Words,
    used: fn(&Words) -> Words,
) -> usize {
    let (old_used, new_used) = (used(old), used(new));
    (0..ENTRY_QWORDS)
        .filter(|&i| (old[i] ^ new[i]) & old_used[i] & new_used[i] != 0)
        .count()
}

fn ste_used(words: &Words) -> Words {
    ste_used_bits(&Ste::from_words(*words))
}

fn cd_used(words: &Words) -> Words {
    cd_used_bits(&Cd::from_words(*words))
}

/// Checks everything the SMMU could have observed during one install.
fn assert_every_observable_state_is_old_new_or_allowed_break(
    writer: &RecordingWriter,
    old: &Words,
    new: &Words,
    break_allowed: bool,
    equivalent: fn(&Words, &Words) -> bool,
    guard: fn(&Words) -> Result<(), PhysicalEntryError>,
    label: &str,
) {
    assert!(
        !writer.stored_twice_between_syncs,
        "{label}: a qword was stored twice between syncs"
    );
    for state in &writer.observable {
        assert_eq!(guard(state), Ok(()), "{label}: observable {state:x?}");
        let is_old = equivalent(state, old);
        let is_new = equivalent(state, new);
        // Every invalid entry is equivalent to the all-zero one.
        let is_break = equivalent(state, &[0; ENTRY_QWORDS]);
        assert!(
            is_old || is_new || (break_allowed && is_break),
            "{label}: observable state {state:x?} is neither old {old:x?} nor new {new:x?}"
        );
    }
}

fn ste_guard(words: &Words) -> Result<(), PhysicalEntryError> {
    check_physical_ste(&Ste::from_words(*words))
}

fn cd_guard(words: &Words) -> Result<(), PhysicalEntryError> {
    check_physical_cd(&Cd::from_words(*words))
}

/// Installs `new` over `old` and checks every observable state and the end state.
fn run_ste(old: &Ste, new: &Ste, label: &str) -> (InstallReport, RecordingWriter) {
    let mut writer = RecordingWriter::new(old.words());
    let mut current = *old;
    let target = PhysicalSte::check(*new).expect(label);
    let report = install_ste(&mut writer, &mut current, &target).expect(label);
    assert_eq!(
        current, *new,
        "{label}: the installer's view ends at the target"
    );
    assert_eq!(
        writer.entry,
        new.words(),
        "{label}: memory ends at the target"
    );
    assert_eq!(report.syncs, writer.syncs, "{label}: syncs counted");
    assert_eq!(usize::from(report.writes), writer.stores.len(), "{label}");
    assert_every_observable_state_is_old_new_or_allowed_break(
        &writer,
        &old.words(),
        &new.words(),
        report.path == UpdatePath::Breaking,
        ste_equivalent_words,
        ste_guard,
        label,
    );
    let unavoidable =
        qwords_differing_in_shared_used_bits(&old.words(), &new.words(), ste_used) >= 2;
    assert_eq!(
        report.path == UpdatePath::Breaking,
        unavoidable,
        "{label}: break taken exactly when no hitless order exists"
    );
    (report, writer)
}

fn run_cd(old: &Cd, new: &Cd, label: &str) -> (InstallReport, RecordingWriter) {
    let mut writer = RecordingWriter::new(old.words());
    let mut current = *old;
    let target = PhysicalCd::check(*new).expect(label);
    let report = install_cd(&mut writer, &mut current, &target).expect(label);
    assert_eq!(current, *new, "{label}");
    assert_eq!(writer.entry, new.words(), "{label}");
    assert_eq!(report.syncs, writer.syncs, "{label}");
    assert_every_observable_state_is_old_new_or_allowed_break(
        &writer,
        &old.words(),
        &new.words(),
        report.path == UpdatePath::Breaking,
        cd_equivalent_words,
        cd_guard,
        label,
    );
    let unavoidable =
        qwords_differing_in_shared_used_bits(&old.words(), &new.words(), cd_used) >= 2;
    assert_eq!(report.path == UpdatePath::Breaking, unavoidable, "{label}");
    (report, writer)
}

// ---------------------------------------------------------------------------------------------
// The configurations.

fn qemu() -> Features {
    Features::decode(&IdRegisters::QEMU_VIRT).unwrap()
}

const VMID_A: Vmid = Vmid(1);
const VMID_B: Vmid = Vmid(2);

fn stage2(vmid: Vmid, s2ttb: u64) -> Stage2Translation {
    stage2_for(vmid, s2ttb, &qemu())
}

fn stage2_for(vmid: Vmid, s2ttb: u64, features: &Features) -> Stage2Translation {
    Stage2Translation::new(
        Stage2Parameters {
            vmid,
            s2ttb: PhysAddr(s2ttb),
            s2t0sz: 24,
            s2sl0: StartLevel::Level1,
            s2tg: Granule::Size4K,
            s2ps: AddressSize::Bits44,
            s2ir0: Cacheability::WriteBackWriteAllocate,
            s2or0: Cacheability::WriteBackWriteAllocate,
            s2sh0: Shareability::InnerShareable,
            s2r: true,
            s2affd: false,
            s2ptw: true,
        },
        features,
    )
    .unwrap()
}

fn table<A: super::make::TableAddress>(s1context_ptr: A) -> ContextTable<A> {
    table_for(s1context_ptr, &qemu())
}

fn table_for<A: super::make::TableAddress>(
    s1context_ptr: A,
    features: &Features,
) -> ContextTable<A> {
    ContextTable::new(
        ContextTableParameters {
            s1context_ptr,
            s1fmt: S1Fmt::Linear,
            s1cdmax: 0,
            s1dss: S1Dss::Terminate,
            s1cir: Cacheability::WriteBackWriteAllocate,
            s1cor: Cacheability::WriteBackWriteAllocate,
            s1csh: Shareability::InnerShareable,
        },
        features,
    )
    .unwrap()
}

/// The STE configurations of the transition matrix.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SteConfig {
    /// All zero, as a freshly cleared stream table.
    Invalid,
    Abort,
    Bypass,
    /// Stage 1 only, CD table A, tagged VMID A.
    Stage1A,
    /// Stage 1 only, CD table B, tagged VMID A.
    Stage1B,
    /// Stage 2 only, VMID A over tables A.
    Stage2A,
    /// Stage 2 only, VMID B over tables B.
    Stage2B,
    /// CD table A over stage 2 A.
    NestedS1AS2A,
    /// CD table B over stage 2 A.
    NestedS1BS2A,
    /// CD table A over stage 2 B.
    NestedS1AS2B,
}

const STE_CONFIGS: [SteConfig; 10] = [
    SteConfig::Invalid,
    SteConfig::Abort,
    SteConfig::Bypass,
    SteConfig::Stage1A,
    SteConfig::Stage1B,
    SteConfig::Stage2A,
    SteConfig::Stage2B,
    SteConfig::NestedS1AS2A,
    SteConfig::NestedS1BS2A,
    SteConfig::NestedS1AS2B,
];

const S2TTB_A: u64 = 0x4010_0000;
const S2TTB_B: u64 = 0x4020_0000;
const CD_TABLE_PA_A: u64 = 0x5000_0000;
const CD_TABLE_PA_B: u64 = 0x5000_1000;
const CD_TABLE_IPA_A: u64 = 0x8000_0000;
const CD_TABLE_IPA_B: u64 = 0x8000_1000;

/// `config` as made for QEMU virt.
fn make_ste(config: SteConfig) -> Ste {
    make_ste_for(config, &qemu())
}

/// `config` as made for an SMMU with `features`.
fn make_ste_for(config: SteConfig, features: &Features) -> Ste {
    let table_pa = |address| table_for(PhysAddr(address), features);
    let table_ipa = |address| table_for(Ipa(address), features);
    let stage2 = |vmid, s2ttb| stage2_for(vmid, s2ttb, features);
    match config {
        SteConfig::Invalid => Ste::INVALID,
        SteConfig::Abort => make_abort_ste(),
        SteConfig::Bypass => make_bypass_ste(features),
        SteConfig::Stage1A => make_stage1_ste(&table_pa(CD_TABLE_PA_A), VMID_A, features).unwrap(),
        SteConfig::Stage1B => make_stage1_ste(&table_pa(CD_TABLE_PA_B), VMID_A, features).unwrap(),
        SteConfig::Stage2A => make_stage2_ste(&stage2(VMID_A, S2TTB_A)),
        SteConfig::Stage2B => make_stage2_ste(&stage2(VMID_B, S2TTB_B)),
        SteConfig::NestedS1AS2A => {
            make_nested_ste(&table_ipa(CD_TABLE_IPA_A), &stage2(VMID_A, S2TTB_A)).unwrap()
        }
        SteConfig::NestedS1BS2A => {
            make_nested_ste(&table_ipa(CD_TABLE_IPA_B), &stage2(VMID_A, S2TTB_A)).unwrap()
        }
        SteConfig::NestedS1AS2B => {
            make_nested_ste(&table_ipa(CD_TABLE_IPA_A), &stage2(VMID_B, S2TTB_B)).unwrap()
        }
    }
}

/// The expected sequence of one transition.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    /// In place, with this many syncs (0: nothing to do).
    InPlace(u8),
    /// Hitless through qword 0, with this many syncs.
    Hitless(u8),
    /// Hitless through this qword, with this many syncs.
    HitlessAt(usize, u8),
    /// Through V=0: always three syncs.
    Break,
}

use Expect::{Break as B, Hitless as H, InPlace};
const N: Expect = InPlace(0);

impl Expect {
    fn check(self, report: &InstallReport, label: &str) {
        let (path, syncs) = match self {
            Expect::InPlace(syncs) => (UpdatePath::InPlace, syncs),
            Expect::Hitless(syncs) => (UpdatePath::Hitless { critical_qword: 0 }, syncs),
            Expect::HitlessAt(critical_qword, syncs) => {
                (UpdatePath::Hitless { critical_qword }, syncs)
            }
            Expect::Break => (UpdatePath::Breaking, 3),
        };
        assert_eq!((report.path, report.syncs), (path, syncs), "{label}");
    }
}

/// Rows: from; columns: to, both in [`STE_CONFIGS`] order; the same with and without
/// IDR1.ATTR_TYPES_OVR. Why each count:
///
/// - to Invalid/Abort: store qword 0, then clear what only the old config read (1 or 2).
/// - from Invalid/Abort: pre-write words 1..3, then store qword 0 (1 or 2). The bypass STE
///   has MEV (and, with ATTR_TYPES_OVR, SHCFG) in word 1, so Invalid/Abort <-> bypass is 2.
/// - Bypass <-> stage 1, stage 2 or nested: pre-write, switch qword 0 (2); or switch, then
///   clear (2). Every non-abort STE made for one SMMU has the same SHCFG and MEV, so word 1
///   never needs a step for them: stage 1 -> bypass is 2 syncs with or without
///   ATTR_TYPES_OVR.
///   (Linux's KUnit test counts 3 for its cdtable -> bypass: its cdtable STE, S1DSS = SSID0,
///   neither sets nor reads SHCFG, so the bypass STE's SHCFG = incoming needs a pre-write.)
/// - Stage 1 <-> nested and stage 2 <-> nested under one VMID: pre-write, switch qword 0 (2);
///   or switch qword 0, then clear (2).
/// - Stage 1 <-> stage 2 under one VMID: pre-write, switch, clear (3).
/// - Another CD table under the same stage 2: qword 0 alone (1).
/// - A change of VMID with Config, or of VMID and S2TTB together: break (3).
#[rustfmt::skip]
const STE_EXPECTED: [[Expect; 10]; 10] = [
    //             Inv    Abt    Byp    S1A    S1B    S2A    S2B    N-AA   N-BA   N-AB
    /* Inv  */ [N,     H(1),  H(2),  H(2),  H(2),  H(2),  H(2),  H(2),  H(2),  H(2)],
    /* Abt  */ [H(1),  N,     H(2),  H(2),  H(2),  H(2),  H(2),  H(2),  H(2),  H(2)],
    /* Byp  */ [H(2),  H(2),  N,     H(2),  H(2),  H(2),  H(2),  H(2),  H(2),  H(2)],
    /* S1A  */ [H(2),  H(2),  H(2),  N,     H(1),  H(3),  B,     H(2),  H(2),  B   ],
    /* S1B  */ [H(2),  H(2),  H(2),  H(1),  N,     H(3),  B,     H(2),  H(2),  B   ],
    /* S2A  */ [H(2),  H(2),  H(2),  H(3),  H(3),  N,     B,     H(2),  H(2),  B   ],
    /* S2B  */ [H(2),  H(2),  H(2),  B,     B,     B,     N,     B,     B,     H(2)],
    /* N-AA */ [H(2),  H(2),  H(2),  H(2),  H(2),  H(2),  B,     N,     H(1),  B   ],
    /* N-BA */ [H(2),  H(2),  H(2),  H(2),  H(2),  H(2),  B,     H(1),  N,     B   ],
    /* N-AB */ [H(2),  H(2),  H(2),  B,     B,     B,     H(2),  B,     B,     N   ],
];

#[test]
fn every_ordered_pair_of_ste_configurations_installs_safely_with_the_expected_syncs() {
    for attr_types_ovr in [false, true] {
        let features = Features {
            attr_types_ovr,
            ..qemu()
        };
        for (from, row) in STE_CONFIGS.iter().zip(&STE_EXPECTED) {
            for (to, expected) in STE_CONFIGS.iter().zip(row) {
                let label = format!("ATTR_TYPES_OVR {attr_types_ovr}: {from:?} -> {to:?}");
                let old = make_ste_for(*from, &features);
                let new = make_ste_for(*to, &features);
                let (report, _) = run_ste(&old, &new, &label);
                expected.check(&report, &label);
            }
        }
    }
}

#[test]
fn a_single_stage2_field_change_is_one_store_of_its_own_qword() {
    let s2a = make_stage2_ste(&stage2(VMID_A, S2TTB_A));
    let new_tables = make_stage2_ste(&stage2(VMID_A, S2TTB_B));
    let new_vmid = make_stage2_ste(&stage2(VMID_B, S2TTB_A));
    let nested = make_ste(SteConfig::NestedS1AS2A);
    let nested_new_vmid =
        make_nested_ste(&table(Ipa(CD_TABLE_IPA_A)), &stage2(VMID_B, S2TTB_A)).unwrap();
    let stage1_other_vmid =
        make_stage1_ste(&table(PhysAddr(CD_TABLE_PA_A)), VMID_B, &qemu()).unwrap();
    let cases = [
        ("S2 new S2TTB", s2a, new_tables, Expect::HitlessAt(3, 1)),
        ("S2 new VMID", s2a, new_vmid, Expect::HitlessAt(2, 1)),
        (
            "nested new VMID",
            nested,
            nested_new_vmid,
            Expect::HitlessAt(2, 1),
        ),
        (
            "S1 new VMID tag",
            make_ste(SteConfig::Stage1A),
            stage1_other_vmid,
            Expect::HitlessAt(2, 1),
        ),
    ];
    for (label, old, new, expected) in cases {
        let (report, writer) = run_ste(&old, &new, label);
        expected.check(&report, label);
        assert_eq!(writer.stores.len(), 1, "{label}");
    }
}

#[test]
fn a_break_stores_v0_first_then_the_rest_then_qword0() {
    let old = make_ste(SteConfig::Stage2A);
    let new = make_ste(SteConfig::Stage2B);
    let (_, writer) = run_ste(&old, &new, "S2A -> S2B");
    let words = new.words();
    assert_eq!(
        writer.stores,
        vec![(0, 0), (2, words[2]), (3, words[3]), (0, words[0])]
    );
}

#[test]
fn a_hitless_switch_prewrites_then_stores_the_critical_qword_then_clears() {
    let old = make_ste(SteConfig::Stage1A);
    let new = make_ste(SteConfig::Stage2A);
    let (_, writer) = run_ste(&old, &new, "S1A -> S2A");
    let (o, n) = (old.words(), new.words());
    assert_eq!(
        writer.stores,
        vec![
            // Step 1: stage-2 fields stage 1 does not read (the VMID is already right).
            (2, n[2]),
            (3, n[3]),
            // Step 2: Config.
            (0, n[0]),
            // Step 3: stage-1 fields of word 1 that stage 2 does not read.
            (1, n[1]),
        ]
    );
    assert_ne!(o[1], n[1]);
}

// ---------------------------------------------------------------------------------------------
// CDs.

const TTB0_X: u64 = 0x4000_0000;
const TTB0_Y: u64 = 0x4100_0000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum CdConfig {
    Invalid,
    /// ASID 1, TTB0 X.
    A,
    /// ASID 2, TTB0 X.
    NewAsid,
    /// ASID 1, TTB0 Y.
    NewTtb0,
    /// ASID 2, TTB0 Y: another address space entirely.
    B,
    /// As A with another MAIR.
    NewMair,
    /// As A with a smaller input size (T0SZ).
    NewT0sz,
}

const CD_CONFIGS: [CdConfig; 7] = [
    CdConfig::Invalid,
    CdConfig::A,
    CdConfig::NewAsid,
    CdConfig::NewTtb0,
    CdConfig::B,
    CdConfig::NewMair,
    CdConfig::NewT0sz,
];

fn stage1(asid: u16, ttb0: u64, t0sz: u8, mair: u64) -> Cd {
    make_cd(
        &Stage1Translation::new(
            Stage1Parameters {
                asid: Asid(asid),
                ttb0: Ipa(ttb0),
                t0sz,
                tg0: Granule::Size4K,
                ir0: Cacheability::WriteBackWriteAllocate,
                or0: Cacheability::WriteBackWriteAllocate,
                sh0: Shareability::InnerShareable,
                ips: AddressSize::Bits44,
                mair: Mair(mair),
            },
            &qemu(),
        )
        .unwrap(),
    )
}

const MAIR: u64 = 0x0004_ff44;
const OTHER_MAIR: u64 = 0x0404_ff44;

fn make_cd_config(config: CdConfig) -> Cd {
    match config {
        CdConfig::Invalid => Cd::INVALID,
        CdConfig::A => stage1(1, TTB0_X, 16, MAIR),
        CdConfig::NewAsid => stage1(2, TTB0_X, 16, MAIR),
        CdConfig::NewTtb0 => stage1(1, TTB0_Y, 16, MAIR),
        CdConfig::B => stage1(2, TTB0_Y, 16, MAIR),
        CdConfig::NewMair => stage1(1, TTB0_X, 16, OTHER_MAIR),
        CdConfig::NewT0sz => stage1(1, TTB0_X, 25, MAIR),
    }
}

use Expect::HitlessAt as Q;

/// Rows: from; columns: to, in [`CD_CONFIGS`] order. A valid CD reads every bit of words 0, 1
/// and 3, so a change confined to one of them is a single store (ASID, T0SZ: word 0; TTB0:
/// word 1; MAIR: word 3), and a change spanning two of them breaks. Going valid pre-writes
/// words 1 and 3 then stores word 0; going invalid stores word 0 then clears 1 and 3.
#[rustfmt::skip]
const CD_EXPECTED: [[Expect; 7]; 7] = [
    //            Inv      A        Asid     Ttb0     B        Mair     T0SZ
    /* Inv  */ [N,       H(2),    H(2),    H(2),    H(2),    H(2),    H(2)   ],
    /* A    */ [H(2),    N,       H(1),    Q(1, 1), B,       Q(3, 1), H(1)   ],
    /* Asid */ [H(2),    H(1),    N,       B,       Q(1, 1), B,       H(1)   ],
    /* Ttb0 */ [H(2),    Q(1, 1), B,       N,       H(1),    B,       B      ],
    /* B    */ [H(2),    B,       Q(1, 1), H(1),    N,       B,       B      ],
    /* Mair */ [H(2),    Q(3, 1), B,       B,       B,       N,       B      ],
    /* T0SZ */ [H(2),    H(1),    H(1),    B,       B,       B,       N      ],
];

#[test]
fn every_ordered_pair_of_cd_configurations_installs_safely_with_the_expected_syncs() {
    for (from, row) in CD_CONFIGS.iter().zip(&CD_EXPECTED) {
        for (to, expected) in CD_CONFIGS.iter().zip(row) {
            let label = format!("CD {from:?} -> {to:?}");
            let (report, _) = run_cd(&make_cd_config(*from), &make_cd_config(*to), &label);
            expected.check(&report, &label);
        }
    }
}

#[test]
fn replacing_a_live_cd_with_another_address_space_breaks_in_three_syncs() {
    // ASID (word 0) tags the walks of TTB0 (word 1): a state with the new table and the old
    // ASID would fill the old address space's TLB entries from the new tables, so there is
    // no hitless order. The sequence: V=0, TTB0 and MAIR, then word 0.
    let old = make_cd_config(CdConfig::A);
    let new = make_cd_config(CdConfig::B);
    let (report, writer) = run_cd(&old, &new, "A -> B");
    assert_eq!(report.path, UpdatePath::Breaking);
    let n = new.words();
    assert_eq!(writer.stores, vec![(0, 0), (1, n[1]), (0, n[0])]);
}

// ---------------------------------------------------------------------------------------------
// The S2AA64 guard.

fn without_s2aa64(mut ste: Ste) -> Ste {
    ste.set_s2aa64(false);
    ste
}

#[test]
fn the_guard_refuses_a_valid_stage2_or_nested_ste_without_s2aa64() {
    for config in [SteConfig::Stage2A, SteConfig::NestedS1AS2A] {
        let bad = without_s2aa64(make_ste(config));
        assert_eq!(
            check_physical_ste(&bad),
            Err(PhysicalEntryError::Stage2WithoutAArch64),
            "{config:?}"
        );
    }
    // Stage 1 and bypass do not read S2AA64, and nothing of an invalid STE is read.
    assert_eq!(check_physical_ste(&make_ste(SteConfig::Stage1A)), Ok(()));
    let mut invalid = without_s2aa64(make_ste(SteConfig::Stage2A));
    invalid.set_v(false);
    assert_eq!(check_physical_ste(&invalid), Ok(()));
}

#[test]
fn made_stage2_and_nested_stes_always_have_s2aa64() {
    for config in STE_CONFIGS {
        let ste = make_ste(config);
        if ste.v() && ste.config().stage2_enabled() {
            assert!(ste.s2aa64(), "{config:?}");
        }
        assert_eq!(check_physical_ste(&ste), Ok(()), "{config:?}");
    }
}

#[test]
fn no_physical_ste_can_be_made_from_an_s2aa64_0_stage2_entry() {
    // The installer takes only a `PhysicalSte`, so refusing to make one is refusing to install.
    for bad_config in [SteConfig::Stage2A, SteConfig::NestedS1AS2B] {
        let bad = without_s2aa64(make_ste(bad_config));
        assert_eq!(
            PhysicalSte::check(bad),
            Err(PhysicalEntryError::Stage2WithoutAArch64),
            "{bad_config:?} without S2AA64"
        );
    }
    for config in STE_CONFIGS {
        let ste = make_ste(config);
        assert_eq!(
            PhysicalSte::check(ste).map(|p| *p.ste()),
            Ok(ste),
            "{config:?}"
        );
    }
}

#[test]
fn a_live_entry_failing_the_guard_is_replaced_through_a_break() {
    // A hitless plan from this entry would keep its bad word 2 live while the rest changes;
    // the installer breaks instead, so no store leaves an S2AA64=0 stage-2 STE visible.
    let bad = without_s2aa64(make_ste(SteConfig::Stage2A));
    let target = make_ste(SteConfig::NestedS1AS2A);
    let mut writer = RecordingWriter::new(bad.words());
    let mut current = bad;
    let physical = PhysicalSte::check(target).unwrap();
    let report = install_ste(&mut writer, &mut current, &physical).unwrap();
    assert_eq!(report.path, UpdatePath::Breaking);
    assert_eq!(writer.stores[0], (0, 0));
    for state in &writer.after_each_store {
        assert_eq!(ste_guard(state), Ok(()), "{state:x?}");
    }
    assert_eq!(current, target);
}

#[test]
fn the_cd_guard_refuses_aa64_0_and_reserved_encodings() {
    let mut cd = make_cd_config(CdConfig::A);
    cd.set_aa64(false);
    assert_eq!(
        check_physical_cd(&cd),
        Err(PhysicalEntryError::CdWithoutAArch64)
    );
    let mut cd = make_cd_config(CdConfig::A);
    cd.set_tg0_raw(3);
    assert_eq!(
        check_physical_cd(&cd),
        Err(PhysicalEntryError::CdEncoding(
            crate::cd::CdError::ReservedTg0(3)
        ))
    );
    assert_eq!(
        PhysicalCd::check(cd),
        Err(PhysicalEntryError::CdEncoding(
            crate::cd::CdError::ReservedTg0(3)
        ))
    );
    let good = make_cd_config(CdConfig::A);
    assert_eq!(PhysicalCd::check(good).map(|p| *p.cd()), Ok(good));
}

// ---------------------------------------------------------------------------------------------
// Failures and plans.

#[test]
fn a_failed_sync_stops_the_install_and_current_says_what_memory_holds() {
    for failing_sync in 1..=3 {
        let old = make_ste(SteConfig::Stage1A);
        let new = make_ste(SteConfig::Stage2A);
        let mut writer = RecordingWriter::new(old.words());
        writer.fail_sync_number = Some(failing_sync);
        let mut current = old;
        let target = PhysicalSte::check(new).unwrap();
        let result = install_ste(&mut writer, &mut current, &target);
        assert_eq!(result, Err(InstallError::Sync(SyncFailed)));
        assert_eq!(current.words(), writer.entry, "sync {failing_sync}");
        assert_eq!(writer.syncs, failing_sync);
        let state = current.words();
        assert!(
            ste_equivalent_words(&state, &old.words())
                || ste_equivalent_words(&state, &new.words())
        );
    }
}

#[test]
fn the_update_path_is_available_without_writing() {
    assert_eq!(
        ste_update_path(&make_ste(SteConfig::Stage2A), &make_ste(SteConfig::Stage2B)),
        UpdatePath::Breaking
    );
    assert_eq!(
        ste_update_path(&make_ste(SteConfig::Abort), &make_ste(SteConfig::Stage2A)),
        UpdatePath::Hitless { critical_qword: 0 }
    );
    assert_eq!(
        super::install::cd_update_path(
            &make_cd_config(CdConfig::A),
            &make_cd_config(CdConfig::NewTtb0)
        ),
        UpdatePath::Hitless { critical_qword: 1 }
    );
}

#[test]
fn stale_unused_bits_are_rewritten_in_place_without_a_break() {
    // An abort STE with leftovers of an old stage-2 configuration in words 2 and 3 behaves as
    // a clean abort STE; cleaning it is one in-place step.
    let mut dirty = make_abort_ste();
    let s2 = make_ste(SteConfig::Stage2A);
    dirty = Ste::from_words([
        dirty.words()[0],
        0,
        s2.words()[2],
        s2.words()[3],
        0,
        0,
        0,
        0,
    ]);
    let (report, _) = run_ste(&dirty, &make_abort_ste(), "dirty abort -> abort");
    assert_eq!((report.path, report.syncs), (UpdatePath::InPlace, 1));
}

// ---------------------------------------------------------------------------------------------
// Property tests over made configurations.

fn any_stage2() -> impl Strategy<Value = Stage2Translation> {
    (
        1u16..4,
        0u64..4,
        prop::sample::select(vec![
            (24u8, StartLevel::Level1),
            (24, StartLevel::Level0),
            (28, StartLevel::Level1),
            (32, StartLevel::Level1),
        ]),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::sample::select(vec![AddressSize::Bits40, AddressSize::Bits44]),
    )
        .prop_map(|(vmid, ttb, (s2t0sz, s2sl0), s2r, s2affd, s2ptw, s2ps)| {
            Stage2Translation::new(
                Stage2Parameters {
                    vmid: Vmid(vmid),
                    s2ttb: PhysAddr(0x4000_0000 + ttb * 0x10_0000),
                    s2t0sz,
                    s2sl0,
                    s2tg: Granule::Size4K,
                    s2ps,
                    s2ir0: Cacheability::WriteBackWriteAllocate,
                    s2or0: Cacheability::from_encoding(u8::try_from(ttb).unwrap()),
                    s2sh0: Shareability::InnerShareable,
                    s2r,
                    s2affd,
                    s2ptw,
                },
                &qemu(),
            )
            .unwrap()
        })
}

fn any_table_parameters() -> impl Strategy<Value = (u64, S1Dss, Cacheability)> {
    (
        0u64..4,
        prop::sample::select(vec![S1Dss::Terminate, S1Dss::Bypass, S1Dss::Substream0]),
        (0u8..4).prop_map(Cacheability::from_encoding),
    )
}

fn context_table<A: super::make::TableAddress>(
    address: A,
    s1dss: S1Dss,
    cacheability: Cacheability,
) -> ContextTable<A> {
    ContextTable::new(
        ContextTableParameters {
            s1context_ptr: address,
            s1fmt: S1Fmt::Linear,
            s1cdmax: 0,
            s1dss,
            s1cir: cacheability,
            s1cor: Cacheability::WriteBackWriteAllocate,
            s1csh: Shareability::InnerShareable,
        },
        &qemu(),
    )
    .unwrap()
}

fn any_made_ste() -> impl Strategy<Value = Ste> {
    (0u8..6, any_stage2(), any_table_parameters(), 1u16..4).prop_map(
        |(kind, s2, (table_index, s1dss, cacheability), vmid)| {
            let pa = PhysAddr(0x5000_0000 + table_index * 0x1000);
            let ipa = Ipa(0x8000_0000 + table_index * 0x1000);
            match kind {
                0 => Ste::INVALID,
                1 => make_abort_ste(),
                2 => make_bypass_ste(&qemu()),
                3 => make_stage2_ste(&s2),
                4 => make_stage1_ste(&context_table(pa, s1dss, cacheability), Vmid(vmid), &qemu())
                    .unwrap(),
                _ => make_nested_ste(&context_table(ipa, s1dss, cacheability), &s2).unwrap(),
            }
        },
    )
}

fn any_made_cd() -> impl Strategy<Value = Cd> {
    (
        0u8..8,
        1u16..4,
        0u64..3,
        prop::sample::select(vec![16u8, 25, 32]),
        0u64..3,
    )
        .prop_map(|(valid, asid, ttb, t0sz, mair)| {
            if valid == 0 {
                Cd::INVALID
            } else {
                stage1(
                    asid,
                    0x4000_0000 + ttb * 0x10_0000,
                    t0sz,
                    MAIR + (mair << 40),
                )
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_pairs_of_made_stes_end_at_the_target_and_never_expose_a_mixed_state(
        old in any_made_ste(),
        new in any_made_ste(),
    ) {
        // `run_ste` asserts the end state, every observable mix, and that a break is taken
        // exactly when no hitless order exists.
        let (report, _) = run_ste(&old, &new, "random STE pair");
        prop_assert!(report.syncs <= 3);
    }

    #[test]
    fn random_pairs_of_made_cds_end_at_the_target_and_never_expose_a_mixed_state(
        old in any_made_cd(),
        new in any_made_cd(),
    ) {
        let (report, _) = run_cd(&old, &new, "random CD pair");
        prop_assert!(report.syncs <= 3);
    }

    #[test]
    fn made_stes_enabling_stage2_always_have_s2aa64(ste in any_made_ste()) {
        if ste.v() && ste.config().stage2_enabled() {
            prop_assert!(ste.s2aa64());
        }
        prop_assert_eq!(check_physical_ste(&ste), Ok(()));
    }

    #[test]
    fn any_valid_stage2_ste_with_s2aa64_0_is_refused(
        words in any::<[u64; 8]>(),
        nested in any::<bool>(),
    ) {
        let mut ste = Ste::from_words(words);
        ste.set_v(true);
        ste.set_config(if nested { StreamConfig::Nested } else { StreamConfig::Stage2 });
        ste.set_s2aa64(false);
        prop_assert_eq!(check_physical_ste(&ste), Err(PhysicalEntryError::Stage2WithoutAArch64));
        // And so no installer will take it.
        prop_assert_eq!(PhysicalSte::check(ste), Err(PhysicalEntryError::Stage2WithoutAArch64));
    }

    #[test]
    fn from_any_leftover_entry_a_made_ste_is_reached_and_no_store_exposes_a_bad_ste(
        leftover in any::<[u64; 8]>(),
        new in any_made_ste(),
    ) {
        let old = Ste::from_words(leftover);
        let mut writer = RecordingWriter::new(leftover);
        let mut current = old;
        install_ste(&mut writer, &mut current, &PhysicalSte::check(new).unwrap()).unwrap();
        prop_assert_eq!(current, new);
        prop_assert_eq!(writer.entry, new.words());
        for state in &writer.after_each_store {
            prop_assert_eq!(ste_guard(state), Ok(()));
        }
        // A leftover the guard accepts is replaced as safely as a made entry.
        if check_physical_ste(&old).is_ok() {
            let breaking = ste_update_path(&old, &new) == UpdatePath::Breaking;
            assert_every_observable_state_is_old_new_or_allowed_break(
                &writer, &leftover, &new.words(), breaking,
                ste_equivalent_words, ste_guard, "leftover",
            );
        }
    }

    #[test]
    fn from_any_invalid_leftover_a_made_cd_is_reached_without_a_mixed_state(
        leftover in any::<[u64; 8]>(),
        new in any_made_cd(),
    ) {
        let mut old = Cd::from_words(leftover);
        old.set_v(false);
        let (report, _) = run_cd(&old, &new, "invalid leftover CD");
        prop_assert_ne!(report.path, UpdatePath::Breaking);
    }
}
