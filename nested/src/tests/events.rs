//! Physical events back to the guest: rewritten, kept, or dropped as its queue dictates.

use smmu::command::Cmd;
use smmu::event::{Event, EventAddress, EventId, EventRecord, FaultClass};
use smmu::registers::offset as o;
use smmu::{Iova, Ipa, StreamId, Vmid};

use super::*;
use crate::events::{DropReason, EventDisposition, WithheldReason};
use crate::interfaces::interrupts::VirtualInterrupt;

fn at(r: smmu::registers::RegisterOffset) -> u64 {
    u64::from(r.get())
}

fn stage1_fault(sid: StreamId) -> Event {
    Event {
        id: EventId::FTranslation,
        sid,
        ssid: None,
        stag: 0x55,
        stall: false,
        pnu: false,
        ind: false,
        rnw: true,
        s2: false,
        class: FaultClass::Input,
        input_addr: Iova(0x1234_5000),
        addr2: EventAddress::Ipa(Ipa(0x7777_7000)),
    }
}

fn guest_events(vm: &mut TestVm) -> Vec<EventRecord> {
    let prod = vm.read32(at(o::EVTQ_PROD)) & 0x7f;
    let base = vm.ram(layout::EVENT_QUEUE);
    (0..prod)
        .map(|i| {
            let words = vm.memory.words(Ipa(base.0 + u64::from(i) * 32), 4);
            EventRecord::from_words([words[0], words[1], words[2], words[3]])
        })
        .collect()
}

#[test]
fn a_stage1_fault_reaches_the_guest_with_its_virtual_stream_and_no_hypervisor_detail() {
    let physical = SharedPhysical::qemu_virt();
    let assignment = StreamAssignment {
        virtual_sid: smmu::VirtualStreamId(3),
        physical_sid: StreamId(0x40),
    };
    let mut vm = TestVm::new(&physical, Vmid(2), RAM_A, &[assignment]);
    assert!(vm.linux_reset());
    assert!(attach_dma_domain(&mut vm, assignment.virtual_sid));
    let irqs = vm.interrupts.count(VirtualInterrupt::EventQueue);
    assert_eq!(
        vm.vsmmu
            .handle_physical_event(&stage1_fault(StreamId(0x40))),
        EventDisposition::Forwarded
    );
    let events = guest_events(&mut vm);
    let event = events[0].decode().unwrap();
    assert_eq!(event.id, EventId::FTranslation);
    assert_eq!(event.sid, StreamId(3), "the virtual stream ID");
    assert_eq!(event.input_addr, Iova(0x1234_5000));
    assert_eq!(event.stag, 0, "no stall tag");
    assert_eq!(
        event.addr2,
        EventAddress::Ipa(Ipa(0)),
        "no IPA of the hypervisor's"
    );
    assert_eq!(vm.interrupts.count(VirtualInterrupt::EventQueue), irqs + 1);
}

#[test]
fn stage2_faults_are_kept_by_the_hypervisor_and_counted() {
    let mut vm = linux_vm();
    assert!(attach_dma_domain(&mut vm, EDU.virtual_sid));
    let mut event = stage1_fault(EDU.physical_sid);
    event.s2 = true;
    assert_eq!(
        vm.vsmmu.handle_physical_event(&event),
        EventDisposition::Withheld(WithheldReason::Stage2Fault)
    );
    assert!(guest_events(&mut vm).is_empty());
    assert_eq!(
        vm.vsmmu.counters().events_withheld[WithheldReason::Stage2Fault.index()],
        1
    );
}

#[test]
fn c_bad_ste_is_forwarded_only_when_the_guest_made_the_stream_invalid() {
    let mut vm = linux_vm();
    // The guest's stream table is empty: STE V=0.
    let bad = Event::new(EventId::CBadSte, EDU.physical_sid);
    assert_eq!(
        vm.vsmmu.handle_physical_event(&bad),
        EventDisposition::Forwarded
    );
    let event = guest_events(&mut vm)[0].decode().unwrap();
    assert_eq!((event.id, event.sid), (EventId::CBadSte, StreamId(8)));
    // Once the guest's STE is valid, a C_BAD_STE can only be the hypervisor's own (a break in
    // a physical install): kept.
    assert!(attach_dma_domain(&mut vm, EDU.virtual_sid));
    assert_eq!(
        vm.vsmmu.handle_physical_event(&bad),
        EventDisposition::Withheld(WithheldReason::HypervisorConfiguration)
    );
}

#[test]
fn a_full_guest_event_queue_drops_and_enters_overflow_once() {
    let mut vm = linux_vm();
    assert!(attach_dma_domain(&mut vm, EDU.virtual_sid));
    for _ in 0..64 {
        assert_eq!(
            vm.vsmmu
                .handle_physical_event(&stage1_fault(EDU.physical_sid)),
            EventDisposition::Forwarded
        );
    }
    let prod = vm.read32(at(o::EVTQ_PROD));
    assert_eq!(prod, 1 << 6, "64 entries: index 0, wrap 1, no overflow yet");
    assert_eq!(
        vm.vsmmu
            .handle_physical_event(&stage1_fault(EDU.physical_sid)),
        EventDisposition::Dropped(DropReason::QueueFull)
    );
    assert_eq!(
        vm.read32(at(o::EVTQ_PROD)),
        1 << 31 | 1 << 6,
        "OVFLG toggled"
    );
    assert_eq!(
        vm.vsmmu
            .handle_physical_event(&stage1_fault(EDU.physical_sid)),
        EventDisposition::Dropped(DropReason::QueueFull)
    );
    assert_eq!(
        vm.read32(at(o::EVTQ_PROD)),
        1 << 31 | 1 << 6,
        "not toggled twice"
    );
    // The guest consumes everything and acknowledges the overflow; delivery resumes.
    vm.write32(at(o::EVTQ_CONS), 1 << 31 | 1 << 6).unwrap();
    assert_eq!(
        vm.vsmmu
            .handle_physical_event(&stage1_fault(EDU.physical_sid)),
        EventDisposition::Forwarded
    );
}

#[test]
fn an_event_queue_outside_guest_ram_raises_evtq_abt_err_and_stops_delivery() {
    let mut vm = linux_vm();
    assert!(attach_dma_domain(&mut vm, EDU.virtual_sid));
    vm.write32(at(o::CR0), 0b1001).unwrap();
    vm.write64(at(o::EVTQ_BASE), 0x4020_0000 | 6).unwrap();
    vm.write32(at(o::CR0), 0b1101).unwrap();
    assert_eq!(
        vm.vsmmu
            .handle_physical_event(&stage1_fault(EDU.physical_sid)),
        EventDisposition::Dropped(DropReason::WriteAborted)
    );
    assert_eq!(vm.read32(at(o::GERROR)) & (1 << 2), 1 << 2);
    assert_eq!(vm.read32(at(o::EVTQ_PROD)), 0, "PROD did not move");
    assert_eq!(
        vm.vsmmu
            .handle_physical_event(&stage1_fault(EDU.physical_sid)),
        EventDisposition::Dropped(DropReason::QueueAborted)
    );
}

#[test]
fn events_are_not_recorded_while_the_vsmmu_is_disabled() {
    let physical = SharedPhysical::qemu_virt();
    let mut vm = TestVm::new(&physical, Vmid(1), RAM_A, &[EDU]);
    assert_eq!(
        vm.vsmmu
            .handle_physical_event(&stage1_fault(EDU.physical_sid)),
        EventDisposition::Withheld(WithheldReason::VsmmuDisabled)
    );
}

/// The guest's STE points its CD table at the hypervisor's memory (0x4020_0000): a legal STE,
/// whose CD an SMMU could not fetch. The vSMMU never reads there; the guest's DMA meets an
/// invalid shadow CD, and the physical C_BAD_CD comes back to the guest as F_CD_FETCH with the
/// address.
#[test]
fn a_cd_table_outside_ram_is_the_guests_f_cd_fetch() {
    let mut vm = linux_vm();
    assert!(attach_dma_domain(&mut vm, EDU.virtual_sid));
    let before: u64 = vm.vsmmu.counters().ste_rejections.iter().sum();
    vm.put_ste(EDU.virtual_sid, guest_s1_ste(Ipa(0x4020_0000), 0));
    assert!(vm.submit_sync(&[Cmd::CfgiSte {
        sid: StreamId(EDU.virtual_sid.0),
        leaf: true
    }]));
    let rejected: u64 = vm.vsmmu.counters().ste_rejections.iter().sum();
    assert_eq!(rejected, before, "the STE is legal");
    let ste = physical_ste(&vm, EDU.physical_sid);
    assert!(ste.v(), "nested, with an invalid shadow CD");
    assert!(!shadow_cd(&vm, &ste, 0).v());
    let bad = Event::new(EventId::CBadCd, EDU.physical_sid);
    assert_eq!(
        vm.vsmmu.handle_physical_event(&bad),
        EventDisposition::Forwarded
    );
    let event = guest_events(&mut vm)[0].decode().unwrap();
    assert_eq!((event.id, event.sid), (EventId::FCdFetch, StreamId(8)));
    assert_eq!(
        event.addr2,
        EventAddress::Fetch(smmu::PhysAddr(0x4020_0000))
    );
}

/// The guest's CD points TTB0 at the hypervisor's memory: a legal CD (within its IPS). The
/// physical SMMU's walk of that IPA meets the VM's stage 2, which maps RAM only: a stage-2
/// fault with CLASS=TT, which the guest gets as an SMMU without stage 2 would report it,
/// F_WALK_EABT with the table's address. Any other stage-2 fault stays the hypervisor's.
#[test]
fn a_stage1_table_outside_ram_is_the_guests_f_walk_eabt() {
    let mut vm = linux_vm();
    assert!(attach_dma_domain(&mut vm, EDU.virtual_sid));
    let before: u64 = vm.vsmmu.counters().cd_rejections.iter().sum();
    let cd_table = vm.ram(layout::CDS + 8 * 64);
    vm.memory
        .put_words(cd_table, &guest_cd(1, Ipa(0x4020_0000)));
    assert!(vm.submit_sync(&[Cmd::CfgiCd {
        sid: StreamId(8),
        ssid: smmu::SubstreamId(0),
        leaf: true
    }]));
    let rejected: u64 = vm.vsmmu.counters().cd_rejections.iter().sum();
    assert_eq!(rejected, before, "the CD is legal");
    let ste = physical_ste(&vm, EDU.physical_sid);
    assert!(shadow_cd(&vm, &ste, 0).v(), "shadowed as it is");
    let mut walk = stage1_fault(EDU.physical_sid);
    walk.s2 = true;
    walk.class = FaultClass::TranslationTable;
    walk.addr2 = EventAddress::Ipa(Ipa(0x4020_0000));
    assert_eq!(
        vm.vsmmu.handle_physical_event(&walk),
        EventDisposition::Forwarded
    );
    let event = guest_events(&mut vm)[0].decode().unwrap();
    assert_eq!(event.id, EventId::FWalkEabt);
    assert!(!event.s2, "the guest has no stage 2");
    assert_eq!(event.class, FaultClass::TranslationTable);
    assert_eq!(
        event.addr2,
        EventAddress::Fetch(smmu::PhysAddr(0x4020_0000))
    );
    // A stage-2 fault on the input (the guest's stage 1 maps outside its RAM) stays ours.
    let mut input = walk;
    input.class = FaultClass::Input;
    assert_eq!(
        vm.vsmmu.handle_physical_event(&input),
        EventDisposition::Withheld(WithheldReason::Stage2Fault)
    );
}
