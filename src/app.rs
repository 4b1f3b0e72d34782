//! Wires the store's engine, the dispatcher, the retention sweeper, the
//! metrics upkeep and the API together, and owns the shutdown order: stop
//! accepting, drain provider calls, flush, return.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiLimits, AppState};
use crate::config::{BackendKind, DispatchMode, GatewayConfig};
use crate::dispatch::{DispatchError, Dispatcher};
use crate::instruments;
use crate::keys::{self, KeyError, Keys};
use crate::retention;
use crate::server::{self, ServerSettings};
use crate::store::embedded::EmbeddedStore;
use crate::store::embedded::pacing::Pacer;
use crate::store::rate::InvalidRate;
use crate::store::scaleout::ScaleoutStore;
use crate::store::{Backend, Records, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    #[error("invalid rate limit: {0}")]
    Rate(#[from] InvalidRate),
    #[error("health check failed: {0}")]
    Unhealthy(String),
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
    #[error("the store in {0} is not sound (see the report above)")]
    Unsound(String),
    #[error("cannot write {path}: {source}")]
    Output {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} requests could not be read and were not exported")]
    PartialExport(u64),
    #[error(transparent)]
    Keys(#[from] KeyError),
}

/// A gateway that is bound and recovered, ready to run.
pub struct Application {
    listener: TcpListener,
    backend: Backend,
    dispatcher: Dispatcher,
    retention: Duration,
    /// How long open connections may hold up the shutdown, once accepting stops.
    connections_grace: Duration,
    router: axum::Router,
    server: ServerSettings,
    keys: Arc<Keys>,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
}

impl Application {
    /// Opens the store (returning crashed leases to the outbox), builds the
    /// dispatcher and binds the listener.
    pub async fn build(config: &GatewayConfig) -> Result<Self, AppError> {
        // Installed first, so the store's recovery at open is counted.
        let metrics = instruments::install()?;
        let backend = open_backend(config).await?;
        let (client_keys, metrics_key) = (&config.client_keys_file, &config.metrics_key_file);
        let keys = Arc::new(Keys::load(client_keys.as_deref(), metrics_key.as_deref())?);
        keys::warn_if_open(&keys, config.listen);
        let (dispatcher, handle) = Dispatcher::new(&backend, &config.dispatch_settings())?;
        let state = AppState {
            records: backend.records.clone(),
            dispatcher: handle,
            limits: ApiLimits {
                max_body_bytes: config.max_body_bytes,
                outbox_limit: config.outbox_limit,
            },
            metrics: metrics.clone(),
            keys: keys.clone(),
        };
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| AppError::Listen {
                    addr: config.listen,
                    source,
                })?;
        Ok(Self {
            listener,
            backend,
            dispatcher,
            retention: Duration::from_secs(config.retention_secs),
            connections_grace: Duration::from_millis(config.shutdown_grace_ms),
            router: api::router(state),
            server: config.server_settings(),
            keys,
            metrics,
            shutdown: CancellationToken::new(),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The records, for callers that embed the gateway (tests, drills).
    pub fn records(&self) -> Arc<dyn Records> {
        self.backend.records.clone()
    }

    /// Cancelling this token shuts the application down cleanly.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled, then drains and flushes.
    pub async fn run_until_stopped(self) -> Result<(), AppError> {
        let addr = self.local_addr().map_err(AppError::Serve)?;
        tracing::info!(%addr, "listening");
        let dispatcher = tokio::spawn(self.dispatcher.run(self.shutdown.clone()));
        let sweeper = retention::run(
            self.backend.records.clone(),
            self.retention,
            self.shutdown.clone(),
        );
        let sweeper = tokio::spawn(sweeper);
        let records = self.backend.records.clone();
        let token = self.shutdown.clone();
        let keeper = tokio::spawn(async move { records.maintain(token).await });
        let upkeep = tokio::spawn(instruments::run_upkeep(self.metrics, self.shutdown.clone()));
        keys::reload_on_sighup(self.keys, self.shutdown.clone());
        let answers = server::Answers {
            refusal: api::connection_refusal(),
            protocol_error_body: api::protocol_error_body,
        };
        let server = server::serve(
            self.listener,
            self.router,
            self.server,
            answers,
            self.shutdown.clone(),
        );
        let served = tokio::select! {
            served = server => served,
            () = past_grace(&self.shutdown, self.connections_grace) => {
                // A client holding a connection open (say, a request sent by
                // halves) must not keep the outbox from being flushed.
                tracing::warn!(grace = ?self.connections_grace, "connections still open; closing them");
                Ok(())
            }
        };
        // Whatever ended the server, stop the dispatcher too.
        self.shutdown.cancel();
        tracing::info!("stopped accepting; draining");
        if let Err(error) = dispatcher.await {
            tracing::error!(%error, "dispatcher task failed");
        }
        if let Err(error) = sweeper.await {
            tracing::error!(%error, "retention task failed");
        }
        if let Err(error) = upkeep.await {
            tracing::error!(%error, "metrics upkeep task failed");
        }
        if let Err(error) = keeper.await {
            tracing::error!(%error, "store recovery task failed");
        }
        self.backend.records.close().await?;
        tracing::info!("bye");
        served.map_err(AppError::Serve)
    }
}

/// Opens the engine the configuration names: the embedded store with the
/// in-process rate gate, or the scale-out engine with its shared one.
async fn open_backend(config: &GatewayConfig) -> Result<Backend, AppError> {
    if config.backend == BackendKind::Scaleout {
        let (store, gate) =
            ScaleoutStore::open(config.scaleout_options(), &config.rate_settings()).await?;
        return Ok(Backend {
            records: store.clone(),
            work: store,
            gate,
        });
    }
    if config.dispatch == DispatchMode::External {
        return Err(AppError::Store(StoreError::Refused(
            "--dispatch external needs --backend scaleout (external senders consume RabbitMQ)"
                .into(),
        )));
    }
    let store = Arc::new(EmbeddedStore::open_with(
        &config.data_dir,
        &config.store_options(),
    )?);
    tracing::info!(
        recovered = store.recovered_at_open(),
        pending = store.pending(),
        "store open"
    );
    let gate = Pacer::new(&config.rate_settings())?;
    Ok(Backend {
        records: store.clone(),
        work: store,
        gate: Arc::new(gate),
    })
}

/// Resolves `grace` after `shutdown` is cancelled.
async fn past_grace(shutdown: &CancellationToken, grace: Duration) {
    shutdown.cancelled().await;
    tokio::time::sleep(grace).await;
}
