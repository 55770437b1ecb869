//! The register file, as the architecture and Linux's probe and reset see it.

use smmu::registers::{Features, IdRegisters, offset as o};
use smmu::ste::StreamConfig;
use smmu::{Ipa, Vmid};

use super::*;
use crate::interfaces::mmio::{
    AccessWidth, MmioDevice, MmioError, MmioOffset, MmioOutcome, VcpuId,
};
use crate::testing::SharedPhysical;

fn at(r: smmu::registers::RegisterOffset) -> u64 {
    u64::from(r.get())
}

#[test]
fn linux_probes_a_stage1_only_smmu_with_msi_polling_and_both_table_formats() {
    let mut vm = linux_vm();
    let ids = IdRegisters {
        idr0: vm.read32(at(o::IDR0)),
        idr1: vm.read32(at(o::IDR1)),
        idr3: vm.read32(at(o::IDR3)),
        idr5: vm.read32(at(o::IDR5)),
    };
    let f = Features::decode(&ids).unwrap();
    assert!(f.s1p && !f.s2p && !f.hyp, "stage 1 only");
    assert!(
        f.msi && f.cohacc,
        "MSI with coherent access: Linux polls CMD_SYNC in memory"
    );
    assert!(f.sev);
    assert!(!f.ats && !f.pri && !f.btm);
    assert_eq!(f.httu, smmu::registers::Httu::None);
    assert_eq!(f.stall_model, smmu::registers::StallModel::TerminateOnly);
    assert_eq!(f.term_model, smmu::registers::TermModel::AbortOnly);
    assert_eq!(f.st_level, smmu::registers::StreamTableFormat::TwoLevel);
    assert_eq!(f.sidsize, 8);
    assert_eq!(
        f.ssidsize, 0,
        "QEMU has no substreams, so neither does its vSMMU"
    );
    assert!(
        f.cmdqs > 6,
        "Linux refuses command queues of 64 entries or fewer"
    );
    assert_eq!(
        f.oas,
        smmu::translation::AddressSize::Bits44,
        "the VM's IPA size"
    );
    assert!(f.ril && f.asid16 && f.gran4k, "the physical SMMU's");
    // IDR1's embedded-implementation bits, which make Linux give up, are clear.
    assert_eq!(ids.idr1 & (0b111 << 28), 0);
}

#[test]
fn the_linux_reset_sequence_is_acknowledged_and_enables_translation() {
    let mut vm = linux_vm();
    assert_eq!(vm.read32(at(o::CR0ACK)), 0b1101);
    // Translation follows the (empty) guest stream table: STE V=0, blocked.
    let ste = physical_ste(&vm, EDU.physical_sid);
    assert!(!ste.v(), "an invalid guest STE blocks the stream");
}

#[test]
fn before_the_driver_enables_it_the_vsmmu_applies_gbpa_abort_then_bypass_as_stage2() {
    let physical = SharedPhysical::qemu_virt();
    let mut vm = TestVm::new(&physical, Vmid(1), RAM_A, &[EDU]);
    let ste = physical_ste(&vm, EDU.physical_sid);
    assert!(ste.v() && ste.config() == StreamConfig::Abort);
    assert_eq!(vm.read32(at(o::GBPA)) & (1 << 20), 1 << 20);
    // A GBPA write without UPDATE is ignored.
    assert_eq!(
        vm.write32(at(o::GBPA), 0),
        Err(MmioError::WriteIgnored(MmioOffset(at(o::GBPA))))
    );
    assert!(physical_ste(&vm, EDU.physical_sid).config() == StreamConfig::Abort);
    // With UPDATE: "bypass" is stage 2 alone, with the VM's VMID and stage-2 root.
    vm.write32(at(o::GBPA), 1 << 31).unwrap();
    assert_eq!(vm.read32(at(o::GBPA)), 0, "the update completed");
    let ste = physical_ste(&vm, EDU.physical_sid);
    assert_eq!(ste.config(), StreamConfig::Stage2);
    assert_eq!(ste.s2vmid(), Vmid(1));
    assert_eq!(ste.s2ttb(), vm.root);
}

#[test]
fn guarded_registers_ignore_writes_while_their_enable_is_set() {
    let mut vm = linux_vm();
    let strtab = vm.read32(at(o::STRTAB_BASE));
    for (register, value) in [
        (o::STRTAB_BASE, 0x1234_0000u32),
        (o::STRTAB_BASE_CFG, 3),
        (o::CMDQ_BASE, 0x5678_0000),
        (o::CMDQ_CONS, 7),
        (o::EVTQ_BASE, 0x9abc_0000),
        (o::EVTQ_PROD, 3),
        (o::CR1, 0),
        (o::CR2, 0),
        (o::GERROR_IRQ_CFG1, 5),
        (o::EVTQ_IRQ_CFG1, 5),
    ] {
        let before = vm.read32(at(register));
        assert_eq!(
            vm.write32(at(register), value),
            Err(MmioError::WriteIgnored(MmioOffset(at(register)))),
            "{register:?}"
        );
        assert_eq!(vm.read32(at(register)), before, "{register:?}");
    }
    assert_eq!(vm.read32(at(o::STRTAB_BASE)), strtab);
    // Read-only registers too.
    for register in [o::IDR0, o::CR0ACK, o::IRQ_CTRLACK, o::GERROR] {
        let before = vm.read32(at(register));
        assert!(vm.write32(at(register), 0xffff_ffff).is_err());
        assert_eq!(vm.read32(at(register)), before);
    }
}

#[test]
fn accesses_of_unsupported_width_or_alignment_abort_and_reserved_offsets_are_raz_wi() {
    let mut vm = linux_vm();
    let vcpu = VcpuId(1);
    let cases = [
        (0x20, AccessWidth::Bits8, MmioOutcome::ExternalAbort),
        (0x20, AccessWidth::Bits16, MmioOutcome::ExternalAbort),
        (0x22, AccessWidth::Bits32, MmioOutcome::ExternalAbort),
        (0x84, AccessWidth::Bits64, MmioOutcome::ExternalAbort),
        (0x2_0000, AccessWidth::Bits32, MmioOutcome::ExternalAbort),
        (0x1_fffc, AccessWidth::Bits64, MmioOutcome::ExternalAbort),
        (
            u64::MAX - 3,
            AccessWidth::Bits32,
            MmioOutcome::ExternalAbort,
        ),
        (
            0xC0,
            AccessWidth::Bits32,
            MmioOutcome::ReadAsZeroWriteIgnored,
        ),
        (
            0x1_00C8,
            AccessWidth::Bits32,
            MmioOutcome::ReadAsZeroWriteIgnored,
        ),
        (
            0xFD0,
            AccessWidth::Bits64,
            MmioOutcome::ReadAsZeroWriteIgnored,
        ),
    ];
    for (offset, width, outcome) in cases {
        let read = vm.vsmmu.mmio_read(MmioOffset(offset), width, vcpu);
        assert_eq!(
            read.map_err(MmioError::outcome),
            Err(outcome),
            "{offset:#x} {width:?}"
        );
        let write = vm
            .vsmmu
            .mmio_write(MmioOffset(offset), width, u64::MAX, vcpu);
        assert_eq!(
            write.map_err(MmioError::outcome),
            Err(outcome),
            "{offset:#x} {width:?}"
        );
    }
    assert_eq!(vm.read32(at(o::CR0ACK)), 0b1101, "nothing was disturbed");
}

#[test]
fn sixty_four_bit_registers_are_two_halves_and_pairs_of_32_bit_ones_split() {
    let physical = SharedPhysical::qemu_virt();
    let mut vm = TestVm::new(&physical, Vmid(1), RAM_A, &[EDU]);
    vm.write32(at(o::STRTAB_BASE), 0x4001_0040).unwrap();
    vm.write32(at(o::STRTAB_BASE) + 4, 0x4000_0000).unwrap();
    let whole = vm
        .vsmmu
        .mmio_read(
            MmioOffset(at(o::STRTAB_BASE)),
            AccessWidth::Bits64,
            VcpuId(0),
        )
        .unwrap();
    // RA kept; address bits above the 44-bit OAS and below 64 bytes dropped.
    assert_eq!(whole, 1 << 62 | 0x4001_0040);
    // A 64-bit store to CMDQ_PROD/CMDQ_CONS acts as two 32-bit stores.
    vm.write64(at(o::CMDQ_PROD), 0x0000_0003_0000_0005).unwrap();
    assert_eq!(vm.read32(at(o::CMDQ_PROD)), 5);
    assert_eq!(vm.read32(at(o::CMDQ_CONS)), 3);
}

#[test]
fn page1_event_queue_pointers_alias_in_page0() {
    let physical = SharedPhysical::qemu_virt();
    let mut vm = TestVm::new(&physical, Vmid(1), RAM_A, &[EDU]);
    vm.write32(at(o::EVTQ_CONS), 0x8000_0002).unwrap();
    assert_eq!(vm.read32(0xAC), 0x8000_0002);
    vm.write32(0xA8, 4).unwrap();
    assert_eq!(vm.read32(at(o::EVTQ_PROD)), 4);
}

#[test]
fn cr0ack_smmuen_waits_until_the_streams_follow_and_polling_finishes_the_work() {
    let physical = SharedPhysical::qemu_virt();
    // A budget too small to re-shadow a stream in the CR0 trap.
    let mut vm = TestVm::with_budget(&physical, Vmid(1), RAM_A, &[EDU], 1);
    let strtab = vm.ram(layout::STREAM_TABLE).0;
    vm.write64(at(o::STRTAB_BASE), strtab).unwrap();
    vm.write32(at(o::STRTAB_BASE_CFG), 8).unwrap();
    vm.put_ste(EDU.virtual_sid, guest_bypass_ste());
    vm.write32(at(o::CR0), 1).unwrap();
    assert!(
        vm.vsmmu.has_pending_work(),
        "a budget of 1 does not finish in the CR0 trap"
    );
    assert_eq!(vm.read32(at(o::CR0)), 1);
    // Each CR0ACK read continues the work; the acknowledgement comes within a few reads.
    let mut reads = 0;
    while vm.read32(at(o::CR0ACK)) & 1 == 0 {
        reads += 1;
        assert!(reads < 10, "CR0ACK.SMMUEN never followed");
    }
    assert_eq!(
        physical_ste(&vm, EDU.physical_sid).config(),
        StreamConfig::Stage2
    );
    let _ = Ipa(0);
}
