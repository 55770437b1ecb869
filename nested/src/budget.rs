//! The work budget of one trap: every loop over guest-controlled counts is charged here.
//!
//! A step (one command, one STE or one CD re-shadowed) starts only while the budget has room
//! and runs to completion, so a trap spends at most its budget plus one step. The costliest
//! step is one hitless install: a guest structure read, three physical syncs.

/// Units a command, or one guest structure read, costs.
pub const READ_COST: u32 = 1;
/// Units a physical CMD_SYNC costs (its round trip dominates a trap's cost).
pub const SYNC_COST: u32 = 8;
/// The most units one step can cost beyond the budget left: a CD or STE read through a
/// level-1 descriptor, a hitless install of three syncs, and the sync of a PASID's
/// invalidation when it is parked or replaced (the PASIDs an STE install parks share one).
pub const MAX_STEP_COST: u32 = 2 * READ_COST + 4 * SYNC_COST + READ_COST;

/// What one call may still spend.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Budget {
    remaining: u32,
    spent: u32,
}

impl Budget {
    pub(crate) const fn new(units: u32) -> Self {
        Self {
            remaining: units,
            spent: 0,
        }
    }

    /// Whether another step may start.
    pub(crate) const fn has_room(&self) -> bool {
        self.remaining > 0
    }

    pub(crate) fn charge(&mut self, units: u32) {
        self.remaining = self.remaining.saturating_sub(units);
        self.spent = self.spent.saturating_add(units);
    }

    pub(crate) const fn spent(&self) -> u32 {
        self.spent
    }
}
