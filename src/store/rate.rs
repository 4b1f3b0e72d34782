//! A provider's rate limit in the form providers publish it: N calls per
//! sliding window W (`50/10s`), parsed from `--rate-limit`, and the
//! `--rate-per-sec` shorthand expressed in the same form; with the
//! per-channel limits, the settings every engine's rate gate starts from.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::domain::Channel;

/// At most `calls` calls in any sliding window of `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub calls: u32,
    pub window: Duration,
}

/// The reference provider's published limit.
pub const REFERENCE_LIMIT: RateLimit = RateLimit {
    calls: 50,
    window: Duration::from_secs(10),
};

#[derive(Clone, Debug)]
pub struct RateSettings {
    /// The provider's limit: at most this many calls in any sliding window.
    pub limit: Option<RateLimit>,
    /// The shorthand: calls per second, `burst` of them back to back.
    pub per_sec: Option<f64>,
    pub burst: u32,
    pub email_per_sec: Option<f64>,
    pub sms_per_sec: Option<f64>,
    pub push_per_sec: Option<f64>,
}

impl RateSettings {
    /// The limit, else the shorthand's, else the reference provider's.
    pub fn limit(&self) -> Result<RateLimit, InvalidRate> {
        match (self.limit, self.per_sec) {
            (Some(limit), _) => Ok(limit),
            (None, Some(per_sec)) => RateLimit::per_second(per_sec, self.burst),
            (None, None) => Ok(REFERENCE_LIMIT),
        }
    }

    /// The channels with a limit of their own, and its calls per second.
    pub fn per_channel(&self) -> impl Iterator<Item = (Channel, f64)> {
        [
            (Channel::Email, self.email_per_sec),
            (Channel::Sms, self.sms_per_sec),
            (Channel::Push, self.push_per_sec),
        ]
        .into_iter()
        .filter_map(|(channel, rate)| Some((channel, rate?)))
    }
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum InvalidRate {
    #[error("rate `{0}` per second is not a positive number")]
    PerSecond(f64),
    #[error(
        "rate limit `{0}` is not N/W with N ≥ 1 calls and a window W above zero (e.g. 50/10s, 5/1s, 1/200ms)"
    )]
    Limit(String),
}

impl RateLimit {
    /// `per_sec` calls a second with up to `burst` back to back: `burst` calls
    /// per `burst / per_sec` seconds, so the long-run rate is `per_sec`.
    pub fn per_second(per_sec: f64, burst: u32) -> Result<Self, InvalidRate> {
        if !(per_sec.is_finite() && per_sec > 0.0) {
            return Err(InvalidRate::PerSecond(per_sec));
        }
        let calls = burst.max(1);
        let window = Duration::try_from_secs_f64(f64::from(calls) / per_sec)
            .ok()
            .filter(|window| !window.is_zero())
            .ok_or(InvalidRate::PerSecond(per_sec))?;
        Ok(Self { calls, window })
    }

    /// The long-run rate the limit allows, in calls per second.
    pub fn per_sec(&self) -> f64 {
        f64::from(self.calls) / self.window.as_secs_f64()
    }
}

/// `N/W`: a count, a slash, and a window with a unit (`ms`, `s`, `m`; a bare
/// number is seconds).
impl FromStr for RateLimit {
    type Err = InvalidRate;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidRate::Limit(text.to_string());
        let (calls, window) = text.trim().split_once('/').ok_or_else(invalid)?;
        let calls: u32 = calls.trim().parse().map_err(|_| invalid())?;
        let window = window.trim();
        let (number, unit_secs) = if let Some(ms) = window.strip_suffix("ms") {
            (ms, 0.001)
        } else if let Some(secs) = window.strip_suffix('s') {
            (secs, 1.0)
        } else if let Some(minutes) = window.strip_suffix('m') {
            (minutes, 60.0)
        } else {
            (window, 1.0)
        };
        let number: f64 = number.trim().parse().map_err(|_| invalid())?;
        let window = Duration::try_from_secs_f64(number * unit_secs).map_err(|_| invalid())?;
        if calls == 0 || window.is_zero() {
            return Err(invalid());
        }
        Ok(Self { calls, window })
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{:?}", self.calls, self.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(calls: u32, window_ms: u64) -> RateLimit {
        RateLimit {
            calls,
            window: Duration::from_millis(window_ms),
        }
    }

    #[test]
    fn parses_the_forms_providers_publish() {
        assert_eq!("50/10s".parse(), Ok(limit(50, 10_000)));
        assert_eq!(" 5 / 1s ".parse(), Ok(limit(5, 1_000)));
        assert_eq!("1/200ms".parse(), Ok(limit(1, 200)));
        assert_eq!("600/1m".parse(), Ok(limit(600, 60_000)));
        assert_eq!("3/0.5".parse(), Ok(limit(3, 500)));
        assert_eq!(REFERENCE_LIMIT.to_string(), "50/10s");
    }

    #[test]
    fn refuses_what_is_not_a_limit() {
        for text in [
            "", "50", "0/10s", "-1/10s", "50/0s", "50/-1s", "50/ten", "50/10h", "x/1s",
        ] {
            assert!(text.parse::<RateLimit>().is_err(), "{text:?}");
        }
    }

    #[test]
    fn the_shorthand_keeps_the_rate_and_bounds_the_burst() {
        let shorthand = RateLimit::per_second(4.8, 1).unwrap();
        assert_eq!(shorthand.calls, 1);
        assert!((shorthand.per_sec() - 4.8).abs() < 1e-6);
        let burst = RateLimit::per_second(1_000.0, 100).unwrap();
        assert_eq!(burst, limit(100, 100));
        assert_eq!(RateLimit::per_second(5.0, 0).unwrap(), limit(1, 200));
        assert!(RateLimit::per_second(0.0, 1).is_err());
        assert!(RateLimit::per_second(f64::NAN, 1).is_err());
        assert!(RateLimit::per_second(f64::INFINITY, 1).is_err());
        assert_eq!(REFERENCE_LIMIT.per_sec(), 5.0);
    }
}
