//! Wires the store, the dispatcher, the retention sweeper, the metrics upkeep
//! and the API together, and owns the shutdown order: stop accepting, drain
//! provider calls, flush, return.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiLimits, AppState};
use crate::config::GatewayConfig;
use crate::dispatch::{DispatchError, Dispatcher};
use crate::instruments;
use crate::keys::{self, KeyError, Keys};
use crate::retention;
use crate::server::{self, ServerSettings};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
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
    #[error("health check failed: {0}")]
    Unhealthy(String),
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
    #[error(transparent)]
    Keys(#[from] KeyError),
}

/// A gateway that is bound and recovered, ready to run.
pub struct Application {
    listener: TcpListener,
    store: Arc<Store>,
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
        std::fs::create_dir_all(&config.data_dir).map_err(|source| AppError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        })?;
        // Installed first, so the store's recovery at open is counted.
        let metrics = instruments::install()?;
        let store = Arc::new(Store::open_with(&config.data_dir, &config.store_options())?);
        tracing::info!(
            recovered = store.recovered_at_open(),
            pending = store.pending(),
            "store open"
        );
        let (client_keys, metrics_key) = (&config.client_keys_file, &config.metrics_key_file);
        let keys = Arc::new(Keys::load(client_keys.as_deref(), metrics_key.as_deref())?);
        keys::warn_if_open(&keys, config.listen);
        let (dispatcher, handle) = Dispatcher::new(store.clone(), &config.dispatch_settings())?;
        let state = AppState {
            store: store.clone(),
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
            store,
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

    /// The store, for callers that embed the gateway (tests, drills).
    pub fn store(&self) -> Arc<Store> {
        self.store.clone()
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
        let sweeper = retention::run(self.store.clone(), self.retention, self.shutdown.clone());
        let sweeper = tokio::spawn(sweeper);
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
        // The last holder closes the store; an embedder still holding it only gets the flush.
        match Arc::try_unwrap(self.store) {
            Ok(store) => {
                let stats = store.close().await?;
                tracing::info!(
                    flushes = stats.flushes,
                    writes = stats.waiters_served,
                    "store closed; bye"
                );
            }
            Err(shared) => {
                shared.durable().await?;
                tracing::info!("store flushed; bye");
            }
        }
        served.map_err(AppError::Serve)
    }
}

/// Resolves `grace` after `shutdown` is cancelled.
async fn past_grace(shutdown: &CancellationToken, grace: Duration) {
    shutdown.cancelled().await;
    tokio::time::sleep(grace).await;
}
