//! The provider's window kept on Herald's side: the moments of the calls the
//! provider counts, so that no sliding window of W holds more than N of them
//! as the provider sees them.
//!
//! The provider counts a call when it arrives, which is later than Herald
//! stamped it by a delay that varies (loopback and scheduling; the dispatcher
//! re-stamps each call just before it goes out, so leasing and spawning are
//! not part of it). Spacing the N-th next call W + `margin` after a call keeps
//! every provider-side window within N as long as that delay varies by less
//! than `margin`. A `429` refuses a call without counting it, so a refused
//! call leaves the log.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::store::rate::RateLimit;

/// The jitter margin a window starts with, and the most it may widen to, as
/// shares of W: 20 ms and 100 ms on the reference provider's 10 s. At the
/// start, 50 per 10.02 s is 0.998 of its capacity; widened all the way,
/// 0.990. (BENCHMARKS.md, "Provider capacity", has what the provider saw:
/// the 50th call after another arrived 6-23 ms past its 10 s, min to median.)
const MARGIN_SHARE: f64 = 0.002;
const MAX_MARGIN_SHARE: f64 = 0.01;
/// A widened margin halves back (to no less than where it started) after
/// this many windows without a refusal: what widens it is most often one
/// stall of the machine, not a lasting delay (two in a 6-minute run on a
/// machine shared with builds, BENCHMARKS.md).
const RELAX_AFTER_WINDOWS: u32 = 6;

/// A call the log counts, named so it can be re-stamped or taken back.
pub type CallId = u64;

#[derive(Debug)]
pub struct SlidingLog {
    /// `usize::MAX`: the log only counts.
    limit: usize,
    window: Duration,
    margin: Duration,
    min_margin: Duration,
    max_margin: Duration,
    /// When the margin last changed, if it is wider than `min_margin`.
    widened_at: Option<Instant>,
    /// The counted calls, oldest stamp first.
    stamps: VecDeque<(CallId, Instant)>,
}

impl SlidingLog {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit: limit.calls.max(1) as usize,
            window: limit.window,
            margin: limit.window.mul_f64(MARGIN_SHARE),
            min_margin: limit.window.mul_f64(MARGIN_SHARE),
            max_margin: limit.window.mul_f64(MAX_MARGIN_SHARE),
            widened_at: None,
            stamps: VecDeque::new(),
        }
    }

    /// A log of every call over `window` that limits nothing until told to.
    pub fn counting(window: Duration) -> Self {
        Self {
            limit: usize::MAX,
            ..Self::new(RateLimit { calls: 1, window })
        }
    }

    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.max(1);
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// The earliest moment, `now` or later, at which a call may go.
    pub fn next_free(&mut self, now: Instant) -> Instant {
        self.forget(now);
        match self.stamps.len().checked_sub(self.limit) {
            None => now,
            // That many must leave the window first; the last of them goes at this stamp.
            Some(excess) => self.stamps[excess].1 + self.window + self.margin,
        }
    }

    /// Counts call `id` as going at `now` (the caller saw `next_free` allow it).
    /// Every stamp is at most `now`, so it goes to the back and the log stays
    /// sorted; a call counted again (it went out later than it was counted)
    /// counts from now.
    pub fn record(&mut self, id: CallId, now: Instant) {
        self.release(id);
        self.stamps.push_back((id, now));
    }

    /// The provider did not count the call (a `429`), or it never went out.
    pub fn release(&mut self, id: CallId) {
        // Recent calls are the ones answered or re-stamped: look from the back.
        if let Some(position) = self.stamps.iter().rposition(|(stamped, _)| *stamped == id) {
            self.stamps.remove(position);
        }
    }

    /// The calls counted in the window ending at `now` (for tests and judgements).
    pub fn in_window(&mut self, now: Instant) -> usize {
        self.forget(now);
        self.stamps.len()
    }

    /// The calls stamped within the window itself (the margin left out) up
    /// to `now`: what the provider holds, as nearly as Herald can tell.
    pub fn held_at(&self, now: Instant) -> usize {
        self.stamps
            .iter()
            .rev()
            .take_while(|(_, stamp)| now.saturating_duration_since(*stamp) < self.window)
            .count()
    }

    pub fn is_full_at(&mut self, now: Instant) -> bool {
        self.in_window(now) >= self.limit
    }

    /// The provider refused a call the log had room for: it counted our calls
    /// closer together than we stamped them. Doubles the margin, up to its
    /// ceiling; returns whether it could.
    pub fn widen(&mut self, now: Instant) -> bool {
        if self.margin >= self.max_margin {
            return false;
        }
        self.margin = (self.margin * 2).min(self.max_margin);
        self.widened_at = Some(now);
        true
    }

    /// Halves a widened margin back once it has gone long enough unneeded.
    pub fn relax(&mut self, now: Instant) {
        let Some(since) = self.widened_at else {
            return;
        };
        if now.saturating_duration_since(since) < self.window * RELAX_AFTER_WINDOWS {
            return;
        }
        self.margin = (self.margin / 2).max(self.min_margin);
        self.widened_at = (self.margin > self.min_margin).then_some(now);
    }

    pub fn margin(&self) -> Duration {
        self.margin
    }

    /// Drops stamps that no longer hold a later call back.
    fn forget(&mut self, now: Instant) {
        while let Some(&(_, stamp)) = self.stamps.front() {
            if stamp + self.window + self.margin > now {
                break;
            }
            self.stamps.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(calls: u32, window_secs: u64) -> SlidingLog {
        SlidingLog::new(RateLimit {
            calls,
            window: Duration::from_secs(window_secs),
        })
    }

    #[test]
    fn n_calls_go_at_once_and_the_next_waits_for_the_window_and_its_margin() {
        let start = Instant::now();
        let mut log = log(3, 10);
        assert_eq!(log.margin(), Duration::from_millis(20));
        for id in 0..3 {
            assert_eq!(log.next_free(start), start);
            log.record(id, start);
        }
        let free = log.next_free(start);
        assert_eq!(free, start + Duration::from_millis(10_020));
        assert_eq!(log.next_free(start + Duration::from_secs(10)), free);
        assert_eq!(log.next_free(free), free);
    }

    #[test]
    fn a_refused_call_leaves_the_window() {
        let start = Instant::now();
        let mut log = log(2, 10);
        log.record(0, start);
        log.record(1, start);
        assert!(log.next_free(start) > start);
        log.release(0);
        assert_eq!(log.next_free(start), start);
        assert_eq!(log.in_window(start), 1);
    }

    #[test]
    fn a_restamped_call_counts_from_when_it_went_out() {
        let start = Instant::now();
        let mut log = log(1, 10);
        log.record(7, start);
        log.record(7, start + Duration::from_secs(3));
        assert_eq!(log.next_free(start), start + Duration::from_millis(13_020));
    }

    #[test]
    fn a_counting_log_limits_only_once_told() {
        let start = Instant::now();
        let mut log = SlidingLog::counting(Duration::from_secs(10));
        for id in 0..1000 {
            log.record(id, start);
        }
        assert_eq!(log.next_free(start), start);
        log.set_limit(1000);
        assert!(log.is_full_at(start));
        assert_eq!(log.in_window(start + Duration::from_millis(10_020)), 0);
    }

    #[test]
    fn the_margin_widens_up_to_a_ceiling_and_relaxes_when_unneeded() {
        let start = Instant::now();
        let mut log = log(50, 10);
        let mut margins = vec![log.margin().as_millis()];
        while log.widen(start) {
            margins.push(log.margin().as_millis());
        }
        assert_eq!(margins, [20, 40, 80, 100]);
        assert!(!log.widen(start));

        log.relax(start + Duration::from_secs(59));
        assert_eq!(log.margin(), Duration::from_millis(100), "not yet");
        let mut relaxed = Vec::new();
        for minutes in 1..=4 {
            log.relax(start + Duration::from_secs(60 * minutes));
            relaxed.push(log.margin().as_millis());
        }
        assert_eq!(relaxed, [50, 25, 20, 20]);
    }
}
