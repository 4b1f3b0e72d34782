//! Pacing provider calls: a global governor rate limiter, optional per-channel
//! limiters on top, and a pause that a `429` imposes on every caller.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

use crate::domain::Channel;

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

pub struct Pacer {
    global: DefaultDirectRateLimiter,
    per_channel: HashMap<Channel, DefaultDirectRateLimiter>,
    paused_until: Mutex<Option<Instant>>,
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
            paused_until: Mutex::new(None),
        })
    }

    /// Waits for a global slot, after any pause a `429` imposed.
    pub async fn until_ready(&self) {
        while let Some(until) = self.pause_deadline() {
            tokio::time::sleep_until(until).await;
        }
        self.global.until_ready().await;
    }

    /// Waits for the channel's own limiter, if it has one.
    pub async fn until_channel_ready(&self, channel: Channel) {
        if let Some(limiter) = self.per_channel.get(&channel) {
            limiter.until_ready().await;
        }
    }

    /// The provider said "too many": hold every new call for `pause`.
    pub fn pause(&self, pause: Duration) {
        let until = Instant::now() + pause;
        let mut paused = self.lock();
        if paused.is_none_or(|current| current < until) {
            *paused = Some(until);
        }
    }

    fn pause_deadline(&self) -> Option<Instant> {
        let mut paused = self.lock();
        match *paused {
            Some(until) if until > Instant::now() => Some(until),
            _ => {
                *paused = None;
                None
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.paused_until
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
    async fn a_pause_holds_callers_until_it_ends() {
        let pacer = Pacer::new(&settings(1000.0)).unwrap();
        pacer.pause(Duration::from_secs(2));
        pacer.pause(Duration::from_millis(10)); // a shorter pause never shortens a longer one
        let started = Instant::now();
        pacer.until_ready().await;
        assert!(started.elapsed() >= Duration::from_secs(2));
    }
}
