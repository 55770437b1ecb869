//! STEs and CDs: what a guest's entries become on the physical SMMU.

use smmu::command::Cmd;
use smmu::entry::install::{check_physical_cd, check_physical_ste};
use smmu::ste::StreamConfig;
use smmu::{Ipa, StreamId, VirtualStreamId, Vmid};

use super::*;
use crate::testing::{CD_WINDOW, layout};
use crate::validate::cd::InvalidCd;
use crate::validate::ste::InvalidSte;

/// How a test spoils a good entry.
type Spoil = fn(&TestVm, &mut [u64; 8]);

fn cfgi_ste(vsid: VirtualStreamId) -> Cmd {
    Cmd::CfgiSte {
        sid: StreamId(vsid.0),
        leaf: true,
    }
}

#[test]
fn a_stage1_ste_becomes_nested_over_the_vms_stage2_with_its_cds_in_the_window() {
    let mut vm = linux_vm();
    assert!(attach_dma_domain(&mut vm, EDU.virtual_sid));
    let ste = physical_ste(&vm, EDU.physical_sid);
    assert_eq!(check_physical_ste(&ste), Ok(()));
    assert_eq!(ste.config(), StreamConfig::Nested);
    assert_eq!(ste.s2vmid(), vm.vmid, "VMID forced");
    assert_eq!(ste.s2ttb(), vm.root, "the VM's stage-2 root");
    assert!(ste.s2aa64());
    assert_eq!(ste.s1cdmax(), 0);
    let window = vm.vsmmu.cd_window();
    assert_eq!(window.base, CD_WINDOW);
    assert!(
        window.contains(ste.s1_context_ptr()),
        "S1ContextPtr is in the CD window"
    );
    assert!(!vm.memory.ram().overlaps(&window), "outside guest RAM");
    // The shadow CD carries the guest's translation, and TTB0 stays a guest IPA.
    let cd = shadow_cd(&vm, &ste, 0);
    assert_eq!(check_physical_cd(&cd), Ok(()));
    assert!(cd.v());
    assert_eq!(cd.ttb0(), vm.ram(layout::TABLES));
    assert_eq!(cd.asid().0, 1);
    assert_eq!(cd.words()[..4], guest_cd(1, vm.ram(layout::TABLES))[..4]);
}

#[test]
fn bypass_is_stage2_only_and_abort_stays_abort() {
    let mut vm = linux_vm();
    vm.put_ste(EDU.virtual_sid, guest_bypass_ste());
    assert!(vm.submit_sync(&[cfgi_ste(EDU.virtual_sid)]));
    let ste = physical_ste(&vm, EDU.physical_sid);
    assert_eq!(ste.config(), StreamConfig::Stage2);
    assert_eq!((ste.s2vmid(), ste.s2ttb()), (vm.vmid, vm.root));
    vm.put_ste(EDU.virtual_sid, [1, 0, 0, 0, 0, 0, 0, 0]);
    assert!(vm.submit_sync(&[cfgi_ste(EDU.virtual_sid)]));
    let ste = physical_ste(&vm, EDU.physical_sid);
    assert!(ste.v() && ste.config() == StreamConfig::Abort);
}

#[test]
fn every_invalid_guest_ste_blocks_the_stream_and_is_counted_by_cause() {
    let good = |vm: &TestVm| guest_s1_ste(vm.ram(layout::CDS), 0);
    let cases: [(&str, Spoil, InvalidSte); 9] = [
        ("V = 0", |_, w| w[0] &= !1, InvalidSte::NotValid),
        (
            "nested config",
            |_, w| w[0] |= 7 << 1,
            InvalidSte::Stage2Config(7),
        ),
        (
            "stage-2 config",
            |_, w| w[0] = w[0] & !0xe | 6 << 1,
            InvalidSte::Stage2Config(6),
        ),
        (
            "word 0 reserved",
            |_, w| w[0] |= 1 << 57,
            InvalidSte::Word0Reserved(1 << 57),
        ),
        (
            "STRW EL2",
            |_, w| w[1] |= 2 << 30,
            InvalidSte::Word1Reserved(2 << 30),
        ),
        (
            "SHCFG inner",
            |_, w| w[1] |= 3 << 44,
            InvalidSte::Word1Reserved(1 << 45),
        ),
        (
            "substreams beyond SSIDSIZE",
            |_, w| w[0] |= 1 << 59,
            InvalidSte::S1CdMaxTooLarge {
                s1cdmax: 1,
                ssid_bits: 0,
            },
        ),
        (
            "CD table beyond the OAS",
            |_, w| w[0] |= 1 << 50,
            InvalidSte::ContextPointerBeyondOas,
        ),
        (
            "stall disable",
            |_, w| w[1] |= 1 << 27,
            InvalidSte::StallDisableWithoutStalls,
        ),
    ];
    for (what, spoil, cause) in cases {
        let mut vm = linux_vm();
        assert!(attach_dma_domain(&mut vm, EDU.virtual_sid));
        let mut words = good(&vm);
        spoil(&vm, &mut words);
        vm.put_ste(EDU.virtual_sid, words);
        let before = vm.vsmmu.counters().ste_rejections[cause.index()];
        assert!(vm.submit_sync(&[cfgi_ste(EDU.virtual_sid)]), "{what}");
        let ste = physical_ste(&vm, EDU.physical_sid);
        assert!(
            !ste.v(),
            "{what}: V=0, the SMMU aborts and reports C_BAD_STE"
        );
        assert_eq!(
            vm.vsmmu.counters().ste_rejections[cause.index()] - before,
            1,
            "{what}"
        );
    }
}

#[test]
fn linux_6_1s_bypass_and_abort_stes_with_shcfg_incoming_are_accepted() {
    let mut vm = linux_vm();
    vm.put_ste(EDU.virtual_sid, [1, 1 << 44, 0, 0, 0, 0, 0, 0]);
    assert!(vm.submit_sync(&[cfgi_ste(EDU.virtual_sid)]));
    assert_eq!(
        physical_ste(&vm, EDU.physical_sid).config(),
        StreamConfig::Abort
    );
    vm.put_ste(EDU.virtual_sid, guest_bypass_ste());
    assert!(vm.submit_sync(&[cfgi_ste(EDU.virtual_sid)]));
    assert_eq!(
        physical_ste(&vm, EDU.physical_sid).config(),
        StreamConfig::Stage2
    );
}

#[test]
fn a_two_level_guest_stream_table_is_walked_and_its_hostile_pointers_are_refused() {
    use smmu::registers::offset as o;
    let mut vm = linux_vm();
    vm.write32(u64::from(o::CR0.get()), 0b1100).unwrap();
    // 2-level, SPLIT 6, LOG2SIZE 8: level-1 descriptor 0 covers streams 0..63.
    let l1 = vm.ram(layout::STREAM_TABLE);
    let l2 = vm.ram(layout::STREAM_TABLE + 0x1000);
    vm.write64(u64::from(o::STRTAB_BASE.get()), l1.0).unwrap();
    vm.write32(u64::from(o::STRTAB_BASE_CFG.get()), 1 << 16 | 6 << 6 | 8)
        .unwrap();
    vm.memory.put_words(l1, &[l2.0 | 7]);
    vm.memory.put_words(Ipa(l2.0 + 8 * 64), &guest_bypass_ste());
    vm.write32(u64::from(o::CR0.get()), 0b1101).unwrap();
    assert_eq!(
        physical_ste(&vm, EDU.physical_sid).config(),
        StreamConfig::Stage2
    );
    // The level-2 pointer aimed at the hypervisor's memory: the fetch aborts, the stream is
    // blocked (F_STE_FETCH on traffic), and nothing is read there.
    vm.memory.put_words(l1, &[0x4020_0000 | 7]);
    assert!(vm.submit_sync(&[Cmd::cfgi_all()]));
    assert!(!physical_ste(&vm, EDU.physical_sid).v());
    assert_eq!(vm.vsmmu.counters().ste_lookup_faults, 1);
}

#[test]
fn invalid_guest_cds_give_an_invalid_shadow_and_are_counted_by_cause() {
    let cases: [(&str, Spoil, InvalidCd); 7] = [
        ("V = 0", |_, w| w[0] &= !(1 << 31), InvalidCd::NotValid),
        ("AArch32", |_, w| w[0] &= !(1 << 41), InvalidCd::NotAArch64),
        (
            "stall",
            |_, w| w[0] |= 1 << 44,
            InvalidCd::StallNotSupported,
        ),
        (
            "HTTU",
            |_, w| w[0] |= 1 << 43,
            InvalidCd::HardwareUpdateNotSupported,
        ),
        ("A = 0", |_, w| w[0] &= !(1 << 46), InvalidCd::AbortRequired),
        (
            "T0SZ 12",
            |_, w| w[0] = w[0] & !0x3f | 12,
            InvalidCd::InputSizeOutOfRange(crate::validate::cd::CdTable::Ttb0),
        ),
        (
            "reserved word 1 bits",
            |_, w| w[1] |= 1 << 60,
            InvalidCd::ReservedBits {
                word: 1,
                bits: 1 << 60,
            },
        ),
    ];
    for (what, spoil, cause) in cases {
        let mut vm = linux_vm();
        assert!(attach_dma_domain(&mut vm, EDU.virtual_sid));
        let cd_table = vm.ram(layout::CDS + 8 * 64);
        let mut words = guest_cd(1, vm.ram(layout::TABLES));
        spoil(&vm, &mut words);
        vm.memory.put_words(cd_table, &words);
        assert!(
            vm.submit_sync(&[Cmd::CfgiCd {
                sid: StreamId(8),
                ssid: smmu::SubstreamId(0),
                leaf: true
            }]),
            "{what}"
        );
        let ste = physical_ste(&vm, EDU.physical_sid);
        assert_eq!(ste.config(), StreamConfig::Nested, "{what}: the STE stays");
        assert!(
            !shadow_cd(&vm, &ste, 0).v(),
            "{what}: the shadow CD is invalid"
        );
        assert_eq!(
            vm.vsmmu.counters().cd_rejections[cause.index()],
            1,
            "{what}"
        );
    }
}

#[test]
fn replacing_a_live_cd_with_another_valid_one_is_hitless() {
    let mut vm = linux_vm();
    assert!(attach_dma_domain(&mut vm, EDU.virtual_sid));
    let cd_table = vm.ram(layout::CDS + 8 * 64);
    // A new stage-1 root (same ASID): one critical qword, no break.
    let syncs = vm.vsmmu.counters().install_syncs;
    let guest_syncs = vm.vsmmu.counters().physical_syncs;
    let old = shadow_cd(&vm, &physical_ste(&vm, EDU.physical_sid), 0);
    vm.memory
        .put_words(cd_table, &guest_cd(1, vm.ram(layout::TABLES + 0x1000)));
    assert!(vm.submit_sync(&[Cmd::CfgiCd {
        sid: StreamId(8),
        ssid: smmu::SubstreamId(0),
        leaf: true
    }]));
    let ste = physical_ste(&vm, EDU.physical_sid);
    let cd = shadow_cd(&vm, &ste, 0);
    assert_eq!(cd.ttb0(), vm.ram(layout::TABLES + 0x1000));
    assert!(matches!(
        smmu::entry::install::cd_update_path(&old, &cd),
        smmu::entry::install::UpdatePath::Hitless { .. }
    ));
    let used = vm.vsmmu.counters().install_syncs - syncs;
    assert!((1..=3).contains(&used), "{used} syncs");
    assert_eq!(
        vm.vsmmu.counters().physical_syncs,
        guest_syncs,
        "the install's syncs covered the guest's"
    );
    let _ = Vmid(0);
}

/// A physical SMMU like QEMU's but with 5-bit substream IDs.
fn with_substreams() -> TestVm {
    let ids = smmu::registers::IdRegisters {
        idr1: smmu::registers::IdRegisters::QEMU_VIRT.idr1 | 5 << 6,
        ..smmu::registers::IdRegisters::QEMU_VIRT
    };
    let physical = crate::testing::SharedPhysical::new(ids);
    let mut vm = TestVm::new(&physical, Vmid(3), RAM_A, &[EDU]);
    assert!(vm.linux_reset());
    vm
}

#[test]
fn substreams_are_shadowed_from_linear_and_two_level_guest_cd_tables() {
    let mut vm = with_substreams();
    // The shadow holds 64 CDs per stream at most, and the physical SMMU 2^5.
    assert_eq!(vm.vsmmu.features().ssid_bits, 5);
    assert!(vm.vsmmu.features().cd2l);
    // Linear, four CDs with ASIDs 10..13.
    let table = vm.ram(layout::CDS);
    for ssid in 0..4u64 {
        let cd = guest_cd(10 + ssid as u16, vm.ram(layout::TABLES));
        vm.memory.put_words(Ipa(table.0 + ssid * 64), &cd);
    }
    vm.put_ste(EDU.virtual_sid, guest_s1_ste(table, 2));
    assert!(vm.submit_sync(&[cfgi_ste(EDU.virtual_sid)]));
    let ste = physical_ste(&vm, EDU.physical_sid);
    assert_eq!((ste.config(), ste.s1cdmax()), (StreamConfig::Nested, 2));
    for ssid in 0..4 {
        assert_eq!(shadow_cd(&vm, &ste, ssid).asid().0, 10 + ssid as u16);
    }
    // Two-level with 4 KiB leaves: a level-1 descriptor to a leaf holding CDs 0..63; the
    // shadow is linear whatever the guest's shape.
    let l1 = vm.ram(layout::CDS + 0x2000);
    let leaf = vm.ram(layout::CDS + 0x3000);
    vm.memory.put_words(l1, &[leaf.0 | 1]);
    for ssid in 0..4u64 {
        let cd = guest_cd(20 + ssid as u16, vm.ram(layout::TABLES));
        vm.memory.put_words(Ipa(leaf.0 + ssid * 64), &cd);
    }
    let mut words = guest_s1_ste(l1, 2);
    words[0] |= 1 << 4; // S1Fmt: 2-level, 4 KiB leaves.
    vm.put_ste(EDU.virtual_sid, words);
    assert!(vm.submit_sync(&[cfgi_ste(EDU.virtual_sid)]));
    let ste = physical_ste(&vm, EDU.physical_sid);
    for ssid in 0..4 {
        assert_eq!(shadow_cd(&vm, &ste, ssid).asid().0, 20 + ssid as u16);
    }
    // One CD replaced with CFGI_CD: only that one changes, hitlessly.
    vm.memory
        .put_words(Ipa(leaf.0 + 64), &guest_cd(99, vm.ram(layout::TABLES)));
    assert!(vm.submit_sync(&[Cmd::CfgiCd {
        sid: StreamId(8),
        ssid: smmu::SubstreamId(1),
        leaf: true
    }]));
    let ste = physical_ste(&vm, EDU.physical_sid);
    assert_eq!(shadow_cd(&vm, &ste, 1).asid().0, 99);
    assert_eq!(shadow_cd(&vm, &ste, 2).asid().0, 22);
    // A level-1 descriptor with V=0 makes its CDs invalid in the shadow.
    vm.memory.put_words(l1, &[0]);
    assert!(vm.submit_sync(&[Cmd::CfgiCdAll { sid: StreamId(8) }]));
    let ste = physical_ste(&vm, EDU.physical_sid);
    assert!(!shadow_cd(&vm, &ste, 0).v());
}
