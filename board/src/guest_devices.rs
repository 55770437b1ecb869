//! Which devices a guest may be given, and why; and, for one device tree, the plan that
//! follows: what the guest's stage 2 maps and which nodes its device tree loses.
//!
//! The rule is an allow-list. A device reaches a guest only when the platform's data says it
//! cannot master memory, or that everything it masters goes through the SMMU, or that the
//! hypervisor traps the registers that would make it master memory ([`Safety`]). Every other
//! device node, whatever it is, is withheld: unmapped in stage 2 and removed from the guest's
//! device tree. A device an operator adds to the machine outside the SMMU (a virtio-mmio
//! device, anything on QEMU's platform bus) is therefore never handed over; the plan names it
//! so the hypervisor can say so.
//!
//! A deny-list of the hypervisor's own windows is not enough: it once let a guest reach EL2
//! through QEMU's fw_cfg DMA, which wrote hypervisor memory without going near the SMMU.

use heapless::{String, Vec};
use smmu::PhysRange;

use crate::discovery::DiscoveryError;
use crate::discovery::devices::{Descend, DeviceNode, MAX_PATH_LEN, for_each_device};
use crate::guest_tree::MAX_REMOVED_NODES;
use crate::platform::Platform;

/// Why a device may be given to a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Safety {
    /// It masters no memory: registers only.
    NoDma,
    /// Everything it masters goes through the SMMU, whose stage 2 confines it to the guest.
    ThroughSmmu,
    /// Some of its registers would make it master memory, or reach the hypervisor's own
    /// state; the hypervisor traps every access and emulates the device ([`GuestMapping`] says
    /// which).
    Trapped,
}

/// How a granted device appears in the guest's stage 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum GuestMapping {
    /// Mapped whole, at its own address.
    Passthrough,
    /// The GICv3 distributor: left unmapped, every access trapped and emulated (the guest's
    /// SPIs are programmed in the hardware on its behalf, the hypervisor's are hidden).
    EmulatedGicDistributor,
    /// The GICv3 redistributors: left unmapped, every access trapped and emulated (LPIs
    /// hidden: GICR_PROPBASER and GICR_PENDBASER would make the GIC read and write memory).
    EmulatedGicRedistributors,
}

/// A device the platform's data allows a guest to have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct GuestDevice {
    /// What it is, for logs.
    pub name: &'static str,
    /// The `compatible` string of the device-tree node that describes it. Windows that the
    /// node describes by `ranges` rather than `reg` (a PCIe host's) share its string and are
    /// granted with it.
    pub compatible: &'static str,
    /// Its registers (or window).
    pub range: PhysRange,
    /// How the guest's stage 2 maps it.
    pub mapping: GuestMapping,
    /// Why that is safe.
    pub safety: Safety,
    /// The argument, in a sentence.
    pub why: &'static str,
}

/// A kind of device known to be unfit for a guest, and why (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct WithheldDevice {
    /// The `compatible` string it is recognised by.
    pub compatible: &'static str,
    /// Whether it masters memory without the SMMU (an operator attaching one is refused).
    pub masters_memory: bool,
    /// Why it is withheld.
    pub why: &'static str,
}

/// Why a device node is withheld.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Withheld {
    /// It is one of the hypervisor's own devices (its log UART, the SMMU).
    Hypervisor,
    /// A kind of device the platform's data knows to be unfit.
    Known(&'static WithheldDevice),
    /// Not on the allow-list (the default for anything not named).
    NotAllowed,
    /// Its `reg` cannot be placed in the CPU's address space.
    Unplaceable,
}

/// A node the guest's device tree loses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedNode {
    /// Its full path.
    pub path: String<MAX_PATH_LEN>,
    /// Its first `compatible` string (truncated), for logs.
    pub compatible: String<48>,
    /// Its first register window, if it could be placed.
    pub registers: Option<PhysRange>,
    /// Why.
    pub reason: Withheld,
    /// Device nodes inside its subtree (for a bus: the devices an operator put there).
    pub devices_inside: u16,
}

/// The most allow-list entries one plan grants.
pub const MAX_GRANTED: usize = 16;

/// What one device tree gives a guest.
#[derive(Debug, Clone, Default)]
pub struct GuestDevicePlan {
    /// The nodes withheld, in tree order; only the top of each withheld subtree is listed.
    pub removed: Vec<RemovedNode, MAX_REMOVED_NODES>,
    /// The allow-list entries the tree's nodes matched: what the guest's stage 2 maps.
    pub granted: Vec<&'static GuestDevice, MAX_GRANTED>,
}

impl GuestDevicePlan {
    /// The paths to remove from the guest's device tree (for [`crate::GuestTreeEdits`]).
    pub fn removed_paths(&self) -> Vec<&str, MAX_REMOVED_NODES> {
        self.removed.iter().map(|node| node.path.as_str()).collect()
    }
}

/// Why no plan could be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PlanError {
    /// The device tree could not be walked.
    Discovery(DiscoveryError),
    /// More than [`MAX_REMOVED_NODES`] withheld subtrees.
    TooManyWithheld,
}

/// Judges every device node of `dtb` against `platform`'s allow-list.
///
/// A node is granted when each of its `reg` windows lies inside an allow-list entry with one
/// of its `compatible` strings, and none touches the hypervisor's devices. Everything else is
/// withheld, its subtree with it.
///
/// # Errors
///
/// [`PlanError`] if the tree is malformed or withholds more subtrees than fit.
pub fn plan(platform: &'static Platform, dtb: &[u8]) -> Result<GuestDevicePlan, PlanError> {
    let mut plan = GuestDevicePlan::default();
    let mut overflow = false;
    for_each_device(dtb, |node| {
        // Inside a withheld subtree: count it, for the log, and look no further.
        if let Some(parent) = plan.removed.iter_mut().find(|removed| {
            node.path
                .strip_prefix(removed.path.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
        }) {
            parent.devices_inside = parent.devices_inside.saturating_add(1);
            return Descend::Yes;
        }
        match judge(platform, node) {
            Ok(grants) => {
                let entries = platform
                    .guest_devices
                    .iter()
                    .filter(|entry| grants && node.is_compatible(entry.compatible));
                for entry in entries {
                    if !plan.granted.contains(&entry) && plan.granted.push(entry).is_err() {
                        overflow = true;
                    }
                }
                Descend::Yes
            }
            Err(reason) => {
                let removed = RemovedNode {
                    path: String::try_from(node.path).unwrap_or_default(),
                    compatible: first_compatible(node),
                    registers: node.registers.first().copied(),
                    reason,
                    devices_inside: 0,
                };
                if plan.removed.push(removed).is_err() {
                    overflow = true;
                }
                Descend::Yes
            }
        }
    })
    .map_err(PlanError::Discovery)?;
    if overflow {
        return Err(PlanError::TooManyWithheld);
    }
    Ok(plan)
}

/// Whether `node` is kept (`Ok(true)` when its `compatible` strings grant allow-list entries,
/// `Ok(false)` for a bus or binding node that grants nothing), or why it is withheld.
fn judge(platform: &'static Platform, node: &DeviceNode<'_>) -> Result<bool, Withheld> {
    let known = platform
        .withheld_devices
        .iter()
        .find(|known| node.is_compatible(known.compatible));
    let matching = |entry: &&'static GuestDevice| node.is_compatible(entry.compatible);
    if !node.has_reg {
        // A bus or a binding node: kept unless it is a kind known to be unfit (a bus whose
        // devices sit outside the SMMU), and its children are judged on their own.
        return match known {
            Some(known) => Err(Withheld::Known(known)),
            None => Ok(false),
        };
    }
    if node.registers.is_empty() {
        return Err(Withheld::Unplaceable);
    }
    let hypervisor = [platform.uart1, platform.smmu.registers];
    if node
        .registers
        .iter()
        .any(|window| hypervisor.iter().any(|own| own.overlaps(window)))
    {
        return Err(Withheld::Hypervisor);
    }
    let allowed = node.registers.iter().all(|window| {
        platform
            .guest_devices
            .iter()
            .filter(matching)
            .any(|entry| contains(entry.range, *window))
    });
    if allowed {
        return Ok(true);
    }
    match known {
        Some(known) => Err(Withheld::Known(known)),
        None => Err(Withheld::NotAllowed),
    }
}

fn contains(outer: PhysRange, inner: PhysRange) -> bool {
    inner.base.get() >= outer.base.get() && inner.end() <= outer.end() && inner.size > 0
}

fn first_compatible(node: &DeviceNode<'_>) -> String<48> {
    let mut out = String::new();
    if let Some(first) = node.compatibles().next() {
        for c in first.chars() {
            if out.push(c).is_err() {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::platform::{FVP_BASE_REVC, PLATFORMS, QEMU_VIRT};

    fn qemu_plan() -> GuestDevicePlan {
        plan(&QEMU_VIRT, include_bytes!("../testdata/qemu-virt.dtb")).unwrap()
    }

    fn reason_of<'p>(plan: &'p GuestDevicePlan, path: &str) -> Option<&'p Withheld> {
        plan.removed
            .iter()
            .find(|node| node.path == path)
            .map(|node| &node.reason)
    }

    #[test]
    fn qemu_virt_grants_only_devices_that_cannot_reach_memory_around_the_smmu() {
        let plan = qemu_plan();
        let mut granted: std::vec::Vec<_> = plan.granted.iter().map(|d| d.name).collect();
        granted.sort_unstable();
        assert_eq!(
            granted,
            [
                "GIC distributor",
                "GIC redistributors",
                "GPIO (PL061)",
                "PCIe 32-bit window",
                "PCIe 64-bit window",
                "PCIe ECAM",
                "PCIe I/O window",
                "RTC (PL031)",
                "UART0 (PL011)",
            ]
        );
    }

    #[test]
    fn qemu_virt_withholds_every_dma_master_outside_the_smmu_and_the_hypervisors_devices() {
        let plan = qemu_plan();
        let known = |path: &str| match reason_of(&plan, path) {
            Some(Withheld::Known(known)) => known.compatible,
            other => panic!("{path}: {other:?}"),
        };
        assert_eq!(known("/fw-cfg@9020000"), "qemu,fw-cfg-mmio");
        assert_eq!(known("/platform-bus@c000000"), "qemu,platform");
        assert_eq!(known("/intc@8000000/its@8080000"), "arm,gic-v3-its");
        assert_eq!(known("/virtio_mmio@a003e00"), "virtio,mmio");
        assert_eq!(
            plan.removed
                .iter()
                .filter(|n| n.path.starts_with("/virtio_mmio@"))
                .count(),
            32
        );
        assert_eq!(
            reason_of(&plan, "/pl011@9040000"),
            Some(&Withheld::Hypervisor)
        );
        assert_eq!(
            reason_of(&plan, "/smmuv3@9050000"),
            Some(&Withheld::Hypervisor)
        );
        assert_eq!(known("/flash@0"), "cfi-flash");
        // Kept: the guest's console, and the GIC (whose ITS child alone goes).
        assert_eq!(reason_of(&plan, "/pl011@9000000"), None);
        assert_eq!(reason_of(&plan, "/intc@8000000"), None);
    }

    #[test]
    fn a_device_an_operator_put_on_the_platform_bus_is_withheld_with_the_bus() {
        let plan = plan(
            &QEMU_VIRT,
            include_bytes!("../testdata/qemu-virt-platform-device.dtb"),
        )
        .unwrap();
        let bus = plan
            .removed
            .iter()
            .find(|node| node.path == "/platform-bus@c000000")
            .unwrap();
        assert_eq!(bus.devices_inside, 1);
        assert!(matches!(bus.reason, Withheld::Known(known) if known.masters_memory));
        // Only the bus is listed: removing it removes the device.
        assert!(!plan.removed.iter().any(|node| node.path.contains("tpm")));
    }

    #[test]
    fn the_guest_tree_built_from_the_plan_describes_only_granted_devices() {
        use crate::guest_tree::{GuestTreeEdits, IpaRange, build_guest_tree};
        let source = include_bytes!("../testdata/qemu-virt.dtb");
        let plan = qemu_plan();
        let memory = [IpaRange::new(0x4200_0000, 0x3e00_0000)];
        let paths = plan.removed_paths();
        let edits = GuestTreeEdits::new(&memory).remove(&paths);
        let mut out = vec![0u8; 64 * 1024];
        let size = build_guest_tree(source, &edits, &mut out).unwrap();
        let guest = &out[..size];
        let again = plan_for_guest(guest);
        // Every device left in the guest's tree is granted, and nothing is withheld any more.
        assert!(again.removed.is_empty(), "{:?}", again.removed);
        assert_eq!(again.granted.len(), plan.granted.len());
    }

    fn plan_for_guest(dtb: &[u8]) -> GuestDevicePlan {
        plan(&QEMU_VIRT, dtb).unwrap()
    }

    #[test]
    fn an_unknown_device_is_withheld_by_default() {
        static UNKNOWN_ONLY: Platform = Platform {
            guest_devices: &[],
            withheld_devices: &[],
            ..QEMU_VIRT
        };
        let plan = plan(&UNKNOWN_ONLY, include_bytes!("../testdata/qemu-virt.dtb")).unwrap();
        assert!(plan.granted.is_empty());
        assert_eq!(
            reason_of(&plan, "/pl011@9000000"),
            Some(&Withheld::NotAllowed)
        );
        assert_eq!(
            reason_of(&plan, "/fw-cfg@9020000"),
            Some(&Withheld::NotAllowed)
        );
    }

    #[test]
    fn a_node_with_one_window_outside_its_entry_is_withheld() {
        // A distributor entry only: the GIC node's redistributor window is not covered.
        static GICD_ONLY: [GuestDevice; 1] = [GuestDevice {
            name: "GIC distributor",
            compatible: "arm,gic-v3",
            range: PhysRange::new(0x0800_0000, 0x1_0000),
            mapping: GuestMapping::Passthrough,
            safety: Safety::NoDma,
            why: "",
        }];
        static PLATFORM: Platform = Platform {
            guest_devices: &GICD_ONLY,
            ..QEMU_VIRT
        };
        let plan = plan(&PLATFORM, include_bytes!("../testdata/qemu-virt.dtb")).unwrap();
        assert_eq!(
            reason_of(&plan, "/intc@8000000"),
            Some(&Withheld::NotAllowed)
        );
        assert!(plan.granted.is_empty());
    }

    #[test]
    fn fvp_grants_its_console_rtc_gic_and_pcie_and_nothing_on_the_motherboard_else() {
        let plan = plan(
            &FVP_BASE_REVC,
            include_bytes!("../testdata/fvp-base-revc.dtb"),
        )
        .unwrap();
        let removed: std::vec::Vec<_> = plan.removed.iter().map(|n| n.path.as_str()).collect();
        for path in [
            "/bus@8000000/motherboard-bus@8000000/iofpga-bus@300000000/sysreg@10000",
            "/bus@8000000/motherboard-bus@8000000/iofpga-bus@300000000/serial@a0000",
            "/bus@8000000/motherboard-bus@8000000/iofpga-bus@300000000/serial@b0000",
            "/bus@8000000/motherboard-bus@8000000/iofpga-bus@300000000/virtio-block@130000",
            "/iommu@2b400000",
        ] {
            assert!(
                removed.contains(&path),
                "{path} must be withheld: {removed:?}"
            );
        }
        assert!(!removed.iter().any(|p| p.ends_with("/serial@90000")));
        assert!(!removed.iter().any(|p| p.ends_with("/rtc@170000")));
    }

    #[test]
    fn no_allow_list_entry_touches_ram_or_the_hypervisors_devices() {
        for platform in PLATFORMS {
            let own = [
                Some(platform.uart1),
                Some(platform.smmu.registers),
                platform.gic.its,
                platform.fw_cfg,
            ];
            for entry in platform.guest_devices {
                for window in own.iter().flatten().chain(platform.ram_windows) {
                    assert!(
                        !entry.range.overlaps(window),
                        "{}: {} overlaps {window:?}",
                        platform.name,
                        entry.name
                    );
                }
                assert!(
                    entry.range.base.is_aligned(0x1000) && entry.range.size % 0x1000 == 0,
                    "{}: {} is not page-aligned",
                    platform.name,
                    entry.name
                );
                assert!(!entry.why.is_empty());
            }
        }
    }
}
