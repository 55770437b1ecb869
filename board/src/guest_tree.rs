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
//! - `/chosen` gets the guest's `bootargs` and initrd, and is created if absent.
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

use crate::discovery::{BlobError, MAX_BOOTARGS_LEN, MAX_DEPTH};

/// Capacity for the guest's RAM ranges.
pub const MAX_GUEST_MEMORY_RANGES: usize = 8;
/// Capacity for [`GuestTreeEdits::remove`].
pub const MAX_REMOVED_NODES: usize = 64;
/// The set of removed paths a node may still be on, one bit per path.
type PathMask = u64;
const _: () = assert!(MAX_REMOVED_NODES <= PathMask::BITS as usize);
/// Capacity for the phandles of removed nodes (all nodes of the removed subtrees).
pub const MAX_REMOVED_PHANDLES: usize = 128;
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
    let scan = Scan::run(blob, &removed)?;
    let cells = RootCells::new(scan.address_cells, scan.size_cells)?;
    let memory = MemoryNode::new(edits.memory, cells)?;
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
    let names = NewNames::new(blob.strings, edits.bootargs.is_some(), initrd.is_some());

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
    is_memory: bool,
    iommu_cells: Option<u32>,
    msi_cells: Option<u32>,
    msi_controller: bool,
    address_cells: Option<Option<u32>>,
    size_cells: Option<Option<u32>>,
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
                    facts.phandle = facts.phandle.or(cell.filter(|&p| p != 0 && p != u32::MAX));
                }
                b"device_type" => facts.is_memory = prop.value == b"memory\0",
                b"#iommu-cells" => facts.iommu_cells = cell,
                b"#msi-cells" => facts.msi_cells = cell,
                b"msi-controller" => facts.msi_controller = true,
                b"#address-cells" => facts.address_cells = Some(cell),
                b"#size-cells" => facts.size_cells = Some(cell),
                _ => {}
            }
        }
        Ok(facts)
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

/// What the first pass over the source learns: the root's cells, the phandles that the
/// removal leaves dangling, and the specifier widths of IOMMUs and MSI controllers.
#[derive(Debug, Default)]
struct Scan {
    address_cells: Option<u32>,
    size_cells: Option<u32>,
    removed_phandles: Vec<u32, MAX_REMOVED_PHANDLES>,
    providers: Vec<ProviderCells, MAX_PROVIDERS>,
}

impl Scan {
    fn run(blob: Blob<'_>, removed: &RemovedPaths<'_>) -> Result<Self, GuestTreeError> {
        let mut scan = Self {
            address_cells: Some(2),
            size_cells: Some(1),
            ..Self::default()
        };
        let mut cursor = Cursor { blob, offset: 0 };
        let mut masks: [PathMask; LEVELS] = [0; LEVELS];
        let mut depth = 0usize;
        let mut removed_from: Option<usize> = None;
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
                    if removed_from.is_none()
                        && level > 0
                        && !memory
                        && removed.names_node(mask, level)
                    {
                        removed_from = Some(level);
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
}

/// The replacement memory node, encoded once.
#[derive(Debug)]
struct MemoryNode {
    /// `memory@<base>` and a NUL.
    name: Vec<u8, 24>,
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
            for (value, count) in [(range.base.0, cells.address), (range.size, cells.size)] {
                if count == 1 {
                    let cell = u32::try_from(value).map_err(|_| bad)?;
                    reg.extend_from_slice(&cell.to_be_bytes())
                        .map_err(|_| bad)?;
                } else {
                    reg.extend_from_slice(&value.to_be_bytes())
                        .map_err(|_| bad)?;
                }
            }
        }
        let mut name: Vec<u8, 24> = Vec::new();
        let overflow = GuestTreeError::GuestMemoryCount;
        name.extend_from_slice(b"memory@").map_err(|_| overflow)?;
        let base = ranges.first().map_or(0, |range| range.base.0);
        let digits = (64 - base.leading_zeros()).div_ceil(4).max(1);
        for digit in (0..digits).rev() {
            let nibble = (base >> (digit * 4)) & 0xf;
            let character = b"0123456789abcdef"
                .get(usize::try_from(nibble).unwrap_or(0))
                .copied()
                .unwrap_or(b'0');
            name.push(character).map_err(|_| overflow)?;
        }
        name.push(0).map_err(|_| overflow)?;
        Ok(Self { name, reg })
    }
}

/// Property names this module writes itself, by index.
const DEVICE_TYPE: usize = 0;
const REG: usize = 1;
const BOOTARGS: usize = 2;
const INITRD_START: usize = 3;
const INITRD_END: usize = 4;
const NEW_NAMES: [&[u8]; 5] = [
    b"device_type",
    b"reg",
    b"bootargs",
    b"linux,initrd-start",
    b"linux,initrd-end",
];

/// Where each name this module writes lies in the output's strings block: in the source's
/// strings if it is there already, else appended after them.
#[derive(Debug)]
struct NewNames {
    offsets: [Option<u32>; NEW_NAMES.len()],
    appended: [bool; NEW_NAMES.len()],
}

impl NewNames {
    fn new(strings: &[u8], bootargs: bool, initrd: bool) -> Self {
        let needed = [true, true, bootargs, initrd, initrd];
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
                    if level > 0 && self.removed.names_node(mask, level) {
                        cursor.skip_subtree()?;
                        continue;
                    }
                    let special = match (level, name) {
                        (1, b"chosen") => Special::Chosen,
                        (1, b"aliases") => Special::Aliases,
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
        Ok(())
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
