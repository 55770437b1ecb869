//! Host tests of the vSMMU as a guest drives it, over fake guest RAM and the real `smmu` driver
//! on `smmu`'s fake SMMU. Each file is a specification of one part; hostile inputs are in each.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::panic
)]

mod commands;
mod events;
mod isolation;
mod pri;
mod properties;
mod registers;
mod shadow;

use smmu::cd::Cd;
use smmu::ste::Ste;
use smmu::{Ipa, StreamId, VirtualStreamId, Vmid};

use crate::config::StreamAssignment;
use crate::testing::{SharedPhysical, TestVm, layout};

/// QEMU's single guest: stream 8 (the `edu` device), identity mapped.
pub(crate) const EDU: StreamAssignment = StreamAssignment {
    virtual_sid: VirtualStreamId(8),
    physical_sid: StreamId(8),
};

/// The RAM base of the first test VM.
pub(crate) const RAM_A: Ipa = Ipa(0x4000_0000);

/// One VM owning the `edu` stream, reset the Linux way.
pub(crate) fn linux_vm() -> TestVm {
    let physical = SharedPhysical::qemu_virt();
    let mut vm = TestVm::new(&physical, Vmid(1), RAM_A, &[EDU]);
    assert!(vm.linux_reset(), "every acknowledgement arrives");
    vm
}

/// A guest stage-1 STE, as Linux writes it, for a CD table at `cd_table` with 2^`s1cdmax` CDs.
pub(crate) fn guest_s1_ste(cd_table: Ipa, s1cdmax: u8) -> [u64; 8] {
    let mut ste = Ste::INVALID;
    ste.set_v(true);
    ste.set_config(smmu::ste::StreamConfig::Stage1);
    ste.set_s1_context_ptr(cd_table);
    ste.set_s1cdmax(s1cdmax);
    let mut words = ste.words();
    // S1CIR, S1COR write-back read-allocate, S1CSH inner shareable; S1DSS substream 0 if any.
    words[1] = 1 << 2 | 1 << 4 | 3 << 6 | if s1cdmax > 0 { 2 } else { 0 };
    words
}

/// A guest bypass STE as Linux 6.1 writes it (SHCFG = incoming).
pub(crate) fn guest_bypass_ste() -> [u64; 8] {
    [1 | 4 << 1, 1 << 44, 0, 0, 0, 0, 0, 0]
}

/// A guest CD as Linux writes it: 48-bit input, 4 KiB granule, TTB0 at `ttb0`.
pub(crate) fn guest_cd(asid: u16, ttb0: Ipa) -> [u64; 8] {
    let w0 = 16 // T0SZ
        | 1 << 8 | 1 << 10 | 3 << 12 // IR0, OR0 WB; SH0 inner
        | 1 << 30 // EPD1
        | 1 << 31 // V
        | 4 << 32 // IPS 44 bits
        | 1 << 41 // AA64
        | 1 << 45 | 1 << 46 | 1 << 47 // R, A, ASET
        | u64::from(asid) << 48;
    [w0, ttb0.0, 0, 0x0404_ff44, 0, 0, 0, 0]
}

/// The physical STE of `sid`, as the fake SMMU would walk to it.
pub(crate) fn physical_ste(vm: &TestVm, sid: StreamId) -> Ste {
    vm.physical.fake.ste(sid).expect("the stream has an STE")
}

/// The shadow CD `ssid` of the stream in `slot`, as the physical SMMU would fetch it.
pub(crate) fn shadow_cd(vm: &TestVm, ste: &Ste, ssid: u64) -> Cd {
    // The window is at a fixed IPA; the shadow memory is the region given, from its start.
    let window = vm.vsmmu.cd_window();
    let offset = ste.s1_context_ptr().0 - window.base.0 + ssid * 64;
    let region = smmu::driver::DmaMemory::phys(&vm.vsmmu.backends().shadow_cds);
    let mut words = [0u64; 8];
    for (i, w) in words.iter_mut().enumerate() {
        *w = vm
            .physical
            .bus
            .read(smmu::PhysAddr(region.0 + offset + i as u64 * 8))
            .unwrap();
    }
    Cd::from_words(words)
}

/// Sets up `vsid` as Linux would attach a DMA domain: a CD (ASID 1, stage-1 root in RAM) and a
/// stage-1 STE, then CFGI_STE + CMD_SYNC.
pub(crate) fn attach_dma_domain(vm: &mut TestVm, vsid: VirtualStreamId) -> bool {
    let cd_table = vm.ram(layout::CDS + u64::from(vsid.0) * 64);
    vm.memory
        .put_words(cd_table, &guest_cd(1, vm.ram(layout::TABLES)));
    vm.put_ste(vsid, guest_s1_ste(cd_table, 0));
    vm.submit_sync(&[smmu::command::Cmd::CfgiSte {
        sid: StreamId(vsid.0),
        leaf: true,
    }])
}
