//! A local stand-in for the external notification provider Herald delivers
//! to: by default it behaves like the reference provider (50 calls per sliding
//! 10 s, 50 at once, 100-500 ms each, 10% answered 500), a [`Profile`] or single flags make it
//! misbehave on demand (errors, throttling, stalls, outages), and its ledger
//! tells tests and drills what it received per request id.
//!
//! This module owns the [`Simulator`] handle, its router and how it is served
//! ([`serve`], [`Simulator::spawn`]); the endpoint itself lives in `notify`,
//! the outage windows in `outage`.

mod answer;
mod capacity;
mod config;
mod dice;
mod error_statuses;
mod ledger;
mod notify;
mod outage;
mod profile;
#[cfg(test)]
mod testing;
mod validation;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

pub use config::SimConfig;
pub use error_statuses::ErrorStatuses;
pub use ledger::{IdStats, ReceivedCall, SimStats};
pub use outage::OutagePlan;
pub use profile::Profile;

use capacity::Capacity;
use dice::Dice;
use ledger::Ledger;
use notify::FailFirst;

/// A simulated provider: cheap to clone, every clone shares the same state.
#[derive(Clone)]
pub struct Simulator {
    shared: Arc<Shared>,
}

/// The state every call sees.
struct Shared {
    config: SimConfig,
    dice: Dice,
    capacity: Capacity,
    fail_first: FailFirst,
    ledger: Ledger,
    provider_ids: AtomicU64,
}

impl Shared {
    /// The id of the next delivery: `p-1`, `p-2`, ...
    fn next_provider_id(&self) -> String {
        format!(
            "p-{}",
            self.provider_ids.fetch_add(1, Ordering::Relaxed) + 1
        )
    }
}

impl Simulator {
    pub fn new(config: SimConfig) -> Self {
        let shared = Shared {
            dice: Dice::new(config.seed),
            capacity: Capacity::new(
                config.window_calls,
                config.window_secs,
                config.max_concurrent,
            ),
            fail_first: FailFirst::new(config.fail_first, config.fail_status),
            ledger: Ledger::new(),
            provider_ids: AtomicU64::new(0),
            config,
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// The provider's endpoint plus the ledger's read-only views.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/notify", post(notify::notify))
            .route("/stats", get(stats))
            .route("/calls", get(calls))
            .route("/stats/{id}", get(id_stats))
            .route("/health", get(|| async {}))
            .with_state(self.clone())
    }

    /// Serves a new simulator on an ephemeral port of 127.0.0.1.
    pub async fn spawn(config: SimConfig) -> std::io::Result<RunningSimulator> {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
        Self::spawn_on(listener, config)
    }

    /// Serves a new simulator on `listener` in a spawned task (a caller that
    /// binds the port itself knows the address before anything serves it).
    pub fn spawn_on(listener: TcpListener, config: SimConfig) -> std::io::Result<RunningSimulator> {
        let addr = listener.local_addr()?;
        let simulator = Self::new(config);
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            simulator.clone(),
            stop.clone().cancelled_owned(),
        ));
        Ok(RunningSimulator {
            addr,
            simulator,
            stop: stop.drop_guard(),
            server,
        })
    }

    /// Calls received and not answered yet (a stalled one may take a while).
    pub fn calls_in_progress(&self) -> u64 {
        self.shared.ledger.in_progress()
    }

    /// Every call received, in arrival order.
    pub fn calls(&self) -> Vec<ReceivedCall> {
        self.shared.ledger.calls()
    }

    pub fn stats(&self) -> SimStats {
        self.shared.ledger.stats()
    }

    /// How many calls for `id` were answered 2xx.
    pub fn deliveries_of(&self, id: &str) -> u64 {
        self.shared.ledger.id_stats(id).deliveries
    }

    /// The calls received for `id`, in arrival order.
    pub fn calls_of(&self, id: &str) -> Vec<ReceivedCall> {
        self.shared.ledger.calls_of(id)
    }
}

/// A simulator serving in the background. Dropping it stops the server: the
/// port refuses connections from then on, which is how tests stage an outage.
pub struct RunningSimulator {
    pub addr: SocketAddr,
    pub simulator: Simulator,
    stop: DropGuard,
    server: JoinHandle<std::io::Result<()>>,
}

impl RunningSimulator {
    /// The base URL to configure as the provider's, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, then waits until the calls in flight are answered.
    pub async fn shutdown(self) {
        drop(self.stop);
        match self.server.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "provider simulator stopped with an error"),
            Err(error) => tracing::warn!(%error, "provider simulator task failed"),
        }
    }
}

/// Serves until `shutdown` resolves (used by the `provider-sim` CLI subcommand
/// and `herald dev`), refusing connections during the configured outages,
/// then lets the calls in flight finish.
pub async fn serve(
    listener: TcpListener,
    simulator: Simulator,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let plan = simulator.shared.config.outages.as_deref().copied();
    outage::serve_in_spells(listener, simulator.router(), plan, shutdown).await
}

async fn stats(State(simulator): State<Simulator>) -> Json<SimStats> {
    Json(simulator.stats())
}

/// Every call received, in arrival order (`at_ms` since the start): where
/// measurements read how close together the provider counted calls.
async fn calls(State(simulator): State<Simulator>) -> Json<Vec<ReceivedCall>> {
    Json(simulator.calls())
}

async fn id_stats(State(simulator): State<Simulator>, Path(id): Path<String>) -> Json<IdStats> {
    Json(simulator.shared.ledger.id_stats(&id))
}

/// Locks `mutex`, carrying on after a panic elsewhere: every critical section
/// here leaves its data consistent, so poisoning carries no information.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::testing::{fast_config, notify};
    use super::*;

    async fn get_json<T: serde::de::DeserializeOwned>(client: &reqwest::Client, url: &str) -> T {
        client.get(url).send().await.unwrap().json().await.unwrap()
    }

    #[tokio::test]
    async fn stats_endpoints_report_the_ledger() {
        let running = Simulator::spawn(fast_config()).await.unwrap();
        for _ in 0..2 {
            assert_eq!(notify(&running, "dup", "email").await.status(), 200);
        }
        assert_eq!(notify(&running, "once", "sms").await.status(), 200);

        let client = reqwest::Client::new();
        let health = client
            .get(format!("{}/health", running.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200);

        let stats: SimStats = get_json(&client, &format!("{}/stats", running.url())).await;
        assert_eq!(stats, running.simulator.stats());
        assert_eq!(stats.calls_total, 3);
        assert_eq!(stats.delivered, 3);
        assert_eq!(stats.unique_delivered, 2);
        assert_eq!(stats.duplicate_deliveries, 1);

        let calls: Vec<ReceivedCall> = get_json(&client, &format!("{}/calls", running.url())).await;
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[2].id, "once");

        let dup: IdStats = get_json(&client, &format!("{}/stats/dup", running.url())).await;
        assert_eq!(dup.calls, 2);
        assert_eq!(dup.deliveries, 2);
        assert_eq!(dup.statuses, vec![200, 200]);
        assert_eq!(running.simulator.deliveries_of("dup"), 2);
        assert_eq!(running.simulator.calls_of("once").len(), 1);
    }

    #[tokio::test]
    async fn shutdown_refuses_connections_even_on_a_kept_alive_client() {
        let running = Simulator::spawn(fast_config()).await.unwrap();
        let url = format!("{}/health", running.url());
        let client = reqwest::Client::new();
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
        running.shutdown().await;
        assert!(client.get(&url).send().await.unwrap_err().is_connect());
    }

    #[tokio::test]
    async fn dropping_the_handle_stops_the_server() {
        let running = Simulator::spawn(fast_config()).await.unwrap();
        let addr = running.addr;
        drop(running);
        // The server notices the drop on its next poll, so give it a few turns.
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("{addr} still accepts connections after the simulator was dropped");
    }
}
