//! The `herald` binary: cap malloc's arenas, parse the command line, set up
//! logging, run.

use clap::{CommandFactory, FromArgMatches};

use herald::config::Cli;

fn main() -> std::process::ExitCode {
    // Before the runtime starts its threads.
    let arena_cap = herald::allocator::cap_malloc_arenas();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    herald::telemetry::init(cli.log_format, cli.command.prints_to_stdout());
    for flag in herald::config::secrets_on_command_line(&matches) {
        tracing::warn!(
            flag,
            "a key given as a flag shows in `ps` to every user of this machine: prefer PROVIDER_API_KEY or, for the gateway, --provider-api-key-file"
        );
    }
    if let Some(arenas) = arena_cap {
        tracing::debug!(arenas, "malloc arenas capped");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    match runtime.block_on(herald::cli::run(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "herald stopped");
            eprintln!("herald: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
