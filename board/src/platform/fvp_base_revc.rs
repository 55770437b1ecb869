//! Arm's Fixed Virtual Platform "Base RevC-2xAEMvA", with its SMMUv3.
//!
//! Where each value comes from:
//!
//! - Linux `arch/arm64/boot/dts/arm/fvp-base-revc.dts`: the GICv3 (GICD 0x2f00_0000,
//!   GICR 0x2f10_0000 + 2 MiB, ITS 0x2f02_0000), the SMMUv3 (`iommu@2b400000`, 1 MiB,
//!   SPI 74 eventq, 79 gerror, 75 priq, 77 cmdq-sync, all rising edge), the PCIe host
//!   (ECAM 0x4000_0000 + 256 MiB, `bus-range = <0 1>`, one 32-bit window 0x5000_0000 +
//!   256 MiB, `iommu-map = <0 &smmu 0 0x10000>`), PSCI through SMC, and the two RAM banks.
//! - Linux `rtsm_ve-motherboard.dtsi`: the PL011s and the PL031, behind the motherboard's
//!   chip select 3 (0x1c00_0000): UART0 0x1c09_0000, UART1 0x1c0a_0000, RTC 0x1c17_0000.
//! - TF-A `plat/arm/board/fvp` and `include/plat/arm/board/common/v2m_def.h`: the same UART
//!   bases (TF-A's boot UART is UART0, its runtime and crash UART is UART1, so the
//!   hypervisor shares UART1 with EL3's crash reports), the SMMUv3 base
//!   (`PLAT_FVP_SMMUV3_BASE`), and the RAM windows `ARM_DRAM1` (0x8000_0000, 2 GiB) and
//!   `PLAT_ARM_DRAM2` (0x8_8000_0000, 30 GiB).
//!
//! FVP cannot be obtained on the machines this project is built and tested on, so none of
//! this has been checked against a running model: `testdata/fvp-base-revc.dts` is written
//! from the Linux sources above, not dumped from FVP. Unchecked assumptions: TF-A's own
//! FVP device trees give the PCIe host a second, 64-bit window and Linux has proposed
//! widening `bus-range` to `<0 0xff>`; with either, [`crate::cross_check()`] reports a
//! mismatch and this file must follow the firmware actually used.

use super::{Gic, PcieHost, Platform, PsciConduit, Smmu, SmmuInterrupts};
use crate::guest_devices::{GuestDevice, GuestMapping, Safety, WithheldDevice};
use crate::interrupt::{Interrupt, Trigger};
use crate::stream_ids::{BusRange, IommuMapEntry};
use smmu::PhysRange;

const UART0: PhysRange = PhysRange::new(0x1c09_0000, 0x1000);
const RTC: PhysRange = PhysRange::new(0x1c17_0000, 0x1000);
const GICD: PhysRange = PhysRange::new(0x2f00_0000, 0x1_0000);
const GICR: PhysRange = PhysRange::new(0x2f10_0000, 0x20_0000);
const ECAM: PhysRange = PhysRange::new(0x4000_0000, 0x1000_0000);
const PCIE_MMIO32: PhysRange = PhysRange::new(0x5000_0000, 0x1000_0000);

/// What an FVP guest may have: its console, the RTC, the GIC (LPIs trapped) and the PCIe host.
/// The motherboard's other peripherals (the system registers that reset and power off the
/// board, the other UARTs, the flash, the display controllers, the DMA-330, virtio-mmio) are
/// withheld.
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
        name: "PCIe 32-bit window",
        compatible: "pci-host-ecam-generic",
        range: PCIE_MMIO32,
        mapping: GuestMapping::Passthrough,
        safety: Safety::ThroughSmmu,
        why: "endpoints' memory BARs, behind the SMMU",
    },
];

/// What FVP has that a guest must not, and why.
const WITHHELD_DEVICES: &[WithheldDevice] = &[
    WithheldDevice {
        compatible: "arm,pl330",
        masters_memory: true,
        why: "the DMA-330 copies between any physical addresses, around the SMMU",
    },
    WithheldDevice {
        compatible: "virtio,mmio",
        masters_memory: true,
        why: "the model reads and writes the device's queues at guest-chosen physical addresses, around the SMMU",
    },
    WithheldDevice {
        compatible: "arm,pl111",
        masters_memory: true,
        why: "the CLCD controller fetches its frame buffer from any physical address, around the SMMU",
    },
    WithheldDevice {
        compatible: "arm,hdlcd",
        masters_memory: true,
        why: "the HDLCD fetches its frame buffer from any physical address, around the SMMU",
    },
    WithheldDevice {
        compatible: "arm,gic-v3-its",
        masters_memory: true,
        why: "the ITS reads and writes its tables and command queue at addresses its programmer chooses, around the SMMU",
    },
    WithheldDevice {
        compatible: "cfi-flash",
        masters_memory: false,
        why: "the NOR flash holds the platform's firmware (TF-A's FIP)",
    },
    WithheldDevice {
        compatible: "arm,vexpress-sysreg",
        masters_memory: false,
        why: "the motherboard's system registers reset and power off the whole platform",
    },
];

/// FVP Base RevC-2xAEMvA booted through TF-A.
pub const FVP_BASE_REVC: Platform = Platform {
    name: "fvp-base",
    compatible: &["arm,fvp-base-revc"],
    ram_windows: &[
        PhysRange::new(0x8000_0000, 0x8000_0000),
        PhysRange::new(0x8_8000_0000, 0x7_8000_0000),
    ],
    uart0: UART0,
    uart1: PhysRange::new(0x1c0a_0000, 0x1000),
    gic: Gic {
        distributor: GICD,
        redistributors: GICR,
        its: Some(PhysRange::new(0x2f02_0000, 0x2_0000)),
    },
    smmu: Smmu {
        registers: PhysRange::new(0x2b40_0000, 0x10_0000),
        interrupts: SmmuInterrupts {
            eventq: Some(Interrupt::spi(74, Trigger::EdgeRising)),
            priq: Some(Interrupt::spi(75, Trigger::EdgeRising)),
            cmdq_sync: Some(Interrupt::spi(77, Trigger::EdgeRising)),
            gerror: Some(Interrupt::spi(79, Trigger::EdgeRising)),
            combined: None,
        },
    },
    pcie: PcieHost {
        ecam: ECAM,
        bus_range: BusRange { first: 0, last: 1 },
        io: None,
        mmio32: PCIE_MMIO32,
        mmio64: None,
        iommu_map: &[IommuMapEntry::IDENTITY_16_BITS],
    },
    rtc: Some(RTC),
    fw_cfg: None,
    psci: PsciConduit::Smc,
    guest_devices: GUEST_DEVICES,
    withheld_devices: WITHHELD_DEVICES,
};
