//! A channel's own limit (`--email-rate-per-sec` and the like): calls of that
//! channel spaced evenly, one at a time.
//!
//! It is asked before a lease (`wait`) and charged after it (`take`), so the
//! work source can pass over a channel that must wait: a request of a
//! throttled channel is never leased only to sit out its channel's gap.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::store::rate::InvalidRate;

#[derive(Debug)]
pub struct ChannelPace {
    gap: Duration,
    /// When the channel's next call may go.
    next: Mutex<Instant>,
}

impl ChannelPace {
    /// `per_sec` calls a second.
    pub fn new(per_sec: f64) -> Result<Self, InvalidRate> {
        if !(per_sec.is_finite() && per_sec > 0.0) {
            return Err(InvalidRate::PerSecond(per_sec));
        }
        Ok(Self {
            gap: Duration::from_secs_f64(1.0 / per_sec),
            next: Mutex::new(Instant::now()),
        })
    }

    /// How long the next call must wait; `None` when it may go now.
    pub fn wait(&self) -> Option<Duration> {
        let next = *self.lock();
        let now = Instant::now();
        (next > now).then(|| next - now)
    }

    /// A call of the channel was leased: the next one waits a gap after it.
    pub fn take(&self) {
        let mut next = self.lock();
        *next = (*next).max(Instant::now()) + self.gap;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Instant> {
        self.next
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn calls_are_spaced_by_the_gap_and_a_pause_lets_the_next_go_at_once() {
        let pace = ChannelPace::new(4.0).unwrap(); // 250 ms apart
        assert_eq!(pace.wait(), None);
        pace.take();
        assert_eq!(pace.wait(), Some(Duration::from_millis(250)));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(pace.wait(), Some(Duration::from_millis(150)));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(pace.wait(), None, "no credit piles up, no debt either");
        pace.take();
        assert_eq!(pace.wait(), Some(Duration::from_millis(250)));
        assert!(ChannelPace::new(0.0).is_err());
    }
}
