//! Virtual interrupts for a guest: their list-register encoding (ICH_LR<n>_EL2), and the set of
//! interrupts waiting for a free list register.
//!
//! A physical interrupt the guest owns is injected with HW = 1 and its physical INTID: the
//! guest acknowledges and deactivates the virtual interrupt itself, and its deactivation
//! deactivates the physical one, with no further trap. A purely virtual interrupt (an SGI the
//! hypervisor forwarded, the vSMMU's) has HW = 0. When every list register holds something,
//! the interrupt waits in a [`PendingSet`], which cannot overflow (one bit per INTID: an
//! interrupt is pending or not), and the maintenance interrupt (ICH_HCR_EL2.UIE) refills the
//! list registers as they empty. Nothing is dropped.

use super::INTID_LIMIT;

/// One virtual interrupt to put in a list register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub struct VirtualInterrupt {
    /// The INTID the guest sees.
    pub intid: u32,
    /// Its priority.
    pub priority: u8,
    /// The physical interrupt it stands for (HW = 1), if any.
    pub physical: Option<u32>,
}

/// ICH_LR<n>_EL2 fields.
mod lr {
    pub(super) const STATE_SHIFT: u32 = 62;
    pub(super) const PENDING: u64 = 0b01 << STATE_SHIFT;
    pub(super) const HW: u64 = 1 << 61;
    pub(super) const GROUP1: u64 = 1 << 60;
    pub(super) const PRIORITY_SHIFT: u32 = 48;
    pub(super) const PINTID_SHIFT: u32 = 32;
    pub(super) const PINTID_MASK: u64 = 0x1fff;
    pub(super) const VINTID_MASK: u64 = 0xffff_ffff;
}

impl VirtualInterrupt {
    /// The list-register value that makes it pending, in Group 1.
    #[must_use]
    pub fn encode(&self) -> u64 {
        let hardware = match self.physical {
            Some(pintid) => lr::HW | (u64::from(pintid) & lr::PINTID_MASK) << lr::PINTID_SHIFT,
            None => 0,
        };
        lr::PENDING
            | hardware
            | lr::GROUP1
            | u64::from(self.priority) << lr::PRIORITY_SHIFT
            | u64::from(self.intid) & lr::VINTID_MASK
    }
}

/// The INTID a list register holds, if it holds anything (state not invalid).
#[must_use]
pub fn held_intid(value: u64) -> Option<u32> {
    #[allow(clippy::cast_possible_truncation, reason = "masked to 32 bits")]
    (value >> lr::STATE_SHIFT != 0).then_some((value & lr::VINTID_MASK) as u32)
}

/// The first free list register among `count`, from ICH_ELRSR_EL2 (bit n set: LR n is empty).
#[must_use]
pub fn free_list_register(elrsr: u64, count: usize) -> Option<usize> {
    let usable = if count >= 64 {
        u64::MAX
    } else {
        (1 << count) - 1
    };
    let free = elrsr & usable;
    (free != 0).then(|| free.trailing_zeros() as usize)
}

/// Words of the pending bitmap.
const WORDS: usize = (INTID_LIMIT as usize).div_ceil(64);

/// Interrupts waiting for a list register on one CPU: one bit per INTID (and whether it
/// stands for a physical interrupt), so it holds every interrupt there can be at once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PendingSet {
    pending: [u64; WORDS],
    hardware: [u64; WORDS],
}

impl PendingSet {
    /// Empty.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            pending: [0; WORDS],
            hardware: [0; WORDS],
        }
    }

    /// Adds `intid` (an INTID beyond [`INTID_LIMIT`] is ignored: no guest interrupt has one).
    pub fn insert(&mut self, intid: u32, physical: bool) {
        let (word, bit) = (intid as usize / 64, intid % 64);
        if let (Some(pending), Some(hardware)) =
            (self.pending.get_mut(word), self.hardware.get_mut(word))
        {
            *pending |= 1 << bit;
            *hardware = *hardware & !(1 << bit) | u64::from(physical) << bit;
        }
    }

    /// Whether nothing waits.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pending.iter().all(|&word| word == 0)
    }

    /// Takes the waiting interrupt with the highest priority (the lowest value; the lowest
    /// INTID among equals), as `priority` gives it. Bounded: one pass over the bitmap.
    pub fn take_highest(&mut self, priority: impl Fn(u32) -> u8) -> Option<VirtualInterrupt> {
        let mut best: Option<(u8, u32)> = None;
        for (index, &word) in self.pending.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                #[allow(clippy::cast_possible_truncation, reason = "below INTID_LIMIT")]
                let intid = (index * 64) as u32 + bits.trailing_zeros();
                bits &= bits - 1;
                let value = priority(intid);
                if best.is_none_or(|(best_value, _)| value < best_value) {
                    best = Some((value, intid));
                }
            }
        }
        let (value, intid) = best?;
        let (word, bit) = (intid as usize / 64, intid % 64);
        let physical = self.hardware.get(word).is_some_and(|w| w >> bit & 1 == 1);
        if let Some(pending) = self.pending.get_mut(word) {
            *pending &= !(1 << bit);
        }
        Some(VirtualInterrupt {
            intid,
            priority: value,
            physical: physical.then_some(intid),
        })
    }
}

/// The list registers of this CPU's virtual interface.
pub trait ListRegisters {
    /// How many list registers there are (ICH_VTR_EL2.ListRegs + 1).
    fn count(&self) -> usize;
    /// ICH_ELRSR_EL2: bit n set when list register n is empty.
    fn empty(&self) -> u64;
    /// Reads list register `n`.
    fn read(&self, n: usize) -> u64;
    /// Writes list register `n`.
    fn write(&mut self, n: usize, value: u64);
    /// ICH_HCR_EL2.UIE: a maintenance interrupt when at most one list register is in use.
    fn set_underflow_interrupt(&mut self, enabled: bool);
}

/// What [`inject`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum Placed {
    /// In list register `n`.
    ListRegister(usize),
    /// Already pending or active in a list register (a virtual interrupt has one pending
    /// state, as an edge-triggered interrupt does): merged.
    Merged,
    /// Every list register was in use: it waits in the pending set, and the underflow
    /// interrupt is on.
    Waiting,
}

/// Makes `interrupt` pending for the guest on this CPU: in a free list register, or in
/// `waiting` until one frees up.
pub fn inject(
    interrupt: VirtualInterrupt,
    lrs: &mut impl ListRegisters,
    waiting: &mut PendingSet,
) -> Placed {
    let count = lrs.count();
    let empty = lrs.empty();
    for n in 0..count {
        if empty >> n & 1 == 0 && held_intid(lrs.read(n)) == Some(interrupt.intid) {
            return Placed::Merged;
        }
    }
    match free_list_register(empty, count) {
        Some(n) => {
            lrs.write(n, interrupt.encode());
            Placed::ListRegister(n)
        }
        None => {
            waiting.insert(interrupt.intid, interrupt.physical.is_some());
            lrs.set_underflow_interrupt(true);
            Placed::Waiting
        }
    }
}

/// Moves waiting interrupts into free list registers, highest priority first (on the
/// maintenance interrupt). Turns the underflow interrupt off once nothing waits. Bounded by
/// the number of list registers.
pub fn refill(
    lrs: &mut impl ListRegisters,
    waiting: &mut PendingSet,
    priority: impl Fn(u32) -> u8,
) {
    let count = lrs.count();
    for _ in 0..count {
        let Some(n) = free_list_register(lrs.empty(), count) else {
            break;
        };
        let Some(interrupt) = waiting.take_highest(&priority) else {
            break;
        };
        lrs.write(n, interrupt.encode());
    }
    lrs.set_underflow_interrupt(!waiting.is_empty());
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn a_physical_interrupt_is_encoded_with_hw_and_its_pintid() {
        let timer = VirtualInterrupt {
            intid: 27,
            priority: 0xa0,
            physical: Some(27),
        };
        assert_eq!(
            timer.encode(),
            0b01 << 62 | 1 << 61 | 1 << 60 | 0xa0 << 48 | 27 << 32 | 27
        );
        let sgi = VirtualInterrupt {
            intid: 1,
            priority: 0x80,
            physical: None,
        };
        assert_eq!(sgi.encode(), 0b01 << 62 | 1 << 60 | 0x80 << 48 | 1);
        assert_eq!(held_intid(sgi.encode()), Some(1));
        assert_eq!(held_intid(0), None);
    }

    #[test]
    fn the_first_empty_list_register_is_chosen_among_those_that_exist() {
        assert_eq!(free_list_register(0b1111, 4), Some(0));
        assert_eq!(free_list_register(0b1100, 4), Some(2));
        assert_eq!(free_list_register(0b1_0000, 4), None, "LR4 does not exist");
        assert_eq!(free_list_register(0, 16), None);
    }

    /// Four list registers; a register is empty when its state is invalid.
    struct FakeLrs {
        values: [u64; 4],
        underflow: bool,
    }

    impl ListRegisters for FakeLrs {
        fn count(&self) -> usize {
            4
        }
        fn empty(&self) -> u64 {
            (0..4).fold(0, |mask, n| {
                mask | u64::from(self.values[n] >> 62 == 0) << n
            })
        }
        fn read(&self, n: usize) -> u64 {
            self.values[n]
        }
        fn write(&mut self, n: usize, value: u64) {
            self.values[n] = value;
        }
        fn set_underflow_interrupt(&mut self, enabled: bool) {
            self.underflow = enabled;
        }
    }

    fn interrupt(intid: u32) -> VirtualInterrupt {
        VirtualInterrupt {
            intid,
            priority: 0xa0,
            physical: (intid >= 16).then_some(intid),
        }
    }

    #[test]
    fn list_register_overflow_waits_and_refills_without_losing_anything() {
        let mut lrs = FakeLrs {
            values: [0; 4],
            underflow: false,
        };
        let mut waiting = PendingSet::new();
        for (n, intid) in [33, 34, 35, 36].into_iter().enumerate() {
            assert_eq!(
                inject(interrupt(intid), &mut lrs, &mut waiting),
                Placed::ListRegister(n)
            );
        }
        assert_eq!(
            inject(interrupt(34), &mut lrs, &mut waiting),
            Placed::Merged
        );
        assert_eq!(
            inject(interrupt(40), &mut lrs, &mut waiting),
            Placed::Waiting
        );
        assert_eq!(
            inject(interrupt(41), &mut lrs, &mut waiting),
            Placed::Waiting
        );
        assert!(lrs.underflow);
        // The guest handles two; the maintenance interrupt refills them.
        lrs.values[1] = 0;
        lrs.values[3] = 0;
        refill(&mut lrs, &mut waiting, |_| 0xa0);
        assert_eq!(held_intid(lrs.values[1]), Some(40));
        assert_eq!(held_intid(lrs.values[3]), Some(41));
        assert!(!lrs.underflow);
        assert!(waiting.is_empty());
    }

    #[test]
    fn waiting_interrupts_come_out_by_priority_and_none_is_lost() {
        let mut set = PendingSet::new();
        let priority = |intid: u32| if intid == 40 { 0x10 } else { 0xa0 };
        for intid in [100, 27, 40, 1, 1019, 27] {
            set.insert(intid, intid >= 16);
        }
        set.insert(5000, true); // not an INTID: ignored
        let order: Vec<_> = std::iter::from_fn(|| set.take_highest(priority))
            .map(|v| (v.intid, v.physical))
            .collect();
        assert_eq!(
            order,
            [
                (40, Some(40)),
                (1, None),
                (27, Some(27)),
                (100, Some(100)),
                (1019, Some(1019))
            ]
        );
        assert!(set.is_empty());
    }
}
