//! Device-tree discovery: what the DTB the hypervisor boots with says about the board.
//!
//! This module owns [`discover`], which walks a flattened device tree once and collects,
//! into fixed-capacity fields of [`Discovered`], the devices the hypervisor cares about:
//! RAM, the PL011s, the GICv3, the SMMUv3, the generic ECAM PCIe host and its `iommu-map`,
//! the PL031, QEMU's fw_cfg, PSCI, `/chosen/bootargs` and the CPU count. It decides nothing:
//! comparing with the board data is [`crate::cross_check()`]'s job.
//!
//! The DTB is an allegation, handed over by firmware or QEMU before anything checked it.
//! `dtoolkit` validates the blob's structure first (its tokens, strings and lengths); after
//! that every property value is read through checked cursors, the walk's depth and node
//! count are bounded ([`MAX_DEPTH`], [`MAX_NODES`]), and every collection has a fixed
//! capacity. No input makes this module allocate, loop without bound or panic.

mod cells;
pub mod devices;

use core::fmt;

use dtoolkit::fdt::{Fdt, FdtNode};
use dtoolkit::{Node, Property};
use heapless::Vec;
use smmu::PhysRange;

use self::cells::{Ancestry, Bus, Cells, MAX_CELLS, single_string, string_list_contains};
use crate::interrupt::Interrupt;
use crate::platform::{PsciConduit, SmmuInterrupts};
use crate::stream_ids::{self, BusRange, IommuMapEntry, StreamIdError, StreamIdRange};

/// How deep below the root the walk goes before giving up with [`DiscoveryError::TooDeep`].
pub const MAX_DEPTH: u32 = 16;
/// How many nodes the walk visits before giving up with [`DiscoveryError::TooManyNodes`].
pub const MAX_NODES: u32 = 4096;
/// The longest `/chosen/bootargs` accepted, in bytes (Linux's arm64 `COMMAND_LINE_SIZE`).
pub const MAX_BOOTARGS_LEN: usize = 2048;
/// Capacity for the root node's `compatible` strings.
pub const MAX_ROOT_COMPATIBLE: usize = 8;
/// Capacity for RAM banks, over all memory nodes.
pub const MAX_MEMORY_BANKS: usize = 8;
/// Capacity for PL011 UARTs.
pub const MAX_UARTS: usize = 8;
/// Capacity for GICv3 redistributor regions.
pub const MAX_REDISTRIBUTOR_REGIONS: usize = 4;
/// Capacity for the entries of the PCIe host's `iommu-map`.
pub const MAX_IOMMU_MAP_ENTRIES: usize = 8;
/// The largest blob [`blob_size`] accepts (Linux's arm64 `MAX_FDT_SIZE`).
pub const MAX_BLOB_SIZE: usize = 2 << 20;
/// Capacity for the interrupts of one device.
const MAX_INTERRUPTS: usize = 8;

/// What a device tree says about the board.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Discovered<'dtb> {
    /// The root node's `model`, if present and a valid string.
    pub model: Option<&'dtb str>,
    /// The root node's `compatible` strings, most specific first.
    pub root_compatible: Vec<&'dtb str, MAX_ROOT_COMPATIBLE>,
    /// RAM banks from every `device_type = "memory"` node, sorted by address, none empty
    /// and no two overlapping. Never empty: [`discover`] fails without RAM.
    pub memory: Vec<PhysRange, MAX_MEMORY_BANKS>,
    /// The enabled `arm,pl011` UARTs, sorted by address.
    pub uarts: Vec<PhysRange, MAX_UARTS>,
    /// The `arm,gic-v3` interrupt controller.
    pub gic: Option<DiscoveredGic>,
    /// The `arm,smmu-v3` SMMU.
    pub smmu: Option<DiscoveredSmmu>,
    /// The `pci-host-ecam-generic` PCIe host bridge.
    pub pcie: Option<DiscoveredPcieHost>,
    /// The first `arm,pl031` real-time clock.
    pub rtc: Option<PhysRange>,
    /// QEMU's `qemu,fw-cfg-mmio` device.
    pub fw_cfg: Option<PhysRange>,
    /// The PSCI node's `method`.
    pub psci: Option<PsciConduit>,
    /// `/chosen/bootargs`, borrowed from the DTB, at most [`MAX_BOOTARGS_LEN`] bytes.
    pub bootargs: Option<&'dtb str>,
    /// The enabled `device_type = "cpu"` nodes under `/cpus`.
    pub cpu_count: u32,
}

/// A GICv3 as the device tree describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DiscoveredGic {
    /// The distributor: the first `reg` entry.
    pub distributor: PhysRange,
    /// The redistributor regions: the next `#redistributor-regions` `reg` entries.
    pub redistributors: Vec<PhysRange, MAX_REDISTRIBUTOR_REGIONS>,
    /// The first enabled `arm,gic-v3-its` child.
    pub its: Option<PhysRange>,
    /// The virtual-interface maintenance interrupt, if given.
    pub maintenance: Option<Interrupt>,
}

/// An SMMUv3 as the device tree describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DiscoveredSmmu {
    /// The first `reg` entry.
    pub registers: PhysRange,
    /// The interrupts, matched to `interrupt-names`.
    pub interrupts: SmmuInterrupts,
}

/// A generic ECAM PCIe host bridge as the device tree describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DiscoveredPcieHost {
    /// The configuration space: the first `reg` entry.
    pub ecam: PhysRange,
    /// `bus-range`, or all 256 buses when absent.
    pub bus_range: BusRange,
    /// The CPU side of the first I/O-space window of `ranges`.
    pub io: Option<PhysRange>,
    /// The CPU side of the first 32-bit memory window of `ranges`.
    pub mmio32: Option<PhysRange>,
    /// The CPU side of the first 64-bit memory window of `ranges`.
    pub mmio64: Option<PhysRange>,
    /// The `iommu-map`, whose entries all name the SMMU. Empty if the host has none, or if
    /// there is no enabled SMMU to interpret it with.
    pub iommu_map: Vec<IommuMapEntry, MAX_IOMMU_MAP_ENTRIES>,
    /// `iommu-map-mask`, `u32::MAX` when absent.
    pub iommu_map_mask: u32,
}

impl DiscoveredPcieHost {
    /// The stream IDs the host's buses occupy through its `iommu-map`.
    ///
    /// # Errors
    ///
    /// [`StreamIdError`] if some requester ID on the buses is not mapped (for instance
    /// because there is no `iommu-map`) or the image is not one contiguous range.
    pub fn stream_id_range(&self) -> Result<StreamIdRange, StreamIdError> {
        stream_ids::stream_id_range(&self.iommu_map, self.iommu_map_mask, self.bus_range)
    }
}

/// The kinds of node discovery reads, to say where something went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum NodeKind {
    /// The root node.
    Root,
    /// A `device_type = "memory"` node.
    Memory,
    /// `/chosen`.
    Chosen,
    /// The PSCI node.
    Psci,
    /// An `arm,pl011` UART.
    Uart,
    /// The `arm,gic-v3` interrupt controller.
    Gic,
    /// An `arm,gic-v3-its`.
    Its,
    /// The `arm,smmu-v3`.
    Smmu,
    /// The `pci-host-ecam-generic` host bridge.
    PcieHost,
    /// An `arm,pl031` RTC.
    Rtc,
    /// QEMU's `qemu,fw-cfg-mmio`.
    FwCfg,
}

/// Why the structure of the blob itself was refused (before any node was read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum BlobError {
    /// Shorter than a header, or `totalsize` differs from the length of the slice.
    Length,
    /// Not `0xd00dfeed`.
    Magic,
    /// A format version other than 17 (or compatible with it).
    Version(u32),
    /// The header's offsets and sizes do not describe blocks inside the blob.
    Header,
    /// The memory reservation block is unterminated or malformed.
    MemoryReservations,
    /// The structure block is malformed: a bad token, name, string or property length.
    Structure,
}

/// Why [`discover`] could not describe the board.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DiscoveryError {
    /// The blob is not a well-formed flattened device tree.
    Blob(BlobError),
    /// No RAM: no memory node, or none with a non-empty bank.
    NoMemory,
    /// Two RAM banks overlap.
    OverlappingMemory,
    /// Nodes nest deeper than [`MAX_DEPTH`].
    TooDeep,
    /// More than [`MAX_NODES`] nodes.
    TooManyNodes,
    /// More of something than its fixed capacity holds (see the `MAX_*` constants).
    TooMany(NodeKind),
    /// A second enabled node of a kind the hypervisor must own alone.
    Duplicate(NodeKind),
    /// A property is missing or malformed.
    BadProperty {
        /// The node.
        node: NodeKind,
        /// The property.
        property: &'static str,
    },
    /// A `reg` entry does not reach the CPU's address space through the enclosing buses'
    /// `ranges`.
    Untranslatable(NodeKind),
    /// A node's interrupts are not routed straight to the GICv3.
    InterruptParent(NodeKind),
    /// The PCIe host's `iommu-map` names an IOMMU other than the SMMUv3.
    UnknownIommu,
    /// `/chosen/bootargs` is longer than [`MAX_BOOTARGS_LEN`].
    BootargsTooLong(usize),
    /// A node's full path is longer than [`devices::MAX_PATH_LEN`].
    PathTooLong,
}

impl From<&dtoolkit::error::FdtErrorKind> for BlobError {
    fn from(kind: &dtoolkit::error::FdtErrorKind) -> Self {
        use dtoolkit::error::FdtErrorKind;
        match kind {
            FdtErrorKind::InvalidLength => Self::Length,
            FdtErrorKind::InvalidMagic => Self::Magic,
            FdtErrorKind::UnsupportedVersion(version) => Self::Version(*version),
            FdtErrorKind::InvalidHeader(_) => Self::Header,
            FdtErrorKind::MemReserveNotTerminated | FdtErrorKind::MemReserveInvalid => {
                Self::MemoryReservations
            }
            _ => Self::Structure,
        }
    }
}

impl fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Blob(error) => write!(f, "not a valid device tree blob: {error:?}"),
            Self::NoMemory => write!(f, "the device tree describes no RAM"),
            Self::OverlappingMemory => write!(f, "two RAM banks overlap"),
            Self::TooDeep => write!(f, "nodes nest deeper than {MAX_DEPTH}"),
            Self::TooManyNodes => write!(f, "more than {MAX_NODES} nodes"),
            Self::TooMany(node) => write!(f, "more {node:?} entries than fit"),
            Self::Duplicate(node) => write!(f, "more than one {node:?} node"),
            Self::BadProperty { node, property } => {
                write!(f, "{node:?} node: missing or malformed `{property}`")
            }
            Self::Untranslatable(node) => {
                write!(
                    f,
                    "{node:?} node: `reg` not reachable through the buses' `ranges`"
                )
            }
            Self::InterruptParent(node) => {
                write!(f, "{node:?} node: interrupts not routed to the GICv3")
            }
            Self::UnknownIommu => {
                write!(f, "PCIe `iommu-map` names an IOMMU other than the SMMUv3")
            }
            Self::PathTooLong => write!(
                f,
                "a node's path is longer than {} bytes",
                devices::MAX_PATH_LEN
            ),
            Self::BootargsTooLong(length) => {
                write!(
                    f,
                    "bootargs are {length} bytes, more than {MAX_BOOTARGS_LEN}"
                )
            }
        }
    }
}

/// The length of the blob whose header starts `header`: its `totalsize`, after checking
/// the magic and that it is at most [`MAX_BLOB_SIZE`]. The hypervisor is handed only the
/// address of the DTB; this tells it how long a slice to give [`discover`] (QEMU's blob,
/// padded with free space, is 1 MiB).
///
/// # Errors
///
/// [`DiscoveryError::Blob`] if `header` is shorter than 8 bytes, has the wrong magic, or
/// claims a size below a header's (40 bytes) or above [`MAX_BLOB_SIZE`].
pub fn blob_size(header: &[u8]) -> Result<usize, DiscoveryError> {
    let mut cells = Cells::new(header);
    let magic = cells.u32().ok_or(DiscoveryError::Blob(BlobError::Length))?;
    let total = cells.u32().ok_or(DiscoveryError::Blob(BlobError::Length))?;
    if magic != 0xd00d_feed {
        return Err(DiscoveryError::Blob(BlobError::Magic));
    }
    match usize::try_from(total) {
        Ok(size @ 40..=MAX_BLOB_SIZE) => Ok(size),
        _ => Err(DiscoveryError::Blob(BlobError::Length)),
    }
}

/// Reads what the board data needs from the device tree `dtb`.
///
/// # Errors
///
/// [`DiscoveryError`] if the blob is malformed, exceeds a bound, has no RAM, or describes
/// one of the devices in a way this crate cannot read. A device that is simply absent (no
/// SMMU node, say) is not an error here: its field is `None`, and
/// [`crate::cross_check()`] turns that into a [`crate::Mismatch`].
pub fn discover(dtb: &[u8]) -> Result<Discovered<'_>, DiscoveryError> {
    let fdt = Fdt::new(dtb).map_err(|error| DiscoveryError::Blob(BlobError::from(&error.kind)))?;
    let mut walk = Walk::default();
    walk.root(fdt.root())?;
    walk.finish()
}

/// An interrupt property waiting for the GIC to be found (it may come later in the tree).
#[derive(Debug, Clone, Copy, Default)]
struct PendingInterrupts<'dtb> {
    /// The node's effective interrupt parent.
    parent: Option<u32>,
    /// `interrupts`.
    specifiers: Option<&'dtb [u8]>,
    /// `interrupt-names`.
    names: Option<&'dtb [u8]>,
}

#[derive(Debug, Clone)]
struct GicNode<'dtb> {
    phandle: Option<u32>,
    interrupt_cells: u32,
    distributor: PhysRange,
    redistributors: Vec<PhysRange, MAX_REDISTRIBUTOR_REGIONS>,
    maintenance: PendingInterrupts<'dtb>,
}

#[derive(Debug, Clone, Copy)]
struct SmmuNode<'dtb> {
    phandle: Option<u32>,
    iommu_cells: Option<u32>,
    registers: PhysRange,
    interrupts: PendingInterrupts<'dtb>,
}

#[derive(Debug, Clone)]
struct PcieNode<'dtb> {
    host: DiscoveredPcieHost,
    iommu_map: Option<&'dtb [u8]>,
}

/// The state of one walk over the tree.
#[derive(Debug, Default)]
struct Walk<'dtb> {
    nodes: u32,
    model: Option<&'dtb str>,
    root_compatible: Vec<&'dtb str, MAX_ROOT_COMPATIBLE>,
    memory: Vec<PhysRange, MAX_MEMORY_BANKS>,
    uarts: Vec<PhysRange, MAX_UARTS>,
    gic: Option<GicNode<'dtb>>,
    its: Option<PhysRange>,
    smmu: Option<SmmuNode<'dtb>>,
    pcie: Option<PcieNode<'dtb>>,
    rtc: Option<PhysRange>,
    fw_cfg: Option<PhysRange>,
    psci: Option<PsciConduit>,
    bootargs: Option<&'dtb str>,
    cpu_count: u32,
}

/// Marks a `#address-cells` or `#size-cells` that could not be read: every address
/// under such a bus is refused, devices elsewhere are unaffected.
const INVALID_CELLS: u32 = u32::MAX;

impl<'dtb> Walk<'dtb> {
    fn root(&mut self, root: FdtNode<'dtb>) -> Result<(), DiscoveryError> {
        if let Some(list) = property(&root, "compatible") {
            for item in list
                .split(|&byte| byte == 0)
                .filter(|item| !item.is_empty())
            {
                let text =
                    core::str::from_utf8(item).map_err(|_| bad(NodeKind::Root, "compatible"))?;
                self.root_compatible
                    .push(text)
                    .map_err(|_| DiscoveryError::TooMany(NodeKind::Root))?;
            }
        }
        self.model = property(&root, "model").and_then(single_string);
        let own_interrupt_parent = u32_property(&root, "interrupt-parent").ok().flatten();
        let frame = Ancestry {
            bus: bus(&root),
            interrupt_parent: children_interrupt_parent(&root, own_interrupt_parent),
            parent: None,
        };
        self.children(&root, &frame, 1)
    }

    fn children(
        &mut self,
        node: &FdtNode<'dtb>,
        frame: &Ancestry<'_, 'dtb>,
        depth: u32,
    ) -> Result<(), DiscoveryError> {
        if depth > MAX_DEPTH {
            return Err(DiscoveryError::TooDeep);
        }
        for child in node.children() {
            self.count_node()?;
            self.visit(&child, frame, depth)?;
        }
        Ok(())
    }

    fn count_node(&mut self) -> Result<(), DiscoveryError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            Err(DiscoveryError::TooManyNodes)
        } else {
            Ok(())
        }
    }

    /// Reads one node at `depth` (1 for the root's children) whose parent is `frame`.
    fn visit(
        &mut self,
        node: &FdtNode<'dtb>,
        frame: &Ancestry<'_, 'dtb>,
        depth: u32,
    ) -> Result<(), DiscoveryError> {
        if !is_enabled(node) {
            return Ok(());
        }
        let compatible = property(node, "compatible").unwrap_or(&[]);
        let is = |name: &str| string_list_contains(compatible, name);
        let interrupt_parent = match u32_property(node, "interrupt-parent") {
            Ok(Some(phandle)) => Some(phandle),
            Ok(None) => frame.interrupt_parent,
            Err(()) => None,
        };
        let mut descend = true;
        if depth == 1 && device_type_is(node, "memory") {
            self.memory(node, frame)?;
        } else if depth == 1 && node.name_without_address() == "cpus" {
            self.cpus(node)?;
            descend = false;
        } else if depth == 1 && node.name() == "chosen" {
            self.chosen(node)?;
            descend = false;
        } else if is("arm,psci-1.0") || is("arm,psci-0.2") || is("arm,psci") {
            self.psci(node)?;
        } else if is("arm,pl011") {
            let uart = first_reg(node, frame, NodeKind::Uart)?;
            self.uarts
                .push(uart)
                .map_err(|_| DiscoveryError::TooMany(NodeKind::Uart))?;
        } else if is("arm,gic-v3") {
            self.gic(node, frame, interrupt_parent)?;
        } else if is("arm,gic-v3-its") {
            let its = first_reg(node, frame, NodeKind::Its)?;
            self.its.get_or_insert(its);
        } else if is("arm,smmu-v3") {
            self.smmu(node, frame, interrupt_parent)?;
        } else if is("pci-host-ecam-generic") {
            self.pcie(node, frame)?;
            // Its children are PCI functions with three-cell addresses: nothing to read.
            descend = false;
        } else if is("arm,pl031") {
            let rtc = first_reg(node, frame, NodeKind::Rtc)?;
            self.rtc.get_or_insert(rtc);
        } else if is("qemu,fw-cfg-mmio") {
            let fw_cfg = first_reg(node, frame, NodeKind::FwCfg)?;
            self.fw_cfg.get_or_insert(fw_cfg);
        }
        if descend {
            let child_frame = Ancestry {
                bus: bus(node),
                interrupt_parent: children_interrupt_parent(node, interrupt_parent),
                parent: Some(frame),
            };
            self.children(node, &child_frame, depth + 1)?;
        }
        Ok(())
    }

    fn memory(
        &mut self,
        node: &FdtNode<'dtb>,
        frame: &Ancestry<'_, 'dtb>,
    ) -> Result<(), DiscoveryError> {
        for_each_reg(node, frame, NodeKind::Memory, |bank| {
            if bank.size == 0 {
                return Ok(());
            }
            self.memory
                .push(bank)
                .map_err(|_| DiscoveryError::TooMany(NodeKind::Memory))
        })
    }

    fn cpus(&mut self, node: &FdtNode<'dtb>) -> Result<(), DiscoveryError> {
        for cpu in node.children() {
            self.count_node()?;
            if is_enabled(&cpu) && device_type_is(&cpu, "cpu") {
                self.cpu_count += 1;
            }
        }
        Ok(())
    }

    fn chosen(&mut self, node: &FdtNode<'dtb>) -> Result<(), DiscoveryError> {
        let Some(value) = property(node, "bootargs") else {
            return Ok(());
        };
        let bootargs = single_string(value).ok_or(bad(NodeKind::Chosen, "bootargs"))?;
        if bootargs.len() > MAX_BOOTARGS_LEN {
            return Err(DiscoveryError::BootargsTooLong(bootargs.len()));
        }
        self.bootargs = Some(bootargs);
        Ok(())
    }

    fn psci(&mut self, node: &FdtNode<'dtb>) -> Result<(), DiscoveryError> {
        let method = property(node, "method").and_then(single_string);
        let conduit = match method {
            Some("smc") => PsciConduit::Smc,
            Some("hvc") => PsciConduit::Hvc,
            _ => return Err(bad(NodeKind::Psci, "method")),
        };
        if self.psci.replace(conduit).is_some() {
            return Err(DiscoveryError::Duplicate(NodeKind::Psci));
        }
        Ok(())
    }

    fn gic(
        &mut self,
        node: &FdtNode<'dtb>,
        frame: &Ancestry<'_, 'dtb>,
        interrupt_parent: Option<u32>,
    ) -> Result<(), DiscoveryError> {
        if self.gic.is_some() {
            return Err(DiscoveryError::Duplicate(NodeKind::Gic));
        }
        let regions = u32_property(node, "#redistributor-regions")
            .map_err(|()| bad(NodeKind::Gic, "#redistributor-regions"))?
            .unwrap_or(1);
        if regions == 0 {
            return Err(bad(NodeKind::Gic, "#redistributor-regions"));
        }
        let interrupt_cells = u32_property(node, "#interrupt-cells")
            .ok()
            .flatten()
            .filter(|cells| matches!(cells, 3 | 4))
            .ok_or(bad(NodeKind::Gic, "#interrupt-cells"))?;
        let mut distributor = None;
        let mut redistributors = Vec::new();
        let mut index = 0u32;
        for_each_reg(node, frame, NodeKind::Gic, |range| {
            if index == 0 {
                distributor = Some(range);
            } else if index <= regions {
                redistributors
                    .push(range)
                    .map_err(|_| DiscoveryError::TooMany(NodeKind::Gic))?;
            }
            // Later entries are GICv2-compatibility frames (GICC, GICH, GICV).
            index = index.saturating_add(1);
            Ok(())
        })?;
        let distributor = distributor.ok_or(bad(NodeKind::Gic, "reg"))?;
        if index <= regions {
            return Err(bad(NodeKind::Gic, "reg"));
        }
        self.gic = Some(GicNode {
            phandle: phandle(node),
            interrupt_cells,
            distributor,
            redistributors,
            maintenance: PendingInterrupts {
                parent: interrupt_parent,
                specifiers: property(node, "interrupts"),
                names: None,
            },
        });
        Ok(())
    }

    fn smmu(
        &mut self,
        node: &FdtNode<'dtb>,
        frame: &Ancestry<'_, 'dtb>,
        interrupt_parent: Option<u32>,
    ) -> Result<(), DiscoveryError> {
        if self.smmu.is_some() {
            return Err(DiscoveryError::Duplicate(NodeKind::Smmu));
        }
        let registers = first_reg(node, frame, NodeKind::Smmu)?;
        let iommu_cells =
            u32_property(node, "#iommu-cells").map_err(|()| bad(NodeKind::Smmu, "#iommu-cells"))?;
        self.smmu = Some(SmmuNode {
            phandle: phandle(node),
            iommu_cells,
            registers,
            interrupts: PendingInterrupts {
                parent: interrupt_parent,
                specifiers: property(node, "interrupts"),
                names: property(node, "interrupt-names"),
            },
        });
        Ok(())
    }

    fn pcie(
        &mut self,
        node: &FdtNode<'dtb>,
        frame: &Ancestry<'_, 'dtb>,
    ) -> Result<(), DiscoveryError> {
        if self.pcie.is_some() {
            return Err(DiscoveryError::Duplicate(NodeKind::PcieHost));
        }
        let ecam = first_reg(node, frame, NodeKind::PcieHost)?;
        let bus_range = match property(node, "bus-range") {
            None => BusRange::ALL,
            Some(value) => {
                let mut cells = Cells::new(value);
                let first = cells.u32().and_then(|bus| u8::try_from(bus).ok());
                let last = cells.u32().and_then(|bus| u8::try_from(bus).ok());
                match (first, last, cells.is_empty()) {
                    (Some(first), Some(last), true) => BusRange::new(first, last),
                    _ => None,
                }
                .ok_or(bad(NodeKind::PcieHost, "bus-range"))?
            }
        };
        let iommu_map_mask = u32_property(node, "iommu-map-mask")
            .map_err(|()| bad(NodeKind::PcieHost, "iommu-map-mask"))?
            .unwrap_or(u32::MAX);
        let mut host = DiscoveredPcieHost {
            ecam,
            bus_range,
            io: None,
            mmio32: None,
            mmio64: None,
            iommu_map: Vec::new(),
            iommu_map_mask,
        };
        if let Some(ranges) = property(node, "ranges") {
            read_pci_ranges(node, frame, ranges, &mut host)?;
        }
        self.pcie = Some(PcieNode {
            host,
            iommu_map: property(node, "iommu-map"),
        });
        Ok(())
    }

    /// Resolves what had to wait for the whole tree: interrupts (the GIC may come after
    /// its users) and the `iommu-map` (the SMMU may come after the host bridge).
    fn finish(mut self) -> Result<Discovered<'dtb>, DiscoveryError> {
        if self.memory.is_empty() {
            return Err(DiscoveryError::NoMemory);
        }
        self.memory.sort_unstable_by_key(|bank| bank.base);
        if self
            .memory
            .windows(2)
            .any(|pair| matches!(pair, [a, b] if a.overlaps(b)))
        {
            return Err(DiscoveryError::OverlappingMemory);
        }
        self.uarts.sort_unstable_by_key(|uart| uart.base);

        let gic = self.gic.as_ref();
        let discovered_gic = match gic {
            None => None,
            Some(node) => {
                let maintenance = decode_interrupts(node.maintenance, gic, NodeKind::Gic)?;
                Some(DiscoveredGic {
                    distributor: node.distributor,
                    redistributors: node.redistributors.clone(),
                    its: self.its,
                    maintenance: maintenance.first().copied(),
                })
            }
        };
        let smmu = match self.smmu {
            None => None,
            Some(node) => Some(DiscoveredSmmu {
                registers: node.registers,
                interrupts: smmu_interrupts(node.interrupts, gic)?,
            }),
        };
        let pcie = match self.pcie {
            None => None,
            Some(PcieNode {
                mut host,
                iommu_map,
            }) => {
                if let (Some(map), Some(smmu)) = (iommu_map, self.smmu.as_ref()) {
                    host.iommu_map = read_iommu_map(map, smmu)?;
                }
                Some(host)
            }
        };
        Ok(Discovered {
            model: self.model,
            root_compatible: self.root_compatible,
            memory: self.memory,
            uarts: self.uarts,
            gic: discovered_gic,
            smmu,
            pcie,
            rtc: self.rtc,
            fw_cfg: self.fw_cfg,
            psci: self.psci,
            bootargs: self.bootargs,
            cpu_count: self.cpu_count,
        })
    }
}

fn bad(node: NodeKind, property: &'static str) -> DiscoveryError {
    DiscoveryError::BadProperty { node, property }
}

/// The value of property `name`, borrowed from the blob.
fn property<'dtb>(node: &FdtNode<'dtb>, name: &str) -> Option<&'dtb [u8]> {
    node.property(name)
        .and_then(|property| property.value_as::<&'dtb [u8]>().ok())
}

/// A one-cell property: `Ok(None)` if absent, `Err` if not exactly one cell.
fn u32_property(node: &FdtNode<'_>, name: &str) -> Result<Option<u32>, ()> {
    match property(node, name) {
        None => Ok(None),
        Some(value) => <[u8; 4]>::try_from(value)
            .map(|cell| Some(u32::from_be_bytes(cell)))
            .map_err(|_| ()),
    }
}

fn phandle(node: &FdtNode<'_>) -> Option<u32> {
    u32_property(node, "phandle")
        .ok()
        .flatten()
        .or_else(|| u32_property(node, "linux,phandle").ok().flatten())
}

/// `status` absent, `"okay"` or `"ok"`. Anything else (including a malformed value)
/// means the node and everything below it is left alone.
fn is_enabled(node: &FdtNode<'_>) -> bool {
    match property(node, "status") {
        None => true,
        Some(value) => matches!(single_string(value), Some("okay" | "ok")),
    }
}

fn device_type_is(node: &FdtNode<'_>, device_type: &str) -> bool {
    property(node, "device_type").and_then(single_string) == Some(device_type)
}

/// The address layout `node` gives its children. The defaults (2 and 1) are the
/// specification's; an unreadable value poisons only this bus.
fn bus<'dtb>(node: &FdtNode<'dtb>) -> Bus<'dtb> {
    let cells = |name: &str, default: u32| match u32_property(node, name) {
        Ok(Some(cells)) => cells,
        Ok(None) => default,
        Err(()) => INVALID_CELLS,
    };
    Bus {
        address_cells: cells("#address-cells", 2),
        size_cells: cells("#size-cells", 1),
        ranges: property(node, "ranges"),
    }
}

/// The interrupt parent of `node`'s children: `node` itself if it is an interrupt
/// controller or nexus (it has `#interrupt-cells`), else the node's own.
fn children_interrupt_parent(node: &FdtNode<'_>, own: Option<u32>) -> Option<u32> {
    if node.property("#interrupt-cells").is_some() {
        phandle(node)
    } else {
        own
    }
}

/// Calls `each` with every `reg` entry of `node` (whose parent is `frame`), translated to
/// the CPU's physical address space.
fn for_each_reg<'dtb>(
    node: &FdtNode<'dtb>,
    frame: &Ancestry<'_, 'dtb>,
    kind: NodeKind,
    mut each: impl FnMut(PhysRange) -> Result<(), DiscoveryError>,
) -> Result<(), DiscoveryError> {
    let value = property(node, "reg").ok_or(bad(kind, "reg"))?;
    let (address_cells, size_cells) = (frame.bus.address_cells, frame.bus.size_cells);
    if address_cells == 0 || address_cells > MAX_CELLS || size_cells > MAX_CELLS || value.is_empty()
    {
        return Err(bad(kind, "reg"));
    }
    let mut cells = Cells::new(value);
    // Each entry consumes at least one cell, so this ends with the property.
    while !cells.is_empty() {
        let address = cells.number(address_cells).ok_or(bad(kind, "reg"))?;
        let size = cells.number(size_cells).ok_or(bad(kind, "reg"))?;
        let base = frame
            .translate(address, size)
            .ok_or(DiscoveryError::Untranslatable(kind))?;
        each(PhysRange::new(base, size))?;
    }
    Ok(())
}

fn first_reg<'dtb>(
    node: &FdtNode<'dtb>,
    frame: &Ancestry<'_, 'dtb>,
    kind: NodeKind,
) -> Result<PhysRange, DiscoveryError> {
    let mut first = None;
    for_each_reg(node, frame, kind, |range| {
        first.get_or_insert(range);
        Ok(())
    })?;
    first.ok_or(bad(kind, "reg"))
}

/// Reads the host bridge's `ranges`: `<pci-address (3 cells), cpu-address, size>` entries,
/// keeping the first window of each kind.
fn read_pci_ranges<'dtb>(
    node: &FdtNode<'dtb>,
    frame: &Ancestry<'_, 'dtb>,
    ranges: &'dtb [u8],
    host: &mut DiscoveredPcieHost,
) -> Result<(), DiscoveryError> {
    let malformed = bad(NodeKind::PcieHost, "ranges");
    let own = bus(node);
    if own.address_cells != 3 || own.size_cells > MAX_CELLS {
        return Err(bad(NodeKind::PcieHost, "#address-cells"));
    }
    let mut cells = Cells::new(ranges);
    // Each entry consumes at least three cells, so this ends with the property.
    while !cells.is_empty() {
        let space = cells.u32().ok_or(malformed)?;
        cells.skip(2).ok_or(malformed)?;
        let parent = cells.number(frame.bus.address_cells).ok_or(malformed)?;
        let size = cells.number(own.size_cells).ok_or(malformed)?;
        let base = frame
            .translate(parent, size)
            .ok_or(DiscoveryError::Untranslatable(NodeKind::PcieHost))?;
        let window = Some(PhysRange::new(base, size));
        // phys.hi bits 25:24: 1 I/O, 2 32-bit memory, 3 64-bit memory.
        let slot = match (space >> 24) & 0x3 {
            1 => &mut host.io,
            2 => &mut host.mmio32,
            3 => &mut host.mmio64,
            _ => continue,
        };
        if slot.is_none() {
            *slot = window;
        }
    }
    Ok(())
}

/// Reads `iommu-map = <rid-base &smmu sid-base length>...` against the SMMU found.
fn read_iommu_map(
    map: &[u8],
    smmu: &SmmuNode<'_>,
) -> Result<Vec<IommuMapEntry, MAX_IOMMU_MAP_ENTRIES>, DiscoveryError> {
    let malformed = bad(NodeKind::PcieHost, "iommu-map");
    if smmu.iommu_cells != Some(1) {
        return Err(bad(NodeKind::Smmu, "#iommu-cells"));
    }
    let mut entries = Vec::new();
    let mut cells = Cells::new(map);
    // Each entry consumes four cells, so this ends with the property.
    while !cells.is_empty() {
        let rid_base = cells.u32().ok_or(malformed)?;
        let target = cells.u32().ok_or(malformed)?;
        let sid_base = cells.u32().ok_or(malformed)?;
        let length = cells.u32().ok_or(malformed)?;
        if smmu.phandle != Some(target) {
            return Err(DiscoveryError::UnknownIommu);
        }
        let entry = IommuMapEntry {
            rid_base,
            sid_base: smmu::StreamId(sid_base),
            length,
        };
        entries
            .push(entry)
            .map_err(|_| DiscoveryError::TooMany(NodeKind::PcieHost))?;
    }
    Ok(entries)
}

/// Decodes an `interrupts` property whose parent must be the GICv3.
fn decode_interrupts(
    pending: PendingInterrupts<'_>,
    gic: Option<&GicNode<'_>>,
    kind: NodeKind,
) -> Result<Vec<Interrupt, MAX_INTERRUPTS>, DiscoveryError> {
    let mut interrupts = Vec::new();
    let Some(specifiers) = pending.specifiers else {
        return Ok(interrupts);
    };
    let gic = gic.ok_or(DiscoveryError::InterruptParent(kind))?;
    if gic.phandle.is_none() || pending.parent != gic.phandle {
        return Err(DiscoveryError::InterruptParent(kind));
    }
    let mut cells = Cells::new(specifiers);
    if specifiers.is_empty() {
        return Err(bad(kind, "interrupts"));
    }
    while !cells.is_empty() {
        let mut specifier = [0u32; 4];
        let width = usize::try_from(gic.interrupt_cells).unwrap_or(usize::MAX);
        let used = specifier.get_mut(..width).ok_or(bad(kind, "interrupts"))?;
        for cell in used.iter_mut() {
            *cell = cells.u32().ok_or(bad(kind, "interrupts"))?;
        }
        let interrupt = Interrupt::from_gic_v3_cells(used).ok_or(bad(kind, "interrupts"))?;
        interrupts
            .push(interrupt)
            .map_err(|_| DiscoveryError::TooMany(kind))?;
    }
    Ok(interrupts)
}

/// Matches the SMMU's interrupts to their `interrupt-names`.
fn smmu_interrupts(
    pending: PendingInterrupts<'_>,
    gic: Option<&GicNode<'_>>,
) -> Result<SmmuInterrupts, DiscoveryError> {
    let interrupts = decode_interrupts(pending, gic, NodeKind::Smmu)?;
    let mut named = SmmuInterrupts::default();
    let names_malformed = bad(NodeKind::Smmu, "interrupt-names");
    let Some(names) = pending.names else {
        // The binding allows one unnamed line, taken as the combined interrupt.
        return match interrupts.as_slice() {
            [] => Ok(named),
            [combined] => Ok(SmmuInterrupts {
                combined: Some(*combined),
                ..named
            }),
            _ => Err(names_malformed),
        };
    };
    let mut names = names
        .split(|&byte| byte == 0)
        .filter(|name| !name.is_empty());
    for interrupt in &interrupts {
        let slot = match names.next().ok_or(names_malformed)? {
            b"eventq" => &mut named.eventq,
            b"priq" => &mut named.priq,
            b"cmdq-sync" => &mut named.cmdq_sync,
            b"gerror" => &mut named.gerror,
            b"combined" => &mut named.combined,
            _ => return Err(names_malformed),
        };
        if slot.replace(*interrupt).is_some() {
            return Err(names_malformed);
        }
    }
    if names.next().is_some() {
        return Err(names_malformed);
    }
    Ok(named)
}
