//! Two VMs on one physical SMMU, with non-identity stream maps: neither reaches the other's
//! streams, VMID, tables or events.

use smmu::command::Cmd;
use smmu::event::{Event, EventId};
use smmu::ste::StreamConfig;
use smmu::{Asid, Ipa, StreamId, VirtualStreamId, Vmid};

use super::*;
use crate::events::{EventDisposition, WithheldReason};
use crate::testing::SharedPhysical;

const RAM_B: Ipa = Ipa(0x8000_0000);

fn two_vms() -> (TestVm, TestVm) {
    let physical = SharedPhysical::qemu_virt();
    // Both guests call their device "stream 8"; physically they are 0x10 and 0x20.
    let a = StreamAssignment {
        virtual_sid: VirtualStreamId(8),
        physical_sid: StreamId(0x10),
    };
    let b = StreamAssignment {
        virtual_sid: VirtualStreamId(8),
        physical_sid: StreamId(0x20),
    };
    let mut vm_a = TestVm::new(&physical, Vmid(1), RAM_A, &[a]);
    let mut vm_b = TestVm::new(&physical, Vmid(2), RAM_B, &[b]);
    assert!(vm_a.linux_reset() && vm_b.linux_reset());
    (vm_a, vm_b)
}

#[test]
fn each_vm_configures_only_its_own_physical_stream_with_its_own_vmid() {
    let (mut vm_a, mut vm_b) = two_vms();
    assert!(attach_dma_domain(&mut vm_a, VirtualStreamId(8)));
    let ste_a = physical_ste(&vm_a, StreamId(0x10));
    assert_eq!(ste_a.config(), StreamConfig::Nested);
    assert_eq!((ste_a.s2vmid(), ste_a.s2ttb()), (Vmid(1), vm_a.root));
    // B's stream is untouched by A: still blocked (B's table is empty).
    assert!(!physical_ste(&vm_b, StreamId(0x20)).v());
    vm_b.put_ste(VirtualStreamId(8), guest_bypass_ste());
    assert!(vm_b.submit_sync(&[Cmd::cfgi_all()]));
    let ste_b = physical_ste(&vm_b, StreamId(0x20));
    assert_eq!(
        (ste_b.config(), ste_b.s2vmid(), ste_b.s2ttb()),
        (StreamConfig::Stage2, Vmid(2), vm_b.root)
    );
    assert_eq!(
        physical_ste(&vm_a, StreamId(0x10)),
        ste_a,
        "A unchanged by B's CFGI_ALL"
    );
    // Every install each VM made was for its own stream.
    for (sid, shadow) in vm_a.physical.installs.borrow().iter() {
        let ste = shadow.ste();
        if ste.v() && ste.config().stage2_enabled() {
            let expected = if *sid == StreamId(0x10) {
                Vmid(1)
            } else {
                Vmid(2)
            };
            assert_eq!(ste.s2vmid(), expected);
        }
    }
}

#[test]
fn a_guest_naming_the_other_vms_physical_stream_reaches_nothing() {
    let (mut vm_a, vm_b) = two_vms();
    assert!(attach_dma_domain(&mut vm_a, VirtualStreamId(8)));
    let installs = vm_a.physical.installs.borrow().len();
    // A writes an STE for "stream 0x20" (B's physical stream) and invalidates it.
    vm_a.put_ste(VirtualStreamId(0x20), guest_bypass_ste());
    assert!(vm_a.submit_sync(&[Cmd::CfgiSte {
        sid: StreamId(0x20),
        leaf: true
    }]));
    assert_eq!(vm_a.physical.installs.borrow().len(), installs);
    assert!(!physical_ste(&vm_b, StreamId(0x20)).v());
}

#[test]
fn invalidations_carry_only_the_issuing_vms_vmid() {
    let (mut vm_a, mut vm_b) = two_vms();
    let from = vm_a.physical.submitted.borrow().len();
    assert!(vm_a.submit_sync(&[Cmd::TlbiNhAsid {
        vmid: Vmid(2),
        asid: Asid(1)
    }]));
    assert!(vm_b.submit_sync(&[Cmd::TlbiNsnhAll]));
    let submitted: Vec<Cmd> = vm_a.physical.submitted.borrow()[from..]
        .iter()
        .map(|c| *c.command())
        .collect();
    assert_eq!(
        submitted,
        [
            Cmd::TlbiNhAsid {
                vmid: Vmid(1),
                asid: Asid(1)
            },
            Cmd::TlbiNhAll { vmid: Vmid(2) }
        ]
    );
}

#[test]
fn events_go_only_to_the_vm_that_owns_the_stream() {
    let (mut vm_a, mut vm_b) = two_vms();
    assert!(attach_dma_domain(&mut vm_a, VirtualStreamId(8)));
    assert!(attach_dma_domain(&mut vm_b, VirtualStreamId(8)));
    let event = Event::new(EventId::FTranslation, StreamId(0x20));
    assert_eq!(vm_a.vsmmu.owns_physical_stream(StreamId(0x20)), None);
    assert_eq!(
        vm_a.vsmmu.handle_physical_event(&event),
        EventDisposition::Withheld(WithheldReason::NotThisVm)
    );
    assert_eq!(
        vm_b.vsmmu.owns_physical_stream(StreamId(0x20)),
        Some(VirtualStreamId(8))
    );
    assert_eq!(
        vm_b.vsmmu.handle_physical_event(&event),
        EventDisposition::Forwarded
    );
}

#[test]
fn a_vsmmu_refuses_a_cd_window_over_its_ram_and_duplicate_streams() {
    use crate::config::{ConfigError, VsmmuConfig};
    use crate::testing::{FakeGuestMemory, RecordingInterrupts, TestVsmmu, stage2};
    use crate::vsmmu::Backends;
    let physical = SharedPhysical::qemu_virt();
    let build = |window: Ipa, streams: &[StreamAssignment]| {
        TestVsmmu::new(
            &VsmmuConfig {
                stage2: stage2(Vmid(1), smmu::PhysAddr(0x2000_0000)),
                streams,
                sid_bits: 8,
                cd_window_base: window,
                work_budget: 64,
                forward_ats: false,
                abort_until_enabled: true,
            },
            Backends {
                guest_memory: FakeGuestMemory::new(RAM_A, 0x10_0000),
                physical: physical.clone(),
                interrupts: RecordingInterrupts::default(),
                shadow_cds: physical.shadow_region(0x1000),
            },
        )
        .map(|_| ())
    };
    assert!(matches!(
        build(RAM_A, &[EDU]),
        Err(ConfigError::CdWindow(_))
    ));
    assert!(matches!(
        build(Ipa(1 << 44), &[EDU]),
        Err(ConfigError::CdWindow(_))
    ));
    assert_eq!(
        build(crate::testing::CD_WINDOW, &[EDU, EDU]),
        Err(ConfigError::DuplicateVirtualStream(EDU.virtual_sid))
    );
    assert_eq!(build(crate::testing::CD_WINDOW, &[EDU]), Ok(()));
}
