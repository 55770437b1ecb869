//! VMSAv8-64 translation table walks (4 KiB, 16 KiB and 64 KiB granules, up to 48-bit
//! addresses) and the permission checks of both stages.
//!
//! This module owns the descriptor formats and the walk algorithm, and nothing else: where a
//! descriptor is read from (a physical address, or an IPA that stage 2 must translate first) is
//! the caller's fetch function, and which event a fault becomes is `translate`'s business.

use crate::structures::{WalkGeometry, bit, bits};

/// What a transaction asks for, as permission checks see it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, Default)]
#[allow(clippy::struct_excessive_bools)] // One per attribute of the transaction.
pub struct Access {
    /// A write (else a read).
    pub write: bool,
    /// An instruction fetch (reads only).
    pub exec: bool,
    /// Privileged (else unprivileged).
    pub privileged: bool,
}

impl Access {
    /// A data read.
    pub const READ: Self = Self {
        write: false,
        exec: false,
        privileged: false,
    };
    /// A data write.
    pub const WRITE: Self = Self {
        write: true,
        exec: false,
        privileged: false,
    };
}

/// Which stage a walk is for (the descriptor formats differ in their attribute bits).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Stage {
    /// Stage 1.
    One,
    /// Stage 2.
    Two,
}

/// Why a walk failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WalkFault<E> {
    /// No valid descriptor for the address at `level` (or a block where none is allowed).
    Translation {
        /// The level of the faulting descriptor.
        level: u32,
    },
    /// A descriptor output an address beyond the stage's output size.
    AddressSize {
        /// The level of the descriptor.
        level: u32,
    },
    /// The leaf's access flag is clear and access flag faults are enabled.
    AccessFlag {
        /// The level of the leaf.
        level: u32,
    },
    /// The fetch of a descriptor failed (the caller's error: an abort, a stage-2 fault).
    Fetch(E),
}

/// Stage-1 attributes inherited from table descriptors (APTable, UXNTable, PXNTable).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, Default)]
#[allow(clippy::struct_excessive_bools)] // One per table attribute bit.
pub struct TableAttributes {
    /// APTable\[0\]: no unprivileged access below.
    pub no_unprivileged: bool,
    /// APTable\[1\]: read-only below.
    pub read_only: bool,
    /// UXNTable (XNTable at EL2).
    pub uxn: bool,
    /// PXNTable.
    pub pxn: bool,
}

/// A successful walk.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct Leaf {
    /// The output address of the input address.
    pub output: u64,
    /// log2 of the size of the page or block the leaf maps.
    pub size_shift: u32,
    /// The leaf's level.
    pub level: u32,
    /// The leaf descriptor.
    pub descriptor: u64,
    /// What the table descriptors above it restrict.
    pub table: TableAttributes,
}

impl Leaf {
    /// The first input address the leaf maps (for `input`).
    #[must_use]
    pub const fn input_base(&self, input: u64) -> u64 {
        input & !((1 << self.size_shift) - 1)
    }

    /// The first output address the leaf maps.
    #[must_use]
    pub const fn output_base(&self) -> u64 {
        self.output & !((1 << self.size_shift) - 1)
    }
}

/// Whether a block descriptor is allowed at `level` for a granule (without 52-bit addresses).
const fn block_allowed(granule_shift: u32, level: u32) -> bool {
    match granule_shift {
        12 => level == 1 || level == 2,
        _ => level == 2,
    }
}

/// The output address bits of a descriptor (bits 47:granule, without 52-bit extensions).
const fn descriptor_address(descriptor: u64, shift: u32) -> u64 {
    descriptor & (((1u64 << 48) - 1) & !((1 << shift) - 1))
}

/// One stage's walk, before it meets an input address.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct Walk {
    /// The geometry.
    pub geometry: WalkGeometry,
    /// The root table (a PA, or an IPA for a nested stage 1).
    pub root: u64,
    /// The stage's effective output size in bits.
    pub output_bits: u32,
    /// Which stage (attribute formats).
    pub stage: Stage,
    /// AFFD / S2AFFD.
    pub access_flag_faults_disabled: bool,
    /// HADx: table attributes are ignored.
    pub hierarchical_disabled: bool,
}

/// Walks `walk`'s tables for `input`, whose bits at and above `geometry.input_bits` the
/// caller has already checked (or stripped, for TTB1).
///
/// `fetch(address)` reads the 64-bit descriptor at `address` (a PA, or an IPA for a nested
/// stage 1, translated by the caller).
///
/// # Errors
///
/// The [`WalkFault`] met, at the level it was met.
pub fn walk<E>(
    walk: &Walk,
    input: u64,
    mut fetch: impl FnMut(u64) -> Result<u64, E>,
) -> Result<Leaf, WalkFault<E>> {
    let Walk {
        geometry,
        root,
        output_bits,
        stage,
        access_flag_faults_disabled,
        hierarchical_disabled,
    } = *walk;
    let geometry = &geometry;
    let stride = geometry.stride();
    let mut table = root;
    let mut inherited = TableAttributes::default();
    let mut level = geometry.start_level;
    loop {
        let shift = geometry.level_shift(level);
        let index_bits = if level == geometry.start_level {
            geometry.root_index_bits
        } else {
            stride
        };
        let index = bits(input, shift + index_bits - 1, shift);
        let descriptor = fetch(table + index * 8).map_err(WalkFault::Fetch)?;
        if !bit(descriptor, 0) {
            return Err(WalkFault::Translation { level });
        }
        let is_table = bit(descriptor, 1);
        if level < 3 && is_table {
            let next = descriptor_address(descriptor, geometry.granule_shift);
            if output_bits < 48 && next >> output_bits != 0 {
                return Err(WalkFault::AddressSize { level });
            }
            if stage == Stage::One && !hierarchical_disabled {
                inherited.pxn |= bit(descriptor, 59);
                inherited.uxn |= bit(descriptor, 60);
                inherited.no_unprivileged |= bit(descriptor, 61);
                inherited.read_only |= bit(descriptor, 62);
            }
            table = next;
            level += 1;
            continue;
        }
        // A block below level 3 or a page at level 3; 0b01 at level 3 is reserved.
        if (level == 3 && !is_table) || (level < 3 && !block_allowed(geometry.granule_shift, level))
        {
            return Err(WalkFault::Translation { level });
        }
        let output_base = descriptor_address(descriptor, shift);
        if output_bits < 48 && output_base >> output_bits != 0 {
            return Err(WalkFault::AddressSize { level });
        }
        if !bit(descriptor, 10) && !access_flag_faults_disabled {
            return Err(WalkFault::AccessFlag { level });
        }
        return Ok(Leaf {
            output: output_base | (input & ((1 << shift) - 1)),
            size_shift: shift,
            level,
            descriptor,
            table: inherited,
        });
    }
}

/// What a stage-1 leaf lets each kind of access do.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, Default)]
#[allow(clippy::struct_excessive_bools)] // One per permission.
pub struct Permissions {
    /// Reads.
    pub read: bool,
    /// Writes.
    pub write: bool,
    /// Instruction fetches.
    pub exec: bool,
}

impl Permissions {
    /// Everything.
    pub const ALL: Self = Self {
        read: true,
        write: true,
        exec: true,
    };

    /// Whether `access` is allowed.
    #[must_use]
    pub const fn allow(&self, access: Access) -> bool {
        if access.write {
            self.write
        } else if access.exec {
            self.exec && self.read
        } else {
            self.read
        }
    }

    /// Both sets together (nested stages).
    #[must_use]
    pub const fn intersect(self, other: Self) -> Self {
        Self {
            read: self.read && other.read,
            write: self.write && other.write,
            exec: self.exec && other.exec,
        }
    }
}

/// The stage-1 controls of the CD that the permission check reads.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, Default)]
pub struct Stage1Controls {
    /// The regime has an unprivileged level (EL1&0, EL2&0 with E2H): AP\[1\] applies.
    pub two_privilege_levels: bool,
    /// WXN.
    pub wxn: bool,
    /// PAN.
    pub pan: bool,
}

/// What a stage-1 leaf lets an access of privilege `privileged` do.
#[must_use]
pub fn stage1_permissions(leaf: &Leaf, controls: Stage1Controls, privileged: bool) -> Permissions {
    let d = leaf.descriptor;
    let mut el0_accessible = bit(d, 6) && controls.two_privilege_levels;
    let mut read_only = bit(d, 7);
    el0_accessible &= !leaf.table.no_unprivileged;
    read_only |= leaf.table.read_only;
    let (uxn, pxn) = if controls.two_privilege_levels {
        (bit(d, 54) || leaf.table.uxn, bit(d, 53) || leaf.table.pxn)
    } else {
        // One privilege level: bit 54 is XN.
        let xn = bit(d, 54) || leaf.table.uxn;
        (xn, xn)
    };
    if privileged {
        let pan_blocked = controls.pan && el0_accessible;
        let writable = !read_only;
        // A page writable at EL0 is never privileged-executable.
        let el0_writable = el0_accessible && !read_only;
        Permissions {
            read: !pan_blocked,
            write: writable && !pan_blocked,
            exec: !(pxn || el0_writable || controls.wxn && writable),
        }
    } else {
        let writable = el0_accessible && !read_only;
        Permissions {
            read: el0_accessible,
            write: writable,
            exec: el0_accessible && !uxn && !(controls.wxn && writable),
        }
    }
}

/// What a stage-2 leaf lets an access of privilege `privileged` do (`xnx`: IDR3.XNX, XN is two
/// bits).
#[must_use]
pub fn stage2_permissions(leaf: &Leaf, xnx: bool, privileged: bool) -> Permissions {
    let d = leaf.descriptor;
    let exec = if xnx {
        match bits(d, 54, 53) {
            0b00 => true,
            0b01 => !privileged,
            0b10 => false,
            _ => privileged,
        }
    } else {
        !bit(d, 54)
    };
    Permissions {
        read: bit(d, 6),
        write: bit(d, 7),
        exec,
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Tables in a map, 4 KiB, 39-bit input: L1 at 0x1000, L2 at 0x2000, L3 at 0x3000.
    fn tables() -> HashMap<u64, u64> {
        let mut m = HashMap::new();
        let va: u64 = 0x40_2030_4000; // L1 index 256, L2 index 257, L3 index 0x104
        m.insert(0x1000 + ((va >> 30) & 511) * 8, 0x2000 | 0b11);
        m.insert(0x2000 + ((va >> 21) & 511) * 8, 0x3000 | 0b11);
        m.insert(
            0x3000 + ((va >> 12) & 511) * 8,
            0xabc_d000 | 0b11 | (1 << 10),
        );
        // A 2 MiB block at L2 index 2.
        m.insert(0x2000 + 2 * 8, 0x2_0000_0000 | 0b01 | (1 << 10));
        m
    }

    fn params(output_bits: u32) -> Walk {
        Walk {
            geometry: WalkGeometry::stage1(12, 39),
            root: 0x1000,
            output_bits,
            stage: Stage::One,
            access_flag_faults_disabled: false,
            hierarchical_disabled: false,
        }
    }

    fn run(input: u64, output_bits: u32) -> Result<Leaf, WalkFault<u64>> {
        let m = tables();
        walk(&params(output_bits), input, |a| {
            Ok::<u64, u64>(m.get(&a).copied().unwrap_or(0))
        })
    }

    #[test]
    fn pages_and_blocks_translate_with_their_offsets() {
        let leaf = run(0x40_2030_4123, 48).unwrap();
        assert_eq!(
            (leaf.output, leaf.level, leaf.size_shift),
            (0xabc_d123, 3, 12)
        );
        let block = run(0x40_0052_3456, 48).unwrap();
        assert_eq!(
            (block.output, block.level, block.size_shift),
            (0x2_0012_3456, 2, 21)
        );
        assert_eq!(block.input_base(0x40_0052_3456), 0x40_0040_0000);
    }

    #[test]
    fn faults_name_their_level() {
        assert_eq!(
            run(0x80_0000_0000 - 1, 48).unwrap_err(),
            WalkFault::Translation { level: 1 }
        );
        assert_eq!(
            run(0x40_2030_5000, 48).unwrap_err(),
            WalkFault::Translation { level: 3 }
        );
        // The block's output is beyond 32 bits.
        assert_eq!(
            run(0x40_0040_0000, 32).unwrap_err(),
            WalkFault::AddressSize { level: 2 }
        );
    }

    #[test]
    fn a_fetch_error_stops_the_walk() {
        let got = walk(&params(48), 0, Err::<u64, u64>);
        assert_eq!(got, Err(WalkFault::Fetch(0x1000)));
    }

    fn leaf(descriptor: u64) -> Leaf {
        Leaf {
            output: 0,
            size_shift: 12,
            level: 3,
            descriptor,
            table: TableAttributes::default(),
        }
    }

    /// (AP[2:1], privileged) -> (read, write) at EL1&0.
    #[test]
    fn stage1_access_permissions_follow_ap() {
        let controls = Stage1Controls {
            two_privilege_levels: true,
            ..Stage1Controls::default()
        };
        let cases = [
            (0b00, true, (true, true)),
            (0b00, false, (false, false)),
            (0b01, true, (true, true)),
            (0b01, false, (true, true)),
            (0b10, true, (true, false)),
            (0b10, false, (false, false)),
            (0b11, true, (true, false)),
            (0b11, false, (true, false)),
        ];
        for (ap, privileged, (read, write)) in cases {
            let p = stage1_permissions(&leaf(ap << 6), controls, privileged);
            assert_eq!(
                (p.read, p.write),
                (read, write),
                "AP {ap:#b} privileged {privileged}"
            );
        }
        // EL0-writable pages are not privileged-executable; UXN/PXN apply per level.
        assert!(!stage1_permissions(&leaf(0b01 << 6), controls, true).exec);
        assert!(stage1_permissions(&leaf(0b11 << 6), controls, true).exec);
        assert!(!stage1_permissions(&leaf(0b11 << 6 | 1 << 53), controls, true).exec);
        assert!(!stage1_permissions(&leaf(0b11 << 6 | 1 << 54), controls, false).exec);
    }

    #[test]
    fn stage2_permissions_follow_s2ap_and_xn() {
        let rw = stage2_permissions(&leaf(0b11 << 6), false, false);
        assert_eq!((rw.read, rw.write, rw.exec), (true, true, true));
        let ro = stage2_permissions(&leaf(0b01 << 6 | 1 << 54), false, false);
        assert_eq!((ro.read, ro.write, ro.exec), (true, false, false));
        let wo = stage2_permissions(&leaf(0b10 << 6), false, false);
        assert!(!wo.allow(Access::READ) && wo.allow(Access::WRITE));
        // XNX 0b01: not executable at EL1 only.
        let d = leaf(0b11 << 6 | 0b01 << 53);
        assert!(!stage2_permissions(&d, true, true).exec);
        assert!(stage2_permissions(&d, true, false).exec);
    }

    /// Tables built by a straightforward builder: every mapped page walks to its output,
    /// every other page faults at the level where its path ends.
    mod property {
        use super::*;
        use proptest::prelude::*;
        use std::collections::HashMap;

        /// 4 KiB pages, 39-bit input, levels 1 to 3; tables allocated from 0x10_0000 upwards.
        fn build(pages: &HashMap<u64, u64>) -> HashMap<u64, u64> {
            let mut memory = HashMap::new();
            let mut next = 0x10_1000u64;
            for (&va, &pa) in pages {
                let mut table = 0x10_0000;
                for shift in [30, 21] {
                    let at = table + ((va >> shift) & 511) * 8;
                    table = match memory.get(&at) {
                        Some(d) => d & !0xfff,
                        None => {
                            let t = next;
                            next += 0x1000;
                            memory.insert(at, t | 0b11);
                            t
                        }
                    };
                }
                memory.insert(table + ((va >> 12) & 511) * 8, pa | 0b11 | (1 << 10));
            }
            memory
        }

        proptest! {
            #[test]
            fn a_walk_finds_exactly_what_was_mapped(
                pages in proptest::collection::hash_map(0u64..1 << 27, 0u64..1 << 32, 1..24),
                probe in 0u64..1 << 27,
            ) {
                let pages: HashMap<u64, u64> =
                    pages.into_iter().map(|(v, p)| (v << 12, p << 12)).collect();
                let memory = build(&pages);
                let params = Walk {
                    geometry: WalkGeometry::stage1(12, 39),
                    root: 0x10_0000,
                    output_bits: 48,
                    stage: Stage::One,
                    access_flag_faults_disabled: false,
                    hierarchical_disabled: false,
                };
                let fetch = |a| Ok::<u64, u64>(memory.get(&a).copied().unwrap_or(0));
                for (&va, &pa) in &pages {
                    let leaf = walk(&params, va | 0x123, fetch).unwrap();
                    prop_assert_eq!(leaf.output, pa | 0x123);
                    prop_assert_eq!(leaf.level, 3);
                }
                let probe = probe << 12;
                if !pages.contains_key(&probe) {
                    prop_assert!(
                        matches!(walk(&params, probe, fetch), Err(WalkFault::Translation { .. })),
                        "an unmapped page translated"
                    );
                }
            }
        }
    }
}
