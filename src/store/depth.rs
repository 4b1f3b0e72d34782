//! Live counts of undelivered requests by priority and by state (waiting in the
//! outbox, or leased by an attempt): the outbox bound, `/ready` and the
//! `herald_outbox_depth` gauges read them. Counted once at open, then kept
//! up to date by every transition.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::domain::Priority;
use crate::instruments;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryState {
    /// In the outbox: due now, or scheduled for a retry.
    Waiting,
    /// Taken by an attempt that has not finished.
    Leased,
}

impl EntryState {
    const ALL: [EntryState; 2] = [EntryState::Waiting, EntryState::Leased];

    fn index(self) -> usize {
        match self {
            EntryState::Waiting => 0,
            EntryState::Leased => 1,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            EntryState::Waiting => "waiting",
            EntryState::Leased => "leased",
        }
    }
}

#[derive(Default)]
pub struct OutboxDepth {
    /// Indexed by priority rank, then state.
    counts: [[AtomicU64; 2]; 3],
}

impl OutboxDepth {
    /// Starts from `waiting` entries per priority (nothing is leased at open).
    pub fn starting_at(waiting: impl Fn(Priority) -> u64) -> Self {
        let depth = Self::default();
        for &priority in Priority::ALL {
            depth
                .slot(priority, EntryState::Waiting)
                .store(waiting(priority), Ordering::Relaxed);
            for state in EntryState::ALL {
                depth.publish(priority, state);
            }
        }
        depth
    }

    pub fn add(&self, priority: Priority, state: EntryState) {
        self.slot(priority, state).fetch_add(1, Ordering::Relaxed);
        self.publish(priority, state);
    }

    pub fn remove(&self, priority: Priority, state: EntryState) {
        // Saturating: a count must never wrap, whatever the order of updates.
        let _ =
            self.slot(priority, state)
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        self.publish(priority, state);
    }

    pub fn moved(&self, priority: Priority, from: EntryState, to: EntryState) {
        self.remove(priority, from);
        self.add(priority, to);
    }

    /// Every undelivered request, whatever its priority or state.
    pub fn total(&self) -> u64 {
        self.counts
            .iter()
            .flatten()
            .map(|count| count.load(Ordering::Relaxed))
            .sum()
    }

    fn slot(&self, priority: Priority, state: EntryState) -> &AtomicU64 {
        &self.counts[usize::from(priority.rank())][state.index()]
    }

    fn publish(&self, priority: Priority, state: EntryState) {
        let value = self.slot(priority, state).load(Ordering::Relaxed);
        instruments::outbox_depth(priority.as_str(), state.as_str(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_transitions_and_never_wrap() {
        let depth = OutboxDepth::starting_at(|p| if p == Priority::High { 2 } else { 0 });
        assert_eq!(depth.total(), 2);
        depth.moved(Priority::High, EntryState::Waiting, EntryState::Leased);
        depth.add(Priority::Low, EntryState::Waiting);
        assert_eq!(depth.total(), 3);
        depth.remove(Priority::Normal, EntryState::Leased);
        assert_eq!(depth.total(), 3);
        depth.remove(Priority::High, EntryState::Leased);
        assert_eq!(depth.total(), 2);
    }
}
