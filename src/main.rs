//! The `herald` binary: parse the command line, set up logging, run.

use clap::Parser;

use herald::config::Cli;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    herald::telemetry::init(cli.log_format);
    match herald::cli::run(cli.command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "herald stopped");
            eprintln!("herald: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
