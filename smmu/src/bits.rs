//! Bit-range helpers for descriptor and register fields.
//!
//! Every field accessor in this crate names its word and its bit range, `(hi, lo)` inclusive as
//! the architecture tables write them, and goes through these functions. They are `const` so
//! masks of defined bits can be built at compile time.

/// The mask of bits `hi..=lo` of a 64-bit word. `hi` must be at least `lo` and below 64.
pub(crate) const fn mask(hi: u32, lo: u32) -> u64 {
    // Shifting by 64 is not allowed, so build the mask from the top bit down.
    (u64::MAX >> (63 - hi)) & (u64::MAX << lo)
}

/// Bits `hi..=lo` of `word`, shifted down to bit 0.
pub(crate) const fn get(word: u64, hi: u32, lo: u32) -> u64 {
    (word & mask(hi, lo)) >> lo
}

/// `word` with bits `hi..=lo` replaced by `value`. Bits of `value` that do not fit the field are
/// dropped: encoders are total, and a value wider than its field is the caller's to check.
pub(crate) const fn set(word: u64, hi: u32, lo: u32, value: u64) -> u64 {
    (word & !mask(hi, lo)) | ((value << lo) & mask(hi, lo))
}

/// Bit `n` of `word`.
pub(crate) const fn bit(word: u64, n: u32) -> bool {
    word & (1 << n) != 0
}

/// `word` with bit `n` set to `value`.
pub(crate) const fn set_bit(word: u64, n: u32, value: bool) -> u64 {
    if value {
        word | (1 << n)
    } else {
        word & !(1 << n)
    }
}

/// Bits `hi..=lo` of `word` as a `u8`. The field must be at most 8 bits wide.
#[allow(clippy::cast_possible_truncation)] // The field is at most 8 bits wide.
pub(crate) const fn get_u8(word: u64, hi: u32, lo: u32) -> u8 {
    debug_assert!(hi - lo < 8);
    get(word, hi, lo) as u8
}

/// Bits `hi..=lo` of `word` as a `u16`. The field must be at most 16 bits wide.
#[allow(clippy::cast_possible_truncation)] // The field is at most 16 bits wide.
pub(crate) const fn get_u16(word: u64, hi: u32, lo: u32) -> u16 {
    debug_assert!(hi - lo < 16);
    get(word, hi, lo) as u16
}

/// Bits `hi..=lo` of `word` as a `u32`. The field must be at most 32 bits wide.
#[allow(clippy::cast_possible_truncation)] // The field is at most 32 bits wide.
pub(crate) const fn get_u32(word: u64, hi: u32, lo: u32) -> u32 {
    debug_assert!(hi - lo < 32);
    get(word, hi, lo) as u32
}

/// The low 32 bits of `value`, for 32-bit registers held in 64-bit arithmetic.
#[allow(clippy::cast_possible_truncation)] // Truncation to the low half is the point.
pub(crate) const fn low32(value: u64) -> u32 {
    value as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_cover_exactly_the_named_range() {
        assert_eq!(mask(0, 0), 1);
        assert_eq!(mask(7, 0), 0xff);
        assert_eq!(mask(63, 0), u64::MAX);
        assert_eq!(mask(63, 59), 0xf800_0000_0000_0000);
        assert_eq!(mask(51, 6), 0x000f_ffff_ffff_ffc0);
    }

    #[test]
    fn set_drops_value_bits_that_do_not_fit_and_keeps_neighbours() {
        let word = set(u64::MAX, 3, 1, 0b1_0101);
        assert_eq!(word, !0b1110 | 0b1010);
        assert_eq!(get(word, 3, 1), 0b101);
    }

    #[test]
    fn single_bits_round_trip() {
        assert!(bit(set_bit(0, 63, true), 63));
        assert_eq!(set_bit(u64::MAX, 0, false), u64::MAX - 1);
    }
}
