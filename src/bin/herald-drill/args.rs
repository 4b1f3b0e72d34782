//! The drill's command line.

use std::path::PathBuf;

use clap::Parser;
use clap::builder::TypedValueParser;
use herald::config::BackendKind;
use herald::simulator::Profile;

/// Runs the release `herald` binary under a steady load of create+process,
/// kills it with SIGKILL at random moments, restarts it on the same data
/// directory, waits for the outbox to drain, and checks that nothing was lost,
/// nothing is stuck and the provider saw no more duplicates than the kills explain.
/// With `--backend scaleout --nodes N`, N nodes share one Redis and RabbitMQ,
/// the clients spread their calls over them, and each kill takes one node.
#[derive(Debug, Parser)]
#[command(name = "herald-drill", version)]
pub struct DrillArgs {
    /// The herald binary to run [default: `herald` next to this executable].
    #[arg(long)]
    pub herald_bin: Option<PathBuf>,

    /// Concurrent clients, each creating and processing requests one after another.
    #[arg(long, default_value_t = 32,
          value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    pub clients: usize,

    /// Requests created and processed in all.
    #[arg(long, default_value_t = 3_000,
          value_parser = clap::value_parser!(u64).range(2..).map(|n| n as usize))]
    pub requests: usize,

    /// SIGKILLs, each at a random moment of the load and each followed by a restart.
    #[arg(long, default_value_t = 3)]
    pub kills: usize,

    /// Seed for the kill moments and the simulator's draws [default: random, printed].
    #[arg(long)]
    pub seed: Option<u64>,

    /// How the in-process provider simulator behaves.
    #[arg(long, value_enum, default_value_t = Profile::Healthy)]
    pub profile: Profile,

    /// Herald's --max-in-flight: the duplicates one kill can cause are bounded by it.
    #[arg(long, default_value_t = 16,
          value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    pub max_in_flight: usize,

    /// Time limit of each phase (a start, the load with its kills, the drain), in seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,

    /// The engine the nodes run on; `scaleout` needs `--redis-url` and `--amqp-url`.
    #[arg(long, value_enum, default_value_t = BackendKind::Embedded)]
    pub backend: BackendKind,

    /// Herald nodes sharing the work (more than one only with `--backend scaleout`).
    #[arg(long, default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    pub nodes: usize,

    /// The scale-out engine's Redis (durable: AOF `appendfsync always`).
    #[arg(long)]
    pub redis_url: Option<String>,

    /// The scale-out engine's RabbitMQ (its path is the vhost).
    #[arg(long)]
    pub amqp_url: Option<String>,

    /// Directory for Herald's data and log [default: a fresh temporary one,
    /// removed when the drill passes].
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}

impl DrillArgs {
    /// The `serve` flags that choose the engine, the same for every node but
    /// its instance id; an error names what is missing.
    pub fn engine_flags(&self) -> Result<Vec<String>, String> {
        match self.backend {
            BackendKind::Embedded if self.nodes > 1 => Err(
                "--nodes above 1 needs --backend scaleout (embedded nodes share nothing)".into(),
            ),
            BackendKind::Embedded => Ok(Vec::new()),
            BackendKind::Scaleout => {
                let (Some(redis), Some(amqp)) = (&self.redis_url, &self.amqp_url) else {
                    return Err("--backend scaleout needs --redis-url and --amqp-url".into());
                };
                Ok([
                    "--backend",
                    "scaleout",
                    "--redis-url",
                    redis,
                    "--amqp-url",
                    amqp,
                ]
                .map(String::from)
                .to_vec())
            }
        }
    }
}
