//! Physical CPUs and the EL2 stacks they run on.
//!
//! Each CPU that runs a vCPU owns one stack slot, claimed by its MPIDR: slot 0 is the boot
//! CPU's, the others go to CPUs started by the guest's PSCI `CPU_ON`. A slot is never given
//! back once its CPU started: a CPU that turned itself off may still be on its stack until
//! firmware powers it down, so reusing the stack could corrupt a CPU that is still executing.
//! The cost is that a vCPU turned off (CPU_OFF) cannot be turned on again.
//!
//! The claiming is plain logic over atomics and tested on the host; the stacks themselves and
//! the start of a CPU are in the target-only part at the bottom.

use core::sync::atomic::{AtomicU64, Ordering};

/// The most CPUs the hypervisor runs a vCPU on.
pub const MAX_CPUS: usize = 8;

/// The affinity fields of an MPIDR (Aff3, Aff2, Aff1, Aff0).
pub const AFFINITY_MASK: u64 = 0xff_00ff_ffff;

/// Why a CPU cannot have a stack slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum SlotRefusal {
    /// The target already has one: it runs (or ran) a vCPU. Its stack is live and must not be
    /// written, so the call is answered ALREADY_ON without asking firmware.
    AlreadyOn,
    /// Every slot is taken.
    NoFreeSlot,
}

/// Which CPU owns each stack slot.
#[derive(Debug)]
pub struct SlotTable {
    /// MPIDR affinity + 1 of the owner, 0 when free.
    owners: [AtomicU64; MAX_CPUS],
}

impl Default for SlotTable {
    fn default() -> Self {
        Self::new()
    }
}

impl SlotTable {
    /// Every slot free.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            owners: [const { AtomicU64::new(0) }; MAX_CPUS],
        }
    }

    /// Claims slot 0 for the boot CPU.
    pub fn claim_boot(&self, mpidr: u64) {
        let _ = self.owners[0].compare_exchange(
            0,
            (mpidr & AFFINITY_MASK) + 1,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Claims a free slot for the CPU `mpidr`, which must not own one yet.
    pub fn claim(&self, mpidr: u64) -> Result<usize, SlotRefusal> {
        let key = (mpidr & AFFINITY_MASK) + 1;
        if self
            .owners
            .iter()
            .any(|owner| owner.load(Ordering::Acquire) == key)
        {
            return Err(SlotRefusal::AlreadyOn);
        }
        self.owners
            .iter()
            .position(|owner| {
                owner
                    .compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            })
            .ok_or(SlotRefusal::NoFreeSlot)
    }

    /// The CPUs holding a slot (those that run, or ran, a vCPU), by MPIDR affinity.
    pub fn cpus(&self) -> impl Iterator<Item = u64> + '_ {
        self.owners
            .iter()
            .map(|owner| owner.load(Ordering::Acquire))
            .filter(|&key| key != 0)
            .map(|key| key - 1)
    }

    /// Gives back a slot whose CPU never started (nothing ever ran on its stack).
    pub fn release_unstarted(&self, slot: usize) {
        if let Some(owner) = self.owners.get(slot) {
            owner.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_gets_one_slot_and_a_second_claim_is_already_on() {
        let table = SlotTable::new();
        table.claim_boot(0x8000_0000);
        assert_eq!(table.claim(0), Err(SlotRefusal::AlreadyOn), "the boot CPU");
        assert_eq!(table.claim(1), Ok(1));
        assert_eq!(table.claim(1), Err(SlotRefusal::AlreadyOn));
        // Bits outside the affinity fields (MT, U, RES1) do not make another CPU.
        assert_eq!(
            table.claim(1 | 1 << 31 | 1 << 30),
            Err(SlotRefusal::AlreadyOn)
        );
    }

    #[test]
    fn slots_run_out_and_only_unstarted_ones_come_back() {
        let table = SlotTable::new();
        table.claim_boot(0);
        for cpu in 1..MAX_CPUS as u64 {
            assert!(table.claim(cpu).is_ok());
        }
        assert_eq!(table.claim(0x100), Err(SlotRefusal::NoFreeSlot));
        table.release_unstarted(3);
        assert_eq!(table.claim(0x100), Ok(3));
        assert_eq!(table.cpus().count(), MAX_CPUS);
        assert!(table.cpus().any(|cpu| cpu == 0x100));
    }
}

/// Starting CPUs on their EL2 stacks (target only).
#[cfg(target_os = "none")]
pub mod start {
    use super::{MAX_CPUS, SlotTable};
    use crate::arch::{el2, sysreg, vectors};
    use core::arch::asm;
    use core::sync::atomic::{AtomicU64, Ordering};

    /// The trap path's deepest frames are the vSMMU's (PASID release and PRI answers take
    /// 5 to 8 KiB each): 64 KiB leaves a wide margin, and the guard below catches the rest.
    const SECONDARY_STACK_PAGES: usize = 16;

    /// A stack with a page below it that the EL2 map leaves unmapped: an overflow faults.
    /// (`aarch64-rt` keeps the entry closure at the bottom of the stack itself, so the guard
    /// cannot be the stack's own lowest page.)
    #[repr(C, align(4096))]
    struct GuardedStack {
        guard: [u8; 4096],
        stack: aarch64_rt::Stack<SECONDARY_STACK_PAGES>,
    }

    /// EL2 stacks for secondary CPUs, one per slot (slot 0, the boot CPU's, is unused).
    struct SecondaryStacks(core::cell::UnsafeCell<[GuardedStack; MAX_CPUS]>);
    // SAFETY: each stack is used by at most one CPU: slots are claimed through a `SlotTable`.
    unsafe impl Sync for SecondaryStacks {}
    static SECONDARY_STACKS: SecondaryStacks = SecondaryStacks(core::cell::UnsafeCell::new(
        [const {
            GuardedStack {
                guard: [0; 4096],
                stack: aarch64_rt::Stack::new(),
            }
        }; MAX_CPUS],
    ));

    /// The root of the EL2 map, for secondary CPUs to switch to.
    static EL2_ROOT: AtomicU64 = AtomicU64::new(0);

    /// The guard page below each secondary CPU's stack, left unmapped in the EL2 map so that
    /// an overflow faults.
    pub fn stack_guards() -> impl Iterator<Item = smmu::PhysRange> {
        let base = SECONDARY_STACKS.0.get() as u64;
        let size = core::mem::size_of::<GuardedStack>() as u64;
        (1..MAX_CPUS as u64).map(move |slot| smmu::PhysRange::new(base + slot * size, 4096))
    }

    /// Records the EL2 map's root for secondary CPUs.
    pub fn set_el2_root(root: u64) {
        EL2_ROOT.store(root, Ordering::Release);
    }

    /// Claims slot 0 for the boot CPU and records its index.
    pub fn claim_boot_cpu(slots: &SlotTable) {
        slots.claim_boot(sysreg::cpu_affinity());
        el2::set_cpu_index(0);
    }

    /// Starts CPU `target` on the stack of `slot`, which the caller claimed for it and which no
    /// CPU ever ran on; it enters the guest at `entry` with `context` in x0. A PSCI error code
    /// if firmware refused.
    pub fn start_cpu(slot: usize, target: u64, entry: u64, context: u64) -> Result<(), i64> {
        if slot == 0 || slot >= MAX_CPUS {
            return Err(crate::psci::INVALID_PARAMETERS as i64);
        }
        // SAFETY: the slot is claimed for `target` alone and no CPU has ever run on it (slots
        // are never reused once started); `start_core` writes the entry closure into it before
        // the CPU runs, and the CPU then owns it.
        let stack = unsafe { &raw mut (*(*SECONDARY_STACKS.0.get()).as_mut_ptr().add(slot)).stack };
        let stack_top = stack.wrapping_add(1) as u64;
        // SAFETY: the stack is reserved for this CPU (see above), and it lies in the image's
        // writable region, mapped identically by the initial and the EL2 page tables.
        let result = unsafe {
            aarch64_rt::start_core::<smccc::Smc, _, SECONDARY_STACK_PAGES>(
                target,
                stack,
                move || secondary_main(slot, entry, context, stack_top),
            )
        };
        result.map_err(i64::from)
    }

    /// A secondary CPU, coming from `aarch64-rt`'s entry with its initial page table.
    fn secondary_main(slot: usize, entry: u64, context: u64, stack_top: u64) {
        let root = EL2_ROOT.load(Ordering::Acquire);
        // SAFETY: `root` is the EL2 map the boot CPU built and activated: an identity map of
        // everything the hypervisor uses, with the initial map's memory types.
        unsafe {
            asm!("msr ttbr0_el2, {}", "isb", in(reg) root, options(nostack, preserves_flags));
        }
        sysreg::invalidate_el2_tlb();
        vectors::install(vectors::Table::Hypervisor);
        el2::set_cpu_index(slot);
        crate::vm::configure_cpu();
        el2::enter_guest(
            entry,
            crate::trap::inject::SPSR_EL1H_MASKED,
            context,
            stack_top,
        );
    }
}
