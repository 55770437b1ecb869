//! Newtypes for the kinds of address and identifier the SMMU deals in.
//!
//! Each kind of address or ID has its own type so that a stream ID can never be passed where a
//! substream ID is expected, nor an IPA where a physical address is. Conversions between kinds
//! are explicit functions in the modules that own them (stream-ID mapping, stage-2 translation).

use core::fmt;

macro_rules! id_newtype {
    ($(#[$meta:meta])* $name:ident($inner:ty), $fmt:literal, $defmt:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(pub $inner);

        impl $name {
            /// The raw value.
            #[must_use]
            pub const fn get(self) -> $inner {
                self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "(", $fmt, ")"), self.0)
            }
        }

        #[cfg(feature = "defmt")]
        impl defmt::Format for $name {
            fn format(&self, f: defmt::Formatter<'_>) {
                defmt::write!(f, $defmt, self.0)
            }
        }
    };
}

id_newtype!(
    /// A physical address, as the SMMU and the CPUs see memory after all translation.
    PhysAddr(u64), "{:#x}", "PhysAddr({=u64:#x})"
);
id_newtype!(
    /// An intermediate physical address: a guest's idea of a physical address, the input of
    /// stage 2.
    Ipa(u64), "{:#x}", "Ipa({=u64:#x})"
);
id_newtype!(
    /// An I/O virtual address: what a device puts on the bus, the input of stage 1 (or of
    /// stage 2 when stage 1 is bypassed).
    Iova(u64), "{:#x}", "Iova({=u64:#x})"
);
id_newtype!(
    /// A physical stream ID: how the SMMU names the device that issued a transaction.
    StreamId(u32), "{:#x}", "StreamId({=u32:#x})"
);
id_newtype!(
    /// A stream ID as a guest names it on its virtual SMMU.
    VirtualStreamId(u32), "{:#x}", "VirtualStreamId({=u32:#x})"
);
id_newtype!(
    /// A substream ID (a PCIe PASID): selects a context descriptor within a stream.
    SubstreamId(u32), "{:#x}", "SubstreamId({=u32:#x})"
);
id_newtype!(
    /// A virtual machine identifier, tagging stage-2 TLB entries.
    Vmid(u16), "{:#x}", "Vmid({=u16:#x})"
);
id_newtype!(
    /// An address-space identifier, tagging stage-1 TLB entries.
    Asid(u16), "{:#x}", "Asid({=u16:#x})"
);

impl PhysAddr {
    /// The address `bytes` further on, or `None` if that overflows.
    #[must_use]
    pub const fn checked_add(self, bytes: u64) -> Option<Self> {
        match self.0.checked_add(bytes) {
            Some(a) => Some(Self(a)),
            None => None,
        }
    }

    /// Whether the address is a multiple of `align`, which must be a power of two.
    #[must_use]
    pub const fn is_aligned(self, align: u64) -> bool {
        align.is_power_of_two() && self.0 & (align - 1) == 0
    }
}

/// A contiguous range of physical addresses, `[base, base + size)`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PhysRange {
    /// The first address of the range.
    pub base: PhysAddr,
    /// The length of the range in bytes.
    pub size: u64,
}

impl PhysRange {
    /// The range `[base, base + size)`.
    #[must_use]
    pub const fn new(base: u64, size: u64) -> Self {
        Self {
            base: PhysAddr(base),
            size,
        }
    }

    /// One past the last address, saturating at the top of the address space.
    #[must_use]
    pub const fn end(&self) -> u64 {
        self.base.0.saturating_add(self.size)
    }

    /// Whether `addr` lies inside the range.
    #[must_use]
    pub const fn contains(&self, addr: PhysAddr) -> bool {
        addr.0 >= self.base.0 && addr.0 < self.end()
    }

    /// Whether the two ranges share at least one address.
    #[must_use]
    pub const fn overlaps(&self, other: &PhysRange) -> bool {
        self.size != 0 && other.size != 0 && self.base.0 < other.end() && other.base.0 < self.end()
    }
}

impl Ipa {
    /// The address `bytes` further on, or `None` if that overflows.
    #[must_use]
    pub const fn checked_add(self, bytes: u64) -> Option<Self> {
        match self.0.checked_add(bytes) {
            Some(a) => Some(Self(a)),
            None => None,
        }
    }

    /// Whether the address is a multiple of `align`, which must be a power of two.
    #[must_use]
    pub const fn is_aligned(self, align: u64) -> bool {
        align.is_power_of_two() && self.0 & (align - 1) == 0
    }
}

/// A contiguous range of intermediate physical addresses, `[base, base + size)`: a VM's RAM, a
/// window of its address space, or a structure a guest claims to have placed there.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct IpaRange {
    /// The first address of the range.
    pub base: Ipa,
    /// The length of the range in bytes.
    pub size: u64,
}

impl IpaRange {
    /// The range `[base, base + size)`.
    #[must_use]
    pub const fn new(base: Ipa, size: u64) -> Self {
        Self { base, size }
    }

    /// One past the last address, or `None` if the range wraps past the top of the address
    /// space (a range a guest alleged, never one that can exist).
    #[must_use]
    pub const fn checked_end(&self) -> Option<u64> {
        self.base.0.checked_add(self.size)
    }

    /// Whether `addr` lies inside the range.
    #[must_use]
    pub const fn contains(&self, addr: Ipa) -> bool {
        match self.checked_end() {
            Some(end) => addr.0 >= self.base.0 && addr.0 < end,
            None => addr.0 >= self.base.0,
        }
    }

    /// Whether every address of `inner` lies inside this range. An empty `inner` is covered
    /// only if its base is inside (or at the end of) the range; a wrapping `inner` never is.
    #[must_use]
    pub const fn covers(&self, inner: &IpaRange) -> bool {
        let (Some(end), Some(inner_end)) = (self.checked_end(), inner.checked_end()) else {
            return false;
        };
        inner.base.0 >= self.base.0 && inner_end <= end
    }

    /// Whether the two ranges share at least one address.
    #[must_use]
    pub const fn overlaps(&self, other: &IpaRange) -> bool {
        let end = match self.checked_end() {
            Some(end) => end,
            None => u64::MAX,
        };
        let other_end = match other.checked_end() {
            Some(end) => end,
            None => u64::MAX,
        };
        self.size != 0 && other.size != 0 && self.base.0 < other_end && other.base.0 < end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_overlap_only_when_they_share_an_address() {
        let a = PhysRange::new(0x1000, 0x1000);
        assert!(a.overlaps(&PhysRange::new(0x1fff, 1)));
        assert!(!a.overlaps(&PhysRange::new(0x2000, 0x1000)));
        assert!(!a.overlaps(&PhysRange::new(0x0, 0x1000)));
        assert!(!a.overlaps(&PhysRange::new(0x1800, 0)));
    }

    #[test]
    fn ipa_ranges_cover_only_what_lies_wholly_inside_and_never_wrap() {
        let ram = IpaRange::new(Ipa(0x4000_0000), 0x1000_0000);
        assert!(ram.covers(&IpaRange::new(Ipa(0x4000_0000), 0x1000_0000)));
        assert!(ram.covers(&IpaRange::new(Ipa(0x4fff_fff8), 8)));
        assert!(!ram.covers(&IpaRange::new(Ipa(0x4fff_fff8), 9)));
        assert!(!ram.covers(&IpaRange::new(Ipa(0x3fff_fff8), 16)));
        assert!(!ram.covers(&IpaRange::new(Ipa(u64::MAX - 7), 16)));
        assert!(!IpaRange::new(Ipa(u64::MAX - 7), 16).covers(&IpaRange::new(Ipa(u64::MAX), 1)));
        assert!(ram.contains(Ipa(0x4fff_ffff)) && !ram.contains(Ipa(0x5000_0000)));
        assert!(ram.overlaps(&IpaRange::new(Ipa(0x4fff_ffff), 2)));
        assert!(!ram.overlaps(&IpaRange::new(Ipa(0x5000_0000), 0x1000)));
        assert!(
            IpaRange::new(Ipa(u64::MAX - 7), 16).overlaps(&IpaRange::new(Ipa(u64::MAX - 1), 1))
        );
    }

    #[test]
    fn range_end_saturates_instead_of_wrapping() {
        assert_eq!(PhysRange::new(u64::MAX - 1, 16).end(), u64::MAX);
    }
}
