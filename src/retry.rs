//! When to try again: exponential backoff with full jitter, bounded by an
//! attempt count and an age, and never earlier than the provider's `Retry-After`.
//! The dispatcher judges its own calls by it, and the scale-out engine the
//! retries external senders report, so it belongs to neither.

use std::time::Duration;

use rand::Rng;

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Delay ceiling after the first failed attempt; doubles with each attempt.
    pub base: Duration,
    /// Largest delay ceiling.
    pub max_delay: Duration,
    /// Attempts allowed in all.
    pub max_attempts: u32,
    /// Age (from `process`) after which no retry is scheduled.
    pub max_age: Duration,
}

impl RetryPolicy {
    /// The ceiling of the delay after attempt number `attempt` (from 1) failed:
    /// `min(max_delay, base * 2^(attempt - 1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.base
            .checked_mul(1u32 << doublings)
            .map_or(self.max_delay, |delay| delay.min(self.max_delay))
    }

    /// The delay before the next attempt: a uniform draw from `0..=ceiling`
    /// ("full jitter", so retries of many requests spread out), raised to the
    /// provider's `Retry-After` when it sent one.
    pub fn delay(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Duration {
        let ceiling_ms = self.ceiling(attempt).as_millis() as u64;
        let jittered = Duration::from_millis(rng.random_range(0..=ceiling_ms));
        retry_after.map_or(jittered, |floor| jittered.max(floor))
    }

    /// Whether a request that has made `attempts` attempts and is `age` old may try again.
    pub fn allows_retry(&self, attempts: u32, age: Duration) -> bool {
        attempts < self.max_attempts && age < self.max_age
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            max_attempts: 4,
            max_age: Duration::from_secs(60),
        }
    }

    #[test]
    fn ceilings_double_then_cap() {
        let ceilings: Vec<u64> = (1..=6)
            .map(|a| policy().ceiling(a).as_millis() as u64)
            .collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(policy().ceiling(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn delays_stay_within_the_ceiling() {
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 1..=6 {
            for _ in 0..200 {
                assert!(policy().delay(attempt, None, &mut rng) <= policy().ceiling(attempt));
            }
        }
    }

    #[test]
    fn retry_after_is_a_floor() {
        let mut rng = StdRng::seed_from_u64(7);
        let floor = Duration::from_secs(5);
        for _ in 0..100 {
            assert!(policy().delay(1, Some(floor), &mut rng) >= floor);
        }
    }

    #[test]
    fn the_budget_ends_at_max_attempts_or_max_age() {
        let young = Duration::from_secs(1);
        assert!(policy().allows_retry(3, young));
        assert!(!policy().allows_retry(4, young));
        assert!(!policy().allows_retry(1, Duration::from_secs(60)));
    }
}
