//! The drill's command line.

use std::path::PathBuf;

use clap::Parser;
use clap::builder::TypedValueParser;
use herald::simulator::Profile;

/// Runs the release `herald` binary under a steady load of create+process,
/// kills it with SIGKILL at random moments, restarts it on the same data
/// directory, waits for the outbox to drain, and checks that nothing was lost,
/// nothing is stuck and the provider saw no more duplicates than the kills explain.
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

    /// Directory for Herald's data and log [default: a fresh temporary one,
    /// removed when the drill passes].
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}
