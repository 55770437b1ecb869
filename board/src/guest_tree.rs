//! The guest's device tree: the platform's DTB, streamed into a new blob with the edits a
//! guest needs.
//!
//! This module owns [`build_guest_tree`]. It reads the DTB the hypervisor booted with and
//! writes, into a caller-supplied buffer, a new flattened device tree (version 17) in which:
//!
//! - every `device_type = "memory"` child of the root is replaced by one node,
//!   `memory@<base>`, whose `reg` is the guest's RAM ([`GuestTreeEdits::memory`]), encoded
//!   with the root's `#address-cells`/`#size-cells` (1 or 2 each). It takes the place of
//!   the first memory node, or ends the root's children if the source has none;
//! - every node named in [`GuestTreeEdits::remove`] is dropped with its subtree;
//! - the references that would dangle and hold a guest up are dropped (see
//!   [`build_guest_tree`] for exactly which);
//! - `/chosen` gets the guest's `bootargs` and initrd, and is created if absent;
//! - when asked ([`GuestTreeEdits::virtual_smmu`]), an `arm,smmu-v3` node describes the
//!   virtual SMMU the hypervisor emulates, and the PCIe host bridge's `iommu-map` names it
//!   (see [`VirtualSmmuNode`]), so that an unmodified Linux finds its IOMMU.
//!
//! Everything else (node order, property order and values, the memory reservations, the
//! boot CPU) is copied. The output's strings block is the source's, followed by those
//! property names the edits add that the source lacks, so building from an already-built
//! tree with the same edits gives the same bytes.
//!
//! The source is an allegation like any DTB: `dtoolkit` validates it first and the walk
//! here reads it again through checked cursors. The walk is a loop, not a recursion; its
//! depth is bounded by [`MAX_DEPTH`] and its length by the structure block's, every
//! collection has a fixed capacity, and the output is written only through bounds-checked
//! slices. No input allocates or panics: a malformed source, impossible edits or a short
//! output buffer are [`GuestTreeError`]s.

use core::fmt;

use dtoolkit::fdt::Fdt;
use dtoolkit::{Node, Property};
use heapless::Vec;
use smmu::Ipa;

use crate::discovery::{BlobError, MAX_BOOTARGS_LEN, MAX_DEPTH, MAX_IOMMU_MAP_ENTRIES};
use crate::interrupt::Interrupt;
use crate::stream_ids::IommuMapEntry;

/// Capacity for the guest's RAM ranges.
pub const MAX_GUEST_MEMORY_RANGES: usize = 8;
/// Capacity for [`GuestTreeEdits::remove`].
pub const MAX_REMOVED_NODES: usize = 64;
/// The set of removed paths a node may still be on, one bit per path.
type PathMask = u64;
const _: () = assert!(MAX_REMOVED_NODES <= PathMask::BITS as usize);
/// Capacity for the phandles of removed nodes (all nodes of the removed subtrees).
pub const MAX_REMOVED_PHANDLES: usize = 128;
/// The most interrupts a virtual SMMU node lists: the `arm,smmu-v3` binding names four
/// (`eventq`, `gerror`, `priq`, `cmdq-sync`), or one `combined`.
pub const MAX_VIRTUAL_SMMU_INTERRUPTS: usize = 4;
/// Capacity for the IOMMUs and MSI controllers whose cell counts are remembered to parse
/// references to them. Past it, references are judged by the fallback rule.
const MAX_PROVIDERS: usize = 64;
/// Levels of the tree, the root's being 0.
const LEVELS: usize = MAX_DEPTH as usize + 1;

const FDT_MAGIC: u32 = 0xd00d_feed;
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;
const HEADER_SIZE: usize = 40;
const RESERVATION_SIZE: usize = 16;

/// A range of guest physical addresses (IPAs), `[base, base + size)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct IpaRange {
    /// The first address.
    pub base: Ipa,
    /// The length in bytes.
    pub size: u64,
}

impl IpaRange {
    /// The range `[base, base + size)`.
    #[must_use]
    pub const fn new(base: u64, size: u64) -> Self {
        Self {
            base: Ipa(base),
            size,
        }
    }

    /// One past the last address, or `None` if that is beyond the address space.
    #[must_use]
    pub const fn checked_end(&self) -> Option<u64> {
        self.base.0.checked_add(self.size)
    }
}

/// One of the wired interrupts of an SMMUv3, by the name the `arm,smmu-v3` binding gives it
/// in `interrupt-names`. Linux finds each by name, so the order a node lists them in does
/// not matter to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SmmuInterruptName {
    /// The event queue became non-empty (`eventq`).
    EventQueue,
    /// The PRI queue became non-empty (`priq`).
    PriQueue,
    /// A CMD_SYNC completed (`cmdq-sync`; Linux does not use it).
    CommandSync,
    /// A global error became active (`gerror`).
    GlobalError,
    /// One line for all of the above (`combined`). Linux prefers it to any other, so a node
    /// lists it alone.
    Combined,
}

impl SmmuInterruptName {
    /// The `interrupt-names` entry.
    #[must_use]
    pub const fn device_tree_name(self) -> &'static str {
        match self {
            Self::EventQueue => "eventq",
            Self::PriQueue => "priq",
            Self::CommandSync => "cmdq-sync",
            Self::GlobalError => "gerror",
            Self::Combined => "combined",
        }
    }
}

/// The virtual SMMU as the guest's device tree describes it (see
/// [`GuestTreeEdits::virtual_smmu`]).
///
/// The node written is `smmuv3@<base>` under the root:
///
/// ```text
/// smmuv3@9050000 {
///     compatible = "arm,smmu-v3";
///     reg = <base size>;               // the root's #address-cells and #size-cells
///     interrupt-parent = <&gic>;       // the source's arm,gic-v3 node
///     interrupts = <...>;              // in the order of `interrupts`
///     interrupt-names = "...";
///     #iommu-cells = <1>;
///     dma-coherent;                    // Linux polls CMD_SYNC by MSI only on a coherent SMMU
///     phandle = <...>;                 // one more than the source's highest
/// };
/// ```
///
/// and the PCIe host bridge gets `iommu-map = <rid-base &smmuv3 sid-base length>...` (and
/// `iommu-map-mask`) in place of whatever `iommu-map` it had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtualSmmuNode<'a> {
    /// The register window in the guest's IPA space: for the hypervisor's vSMMU,
    /// `nested::config::REGISTER_WINDOW_SIZE` bytes at an IPA its stage 2 leaves unmapped,
    /// so that every access traps. Not empty, not wrapping, and within the root's cells.
    pub registers: IpaRange,
    /// The interrupts the virtual SMMU raises, in the order the node lists them: 1 to
    /// [`MAX_VIRTUAL_SMMU_INTERRUPTS`], each name at most once, [`SmmuInterruptName::Combined`]
    /// only alone. Each must be a valid INTID of its class. (The binding's schema orders them
    /// `eventq`, `gerror`, `priq`, `cmdq-sync`; QEMU does not, and Linux reads them by name.)
    pub interrupts: &'a [(SmmuInterruptName, Interrupt)],
    /// The PCIe host bridge's `iommu-map`, each entry naming the new node: requester IDs
    /// `rid_base..rid_base + length` become the guest's (virtual) stream IDs
    /// `sid_base..sid_base + length`. At most [`MAX_IOMMU_MAP_ENTRIES`], none empty, none
    /// passing 2^32 on either side. Empty: the host bridge gets no `iommu-map` (its
    /// functions are then not behind the virtual SMMU), and need not exist.
    pub iommu_map: &'a [IommuMapEntry],
    /// The host bridge's `iommu-map-mask`; only with a non-empty `iommu_map`.
    pub iommu_map_mask: Option<u32>,
}

/// What to change between the platform's tree and the guest's.
///
/// Built with [`GuestTreeEdits::new`] and the methods after it, so that later edits (an
/// extra node for the virtual SMMU, say) can be added without breaking callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct GuestTreeEdits<'a> {
    /// The guest's RAM: at least one range, at most [`MAX_GUEST_MEMORY_RANGES`], none
    /// empty, none overlapping, written to `reg` in this order.
    pub memory: &'a [IpaRange],
    /// Full paths of the nodes to drop with their subtrees, such as `"/pl011@9040000"`:
    /// a leading `/`, then each node's full name (with its unit address, if it has one)
    /// separated by `/`, compared byte for byte. At most [`MAX_REMOVED_NODES`].
    pub remove: &'a [&'a str],
    /// `/chosen/bootargs`: `None` keeps the source's (or none), `Some` replaces or adds it.
    pub bootargs: Option<&'a str>,
    /// The guest's initrd: `Some` sets `/chosen/linux,initrd-start` and `-end`; `None`
    /// removes them, since the source's describe the hypervisor's memory, not the guest's.
    pub initrd: Option<IpaRange>,
    /// The virtual SMMU: `Some` adds its node and points the PCIe host bridge's `iommu-map`
    /// at it; `None` adds nothing.
    pub virtual_smmu: Option<&'a VirtualSmmuNode<'a>>,
}

impl<'a> GuestTreeEdits<'a> {
    /// Edits that set the guest's RAM to `memory` and change nothing else but what must
    /// change (the source's initrd is dropped, see [`GuestTreeEdits::initrd`]).
    #[must_use]
    pub const fn new(memory: &'a [IpaRange]) -> Self {
        Self {
            memory,
            remove: &[],
            bootargs: None,
            initrd: None,
            virtual_smmu: None,
        }
    }

    /// Also drops the nodes at `paths` (see [`GuestTreeEdits::remove`]).
    #[must_use]
    pub const fn remove(self, paths: &'a [&'a str]) -> Self {
        Self {
            remove: paths,
            ..self
        }
    }

    /// Also sets `/chosen/bootargs`.
    #[must_use]
    pub const fn bootargs(self, bootargs: &'a str) -> Self {
        Self {
            bootargs: Some(bootargs),
            ..self
        }
    }

    /// Also sets the initrd's location.
    #[must_use]
    pub const fn initrd(self, initrd: IpaRange) -> Self {
        Self {
            initrd: Some(initrd),
            ..self
        }
    }

    /// Also describes the virtual SMMU and maps the PCIe host bridge's requester IDs to it.
    ///
    /// A child of the root with the new node's name (`smmuv3@<base>`) is replaced by it
    /// (its subtree goes too, as if it were in [`GuestTreeEdits::remove`]): the physical
    /// SMMU when the virtual one takes its address, or the node an earlier build added.
    #[must_use]
    pub const fn virtual_smmu(self, node: &'a VirtualSmmuNode<'a>) -> Self {
        Self {
            virtual_smmu: Some(node),
            ..self
        }
    }
}

/// Why [`build_guest_tree`] could not build the guest's tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum GuestTreeError {
    /// The source is not a well-formed flattened device tree.
    Source(BlobError),
    /// The source's nodes nest deeper than [`MAX_DEPTH`].
    TooDeep,
    /// The root's `#address-cells` or `#size-cells` is not 1 or 2 (or is malformed).
    RootCells,
    /// No guest RAM range, or more than [`MAX_GUEST_MEMORY_RANGES`].
    GuestMemoryCount,
    /// A guest RAM range is empty, wraps, overlaps another, or does not fit the root's
    /// cells.
    GuestMemoryRange(IpaRange),
    /// The bootargs contain a NUL or are longer than [`MAX_BOOTARGS_LEN`].
    Bootargs,
    /// The initrd range wraps around the address space.
    Initrd,
    /// More than [`MAX_REMOVED_NODES`] paths to remove.
    TooManyRemovedNodes,
    /// The path at this index of [`GuestTreeEdits::remove`] is not a full path to a node
    /// other than the root (no leading `/`, an empty component, or deeper than
    /// [`MAX_DEPTH`]).
    RemovedPath(usize),
    /// The removed subtrees hold more than [`MAX_REMOVED_PHANDLES`] phandles.
    TooManyRemovedPhandles,
    /// The virtual SMMU's register window is empty, wraps, or its base or size does not fit
    /// the root's cells.
    VirtualSmmuRegisters(IpaRange),
    /// The virtual SMMU has no interrupt, or more than [`MAX_VIRTUAL_SMMU_INTERRUPTS`].
    VirtualSmmuInterruptCount,
    /// An interrupt name is given twice, or `combined` with others.
    VirtualSmmuInterruptNames,
    /// This interrupt's number is outside its class.
    VirtualSmmuInterrupt(Interrupt),
    /// The `iommu-map` has more than [`MAX_IOMMU_MAP_ENTRIES`] entries.
    TooManyIommuMapEntries,
    /// The `iommu-map` entry at this index is empty, or its requester or stream IDs pass
    /// 2^32.
    IommuMapEntry(usize),
    /// An `iommu-map-mask` without an `iommu-map`.
    IommuMapMaskWithoutMap,
    /// The tree left to the guest has no enabled `arm,gic-v3` node with a phandle for the
    /// virtual SMMU's `interrupt-parent`.
    NoGic,
    /// The tree left to the guest has more than one enabled `arm,gic-v3` node.
    GicAmbiguous,
    /// The GIC's `#interrupt-cells` is not 3 or 4 (or is missing or malformed).
    GicInterruptCells,
    /// An `iommu-map` is asked for, but the tree left to the guest has no enabled
    /// `pci-host-ecam-generic` host bridge.
    NoPcieHost,
    /// The tree left to the guest has more than one enabled `pci-host-ecam-generic` host
    /// bridge: which one the `iommu-map` is for is not known.
    PcieHostAmbiguous,
    /// The source uses phandle `0xffff_fffe`: no higher one is left for the virtual SMMU.
    PhandlesExhausted,
    /// `out` is too small for the guest's tree.
    OutputTooSmall,
    /// The guest's tree would not fit the 32-bit offsets of a blob's header.
    OutputTooLarge,
}

impl fmt::Display for GuestTreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Source(error) => write!(f, "the source is not a valid device tree: {error:?}"),
            Self::TooDeep => write!(f, "the source's nodes nest deeper than {MAX_DEPTH}"),
            Self::RootCells => write!(f, "the root's #address-cells or #size-cells is not 1 or 2"),
            Self::GuestMemoryCount => {
                write!(f, "guest RAM must be 1 to {MAX_GUEST_MEMORY_RANGES} ranges")
            }
            Self::GuestMemoryRange(range) => write!(f, "unusable guest RAM range {range:?}"),
            Self::Bootargs => write!(
                f,
                "bootargs contain a NUL or are longer than {MAX_BOOTARGS_LEN} bytes"
            ),
            Self::Initrd => write!(f, "the initrd range wraps around the address space"),
            Self::TooManyRemovedNodes => {
                write!(f, "more than {MAX_REMOVED_NODES} nodes to remove")
            }
            Self::RemovedPath(index) => write!(f, "removed path {index} is not a node's path"),
            Self::TooManyRemovedPhandles => write!(
                f,
                "removed nodes hold more than {MAX_REMOVED_PHANDLES} phandles"
            ),
            Self::VirtualSmmuRegisters(range) => {
                write!(f, "unusable virtual SMMU register window {range:?}")
            }
            Self::VirtualSmmuInterruptCount => write!(
                f,
                "the virtual SMMU needs 1 to {MAX_VIRTUAL_SMMU_INTERRUPTS} interrupts"
            ),
            Self::VirtualSmmuInterruptNames => write!(
                f,
                "virtual SMMU interrupt names repeat, or `combined` is not alone"
            ),
            Self::VirtualSmmuInterrupt(interrupt) => {
                write!(
                    f,
                    "virtual SMMU interrupt {interrupt:?} is not a valid INTID"
                )
            }
            Self::TooManyIommuMapEntries => {
                write!(f, "more than {MAX_IOMMU_MAP_ENTRIES} iommu-map entries")
            }
            Self::IommuMapEntry(index) => write!(f, "iommu-map entry {index} is unusable"),
            Self::IommuMapMaskWithoutMap => write!(f, "an iommu-map-mask without an iommu-map"),
            Self::NoGic => write!(f, "no arm,gic-v3 node with a phandle in the guest's tree"),
            Self::GicAmbiguous => write!(f, "more than one arm,gic-v3 node in the guest's tree"),
            Self::GicInterruptCells => write!(f, "the GIC's #interrupt-cells is not 3 or 4"),
            Self::NoPcieHost => write!(f, "no PCIe host bridge for the iommu-map"),
            Self::PcieHostAmbiguous => write!(f, "more than one PCIe host bridge"),
            Self::PhandlesExhausted => write!(f, "no phandle is left for the virtual SMMU"),
            Self::OutputTooSmall => write!(f, "the output buffer is too small"),
            Self::OutputTooLarge => write!(f, "the guest tree exceeds 4 GiB"),
        }
    }
}

impl core::error::Error for GuestTreeError {}

const MALFORMED: GuestTreeError = GuestTreeError::Source(BlobError::Structure);

/// Builds the guest's device tree from `source` with `edits` into `out`, and returns its
/// length (the blob is `out[..length]`).
///
/// Node matching: a node is removed when its full path equals one of
/// [`GuestTreeEdits::remove`] byte for byte (no unit-address wildcards, no aliases or
/// labels). Memory nodes (children of the root with `device_type = "memory"`) are always
/// replaced, whether listed or not.
///
/// References dropped because they would dangle, in every kept node:
/// - `iommus`, `iommu-map`, `msi-parent` and `msi-map` when they name the phandle of a
///   removed node (or of any node in a removed subtree), together with `iommu-map-mask`
///   or `msi-map-mask` when their map goes. The phandle cells are found with the target's
///   `#iommu-cells` or `#msi-cells`; if a target is unknown or the property malformed, the
///   property is dropped if any of its cells equals a removed phandle. The rest of the
///   property goes with it: a guest without an IOMMU or MSI description boots, one that
///   waits for a missing IOMMU does not;
/// - `/aliases` entries whose path is, or lies below, a removed path;
/// - `/chosen/stdout-path` (and `linux,stdout-path`) when its path, or the path of the
///   alias it names, is, or lies below, a removed path (options after `:` are ignored).
///
/// Other references (`clocks`, `interrupt-parent`, `gpios`...) are not followed.
///
/// With [`GuestTreeEdits::virtual_smmu`], nodes are judged in the tree left to the guest
/// (removed subtrees and memory nodes do not count), each by its own `status`:
/// - the GIC is the one enabled node compatible with `arm,gic-v3`; its phandle becomes the
///   new node's `interrupt-parent` and its `#interrupt-cells` (3, or 4 with a zero PPI
///   partition cell) the width of each interrupt;
/// - the PCIe host bridge is the one enabled node compatible with `pci-host-ecam-generic`
///   (the node [`crate::discover`] reads). Its `iommu-map` and `iommu-map-mask` are dropped
///   and the edit's written after its other properties;
/// - the new node's phandle is one more than the highest `phandle` or `linux,phandle` of any
///   node of the source, so it names nothing else, removed or not. The one exception keeps
///   building from a built tree stable: if the node it replaces is, property for property,
///   the node this edit writes, and its phandle is above every other, that phandle is kept.
///
/// # Errors
///
/// [`GuestTreeError`] if the source is malformed or nests deeper than [`MAX_DEPTH`], the
/// edits are impossible, or `out` is too small; `out` may then hold a partial blob.
pub fn build_guest_tree(
    source: &[u8],
    edits: &GuestTreeEdits<'_>,
    out: &mut [u8],
) -> Result<usize, GuestTreeError> {
    let fdt =
        Fdt::new(source).map_err(|error| GuestTreeError::Source(BlobError::from(&error.kind)))?;
    let blob = Blob::new(source)?;
    let removed = RemovedPaths::new(edits.remove)?;
    let smmu_name = match edits.virtual_smmu {
        None => None,
        Some(node) => Some(VirtualSmmu::check(node)?),
    };
    let scan = Scan::run(blob, &removed, smmu_name.as_ref().map(node_name_bytes))?;
    let cells = RootCells::new(scan.address_cells, scan.size_cells)?;
    let memory = MemoryNode::new(edits.memory, cells)?;
    let smmu = match (edits.virtual_smmu, smmu_name) {
        (Some(node), Some(name)) => Some(VirtualSmmu::new(node, name, cells, &scan, blob)?),
        _ => None,
    };
    if let Some(bootargs) = edits.bootargs
        && (bootargs.len() > MAX_BOOTARGS_LEN || bootargs.as_bytes().contains(&0))
    {
        return Err(GuestTreeError::Bootargs);
    }
    let initrd = match edits.initrd {
        None => None,
        Some(range) => Some((
            range.base.0,
            range.checked_end().ok_or(GuestTreeError::Initrd)?,
        )),
    };
    let names = NewNames::new(
        blob.strings,
        NeededNames {
            bootargs: edits.bootargs.is_some(),
            initrd: initrd.is_some(),
            smmu: smmu.as_ref(),
        },
    );

    let mut writer = Writer { out, position: 0 };
    writer.skip(HEADER_SIZE)?;
    let reservations_offset = writer.position;
    for reservation in fdt.memory_reservations() {
        writer.u64(reservation.address())?;
        writer.u64(reservation.size())?;
    }
    writer.skip(RESERVATION_SIZE)?;
    let structure_offset = writer.position;
    let mut emit = Emit {
        fdt,
        blob,
        removed: &removed,
        scan: &scan,
        memory: &memory,
        names: &names,
        bootargs: edits.bootargs,
        initrd,
        smmu: smmu.as_ref(),
        writer: &mut writer,
    };
    emit.run()?;
    let strings_offset = writer.position;
    writer.bytes(blob.strings)?;
    names.write_appended(&mut writer)?;
    let total = writer.position;

    let field = |value: usize| u32::try_from(value).map_err(|_| GuestTreeError::OutputTooLarge);
    let header = [
        FDT_MAGIC,
        field(total)?,
        field(structure_offset)?,
        field(strings_offset)?,
        field(reservations_offset)?,
        17,
        16,
        fdt.boot_cpuid_phys(),
        field(total - strings_offset)?,
        field(strings_offset - structure_offset)?,
    ];
    writer.position = 0;
    for value in header {
        writer.u32(value)?;
    }
    Ok(total)
}

/// The blocks of the source this module reads itself.
#[derive(Debug, Clone, Copy)]
struct Blob<'a> {
    structure: &'a [u8],
    strings: &'a [u8],
}

impl<'a> Blob<'a> {
    fn new(source: &'a [u8]) -> Result<Self, GuestTreeError> {
        let word = |index: usize| {
            let start = index * 4;
            source
                .get(start..start + 4)
                .and_then(|bytes| <[u8; 4]>::try_from(bytes).ok())
                .map(u32::from_be_bytes)
                .and_then(|value| usize::try_from(value).ok())
                .ok_or(GuestTreeError::Source(BlobError::Header))
        };
        let block = |offset: usize, size: usize| {
            offset
                .checked_add(size)
                .and_then(|end| source.get(offset..end))
                .ok_or(GuestTreeError::Source(BlobError::Header))
        };
        let (structure_offset, strings_offset) = (word(2)?, word(3)?);
        let (strings_size, structure_size) = (word(8)?, word(9)?);
        if !structure_offset.is_multiple_of(4) {
            return Err(GuestTreeError::Source(BlobError::Header));
        }
        Ok(Self {
            structure: block(structure_offset, structure_size)?,
            strings: block(strings_offset, strings_size)?,
        })
    }
}

/// One token of the structure block.
#[derive(Debug, Clone, Copy)]
enum Token<'a> {
    Begin(&'a [u8]),
    End,
    Prop(Prop<'a>),
    Nop,
    Finish,
}

/// A property as the structure block holds it.
#[derive(Debug, Clone, Copy)]
struct Prop<'a> {
    name_offset: u32,
    name: &'a [u8],
    value: &'a [u8],
}

/// A checked cursor over the structure block. Every token advances it by at least four
/// bytes, so every loop over tokens ends with the block.
#[derive(Debug, Clone)]
struct Cursor<'a> {
    blob: Blob<'a>,
    offset: usize,
}

impl<'a> Cursor<'a> {
    fn u32(&mut self) -> Result<u32, GuestTreeError> {
        let end = self.offset.checked_add(4).ok_or(MALFORMED)?;
        let bytes = self.blob.structure.get(self.offset..end).ok_or(MALFORMED)?;
        self.offset = end;
        let cell = <[u8; 4]>::try_from(bytes).map_err(|_| MALFORMED)?;
        Ok(u32::from_be_bytes(cell))
    }

    /// Moves past `length` bytes and the padding to the next token.
    fn take(&mut self, length: usize) -> Result<&'a [u8], GuestTreeError> {
        let end = self.offset.checked_add(length).ok_or(MALFORMED)?;
        let bytes = self.blob.structure.get(self.offset..end).ok_or(MALFORMED)?;
        self.offset = end.checked_next_multiple_of(4).ok_or(MALFORMED)?;
        Ok(bytes)
    }

    fn next(&mut self) -> Result<Token<'a>, GuestTreeError> {
        match self.u32()? {
            FDT_BEGIN_NODE => {
                let rest = self.blob.structure.get(self.offset..).ok_or(MALFORMED)?;
                let length = rest.iter().position(|&byte| byte == 0).ok_or(MALFORMED)?;
                let name = self.take(length + 1)?;
                Ok(Token::Begin(name.get(..length).ok_or(MALFORMED)?))
            }
            FDT_END_NODE => Ok(Token::End),
            FDT_PROP => {
                let length = usize::try_from(self.u32()?).map_err(|_| MALFORMED)?;
                let name_offset = self.u32()?;
                let value = self.take(length)?;
                let names = usize::try_from(name_offset)
                    .ok()
                    .and_then(|offset| self.blob.strings.get(offset..))
                    .ok_or(MALFORMED)?;
                let name_length = names.iter().position(|&byte| byte == 0).ok_or(MALFORMED)?;
                let name = names.get(..name_length).ok_or(MALFORMED)?;
                Ok(Token::Prop(Prop {
                    name_offset,
                    name,
                    value,
                }))
            }
            FDT_NOP => Ok(Token::Nop),
            FDT_END => Ok(Token::Finish),
            _ => Err(MALFORMED),
        }
    }

    /// The next property of the node being read, past any NOPs; `None`, with the cursor
    /// left on it, at the first token that is neither.
    fn next_property(&mut self) -> Result<Option<Prop<'a>>, GuestTreeError> {
        loop {
            let before = self.offset;
            match self.next()? {
                Token::Prop(prop) => return Ok(Some(prop)),
                Token::Nop => {}
                Token::Begin(_) | Token::End | Token::Finish => {
                    self.offset = before;
                    return Ok(None);
                }
            }
        }
    }

    /// Moves past the subtree whose `FDT_BEGIN_NODE` was just read.
    fn skip_subtree(&mut self) -> Result<(), GuestTreeError> {
        let mut open = 1usize;
        while open > 0 {
            match self.next()? {
                Token::Begin(_) => open += 1,
                Token::End => open -= 1,
                Token::Prop(_) | Token::Nop => {}
                Token::Finish => return Err(MALFORMED),
            }
        }
        Ok(())
    }
}

/// What the walk needs to know about a node from its properties, read before the node's
/// tokens are copied.
#[derive(Debug, Clone, Copy, Default)]
struct NodeFacts {
    phandle: Option<u32>,
    /// The higher of `phandle` and `linux,phandle`, if either is valid.
    highest_phandle: Option<u32>,
    is_memory: bool,
    iommu_cells: Option<u32>,
    msi_cells: Option<u32>,
    msi_controller: bool,
    address_cells: Option<Option<u32>>,
    size_cells: Option<Option<u32>>,
    interrupt_cells: Option<u32>,
    /// `status` is present and neither `"okay"` nor `"ok"`.
    disabled: bool,
    is_gic_v3: bool,
    is_pcie_host: bool,
}

impl NodeFacts {
    /// Reads the properties at `cursor` (just past an `FDT_BEGIN_NODE`) without moving it.
    fn read(cursor: &Cursor<'_>) -> Result<Self, GuestTreeError> {
        let mut cursor = cursor.clone();
        let mut facts = Self::default();
        while let Some(prop) = cursor.next_property()? {
            let cell = one_cell(prop.value);
            match prop.name {
                b"phandle" | b"linux,phandle" => {
                    let valid = cell.filter(|&p| p != 0 && p != u32::MAX);
                    facts.phandle = facts.phandle.or(valid);
                    facts.highest_phandle = facts.highest_phandle.max(valid);
                }
                b"device_type" => facts.is_memory = prop.value == b"memory\0",
                b"#iommu-cells" => facts.iommu_cells = cell,
                b"#msi-cells" => facts.msi_cells = cell,
                b"msi-controller" => facts.msi_controller = true,
                b"#address-cells" => facts.address_cells = Some(cell),
                b"#size-cells" => facts.size_cells = Some(cell),
                b"#interrupt-cells" => facts.interrupt_cells = cell,
                b"status" => facts.disabled = !matches!(prop.value, b"okay\0" | b"ok\0"),
                b"compatible" => {
                    let mut list = prop.value.split(|&byte| byte == 0);
                    facts.is_gic_v3 = list.clone().any(|entry| entry == b"arm,gic-v3");
                    facts.is_pcie_host = list.any(|entry| entry == b"pci-host-ecam-generic");
                }
                _ => {}
            }
        }
        Ok(facts)
    }

    /// An enabled PCIe host bridge, as [`crate::discover`] recognises one.
    fn is_enabled_pcie_host(&self) -> bool {
        self.is_pcie_host && !self.disabled
    }
}

fn one_cell(value: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(value).ok().map(u32::from_be_bytes)
}

/// The validated [`GuestTreeEdits::remove`] list, and matching of nodes against it.
#[derive(Debug)]
struct RemovedPaths<'a> {
    paths: &'a [&'a str],
}

impl<'a> RemovedPaths<'a> {
    fn new(paths: &'a [&'a str]) -> Result<Self, GuestTreeError> {
        if paths.len() > MAX_REMOVED_NODES {
            return Err(GuestTreeError::TooManyRemovedNodes);
        }
        for (index, path) in paths.iter().enumerate() {
            let valid = match path.strip_prefix('/') {
                None => false,
                Some(rest) => {
                    !rest.split('/').any(str::is_empty) && rest.split('/').count() < LEVELS
                }
            };
            if !valid {
                return Err(GuestTreeError::RemovedPath(index));
            }
        }
        Ok(Self { paths })
    }

    /// The candidates for the root: every path.
    fn all(&self) -> PathMask {
        // At most MAX_REMOVED_NODES paths, checked in `new`.
        (0..self.paths.len()).fold(0, |mask, index| mask | 1 << index)
    }

    fn components(path: &str) -> core::str::Split<'_, char> {
        path.get(1..).unwrap_or("").split('/')
    }

    /// The paths of `parent` (a node at `level - 1`) that continue with `name` at `level`.
    fn candidates(&self, parent: PathMask, level: usize, name: &[u8]) -> PathMask {
        let mut candidates = 0;
        for (index, path) in self.paths.iter().enumerate() {
            let bit: PathMask = 1 << index;
            let component = Self::components(path).nth(level.wrapping_sub(1));
            if parent & bit != 0 && component.map(str::as_bytes) == Some(name) {
                candidates |= bit;
            }
        }
        candidates
    }

    /// Whether a node at `level` with `candidates` is named by a path.
    fn names_node(&self, candidates: PathMask, level: usize) -> bool {
        self.paths.iter().enumerate().any(|(index, path)| {
            candidates & (1 << index) != 0 && Self::components(path).count() == level
        })
    }

    /// Whether `path` is, or lies below, a removed path.
    fn covers(&self, path: &[u8]) -> bool {
        self.paths
            .iter()
            .any(|removed| match path.strip_prefix(removed.as_bytes()) {
                Some(rest) => rest.is_empty() || rest.first() == Some(&b'/'),
                None => false,
            })
    }
}

/// Whether an IOMMU or an MSI controller is the target of a reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Provider {
    Iommu,
    Msi,
}

#[derive(Debug, Clone, Copy)]
struct ProviderCells {
    phandle: u32,
    iommu_cells: Option<u32>,
    msi_cells: Option<u32>,
}

/// The GIC the virtual SMMU's interrupts go to, as the first pass found it.
#[derive(Debug, Clone, Copy)]
struct GicFacts {
    phandle: Option<u32>,
    interrupt_cells: Option<u32>,
}

/// The child of the root that the virtual SMMU's node replaces.
#[derive(Debug, Clone, Copy)]
struct ReplacedNode {
    /// Where its properties start in the structure block.
    properties: usize,
    highest_phandle: Option<u32>,
}

/// What the first pass over the source learns: the root's cells, the phandles that the
/// removal leaves dangling, the specifier widths of IOMMUs and MSI controllers, and for
/// the virtual SMMU: the GIC and PCIe host bridges left to the guest, the highest phandle
/// and the node it replaces.
#[derive(Debug, Default)]
struct Scan {
    address_cells: Option<u32>,
    size_cells: Option<u32>,
    removed_phandles: Vec<u32, MAX_REMOVED_PHANDLES>,
    providers: Vec<ProviderCells, MAX_PROVIDERS>,
    /// The first kept, enabled `arm,gic-v3` node, and how many there are.
    gic: Option<GicFacts>,
    gic_count: u32,
    /// Kept, enabled PCIe host bridges.
    pcie_host_count: u32,
    /// The highest phandle of any node but [`Scan::replaced`] (0 if none).
    highest_phandle: u32,
    /// The first child of the root named like the virtual SMMU's node.
    replaced: Option<ReplacedNode>,
}

impl Scan {
    /// Reads the source once. `smmu_name` is the virtual SMMU's node name (without its
    /// NUL), whose namesakes among the root's children are replaced.
    fn run(
        blob: Blob<'_>,
        removed: &RemovedPaths<'_>,
        smmu_name: Option<&[u8]>,
    ) -> Result<Self, GuestTreeError> {
        let mut scan = Self {
            address_cells: Some(2),
            size_cells: Some(1),
            ..Self::default()
        };
        let mut cursor = Cursor { blob, offset: 0 };
        let mut masks: [PathMask; LEVELS] = [0; LEVELS];
        let mut depth = 0usize;
        let mut removed_from: Option<usize> = None;
        // The level of the memory node being read, whose subtree the guest does not get.
        let mut memory_from: Option<usize> = None;
        let mut root_done = false;
        loop {
            match cursor.next()? {
                Token::Begin(name) => {
                    if root_done {
                        return Err(MALFORMED);
                    }
                    let level = depth;
                    let facts = NodeFacts::read(&cursor)?;
                    let mask = if level == 0 {
                        if let Some(cells) = facts.address_cells {
                            scan.address_cells = cells;
                        }
                        if let Some(cells) = facts.size_cells {
                            scan.size_cells = cells;
                        }
                        removed.all()
                    } else {
                        let parent = *masks.get(level - 1).ok_or(GuestTreeError::TooDeep)?;
                        removed.candidates(parent, level, name)
                    };
                    *masks.get_mut(level).ok_or(GuestTreeError::TooDeep)? = mask;
                    let memory = level == 1 && facts.is_memory;
                    let replaced = level == 1 && !memory && smmu_name == Some(name);
                    if removed_from.is_none()
                        && level > 0
                        && !memory
                        && (replaced || removed.names_node(mask, level))
                    {
                        removed_from = Some(level);
                    }
                    if memory {
                        memory_from = Some(level);
                    }
                    if replaced && scan.replaced.is_none() {
                        scan.replaced = Some(ReplacedNode {
                            properties: cursor.offset,
                            highest_phandle: facts.highest_phandle,
                        });
                    } else if let Some(phandle) = facts.highest_phandle {
                        scan.highest_phandle = scan.highest_phandle.max(phandle);
                    }
                    if removed_from.is_none() && memory_from.is_none() && !facts.disabled {
                        if facts.is_gic_v3 {
                            scan.gic_count = scan.gic_count.saturating_add(1);
                            scan.gic.get_or_insert(GicFacts {
                                phandle: facts.phandle,
                                interrupt_cells: facts.interrupt_cells,
                            });
                        }
                        if facts.is_pcie_host {
                            scan.pcie_host_count = scan.pcie_host_count.saturating_add(1);
                        }
                    }
                    if let Some(phandle) = facts.phandle {
                        if removed_from.is_some() && !scan.removed_phandles.contains(&phandle) {
                            scan.removed_phandles
                                .push(phandle)
                                .map_err(|_| GuestTreeError::TooManyRemovedPhandles)?;
                        }
                        let msi_cells = match (facts.msi_cells, facts.msi_controller) {
                            (Some(cells), _) => Some(cells),
                            (None, true) => Some(0),
                            (None, false) => None,
                        };
                        if facts.iommu_cells.is_some() || msi_cells.is_some() {
                            // A full table only weakens parsing to the fallback rule.
                            let _ = scan.providers.push(ProviderCells {
                                phandle,
                                iommu_cells: facts.iommu_cells,
                                msi_cells,
                            });
                        }
                    }
                    depth += 1;
                }
                Token::End => {
                    depth = depth.checked_sub(1).ok_or(MALFORMED)?;
                    if removed_from == Some(depth) {
                        removed_from = None;
                    }
                    if memory_from == Some(depth) {
                        memory_from = None;
                    }
                    root_done = depth == 0;
                }
                Token::Prop(_) | Token::Nop => {}
                Token::Finish if root_done => return Ok(scan),
                Token::Finish => return Err(MALFORMED),
            }
        }
    }

    fn is_removed(&self, phandle: u32) -> bool {
        self.removed_phandles.contains(&phandle)
    }

    fn specifier_cells(&self, phandle: u32, provider: Provider) -> Option<u32> {
        let entry = self
            .providers
            .iter()
            .find(|entry| entry.phandle == phandle)?;
        match provider {
            Provider::Iommu => entry.iommu_cells,
            Provider::Msi => entry.msi_cells,
        }
    }

    /// Whether a reference property names a removed phandle. `map` properties are
    /// `<id-base phandle specifier... length>` entries, the others
    /// `<phandle specifier...>`.
    fn references_removed(&self, value: &[u8], provider: Provider, map: bool) -> bool {
        if self.removed_phandles.is_empty() {
            return false;
        }
        let mut words = value.chunks_exact(4);
        if words.remainder().is_empty() {
            let mut word = || words.next().and_then(one_cell);
            // Each entry consumes at least one word, so this ends with the property.
            loop {
                let head = word();
                let phandle = if map { head.and(word()) } else { head };
                let Some(phandle) = phandle else {
                    if head.is_none() {
                        return false;
                    }
                    break;
                };
                if self.is_removed(phandle) {
                    return true;
                }
                let Some(cells) = self.specifier_cells(phandle, provider) else {
                    break;
                };
                let mut complete = true;
                for _ in 0..cells.saturating_add(u32::from(map)) {
                    if word().is_none() {
                        complete = false;
                        break;
                    }
                }
                if !complete {
                    break;
                }
            }
        }
        // Unknown target or malformed value: judge by any cell.
        value
            .chunks_exact(4)
            .filter_map(one_cell)
            .any(|cell| self.is_removed(cell))
    }
}

/// The root's `#address-cells` and `#size-cells`, as the memory node needs them.
#[derive(Debug, Clone, Copy)]
struct RootCells {
    address: u32,
    size: u32,
}

impl RootCells {
    fn new(address: Option<u32>, size: Option<u32>) -> Result<Self, GuestTreeError> {
        match (address, size) {
            (Some(address @ 1..=2), Some(size @ 1..=2)) => Ok(Self { address, size }),
            _ => Err(GuestTreeError::RootCells),
        }
    }

    /// Appends `<range.base range.size>` to `reg`; `None` if a value does not fit its
    /// cells or `reg` is full.
    fn encode<const N: usize>(&self, range: &IpaRange, reg: &mut Vec<u8, N>) -> Option<()> {
        for (value, count) in [(range.base.0, self.address), (range.size, self.size)] {
            if count == 1 {
                let cell = u32::try_from(value).ok()?;
                reg.extend_from_slice(&cell.to_be_bytes()).ok()?;
            } else {
                reg.extend_from_slice(&value.to_be_bytes()).ok()?;
            }
        }
        Some(())
    }
}

/// A node name with its NUL: `<prefix>@<unit address>`, the prefix at most 7 bytes.
type NodeName = Vec<u8, 24>;

/// `<prefix>@<address in lowercase hex, no leading zeros>` and a NUL; `None` if the
/// prefix is longer than 7 bytes.
fn node_name(prefix: &[u8], address: u64) -> Option<NodeName> {
    let mut name = NodeName::new();
    name.extend_from_slice(prefix).ok()?;
    name.push(b'@').ok()?;
    let digits = (64 - address.leading_zeros()).div_ceil(4).max(1);
    for digit in (0..digits).rev() {
        let nibble = (address >> (digit * 4)) & 0xf;
        let character = b"0123456789abcdef"
            .get(usize::try_from(nibble).ok()?)
            .copied()?;
        name.push(character).ok()?;
    }
    name.push(0).ok()?;
    Some(name)
}

/// The name without its NUL, as the structure block's `FDT_BEGIN_NODE` is read.
fn node_name_bytes(name: &NodeName) -> &[u8] {
    name.split_last().map_or(&[], |(_, bytes)| bytes)
}

/// The replacement memory node, encoded once.
#[derive(Debug)]
struct MemoryNode {
    /// `memory@<base>` and a NUL.
    name: NodeName,
    reg: Vec<u8, { MAX_GUEST_MEMORY_RANGES * 16 }>,
}

impl MemoryNode {
    fn new(ranges: &[IpaRange], cells: RootCells) -> Result<Self, GuestTreeError> {
        if ranges.is_empty() || ranges.len() > MAX_GUEST_MEMORY_RANGES {
            return Err(GuestTreeError::GuestMemoryCount);
        }
        let mut reg = Vec::new();
        for (index, range) in ranges.iter().enumerate() {
            let bad = GuestTreeError::GuestMemoryRange(*range);
            let end = range.checked_end().ok_or(bad)?;
            let overlaps = ranges.iter().take(index).any(|other| {
                other
                    .checked_end()
                    .is_some_and(|other_end| range.base.0 < other_end && other.base.0 < end)
            });
            if range.size == 0 || overlaps {
                return Err(bad);
            }
            cells.encode(range, &mut reg).ok_or(bad)?;
        }
        let base = ranges.first().map_or(0, |range| range.base.0);
        let name = node_name(b"memory", base).ok_or(GuestTreeError::GuestMemoryCount)?;
        Ok(Self { name, reg })
    }
}

/// `#iommu-cells = <1>`: a stream ID per master, as the `arm,smmu-v3` binding requires.
const ONE_CELL: [u8; 4] = 1u32.to_be_bytes();

/// The virtual SMMU's node and the host bridge's `iommu-map`, encoded once.
#[derive(Debug)]
struct VirtualSmmu {
    /// `smmuv3@<base>` and a NUL.
    name: NodeName,
    reg: Vec<u8, 16>,
    interrupt_parent: [u8; 4],
    interrupts: Vec<u8, { MAX_VIRTUAL_SMMU_INTERRUPTS * 16 }>,
    interrupt_names: Vec<u8, { MAX_VIRTUAL_SMMU_INTERRUPTS * 10 }>,
    phandle: [u8; 4],
    iommu_map: Vec<u8, { MAX_IOMMU_MAP_ENTRIES * 16 }>,
    iommu_map_mask: Option<[u8; 4]>,
}

impl VirtualSmmu {
    /// Checks what can be checked without the source, and returns the node's name.
    fn check(node: &VirtualSmmuNode<'_>) -> Result<NodeName, GuestTreeError> {
        let registers = node.registers;
        if registers.size == 0 || registers.checked_end().is_none() {
            return Err(GuestTreeError::VirtualSmmuRegisters(registers));
        }
        let interrupts = node.interrupts;
        if interrupts.is_empty() || interrupts.len() > MAX_VIRTUAL_SMMU_INTERRUPTS {
            return Err(GuestTreeError::VirtualSmmuInterruptCount);
        }
        for (index, (name, interrupt)) in interrupts.iter().enumerate() {
            let repeated = interrupts
                .iter()
                .take(index)
                .any(|(other, _)| other == name);
            let combined = *name == SmmuInterruptName::Combined && interrupts.len() > 1;
            if repeated || combined {
                return Err(GuestTreeError::VirtualSmmuInterruptNames);
            }
            if interrupt.to_gic_v3_cells().is_none() {
                return Err(GuestTreeError::VirtualSmmuInterrupt(*interrupt));
            }
        }
        if node.iommu_map.len() > MAX_IOMMU_MAP_ENTRIES {
            return Err(GuestTreeError::TooManyIommuMapEntries);
        }
        for (index, entry) in node.iommu_map.iter().enumerate() {
            let length = u64::from(entry.length);
            let fits = |base: u32| u64::from(base) + length <= 1 << 32;
            if length == 0 || !fits(entry.rid_base) || !fits(entry.sid_base.0) {
                return Err(GuestTreeError::IommuMapEntry(index));
            }
        }
        if node.iommu_map.is_empty() && node.iommu_map_mask.is_some() {
            return Err(GuestTreeError::IommuMapMaskWithoutMap);
        }
        node_name(b"smmuv3", registers.base.0)
            .ok_or(GuestTreeError::VirtualSmmuRegisters(registers))
    }

    /// Encodes the node for the source the first pass read. `node` has passed
    /// [`VirtualSmmu::check`], which gave `name`.
    fn new(
        node: &VirtualSmmuNode<'_>,
        name: NodeName,
        cells: RootCells,
        scan: &Scan,
        blob: Blob<'_>,
    ) -> Result<Self, GuestTreeError> {
        let mut reg = Vec::new();
        cells
            .encode(&node.registers, &mut reg)
            .ok_or(GuestTreeError::VirtualSmmuRegisters(node.registers))?;

        let gic = match (scan.gic, scan.gic_count) {
            (Some(gic), 1) => gic,
            (None, _) => return Err(GuestTreeError::NoGic),
            (Some(_), _) => return Err(GuestTreeError::GicAmbiguous),
        };
        let gic_phandle = gic.phandle.ok_or(GuestTreeError::NoGic)?;
        // A fourth cell is a PPI's partition: 0, none.
        let partition = match gic.interrupt_cells {
            Some(3) => None,
            Some(4) => Some(0u32),
            _ => return Err(GuestTreeError::GicInterruptCells),
        };
        let mut interrupts = Vec::new();
        let mut interrupt_names = Vec::new();
        // `check` has bounded the count and validated every interrupt; a failure here would
        // be a capacity mistake in this module, reported rather than trusted away.
        let capacity = GuestTreeError::VirtualSmmuInterruptCount;
        for (name, interrupt) in node.interrupts {
            let specifier = interrupt
                .to_gic_v3_cells()
                .ok_or(GuestTreeError::VirtualSmmuInterrupt(*interrupt))?;
            for cell in specifier.iter().chain(partition.iter()) {
                interrupts
                    .extend_from_slice(&cell.to_be_bytes())
                    .map_err(|_| capacity)?;
            }
            interrupt_names
                .extend_from_slice(name.device_tree_name().as_bytes())
                .map_err(|_| capacity)?;
            interrupt_names.push(0).map_err(|_| capacity)?;
        }

        match scan.pcie_host_count {
            0 if !node.iommu_map.is_empty() => return Err(GuestTreeError::NoPcieHost),
            0 | 1 => {}
            _ => return Err(GuestTreeError::PcieHostAmbiguous),
        }

        let mut smmu = Self {
            name,
            reg,
            interrupt_parent: gic_phandle.to_be_bytes(),
            interrupts,
            interrupt_names,
            phandle: [0; 4],
            iommu_map: Vec::new(),
            iommu_map_mask: node.iommu_map_mask.map(u32::to_be_bytes),
        };
        let phandle = smmu.choose_phandle(scan, blob)?;
        smmu.phandle = phandle.to_be_bytes();
        for entry in node.iommu_map {
            for cell in [entry.rid_base, phandle, entry.sid_base.0, entry.length] {
                smmu.iommu_map
                    .extend_from_slice(&cell.to_be_bytes())
                    .map_err(|_| GuestTreeError::TooManyIommuMapEntries)?;
            }
        }
        Ok(smmu)
    }

    /// One more than every phandle of the source; or the phandle of the node being
    /// replaced, if this edit wrote it (see [`build_guest_tree`]), so that a rebuild gives
    /// the same bytes.
    fn choose_phandle(&self, scan: &Scan, blob: Blob<'_>) -> Result<u32, GuestTreeError> {
        let mut highest = scan.highest_phandle;
        if let Some(replaced) = scan.replaced {
            let cursor = Cursor {
                blob,
                offset: replaced.properties,
            };
            if let Some(own) = self.phandle_if_written_here(cursor)?
                && own > highest
            {
                return Ok(own);
            }
            highest = highest.max(replaced.highest_phandle.unwrap_or(0));
        }
        highest
            .checked_add(1)
            .filter(|&phandle| phandle != u32::MAX)
            .ok_or(GuestTreeError::PhandlesExhausted)
    }

    /// The phandle of the node whose properties start at `cursor`, if the node is exactly
    /// what this edit writes but for that phandle: the same properties, values and order,
    /// and no children.
    fn phandle_if_written_here(
        &self,
        mut cursor: Cursor<'_>,
    ) -> Result<Option<u32>, GuestTreeError> {
        let mut phandle = None;
        for (index, value) in self.properties() {
            let Some(prop) = cursor.next_property()? else {
                return Ok(None);
            };
            if Some(&prop.name) != NEW_NAMES.get(index) {
                return Ok(None);
            }
            if index == PHANDLE {
                phandle = one_cell(prop.value).filter(|&p| p != 0 && p != u32::MAX);
            } else if prop.value != value {
                return Ok(None);
            }
        }
        let no_more_properties = cursor.next_property()?.is_none();
        let no_children = matches!(cursor.next()?, Token::End);
        Ok(phandle.filter(|_| no_more_properties && no_children))
    }

    /// The node's properties in the order they are written, by [`NEW_NAMES`] index.
    fn properties(&self) -> [(usize, &[u8]); 8] {
        [
            (COMPATIBLE, b"arm,smmu-v3\0"),
            (REG, &self.reg),
            (INTERRUPT_PARENT, &self.interrupt_parent),
            (INTERRUPTS, &self.interrupts),
            (INTERRUPT_NAMES, &self.interrupt_names),
            (IOMMU_CELLS, &ONE_CELL),
            (DMA_COHERENT, &[]),
            (PHANDLE, &self.phandle),
        ]
    }
}

/// Property names this module writes itself, by index.
const DEVICE_TYPE: usize = 0;
const REG: usize = 1;
const BOOTARGS: usize = 2;
const INITRD_START: usize = 3;
const INITRD_END: usize = 4;
const COMPATIBLE: usize = 5;
const INTERRUPT_PARENT: usize = 6;
const INTERRUPTS: usize = 7;
const INTERRUPT_NAMES: usize = 8;
const IOMMU_CELLS: usize = 9;
const DMA_COHERENT: usize = 10;
const PHANDLE: usize = 11;
const IOMMU_MAP: usize = 12;
const IOMMU_MAP_MASK: usize = 13;
const NEW_NAMES: [&[u8]; 14] = [
    b"device_type",
    b"reg",
    b"bootargs",
    b"linux,initrd-start",
    b"linux,initrd-end",
    b"compatible",
    b"interrupt-parent",
    b"interrupts",
    b"interrupt-names",
    b"#iommu-cells",
    b"dma-coherent",
    b"phandle",
    b"iommu-map",
    b"iommu-map-mask",
];

/// Which optional edits write names of their own.
#[derive(Debug, Clone, Copy)]
struct NeededNames<'a> {
    bootargs: bool,
    initrd: bool,
    smmu: Option<&'a VirtualSmmu>,
}

impl NeededNames<'_> {
    fn get(&self) -> [bool; NEW_NAMES.len()] {
        let smmu = self.smmu.is_some();
        let map = self.smmu.is_some_and(|smmu| !smmu.iommu_map.is_empty());
        let mask = map && self.smmu.is_some_and(|smmu| smmu.iommu_map_mask.is_some());
        let (bootargs, initrd) = (self.bootargs, self.initrd);
        [
            true, true, bootargs, initrd, initrd, smmu, smmu, smmu, smmu, smmu, smmu, smmu, map,
            mask,
        ]
    }
}

/// Where each name this module writes lies in the output's strings block: in the source's
/// strings if it is there already, else appended after them.
#[derive(Debug)]
struct NewNames {
    offsets: [Option<u32>; NEW_NAMES.len()],
    appended: [bool; NEW_NAMES.len()],
}

impl NewNames {
    fn new(strings: &[u8], needed: NeededNames<'_>) -> Self {
        let needed = needed.get();
        let mut offsets = [None; NEW_NAMES.len()];
        let mut appended = [false; NEW_NAMES.len()];
        let mut end = strings.len();
        for (index, name) in NEW_NAMES.iter().enumerate() {
            if !needed.get(index).copied().unwrap_or(false) {
                continue;
            }
            // Any occurrence followed by a NUL names it, suffix of a longer name or not.
            let found = strings
                .windows(name.len() + 1)
                .position(|window| window.split_last() == Some((&0, name)));
            let offset = match found {
                Some(offset) => offset,
                None => {
                    if let Some(flag) = appended.get_mut(index) {
                        *flag = true;
                    }
                    let offset = end;
                    end = end.saturating_add(name.len() + 1);
                    offset
                }
            };
            if let Some(slot) = offsets.get_mut(index) {
                *slot = u32::try_from(offset).ok();
            }
        }
        Self { offsets, appended }
    }

    fn offset(&self, index: usize) -> Result<u32, GuestTreeError> {
        self.offsets
            .get(index)
            .copied()
            .flatten()
            .ok_or(GuestTreeError::OutputTooLarge)
    }

    fn write_appended(&self, writer: &mut Writer<'_>) -> Result<(), GuestTreeError> {
        for (name, appended) in NEW_NAMES.iter().zip(self.appended) {
            if appended {
                writer.bytes(name)?;
                writer.bytes(&[0])?;
            }
        }
        Ok(())
    }
}

/// A checked writer into the output buffer.
#[derive(Debug)]
struct Writer<'o> {
    out: &'o mut [u8],
    position: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, bytes: &[u8]) -> Result<(), GuestTreeError> {
        let end = self
            .position
            .checked_add(bytes.len())
            .ok_or(GuestTreeError::OutputTooLarge)?;
        self.out
            .get_mut(self.position..end)
            .ok_or(GuestTreeError::OutputTooSmall)?
            .copy_from_slice(bytes);
        self.position = end;
        Ok(())
    }

    fn skip(&mut self, length: usize) -> Result<(), GuestTreeError> {
        let end = self
            .position
            .checked_add(length)
            .ok_or(GuestTreeError::OutputTooLarge)?;
        self.out
            .get_mut(self.position..end)
            .ok_or(GuestTreeError::OutputTooSmall)?
            .fill(0);
        self.position = end;
        Ok(())
    }

    fn u32(&mut self, value: u32) -> Result<(), GuestTreeError> {
        self.bytes(&value.to_be_bytes())
    }

    fn u64(&mut self, value: u64) -> Result<(), GuestTreeError> {
        self.bytes(&value.to_be_bytes())
    }

    fn pad(&mut self) -> Result<(), GuestTreeError> {
        let padding = self.position.next_multiple_of(4) - self.position;
        self.skip(padding)
    }

    /// `FDT_BEGIN_NODE`; `name` ends with its NUL.
    fn begin_node(&mut self, name: &[u8]) -> Result<(), GuestTreeError> {
        self.u32(FDT_BEGIN_NODE)?;
        self.bytes(name)?;
        self.pad()
    }

    fn prop(&mut self, name_offset: u32, value: &[u8]) -> Result<(), GuestTreeError> {
        let length = u32::try_from(value.len()).map_err(|_| GuestTreeError::OutputTooLarge)?;
        self.u32(FDT_PROP)?;
        self.u32(length)?;
        self.u32(name_offset)?;
        self.bytes(value)?;
        self.pad()
    }
}

/// The nodes whose properties are edited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Special {
    Chosen,
    Aliases,
    /// The PCIe host bridge, when the virtual SMMU edit sets its `iommu-map`.
    PcieHost,
    Other,
}

/// Which reference properties of one node go (see [`build_guest_tree`]).
#[derive(Debug, Clone, Copy, Default)]
struct DanglingReferences {
    iommus: bool,
    iommu_map: bool,
    msi_parent: bool,
    msi_map: bool,
}

impl DanglingReferences {
    fn read(cursor: &Cursor<'_>, scan: &Scan) -> Result<Self, GuestTreeError> {
        let mut cursor = cursor.clone();
        let mut dangling = Self::default();
        while let Some(prop) = cursor.next_property()? {
            let (flag, provider, map) = match prop.name {
                b"iommus" => (&mut dangling.iommus, Provider::Iommu, false),
                b"iommu-map" => (&mut dangling.iommu_map, Provider::Iommu, true),
                b"msi-parent" => (&mut dangling.msi_parent, Provider::Msi, false),
                b"msi-map" => (&mut dangling.msi_map, Provider::Msi, true),
                _ => continue,
            };
            *flag |= scan.references_removed(prop.value, provider, map);
        }
        Ok(dangling)
    }

    fn drops(&self, name: &[u8]) -> bool {
        match name {
            b"iommus" => self.iommus,
            b"iommu-map" | b"iommu-map-mask" => self.iommu_map,
            b"msi-parent" => self.msi_parent,
            b"msi-map" | b"msi-map-mask" => self.msi_map,
            _ => false,
        }
    }
}

/// The `/chosen` properties written so far.
#[derive(Debug, Clone, Copy, Default)]
struct ChosenWritten {
    bootargs: bool,
    initrd_start: bool,
    initrd_end: bool,
}

/// The second pass: copies the source's structure with the edits applied.
struct Emit<'a, 'w, 'o> {
    fdt: Fdt<'a>,
    blob: Blob<'a>,
    removed: &'a RemovedPaths<'a>,
    scan: &'a Scan,
    memory: &'a MemoryNode,
    names: &'a NewNames,
    bootargs: Option<&'a str>,
    initrd: Option<(u64, u64)>,
    smmu: Option<&'a VirtualSmmu>,
    writer: &'w mut Writer<'o>,
}

impl Emit<'_, '_, '_> {
    fn run(&mut self) -> Result<(), GuestTreeError> {
        let mut cursor = Cursor {
            blob: self.blob,
            offset: 0,
        };
        let mut masks: [PathMask; LEVELS] = [0; LEVELS];
        let mut depth = 0usize;
        let mut memory_written = false;
        let mut smmu_written = false;
        let mut chosen_seen = false;
        // The first pass has checked the nesting and depth; errors here are kept anyway.
        loop {
            match cursor.next()? {
                Token::Begin(name) => {
                    let level = depth;
                    let mask = if level == 0 {
                        self.removed.all()
                    } else {
                        let parent = *masks.get(level - 1).ok_or(GuestTreeError::TooDeep)?;
                        self.removed.candidates(parent, level, name)
                    };
                    *masks.get_mut(level).ok_or(GuestTreeError::TooDeep)? = mask;
                    let facts = NodeFacts::read(&cursor)?;
                    if level == 1 && facts.is_memory {
                        if !memory_written {
                            self.memory_node()?;
                            memory_written = true;
                        }
                        cursor.skip_subtree()?;
                        continue;
                    }
                    if let Some(smmu) = self.smmu
                        && level == 1
                        && name == node_name_bytes(&smmu.name)
                    {
                        if !smmu_written {
                            self.smmu_node(smmu)?;
                            smmu_written = true;
                        }
                        cursor.skip_subtree()?;
                        continue;
                    }
                    if level > 0 && self.removed.names_node(mask, level) {
                        cursor.skip_subtree()?;
                        continue;
                    }
                    let special = match (level, name) {
                        (1, b"chosen") => Special::Chosen,
                        (1, b"aliases") => Special::Aliases,
                        _ if self.smmu.is_some() && facts.is_enabled_pcie_host() => {
                            Special::PcieHost
                        }
                        _ => Special::Other,
                    };
                    chosen_seen |= special == Special::Chosen;
                    self.writer.u32(FDT_BEGIN_NODE)?;
                    self.writer.bytes(name)?;
                    self.writer.bytes(&[0])?;
                    self.writer.pad()?;
                    self.properties(&mut cursor, special)?;
                    depth += 1;
                }
                Token::End => {
                    depth = depth.checked_sub(1).ok_or(MALFORMED)?;
                    if depth == 0 {
                        if !memory_written {
                            self.memory_node()?;
                            memory_written = true;
                        }
                        if let Some(smmu) = self.smmu
                            && !smmu_written
                        {
                            self.smmu_node(smmu)?;
                            smmu_written = true;
                        }
                        if !chosen_seen {
                            self.writer.begin_node(b"chosen\0")?;
                            self.chosen_additions(ChosenWritten::default())?;
                            self.writer.u32(FDT_END_NODE)?;
                        }
                    }
                    self.writer.u32(FDT_END_NODE)?;
                }
                // Properties after a child node: not a tree this module copies.
                Token::Prop(_) => return Err(MALFORMED),
                Token::Nop => {}
                Token::Finish => return self.writer.u32(FDT_END),
            }
        }
    }

    /// Copies the properties at `cursor`, editing those of `special` nodes.
    fn properties(
        &mut self,
        cursor: &mut Cursor<'_>,
        special: Special,
    ) -> Result<(), GuestTreeError> {
        let dangling = DanglingReferences::read(cursor, self.scan)?;
        let mut written = ChosenWritten::default();
        while let Some(prop) = cursor.next_property()? {
            if dangling.drops(prop.name) {
                continue;
            }
            match (special, prop.name) {
                (Special::Aliases, _) if self.path_is_removed(prop.value) => continue,
                // Replaced by the edit's, after the other properties.
                (Special::PcieHost, b"iommu-map" | b"iommu-map-mask") => continue,
                (Special::Chosen, b"stdout-path" | b"linux,stdout-path")
                    if self.stdout_is_removed(prop.value) =>
                {
                    continue;
                }
                (Special::Chosen, b"bootargs") if self.bootargs.is_some() => {
                    if !written.bootargs {
                        self.write_bootargs()?;
                        written.bootargs = true;
                    }
                    continue;
                }
                (Special::Chosen, b"linux,initrd-start") => {
                    if let Some((start, _)) = self.initrd
                        && !written.initrd_start
                    {
                        self.writer
                            .prop(self.names.offset(INITRD_START)?, &start.to_be_bytes())?;
                        written.initrd_start = true;
                    }
                    continue;
                }
                (Special::Chosen, b"linux,initrd-end") => {
                    if let Some((_, end)) = self.initrd
                        && !written.initrd_end
                    {
                        self.writer
                            .prop(self.names.offset(INITRD_END)?, &end.to_be_bytes())?;
                        written.initrd_end = true;
                    }
                    continue;
                }
                _ => {}
            }
            self.writer.prop(prop.name_offset, prop.value)?;
        }
        if special == Special::Chosen {
            self.chosen_additions(written)?;
        }
        if special == Special::PcieHost
            && let Some(smmu) = self.smmu
            && !smmu.iommu_map.is_empty()
        {
            self.writer
                .prop(self.names.offset(IOMMU_MAP)?, &smmu.iommu_map)?;
            if let Some(mask) = smmu.iommu_map_mask {
                self.writer
                    .prop(self.names.offset(IOMMU_MAP_MASK)?, &mask)?;
            }
        }
        Ok(())
    }

    fn smmu_node(&mut self, smmu: &VirtualSmmu) -> Result<(), GuestTreeError> {
        self.writer.begin_node(&smmu.name)?;
        for (index, value) in smmu.properties() {
            self.writer.prop(self.names.offset(index)?, value)?;
        }
        self.writer.u32(FDT_END_NODE)
    }

    /// Adds what `/chosen` must have and does not yet.
    fn chosen_additions(&mut self, written: ChosenWritten) -> Result<(), GuestTreeError> {
        if !written.bootargs && self.bootargs.is_some() {
            self.write_bootargs()?;
        }
        if let Some((start, end)) = self.initrd {
            if !written.initrd_start {
                self.writer
                    .prop(self.names.offset(INITRD_START)?, &start.to_be_bytes())?;
            }
            if !written.initrd_end {
                self.writer
                    .prop(self.names.offset(INITRD_END)?, &end.to_be_bytes())?;
            }
        }
        Ok(())
    }

    fn write_bootargs(&mut self) -> Result<(), GuestTreeError> {
        let Some(bootargs) = self.bootargs else {
            return Ok(());
        };
        let length = bootargs.len();
        let name_offset = self.names.offset(BOOTARGS)?;
        let value_length = u32::try_from(length + 1).map_err(|_| GuestTreeError::Bootargs)?;
        self.writer.u32(FDT_PROP)?;
        self.writer.u32(value_length)?;
        self.writer.u32(name_offset)?;
        self.writer.bytes(bootargs.as_bytes())?;
        self.writer.bytes(&[0])?;
        self.writer.pad()
    }

    fn memory_node(&mut self) -> Result<(), GuestTreeError> {
        self.writer.begin_node(&self.memory.name)?;
        self.writer
            .prop(self.names.offset(DEVICE_TYPE)?, b"memory\0")?;
        self.writer
            .prop(self.names.offset(REG)?, &self.memory.reg)?;
        self.writer.u32(FDT_END_NODE)
    }

    /// Whether a string property holds a path that is, or lies below, a removed node.
    fn path_is_removed(&self, value: &[u8]) -> bool {
        single_string(value).is_some_and(|path| self.removed.covers(path))
    }

    /// Whether `stdout-path` (a path or an alias, then `:options`) names a removed node.
    fn stdout_is_removed(&self, value: &[u8]) -> bool {
        let Some(text) = single_string(value) else {
            return false;
        };
        let target = text.split(|&byte| byte == b':').next().unwrap_or(text);
        if target.first() == Some(&b'/') {
            return self.removed.covers(target);
        }
        let Ok(alias) = core::str::from_utf8(target) else {
            return false;
        };
        self.fdt
            .find_node("/aliases")
            .and_then(|aliases| aliases.property(alias))
            .is_some_and(|path| self.path_is_removed(path.value()))
    }
}

impl fmt::Debug for Emit<'_, '_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emit")
            .field("position", &self.writer.position)
            .finish_non_exhaustive()
    }
}

/// The bytes of a property holding one NUL-terminated string, without the NUL.
fn single_string(value: &[u8]) -> Option<&[u8]> {
    let text = value.strip_suffix(&[0])?;
    (!text.contains(&0)).then_some(text)
}
