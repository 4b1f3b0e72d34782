//! The simulator's knobs: one [`SimConfig`], usable as CLI flags (each with a
//! `SIM_*` environment variable) and, through [`Default`], as the reference
//! provider's published behaviour.
//!
//! On the command line a `--profile` supplies every setting and each flag or
//! variable given explicitly overrides its own setting; `SimArgs` is that
//! command line (every setting optional) and resolves to a [`SimConfig`].

use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::{ArgMatches, Args, FromArgMatches};

use super::profile::Profile;
use super::{ErrorStatuses, OutagePlan};
use crate::domain::Channel;
use crate::secret::Secret;

const DEFAULT_API_KEY: &str = "test-dev-2026";
const DEFAULT_WINDOW_CALLS: u32 = 50;
const DEFAULT_WINDOW_SECS: u64 = 10;
const DEFAULT_MAX_CONCURRENT: usize = 50;
const DEFAULT_LATENCY_MIN_MS: u64 = 100;
const DEFAULT_LATENCY_MAX_MS: u64 = 500;
/// The reference provider's published source answers 500 to 10% of admitted
/// calls (measured 8.7-12.4% over runs).
const DEFAULT_ERROR_RATE: f64 = 0.1;
const DEFAULT_STALL_MS: u64 = 30_000;
const DEFAULT_FAIL_STATUS: u16 = 500;
const DEFAULT_OUTAGE: Duration = Duration::from_secs(10);

/// How the simulated provider behaves. The defaults are the reference provider's.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// API key callers must send in `X-API-Key`; `Debug` prints it as `****`.
    pub api_key: Secret,
    /// Calls admitted in any sliding window, across all callers; beyond that the answer is 429.
    pub window_calls: u32,
    /// Length of the sliding rate-limit window, in seconds.
    pub window_secs: u64,
    /// Calls served at once; more wait for a free slot.
    pub max_concurrent: usize,
    /// Shortest time an admitted call takes, in milliseconds.
    pub latency_min_ms: u64,
    /// Longest time an admitted call takes, in milliseconds (uniform in between).
    pub latency_max_ms: u64,
    /// Share (0.0-1.0) of admitted calls answered with one of `error_statuses`.
    pub error_rate: f64,
    /// The statuses an erroring call answers, drawn uniformly.
    pub error_statuses: ErrorStatuses,
    /// Share (0.0-1.0) of calls answered 429 whatever the window holds.
    pub throttle_rate: f64,
    /// Seconds to send in `Retry-After` with every 429; `None` sends no such header.
    pub retry_after_secs: Option<u64>,
    /// Share (0.0-1.0) of admitted calls that stall for `stall_ms` before answering.
    pub stall_rate: f64,
    /// How long a stalled call takes, in milliseconds.
    pub stall_ms: u64,
    /// Notification types accepted; any other type is refused with 422.
    pub accepted_types: Vec<Channel>,
    /// The first N calls of each request id are answered `fail_status`.
    pub fail_first: u32,
    /// Status answered to the first `fail_first` calls of each request id.
    pub fail_status: u16,
    /// When the port refuses connections; `None`: never. Boxed because
    /// `herald dev`'s command holds this config, and an enum variant that
    /// large would make clippy ask for boxes there.
    pub outages: Option<Box<OutagePlan>>,
    /// Seed for every random draw, so a run can be replayed; random when absent.
    pub seed: Option<u64>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            api_key: Secret::from(DEFAULT_API_KEY),
            window_calls: DEFAULT_WINDOW_CALLS,
            window_secs: DEFAULT_WINDOW_SECS,
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            latency_min_ms: DEFAULT_LATENCY_MIN_MS,
            latency_max_ms: DEFAULT_LATENCY_MAX_MS,
            error_rate: DEFAULT_ERROR_RATE,
            error_statuses: ErrorStatuses::REFERENCE,
            throttle_rate: 0.0,
            retry_after_secs: None,
            stall_rate: 0.0,
            stall_ms: DEFAULT_STALL_MS,
            accepted_types: Channel::ALL.to_vec(),
            fail_first: 0,
            fail_status: DEFAULT_FAIL_STATUS,
            outages: None,
            seed: None,
        }
    }
}

/// `SimConfig` as flags: `SimArgs`' flags, resolved against the chosen profile.
impl Args for SimConfig {
    fn augment_args(command: clap::Command) -> clap::Command {
        SimArgs::augment_args(command)
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        SimArgs::augment_args_for_update(command)
    }
}

impl FromArgMatches for SimConfig {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        SimArgs::from_arg_matches(matches).map(SimArgs::resolve)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

/// The simulator's command line. Every setting is optional: one left out
/// takes the profile's value, so a flag changes exactly what it names.
#[derive(Debug, Args)]
struct SimArgs {
    /// Named behaviour every setting below starts from; a flag (or its SIM_*
    /// variable) given explicitly overrides that one setting.
    #[arg(long, env = "SIM_PROFILE", value_enum, default_value_t)]
    profile: Profile,

    /// API key callers must send in `X-API-Key` [default: test-dev-2026].
    #[arg(long, env = "PROVIDER_API_KEY", hide_env_values = true)]
    api_key: Option<Secret>,

    /// Calls admitted in any sliding window, across all callers; beyond that the answer is 429.
    #[arg(long, env = "SIM_WINDOW_CALLS")]
    window_calls: Option<u32>,

    /// Length of the sliding rate-limit window, in seconds.
    #[arg(long, env = "SIM_WINDOW_SECS")]
    window_secs: Option<u64>,

    /// Calls served at once; more wait for a free slot.
    #[arg(long, env = "SIM_MAX_CONCURRENT",
          value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    max_concurrent: Option<usize>,

    /// Shortest time an admitted call takes, in milliseconds.
    #[arg(long, env = "SIM_LATENCY_MIN_MS")]
    latency_min_ms: Option<u64>,

    /// Longest time an admitted call takes, in milliseconds (latency is uniform in between).
    #[arg(long, env = "SIM_LATENCY_MAX_MS")]
    latency_max_ms: Option<u64>,

    /// Share (0.0-1.0) of admitted calls answered with an error status.
    #[arg(long, env = "SIM_ERROR_RATE", value_parser = parse_share)]
    error_rate: Option<f64>,

    /// Statuses an erroring call answers, drawn uniformly (comma-separated,
    /// from 500, 502, 503 and 504).
    #[arg(long, env = "SIM_ERROR_STATUSES")]
    error_statuses: Option<ErrorStatuses>,

    /// Share (0.0-1.0) of calls answered 429 whatever the window holds.
    #[arg(long, env = "SIM_THROTTLE_RATE", value_parser = parse_share)]
    throttle_rate: Option<f64>,

    /// Seconds to send in `Retry-After` with every 429 (the reference provider sends none).
    #[arg(long, env = "SIM_RETRY_AFTER_SECS")]
    retry_after_secs: Option<u64>,

    /// Share (0.0-1.0) of admitted calls that stall for `stall-ms` before answering.
    #[arg(long, env = "SIM_STALL_RATE", value_parser = parse_share)]
    stall_rate: Option<f64>,

    /// How long a stalled call takes, in milliseconds.
    #[arg(long, env = "SIM_STALL_MS")]
    stall_ms: Option<u64>,

    /// Notification types accepted (comma-separated); any other type is refused with 422.
    #[arg(long, env = "SIM_ACCEPTED_TYPES", value_delimiter = ',')]
    accepted_types: Option<Vec<Channel>>,

    /// The first N calls of each request id are answered `fail-status`.
    #[arg(long, env = "SIM_FAIL_FIRST")]
    fail_first: Option<u32>,

    /// Status answered to the first `fail-first` calls of each request id.
    #[arg(long, env = "SIM_FAIL_STATUS", value_parser = clap::value_parser!(u16).range(100..=599))]
    fail_status: Option<u16>,

    /// Seconds after the start when the port begins refusing connections (fractions allowed).
    #[arg(long = "outage-after-secs", env = "SIM_OUTAGE_AFTER_SECS", value_parser = parse_secs)]
    outage_after: Option<Duration>,

    /// Seconds each outage lasts; then the port is bound again [default: 10].
    #[arg(long = "outage-secs", env = "SIM_OUTAGE_SECS", value_parser = parse_secs)]
    outage_duration: Option<Duration>,

    /// Seconds from one outage's start to the next; without it there is one outage.
    #[arg(long = "outage-every-secs", env = "SIM_OUTAGE_EVERY_SECS", value_parser = parse_period)]
    outage_every: Option<Duration>,

    /// Seed for every random draw, so a run can be replayed; random when absent.
    #[arg(long, env = "SIM_SEED")]
    seed: Option<u64>,
}

impl SimArgs {
    /// The profile's settings, with every setting given explicitly put over them.
    fn resolve(self) -> SimConfig {
        let profile = self.profile.config();
        let outages = self.outages(profile.outages.as_deref().copied());
        SimConfig {
            api_key: self.api_key.unwrap_or(profile.api_key),
            window_calls: self.window_calls.unwrap_or(profile.window_calls),
            window_secs: self.window_secs.unwrap_or(profile.window_secs),
            max_concurrent: self.max_concurrent.unwrap_or(profile.max_concurrent),
            latency_min_ms: self.latency_min_ms.unwrap_or(profile.latency_min_ms),
            latency_max_ms: self.latency_max_ms.unwrap_or(profile.latency_max_ms),
            error_rate: self.error_rate.unwrap_or(profile.error_rate),
            error_statuses: self.error_statuses.unwrap_or(profile.error_statuses),
            throttle_rate: self.throttle_rate.unwrap_or(profile.throttle_rate),
            retry_after_secs: self.retry_after_secs.or(profile.retry_after_secs),
            stall_rate: self.stall_rate.unwrap_or(profile.stall_rate),
            stall_ms: self.stall_ms.unwrap_or(profile.stall_ms),
            accepted_types: self.accepted_types.unwrap_or(profile.accepted_types),
            fail_first: self.fail_first.unwrap_or(profile.fail_first),
            fail_status: self.fail_status.unwrap_or(profile.fail_status),
            outages,
            seed: self.seed.or(profile.seed),
        }
    }

    /// The profile's outages with the outage flags put over them; none
    /// unless one of the two says when the first starts.
    fn outages(&self, profile: Option<OutagePlan>) -> Option<Box<OutagePlan>> {
        let after = self.outage_after.or(profile.map(|plan| plan.after))?;
        Some(Box::new(OutagePlan {
            after,
            duration: (self.outage_duration)
                .or(profile.map(|plan| plan.duration))
                .unwrap_or(DEFAULT_OUTAGE),
            every: self.outage_every.or(profile.and_then(|plan| plan.every)),
        }))
    }
}

/// Parses a share of calls, refusing anything outside 0.0..=1.0.
fn parse_share(text: &str) -> Result<f64, String> {
    let share: f64 = text
        .parse()
        .map_err(|e| format!("`{text}` is not a number: {e}"))?;
    if (0.0..=1.0).contains(&share) {
        Ok(share)
    } else {
        Err(format!("`{text}` is not a share between 0.0 and 1.0"))
    }
}

/// Parses a number of seconds, fractions allowed (`1.5`).
fn parse_secs(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|e| format!("`{text}` is not a number: {e}"))?;
    Duration::try_from_secs_f64(secs).map_err(|e| format!("`{text}` is not a duration: {e}"))
}

/// Parses a repeat period: seconds, above zero (a zero period would never serve).
fn parse_period(text: &str) -> Result<Duration, String> {
    let period = parse_secs(text)?;
    if period.is_zero() {
        Err(format!("`{text}`: the period must be above zero"))
    } else {
        Ok(period)
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser, ValueEnum};

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimConfig,
    }

    /// Parses `args` with the environment variables switched off, so the
    /// machine running the tests cannot shift the result.
    fn parse(args: &[&str]) -> Result<SimConfig, clap::Error> {
        let matches = Cli::command()
            .mut_args(|arg| arg.env(None::<&str>))
            .try_get_matches_from(args)?;
        SimConfig::from_arg_matches(&matches)
    }

    fn debug(config: &SimConfig) -> String {
        format!("{config:?}")
    }

    #[test]
    fn the_key_never_shows_in_debug_output() {
        let config = parse(&["sim", "--api-key", "s3cr3t-value"]).unwrap();
        assert_eq!(config.api_key.expose(), "s3cr3t-value");
        assert!(!debug(&config).contains("s3cr3t"), "{}", debug(&config));
    }

    #[test]
    fn flag_defaults_match_default() {
        let parsed = parse(&["sim"]).unwrap();
        assert_eq!(debug(&parsed), debug(&SimConfig::default()));
    }

    #[test]
    fn flags_parse_types_and_shares() {
        let sim = parse(&[
            "sim",
            "--accepted-types",
            "email,sms",
            "--error-rate",
            "0.25",
            "--error-statuses",
            "502,503",
            "--retry-after-secs",
            "3",
            "--outage-after-secs",
            "1.5",
        ])
        .unwrap();
        assert_eq!(sim.accepted_types, vec![Channel::Email, Channel::Sms]);
        assert_eq!(sim.error_rate, 0.25);
        assert_eq!(sim.error_statuses.statuses(), [502, 503]);
        assert_eq!(sim.retry_after_secs, Some(3));
        let outages = sim.outages.unwrap();
        assert_eq!(outages.after, Duration::from_millis(1_500));
        assert_eq!((outages.duration, outages.every), (DEFAULT_OUTAGE, None));
        assert!(parse(&["sim", "--error-rate", "1.5"]).is_err());
        assert!(parse(&["sim", "--accepted-types", "fax"]).is_err());
        assert!(parse(&["sim", "--max-concurrent", "0"]).is_err());
        assert!(parse(&["sim", "--error-statuses", "500,418"]).is_err());
        assert!(parse(&["sim", "--outage-secs", "soon"]).is_err());
        assert!(parse(&["sim", "--outage-every-secs", "0"]).is_err());
    }

    #[test]
    fn a_profile_alone_gives_its_settings() {
        for profile in Profile::value_variants() {
            let parsed = parse(&["sim", "--profile", &profile.to_string()]).unwrap();
            assert_eq!(debug(&parsed), debug(&profile.config()), "{profile}");
        }
    }

    #[test]
    fn outage_flags_adjust_the_profiles_outages_or_make_new_ones() {
        let shorter = parse(&["sim", "--profile", "outage", "--outage-secs", "2"]).unwrap();
        let expected = OutagePlan {
            duration: Duration::from_secs(2),
            ..*Profile::Outage.config().outages.unwrap()
        };
        assert_eq!(shorter.outages.as_deref(), Some(&expected));
        assert!(
            parse(&["sim", "--outage-secs", "2"])
                .unwrap()
                .outages
                .is_none()
        );
    }

    #[test]
    fn explicit_flags_override_only_their_own_setting() {
        let sim = parse(&[
            "sim",
            "--profile",
            "flaky",
            "--error-rate",
            "0.5",
            "--seed",
            "9",
        ])
        .unwrap();
        let expected = SimConfig {
            error_rate: 0.5,
            seed: Some(9),
            ..Profile::Flaky.config()
        };
        assert_eq!(debug(&sim), debug(&expected));
    }
}
