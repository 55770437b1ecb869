//! Named bit ranges of descriptors, and the macros that generate their accessors.
//!
//! Each descriptor type (`Ste`, `Cd`, `Command`...) declares its fields once, with the word and
//! the bit range the architecture gives. The declaration produces both the accessor methods and
//! a [`Field`] constant (`Ste::S1_CONTEXT_PTR`), so validators elsewhere can build allowlist
//! masks from the same names instead of repeating bit positions.

use crate::bits;

/// A bit range `hi..=lo` of word `word` of a descriptor.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Field {
    word: usize,
    hi: u32,
    lo: u32,
}

impl Field {
    /// The field at bits `hi..=lo` of 64-bit word `word`.
    #[must_use]
    pub const fn new(word: usize, hi: u32, lo: u32) -> Self {
        assert!(hi < 64 && lo <= hi);
        Self { word, hi, lo }
    }

    /// Which 64-bit word of the descriptor holds the field.
    #[must_use]
    pub const fn word(self) -> usize {
        self.word
    }

    /// The highest bit of the field within its word.
    #[must_use]
    pub const fn hi(self) -> u32 {
        self.hi
    }

    /// The lowest bit of the field within its word.
    #[must_use]
    pub const fn lo(self) -> u32 {
        self.lo
    }

    /// The width of the field in bits.
    #[must_use]
    pub const fn width(self) -> u32 {
        self.hi - self.lo + 1
    }

    /// The field's bits within its word.
    #[must_use]
    pub const fn mask(self) -> u64 {
        bits::mask(self.hi, self.lo)
    }

    /// The field's value in `word`, shifted down.
    #[must_use]
    pub const fn extract(self, word: u64) -> u64 {
        bits::get(word, self.hi, self.lo)
    }

    /// `word` with the field replaced by `value` (bits of `value` that do not fit are dropped).
    #[must_use]
    pub const fn insert(self, word: u64, value: u64) -> u64 {
        bits::set(word, self.hi, self.lo, value)
    }
}

/// Declares a one-bit field: a `Field` constant, a getter and a setter.
macro_rules! flag_field {
    ($(#[$m:meta])* $konst:ident, $get:ident, $set:ident, $word:literal, $bit:literal) => {
        $(#[$m])*
        pub const $konst: $crate::field::Field = $crate::field::Field::new($word, $bit, $bit);

        $(#[$m])*
        #[must_use]
        pub const fn $get(&self) -> bool {
            $crate::bits::bit(self.0[$word], $bit)
        }

        #[doc = concat!("Sets `", stringify!($get), "` (word ", stringify!($word), " bit ", stringify!($bit), ").")]
        pub const fn $set(&mut self, value: bool) {
            self.0[$word] = $crate::bits::set_bit(self.0[$word], $bit, value);
        }
    };
}

/// Declares an unsigned-integer field: a `Field` constant, a getter returning `$ty` and a
/// setter that drops bits which do not fit.
macro_rules! uint_field {
    ($(#[$m:meta])* $konst:ident, $get:ident, $set:ident, $ty:ty, $word:literal, $hi:literal, $lo:literal) => {
        $(#[$m])*
        pub const $konst: $crate::field::Field = $crate::field::Field::new($word, $hi, $lo);

        $(#[$m])*
        #[must_use]
        #[allow(clippy::cast_possible_truncation)] // The field is no wider than the return type.
        pub const fn $get(&self) -> $ty {
            const _: () = assert!($hi - $lo < <$ty>::BITS);
            $crate::bits::get(self.0[$word], $hi, $lo) as $ty
        }

        #[doc = concat!("Sets `", stringify!($get), "` (word ", stringify!($word), " bits ", stringify!($hi), ":", stringify!($lo), "); bits of `value` that do not fit are dropped.")]
        #[allow(clippy::unnecessary_cast)] // `$ty` may already be `u64`.
        pub const fn $set(&mut self, value: $ty) {
            self.0[$word] = $crate::bits::set(self.0[$word], $hi, $lo, value as u64);
        }
    };
}

/// Declares an address field kept in place (not shifted): bits `hi..=lo` of the word are bits
/// `hi..=lo` of the address, as the architecture lays out table pointers.
macro_rules! address_field {
    ($(#[$m:meta])* $konst:ident, $get:ident, $set:ident, $ty:ident, $word:literal, $hi:literal, $lo:literal) => {
        $(#[$m])*
        pub const $konst: $crate::field::Field = $crate::field::Field::new($word, $hi, $lo);

        $(#[$m])*
        #[must_use]
        pub const fn $get(&self) -> $ty {
            $ty(self.0[$word] & $crate::bits::mask($hi, $lo))
        }

        #[doc = concat!("Sets `", stringify!($get), "` (word ", stringify!($word), " bits ", stringify!($hi), ":", stringify!($lo), "); address bits outside that range are dropped.")]
        pub const fn $set(&mut self, address: $ty) {
            let mask = $crate::bits::mask($hi, $lo);
            self.0[$word] = (self.0[$word] & !mask) | (address.0 & mask);
        }
    };
}

/// Declares a field holding an enumerated encoding: a `Field` constant, a fallible getter that
/// rejects undefined encodings with `$err(raw)`, and a setter taking the enum.
macro_rules! enum_field {
    ($(#[$m:meta])* $konst:ident, $get:ident, $set:ident, $ty:ident, $err_ty:ty, $err:path,
     $word:literal, $hi:literal, $lo:literal) => {
        $(#[$m])*
        pub const $konst: $crate::field::Field = $crate::field::Field::new($word, $hi, $lo);

        $(#[$m])*
        ///
        /// # Errors
        ///
        #[doc = concat!("[`", stringify!($err), "`] if the field holds an undefined encoding.")]
        pub const fn $get(&self) -> Result<$ty, $err_ty> {
            let raw = $crate::bits::get_u8(self.0[$word], $hi, $lo);
            match $ty::from_encoding(raw) {
                Some(value) => Ok(value),
                None => Err($err(raw)),
            }
        }

        #[doc = concat!("Sets `", stringify!($get), "` (word ", stringify!($word), " bits ", stringify!($hi), ":", stringify!($lo), ").")]
        pub const fn $set(&mut self, value: $ty) {
            self.0[$word] = $crate::bits::set(self.0[$word], $hi, $lo, value.encoding() as u64);
        }
    };
}

/// Declares a field whose every encoding is defined: a `Field` constant, an infallible typed
/// getter and a setter.
macro_rules! total_enum_field {
    ($(#[$m:meta])* $konst:ident, $get:ident, $set:ident, $ty:ident, $word:literal, $hi:literal, $lo:literal) => {
        $(#[$m])*
        pub const $konst: $crate::field::Field = $crate::field::Field::new($word, $hi, $lo);

        $(#[$m])*
        #[must_use]
        pub const fn $get(&self) -> $ty {
            $ty::from_encoding($crate::bits::get_u8(self.0[$word], $hi, $lo))
        }

        #[doc = concat!("Sets `", stringify!($get), "` (word ", stringify!($word), " bits ", stringify!($hi), ":", stringify!($lo), ").")]
        pub const fn $set(&mut self, value: $ty) {
            self.0[$word] = $crate::bits::set(self.0[$word], $hi, $lo, value.encoding() as u64);
        }
    };
}

/// Declares an identifier field (`Vmid`, `Asid`, `StreamId`...): the getter wraps the raw bits
/// in the newtype, the setter drops bits that do not fit.
macro_rules! id_field {
    ($(#[$m:meta])* $konst:ident, $get:ident, $set:ident, $ty:ident($inner:ty), $word:literal, $hi:literal, $lo:literal) => {
        $(#[$m])*
        pub const $konst: $crate::field::Field = $crate::field::Field::new($word, $hi, $lo);

        $(#[$m])*
        #[must_use]
        #[allow(clippy::cast_possible_truncation)] // The field is no wider than the newtype.
        pub const fn $get(&self) -> $ty {
            const _: () = assert!($hi - $lo < <$inner>::BITS);
            $ty($crate::bits::get(self.0[$word], $hi, $lo) as $inner)
        }

        #[doc = concat!("Sets `", stringify!($get), "` (word ", stringify!($word), " bits ", stringify!($hi), ":", stringify!($lo), "); bits that do not fit are dropped.")]
        pub const fn $set(&mut self, value: $ty) {
            self.0[$word] = $crate::bits::set(self.0[$word], $hi, $lo, value.0 as u64);
        }
    };
}

pub(crate) use {address_field, enum_field, flag_field, id_field, total_enum_field, uint_field};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_masks_and_insertion_follow_the_bit_range() {
        let f = Field::new(1, 29, 28);
        assert_eq!((f.word(), f.hi(), f.lo(), f.width()), (1, 29, 28, 2));
        assert_eq!(f.mask(), 0x3000_0000);
        assert_eq!(f.insert(0, 0b111), 0x3000_0000);
        assert_eq!(f.extract(0x2000_0000), 2);
    }
}
