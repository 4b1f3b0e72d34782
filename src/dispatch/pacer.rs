//! Pacing provider calls: a global governor rate limiter, optional per-channel
//! limiters on top, and the backpressure `429`s impose on every caller: a pause
//! (the `Retry-After`, or a second), then a slower pace that each further `429`
//! episode halves and that recovers towards the configured rate by 10% a
//! second while the provider answers without throttling.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

use crate::domain::Channel;

/// How long a `429` without `Retry-After` holds every call.
const THROTTLE_PAUSE: Duration = Duration::from_secs(1);
/// The slowest pace `429`s can impose: one call per this long.
const MAX_GAP: Duration = Duration::from_secs(5);
/// How fast the imposed pace recovers: this much faster per second of answers
/// without a `429`. Slow on purpose: recovering within a second (as 2% per
/// answer did) refilled the provider's window at once, so every episode's
/// pause came back about every two seconds (measured: 93 of 200 calls/s used
/// under the `chaos` profile).
const RECOVERY_PER_SEC: f64 = 0.10;

#[derive(Clone, Debug)]
pub struct RateSettings {
    pub per_sec: f64,
    pub burst: u32,
    pub email_per_sec: Option<f64>,
    pub sms_per_sec: Option<f64>,
    pub push_per_sec: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
#[error("rate `{0}` per second is not a positive number")]
pub struct InvalidRate(f64);

/// What `429`s imposed on top of the configured rate.
#[derive(Debug)]
struct Backpressure {
    paused_until: Option<Instant>,
    /// Calls per second the provider's `429`s allow; `None` when the
    /// configured rate rules.
    imposed_rate: Option<f64>,
    /// Since when `imposed_rate` has been recovering.
    recovering_since: Instant,
    next_call: Instant,
}

impl Backpressure {
    fn gap(&self) -> Duration {
        self.imposed_rate
            .map_or(Duration::ZERO, |rate| Duration::from_secs_f64(1.0 / rate))
    }
}

pub struct Pacer {
    global: DefaultDirectRateLimiter,
    per_channel: HashMap<Channel, DefaultDirectRateLimiter>,
    /// The configured rate: where the imposed pace starts and what it recovers to.
    base_rate: f64,
    backpressure: Mutex<Backpressure>,
}

impl Pacer {
    pub fn new(settings: &RateSettings) -> Result<Self, InvalidRate> {
        let burst = NonZeroU32::new(settings.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let channel_rates = [
            (Channel::Email, settings.email_per_sec),
            (Channel::Sms, settings.sms_per_sec),
            (Channel::Push, settings.push_per_sec),
        ];
        let mut per_channel = HashMap::new();
        for (channel, rate) in channel_rates {
            if let Some(rate) = rate {
                per_channel.insert(channel, limiter(rate, NonZeroU32::MIN)?);
            }
        }
        Ok(Self {
            global: limiter(settings.per_sec, burst)?,
            per_channel,
            base_rate: settings.per_sec,
            backpressure: Mutex::new(Backpressure {
                paused_until: None,
                imposed_rate: None,
                recovering_since: Instant::now(),
                next_call: Instant::now(),
            }),
        })
    }

    /// Waits for a global slot: after any pause, at the pace `429`s imposed,
    /// and within the configured rate.
    pub async fn until_ready(&self) {
        while let Some(until) = self.pause_deadline() {
            tokio::time::sleep_until(until).await;
        }
        let slot = self.next_slot();
        tokio::time::sleep_until(slot).await;
        self.global.until_ready().await;
    }

    /// Waits for the channel's own limiter, if it has one.
    pub async fn until_channel_ready(&self, channel: Channel) {
        if let Some(limiter) = self.per_channel.get(&channel) {
            limiter.until_ready().await;
        }
    }

    /// The provider said "too many": hold every call for `retry_after` (or a
    /// second), then go on at half the pace it last accepted. The other calls
    /// in flight then tend to get a `429` too; answers that arrive while the
    /// pause holds are the same signal, so they extend the pause but do not
    /// halve the pace again.
    pub fn throttled(&self, retry_after: Option<Duration>) {
        let now = Instant::now();
        let until = now + retry_after.unwrap_or(THROTTLE_PAUSE);
        let mut state = self.lock();
        let same_episode = state.paused_until.is_some_and(|current| current > now);
        if state.paused_until.is_none_or(|current| current < until) {
            state.paused_until = Some(until);
        }
        if !same_episode {
            let slowest = 1.0 / MAX_GAP.as_secs_f64();
            let halved = state.imposed_rate.unwrap_or(self.base_rate) / 2.0;
            state.imposed_rate = Some(halved.max(slowest));
            tracing::debug!(gap = ?state.gap(), "provider throttled: slowing down");
        }
        // Recovery starts once the pause is over.
        state.recovering_since = state.paused_until.unwrap_or(now);
    }

    /// The provider answered without throttling: let the imposed pace recover
    /// for the time since the last adjustment.
    pub fn relieved(&self) {
        let now = Instant::now();
        let mut state = self.lock();
        let Some(rate) = state.imposed_rate else {
            return;
        };
        let seconds = now.saturating_duration_since(state.recovering_since);
        if seconds.is_zero() {
            return;
        }
        let recovered = rate * (1.0 + RECOVERY_PER_SEC).powf(seconds.as_secs_f64());
        state.imposed_rate = (recovered < self.base_rate).then_some(recovered);
        state.recovering_since = now;
    }

    /// The least time between calls that `429`s currently impose.
    #[cfg(test)]
    pub fn imposed_gap(&self) -> Duration {
        self.lock().gap()
    }

    fn pause_deadline(&self) -> Option<Instant> {
        let mut state = self.lock();
        match state.paused_until {
            Some(until) if until > Instant::now() => Some(until),
            _ => {
                state.paused_until = None;
                None
            }
        }
    }

    /// Reserves the next call's moment under the imposed gap.
    fn next_slot(&self) -> Instant {
        let mut state = self.lock();
        let slot = state.next_call.max(Instant::now());
        state.next_call = slot + state.gap();
        slot
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Backpressure> {
        self.backpressure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait::async_trait]
impl crate::store::RateGate for Pacer {
    async fn until_ready(&self) {
        Pacer::until_ready(self).await
    }

    async fn until_channel_ready(&self, channel: Channel) {
        Pacer::until_channel_ready(self, channel).await
    }

    fn throttled(&self, retry_after: Option<Duration>) {
        Pacer::throttled(self, retry_after)
    }

    fn relieved(&self) {
        Pacer::relieved(self)
    }
}

fn limiter(per_sec: f64, burst: NonZeroU32) -> Result<DefaultDirectRateLimiter, InvalidRate> {
    if !(per_sec.is_finite() && per_sec > 0.0) {
        return Err(InvalidRate(per_sec));
    }
    let period = Duration::from_secs_f64(1.0 / per_sec);
    let quota = Quota::with_period(period).ok_or(InvalidRate(per_sec))?;
    Ok(RateLimiter::direct(quota.allow_burst(burst)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(per_sec: f64) -> RateSettings {
        RateSettings {
            per_sec,
            burst: 1,
            email_per_sec: None,
            sms_per_sec: Some(2.0),
            push_per_sec: None,
        }
    }

    #[test]
    fn refuses_rates_that_are_not_positive() {
        assert!(Pacer::new(&settings(0.0)).is_err());
        assert!(Pacer::new(&settings(f64::NAN)).is_err());
        assert!(Pacer::new(&settings(5.0)).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_pauses_every_caller_for_its_retry_after() {
        let pacer = Pacer::new(&settings(1000.0)).unwrap();
        pacer.throttled(Some(Duration::from_secs(2)));
        pacer.throttled(Some(Duration::from_millis(10))); // never shortens a longer pause
        let started = Instant::now();
        pacer.until_ready().await;
        assert!(started.elapsed() >= Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn each_429_halves_the_pace_and_it_recovers_over_time() {
        let pacer = Pacer::new(&settings(100.0)).unwrap(); // 10 ms apart
        assert_eq!(pacer.imposed_gap(), Duration::ZERO);
        pacer.throttled(Some(Duration::ZERO));
        assert_eq!(pacer.imposed_gap(), Duration::from_millis(20));
        tokio::time::advance(Duration::from_millis(1)).await;
        pacer.throttled(Some(Duration::ZERO));
        assert_eq!(pacer.imposed_gap(), Duration::from_millis(40));

        let started = Instant::now();
        for _ in 0..3 {
            pacer.until_ready().await;
        }
        assert!(
            started.elapsed() >= Duration::from_millis(80),
            "calls keep the imposed gap"
        );

        tokio::time::advance(Duration::from_secs(5)).await;
        pacer.relieved(); // 25/s × 1.1^5 ≈ 40/s
        let gap = pacer.imposed_gap();
        assert!(
            gap > Duration::from_millis(20) && gap < Duration::from_millis(30),
            "recovering gradually: {gap:?}"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        pacer.relieved();
        assert_eq!(
            pacer.imposed_gap(),
            Duration::ZERO,
            "back to the configured rate"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_429s_of_one_episode_halve_the_pace_once() {
        let pacer = Pacer::new(&settings(100.0)).unwrap();
        for _ in 0..16 {
            pacer.throttled(Some(Duration::from_secs(1))); // every call in flight
        }
        assert_eq!(pacer.imposed_gap(), Duration::from_millis(20));
    }

    #[tokio::test(start_paused = true)]
    async fn the_imposed_pace_has_a_floor() {
        let pacer = Pacer::new(&settings(100.0)).unwrap();
        for _ in 0..64 {
            pacer.throttled(Some(Duration::ZERO));
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(pacer.imposed_gap(), MAX_GAP);
    }
}
