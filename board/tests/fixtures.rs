//! The board data against real and edited device trees (see `testdata/regenerate.sh`).

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use board::{
    BusRange, Device, DiscoveryError, FVP_BASE_REVC, IdentifyError, Interrupt, Mismatch,
    PsciConduit, QEMU_VIRT, StreamIdRange, Trigger, Value, cross_check, discover,
    for_each_mismatch, identify,
};
use smmu::{PhysAddr, PhysRange, StreamId};

const QEMU_VIRT_DTB: &[u8] = include_bytes!("../testdata/qemu-virt.dtb");
const QEMU_ONE_UART: &[u8] = include_bytes!("../testdata/qemu-virt-one-uart.dtb");
const QEMU_NO_SMMU: &[u8] = include_bytes!("../testdata/qemu-virt-no-smmu.dtb");
const QEMU_HIGHMEM_OFF: &[u8] = include_bytes!("../testdata/qemu-virt-highmem-off.dtb");
const QEMU_UART1_MOVED: &[u8] = include_bytes!("../testdata/qemu-virt-uart1-moved.dtb");
const QEMU_NO_MEMORY: &[u8] = include_bytes!("../testdata/qemu-virt-no-memory.dtb");
const QEMU_GERROR_LEVEL: &[u8] = include_bytes!("../testdata/qemu-virt-smmu-gerror-level.dtb");
const FVP_DTB: &[u8] = include_bytes!("../testdata/fvp-base-revc.dtb");
const FVP_PSCI_HVC: &[u8] = include_bytes!("../testdata/fvp-base-revc-psci-hvc.dtb");

fn range(base: u64, size: u64) -> PhysRange {
    PhysRange::new(base, size)
}

fn all_mismatches(platform: &board::Platform, dtb: &[u8]) -> Vec<Mismatch> {
    let discovered = discover(dtb).unwrap();
    let mut mismatches = Vec::new();
    for_each_mismatch(platform, &discovered, |mismatch| mismatches.push(mismatch));
    mismatches
}

#[test]
fn qemu_virt_matches_its_real_dtb() {
    let found = discover(QEMU_VIRT_DTB).unwrap();
    assert_eq!(identify(&found), Ok(&QEMU_VIRT));
    assert_eq!(cross_check(&QEMU_VIRT, &found), Ok(()));

    // Every discovered value, spelled out, so a change in QEMU shows here first.
    assert_eq!(found.model, Some("linux,dummy-virt"));
    assert_eq!(found.root_compatible.as_slice(), ["linux,dummy-virt"]);
    assert_eq!(found.memory.as_slice(), [range(0x4000_0000, 1 << 30)]);
    assert_eq!(
        found.uarts.as_slice(),
        [range(0x0900_0000, 0x1000), range(0x0904_0000, 0x1000)]
    );
    let gic = found.gic.as_ref().unwrap();
    assert_eq!(gic.distributor, range(0x0800_0000, 0x1_0000));
    assert_eq!(
        gic.redistributors.as_slice(),
        [range(0x080a_0000, 0xf6_0000)]
    );
    assert_eq!(gic.its, Some(range(0x0808_0000, 0x2_0000)));
    assert_eq!(gic.maintenance, Some(Interrupt::ppi(9, Trigger::LevelHigh)));
    let smmu = found.smmu.unwrap();
    assert_eq!(smmu.registers, range(0x0905_0000, 0x2_0000));
    let edge = |n| Some(Interrupt::spi(n, Trigger::EdgeRising));
    assert_eq!(smmu.interrupts.eventq, edge(74));
    assert_eq!(smmu.interrupts.priq, edge(75));
    assert_eq!(smmu.interrupts.cmdq_sync, edge(76));
    assert_eq!(smmu.interrupts.gerror, edge(77));
    assert_eq!(smmu.interrupts.combined, None);
    let intids: Vec<_> = [smmu.interrupts.eventq, smmu.interrupts.gerror]
        .iter()
        .map(|irq| irq.unwrap().intid().unwrap())
        .collect();
    assert_eq!(intids, [106, 109]);
    let pcie = found.pcie.as_ref().unwrap();
    assert_eq!(pcie.ecam, range(0x40_1000_0000, 0x1000_0000));
    assert_eq!(pcie.bus_range, BusRange::ALL);
    assert_eq!(pcie.io, Some(range(0x3eff_0000, 0x1_0000)));
    assert_eq!(pcie.mmio32, Some(range(0x1000_0000, 0x2eff_0000)));
    assert_eq!(pcie.mmio64, Some(range(0x80_0000_0000, 0x80_0000_0000)));
    assert_eq!(
        pcie.iommu_map.as_slice(),
        [board::IommuMapEntry::IDENTITY_16_BITS]
    );
    assert_eq!(
        pcie.stream_id_range(),
        Ok(StreamIdRange {
            first: StreamId(0),
            last: StreamId(0xffff)
        })
    );
    assert_eq!(found.rtc, Some(range(0x0901_0000, 0x1000)));
    assert_eq!(found.fw_cfg, Some(range(0x0902_0000, 0x18)));
    assert_eq!(found.psci, Some(PsciConduit::Smc));
    assert_eq!(found.bootargs, Some("console=ttyAMA0 earlycon"));
    assert_eq!(found.cpu_count, 2);
}

#[test]
fn fvp_base_revc_matches_its_dts() {
    let found = discover(FVP_DTB).unwrap();
    assert_eq!(identify(&found), Ok(&FVP_BASE_REVC));
    assert_eq!(cross_check(&FVP_BASE_REVC, &found), Ok(()));

    assert_eq!(
        found.root_compatible.as_slice(),
        ["arm,fvp-base-revc", "arm,vexpress"]
    );
    assert_eq!(
        found.memory.as_slice(),
        [
            range(0x8000_0000, 0x8000_0000),
            range(0x8_8000_0000, 0x8000_0000)
        ]
    );
    // The PL011s sit three buses down (iofpga -> chip select 3 -> CPU): each `ranges` hop
    // must be followed to find them at 0x1c09_0000 and up.
    assert_eq!(
        found.uarts.as_slice(),
        [0x1c09_0000, 0x1c0a_0000, 0x1c0b_0000, 0x1c0c_0000].map(|base| range(base, 0x1000))
    );
    assert_eq!(found.rtc, Some(range(0x1c17_0000, 0x1000)));
    let smmu = found.smmu.unwrap();
    assert_eq!(smmu.registers, range(0x2b40_0000, 0x10_0000));
    assert_eq!(
        smmu.interrupts.gerror,
        Some(Interrupt::spi(79, Trigger::EdgeRising))
    );
    assert_eq!(
        smmu.interrupts.cmdq_sync,
        Some(Interrupt::spi(77, Trigger::EdgeRising))
    );
    let pcie = found.pcie.as_ref().unwrap();
    assert_eq!(pcie.bus_range, BusRange { first: 0, last: 1 });
    assert_eq!(
        pcie.stream_id_range(),
        Ok(StreamIdRange {
            first: StreamId(0),
            last: StreamId(0x1ff)
        })
    );
    assert_eq!(found.fw_cfg, None);
    assert_eq!(found.bootargs, None);
    assert_eq!(found.cpu_count, 8);
}

#[test]
fn a_qemu_started_with_one_serial_has_no_uart1() {
    let found = discover(QEMU_ONE_UART).unwrap();
    assert_eq!(identify(&found), Ok(&QEMU_VIRT));
    assert_eq!(
        cross_check(&QEMU_VIRT, &found),
        Err(Mismatch {
            device: Device::Uart1,
            expected: Some(Value::Range(range(0x0904_0000, 0x1000))),
            found: None,
        })
    );
}

#[test]
fn a_moved_uart1_is_reported_with_where_it_went() {
    let found = discover(QEMU_UART1_MOVED).unwrap();
    assert_eq!(
        cross_check(&QEMU_VIRT, &found),
        Err(Mismatch {
            device: Device::Uart1,
            expected: Some(Value::Range(range(0x0904_0000, 0x1000))),
            found: Some(Value::Range(range(0x0906_0000, 0x1000))),
        })
    );
}

#[test]
fn a_qemu_without_iommu_smmuv3_has_no_smmu_and_unmapped_pcie() {
    let mismatches = all_mismatches(&QEMU_VIRT, QEMU_NO_SMMU);
    assert_eq!(
        mismatches,
        [
            Mismatch {
                device: Device::Smmu,
                expected: Some(Value::Range(range(0x0905_0000, 0x2_0000))),
                found: None,
            },
            // Without an `iommu-map`, PCIe DMA would not go through any SMMU.
            Mismatch {
                device: Device::PcieStreamIds,
                expected: Some(Value::StreamIds(StreamIdRange {
                    first: StreamId(0),
                    last: StreamId(0xffff)
                })),
                found: None,
            },
        ]
    );
}

#[test]
fn a_qemu_with_highmem_off_has_a_different_ecam() {
    let mismatches = all_mismatches(&QEMU_VIRT, QEMU_HIGHMEM_OFF);
    let devices: Vec<_> = mismatches.iter().map(|m| m.device).collect();
    assert_eq!(
        devices,
        [
            Device::PcieEcam,
            Device::PcieBusRange,
            Device::PcieMmio64,
            Device::PcieStreamIds
        ]
    );
    assert_eq!(
        mismatches[0],
        Mismatch {
            device: Device::PcieEcam,
            expected: Some(Value::Range(range(0x40_1000_0000, 0x1000_0000))),
            found: Some(Value::Range(range(0x3f00_0000, 0x100_0000))),
        }
    );
    assert_eq!(
        mismatches[1].found,
        Some(Value::Buses(BusRange {
            first: 0,
            last: 0xf
        }))
    );
}

#[test]
fn a_dtb_without_memory_is_refused() {
    assert_eq!(discover(QEMU_NO_MEMORY), Err(DiscoveryError::NoMemory));
}

#[test]
fn a_level_triggered_gerror_is_a_mismatch() {
    let found = discover(QEMU_GERROR_LEVEL).unwrap();
    assert_eq!(
        cross_check(&QEMU_VIRT, &found),
        Err(Mismatch {
            device: Device::SmmuGerror,
            expected: Some(Value::Interrupt(Interrupt::spi(77, Trigger::EdgeRising))),
            found: Some(Value::Interrupt(Interrupt::spi(77, Trigger::LevelHigh))),
        })
    );
}

#[test]
fn psci_through_hvc_on_fvp_is_a_mismatch() {
    let found = discover(FVP_PSCI_HVC).unwrap();
    assert_eq!(
        cross_check(&FVP_BASE_REVC, &found),
        Err(Mismatch {
            device: Device::Psci,
            expected: Some(Value::Psci(PsciConduit::Smc)),
            found: Some(Value::Psci(PsciConduit::Hvc)),
        })
    );
}

#[test]
fn each_platform_rejects_the_other_platforms_dtb() {
    let qemu = discover(QEMU_VIRT_DTB).unwrap();
    let fvp = discover(FVP_DTB).unwrap();
    assert_eq!(
        cross_check(&FVP_BASE_REVC, &qemu).unwrap_err().device,
        Device::RamBase
    );
    let mismatch = cross_check(&QEMU_VIRT, &fvp).unwrap_err();
    assert_eq!(mismatch.device, Device::RamBase);
    assert_eq!(
        mismatch.expected,
        Some(Value::Address(PhysAddr(0x4000_0000)))
    );
    assert_eq!(mismatch.found, Some(Value::Address(PhysAddr(0x8000_0000))));
}

#[test]
fn mismatches_print_device_expected_and_found() {
    let found = discover(QEMU_UART1_MOVED).unwrap();
    let message = cross_check(&QEMU_VIRT, &found).unwrap_err().to_string();
    assert_eq!(
        message,
        "Uart1: board data says [0x9040000, 0x9041000), device tree has [0x9060000, 0x9061000)"
    );
    let found = discover(QEMU_ONE_UART).unwrap();
    let message = cross_check(&QEMU_VIRT, &found).unwrap_err().to_string();
    assert_eq!(
        message,
        "Uart1: board data says [0x9040000, 0x9041000), device tree has none"
    );
}

#[test]
fn identify_needs_a_known_root_compatible() {
    let mut found = discover(QEMU_VIRT_DTB).unwrap();
    found.root_compatible.clear();
    assert_eq!(identify(&found), Err(IdentifyError::NoCompatible));
    found.root_compatible.push("arm,juno").unwrap();
    assert_eq!(identify(&found), Err(IdentifyError::Unknown));
    // The most specific known string wins, even after unknown ones.
    found.root_compatible.push("arm,fvp-base-revc").unwrap();
    assert_eq!(identify(&found), Ok(&FVP_BASE_REVC));
    // "arm,vexpress" alone is too generic to mean FVP Base RevC.
    found.root_compatible.clear();
    found.root_compatible.push("arm,vexpress").unwrap();
    assert_eq!(identify(&found), Err(IdentifyError::Unknown));
}

#[test]
fn ram_outside_the_platform_windows_is_a_mismatch() {
    let mut found = discover(FVP_DTB).unwrap();
    found.memory[1] = range(0x1_0000_0000, 0x1000_0000);
    let mismatch = cross_check(&FVP_BASE_REVC, &found).unwrap_err();
    assert_eq!(mismatch.device, Device::RamBank);
    assert_eq!(
        mismatch.found,
        Some(Value::Range(range(0x1_0000_0000, 0x1000_0000)))
    );
}
