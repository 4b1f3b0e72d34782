//! What each `herald` subcommand runs.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::app::{AppError, Application};
use crate::config::{Command, GatewayConfig};
use crate::shutdown::cancel_on_signal;
use crate::simulator::{self, SimConfig, Simulator};
use crate::store;

pub async fn run(command: Command) -> Result<(), AppError> {
    match command {
        Command::Serve(config) => serve(config).await,
        Command::Dev {
            gateway,
            sim_listen,
            sim,
        } => dev(gateway, sim_listen, sim).await,
        Command::ProviderSim { listen, sim } => provider_sim(listen, sim, signal_token()).await,
        Command::Healthcheck { url, timeout_ms } => {
            healthcheck(&url, Duration::from_millis(timeout_ms)).await
        }
        Command::Check { data_dir } => check(&data_dir),
        Command::Export { data_dir, output } => export(&data_dir, output.as_deref()),
    }
}

/// `herald check`: the report on standard output; an unsound store exits 1.
fn check(data_dir: &Path) -> Result<(), AppError> {
    let report = store::embedded::check(data_dir)?;
    println!("{report}");
    if report.is_sound() {
        Ok(())
    } else {
        Err(AppError::Unsound(data_dir.display().to_string()))
    }
}

/// `herald export`: JSON lines to `output` or standard output, a summary on
/// standard error; requests left unread make it exit 1.
fn export(data_dir: &Path, output: Option<&Path>) -> Result<(), AppError> {
    let mut out: Box<dyn Write> = match output {
        Some(path) => Box::new(
            std::fs::File::create(path).map_err(|source| AppError::Output {
                path: path.display().to_string(),
                source,
            })?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let summary = store::embedded::export(data_dir, &mut out)?;
    out.flush().map_err(|source| AppError::Output {
        path: output.map_or("standard output".into(), |p| p.display().to_string()),
        source,
    })?;
    eprintln!(
        "exported {} requests; {} unreadable",
        summary.exported, summary.unreadable
    );
    if summary.unreadable > 0 {
        return Err(AppError::PartialExport(summary.unreadable));
    }
    Ok(())
}

async fn healthcheck(url: &str, timeout: Duration) -> Result<(), AppError> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|error| AppError::Unhealthy(error.to_string()))?;
    match client.get(url).send().await {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(AppError::Unhealthy(format!(
            "{url} answered {}",
            response.status()
        ))),
        Err(error) => Err(AppError::Unhealthy(format!("{url}: {error}"))),
    }
}

async fn serve(config: GatewayConfig) -> Result<(), AppError> {
    tracing::info!(
        provider_url = config.provider_url_for_logs(),
        ?config,
        "starting herald"
    );
    let app = Application::build(&config).await?;
    cancel_on_signal(app.shutdown_token());
    app.run_until_stopped().await
}

/// The gateway plus, unless a provider URL was given, a simulator beside it.
async fn dev(
    mut gateway: GatewayConfig,
    sim_listen: SocketAddr,
    sim: Box<SimConfig>,
) -> Result<(), AppError> {
    if gateway.provider_url.is_some() {
        return serve(gateway).await;
    }
    let token = signal_token();
    let listener = bind(sim_listen).await?;
    let sim_addr = listener.local_addr().map_err(AppError::Serve)?;
    tracing::info!(%sim_addr, "provider simulator listening");
    let sim_task = tokio::spawn(simulator::serve(
        listener,
        Simulator::new(beside(&gateway, *sim)),
        token.clone().cancelled_owned(),
    ));
    let sim_url = format!("http://127.0.0.1:{}", sim_addr.port());
    gateway.provider_url = Some(sim_url.into());
    tracing::info!(provider_url = gateway.provider_url_for_logs(), config = ?gateway, "starting herald");
    let app = Application::build(&gateway).await?;
    let app_token = app.shutdown_token();
    tokio::spawn(async move {
        token.cancelled().await;
        app_token.cancel();
    });
    let result = app.run_until_stopped().await;
    if let Ok(Err(error)) = sim_task.await {
        tracing::warn!(%error, "simulator stopped with an error");
    }
    result
}

/// The simulator `dev` runs is the gateway's provider, so it accepts the key
/// the gateway sends, however that key was set.
fn beside(gateway: &GatewayConfig, sim: SimConfig) -> SimConfig {
    SimConfig {
        api_key: gateway.provider_api_key().clone(),
        ..sim
    }
}

async fn provider_sim(
    listen: SocketAddr,
    sim: SimConfig,
    token: CancellationToken,
) -> Result<(), AppError> {
    let listener = bind(listen).await?;
    tracing::info!(addr = %listen, ?sim, "provider simulator listening");
    simulator::serve(listener, Simulator::new(sim), token.cancelled_owned())
        .await
        .map_err(AppError::Serve)
}

fn signal_token() -> CancellationToken {
    let token = CancellationToken::new();
    cancel_on_signal(token.clone());
    token
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, AppError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Listen { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    #[test]
    fn the_dev_simulator_accepts_the_gateways_key() {
        let mut gateway = GatewayConfig::defaults();
        gateway.provider_api_key = Secret::from("not-the-default");
        let sim = beside(&gateway, SimConfig::default());
        assert_eq!(sim.api_key.expose(), "not-the-default");
    }
}
