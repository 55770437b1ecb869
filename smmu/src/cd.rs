//! Context descriptors (CD) and level-1 CD table descriptors, as bits.
//!
//! This module owns the layout of a CD (64 bytes) and of a level-1 CD descriptor (8 bytes):
//! one accessor per field with the architecture's name and bit range, and the decoding of the
//! enumerated fields. Whether a CD is acceptable (a guest's allegation) is `nested`'s question;
//! how one is installed is the driver's.

use static_assertions::const_assert_eq;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::field::{address_field, enum_field, flag_field, id_field, total_enum_field, uint_field};
use crate::ids::{Asid, Ipa};
use crate::translation::{AddressSize, Cacheability, Granule, Shareability};

/// A CD field holding an encoding the architecture does not define.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CdError {
    /// TG0 is 3 (reserved).
    ReservedTg0(u8),
    /// TG1 is 0 (reserved).
    ReservedTg1(u8),
    /// SH0 is 1 (reserved shareability).
    ReservedSh0(u8),
    /// SH1 is 1 (reserved shareability).
    ReservedSh1(u8),
    /// IPS is 0b111: 56 bits from SMMUv3.4 (Reserved before), for VMSAv9-128 tables only;
    /// the hypervisor's AArch64 (VMSAv8-64) CDs never need it.
    ReservedIps(u8),
}

/// A context descriptor: 8 little-endian 64-bit words, of which the architecture defines the
/// first four.
#[derive(
    Clone, Copy, PartialEq, Eq, Default, Debug, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(transparent)]
pub struct Cd([u64; 8]);

const_assert_eq!(core::mem::size_of::<Cd>(), 64);

impl Cd {
    /// An all-zero CD: V=0, so transactions using it are terminated (C_BAD_CD).
    pub const INVALID: Cd = Cd([0; 8]);

    /// The CD with these words. Public because a guest's CDs must be decoded; a value made
    /// here is data, and reaches the physical SMMU only through
    /// [`PhysicalCd::check`](crate::entry::PhysicalCd::check), the physical guard.
    #[must_use]
    pub const fn from_words(words: [u64; 8]) -> Self {
        Self(words)
    }

    /// The CD's words.
    #[must_use]
    pub const fn words(&self) -> [u64; 8] {
        self.0
    }

    // Word 0: the TCR-like translation controls, validity and the ASID.
    uint_field!(
        /// T0SZ (word 0 bits 5:0): TTB0's input range is 64 - T0SZ bits.
        T0SZ, t0sz, set_t0sz, u8, 0, 5, 0
    );
    uint_field!(
        /// TG0 raw (word 0 bits 7:6); see [`Cd::tg0`].
        TG0, tg0_raw, set_tg0_raw, u8, 0, 7, 6
    );
    total_enum_field!(
        /// IR0 (word 0 bits 9:8): inner cacheability of TTB0 walks.
        IR0, ir0, set_ir0, Cacheability, 0, 9, 8
    );
    total_enum_field!(
        /// OR0 (word 0 bits 11:10): outer cacheability of TTB0 walks.
        OR0, or0, set_or0, Cacheability, 0, 11, 10
    );
    enum_field!(
        /// SH0 (word 0 bits 13:12): shareability of TTB0 walks.
        SH0, sh0, set_sh0, Shareability, CdError, CdError::ReservedSh0, 0, 13, 12
    );
    flag_field!(
        /// EPD0 (word 0 bit 14): TTB0 walks disabled.
        EPD0, epd0, set_epd0, 0, 14
    );
    flag_field!(
        /// ENDI (word 0 bit 15): stage-1 tables are big-endian.
        ENDI, endi, set_endi, 0, 15
    );
    uint_field!(
        /// T1SZ (word 0 bits 21:16): TTB1's input range is 64 - T1SZ bits.
        T1SZ, t1sz, set_t1sz, u8, 0, 21, 16
    );
    uint_field!(
        /// TG1 raw (word 0 bits 23:22); see [`Cd::tg1`].
        TG1, tg1_raw, set_tg1_raw, u8, 0, 23, 22
    );
    total_enum_field!(
        /// IR1 (word 0 bits 25:24): inner cacheability of TTB1 walks. Not in the reference
        /// sheet; placed by symmetry with IR0 (16 bits up, as T1SZ/TG1/EPD1 are).
        IR1, ir1, set_ir1, Cacheability, 0, 25, 24
    );
    total_enum_field!(
        /// OR1 (word 0 bits 27:26): outer cacheability of TTB1 walks (by symmetry, as IR1).
        OR1, or1, set_or1, Cacheability, 0, 27, 26
    );
    enum_field!(
        /// SH1 (word 0 bits 29:28): shareability of TTB1 walks (by symmetry, as IR1).
        SH1, sh1, set_sh1, Shareability, CdError, CdError::ReservedSh1, 0, 29, 28
    );
    flag_field!(
        /// EPD1 (word 0 bit 30): TTB1 walks disabled.
        EPD1, epd1, set_epd1, 0, 30
    );
    flag_field!(
        /// V (word 0 bit 31): the CD is valid.
        V, v, set_v, 0, 31
    );
    enum_field!(
        /// IPS (word 0 bits 34:32): stage-1 output (intermediate physical) size.
        IPS, ips, set_ips, AddressSize, CdError, CdError::ReservedIps, 0, 34, 32
    );
    flag_field!(
        /// AFFD (word 0 bit 35): access flag faults disabled.
        AFFD, affd, set_affd, 0, 35
    );
    flag_field!(
        /// WXN (word 0 bit 36): writable implies execute-never.
        WXN, wxn, set_wxn, 0, 36
    );
    flag_field!(
        /// UWXN (word 0 bit 37): unprivileged writable implies privileged execute-never.
        UWXN, uwxn, set_uwxn, 0, 37
    );
    uint_field!(
        /// TBI (word 0 bits 39:38): top-byte ignore for TTB0 (bit 38) and TTB1 (bit 39).
        TBI, tbi, set_tbi, u8, 0, 39, 38
    );
    flag_field!(
        /// PAN (word 0 bit 40): privileged access never.
        PAN, pan, set_pan, 0, 40
    );
    flag_field!(
        /// AA64 (word 0 bit 41): AArch64 translation tables.
        AA64, aa64, set_aa64, 0, 41
    );
    flag_field!(
        /// HD (word 0 bit 42): hardware dirty-state update.
        HD, hd, set_hd, 0, 42
    );
    flag_field!(
        /// HA (word 0 bit 43): hardware access-flag update.
        HA, ha, set_ha, 0, 43
    );
    flag_field!(
        /// S (word 0 bit 44): stage-1 faults stall.
        S, s, set_s, 0, 44
    );
    flag_field!(
        /// R (word 0 bit 45): stage-1 faults are recorded as events.
        R, r, set_r, 0, 45
    );
    flag_field!(
        /// A (word 0 bit 46): terminated transactions abort (rather than RAZ/WI).
        A, a, set_a, 0, 46
    );
    flag_field!(
        /// ASET (word 0 bit 47): the ASID is not shared with PE broadcast TLB maintenance.
        ASET, aset, set_aset, 0, 47
    );
    id_field!(
        /// ASID (word 0 bits 63:48).
        ASID, asid, set_asid, Asid(u16), 0, 63, 48
    );

    // Words 1 and 2: the table bases. In nested translation they are IPAs.
    flag_field!(
        /// NSCFG0 (word 1 bit 0): TTB0 walks are Non-secure (Secure streams only).
        NSCFG0, nscfg0, set_nscfg0, 1, 0
    );
    flag_field!(
        /// HAD0 (word 1 bit 1): hierarchical attribute disable for TTB0.
        HAD0, had0, set_had0, 1, 1
    );
    address_field!(
        /// TTB0 (word 1 bits 51:4): the TTB0 table base (an IPA under nesting).
        TTB0, ttb0, set_ttb0, Ipa, 1, 51, 4
    );
    flag_field!(
        /// NSCFG1 (word 2 bit 0): TTB1 walks are Non-secure (Secure streams only).
        NSCFG1, nscfg1, set_nscfg1, 2, 0
    );
    flag_field!(
        /// HAD1 (word 2 bit 1): hierarchical attribute disable for TTB1.
        HAD1, had1, set_had1, 2, 1
    );
    address_field!(
        /// TTB1 (word 2 bits 51:4): the TTB1 table base (an IPA under nesting).
        TTB1, ttb1, set_ttb1, Ipa, 2, 51, 4
    );

    // Word 3: memory attribute indirection.
    uint_field!(
        /// MAIR0 (word 3 bits 31:0): MAIR_ELx bits 31:0.
        MAIR0, mair0, set_mair0, u32, 3, 31, 0
    );
    uint_field!(
        /// MAIR1 (word 3 bits 63:32): MAIR_ELx bits 63:32.
        MAIR1, mair1, set_mair1, u32, 3, 63, 32
    );

    /// TG0 (word 0 bits 7:6): TTB0's granule (0 4K, 1 64K, 2 16K).
    ///
    /// # Errors
    ///
    /// [`CdError::ReservedTg0`] for 3.
    pub const fn tg0(&self) -> Result<Granule, CdError> {
        let raw = self.tg0_raw();
        match Granule::from_tg0_encoding(raw) {
            Some(g) => Ok(g),
            None => Err(CdError::ReservedTg0(raw)),
        }
    }

    /// Sets TG0.
    pub const fn set_tg0(&mut self, granule: Granule) {
        self.set_tg0_raw(granule.tg0_encoding());
    }

    /// TG1 (word 0 bits 23:22): TTB1's granule (1 16K, 2 4K, 3 64K).
    ///
    /// # Errors
    ///
    /// [`CdError::ReservedTg1`] for 0.
    pub const fn tg1(&self) -> Result<Granule, CdError> {
        let raw = self.tg1_raw();
        match Granule::from_tg1_encoding(raw) {
            Some(g) => Ok(g),
            None => Err(CdError::ReservedTg1(raw)),
        }
    }

    /// Sets TG1.
    pub const fn set_tg1(&mut self, granule: Granule) {
        self.set_tg1_raw(granule.tg1_encoding());
    }

    /// Checks that every enumerated field the SMMU reads for this CD holds a defined encoding:
    /// IPS, and the granule and shareability of each table whose walks are enabled.
    ///
    /// # Errors
    ///
    /// The [`CdError`] of the first undefined field.
    pub const fn check_encodings(&self) -> Result<(), CdError> {
        if !self.v() {
            return Ok(());
        }
        if let Err(e) = self.ips() {
            return Err(e);
        }
        if !self.epd0() {
            if let Err(e) = self.tg0() {
                return Err(e);
            }
            if let Err(e) = self.sh0() {
                return Err(e);
            }
        }
        if !self.epd1() {
            if let Err(e) = self.tg1() {
                return Err(e);
            }
            if let Err(e) = self.sh1() {
                return Err(e);
            }
        }
        Ok(())
    }
}

/// A level-1 CD table descriptor: one 64-bit word pointing at a leaf table of CDs.
#[derive(
    Clone, Copy, PartialEq, Eq, Default, Debug, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(transparent)]
pub struct CdTableL1Descriptor([u64; 1]);

const_assert_eq!(core::mem::size_of::<CdTableL1Descriptor>(), 8);

impl CdTableL1Descriptor {
    /// A descriptor with V=0: every substream in its range is invalid.
    pub const INVALID: Self = Self([0]);

    /// The descriptor with this raw value.
    #[must_use]
    pub const fn from_raw(raw: u64) -> Self {
        Self([raw])
    }

    /// The raw value.
    #[must_use]
    pub const fn raw(&self) -> u64 {
        self.0[0]
    }

    flag_field!(
        /// V (bit 0): the leaf table pointer is valid.
        V, v, set_v, 0, 0
    );
    address_field!(
        /// L2Ptr (bits 51:12): the leaf table (an IPA under nesting).
        L2_PTR, l2_ptr, set_l2_ptr, Ipa, 0, 51, 12
    );
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::field::Field;

    #[test]
    fn each_field_lands_at_the_reference_sheet_position() {
        let cases: &[(Field, usize, u32, u32)] = &[
            (Cd::T0SZ, 0, 5, 0),
            (Cd::TG0, 0, 7, 6),
            (Cd::IR0, 0, 9, 8),
            (Cd::OR0, 0, 11, 10),
            (Cd::SH0, 0, 13, 12),
            (Cd::EPD0, 0, 14, 14),
            (Cd::ENDI, 0, 15, 15),
            (Cd::T1SZ, 0, 21, 16),
            (Cd::TG1, 0, 23, 22),
            (Cd::EPD1, 0, 30, 30),
            (Cd::V, 0, 31, 31),
            (Cd::IPS, 0, 34, 32),
            (Cd::AFFD, 0, 35, 35),
            (Cd::WXN, 0, 36, 36),
            (Cd::UWXN, 0, 37, 37),
            (Cd::TBI, 0, 39, 38),
            (Cd::PAN, 0, 40, 40),
            (Cd::AA64, 0, 41, 41),
            (Cd::HD, 0, 42, 42),
            (Cd::HA, 0, 43, 43),
            (Cd::S, 0, 44, 44),
            (Cd::R, 0, 45, 45),
            (Cd::A, 0, 46, 46),
            (Cd::ASET, 0, 47, 47),
            (Cd::ASID, 0, 63, 48),
            (Cd::NSCFG0, 1, 0, 0),
            (Cd::HAD0, 1, 1, 1),
            (Cd::TTB0, 1, 51, 4),
            (Cd::NSCFG1, 2, 0, 0),
            (Cd::HAD1, 2, 1, 1),
            (Cd::TTB1, 2, 51, 4),
            (Cd::MAIR0, 3, 31, 0),
            (Cd::MAIR1, 3, 63, 32),
            (CdTableL1Descriptor::V, 0, 0, 0),
            (CdTableL1Descriptor::L2_PTR, 0, 51, 12),
        ];
        for &(field, word, hi, lo) in cases {
            assert_eq!(
                (field.word(), field.hi(), field.lo()),
                (word, hi, lo),
                "{field:?}"
            );
        }
    }

    #[test]
    fn a_linux_style_stage1_cd_has_the_expected_words() {
        let mut cd = Cd::INVALID;
        cd.set_t0sz(16);
        cd.set_tg0(Granule::Size4K);
        cd.set_ir0(Cacheability::WriteBackWriteAllocate);
        cd.set_or0(Cacheability::WriteBackWriteAllocate);
        cd.set_sh0(Shareability::InnerShareable);
        cd.set_epd1(true);
        cd.set_v(true);
        cd.set_ips(AddressSize::Bits48);
        cd.set_aa64(true);
        cd.set_r(true);
        cd.set_a(true);
        cd.set_aset(true);
        cd.set_asid(Asid(0x1234));
        cd.set_ttb0(Ipa(0x4567_8000));
        cd.set_mair0(0x44ff);
        cd.set_mair1(0xdead_beef);
        let w = cd.words();
        assert_eq!(
            w[0],
            16 | 1 << 8
                | 1 << 10
                | 3 << 12
                | 1 << 30
                | 1 << 31
                | 5 << 32
                | 1 << 41
                | 1 << 45
                | 1 << 46
                | 1 << 47
                | 0x1234 << 48
        );
        assert_eq!(w[1], 0x4567_8000);
        assert_eq!(w[3], 0xdead_beef_0000_44ff);
        assert_eq!(cd.check_encodings(), Ok(()));
        assert_eq!(cd.asid(), Asid(0x1234));
        assert_eq!(cd.ttb0(), Ipa(0x4567_8000));
    }

    #[test]
    fn tg0_and_tg1_use_their_different_encodings() {
        let mut cd = Cd::INVALID;
        cd.set_tg0(Granule::Size64K);
        cd.set_tg1(Granule::Size64K);
        assert_eq!(cd.words()[0], 1 << 6 | 3 << 22);
        assert_eq!(cd.tg0(), Ok(Granule::Size64K));
        assert_eq!(cd.tg1(), Ok(Granule::Size64K));
    }

    #[test]
    fn reserved_encodings_are_rejected_only_where_the_smmu_reads_them() {
        let valid = 1 << 31 | 2 << 22; // V, TG1=4K.
        let cases = [
            (valid | 3 << 6, CdError::ReservedTg0(3)),
            (valid | 1 << 12, CdError::ReservedSh0(1)),
            (1 << 31, CdError::ReservedTg1(0)),
            (valid | 1 << 28, CdError::ReservedSh1(1)),
            (valid | 7 << 32, CdError::ReservedIps(7)),
        ];
        for (w0, want) in cases {
            assert_eq!(
                Cd::from_words([w0, 0, 0, 0, 0, 0, 0, 0]).check_encodings(),
                Err(want)
            );
        }
        // With both walks disabled only IPS matters.
        let both_disabled = 1 << 31 | 1 << 14 | 1 << 30 | 3 << 6 | 1 << 12;
        assert_eq!(
            Cd::from_words([both_disabled, 0, 0, 0, 0, 0, 0, 0]).check_encodings(),
            Ok(())
        );
        assert_eq!(
            Cd::from_words([3 << 6, 0, 0, 0, 0, 0, 0, 0]).check_encodings(),
            Ok(())
        );
    }

    #[test]
    fn l1_descriptor_pointer_is_4k_aligned() {
        let mut d = CdTableL1Descriptor::INVALID;
        d.set_v(true);
        d.set_l2_ptr(Ipa(0x1234_5fff));
        assert_eq!(d.raw(), 0x1234_5001);
        assert_eq!(d.l2_ptr(), Ipa(0x1234_5000));
    }
}
