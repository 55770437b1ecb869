//! The vSMMU's guest inputs, coverage-guided: register write sequences, the guest memory they
//! point at, physical events and (with a PRI-capable physical SMMU) page requests, stop markers
//! and CMD_PRI_RESPs, for two VMs on one physical SMMU. `nested::testing::hostile`
//! interprets the bytes and checks, after every step, that no call panicked or exceeded its
//! budget, that every physical STE passes the guard with the VM's own VMID and stage-2 root,
//! and that no physical command names another VM's stream or VMID.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = nested::testing::hostile::run(data);
});
