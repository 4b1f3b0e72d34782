//! The simulator's named behaviours (`--profile`): each is a complete
//! [`SimConfig`] that individual flags then adjust. `reference` is the
//! reference provider and `misconfigured` the same with less capacity; the
//! others start from `healthy` and add one kind of trouble; `chaos` adds every
//! kind, milder.

use std::fmt;
use std::time::Duration;

use clap::ValueEnum;

use super::{ErrorStatuses, OutagePlan, SimConfig};

const HEALTHY_LATENCY_MIN_MS: u64 = 20;
const HEALTHY_LATENCY_MAX_MS: u64 = 80;
/// Far more than any local run sends: capacity is never what limits `healthy`.
const HEALTHY_WINDOW_CALLS: u32 = 1_000_000;
const HEALTHY_MAX_CONCURRENT: usize = 10_000;

const FLAKY_ERROR_RATE: f64 = 0.3;

const THROTTLED_CALLS_PER_SEC: u32 = 100;
const THROTTLED_RETRY_AFTER_SECS: u64 = 1;

/// Share of calls `per-recipient` refuses whatever the pace, as per-recipient
/// (or per-destination) limits do: the figure of the issue this reproduces.
const PER_RECIPIENT_REFUSAL_RATE: f64 = 0.1;
const PER_RECIPIENT_RETRY_AFTER_SECS: u64 = 1;

/// `misconfigured`'s capacity per sliding 10 s: 10 calls a second, below the
/// 20 a second Herald is told in the measurements (BENCHMARKS.md).
const MISCONFIGURED_WINDOW_CALLS: u32 = 100;

const SLOW_STALL_RATE: f64 = 0.05;
/// Past Herald's default 10 s request timeout, so a stalled call times out.
const STALL_MS: u64 = 15_000;

const OUTAGE_AFTER: Duration = Duration::from_secs(30);
const OUTAGE_DURATION: Duration = Duration::from_secs(10);
const OUTAGE_EVERY: Duration = Duration::from_secs(60);

const CHAOS_ERROR_RATE: f64 = 0.1;
const CHAOS_CALLS_PER_SEC: u32 = 200;
const CHAOS_STALL_RATE: f64 = 0.002;
const CHAOS_OUTAGE_DURATION: Duration = Duration::from_secs(5);

/// A named provider behaviour.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Profile {
    /// The reference provider: 50 calls per sliding 10 s (then 429 without
    /// Retry-After), 50 at once, 100-500 ms, 10% of admitted calls answer 500.
    #[default]
    Reference,
    /// reference, but 100 calls per sliding 10 s: less than Herald is told
    /// when its limit is misconfigured (say 20/s).
    Misconfigured,
    /// 20-80 ms, no errors, capacity to spare.
    Healthy,
    /// healthy, but 30% of calls answer 500, 502 or 503.
    Flaky,
    /// healthy, but calls beyond 100 in any second get 429 with Retry-After: 1.
    Throttled,
    /// healthy, but 10% of calls get 429 with Retry-After: 1 at any pace (as
    /// per-recipient limits answer): slowing down does not reduce them.
    PerRecipient,
    /// healthy, but 5% of calls stall for 15 s (past Herald's 10 s timeout).
    Slow,
    /// healthy, but the port refuses connections for 10 s, 30 s after the start and every 60 s.
    Outage,
    /// all of the above, milder: 10% 500/502/503, 429 + Retry-After: 1 beyond 200
    /// calls a second, 0.2% stalls of 15 s, a 5 s outage at 30 s and every 60 s.
    Chaos,
}

impl Profile {
    /// Every setting of this profile.
    pub fn config(self) -> SimConfig {
        match self {
            Self::Reference => SimConfig::default(),
            Self::Misconfigured => SimConfig {
                window_calls: MISCONFIGURED_WINDOW_CALLS,
                ..SimConfig::default()
            },
            Self::Healthy => healthy(),
            Self::Flaky => SimConfig {
                error_rate: FLAKY_ERROR_RATE,
                error_statuses: ErrorStatuses::SERVER_ERRORS,
                ..healthy()
            },
            Self::Throttled => SimConfig {
                window_calls: THROTTLED_CALLS_PER_SEC,
                window_secs: 1,
                retry_after_secs: Some(THROTTLED_RETRY_AFTER_SECS),
                ..healthy()
            },
            Self::PerRecipient => SimConfig {
                throttle_rate: PER_RECIPIENT_REFUSAL_RATE,
                retry_after_secs: Some(PER_RECIPIENT_RETRY_AFTER_SECS),
                ..healthy()
            },
            Self::Slow => SimConfig {
                stall_rate: SLOW_STALL_RATE,
                stall_ms: STALL_MS,
                ..healthy()
            },
            Self::Outage => SimConfig {
                outages: Some(outages_of(OUTAGE_DURATION)),
                ..healthy()
            },
            Self::Chaos => SimConfig {
                error_rate: CHAOS_ERROR_RATE,
                error_statuses: ErrorStatuses::SERVER_ERRORS,
                window_calls: CHAOS_CALLS_PER_SEC,
                window_secs: 1,
                retry_after_secs: Some(THROTTLED_RETRY_AFTER_SECS),
                stall_rate: CHAOS_STALL_RATE,
                stall_ms: STALL_MS,
                outages: Some(outages_of(CHAOS_OUTAGE_DURATION)),
                ..healthy()
            },
        }
    }
}

/// The name `--profile` takes.
impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_possible_value() {
            Some(value) => f.write_str(value.get_name()),
            None => write!(f, "{self:?}"),
        }
    }
}

/// Fast, error-free and never short of capacity.
fn healthy() -> SimConfig {
    SimConfig {
        window_calls: HEALTHY_WINDOW_CALLS,
        window_secs: 1,
        max_concurrent: HEALTHY_MAX_CONCURRENT,
        latency_min_ms: HEALTHY_LATENCY_MIN_MS,
        latency_max_ms: HEALTHY_LATENCY_MAX_MS,
        error_rate: 0.0,
        ..SimConfig::default()
    }
}

/// Outages of `duration`, `OUTAGE_AFTER` the start and every `OUTAGE_EVERY`.
fn outages_of(duration: Duration) -> Box<OutagePlan> {
    Box::new(OutagePlan {
        after: OUTAGE_AFTER,
        duration,
        every: Some(OUTAGE_EVERY),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chaos_has_every_kind_of_trouble() {
        let chaos = Profile::Chaos.config();
        assert!(chaos.error_rate > 0.0 && chaos.stall_rate > 0.0);
        assert_eq!(chaos.error_statuses.statuses(), [500, 502, 503]);
        assert!(chaos.retry_after_secs.is_some());
        assert!(chaos.outages.is_some_and(|plan| plan.every.is_some()));
    }

    #[test]
    fn reference_and_misconfigured_fail_a_tenth_of_admitted_calls() {
        for profile in [Profile::Reference, Profile::Misconfigured] {
            let config = profile.config();
            assert_eq!(config.error_rate, 0.1, "{profile}");
            assert_eq!(config.error_statuses.statuses(), [500], "{profile}");
            assert_eq!(config.retry_after_secs, None, "{profile}");
        }
        let (reference, misconfigured) =
            (Profile::Reference.config(), Profile::Misconfigured.config());
        assert_eq!(reference.window_calls, 50);
        assert_eq!(misconfigured.window_calls, 100);
        assert_eq!(misconfigured.window_secs, reference.window_secs);
    }

    #[test]
    fn per_recipient_refuses_a_share_whatever_the_capacity() {
        let config = Profile::PerRecipient.config();
        assert_eq!(config.throttle_rate, 0.1);
        assert_eq!(config.retry_after_secs, Some(1));
        assert_eq!(config.error_rate, 0.0);
        assert_eq!(config.window_calls, HEALTHY_WINDOW_CALLS);
    }

    #[test]
    fn names_are_the_flag_values() {
        assert_eq!(Profile::Chaos.to_string(), "chaos");
        assert_eq!(Profile::default().to_string(), "reference");
        assert_eq!(Profile::PerRecipient.to_string(), "per-recipient");
    }
}
