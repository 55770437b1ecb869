//! What a vSMMU did, as plain numbers a shutdown report can print.
//!
//! Counted where it happens, read with [`VirtualSmmu::counters`](crate::VirtualSmmu::counters);
//! no logging in the trap path. Arrays indexed by cause use the causes' `index()`; per-opcode
//! counts are indexed by the raw opcode byte (so unknown opcodes are counted too).

use crate::events::{DropReason, WithheldReason};
use crate::pri::{PriRefusal, ResponseDrop};
use crate::registers::VirtualRegister;
use crate::validate::cd::InvalidCd;
use crate::validate::command::IllegalCommand;
use crate::validate::ste::InvalidSte;

/// The counters of one vSMMU.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Counters {
    /// Trapped reads, per register ([`VirtualRegister::index`]).
    pub register_reads: [u64; VirtualRegister::COUNT],
    /// Trapped writes, per register.
    pub register_writes: [u64; VirtualRegister::COUNT],
    /// Accesses refused with an external abort (width, alignment, window).
    pub aborted_accesses: u64,
    /// Guest commands consumed, per opcode byte (the illegal one included).
    pub commands: [u64; 256],
    /// Illegal commands, per cause ([`IllegalCommand::index`]).
    pub illegal_commands: [u64; IllegalCommand::COUNT],
    /// Command fetches that aborted (queue outside RAM): CERROR_ABT.
    pub command_fetch_aborts: u64,
    /// Commands forwarded to the physical SMMU.
    pub commands_forwarded: u64,
    /// Batches of forwarded commands submitted.
    pub batches: u64,
    /// Guest CMD_SYNCs completed.
    pub guest_syncs: u64,
    /// Physical CMD_SYNCs issued for guest CMD_SYNCs (at most one each).
    pub physical_syncs: u64,
    /// Physical CMD_SYNCs issued by installs (hitless STE and CD updates).
    pub install_syncs: u64,
    /// Physical operations that failed (sync timeouts, command errors, refused installs).
    pub physical_failures: u64,
    /// CMD_SYNC MSI writes made into guest RAM.
    pub msi_writes: u64,
    /// MSI writes refused (address not RAM): GERROR.MSI_*_ABT_ERR.
    pub msi_aborts: u64,
    /// Physical STEs installed (hitless installer runs that stored something).
    pub ste_installs: u64,
    /// Guest STEs rejected, per cause ([`InvalidSte::index`]).
    pub ste_rejections: [u64; InvalidSte::COUNT],
    /// Guest STE lookups that failed before validation (stream ID out of range, fetch abort).
    pub ste_lookup_faults: u64,
    /// Shadow CDs written (directly or hitlessly).
    pub cd_installs: u64,
    /// Guest CDs rejected, per cause ([`InvalidCd::index`]).
    pub cd_rejections: [u64; InvalidCd::COUNT],
    /// Guest CD lookups that failed (level-1 descriptor invalid, fetch abort).
    pub cd_lookup_faults: u64,
    /// Physical events forwarded to the guest's event queue.
    pub events_forwarded: u64,
    /// Physical events kept by the hypervisor, per reason ([`WithheldReason::index`]).
    pub events_withheld: [u64; WithheldReason::COUNT],
    /// Events for the guest that its queue did not take, per reason ([`DropReason::index`]).
    pub events_dropped: [u64; DropReason::COUNT],
    /// Calls that ran out of budget with work left (continued later).
    pub budget_exhausted: u64,
    /// Calls of the continuation entry point that found work.
    pub continuations: u64,
    /// The most work units one call spent.
    pub max_work_per_call: u32,

    /// Page requests written into the guest's PRI queue.
    pub pri_requests_forwarded: u64,
    /// Stop markers taken from the physical PRI queue (never answered).
    pub pri_stop_markers: u64,
    /// Page requests not forwarded whose group the hypervisor answered, per reason
    /// ([`PriRefusal::index`]).
    pub pri_refused_answered: [u64; PriRefusal::COUNT],
    /// Page requests not forwarded and not answered (not Last), per reason.
    pub pri_refused_discarded: [u64; PriRefusal::COUNT],
    /// Groups awaiting the guest's response that the hypervisor answered InvalidRequest because
    /// their PASID was parked or its address space replaced.
    pub pri_groups_answered_at_teardown: u64,
    /// Open groups discarded after an overflow of the physical PRI queue (their Last was
    /// answered by the SMMU).
    pub pri_groups_discarded_by_overflow: u64,
    /// Overflows of the physical PRI queue seen.
    pub pri_physical_overflows: u64,
    /// Times the guest's PRI queue entered its overflow condition.
    pub pri_guest_overflows: u64,
    /// Guest CMD_PRI_RESPs forwarded to the physical SMMU.
    pub pri_responses_forwarded: u64,
    /// Guest CMD_PRI_RESPs dropped, per cause ([`ResponseDrop::index`]).
    pub pri_responses_dropped: [u64; ResponseDrop::COUNT],
    /// PASIDs parked (their CD invalidated, or their stream disabled, while live).
    pub pasid_parks: u64,
    /// Parked PASIDs released after quiescing.
    pub pasid_frees: u64,
    /// Released PASIDs that went live again (a new address space).
    pub pasid_reuses: u64,
    /// Live PASIDs whose address space was replaced by another (hitless).
    pub pasid_replaces: u64,
    /// Valid guest CDs kept out of the shadow (the guest sees C_BAD_CD): the PASID was parked
    /// and had not quiesced, or no more PASIDs could be tracked. Counted per look.
    pub pasid_refusals: u64,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            register_reads: [0; VirtualRegister::COUNT],
            register_writes: [0; VirtualRegister::COUNT],
            aborted_accesses: 0,
            commands: [0; 256],
            illegal_commands: [0; IllegalCommand::COUNT],
            command_fetch_aborts: 0,
            commands_forwarded: 0,
            batches: 0,
            guest_syncs: 0,
            physical_syncs: 0,
            install_syncs: 0,
            physical_failures: 0,
            msi_writes: 0,
            msi_aborts: 0,
            ste_installs: 0,
            ste_rejections: [0; InvalidSte::COUNT],
            ste_lookup_faults: 0,
            cd_installs: 0,
            cd_rejections: [0; InvalidCd::COUNT],
            cd_lookup_faults: 0,
            events_forwarded: 0,
            events_withheld: [0; WithheldReason::COUNT],
            events_dropped: [0; DropReason::COUNT],
            budget_exhausted: 0,
            continuations: 0,
            max_work_per_call: 0,
            pri_requests_forwarded: 0,
            pri_stop_markers: 0,
            pri_refused_answered: [0; PriRefusal::COUNT],
            pri_refused_discarded: [0; PriRefusal::COUNT],
            pri_groups_answered_at_teardown: 0,
            pri_groups_discarded_by_overflow: 0,
            pri_physical_overflows: 0,
            pri_guest_overflows: 0,
            pri_responses_forwarded: 0,
            pri_responses_dropped: [0; ResponseDrop::COUNT],
            pasid_parks: 0,
            pasid_frees: 0,
            pasid_reuses: 0,
            pasid_replaces: 0,
            pasid_refusals: 0,
        }
    }
}

/// Adds one to the counter at `index`, if there is one.
pub(crate) fn bump<const N: usize>(counters: &mut [u64; N], index: usize) {
    if let Some(count) = counters.get_mut(index) {
        *count = count.saturating_add(1);
    }
}

impl Counters {
    /// Every guest command counted: the sum over opcodes.
    #[must_use]
    pub fn total_commands(&self) -> u64 {
        self.commands.iter().sum()
    }

    /// Every trapped access counted.
    #[must_use]
    pub fn total_traps(&self) -> u64 {
        self.register_reads.iter().sum::<u64>() + self.register_writes.iter().sum::<u64>()
    }

    /// Page requests the hypervisor kept from the guest, answered or not.
    #[must_use]
    pub fn pri_requests_refused(&self) -> u64 {
        self.pri_refused_answered.iter().sum::<u64>()
            + self.pri_refused_discarded.iter().sum::<u64>()
    }

    /// Guest responses dropped, all causes.
    #[must_use]
    pub fn pri_responses_dropped_total(&self) -> u64 {
        self.pri_responses_dropped.iter().sum()
    }

    /// The opcodes with a non-zero count, with their counts, for a report.
    pub fn commands_by_opcode(&self) -> impl Iterator<Item = (u8, u64)> + '_ {
        (0u8..=u8::MAX)
            .zip(self.commands.iter().copied())
            .filter(|&(_, count)| count != 0)
    }
}
