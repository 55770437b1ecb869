//! Encodings shared by several SMMU structures: address sizes, translation granules,
//! shareability and cacheability.
//!
//! The same 2- and 3-bit encodings appear in the ID registers (IDR5.OAS), the STE (S2PS, S2TG,
//! S1CIR...) and the CD (IPS, TG0, IR0...). They are decoded here once; each structure's module
//! maps an undefined encoding to its own error variant.

/// A physical or intermediate address size, as IDR5.OAS, CD.IPS and STE.S2PS encode it, up to
/// the 52 bits a VMSAv8-64 descriptor can hold.
///
/// The three fields also define 0b111 as 56 bits from SMMUv3.4 (IHI 0070 5.2 S2PS, 5.4 IPS,
/// 6.3.6 OAS; Reserved before), reachable only with VMSAv9-128 descriptors, which this crate
/// does not make: it is not a value of this type. IDR5.OAS 0b111 decodes to
/// [`MAX_USABLE_OAS`](crate::registers::MAX_USABLE_OAS); in an STE or CD the entry guards
/// refuse it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum AddressSize {
    /// 32 bits, 4 GiB (encoding 0).
    Bits32,
    /// 36 bits, 64 GiB (encoding 1).
    Bits36,
    /// 40 bits, 1 TiB (encoding 2).
    Bits40,
    /// 42 bits, 4 TiB (encoding 3).
    Bits42,
    /// 44 bits, 16 TiB (encoding 4).
    Bits44,
    /// 48 bits, 256 TiB (encoding 5).
    Bits48,
    /// 52 bits, 4 PiB (encoding 6, SMMUv3.1 and later).
    Bits52,
}

impl AddressSize {
    /// Every defined size, in encoding order.
    pub const ALL: [AddressSize; 7] = [
        Self::Bits32,
        Self::Bits36,
        Self::Bits40,
        Self::Bits42,
        Self::Bits44,
        Self::Bits48,
        Self::Bits52,
    ];

    /// Decodes the 3-bit field; `None` for 0b111 (56 bits, see the type's docs).
    #[must_use]
    pub const fn from_encoding(encoding: u8) -> Option<Self> {
        match encoding {
            0 => Some(Self::Bits32),
            1 => Some(Self::Bits36),
            2 => Some(Self::Bits40),
            3 => Some(Self::Bits42),
            4 => Some(Self::Bits44),
            5 => Some(Self::Bits48),
            6 => Some(Self::Bits52),
            _ => None,
        }
    }

    /// The 3-bit field value.
    #[must_use]
    pub const fn encoding(self) -> u8 {
        self as u8
    }

    /// The size in bits.
    #[must_use]
    pub const fn bits(self) -> u8 {
        match self {
            Self::Bits32 => 32,
            Self::Bits36 => 36,
            Self::Bits40 => 40,
            Self::Bits42 => 42,
            Self::Bits44 => 44,
            Self::Bits48 => 48,
            Self::Bits52 => 52,
        }
    }
}

/// A translation granule as CD.TG0 and STE.S2TG encode it (the TCR_ELx.TG0 / VTCR_EL2.TG0
/// encoding: 0 is 4 KiB, 1 is 64 KiB, 2 is 16 KiB, 3 reserved).
///
/// CD.TG1 uses a different encoding (TCR_ELx.TG1); see [`Granule::from_tg1_encoding`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Granule {
    /// 4 KiB pages.
    Size4K,
    /// 16 KiB pages.
    Size16K,
    /// 64 KiB pages.
    Size64K,
}

impl Granule {
    /// Decodes a TG0-style field: 0 4K, 1 64K, 2 16K; 3 is reserved.
    #[must_use]
    pub const fn from_tg0_encoding(encoding: u8) -> Option<Self> {
        match encoding {
            0 => Some(Self::Size4K),
            1 => Some(Self::Size64K),
            2 => Some(Self::Size16K),
            _ => None,
        }
    }

    /// The TG0-style field value.
    #[must_use]
    pub const fn tg0_encoding(self) -> u8 {
        match self {
            Self::Size4K => 0,
            Self::Size64K => 1,
            Self::Size16K => 2,
        }
    }

    /// Decodes a TG1-style field: 1 16K, 2 4K, 3 64K; 0 is reserved.
    #[must_use]
    pub const fn from_tg1_encoding(encoding: u8) -> Option<Self> {
        match encoding {
            1 => Some(Self::Size16K),
            2 => Some(Self::Size4K),
            3 => Some(Self::Size64K),
            _ => None,
        }
    }

    /// The TG1-style field value.
    #[must_use]
    pub const fn tg1_encoding(self) -> u8 {
        match self {
            Self::Size16K => 1,
            Self::Size4K => 2,
            Self::Size64K => 3,
        }
    }

    /// log2 of the page size in bytes.
    #[must_use]
    pub const fn page_shift(self) -> u32 {
        match self {
            Self::Size4K => 12,
            Self::Size16K => 14,
            Self::Size64K => 16,
        }
    }
}

/// Shareability of a table walk or an access (the SH fields: 0 non-shareable, 2 outer, 3 inner;
/// 1 is reserved).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Shareability {
    /// Non-shareable (0).
    NonShareable,
    /// Outer shareable (2).
    OuterShareable,
    /// Inner shareable (3).
    InnerShareable,
}

impl Shareability {
    /// Decodes the 2-bit field; 1 is reserved.
    #[must_use]
    pub const fn from_encoding(encoding: u8) -> Option<Self> {
        match encoding {
            0 => Some(Self::NonShareable),
            2 => Some(Self::OuterShareable),
            3 => Some(Self::InnerShareable),
            _ => None,
        }
    }

    /// The 2-bit field value.
    #[must_use]
    pub const fn encoding(self) -> u8 {
        match self {
            Self::NonShareable => 0,
            Self::OuterShareable => 2,
            Self::InnerShareable => 3,
        }
    }
}

/// Cacheability of table walks (the IRGN/ORGN-style fields: CD.IR0/OR0, STE.S1CIR/S1COR,
/// STE.S2IR0/S2OR0). All four encodings are defined.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Cacheability {
    /// Non-cacheable (0).
    NonCacheable,
    /// Write-back, read-allocate, write-allocate (1).
    WriteBackWriteAllocate,
    /// Write-through, read-allocate (2).
    WriteThrough,
    /// Write-back, read-allocate, no write-allocate (3).
    WriteBackNoWriteAllocate,
}

impl Cacheability {
    /// Decodes the 2-bit field (only the low two bits of `encoding` are used).
    #[must_use]
    pub const fn from_encoding(encoding: u8) -> Self {
        match encoding & 3 {
            0 => Self::NonCacheable,
            1 => Self::WriteBackWriteAllocate,
            2 => Self::WriteThrough,
            _ => Self::WriteBackNoWriteAllocate,
        }
    }

    /// The 2-bit field value.
    #[must_use]
    pub const fn encoding(self) -> u8 {
        self as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_size_encodings_follow_the_architecture_table() {
        let expected = [
            (0, 32),
            (1, 36),
            (2, 40),
            (3, 42),
            (4, 44),
            (5, 48),
            (6, 52),
        ];
        for (encoding, bits) in expected {
            let size = AddressSize::from_encoding(encoding).map(AddressSize::bits);
            assert_eq!(size, Some(bits), "encoding {encoding}");
        }
        assert_eq!(AddressSize::from_encoding(7), None);
        for size in AddressSize::ALL {
            assert_eq!(AddressSize::from_encoding(size.encoding()), Some(size));
        }
    }

    #[test]
    fn tg0_and_tg1_encodings_differ_and_round_trip() {
        assert_eq!(Granule::from_tg0_encoding(0), Some(Granule::Size4K));
        assert_eq!(Granule::from_tg0_encoding(1), Some(Granule::Size64K));
        assert_eq!(Granule::from_tg0_encoding(2), Some(Granule::Size16K));
        assert_eq!(Granule::from_tg0_encoding(3), None);
        assert_eq!(Granule::from_tg1_encoding(0), None);
        assert_eq!(Granule::from_tg1_encoding(1), Some(Granule::Size16K));
        assert_eq!(Granule::from_tg1_encoding(2), Some(Granule::Size4K));
        assert_eq!(Granule::from_tg1_encoding(3), Some(Granule::Size64K));
        for g in [Granule::Size4K, Granule::Size16K, Granule::Size64K] {
            assert_eq!(Granule::from_tg0_encoding(g.tg0_encoding()), Some(g));
            assert_eq!(Granule::from_tg1_encoding(g.tg1_encoding()), Some(g));
        }
    }

    #[test]
    fn shareability_one_is_reserved() {
        assert_eq!(Shareability::from_encoding(1), None);
        for s in [
            Shareability::NonShareable,
            Shareability::OuterShareable,
            Shareability::InnerShareable,
        ] {
            assert_eq!(Shareability::from_encoding(s.encoding()), Some(s));
        }
    }

    #[test]
    fn every_cacheability_encoding_round_trips() {
        for e in 0..4 {
            assert_eq!(Cacheability::from_encoding(e).encoding(), e);
        }
    }
}
