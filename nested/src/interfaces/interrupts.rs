//! (e) The vSMMU's virtual interrupts, and the wake-up event CMD_SYNC may ask for.
//!
//! The vSMMU's interrupts are purely virtual (wired SPIs, HW=0 in the list registers): `hyp`
//! maps each [`VirtualInterrupt`] to the INTID the guest's device tree gives it and makes it
//! pending for the VM. They are edge-triggered, as the SMMU's wired outputs are: each call is
//! one edge, and a guest that has not yet taken the previous one sees them coalesced.

/// One of the vSMMU's interrupt outputs.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum VirtualInterrupt {
    /// The event queue went non-empty (device tree name `eventq`).
    EventQueue,
    /// A page request was written into the PRI queue (device tree name `priq`); only with PRI
    /// advertised.
    PriQueue,
    /// A global error became active (device tree name `gerror`).
    GlobalError,
    /// A CMD_SYNC with CS=SIG_IRQ completed (device tree name `cmdq-sync`).
    CommandSync,
}

impl VirtualInterrupt {
    /// Every output, in the order a device tree lists them. `priq` may be left out of a
    /// device tree when the vSMMU advertises no PRI (Linux ignores it then).
    pub const ALL: [VirtualInterrupt; 4] = [
        Self::EventQueue,
        Self::PriQueue,
        Self::GlobalError,
        Self::CommandSync,
    ];

    /// The `interrupt-names` entry of the `arm,smmu-v3` binding for this output.
    #[must_use]
    pub const fn device_tree_name(self) -> &'static str {
        match self {
            Self::EventQueue => "eventq",
            Self::PriQueue => "priq",
            Self::GlobalError => "gerror",
            Self::CommandSync => "cmdq-sync",
        }
    }
}

/// Where the vSMMU's interrupts and events go.
pub trait InterruptSink {
    /// Signals one edge of `interrupt` to the VM.
    fn raise(&mut self, interrupt: VirtualInterrupt);

    /// Sends a wake-up event to the VM's vCPUs (CMD_SYNC with CS=SIG_SEV, or the command queue
    /// leaving the full state): at EL2, an `SEV`.
    fn send_event(&mut self);
}
