//! Live counts of undelivered requests by priority and by state (waiting in the
//! outbox, or leased by an attempt): the outbox bound, `/ready` and the
//! `herald_outbox_depth` gauges read them. Started at open (and again after a
//! reopen) from the persisted per-priority counts (`pending.rs`), then kept up
//! to date by every transition.
//!
//! Counts are updated after the transaction that caused them commits, so a
//! concurrent transition can be counted first (a lease of an entry whose
//! `process` has not been counted yet). Signed counters absorb that order; a
//! count is clamped at zero only when read.

use std::sync::atomic::{AtomicI64, Ordering};

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
    counts: [[AtomicI64; 2]; 3],
}

impl OutboxDepth {
    /// Starts over from counts read off the disk (after a reopen): `pending`
    /// undelivered and `leased` of them leased, per priority rank.
    pub fn reset(&self, pending: [u64; 3], leased: [u64; 3]) {
        for &priority in Priority::ALL {
            let rank = usize::from(priority.rank());
            let waiting = pending[rank].saturating_sub(leased[rank]);
            for (state, count) in [
                (EntryState::Waiting, waiting),
                (EntryState::Leased, leased[rank]),
            ] {
                let count = i64::try_from(count).unwrap_or(i64::MAX);
                self.slot(priority, state).store(count, Ordering::Relaxed);
                self.publish(priority, state);
            }
        }
    }

    pub fn add(&self, priority: Priority, state: EntryState) {
        self.slot(priority, state).fetch_add(1, Ordering::Relaxed);
        self.publish(priority, state);
    }

    pub fn remove(&self, priority: Priority, state: EntryState) {
        self.slot(priority, state).fetch_sub(1, Ordering::Relaxed);
        self.publish(priority, state);
    }

    pub fn moved(&self, priority: Priority, from: EntryState, to: EntryState) {
        self.remove(priority, from);
        self.add(priority, to);
    }

    /// Every undelivered request, whatever its priority or state.
    pub fn total(&self) -> u64 {
        let sum: i64 = self
            .counts
            .iter()
            .flatten()
            .map(|count| count.load(Ordering::Relaxed))
            .sum();
        u64::try_from(sum).unwrap_or(0)
    }

    fn slot(&self, priority: Priority, state: EntryState) -> &AtomicI64 {
        &self.counts[usize::from(priority.rank())][state.index()]
    }

    fn publish(&self, priority: Priority, state: EntryState) {
        let value = self.slot(priority, state).load(Ordering::Relaxed);
        instruments::outbox_depth(
            priority.as_str(),
            state.as_str(),
            u64::try_from(value).unwrap_or(0),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_starts_from_the_counts_on_disk() {
        let depth = OutboxDepth::default();
        depth.add(Priority::Low, EntryState::Waiting);
        depth.reset([3, 1, 0], [1, 0, 0]);
        assert_eq!(depth.total(), 4);
        depth.remove(Priority::High, EntryState::Leased);
        assert_eq!(depth.total(), 3);
    }

    #[test]
    fn counts_follow_transitions() {
        let depth = OutboxDepth::default();
        depth.reset([2, 0, 0], [0; 3]);
        assert_eq!(depth.total(), 2);
        depth.moved(Priority::High, EntryState::Waiting, EntryState::Leased);
        depth.add(Priority::Low, EntryState::Waiting);
        assert_eq!(depth.total(), 3);
        depth.remove(Priority::High, EntryState::Leased);
        assert_eq!(depth.total(), 2);
    }

    #[test]
    fn a_transition_counted_before_its_cause_settles_at_the_right_count() {
        // A lease counted before the `process` that put the entry in the outbox.
        let depth = OutboxDepth::default();
        depth.moved(Priority::Normal, EntryState::Waiting, EntryState::Leased);
        depth.add(Priority::Normal, EntryState::Waiting);
        assert_eq!(depth.total(), 1);
        depth.remove(Priority::Normal, EntryState::Leased);
        assert_eq!(depth.total(), 0);
    }
}
