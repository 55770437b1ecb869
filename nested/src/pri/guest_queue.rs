//! The guest's PRI queue: entries written into guest RAM at PRIQ_PROD, as an SMMU writes them
//! (IHI 0070 chapter 8).
//!
//! The queue is writable when PRIQEN = 1, SMMUEN = 1 and no PRIQ_ABT_ERR is active. Unlike the
//! event queue, an active overflow condition (PROD.OVFLG differing from CONS.OVACKFLG)
//! inhibits every write; a request for a full queue enters it. A write outside RAM is a
//! synchronous abort: PROD does not move and GERROR.PRIQ_ABT_ERR becomes active. After a
//! write the `priq` interrupt (and MSI) is signalled when PRIQ_IRQEN is set, for every entry
//! or, with PRIQ_IRQ_CFG2.LO, for Last ones only. What the caller answers for an entry that
//! was not written is [`crate::pri::intake`]'s concern.

use smmu::Ipa;
use smmu::driver::DmaMemory;
use smmu::page_request::PageRequest;
use smmu::queue::{QueueKind, QueueState};

use crate::VirtualSmmu;
use crate::interfaces::guest_memory::{GuestMemory, write_words};
use crate::interfaces::interrupts::{InterruptSink, VirtualInterrupt};
use crate::interfaces::physical::PhysicalSmmu;
use crate::registers::{MSI_PRIQ_ABT_ERR, PRIQ_ABT_ERR, QueueGeometry};

/// Bytes per PRI queue entry.
const PRI_BYTES: u64 = 16;
/// PRIQ_IRQ_CFG2.LO.
const LAST_ONLY: u32 = 1 << 31;

/// Why an entry was not written into the guest's PRI queue.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub(crate) enum GuestPriQueueError {
    /// PRIQEN = 0 or SMMUEN = 0.
    Disabled,
    /// PRIQ_ABT_ERR is active, or this write aborted (and activated it).
    Aborted,
    /// Full, or in an overflow condition.
    Overflow,
}

impl<G, P, I, C, const STREAMS: usize> VirtualSmmu<G, P, I, C, STREAMS>
where
    G: GuestMemory,
    P: PhysicalSmmu,
    I: InterruptSink,
    C: DmaMemory,
{
    fn pri_geometry(&self) -> QueueGeometry {
        QueueGeometry::from_base(self.registers.priq_base, self.features.priqs, PRI_BYTES)
    }

    /// Writes `request` (already rewritten with the virtual stream ID) into the guest's PRI
    /// queue.
    pub(crate) fn deliver_page_request(
        &mut self,
        request: &PageRequest,
    ) -> Result<(), GuestPriQueueError> {
        if !self.registers.cr0.priqen() || !self.registers.smmu_enabled() {
            return Err(GuestPriQueueError::Disabled);
        }
        if self.registers.active_errors() & PRIQ_ABT_ERR != 0 {
            return Err(GuestPriQueueError::Aborted);
        }
        let geometry = self.pri_geometry();
        let prod = geometry.pointer(self.registers.priq_prod, QueueKind::PageRequest);
        let cons = geometry.pointer(self.registers.priq_cons, QueueKind::PageRequest);
        let state = match QueueState::new(prod, cons) {
            Ok(state) => state,
            Err(_) => unreachable!("both pointers come from the same geometry"),
        };
        if state.overflow_pending() {
            return Err(GuestPriQueueError::Overflow);
        }
        if state.is_full() {
            self.enter_guest_pri_overflow();
            return Err(GuestPriQueueError::Overflow);
        }
        let written = geometry.entry(prod.index()).ok_or(()).and_then(|ipa| {
            write_words(
                &mut self.backends.guest_memory,
                ipa,
                &request.encode().words(),
            )
            .map_err(|_| ())
        });
        if written.is_err() {
            self.raise_global_error(PRIQ_ABT_ERR);
            return Err(GuestPriQueueError::Aborted);
        }
        self.registers.priq_prod = prod.incremented().raw();
        let signal = request.last || self.registers.priq_irq_cfg2 & LAST_ONLY == 0;
        if self.registers.irq_ctrl.priq_irqen() && signal {
            self.backends.interrupts.raise(VirtualInterrupt::PriQueue);
            let address = Ipa(self.registers.priq_irq_cfg0);
            let data = self.registers.priq_irq_cfg1;
            if address.0 != 0 && !self.msi_write(address, data) {
                self.raise_global_error(MSI_PRIQ_ABT_ERR);
            }
        }
        Ok(())
    }

    /// Enters the overflow condition of the guest's PRI queue (PROD.OVFLG toggled), unless it
    /// is present already. Returns whether it was entered now.
    pub(crate) fn enter_guest_pri_overflow(&mut self) -> bool {
        let geometry = self.pri_geometry();
        let prod = geometry.pointer(self.registers.priq_prod, QueueKind::PageRequest);
        let cons = geometry.pointer(self.registers.priq_cons, QueueKind::PageRequest);
        if prod.overflow() != cons.overflow() {
            return false;
        }
        self.registers.priq_prod = prod.with_overflow(!prod.overflow()).raw();
        self.counters.pri_guest_overflows = self.counters.pri_guest_overflows.saturating_add(1);
        true
    }
}
