//! Command line and environment configuration.
//!
//! Every setting is a flag with an environment variable and a default that works
//! out of the box; `herald --help` and `herald serve --help` explain each. The
//! provider's API key is wrapped in [`Secret`] so it never reaches a log.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::dispatch::{BreakerSettings, DispatchSettings, ProviderSettings, RetryPolicy};
use crate::secret::Secret;
use crate::server::ServerSettings;
use crate::simulator::SimConfig;
use crate::store::InstanceId;
use crate::store::embedded::StoreOptions;
use crate::store::rate::{RateLimit, RateSettings};
use crate::store::scaleout::ScaleoutOptions;

/// Where the provider lives when nothing else is said (the compose service name).
pub const DEFAULT_PROVIDER_URL: &str = "http://provider:3001";

#[derive(Debug, Parser)]
#[command(name = "herald", version, about = "A durable notification gateway")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format: `human` for people, `json` for log collectors.
    #[arg(
        long,
        env = "HERALD_LOG_FORMAT",
        default_value = "human",
        global = true
    )]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(GatewayConfig),
    /// Run the gateway with a local provider simulator beside it (unless --provider-url is given).
    /// The simulator accepts the gateway's --provider-api-key.
    Dev {
        #[command(flatten)]
        gateway: GatewayConfig,
        /// Where the local simulator listens.
        #[arg(long, env = "SIM_LISTEN", default_value = "127.0.0.1:3001")]
        sim_listen: SocketAddr,
        #[command(flatten)]
        sim: Box<SimConfig>,
    },
    /// Exit 0 when the URL answers 200, 1 otherwise (a container HEALTHCHECK with no curl).
    Healthcheck {
        /// The URL to probe.
        #[arg(long, default_value = "http://127.0.0.1:5000/health")]
        url: String,
        /// How long to wait for the answer.
        #[arg(long, default_value_t = 3_000)]
        timeout_ms: u64,
    },
    /// Read a stopped store whole: report its requests, pending work, leases,
    /// integrity record and every inconsistency. Exits 0 only when all is sound.
    Check {
        /// The data directory of a stopped Herald.
        #[arg(long, env = "HERALD_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
    /// Write every readable request of a stopped store, with its history, as
    /// JSON lines (one request a line, oldest first). Exits 0 only when every
    /// request was readable.
    Export {
        /// The data directory of a stopped Herald.
        #[arg(long, env = "HERALD_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        /// Where to write the lines (default: standard output).
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Run only the provider simulator.
    ProviderSim {
        /// Where the simulator listens.
        #[arg(long, env = "SIM_LISTEN", default_value = "0.0.0.0:3001")]
        listen: SocketAddr,
        #[command(flatten)]
        sim: SimConfig,
    },
}

impl Command {
    /// Whether the command's own output goes to standard output, so logs
    /// must not (`herald check`, `herald export`).
    pub fn prints_to_stdout(&self) -> bool {
        matches!(self, Command::Check { .. } | Command::Export { .. })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// The gateway's settings.
#[derive(Clone, Debug, Args)]
pub struct GatewayConfig {
    /// Address the HTTP API listens on.
    #[arg(long, env = "HERALD_LISTEN", default_value = "0.0.0.0:5000")]
    pub listen: SocketAddr,

    /// Directory of the embedded store (created if missing).
    #[arg(long, env = "HERALD_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Embedded engine: upper bound of its page cache, in MiB.
    #[arg(long, env = "HERALD_STORE_CACHE_MB", default_value_t = 8)]
    pub store_cache_mb: u64,

    /// Base URL of the provider; Herald calls `{url}/v1/notify`. [default: http://provider:3001]
    #[arg(long, env = "PROVIDER_URL")]
    pub provider_url: Option<ProviderUrl>,

    /// API key sent to the provider as `X-API-Key`. Never logged. As a flag it
    /// shows in `ps`: prefer the variable or --provider-api-key-file.
    #[arg(
        long,
        env = "PROVIDER_API_KEY",
        default_value = "test-dev-2026",
        hide_env_values = true
    )]
    pub provider_api_key: Secret,

    /// A file holding the provider API key (surrounding whitespace ignored),
    /// instead of --provider-api-key.
    #[arg(
        long,
        env = "PROVIDER_API_KEY_FILE",
        value_parser = read_secret_file,
        conflicts_with = "provider_api_key"
    )]
    pub provider_api_key_file: Option<Secret>,

    /// Client API keys, one `name key` per line (`#` comments; reloaded on
    /// SIGHUP). When given, every /v1 call needs `Authorization: Bearer KEY`,
    /// and a client sees only the requests it created. Off by default.
    #[arg(long, env = "HERALD_CLIENT_KEYS_FILE")]
    pub client_keys_file: Option<PathBuf>,

    /// A file holding the key `/metrics` then needs (`Authorization: Bearer
    /// KEY`; reloaded on SIGHUP). Off by default.
    #[arg(long, env = "HERALD_METRICS_KEY_FILE")]
    pub metrics_key_file: Option<PathBuf>,

    /// The provider's limit as it publishes it: at most N calls in any sliding
    /// window W, across all channels (`50/10s`; W in ms, s or m). Wins over
    /// --rate-per-sec when both are given. [default: 50/10s, the reference provider's]
    #[arg(long, env = "HERALD_RATE_LIMIT")]
    pub rate_limit: Option<RateLimit>,

    /// Shorthand for --rate-limit: this many calls per second, spaced evenly
    /// (--rate-burst of them may go back to back).
    #[arg(long, env = "HERALD_RATE_PER_SEC")]
    pub rate_per_sec: Option<f64>,

    /// With --rate-per-sec: calls that may go back to back (1: every call
    /// waits its turn); the limit is then BURST calls per BURST/RATE seconds.
    #[arg(long, env = "HERALD_RATE_BURST", default_value_t = 1)]
    pub rate_burst: u32,

    /// Extra per-second limit for email, on top of the global one.
    #[arg(long, env = "HERALD_EMAIL_RATE_PER_SEC")]
    pub email_rate_per_sec: Option<f64>,

    /// Extra per-second limit for SMS, on top of the global one.
    #[arg(long, env = "HERALD_SMS_RATE_PER_SEC")]
    pub sms_rate_per_sec: Option<f64>,

    /// Extra per-second limit for push, on top of the global one.
    #[arg(long, env = "HERALD_PUSH_RATE_PER_SEC")]
    pub push_rate_per_sec: Option<f64>,

    /// Provider calls in flight at once.
    #[arg(long, env = "HERALD_MAX_IN_FLIGHT", default_value_t = 32)]
    pub max_in_flight: usize,

    /// Time allowed to open a connection to the provider.
    #[arg(long, env = "HERALD_CONNECT_TIMEOUT_MS", default_value_t = 2_000)]
    pub connect_timeout_ms: u64,

    /// Time allowed for one provider call, start to finish.
    #[arg(long, env = "HERALD_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,

    /// First retry delay ceiling; each retry doubles it (full jitter picks 0..ceiling).
    #[arg(long, env = "HERALD_RETRY_BASE_MS", default_value_t = 500)]
    pub retry_base_ms: u64,

    /// Largest delay between two attempts.
    #[arg(long, env = "HERALD_RETRY_MAX_DELAY_MS", default_value_t = 60_000)]
    pub retry_max_delay_ms: u64,

    /// Attempts before a request that keeps failing transiently is marked failed.
    #[arg(long, env = "HERALD_MAX_ATTEMPTS", default_value_t = 10)]
    pub max_attempts: u32,

    /// Age (from `process`) after which a transient failure is final.
    #[arg(long, env = "HERALD_MAX_AGE_SECS", default_value_t = 86_400)]
    pub max_age_secs: u64,

    /// Consecutive provider failures (5xx, timeouts, unreachable) that open the circuit breaker.
    #[arg(long, env = "HERALD_BREAKER_THRESHOLD", default_value_t = 10)]
    pub breaker_threshold: u32,

    /// How long an open breaker waits before letting one probe through.
    #[arg(long, env = "HERALD_BREAKER_COOLDOWN_MS", default_value_t = 5_000)]
    pub breaker_cooldown_ms: u64,

    /// Undelivered requests the outbox holds before creates get 503.
    #[arg(long, env = "HERALD_OUTBOX_LIMIT", default_value_t = 1_000_000)]
    pub outbox_limit: u64,

    /// Largest accepted request body, in bytes (larger gets 413).
    #[arg(long, env = "HERALD_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// Time a client has to send a request's headers: from the connection's
    /// opening, or from the first byte of a later request on it.
    #[arg(long, env = "HERALD_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,

    /// Time a client has to send a request's body, once its headers are in (then 408).
    #[arg(long, env = "HERALD_BODY_READ_TIMEOUT_MS", default_value_t = 30_000)]
    pub body_read_timeout_ms: u64,

    /// Time a connection may stay open with no bytes moving, outside a handler
    /// (between two requests, say).
    #[arg(long, env = "HERALD_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,

    /// Open client connections at most (lowered to fit the open-file limit,
    /// which Herald raises to its hard limit at start). Past it, the least
    /// active connection outside a handler is closed to make room; when every
    /// one is in a handler, the newcomer gets 503.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = 4_096)]
    pub max_connections: usize,

    /// On SIGTERM/SIGINT, how long open client connections and in-flight
    /// provider calls (both at once) may take to finish.
    #[arg(long, env = "HERALD_SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,

    /// How long a request is kept once `sent` or `failed` (0: forever); then
    /// it is deleted with its history and idempotency key.
    #[arg(long, env = "HERALD_RETENTION_SECS", default_value_t = 7 * 86_400)]
    pub retention_secs: u64,

    /// Start even when the store lacks requests it acknowledged (damaged
    /// files): what is left becomes the truth, the loss is logged, counted
    /// and kept in the integrity record. Without it Herald refuses to start.
    /// Scale-out: serve a Redis that lost its data while RabbitMQ still
    /// holds work of the old one (without it the node serves nothing).
    #[arg(long, env = "HERALD_ACCEPT_DATA_LOSS")]
    pub accept_data_loss: bool,

    /// This gateway's name on the leases it takes. [default: host name:pid]
    #[arg(long, env = "HERALD_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// Which engine holds the requests and the work: `embedded` (sled in
    /// --data-dir, one process) or `scaleout` (Redis and RabbitMQ, any
    /// number of nodes).
    #[arg(long, env = "HERALD_BACKEND", value_enum, default_value = "embedded")]
    pub backend: BackendKind,

    /// Scale-out: the Redis holding the records (AOF `appendfsync always`,
    /// `noeviction`: checked at start).
    #[arg(
        long,
        env = "HERALD_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: ServiceUrl,

    /// Scale-out: the RabbitMQ carrying the work; its path is the vhost.
    #[arg(
        long,
        env = "HERALD_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: ServiceUrl,

    /// Scale-out: every Redis key lives under the hash tag `{PREFIX}`; one
    /// prefix per cluster sharing a Redis.
    #[arg(long, env = "HERALD_REDIS_PREFIX", default_value = "herald")]
    pub redis_prefix: String,

    /// Scale-out: start even on a Redis that may lose acknowledged writes
    /// (no AOF, no fsync per write, or an evicting policy); logged, and shown
    /// in `/ready`.
    #[arg(long, env = "HERALD_ALLOW_VOLATILE_REDIS")]
    pub allow_volatile_redis: bool,

    /// Scale-out: unacknowledged deliveries a node holds per channel queue.
    #[arg(long, env = "HERALD_PREFETCH", default_value_t = 4)]
    pub prefetch: u16,

    /// Who calls the provider: `provider` (Herald does) or, scale-out only,
    /// `external` (senders of your own consume `herald.work.<channel>` and
    /// report `{id, seq, outcome}` on `herald.status`).
    #[arg(long, env = "HERALD_DISPATCH", value_enum, default_value = "provider")]
    pub dispatch: DispatchMode,
}

/// Who calls the provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DispatchMode {
    Provider,
    External,
}

/// The engine behind the seam.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    Embedded,
    Scaleout,
}

impl GatewayConfig {
    /// The defaults, as `herald serve` with no flags and no environment would have them.
    pub fn defaults() -> Self {
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            config: GatewayConfig,
        }
        // Without the variables, so the defaults do not depend on where they are read.
        let command = Defaults::command().mut_args(|arg| arg.env(None::<&'static str>));
        // Parsing no arguments cannot fail: every setting has a default.
        let matches = command.get_matches_from(["herald"]);
        Defaults::from_arg_matches(&matches)
            .expect("every setting has a default")
            .config
    }

    pub fn provider_url(&self) -> &str {
        self.provider_url
            .as_ref()
            .map_or(DEFAULT_PROVIDER_URL, ProviderUrl::as_str)
    }

    /// `--instance-id`, or the host name and the process id.
    pub fn instance_id(&self) -> InstanceId {
        InstanceId(
            self.instance_id
                .clone()
                .unwrap_or_else(|| format!("{}:{}", host_name(), std::process::id())),
        )
    }

    /// [`Self::provider_url`] as logs may show it: any password masked.
    pub fn provider_url_for_logs(&self) -> String {
        redacted(self.provider_url())
    }

    /// The key sent to the provider: from --provider-api-key-file if given.
    pub fn provider_api_key(&self) -> &Secret {
        self.provider_api_key_file
            .as_ref()
            .unwrap_or(&self.provider_api_key)
    }

    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            cache_capacity_bytes: self.store_cache_mb * 1024 * 1024,
            accept_data_loss: self.accept_data_loss,
            instance: self.instance_id(),
            // Longer than any attempt: its call, and the retries of its record.
            lease_for: Duration::from_millis(self.request_timeout_ms) * 6,
        }
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(self.retry_base_ms),
            max_delay: Duration::from_millis(self.retry_max_delay_ms),
            max_attempts: self.max_attempts,
            max_age: Duration::from_secs(self.max_age_secs),
        }
    }

    pub fn scaleout_options(&self) -> ScaleoutOptions {
        ScaleoutOptions {
            redis_url: self.redis_url.as_str().to_string(),
            amqp_url: self.amqp_url.as_str().to_string(),
            prefix: self.redis_prefix.clone(),
            instance: self.instance_id(),
            allow_volatile: self.allow_volatile_redis,
            lease_for: Duration::from_millis(self.request_timeout_ms) * 6,
            prefetch: self.prefetch.max(1),
            external: self.dispatch == DispatchMode::External,
            accept_data_loss: self.accept_data_loss,
            retry: self.retry_policy(),
        }
    }

    pub fn server_settings(&self) -> ServerSettings {
        ServerSettings {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            body_read_timeout: Duration::from_millis(self.body_read_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            max_connections: self.max_connections,
        }
    }

    /// The pace of provider calls, as the rate gate takes it.
    pub fn rate_settings(&self) -> RateSettings {
        RateSettings {
            limit: self.rate_limit,
            per_sec: self.rate_per_sec,
            burst: self.rate_burst,
            email_per_sec: self.email_rate_per_sec,
            sms_per_sec: self.sms_rate_per_sec,
            push_per_sec: self.push_rate_per_sec,
        }
    }

    pub fn dispatch_settings(&self) -> DispatchSettings {
        DispatchSettings {
            provider: ProviderSettings {
                base_url: self.provider_url().trim_end_matches('/').to_string(),
                api_key: self.provider_api_key().clone(),
                connect_timeout: Duration::from_millis(self.connect_timeout_ms),
                request_timeout: Duration::from_millis(self.request_timeout_ms),
            },
            retry: self.retry_policy(),
            breaker: BreakerSettings {
                threshold: self.breaker_threshold,
                cooldown: Duration::from_millis(self.breaker_cooldown_ms),
            },
            max_in_flight: self.max_in_flight,
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
        }
    }
}

/// The provider's base URL. `Debug` masks a password in it
/// (`https://user:****@host`): a URL can carry credentials too.
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderUrl(String);

/// The URL of a service Herald uses (Redis, RabbitMQ); `Debug` masks a password.
pub type ServiceUrl = ProviderUrl;

impl ProviderUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for ProviderUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

impl FromStr for ProviderUrl {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}

impl fmt::Debug for ProviderUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redacted(&self.0), f)
    }
}

/// The machine's host name, or `herald` when it has none.
fn host_name() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: gethostname(2) writes at most `len` bytes into the buffer.
    let written = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    match std::str::from_utf8(&buffer[..end]) {
        Ok(name) if written == 0 && !name.is_empty() => name.to_string(),
        _ => "herald".to_string(),
    }
}

/// `url` with its password, if it has one, replaced by `****`.
fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            // Cannot fail: the URL already has a password to replace.
            let _ = parsed.set_password(Some("****"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

/// Reads a secret from the file at `path`: its content, trimmed, on one line.
fn read_secret_file(path: &str) -> Result<Secret, String> {
    let content =
        std::fs::read_to_string(path).map_err(|error| format!("cannot read {path}: {error}"))?;
    let secret = content.trim();
    if secret.is_empty() || secret.contains(['\n', '\r']) {
        return Err(format!("{path} must hold the key alone, on one line"));
    }
    Ok(Secret::from(secret))
}

/// The flags given on the command line that carry a secret (the provider's
/// key, for the gateway or the simulator): every user of the machine can read
/// a process's arguments (`ps`), so each deserves a warning.
pub fn secrets_on_command_line(matches: &clap::ArgMatches) -> Vec<String> {
    const SECRET_FLAGS: [&str; 2] = ["provider_api_key", "api_key"];
    let Some((_, command)) = matches.subcommand() else {
        return Vec::new();
    };
    command
        .ids()
        .filter(|id| SECRET_FLAGS.contains(&id.as_str()))
        .filter(|id| command.value_source(id.as_str()) == Some(ValueSource::CommandLine))
        .map(|id| format!("--{}", id.as_str().replace('_', "-")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::Profile;

    /// clap prints a variable's value in `--help` unless told not to.
    #[test]
    fn no_help_text_shows_the_value_of_a_key_variable() {
        let cli = Cli::command();
        let mut keys = 0;
        for command in cli.get_subcommands() {
            for arg in command.get_arguments() {
                if arg.get_env() == Some(std::ffi::OsStr::new("PROVIDER_API_KEY")) {
                    keys += 1;
                    assert!(
                        arg.is_hide_env_values_set(),
                        "`{} --{}` would print the key in --help",
                        command.get_name(),
                        arg.get_id()
                    );
                }
            }
        }
        // serve, dev (gateway and simulator), provider-sim.
        assert_eq!(keys, 4);
    }

    #[test]
    fn defaults_match_the_contract() {
        let config = GatewayConfig::defaults();
        assert_eq!(config.listen, "0.0.0.0:5000".parse().unwrap());
        assert_eq!(config.provider_url(), "http://provider:3001");
        assert_eq!(config.provider_api_key.expose(), "test-dev-2026");
    }

    #[test]
    fn the_api_key_never_shows_in_debug_output() {
        let config = GatewayConfig::defaults();
        let printed = format!("{config:?}");
        assert!(!printed.contains("test-dev-2026"));
        assert!(printed.contains("****"));
    }

    #[test]
    fn a_password_in_the_provider_url_never_shows_in_logs() {
        let mut config = GatewayConfig::defaults();
        let url = "https://herald:s3cr3t@provider.example:3001";
        config.provider_url = Some(url.parse().unwrap());
        assert_eq!(config.provider_url(), url, "calls use the real one");
        for printed in [format!("{config:?}"), config.provider_url_for_logs()] {
            assert!(!printed.contains("s3cr3t"), "{printed}");
            assert!(
                printed.contains("herald:****@provider.example"),
                "{printed}"
            );
        }
        config.provider_url = Some("http://provider:3001".parse().unwrap());
        assert_eq!(config.provider_url_for_logs(), "http://provider:3001");
    }

    #[test]
    fn the_simulators_stalls_outlast_the_default_request_timeout() {
        let herald_timeout_ms = GatewayConfig::defaults().request_timeout_ms;
        for profile in [Profile::Slow, Profile::Chaos] {
            assert!(profile.config().stall_ms > herald_timeout_ms, "{profile}");
        }
    }

    #[test]
    fn a_key_file_gives_the_key_and_only_a_key_flag_is_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("provider.key");
        std::fs::write(&file, "from-the-file\n").unwrap();
        let file = file.to_str().unwrap();
        let parse = |args: &[&str]| Cli::command().try_get_matches_from(args);

        let matches = parse(&["herald", "serve", "--provider-api-key-file", file]).unwrap();
        assert!(secrets_on_command_line(&matches).is_empty());
        let Command::Serve(config) = Cli::from_arg_matches(&matches).unwrap().command else {
            panic!("serve")
        };
        assert_eq!(config.provider_api_key().expose(), "from-the-file");
        assert_eq!(
            config.dispatch_settings().provider.api_key.expose(),
            "from-the-file"
        );

        let matches = parse(&["herald", "serve", "--provider-api-key", "in-ps"]).unwrap();
        assert_eq!(secrets_on_command_line(&matches), ["--provider-api-key"]);
        let matches = parse(&["herald", "provider-sim", "--api-key", "in-ps"]).unwrap();
        assert_eq!(secrets_on_command_line(&matches), ["--api-key"]);
        let matches = parse(&["herald", "serve"]).unwrap();
        assert!(
            secrets_on_command_line(&matches).is_empty(),
            "a default is no flag"
        );

        let both = [
            "herald",
            "serve",
            "--provider-api-key",
            "k",
            "--provider-api-key-file",
            file,
        ];
        assert!(parse(&both).is_err(), "one source of the key at a time");
        let missing = dir.path().join("missing");
        let missing = [
            "herald",
            "serve",
            "--provider-api-key-file",
            missing.to_str().unwrap(),
        ];
        assert!(parse(&missing).is_err());
    }

    #[test]
    fn the_rate_limit_wins_over_its_shorthand_which_wins_over_the_default() {
        let mut config = GatewayConfig::defaults();
        let limit = |config: &GatewayConfig| config.rate_settings().limit();
        assert_eq!(limit(&config).unwrap().to_string(), "50/10s");
        config.rate_per_sec = Some(20.0);
        assert_eq!(limit(&config), RateLimit::per_second(20.0, 1));
        config.rate_limit = Some("100/10s".parse().unwrap());
        assert_eq!(limit(&config).unwrap().to_string(), "100/10s");
        config.rate_limit = None;
        config.rate_per_sec = Some(-1.0);
        assert!(limit(&config).is_err());
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
