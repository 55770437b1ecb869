//! What the hypervisor knows about each supported platform before it reads a device tree.
//!
//! This module owns the [`Platform`] description and its two instances, [`QEMU_VIRT`] and
//! [`FVP_BASE_REVC`]. The values are compile-time constants: the hypervisor trusts them for
//! the devices it keeps for itself (its log UART, the SMMU, the GIC), and uses the device
//! tree only to confirm them (see [`crate::cross_check()`]). It does not parse anything.

mod fvp_base_revc;
mod qemu_virt;

pub use self::fvp_base_revc::FVP_BASE_REVC;
pub use self::qemu_virt::QEMU_VIRT;
use crate::guest_devices::{GuestDevice, WithheldDevice};
use crate::interrupt::Interrupt;
use crate::stream_ids::{self, BusRange, IommuMapEntry, RequesterId, StreamIdError, StreamIdRange};
use smmu::{PhysRange, StreamId};

/// Every platform this crate describes, in the order [`crate::identify`] tries them.
pub const PLATFORMS: &[&Platform] = &[&QEMU_VIRT, &FVP_BASE_REVC];

/// A platform: where its devices are and how they are wired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Platform {
    /// Short name, as given to [`by_name`] (`"qemu-virt"`, `"fvp-base"`).
    pub name: &'static str,
    /// Root-node `compatible` strings that identify the platform. Generic strings that
    /// other boards share (such as `"arm,vexpress"`) are not listed.
    pub compatible: &'static [&'static str],
    /// Where RAM may be. The first window's base is where the lowest RAM bank must start;
    /// how much RAM there is comes from the device tree.
    pub ram_windows: &'static [PhysRange],
    /// The guest's console, a PL011.
    pub uart0: PhysRange,
    /// The hypervisor's log UART, a PL011 the guest never sees.
    pub uart1: PhysRange,
    /// The GICv3.
    pub gic: Gic,
    /// The SMMUv3 in front of the PCIe root complex.
    pub smmu: Smmu,
    /// The PCIe host bridge (generic ECAM).
    pub pcie: PcieHost,
    /// The PL031 real-time clock.
    pub rtc: Option<PhysRange>,
    /// QEMU's firmware configuration device, if the platform has one.
    pub fw_cfg: Option<PhysRange>,
    /// How the hypervisor, at EL2, calls PSCI.
    pub psci: PsciConduit,
    /// The devices a guest may be given, each with the reason it is safe: the allow-list
    /// ([`crate::guest_devices`]). Anything else is withheld.
    pub guest_devices: &'static [GuestDevice],
    /// Devices known to be unfit for a guest, with the reason, for the log. Being listed
    /// here changes nothing: a device not on `guest_devices` is withheld anyway.
    pub withheld_devices: &'static [WithheldDevice],
}

impl Platform {
    /// Where the lowest RAM bank starts.
    #[must_use]
    pub const fn ram_base(&self) -> smmu::PhysAddr {
        match self.ram_windows.first() {
            Some(window) => window.base,
            None => smmu::PhysAddr(0),
        }
    }
}

/// A GICv3: distributor, redistributors and ITS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Gic {
    /// The distributor (GICD), 64 KiB.
    pub distributor: PhysRange,
    /// The first (on these platforms the only) redistributor region (GICR): two 64 KiB
    /// frames per CPU.
    pub redistributors: PhysRange,
    /// The interrupt translation service (GITS), if there is one.
    pub its: Option<PhysRange>,
}

/// An SMMUv3: its registers and wired interrupts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Smmu {
    /// The register frames (page 0 and page 1).
    pub registers: PhysRange,
    /// The wired interrupts.
    pub interrupts: SmmuInterrupts,
}

/// The wired interrupts of an SMMUv3, by the names of the device-tree binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SmmuInterrupts {
    /// `"eventq"`: the event queue has new entries.
    pub eventq: Option<Interrupt>,
    /// `"priq"`: the PRI queue has new entries.
    pub priq: Option<Interrupt>,
    /// `"cmdq-sync"`: a `CMD_SYNC` with an interrupt completion signal completed.
    pub cmdq_sync: Option<Interrupt>,
    /// `"gerror"`: a global error was raised.
    pub gerror: Option<Interrupt>,
    /// `"combined"`: one line for all of the above (the other fields are then `None`).
    pub combined: Option<Interrupt>,
}

/// A generic ECAM PCIe host bridge and how its requester IDs reach the SMMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PcieHost {
    /// The configuration space (ECAM), 1 MiB per bus.
    pub ecam: PhysRange,
    /// The buses the host bridge decodes.
    pub bus_range: BusRange,
    /// The CPU window onto PCI I/O space, if any.
    pub io: Option<PhysRange>,
    /// The CPU window onto 32-bit PCI memory space.
    pub mmio32: PhysRange,
    /// The CPU window onto 64-bit PCI memory space, if any.
    pub mmio64: Option<PhysRange>,
    /// How requester IDs become stream IDs (the `iommu-map`, or the IORT ID mapping).
    pub iommu_map: &'static [IommuMapEntry],
}

impl PcieHost {
    /// The stream ID the function with requester ID `rid` uses, or `None` if the map does
    /// not cover it.
    #[must_use]
    pub fn stream_id(&self, rid: RequesterId) -> Option<StreamId> {
        stream_ids::stream_id(self.iommu_map, u32::MAX, rid)
    }

    /// The stream IDs the host's buses occupy: the range the hypervisor must own.
    ///
    /// # Errors
    ///
    /// [`StreamIdError`] if the map leaves a requester ID on the buses unmapped or is not
    /// one contiguous run (never for the platforms of this crate, which tests check).
    pub fn stream_id_range(&self) -> Result<StreamIdRange, StreamIdError> {
        stream_ids::stream_id_range(self.iommu_map, u32::MAX, self.bus_range)
    }
}

/// How PSCI is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PsciConduit {
    /// `SMC`: PSCI lives in EL3 firmware (or, on QEMU, in QEMU itself).
    Smc,
    /// `HVC`: PSCI lives in a hypervisor at EL2.
    Hvc,
}

/// The platform called `name` (`"qemu-virt"` or `"fvp-base"`), if there is one.
#[must_use]
pub fn by_name(name: &str) -> Option<&'static Platform> {
    PLATFORMS
        .iter()
        .copied()
        .find(|platform| platform.name == name)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn platforms_are_found_by_their_short_names() {
        assert_eq!(by_name("qemu-virt"), Some(&QEMU_VIRT));
        assert_eq!(by_name("fvp-base"), Some(&FVP_BASE_REVC));
        assert_eq!(by_name("qemu"), None);
        assert_eq!(by_name(""), None);
    }

    #[test]
    fn no_two_devices_of_a_platform_overlap() {
        for platform in PLATFORMS {
            let mut ranges = vec![
                ("uart0", platform.uart0),
                ("uart1", platform.uart1),
                ("gicd", platform.gic.distributor),
                ("gicr", platform.gic.redistributors),
                ("smmu", platform.smmu.registers),
                ("ecam", platform.pcie.ecam),
                ("mmio32", platform.pcie.mmio32),
            ];
            ranges.extend(platform.gic.its.map(|r| ("its", r)));
            ranges.extend(platform.rtc.map(|r| ("rtc", r)));
            ranges.extend(platform.fw_cfg.map(|r| ("fw_cfg", r)));
            ranges.extend(platform.pcie.io.map(|r| ("io", r)));
            ranges.extend(platform.pcie.mmio64.map(|r| ("mmio64", r)));
            ranges.extend(platform.ram_windows.iter().map(|r| ("ram", *r)));
            for (i, (name_a, a)) in ranges.iter().enumerate() {
                for (name_b, b) in ranges.iter().skip(i + 1) {
                    assert!(
                        !a.overlaps(b),
                        "{}: {name_a} overlaps {name_b}",
                        platform.name
                    );
                }
            }
        }
    }

    #[test]
    fn ecam_covers_the_bus_range() {
        for platform in PLATFORMS {
            let pcie = platform.pcie;
            let needed = u64::from(pcie.bus_range.bus_count()) << 20;
            assert!(pcie.ecam.size >= needed, "{}", platform.name);
        }
    }

    #[test]
    fn pcie_stream_ids_are_the_requester_ids_of_the_bus_range() {
        let qemu = QEMU_VIRT.pcie.stream_id_range().unwrap();
        assert_eq!((qemu.first, qemu.last), (StreamId(0), StreamId(0xffff)));
        let fvp = FVP_BASE_REVC.pcie.stream_id_range().unwrap();
        assert_eq!((fvp.first, fvp.last), (StreamId(0), StreamId(0x1ff)));
        // QEMU's `edu` device at 00:01.0 (see ENVIRONMENT.md) is stream 8.
        let edu = RequesterId::new(0, 1, 0).unwrap();
        assert_eq!(QEMU_VIRT.pcie.stream_id(edu), Some(StreamId(8)));
    }

    #[test]
    fn every_device_is_page_aligned() {
        for platform in PLATFORMS {
            for range in [platform.uart0, platform.uart1, platform.smmu.registers] {
                assert!(
                    range.base.is_aligned(0x1000),
                    "{}: {range:?}",
                    platform.name
                );
            }
            // The SMMUv3 register file is 128 KiB (two 64 KiB pages), 64 KiB aligned.
            assert!(platform.smmu.registers.base.is_aligned(0x1_0000));
            assert!(platform.smmu.registers.size >= 0x2_0000);
        }
    }
}
