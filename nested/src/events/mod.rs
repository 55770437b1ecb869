//! Where events are forwarded: physical events of the VM's streams are kept by the hypervisor
//! or rewritten for the guest ([`intake`]) and written into the guest's event queue
//! ([`guest_queue`]) with the architecture's overflow behaviour.

pub mod guest_queue;
pub mod intake;

/// What became of a physical event.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum EventDisposition {
    /// Written into the guest's event queue, with its virtual stream ID.
    Forwarded,
    /// For the guest, but its queue did not take it.
    Dropped(DropReason),
    /// Kept by the hypervisor (counted; `hyp` may log it).
    Withheld(WithheldReason),
}

/// Why an event for the guest was not written.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum DropReason {
    /// EVENTQEN = 0 (or the vSMMU is disabled): events are discarded, no overflow.
    QueueDisabled,
    /// The queue is full: discarded, and PROD.OVFLG toggled if no overflow was pending.
    QueueFull,
    /// GERROR.EVTQ_ABT_ERR is active: the queue is not writable.
    QueueAborted,
    /// The write into guest memory failed (the queue is not in RAM): GERROR.EVTQ_ABT_ERR.
    WriteAborted,
}

impl DropReason {
    /// How many there are, for counters.
    pub const COUNT: usize = 4;

    /// A dense index for counters.
    #[must_use]
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// Why the hypervisor kept a physical event.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum WithheldReason {
    /// The event's stream is not one of this VM's.
    NotThisVm,
    /// A stage-2 fault (S2 = 1): the hypervisor's stage 2 refused; the guest is not told.
    Stage2Fault,
    /// An event about the hypervisor's own configuration (STE or CD fetch, a C_BAD_STE while the
    /// shadow is not blocking on the guest's behalf, a stream ID out of the physical range...).
    HypervisorConfiguration,
    /// An event kind not forwarded (TLB conflicts, page-request hints, ATS when not forwarded,
    /// walk aborts, IMPLEMENTATION DEFINED records).
    NotForwarded,
    /// The guest disabled recording of this kind (CR2.RECINVSID = 0 for C_BAD_STREAMID).
    NotRecorded,
    /// The vSMMU is disabled: no translation-related events are recorded.
    VsmmuDisabled,
}

impl WithheldReason {
    /// How many there are, for counters.
    pub const COUNT: usize = 6;

    /// A dense index for counters.
    #[must_use]
    pub const fn index(self) -> usize {
        self as usize
    }
}
