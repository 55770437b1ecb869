//! QEMU's `virt` machine, as QEMU 10.0 lays it out.
//!
//! Every value was checked against the DTB that QEMU 10.0.2 dumps for
//! `-M virt,virtualization=on,iommu=smmuv3,gic-version=3 -cpu max -m 1G -smp 2` with two
//! `-serial` options (`testdata/qemu-virt.dtb`; the test `qemu_virt_matches_its_real_dtb`
//! keeps them in step). QEMU places the "high" regions (the second redistributor region,
//! the high ECAM and the 64-bit PCI window) after the top of possible RAM; the values here
//! hold while `-m` (with `maxmem`) stays at or below 255 GiB. With `highmem=off` the ECAM
//! moves to 0x3f00_0000 and only 16 buses fit: that is a different board, which
//! [`crate::cross_check()`] rejects.

use super::{Gic, PcieHost, Platform, PsciConduit, Smmu, SmmuInterrupts};
use crate::interrupt::{Interrupt, Trigger};
use crate::stream_ids::{BusRange, IommuMapEntry};
use smmu::PhysRange;

/// QEMU `virt` with GICv3, the SMMUv3 (`iommu=smmuv3`) and EL2 (`virtualization=on`).
pub const QEMU_VIRT: Platform = Platform {
    name: "qemu-virt",
    compatible: &["linux,dummy-virt"],
    // RAM starts at 1 GiB; the legacy memory map allows up to 255 GiB of it.
    ram_windows: &[PhysRange::new(0x4000_0000, 255 << 30)],
    uart0: PhysRange::new(0x0900_0000, 0x1000),
    // Present in the device tree only when QEMU is given a second `-serial`.
    uart1: PhysRange::new(0x0904_0000, 0x1000),
    gic: Gic {
        distributor: PhysRange::new(0x0800_0000, 0x1_0000),
        // Room for 123 redistributors of 128 KiB.
        redistributors: PhysRange::new(0x080a_0000, 0xf6_0000),
        its: Some(PhysRange::new(0x0808_0000, 0x2_0000)),
    },
    smmu: Smmu {
        registers: PhysRange::new(0x0905_0000, 0x2_0000),
        interrupts: SmmuInterrupts {
            eventq: Some(Interrupt::spi(74, Trigger::EdgeRising)),
            priq: Some(Interrupt::spi(75, Trigger::EdgeRising)),
            cmdq_sync: Some(Interrupt::spi(76, Trigger::EdgeRising)),
            gerror: Some(Interrupt::spi(77, Trigger::EdgeRising)),
            combined: None,
        },
    },
    pcie: PcieHost {
        ecam: PhysRange::new(0x40_1000_0000, 0x1000_0000),
        bus_range: BusRange::ALL,
        io: Some(PhysRange::new(0x3eff_0000, 0x1_0000)),
        mmio32: PhysRange::new(0x1000_0000, 0x2eff_0000),
        mmio64: Some(PhysRange::new(0x80_0000_0000, 0x80_0000_0000)),
        iommu_map: &[IommuMapEntry::IDENTITY_16_BITS],
    },
    rtc: Some(PhysRange::new(0x0901_0000, 0x1000)),
    fw_cfg: Some(PhysRange::new(0x0902_0000, 0x18)),
    // QEMU implements PSCI itself and, with EL2 present, answers SMC.
    psci: PsciConduit::Smc,
};
