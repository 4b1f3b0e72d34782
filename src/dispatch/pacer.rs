//! Pacing provider calls: a global governor rate limiter, optional per-channel
//! limiters on top, and the backpressure `429`s impose on every caller: a pause
//! (the `Retry-After`, or a second), then a slower pace that each further `429`
//! halves and each other answer eases back towards the configured rate.

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
/// How much each answer that is not a `429` shortens the imposed gap.
const EASE_FACTOR: f64 = 0.98;

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
    /// Least time between two calls; zero when the configured rate rules.
    gap: Duration,
    next_call: Instant,
}

pub struct Pacer {
    global: DefaultDirectRateLimiter,
    per_channel: HashMap<Channel, DefaultDirectRateLimiter>,
    /// The configured rate's own spacing: the gap's starting point and floor.
    base_gap: Duration,
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
            base_gap: Duration::from_secs_f64(1.0 / settings.per_sec),
            backpressure: Mutex::new(Backpressure {
                paused_until: None,
                gap: Duration::ZERO,
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
            state.gap = (state.gap * 2).max(self.base_gap * 2).min(MAX_GAP);
            tracing::debug!(gap = ?state.gap, "provider throttled: slowing down");
        }
    }

    /// The provider answered without throttling: ease the imposed pace back.
    pub fn relieved(&self) {
        let mut state = self.lock();
        if state.gap.is_zero() {
            return;
        }
        let eased = state.gap.mul_f64(EASE_FACTOR);
        state.gap = if eased <= self.base_gap {
            Duration::ZERO
        } else {
            eased
        };
    }

    /// The least time between calls that `429`s currently impose.
    pub fn imposed_gap(&self) -> Duration {
        self.lock().gap
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
        state.next_call = slot + state.gap;
        slot
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Backpressure> {
        self.backpressure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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
    async fn each_429_halves_the_pace_and_other_answers_ease_it_back() {
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

        for _ in 0..200 {
            pacer.relieved();
        }
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
