//! Queue pointers: the PROD and CONS values of the command, event and PRI queues.
//!
//! This module owns the arithmetic of a circular queue of 2^LOG2SIZE entries as the SMMU
//! defines it: an index in bits [LOG2SIZE-1:0], a wrap bit at LOG2SIZE that toggles each time
//! the index wraps, and (event and PRI queues) an overflow flag in bit 31. Full and empty are
//! told apart by the wrap bits. It does not own queue memory or registers.

use crate::registers::MAX_QUEUE_LOG2SIZE;

/// The overflow flag (OVFLG in PROD, OVACKFLG in CONS) of the event and PRI queues.
pub const OVERFLOW_FLAG: u32 = 1 << 31;

/// Which queue a pointer belongs to; only the event and PRI queues have an overflow flag.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum QueueKind {
    /// The command queue (CMDQ_CONS.ERR must be removed before validation, see
    /// [`CmdqCons::pointer_bits`](crate::registers::CmdqCons::pointer_bits)).
    Command,
    /// The event queue.
    Event,
    /// The PRI queue.
    PageRequest,
}

impl QueueKind {
    const fn has_overflow_flag(self) -> bool {
        matches!(self, Self::Event | Self::PageRequest)
    }
}

/// Why a queue size or pointer is not acceptable.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum QueuePointerError {
    /// The log2 size is above the architectural maximum of 19.
    SizeTooLarge(u8),
    /// An index is not below the queue's size.
    IndexOutOfRange {
        /// The index given.
        index: u32,
        /// The number of entries in the queue.
        entries: u32,
    },
    /// A raw pointer has bits set above the wrap bit (other than an allowed overflow flag).
    ReservedBitsSet(u32),
    /// A producer and consumer pointer of different queue sizes were compared.
    SizeMismatch,
}

/// The size of a queue: 2^log2 entries, log2 at most 19.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct QueueSize(u8);

impl QueueSize {
    /// A queue of 2^`log2` entries.
    ///
    /// # Errors
    ///
    /// [`QueuePointerError::SizeTooLarge`] for `log2` above 19.
    pub const fn new(log2: u8) -> Result<Self, QueuePointerError> {
        if log2 > MAX_QUEUE_LOG2SIZE {
            Err(QueuePointerError::SizeTooLarge(log2))
        } else {
            Ok(Self(log2))
        }
    }

    /// log2 of the number of entries.
    #[must_use]
    pub const fn log2(self) -> u8 {
        self.0
    }

    /// The number of entries.
    #[must_use]
    pub const fn entries(self) -> u32 {
        1 << self.0
    }

    const fn index_mask(self) -> u32 {
        self.entries() - 1
    }

    const fn wrap_bit(self) -> u32 {
        1 << self.0
    }
}

/// A PROD or CONS value of a queue of known size.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct QueuePointer {
    size: QueueSize,
    index: u32,
    wrap: bool,
    overflow: bool,
}

impl QueuePointer {
    /// The pointer at `index` with the given wrap bit and no overflow flag.
    ///
    /// # Errors
    ///
    /// [`QueuePointerError::IndexOutOfRange`] if `index` is not below the size.
    pub const fn new(size: QueueSize, index: u32, wrap: bool) -> Result<Self, QueuePointerError> {
        if index >= size.entries() {
            return Err(QueuePointerError::IndexOutOfRange {
                index,
                entries: size.entries(),
            });
        }
        Ok(Self {
            size,
            index,
            wrap,
            overflow: false,
        })
    }

    /// Index 0, wrap 0: both pointers of an empty, freshly reset queue.
    #[must_use]
    pub const fn zero(size: QueueSize) -> Self {
        Self {
            size,
            index: 0,
            wrap: false,
            overflow: false,
        }
    }

    /// Validates a raw register value: every bit above the wrap bit must be zero, except the
    /// overflow flag (bit 31) of the event and PRI queues.
    ///
    /// # Errors
    ///
    /// [`QueuePointerError::ReservedBitsSet`] with the offending bits.
    pub const fn from_raw(
        size: QueueSize,
        raw: u32,
        kind: QueueKind,
    ) -> Result<Self, QueuePointerError> {
        let allowed = size.index_mask()
            | size.wrap_bit()
            | if kind.has_overflow_flag() {
                OVERFLOW_FLAG
            } else {
                0
            };
        if raw & !allowed != 0 {
            return Err(QueuePointerError::ReservedBitsSet(raw & !allowed));
        }
        Ok(Self {
            size,
            index: raw & size.index_mask(),
            wrap: raw & size.wrap_bit() != 0,
            overflow: raw & OVERFLOW_FLAG != 0,
        })
    }

    /// The register value.
    #[must_use]
    pub const fn raw(self) -> u32 {
        self.index
            | if self.wrap { self.size.wrap_bit() } else { 0 }
            | if self.overflow { OVERFLOW_FLAG } else { 0 }
    }

    /// The queue's size.
    #[must_use]
    pub const fn size(self) -> QueueSize {
        self.size
    }

    /// The entry index, below the queue's size.
    #[must_use]
    pub const fn index(self) -> u32 {
        self.index
    }

    /// The wrap bit.
    #[must_use]
    pub const fn wrap(self) -> bool {
        self.wrap
    }

    /// The overflow flag (OVFLG or OVACKFLG).
    #[must_use]
    pub const fn overflow(self) -> bool {
        self.overflow
    }

    /// A copy with the overflow flag set to `overflow`.
    #[must_use]
    pub const fn with_overflow(self, overflow: bool) -> Self {
        Self { overflow, ..self }
    }

    /// The pointer one entry on: the index wraps to 0 at the end, toggling the wrap bit. The
    /// overflow flag is kept.
    #[must_use]
    pub const fn incremented(self) -> Self {
        if self.index + 1 == self.size.entries() {
            Self {
                index: 0,
                wrap: !self.wrap,
                ..self
            }
        } else {
            Self {
                index: self.index + 1,
                ..self
            }
        }
    }

    /// (wrap, index) as one counter modulo twice the size, for distance arithmetic.
    const fn position(self) -> u32 {
        self.index | if self.wrap { self.size.wrap_bit() } else { 0 }
    }
}

/// A producer and a consumer pointer of the same queue.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct QueueState {
    prod: QueuePointer,
    cons: QueuePointer,
}

impl QueueState {
    /// Pairs `prod` and `cons`.
    ///
    /// # Errors
    ///
    /// [`QueuePointerError::SizeMismatch`] if they describe queues of different sizes.
    pub const fn new(prod: QueuePointer, cons: QueuePointer) -> Result<Self, QueuePointerError> {
        if prod.size.0 != cons.size.0 {
            return Err(QueuePointerError::SizeMismatch);
        }
        Ok(Self { prod, cons })
    }

    /// The producer pointer.
    #[must_use]
    pub const fn prod(self) -> QueuePointer {
        self.prod
    }

    /// The consumer pointer.
    #[must_use]
    pub const fn cons(self) -> QueuePointer {
        self.cons
    }

    /// Empty: same index, same wrap.
    #[must_use]
    pub const fn is_empty(self) -> bool {
        self.prod.index == self.cons.index && self.prod.wrap == self.cons.wrap
    }

    /// Full: same index, different wrap.
    #[must_use]
    pub const fn is_full(self) -> bool {
        self.prod.index == self.cons.index && self.prod.wrap != self.cons.wrap
    }

    /// The number of entries produced and not yet consumed.
    #[must_use]
    pub const fn used(self) -> u32 {
        let modulus = self.prod.size.entries() * 2;
        (self.prod.position() + modulus - self.cons.position()) % modulus
    }

    /// The number of entries that can be produced before the queue is full.
    #[must_use]
    pub const fn free(self) -> u32 {
        self.prod.size.entries() - self.used()
    }

    /// Whether the producer has signalled an overflow the consumer has not acknowledged
    /// (PROD.OVFLG != CONS.OVACKFLG).
    #[must_use]
    pub const fn overflow_pending(self) -> bool {
        self.prod.overflow != self.cons.overflow
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn size(log2: u8) -> QueueSize {
        QueueSize::new(log2).unwrap()
    }

    #[test]
    fn sizes_above_nineteen_are_rejected() {
        assert_eq!(QueueSize::new(19).map(QueueSize::entries), Ok(1 << 19));
        assert_eq!(QueueSize::new(20), Err(QueuePointerError::SizeTooLarge(20)));
    }

    #[test]
    fn incrementing_the_last_index_wraps_to_zero_and_toggles_wrap() {
        let s = size(2);
        let mut p = QueuePointer::zero(s);
        let mut raws = [0; 9];
        for raw in &mut raws {
            *raw = p.raw();
            p = p.incremented();
        }
        assert_eq!(raws, [0, 1, 2, 3, 4, 4 | 1, 4 | 2, 4 | 3, 0]);
        assert!(
            QueuePointer::zero(s)
                .with_overflow(true)
                .incremented()
                .overflow()
        );
    }

    #[test]
    fn full_and_empty_are_told_apart_by_wrap() {
        let s = size(3);
        let cons = QueuePointer::new(s, 5, false).unwrap();
        let empty = QueueState::new(cons, cons).unwrap();
        assert!(empty.is_empty() && !empty.is_full());
        assert_eq!((empty.used(), empty.free()), (0, 8));
        let full = QueueState::new(QueuePointer::new(s, 5, true).unwrap(), cons).unwrap();
        assert!(full.is_full() && !full.is_empty());
        assert_eq!((full.used(), full.free()), (8, 0));
        let wrapped = QueueState::new(QueuePointer::new(s, 2, true).unwrap(), cons).unwrap();
        assert_eq!(wrapped.used(), 5);
    }

    #[test]
    fn raw_values_are_validated_against_the_size() {
        let s = size(4);
        assert_eq!(
            QueuePointer::from_raw(s, 0x1f, QueueKind::Command).map(|p| (p.index(), p.wrap())),
            Ok((15, true))
        );
        assert_eq!(
            QueuePointer::from_raw(s, 0x20, QueueKind::Event),
            Err(QueuePointerError::ReservedBitsSet(0x20))
        );
        assert_eq!(
            QueuePointer::from_raw(s, OVERFLOW_FLAG | 3, QueueKind::Command),
            Err(QueuePointerError::ReservedBitsSet(OVERFLOW_FLAG))
        );
        for kind in [QueueKind::Event, QueueKind::PageRequest] {
            let p = QueuePointer::from_raw(s, OVERFLOW_FLAG | 3, kind).unwrap();
            assert!(p.overflow());
            assert_eq!(p.raw(), OVERFLOW_FLAG | 3);
        }
        assert_eq!(
            QueuePointer::new(s, 16, false),
            Err(QueuePointerError::IndexOutOfRange {
                index: 16,
                entries: 16
            })
        );
    }

    #[test]
    fn pointers_of_different_queues_cannot_be_paired() {
        let r = QueueState::new(QueuePointer::zero(size(2)), QueuePointer::zero(size(3)));
        assert_eq!(r, Err(QueuePointerError::SizeMismatch));
    }

    #[test]
    fn overflow_is_pending_until_acknowledged() {
        let s = size(1);
        let prod = QueuePointer::zero(s).with_overflow(true);
        assert!(
            QueueState::new(prod, QueuePointer::zero(s))
                .unwrap()
                .overflow_pending()
        );
        assert!(
            !QueueState::new(prod, QueuePointer::zero(s).with_overflow(true))
                .unwrap()
                .overflow_pending()
        );
    }

    proptest! {
        #[test]
        fn raw_round_trips(log2 in 0u8..=19, raw in any::<u32>(), ovf in any::<bool>()) {
            let s = size(log2);
            let raw = raw & ((s.entries() << 1) - 1) | if ovf { OVERFLOW_FLAG } else { 0 };
            let p = QueuePointer::from_raw(s, raw, QueueKind::Event).unwrap();
            prop_assert_eq!(p.raw(), raw);
            prop_assert_eq!(QueuePointer::from_raw(s, p.raw(), QueueKind::Event), Ok(p));
        }

        #[test]
        fn producing_n_entries_uses_n_slots(log2 in 0u8..=10, start in any::<u32>(), n in 0u32..=1024) {
            let s = size(log2);
            let n = n % (s.entries() + 1);
            let start = start & ((s.entries() << 1) - 1);
            let cons = QueuePointer::from_raw(s, start, QueueKind::Command).unwrap();
            let mut prod = cons;
            for _ in 0..n {
                prop_assert!(!QueueState::new(prod, cons).unwrap().is_full());
                prod = prod.incremented();
            }
            let state = QueueState::new(prod, cons).unwrap();
            prop_assert_eq!(state.used(), n);
            prop_assert_eq!(state.is_full(), n == s.entries());
            prop_assert_eq!(state.is_empty(), n == 0);
        }

        #[test]
        fn incrementing_twice_the_size_returns_to_the_start(log2 in 0u8..=8, raw in any::<u32>()) {
            let s = size(log2);
            let start = QueuePointer::from_raw(s, raw & ((s.entries() << 1) - 1), QueueKind::Command).unwrap();
            let mut p = start;
            for _ in 0..2 * s.entries() {
                p = p.incremented();
            }
            prop_assert_eq!(p, start);
        }
    }
}
