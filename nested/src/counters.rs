//! What a vSMMU did, as plain numbers a shutdown report can print.
//!
//! Counted where it happens, read with [`VirtualSmmu::counters`](crate::VirtualSmmu::counters);
//! no logging in the trap path. Arrays indexed by cause use the causes' `index()`; per-opcode
//! counts are indexed by the raw opcode byte (so unknown opcodes are counted too).

use crate::events::{DropReason, WithheldReason};
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

    /// The opcodes with a non-zero count, with their counts, for a report.
    pub fn commands_by_opcode(&self) -> impl Iterator<Item = (u8, u64)> + '_ {
        (0u8..=u8::MAX)
            .zip(self.commands.iter().copied())
            .filter(|&(_, count)| count != 0)
    }
}
