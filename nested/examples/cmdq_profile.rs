//! A profile target for the vSMMU's command path: a Linux-like VM submits batches of 32
//! TLBI_NH_ASID and a CMD_SYNC, many times. Run it under `valgrind --tool=callgrind` to see
//! where each forwarded command's instructions go (the fakes' own costs included).

use nested::StreamAssignment;
use nested::smmu::command::Cmd;
use nested::smmu::{Asid, Ipa, StreamId, VirtualStreamId, Vmid};
use nested::testing::{SharedPhysical, TestVm};

fn main() {
    let physical = SharedPhysical::qemu_virt();
    let assignment = StreamAssignment {
        virtual_sid: VirtualStreamId(8),
        physical_sid: StreamId(8),
    };
    let mut vm = TestVm::new(&physical, Vmid(1), Ipa(0x4000_0000), &[assignment]);
    assert!(vm.linux_reset());
    let batch = [Cmd::TlbiNhAsid {
        vmid: Vmid(0),
        asid: Asid(1),
    }; 32];
    for _ in 0..200 {
        assert!(vm.submit_sync(&batch));
    }
    println!("{:?}", vm.vsmmu.counters().commands_forwarded);
}
