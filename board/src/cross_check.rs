//! Which platform a device tree describes, and whether it agrees with the board data.
//!
//! This module owns [`identify`] and [`cross_check`]. The board data in
//! [`crate::platform`] is what the hypervisor relies on; the device tree is what it was
//! handed. When they disagree (a moved UART1, a missing SMMU, a different ECAM) the
//! hypervisor must stop with a clear message rather than guess, so every disagreement is a
//! [`Mismatch`] naming the device, the value the board data expects and the value found.

use core::fmt;

use smmu::{PhysAddr, PhysRange};

use crate::discovery::Discovered;
use crate::interrupt::Interrupt;
use crate::platform::{PLATFORMS, Platform, PsciConduit, SmmuInterrupts};
use crate::stream_ids::{BusRange, StreamIdRange};

/// Why no platform matches a device tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum IdentifyError {
    /// The root node has no `compatible` strings.
    NoCompatible,
    /// None of the root node's `compatible` strings names a platform this crate knows.
    Unknown,
}

impl fmt::Display for IdentifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoCompatible => write!(f, "the device tree's root has no `compatible`"),
            Self::Unknown => write!(
                f,
                "the device tree's root `compatible` names no known platform"
            ),
        }
    }
}

/// The platform whose `compatible` strings name the device tree's root, trying the root's
/// strings from the most specific.
///
/// # Errors
///
/// [`IdentifyError`] if the root has no `compatible` or none of it is known.
pub fn identify(discovered: &Discovered<'_>) -> Result<&'static Platform, IdentifyError> {
    if discovered.root_compatible.is_empty() {
        return Err(IdentifyError::NoCompatible);
    }
    discovered
        .root_compatible
        .iter()
        .find_map(|compatible| {
            PLATFORMS
                .iter()
                .copied()
                .find(|platform| platform.compatible.contains(compatible))
        })
        .ok_or(IdentifyError::Unknown)
}

/// A device (or one property of a device) the board data and the device tree describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Device {
    /// Where the lowest RAM bank starts.
    RamBase,
    /// A RAM bank outside the platform's RAM windows.
    RamBank,
    /// The guest's console PL011.
    Uart0,
    /// The hypervisor's log PL011.
    Uart1,
    /// The GICv3 distributor.
    GicDistributor,
    /// The first GICv3 redistributor region.
    GicRedistributors,
    /// The GICv3 ITS.
    GicIts,
    /// The SMMUv3's registers (and so the SMMU itself).
    Smmu,
    /// The SMMUv3's event-queue interrupt.
    SmmuEventq,
    /// The SMMUv3's PRI-queue interrupt.
    SmmuPriq,
    /// The SMMUv3's `CMD_SYNC` interrupt.
    SmmuCmdqSync,
    /// The SMMUv3's global-error interrupt.
    SmmuGerror,
    /// The SMMUv3's combined interrupt.
    SmmuCombined,
    /// The PCIe host's configuration space (and so the host itself).
    PcieEcam,
    /// The PCIe host's buses.
    PcieBusRange,
    /// The PCIe host's I/O window.
    PcieIo,
    /// The PCIe host's 32-bit memory window.
    PcieMmio32,
    /// The PCIe host's 64-bit memory window.
    PcieMmio64,
    /// The stream IDs the PCIe buses occupy through the `iommu-map`.
    PcieStreamIds,
    /// The PL031 RTC.
    Rtc,
    /// QEMU's fw_cfg.
    FwCfg,
    /// The PSCI conduit.
    Psci,
}

/// A value the board data or the device tree gives for a [`Device`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Value {
    /// A physical address.
    Address(PhysAddr),
    /// A physical address range.
    Range(PhysRange),
    /// An interrupt.
    Interrupt(Interrupt),
    /// A range of PCI buses.
    Buses(BusRange),
    /// A range of stream IDs.
    StreamIds(StreamIdRange),
    /// A PSCI conduit.
    Psci(PsciConduit),
}

/// Board data and device tree disagree about `device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Mismatch {
    /// What they disagree about.
    pub device: Device,
    /// What the board data says; `None` if it says there is no such thing.
    pub expected: Option<Value>,
    /// What the device tree says; `None` if it has no such thing (or, for
    /// [`Device::PcieStreamIds`], its buses do not map to one contiguous range).
    pub found: Option<Value>,
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Address(address) => write!(f, "{:#x}", address.0),
            Self::Range(range) => write!(f, "[{:#x}, {:#x})", range.base.0, range.end()),
            Self::Interrupt(interrupt) => write!(
                f,
                "{:?} {} ({:?})",
                interrupt.kind, interrupt.number, interrupt.trigger
            ),
            Self::Buses(buses) => write!(f, "buses {:#x}..={:#x}", buses.first, buses.last),
            Self::StreamIds(ids) => write!(f, "stream IDs {:#x}..={:#x}", ids.first.0, ids.last.0),
            Self::Psci(conduit) => write!(f, "{conduit:?}"),
        }
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: board data says ", self.device)?;
        match &self.expected {
            Some(value) => write!(f, "{value}")?,
            None => write!(f, "none")?,
        }
        write!(f, ", device tree has ")?;
        match &self.found {
            Some(value) => write!(f, "{value}"),
            None => write!(f, "none"),
        }
    }
}

/// Picks one line out of [`SmmuInterrupts`].
type SmmuLine = fn(&SmmuInterrupts) -> Option<Interrupt>;

/// Checks the device tree against `platform`, stopping at the first disagreement.
///
/// # Errors
///
/// The first [`Mismatch`], in the order of [`for_each_mismatch`].
pub fn cross_check(platform: &Platform, discovered: &Discovered<'_>) -> Result<(), Mismatch> {
    let mut first = None;
    for_each_mismatch(platform, discovered, |mismatch| {
        first.get_or_insert(mismatch);
    });
    first.map_or(Ok(()), Err)
}

/// Calls `report` with every disagreement between the device tree and `platform`, so
/// that all of them can be logged before stopping. The order: RAM, UART0, UART1, GIC,
/// SMMU, PCIe, PSCI, RTC, fw_cfg.
pub fn for_each_mismatch(
    platform: &Platform,
    discovered: &Discovered<'_>,
    mut report: impl FnMut(Mismatch),
) {
    let mut check = |device, expected: Option<Value>, found: Option<Value>| {
        if expected != found {
            report(Mismatch {
                device,
                expected,
                found,
            });
        }
    };
    let range = |range: Option<PhysRange>| range.map(Value::Range);

    let lowest_bank = discovered
        .memory
        .first()
        .map(|bank| Value::Address(bank.base));
    check(
        Device::RamBase,
        Some(Value::Address(platform.ram_base())),
        lowest_bank,
    );
    for bank in &discovered.memory {
        let inside = platform
            .ram_windows
            .iter()
            .any(|window| window.contains(bank.base) && bank.end() <= window.end());
        if !inside {
            let nearest = platform.ram_windows.first().copied();
            check(Device::RamBank, range(nearest), Some(Value::Range(*bank)));
        }
    }

    for (device, index, expected) in [
        (Device::Uart0, 0, platform.uart0),
        (Device::Uart1, 1, platform.uart1),
    ] {
        // Present anywhere is fine; otherwise report what sits where it should be in
        // address order.
        if !discovered.uarts.contains(&expected) {
            check(
                device,
                Some(Value::Range(expected)),
                range(discovered.uarts.get(index).copied()),
            );
        }
    }

    let gic = discovered.gic.as_ref();
    check(
        Device::GicDistributor,
        Some(Value::Range(platform.gic.distributor)),
        range(gic.map(|gic| gic.distributor)),
    );
    check(
        Device::GicRedistributors,
        Some(Value::Range(platform.gic.redistributors)),
        range(gic.and_then(|gic| gic.redistributors.first().copied())),
    );
    check(
        Device::GicIts,
        range(platform.gic.its),
        range(gic.and_then(|gic| gic.its)),
    );

    let smmu = discovered.smmu.as_ref();
    check(
        Device::Smmu,
        Some(Value::Range(platform.smmu.registers)),
        range(smmu.map(|smmu| smmu.registers)),
    );
    if let Some(smmu) = smmu {
        let expected = platform.smmu.interrupts;
        let found = smmu.interrupts;
        let lines: [(Device, SmmuLine); 5] = [
            (Device::SmmuEventq, |irqs| irqs.eventq),
            (Device::SmmuPriq, |irqs| irqs.priq),
            (Device::SmmuCmdqSync, |irqs| irqs.cmdq_sync),
            (Device::SmmuGerror, |irqs| irqs.gerror),
            (Device::SmmuCombined, |irqs| irqs.combined),
        ];
        for (device, line) in lines {
            check(
                device,
                line(&expected).map(Value::Interrupt),
                line(&found).map(Value::Interrupt),
            );
        }
    }

    let pcie = discovered.pcie.as_ref();
    check(
        Device::PcieEcam,
        Some(Value::Range(platform.pcie.ecam)),
        range(pcie.map(|pcie| pcie.ecam)),
    );
    if let Some(pcie) = pcie {
        check(
            Device::PcieBusRange,
            Some(Value::Buses(platform.pcie.bus_range)),
            Some(Value::Buses(pcie.bus_range)),
        );
        check(Device::PcieIo, range(platform.pcie.io), range(pcie.io));
        check(
            Device::PcieMmio32,
            Some(Value::Range(platform.pcie.mmio32)),
            range(pcie.mmio32),
        );
        check(
            Device::PcieMmio64,
            range(platform.pcie.mmio64),
            range(pcie.mmio64),
        );
        check(
            Device::PcieStreamIds,
            platform.pcie.stream_id_range().ok().map(Value::StreamIds),
            pcie.stream_id_range().ok().map(Value::StreamIds),
        );
    }

    check(
        Device::Psci,
        Some(Value::Psci(platform.psci)),
        discovered.psci.map(Value::Psci),
    );
    check(Device::Rtc, range(platform.rtc), range(discovered.rtc));
    check(
        Device::FwCfg,
        range(platform.fw_cfg),
        range(discovered.fw_cfg),
    );
}
