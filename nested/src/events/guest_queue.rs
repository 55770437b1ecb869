//! The guest's event queue: records written into guest RAM at EVENTQ_PROD, as an SMMU writes
//! them.
//!
//! The queue is writable when EVENTQEN = 1, no EVTQ_ABT_ERR is active, and it is not full. A
//! record for a full queue is discarded and the overflow condition entered (PROD.OVFLG toggled
//! unless OVFLG already differs from CONS.OVACKFLG); one for a disabled queue is discarded
//! without overflow. A write outside RAM is a synchronous abort: PROD does not move and
//! GERROR.EVTQ_ABT_ERR becomes active. After a write, the `eventq` interrupt (and MSI, if
//! configured) is signalled when EVTQ_IRQEN is set.

use smmu::Ipa;
use smmu::driver::DmaMemory;
use smmu::event::EventRecord;
use smmu::queue::{QueueKind, QueueState};

use crate::VirtualSmmu;
use crate::counters::bump;
use crate::events::DropReason;
use crate::interfaces::guest_memory::{GuestMemory, write_words};
use crate::interfaces::interrupts::{InterruptSink, VirtualInterrupt};
use crate::interfaces::physical::PhysicalSmmu;
use crate::registers::{EVTQ_ABT_ERR, MSI_EVTQ_ABT_ERR, QueueGeometry};

/// Bytes per event record.
const EVENT_BYTES: u64 = 32;

impl<G, P, I, C, const STREAMS: usize> VirtualSmmu<G, P, I, C, STREAMS>
where
    G: GuestMemory,
    P: PhysicalSmmu,
    I: InterruptSink,
    C: DmaMemory,
{
    /// Writes `record` into the guest's event queue.
    ///
    /// # Errors
    ///
    /// The [`DropReason`] if it was not written.
    pub(crate) fn deliver_event(&mut self, record: &EventRecord) -> Result<(), DropReason> {
        let result = self.try_deliver(record);
        if let Err(reason) = result {
            bump(&mut self.counters.events_dropped, reason.index());
        }
        result
    }

    fn try_deliver(&mut self, record: &EventRecord) -> Result<(), DropReason> {
        if !self.registers.cr0.evtqen() {
            return Err(DropReason::QueueDisabled);
        }
        if self.registers.active_errors() & EVTQ_ABT_ERR != 0 {
            return Err(DropReason::QueueAborted);
        }
        let geometry =
            QueueGeometry::from_base(self.registers.evtq_base, self.features.evtqs, EVENT_BYTES);
        let prod = geometry.pointer(self.registers.evtq_prod, QueueKind::Event);
        let cons = geometry.pointer(self.registers.evtq_cons, QueueKind::Event);
        let state = match QueueState::new(prod, cons) {
            Ok(state) => state,
            Err(_) => unreachable!("both pointers come from the same geometry"),
        };
        if state.is_full() {
            if !state.overflow_pending() {
                self.registers.evtq_prod = prod.with_overflow(!prod.overflow()).raw();
            }
            return Err(DropReason::QueueFull);
        }
        let written = geometry.entry(prod.index()).ok_or(()).and_then(|ipa| {
            write_words(&mut self.backends.guest_memory, ipa, &record.words()).map_err(|_| ())
        });
        if written.is_err() {
            self.raise_global_error(EVTQ_ABT_ERR);
            return Err(DropReason::WriteAborted);
        }
        self.registers.evtq_prod = prod.incremented().raw();
        if self.registers.irq_ctrl.evtq_irqen() {
            self.backends.interrupts.raise(VirtualInterrupt::EventQueue);
            let address = Ipa(self.registers.evtq_irq_cfg0);
            let data = self.registers.evtq_irq_cfg1;
            if address.0 != 0 && !self.msi_write(address, data) {
                self.raise_global_error(MSI_EVTQ_ABT_ERR);
            }
        }
        Ok(())
    }
}
