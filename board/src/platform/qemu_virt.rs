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
use crate::guest_devices::{GuestDevice, GuestMapping, Safety, WithheldDevice};
use crate::interrupt::{Interrupt, Trigger};
use crate::stream_ids::{BusRange, IommuMapEntry};
use smmu::PhysRange;

const UART0: PhysRange = PhysRange::new(0x0900_0000, 0x1000);
const RTC: PhysRange = PhysRange::new(0x0901_0000, 0x1000);
const GPIO: PhysRange = PhysRange::new(0x0903_0000, 0x1000);
const GICD: PhysRange = PhysRange::new(0x0800_0000, 0x1_0000);
// Room for 123 redistributors of 128 KiB.
const GICR: PhysRange = PhysRange::new(0x080a_0000, 0xf6_0000);
const ECAM: PhysRange = PhysRange::new(0x40_1000_0000, 0x1000_0000);
const PCIE_IO: PhysRange = PhysRange::new(0x3eff_0000, 0x1_0000);
const PCIE_MMIO32: PhysRange = PhysRange::new(0x1000_0000, 0x2eff_0000);
const PCIE_MMIO64: PhysRange = PhysRange::new(0x80_0000_0000, 0x80_0000_0000);

/// What QEMU virt's guest may have. Everything else QEMU puts in the machine is withheld.
const GUEST_DEVICES: &[GuestDevice] = &[
    GuestDevice {
        name: "UART0 (PL011)",
        compatible: "arm,pl011",
        range: UART0,
        mapping: GuestMapping::Passthrough,
        safety: Safety::NoDma,
        why: "a UART: data and control registers; its DMA requests need a DMA controller, and no guest gets one",
    },
    GuestDevice {
        name: "RTC (PL031)",
        compatible: "arm,pl031",
        range: RTC,
        mapping: GuestMapping::Passthrough,
        safety: Safety::NoDma,
        why: "a real-time clock: counter, match and interrupt registers",
    },
    GuestDevice {
        name: "GPIO (PL061)",
        compatible: "arm,pl061",
        range: GPIO,
        mapping: GuestMapping::Passthrough,
        safety: Safety::NoDma,
        why: "eight GPIO lines (the power button): data, direction and interrupt registers",
    },
    GuestDevice {
        name: "GIC distributor",
        compatible: "arm,gic-v3",
        range: GICD,
        mapping: GuestMapping::EmulatedGicDistributor,
        safety: Safety::Trapped,
        why: "emulated: the hypervisor programs the guest's SPIs for it and hides its own (the SMMU's); interrupts are taken at EL2 and injected as virtual ones; no register names memory",
    },
    GuestDevice {
        name: "GIC redistributors",
        compatible: "arm,gic-v3",
        range: GICR,
        mapping: GuestMapping::EmulatedGicRedistributors,
        safety: Safety::Trapped,
        why: "emulated: GICR_PROPBASER/PENDBASER would make the GIC read and write LPI tables without the SMMU, so LPIs are hidden; the guest's SGIs and PPIs are programmed in the hardware on its behalf, the hypervisor's PPIs read as unimplemented",
    },
    GuestDevice {
        name: "PCIe ECAM",
        compatible: "pci-host-ecam-generic",
        range: ECAM,
        mapping: GuestMapping::Passthrough,
        safety: Safety::ThroughSmmu,
        why: "configuration space of endpoints whose every DMA goes through the SMMU (the iommu-map covers all requester IDs; each stream is confined)",
    },
    GuestDevice {
        name: "PCIe I/O window",
        compatible: "pci-host-ecam-generic",
        range: PCIE_IO,
        mapping: GuestMapping::Passthrough,
        safety: Safety::ThroughSmmu,
        why: "endpoints' I/O BARs, behind the SMMU",
    },
    GuestDevice {
        name: "PCIe 32-bit window",
        compatible: "pci-host-ecam-generic",
        range: PCIE_MMIO32,
        mapping: GuestMapping::Passthrough,
        safety: Safety::ThroughSmmu,
        why: "endpoints' memory BARs, behind the SMMU",
    },
    GuestDevice {
        name: "PCIe 64-bit window",
        compatible: "pci-host-ecam-generic",
        range: PCIE_MMIO64,
        mapping: GuestMapping::Passthrough,
        safety: Safety::ThroughSmmu,
        why: "endpoints' 64-bit memory BARs, behind the SMMU",
    },
];

/// What QEMU virt has that a guest must not, and why.
const WITHHELD_DEVICES: &[WithheldDevice] = &[
    WithheldDevice {
        compatible: "qemu,fw-cfg-mmio",
        masters_memory: true,
        why: "fw_cfg's DMA interface copies to and from any physical address, around the SMMU",
    },
    WithheldDevice {
        compatible: "virtio,mmio",
        masters_memory: true,
        why: "QEMU reads and writes an attached device's queues at guest-chosen physical addresses, around the SMMU",
    },
    WithheldDevice {
        compatible: "qemu,platform",
        masters_memory: true,
        why: "devices an operator adds to the platform bus are not behind the SMMU",
    },
    WithheldDevice {
        compatible: "arm,gic-v3-its",
        masters_memory: true,
        why: "the ITS reads and writes its tables and command queue at addresses its programmer chooses, around the SMMU",
    },
    WithheldDevice {
        compatible: "cfi-flash",
        masters_memory: false,
        why: "the flash holds the platform's firmware",
    },
];

/// QEMU `virt` with GICv3, the SMMUv3 (`iommu=smmuv3`) and EL2 (`virtualization=on`).
pub const QEMU_VIRT: Platform = Platform {
    name: "qemu-virt",
    compatible: &["linux,dummy-virt"],
    // RAM starts at 1 GiB; the legacy memory map allows up to 255 GiB of it.
    ram_windows: &[PhysRange::new(0x4000_0000, 255 << 30)],
    uart0: UART0,
    // Present in the device tree only when QEMU is given a second `-serial`.
    uart1: PhysRange::new(0x0904_0000, 0x1000),
    gic: Gic {
        distributor: GICD,
        redistributors: GICR,
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
        ecam: ECAM,
        bus_range: BusRange::ALL,
        io: Some(PCIE_IO),
        mmio32: PCIE_MMIO32,
        mmio64: Some(PCIE_MMIO64),
        iommu_map: &[IommuMapEntry::IDENTITY_16_BITS],
    },
    rtc: Some(RTC),
    fw_cfg: Some(PhysRange::new(0x0902_0000, 0x18)),
    // QEMU implements PSCI itself and, with EL2 present, answers SMC.
    psci: PsciConduit::Smc,
    guest_devices: GUEST_DEVICES,
    withheld_devices: WITHHELD_DEVICES,
};
