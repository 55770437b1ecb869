//! Reading big-endian cells out of property values, and translating bus addresses up to
//! the CPU's physical address space through the `ranges` of each enclosing bus.
//!
//! Everything here works on byte slices the device tree alleges to be well formed: every
//! read is checked, every loop is bounded by the length of a property or the depth of the
//! tree, and a malformed value gives `None`, never a panic.

/// The widest address or size this crate reads: two cells, 64 bits.
pub(super) const MAX_CELLS: u32 = 2;

/// A cursor over the 32-bit big-endian cells of a property value.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cells<'a>(&'a [u8]);

impl<'a> Cells<'a> {
    /// A cursor at the start of `value`.
    pub(super) fn new(value: &'a [u8]) -> Self {
        Self(value)
    }

    /// Whether every byte has been read.
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The next cell.
    pub(super) fn u32(&mut self) -> Option<u32> {
        let (cell, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_be_bytes(*cell))
    }

    /// The next `count` cells as one number; `count` is at most [`MAX_CELLS`] (zero cells
    /// read as 0).
    pub(super) fn number(&mut self, count: u32) -> Option<u64> {
        if count > MAX_CELLS {
            return None;
        }
        let mut value = 0u64;
        for _ in 0..count {
            value = (value << 32) | u64::from(self.u32()?);
        }
        Some(value)
    }

    /// Skips `count` cells.
    pub(super) fn skip(&mut self, count: u32) -> Option<()> {
        let bytes = usize::try_from(count).ok()?.checked_mul(4)?;
        self.0 = self.0.get(bytes..)?;
        Some(())
    }
}

/// How one bus node lays out its children's addresses, and how it maps them to its parent.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bus<'dtb> {
    /// `#address-cells` for the children.
    pub(super) address_cells: u32,
    /// `#size-cells` for the children.
    pub(super) size_cells: u32,
    /// The node's `ranges`: `None` if absent (children are not visible to the CPU), empty
    /// for a 1:1 mapping.
    pub(super) ranges: Option<&'dtb [u8]>,
}

/// A node on the path from the root to the node being visited. The chain is as long as
/// the tree is deep, which the walk bounds.
#[derive(Debug)]
pub(super) struct Ancestry<'a, 'dtb> {
    /// The bus this node forms for its children.
    pub(super) bus: Bus<'dtb>,
    /// The effective interrupt parent (a phandle) of this node's children, if known.
    pub(super) interrupt_parent: Option<u32>,
    /// The node's parent, `None` for the root.
    pub(super) parent: Option<&'a Ancestry<'a, 'dtb>>,
}

impl Ancestry<'_, '_> {
    /// Translates `[address, address + size)`, an address range in this node's child
    /// address space, to the CPU's physical address space. `None` if some bus on the way
    /// has no `ranges`, no `ranges` entry holds the whole range, or a cell count is wider
    /// than 64 bits.
    pub(super) fn translate(&self, address: u64, size: u64) -> Option<u64> {
        let mut address = address;
        let mut node = self;
        // One step per ancestor; the chain is finite and at most the walk's depth.
        while let Some(parent) = node.parent {
            address = translate_one(node.bus, parent.bus.address_cells, address, size)?;
            node = parent;
        }
        Some(address)
    }
}

/// One step of [`Ancestry::translate`]: through `bus`'s `ranges` into an address space of
/// `parent_address_cells`.
fn translate_one(bus: Bus<'_>, parent_address_cells: u32, address: u64, size: u64) -> Option<u64> {
    let ranges = bus.ranges?;
    if ranges.is_empty() {
        return Some(address);
    }
    let widths = [bus.address_cells, parent_address_cells, bus.size_cells];
    if widths.iter().any(|&width| width > MAX_CELLS) || widths == [0, 0, 0] {
        return None;
    }
    let end = address.checked_add(size)?;
    let mut cells = Cells::new(ranges);
    // Each entry consumes at least one cell, so this ends with the property.
    while !cells.is_empty() {
        let child = cells.number(bus.address_cells)?;
        let parent = cells.number(parent_address_cells)?;
        let length = cells.number(bus.size_cells)?;
        let child_end = child.checked_add(length)?;
        if address >= child && end <= child_end {
            return parent.checked_add(address - child);
        }
    }
    None
}

/// Whether the NUL-separated string list `list` contains `needle`.
pub(super) fn string_list_contains(list: &[u8], needle: &str) -> bool {
    list.split(|&byte| byte == 0)
        .any(|item| item == needle.as_bytes())
}

/// The one string of a string property: NUL-terminated UTF-8 with no other NUL.
pub(super) fn single_string(value: &[u8]) -> Option<&str> {
    let text = value.strip_suffix(&[0])?;
    if text.contains(&0) {
        return None;
    }
    core::str::from_utf8(text).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    fn be(cells: &[u32]) -> Vec<u8> {
        cells.iter().flat_map(|c| c.to_be_bytes()).collect()
    }

    #[test]
    fn cells_read_numbers_of_zero_one_and_two_cells_and_refuse_three() {
        let bytes = be(&[1, 2, 3, 4]);
        let mut cells = Cells::new(&bytes);
        assert_eq!(cells.number(0), Some(0));
        assert_eq!(cells.number(1), Some(1));
        assert_eq!(cells.number(2), Some(0x2_0000_0003));
        assert_eq!(cells.number(3), None);
        assert_eq!(cells.number(1), Some(4));
        assert_eq!(cells.u32(), None);
        assert!(cells.is_empty());
        assert_eq!(Cells::new(&[1, 2, 3]).u32(), None);
        assert_eq!(Cells::new(&bytes).skip(5), None);
    }

    #[test]
    fn translation_follows_each_bus_up_to_the_root() {
        // The FVP motherboard: iofpga (1 cell) -> chip select 3 (2 cells) -> CPU.
        let root = Ancestry {
            bus: Bus {
                address_cells: 2,
                size_cells: 2,
                ranges: None,
            },
            interrupt_parent: None,
            parent: None,
        };
        let smb_ranges = be(&[3, 0, 0, 0x1c00_0000, 0x0400_0000]);
        let smb = Ancestry {
            bus: Bus {
                address_cells: 2,
                size_cells: 1,
                ranges: Some(&smb_ranges),
            },
            interrupt_parent: None,
            parent: Some(&root),
        };
        let motherboard = Ancestry {
            bus: Bus {
                address_cells: 2,
                size_cells: 1,
                ranges: Some(&[]),
            },
            interrupt_parent: None,
            parent: Some(&smb),
        };
        let iofpga_ranges = be(&[0, 3, 0, 0x20_0000]);
        let iofpga = Ancestry {
            bus: Bus {
                address_cells: 1,
                size_cells: 1,
                ranges: Some(&iofpga_ranges),
            },
            interrupt_parent: None,
            parent: Some(&motherboard),
        };
        assert_eq!(iofpga.translate(0x9_0000, 0x1000), Some(0x1c09_0000));
        assert_eq!(iofpga.translate(0x1f_f000, 0x1000), Some(0x1c1f_f000));
        // Straddles the end of the iofpga window.
        assert_eq!(iofpga.translate(0x1f_f000, 0x2000), None);
        // A bus without `ranges` hides its children.
        let hidden = Ancestry {
            bus: Bus {
                address_cells: 1,
                size_cells: 1,
                ranges: None,
            },
            interrupt_parent: None,
            parent: Some(&root),
        };
        assert_eq!(hidden.translate(0, 0x1000), None);
        assert_eq!(root.translate(0x0900_0000, 0x1000), Some(0x0900_0000));
    }

    #[test]
    fn string_lists_match_whole_entries_only() {
        let list = b"arm,pl011\0arm,primecell\0";
        assert!(string_list_contains(list, "arm,pl011"));
        assert!(string_list_contains(list, "arm,primecell"));
        assert!(!string_list_contains(list, "arm,pl01"));
        assert_eq!(single_string(b"smc\0"), Some("smc"));
        assert_eq!(single_string(b"smc"), None);
        assert_eq!(single_string(b"s\0mc\0"), None);
        assert_eq!(single_string(b"\xff\0"), None);
    }
}
