//! The simulator's knobs: one [`SimConfig`], usable as CLI flags (each with a
//! `SIM_*` environment variable) and, through [`Default`], as the reference
//! provider's published behaviour.

use clap::Args;
use clap::builder::TypedValueParser;

use crate::domain::Channel;

const DEFAULT_API_KEY: &str = "test-dev-2026";
const DEFAULT_WINDOW_CALLS: u32 = 50;
const DEFAULT_WINDOW_SECS: u64 = 10;
const DEFAULT_MAX_CONCURRENT: usize = 50;
const DEFAULT_LATENCY_MIN_MS: u64 = 100;
const DEFAULT_LATENCY_MAX_MS: u64 = 500;
const DEFAULT_STALL_MS: u64 = 30_000;
const DEFAULT_FAIL_STATUS: u16 = 500;

/// How the simulated provider behaves. The defaults are the reference provider's.
#[derive(Clone, Debug, Args)]
pub struct SimConfig {
    /// API key callers must send in `X-API-Key`.
    #[arg(long, env = "PROVIDER_API_KEY", default_value = DEFAULT_API_KEY)]
    pub api_key: String,

    /// Calls admitted in any sliding window, across all callers; beyond that the answer is 429.
    #[arg(long, env = "SIM_WINDOW_CALLS", default_value_t = DEFAULT_WINDOW_CALLS)]
    pub window_calls: u32,

    /// Length of the sliding rate-limit window, in seconds.
    #[arg(long, env = "SIM_WINDOW_SECS", default_value_t = DEFAULT_WINDOW_SECS)]
    pub window_secs: u64,

    /// Calls served at once; more wait for a free slot.
    #[arg(long, env = "SIM_MAX_CONCURRENT", default_value_t = DEFAULT_MAX_CONCURRENT,
          value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    pub max_concurrent: usize,

    /// Shortest time an admitted call takes, in milliseconds.
    #[arg(long, env = "SIM_LATENCY_MIN_MS", default_value_t = DEFAULT_LATENCY_MIN_MS)]
    pub latency_min_ms: u64,

    /// Longest time an admitted call takes, in milliseconds (latency is uniform in between).
    #[arg(long, env = "SIM_LATENCY_MAX_MS", default_value_t = DEFAULT_LATENCY_MAX_MS)]
    pub latency_max_ms: u64,

    /// Share (0.0-1.0) of admitted calls answered 500.
    #[arg(long, env = "SIM_ERROR_RATE", default_value_t = 0.0, value_parser = parse_share)]
    pub error_rate: f64,

    /// Share (0.0-1.0) of calls answered 429 whatever the window holds.
    #[arg(long, env = "SIM_THROTTLE_RATE", default_value_t = 0.0, value_parser = parse_share)]
    pub throttle_rate: f64,

    /// Seconds to send in `Retry-After` with every 429; without it 429s carry no such header.
    #[arg(long, env = "SIM_RETRY_AFTER_SECS")]
    pub retry_after_secs: Option<u64>,

    /// Share (0.0-1.0) of admitted calls that stall for `stall-ms` before answering.
    #[arg(long, env = "SIM_STALL_RATE", default_value_t = 0.0, value_parser = parse_share)]
    pub stall_rate: f64,

    /// How long a stalled call takes, in milliseconds.
    #[arg(long, env = "SIM_STALL_MS", default_value_t = DEFAULT_STALL_MS)]
    pub stall_ms: u64,

    /// Notification types accepted (comma-separated); any other type is refused with 422.
    #[arg(long, env = "SIM_ACCEPTED_TYPES", value_delimiter = ',',
          default_values_t = Channel::ALL.to_vec())]
    pub accepted_types: Vec<Channel>,

    /// The first N calls of each request id are answered `fail-status`.
    #[arg(long, env = "SIM_FAIL_FIRST", default_value_t = 0)]
    pub fail_first: u32,

    /// Status answered to the first `fail-first` calls of each request id.
    #[arg(long, env = "SIM_FAIL_STATUS", default_value_t = DEFAULT_FAIL_STATUS,
          value_parser = clap::value_parser!(u16).range(100..=599))]
    pub fail_status: u16,

    /// Seed for every random draw, so a run can be replayed; random when absent.
    #[arg(long, env = "SIM_SEED")]
    pub seed: Option<u64>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            api_key: DEFAULT_API_KEY.to_owned(),
            window_calls: DEFAULT_WINDOW_CALLS,
            window_secs: DEFAULT_WINDOW_SECS,
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            latency_min_ms: DEFAULT_LATENCY_MIN_MS,
            latency_max_ms: DEFAULT_LATENCY_MAX_MS,
            error_rate: 0.0,
            throttle_rate: 0.0,
            retry_after_secs: None,
            stall_rate: 0.0,
            stall_ms: DEFAULT_STALL_MS,
            accepted_types: Channel::ALL.to_vec(),
            fail_first: 0,
            fail_status: DEFAULT_FAIL_STATUS,
            seed: None,
        }
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

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches, Parser};

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

    #[test]
    fn flag_defaults_match_default() {
        let parsed = parse(&["sim"]).unwrap();
        assert_eq!(format!("{parsed:?}"), format!("{:?}", SimConfig::default()));
    }

    #[test]
    fn flags_parse_types_and_shares() {
        let sim = parse(&[
            "sim",
            "--accepted-types",
            "email,sms",
            "--error-rate",
            "0.25",
            "--retry-after-secs",
            "3",
        ])
        .unwrap();
        assert_eq!(sim.accepted_types, vec![Channel::Email, Channel::Sms]);
        assert_eq!(sim.error_rate, 0.25);
        assert_eq!(sim.retry_after_secs, Some(3));
        assert!(parse(&["sim", "--error-rate", "1.5"]).is_err());
        assert!(parse(&["sim", "--accepted-types", "fax"]).is_err());
        assert!(parse(&["sim", "--max-concurrent", "0"]).is_err());
    }
}
