//! The limit the provider's refusals teach when the configured one is above
//! its real capacity.
//!
//! A provider that counts calls in a sliding window refuses a call when its
//! window is full, so at a refusal it has just admitted its whole capacity:
//! the calls Herald sent in the window before, less those it refused. That
//! count becomes the learned limit, over 10 s (the window the reference
//! provider publishes) or the configured window if that is longer; it holds
//! calls back exactly as long as the provider's window needs to move on;
//! halving the pace instead, as Herald did before, kept that window partly
//! empty (0.85 of a 100-per-10 s provider in the second minute, BENCHMARKS.md
//! "Provider capacity"). While no refusal comes, the limit grows back, by
//! 5% after two clean windows and twice as much after each further one
//! (each growth sends a few calls beyond a capacity that is known, and 10%
//! after one window put 3.1% of the first minute's calls on 429s); each time growing found the ceiling again, growth waits
//! twice as many windows (up to 16), so a provider whose capacity is known
//! is probed ever more rarely.

use std::time::Duration;

use tokio::time::Instant;

use super::window::SlidingLog;
use crate::store::rate::RateLimit;

/// The shortest window limits are learned over: the reference provider's.
const LEARNING_WINDOW: Duration = Duration::from_secs(10);
const FIRST_GROWTH: f64 = 0.05;
/// Clean windows before the first growth after a limit is learned.
const FIRST_CLEAN_WINDOWS: u32 = 2;
const MAX_CLEAN_WINDOWS: u32 = 16;

#[derive(Debug)]
pub struct LearnedLimit {
    /// Every counted call over the learning window; limited once learned.
    log: SlidingLog,
    /// The configured limit over the learning window: a learned limit that
    /// grows to it gives way to it.
    ceiling: usize,
    limit: Option<usize>,
    growth: f64,
    /// Whether the limit grew since the last refusal.
    grown: bool,
    clean_windows: u32,
    next_growth: Instant,
}

impl LearnedLimit {
    pub fn new(configured: RateLimit) -> Self {
        let window = configured.window.max(LEARNING_WINDOW);
        let ceiling = (configured.per_sec() * window.as_secs_f64()).ceil();
        Self {
            log: SlidingLog::counting(window),
            ceiling: ceiling.min(usize::MAX as f64) as usize,
            limit: None,
            growth: FIRST_GROWTH,
            grown: false,
            clean_windows: FIRST_CLEAN_WINDOWS,
            next_growth: Instant::now(),
        }
    }

    pub fn log(&mut self) -> &mut SlidingLog {
        &mut self.log
    }

    pub fn limit(&self) -> Option<usize> {
        self.limit
    }

    /// The provider refused a call because its window was full (the refused
    /// call already left the log): its capacity is what the window holds,
    /// the margin left out (counting a call the provider had already let go
    /// made the limit one too high, and every window then ended in a refusal:
    /// 3.5% of calls on 429s against `misconfigured`). Refused while the
    /// learned limit was full, the limit is too high by one at least.
    pub fn refused(&mut self, now: Instant) -> usize {
        let held = self.log.held_at(now);
        let limit = match self.limit {
            Some(limit) if held >= limit => limit - 1,
            Some(limit) => limit.min(held),
            None => held,
        }
        .max(1);
        self.limit = Some(limit);
        self.log.set_limit(limit);
        if self.grown {
            self.clean_windows = (self.clean_windows * 2).min(MAX_CLEAN_WINDOWS);
        }
        self.grown = false;
        self.growth = FIRST_GROWTH;
        self.next_growth = now + self.log.window() * self.clean_windows;
        limit
    }

    /// Grows the learned limit if enough time passed without a refusal.
    pub fn grow_if_due(&mut self, now: Instant) {
        let Some(limit) = self.limit else {
            return;
        };
        if now < self.next_growth {
            return;
        }
        let grown = limit + ((limit as f64 * self.growth).ceil() as usize).max(1);
        self.growth = (self.growth * 2.0).min(1.0);
        self.grown = true;
        self.next_growth = now + self.log.window();
        if grown >= self.ceiling {
            // The log keeps counting: the next refusal reads it.
            self.limit = None;
            self.log.set_limit(usize::MAX);
            tracing::info!("learned rate limit grown back to the configured one");
            return;
        }
        self.limit = Some(grown);
        self.log.set_limit(grown);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn twenty_per_sec() -> LearnedLimit {
        LearnedLimit::new(RateLimit::per_second(20.0, 1).unwrap())
    }

    #[test]
    fn a_refusal_teaches_what_the_window_held() {
        let start = Instant::now();
        let mut learned = twenty_per_sec();
        assert_eq!(learned.ceiling, 200, "20/s over 10 s");
        for id in 0..100 {
            learned
                .log()
                .record(id, start + Duration::from_millis(50 * id));
        }
        let refused_at = start + Duration::from_secs(5);
        assert_eq!(learned.refused(refused_at), 100);
        assert_eq!(learned.limit(), Some(100));
        // The next call waits for the first one to leave the window.
        assert_eq!(
            learned.log().next_free(refused_at),
            start + Duration::from_millis(10_020)
        );
    }

    #[test]
    fn calls_in_the_margin_are_not_held_and_a_full_limit_is_one_too_high() {
        let start = Instant::now();
        let mut learned = twenty_per_sec();
        learned.log().record(0, start);
        for id in 1..=50 {
            learned.log().record(id, start + Duration::from_secs(5));
        }
        // 10.01 s after the first call: within the log's margin, not the window.
        let refused_at = start + Duration::from_millis(10_010);
        assert_eq!(learned.refused(refused_at), 50);
        learned.log().record(51, refused_at);
        assert_eq!(learned.refused(refused_at), 49, "refused while full");
    }

    #[test]
    fn it_grows_back_faster_each_clean_window_and_gives_way_to_the_configured() {
        let start = Instant::now();
        let mut learned = twenty_per_sec();
        learned.log().record(0, start);
        assert_eq!(learned.refused(start), 1);
        let mut limits = Vec::new();
        let mut now = start;
        while learned.limit().is_some() {
            now += Duration::from_secs(10);
            learned.grow_if_due(now);
            limits.push(learned.limit());
        }
        let limits: Vec<usize> = limits.into_iter().map(|l| l.unwrap_or(0)).collect();
        assert_eq!(
            limits,
            [1, 2, 3, 4, 6, 11, 22, 44, 88, 176, 0],
            "0: none learned"
        );
    }

    #[test]
    fn finding_the_ceiling_again_makes_it_wait_longer_to_grow() {
        let start = Instant::now();
        let mut learned = twenty_per_sec();
        for id in 0..100 {
            learned.log().record(id, start);
        }
        learned.refused(start);
        learned.grow_if_due(start + Duration::from_secs(10));
        assert_eq!(learned.limit(), Some(100), "two clean windows first");
        let grown_at = start + Duration::from_secs(20);
        learned.grow_if_due(grown_at);
        assert_eq!(learned.limit(), Some(105));
        for id in 100..200 {
            learned.log().record(id, grown_at);
        }
        learned.refused(grown_at); // the provider still holds 100
        assert_eq!(learned.limit(), Some(100));
        learned.grow_if_due(grown_at + Duration::from_secs(30));
        assert_eq!(learned.limit(), Some(100), "four clean windows now");
        learned.grow_if_due(grown_at + Duration::from_secs(40));
        assert_eq!(learned.limit(), Some(105));
    }
}
