//! The command queue: what a guest's commands become, and what an illegal one does.

use smmu::command::{Cmd, Command, TlbiGranule, TlbiScope};
use smmu::registers::{CmdqCons, CommandError, offset as o};
use smmu::{Asid, Iova, Ipa, PhysAddr, Vmid};

use super::*;
use crate::interfaces::interrupts::VirtualInterrupt;
use crate::testing::linux_sync;

fn at(r: smmu::registers::RegisterOffset) -> u64 {
    u64::from(r.get())
}

fn submitted_since(vm: &TestVm, from: usize) -> Vec<Cmd> {
    vm.physical.submitted.borrow()[from..]
        .iter()
        .map(|c| *c.command())
        .collect()
}

#[test]
fn tlbi_commands_reach_the_smmu_with_the_vms_vmid_whatever_the_guest_wrote() {
    let mut vm = linux_vm();
    let from = vm.physical.submitted.borrow().len();
    let scope = TlbiScope {
        num: 3,
        scale: 1,
        leaf: true,
        ttl: 3,
        granule: TlbiGranule::Size4K,
    };
    assert!(vm.submit_sync(&[
        Cmd::TlbiNhAsid {
            vmid: Vmid(0x77),
            asid: Asid(5)
        },
        Cmd::TlbiNhVa {
            vmid: Vmid(0),
            asid: Asid(5),
            scope,
            addr: Iova(0x1000_0000)
        },
        Cmd::TlbiNsnhAll,
    ]));
    assert_eq!(
        submitted_since(&vm, from),
        [
            Cmd::TlbiNhAsid {
                vmid: Vmid(1),
                asid: Asid(5)
            },
            Cmd::TlbiNhVa {
                vmid: Vmid(1),
                asid: Asid(5),
                scope,
                addr: Iova(0x1000_0000)
            },
            Cmd::TlbiNhAll { vmid: Vmid(1) },
        ]
    );
}

#[test]
fn a_guest_sync_costs_one_physical_sync_and_its_msi_clears_the_polled_word() {
    let mut vm = linux_vm();
    let syncs = *vm.physical.syncs.borrow();
    let batches = vm.vsmmu.counters().batches;
    let tlbis: Vec<Cmd> = (0..32)
        .map(|asid| Cmd::TlbiNhAsid {
            vmid: Vmid(0),
            asid: Asid(asid),
        })
        .collect();
    assert!(
        vm.submit_sync(&tlbis),
        "the MSI write cleared the sync's first word"
    );
    assert_eq!(*vm.physical.syncs.borrow() - syncs, 1);
    assert_eq!(
        vm.vsmmu.counters().batches - batches,
        1,
        "32 commands, one batch"
    );
    assert_eq!(vm.interrupts.count(VirtualInterrupt::CommandSync), 3);
    // A sync with nothing forwarded since the last one needs no physical sync.
    assert!(vm.submit_sync(&[]));
    assert_eq!(*vm.physical.syncs.borrow() - syncs, 1);
    // CONS reached PROD.
    assert_eq!(vm.read32(at(o::CMDQ_CONS)), vm.prod);
}

#[test]
fn an_msi_aimed_outside_guest_ram_is_not_written_and_raises_msi_cmdq_abt_err() {
    let mut vm = linux_vm();
    // The hypervisor's own memory, by physical address: to the guest it is not RAM.
    let hostile = Ipa(0x4020_0000 - 0x4000_0000 + 0x8000_0000);
    vm.submit_raw(&[Cmd::Sync {
        completion: smmu::command::SyncCompletion::Irq,
        msh: 3,
        msi_attr: 0xf,
        msi_data: 0xdead,
        msi_addr: PhysAddr(hostile.0),
    }
    .encode()]);
    assert_eq!(vm.read32(at(o::GERROR)) & (1 << 4), 1 << 4);
    assert_eq!(vm.vsmmu.counters().msi_aborts, 1);
    assert_eq!(
        vm.read32(at(o::CMDQ_CONS)),
        vm.prod,
        "the sync still completed"
    );
}

#[test]
fn illegal_commands_stop_the_queue_with_cerror_ill_until_the_guest_acknowledges() {
    let cases: [(&str, Command); 6] = [
        ("unknown opcode", Command::from_words([0x07, 0])),
        ("reserved bit", Command::from_words([0x10 | 1 << 8, 0])),
        (
            "stage-2 invalidation",
            Cmd::TlbiS12Vmall { vmid: Vmid(1) }.encode(),
        ),
        ("EL2 invalidation", Cmd::TlbiEl2All.encode()),
        (
            "PRI response without PRI",
            Cmd::PriResp {
                sid: StreamId(8),
                ssid: None,
                prg_index: 1,
                response: smmu::command::PriResponse::Success,
            }
            .encode(),
        ),
        (
            "range fields with TG = 0",
            Command::from_words([0x11 | 1 << 12, 0]),
        ),
    ];
    for (what, bad) in cases {
        let mut vm = linux_vm();
        let before = vm.read32(at(o::CMDQ_CONS));
        let gerror_irqs = vm.interrupts.count(VirtualInterrupt::GlobalError);
        let good = Cmd::TlbiNhAll { vmid: Vmid(0) }.encode();
        vm.submit_raw(&[good, bad, good]);
        let cons = CmdqCons(vm.read32(at(o::CMDQ_CONS)));
        assert_eq!(cons.err(), Ok(CommandError::Illegal), "{what}");
        assert_eq!(
            cons.pointer_bits(),
            (before + 1) & 0x1ff,
            "{what}: stopped at it"
        );
        let gerror = vm.read32(at(o::GERROR)) ^ vm.read32(at(o::GERRORN));
        assert_eq!(gerror & 1, 1, "{what}: CMDQ_ERR active");
        assert_eq!(
            vm.interrupts.count(VirtualInterrupt::GlobalError),
            gerror_irqs + 1
        );
        // More PROD writes do nothing while the error is active.
        vm.submit_raw(&[]);
        assert_eq!(
            CmdqCons(vm.read32(at(o::CMDQ_CONS))).pointer_bits(),
            cons.pointer_bits()
        );
        // Linux replaces the command by a CMD_SYNC and acknowledges: the queue drains.
        let (base, _) = vm.cmdq;
        let slot = Ipa(base.0 + u64::from(cons.pointer_bits() & 0xff) * 16);
        vm.memory.put_words(slot, &linux_sync(slot).words());
        let gerror = vm.read32(at(o::GERROR));
        vm.write32(at(o::GERRORN), gerror).unwrap();
        assert_eq!(
            CmdqCons(vm.read32(at(o::CMDQ_CONS))).pointer_bits(),
            vm.prod,
            "{what}: drained after the acknowledgement"
        );
    }
}

#[test]
fn a_command_queue_outside_guest_ram_stops_with_cerror_abt() {
    let mut vm = linux_vm();
    vm.write32(at(o::CR0), 0b0101).unwrap();
    // Aimed at the hypervisor's memory.
    vm.write64(at(o::CMDQ_BASE), 0x4020_0000 | 8).unwrap();
    vm.write32(at(o::CR0), 0b1101).unwrap();
    vm.write32(at(o::CMDQ_PROD), 1).unwrap();
    let cons = CmdqCons(vm.read32(at(o::CMDQ_CONS)));
    assert_eq!(cons.err(), Ok(CommandError::Abort));
    assert_eq!(vm.vsmmu.counters().command_fetch_aborts, 1);
}

#[test]
fn a_full_2_pow_19_queue_is_consumed_a_budget_at_a_time() {
    let physical = crate::testing::SharedPhysical::qemu_virt();
    let mut vm = TestVm::new(&physical, Vmid(1), RAM_A, &[EDU]);
    // A 2^19-entry queue is 8 MiB: larger than the test VM's RAM. Every fetch beyond RAM
    // aborts, so place it where its first entries are RAM: the consumer must still stop within
    // its budget on a queue that claims 2^19 commands.
    vm.cmdq = (vm.ram(0), 19);
    assert!(vm.linux_reset());
    // Fill RAM-backed slots with no-op prefetches and claim the whole queue: PROD = CONS with
    // the wrap bit flipped (full).
    let prefetch = Cmd::PrefetchConfig {
        sid: StreamId(8),
        ssid: None,
    }
    .encode();
    let ram_slots = crate::testing::layout::RAM_BYTES as u64 / 16;
    for i in 0..ram_slots {
        vm.memory.put_words(vm.ram(i * 16), &prefetch.words());
    }
    let cons = vm.read32(at(o::CMDQ_CONS));
    let full = cons ^ (1 << 19);
    let spent_before = vm.vsmmu.counters().total_commands();
    vm.write32(at(o::CMDQ_PROD), full).unwrap();
    let consumed = vm.vsmmu.counters().total_commands() - spent_before;
    assert!(consumed > 0 && consumed <= u64::from(crate::config::DEFAULT_WORK_BUDGET));
    assert!(vm.vsmmu.has_pending_work());
    assert!(
        vm.vsmmu.counters().max_work_per_call
            <= crate::config::DEFAULT_WORK_BUDGET + crate::budget::MAX_STEP_COST
    );
    // Continuations go on, each bounded, until the fetch leaves RAM and aborts.
    let mut calls = 0;
    while vm.vsmmu.run_pending() {
        calls += 1;
        assert!(calls < 1000);
    }
    assert_eq!(
        CmdqCons(vm.read32(at(o::CMDQ_CONS))).err(),
        Ok(CommandError::Abort)
    );
}

#[test]
fn prefetches_and_commands_for_streams_the_vm_does_not_own_have_no_effect() {
    let mut vm = linux_vm();
    let from = vm.physical.submitted.borrow().len();
    let installs = vm.physical.installs.borrow().len();
    assert!(vm.submit_sync(&[
        Cmd::PrefetchConfig {
            sid: StreamId(8),
            ssid: None
        },
        Cmd::CfgiSte {
            sid: StreamId(9),
            leaf: true
        },
        Cmd::CfgiSte {
            sid: StreamId(0xffff_ffff),
            leaf: true
        },
        Cmd::CfgiCdAll { sid: StreamId(3) },
    ]));
    assert!(submitted_since(&vm, from).is_empty());
    assert_eq!(vm.physical.installs.borrow().len(), installs);
}

#[test]
fn two_vcpus_interleaving_halves_and_producers_see_one_consistent_queue() {
    use crate::interfaces::mmio::{AccessWidth, MmioDevice, MmioOffset, VcpuId};
    let mut vm = linux_vm();
    let (base, log2) = vm.cmdq;
    // vCPU 0 and vCPU 1 each write a command into their own slots, then each publishes PROD;
    // the later PROD write (vCPU 0's, covering both) is the one that counts, as on hardware.
    let tlbi = |asid| {
        Cmd::TlbiNhAsid {
            vmid: Vmid(0),
            asid: Asid(asid),
        }
        .encode()
    };
    let p = vm.prod;
    vm.memory
        .put_words(Ipa(base.0 + u64::from(p) * 16), &tlbi(1).words());
    vm.memory
        .put_words(Ipa(base.0 + u64::from(p + 1) * 16), &tlbi(2).words());
    let from = vm.physical.submitted.borrow().len();
    vm.vsmmu
        .mmio_write(
            MmioOffset(at(o::CMDQ_PROD)),
            AccessWidth::Bits32,
            u64::from(p + 2),
            VcpuId(1),
        )
        .unwrap();
    vm.vsmmu
        .mmio_write(
            MmioOffset(at(o::CMDQ_PROD)),
            AccessWidth::Bits32,
            u64::from(p + 1),
            VcpuId(0),
        )
        .unwrap();
    assert_eq!(
        submitted_since(&vm, from).len(),
        2,
        "each command consumed once"
    );
    // Moving PROD back behind CONS looks like a queue of 2^log2 - 1 commands: consumed, a
    // budget at a time, never twice the queue.
    let _ = log2;
    assert!(
        vm.vsmmu.counters().max_work_per_call
            <= crate::config::DEFAULT_WORK_BUDGET + crate::budget::MAX_STEP_COST
    );
}
