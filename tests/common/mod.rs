//! The one way tests start Herald: the real application on a random port,
//! talking over HTTP to a real provider simulator on another.

#![allow(dead_code)] // each test binary uses its own share of these helpers

pub mod child;
pub mod nodes;
pub mod sender;
pub mod services;
pub mod tmpfs;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use herald::app::{AppError, Application};
use herald::config::{BackendKind, GatewayConfig};
use herald::simulator::{RunningSimulator, SimConfig, Simulator};
use herald::store::Records;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::TcpSocket;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a test waits for a request to reach a status before failing.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often [`eventually`] looks again.
const POLL: Duration = Duration::from_millis(5);

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub provider: Option<RunningSimulator>,
    pub records: Arc<dyn Records>,
    pub data_dir: TempDir,
    /// The private Redis and vhost when the suite runs on the scale-out engine.
    services: Option<(services::PrivateRedis, services::Vhost)>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), AppError>>,
}

/// A simulator that answers at once, never throttles and never fails, unless
/// a test says otherwise.
pub fn fast_provider() -> SimConfig {
    SimConfig {
        window_calls: 1_000_000,
        latency_min_ms: 0,
        latency_max_ms: 0,
        error_rate: 0.0,
        ..SimConfig::default()
    }
}

/// A fast simulator whose every call takes `min_ms..=max_ms`.
pub async fn spawn_provider_with_latency(min_ms: u64, max_ms: u64) -> RunningSimulator {
    let config = SimConfig {
        latency_min_ms: min_ms,
        latency_max_ms: max_ms,
        ..fast_provider()
    };
    Simulator::spawn(config).await.expect("simulator starts")
}

/// Gateway settings for tests: random port, fast pacing, short retry delays.
pub fn test_config(data_dir: &TempDir, provider_url: &str) -> GatewayConfig {
    let mut config = GatewayConfig::defaults();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = data_dir.path().to_path_buf();
    config.provider_url = Some(provider_url.to_string().into());
    config.rate_per_sec = Some(1_000.0);
    config.rate_burst = 100;
    config.retry_base_ms = 20;
    config.retry_max_delay_ms = 200;
    config.request_timeout_ms = 2_000;
    config.breaker_cooldown_ms = 200;
    config.shutdown_grace_ms = 2_000;
    config
}

/// The app with a fast simulator and test settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(fast_provider(), |_| {}).await
}

/// The app with a simulator configured by `provider` and settings changed by `tweak`.
pub async fn spawn_app_with(
    provider: SimConfig,
    tweak: impl FnOnce(&mut GatewayConfig),
) -> TestApp {
    let provider = Simulator::spawn(provider).await.expect("simulator starts");
    let url = provider.url();
    let mut app = spawn_gateway(&url, TempDir::new().unwrap(), tweak).await;
    app.provider = Some(provider);
    app
}

/// Where an app keeps its data: its data directory and, on the scale-out
/// engine, its private Redis and vhost. [`TestApp::stop`] hands it back, so
/// an app started again on it finds what the last one stored.
pub struct AppData {
    data_dir: TempDir,
    services: Option<(services::PrivateRedis, services::Vhost)>,
}

impl From<TempDir> for AppData {
    /// A fresh store: the directory, and new services when the suite runs
    /// on the scale-out engine.
    fn from(data_dir: TempDir) -> Self {
        Self {
            data_dir,
            services: scaleout_services(),
        }
    }
}

/// The app alone, calling `provider_url` (which may not be listening yet).
pub async fn spawn_gateway(
    provider_url: &str,
    data: impl Into<AppData>,
    tweak: impl FnOnce(&mut GatewayConfig),
) -> TestApp {
    let AppData { data_dir, services } = data.into();
    let mut config = test_config(&data_dir, provider_url);
    if let Some((redis, vhost)) = &services {
        config.backend = BackendKind::Scaleout;
        config.redis_url = redis.url().into();
        config.amqp_url = vhost.amqp_url().into();
    }
    tweak(&mut config);
    let app = Application::build(&config).await.expect("app builds");
    let address = format!("http://{}", app.local_addr().unwrap());
    let shutdown = app.shutdown_token();
    let records = app.records();
    let task = tokio::spawn(app.run_until_stopped());
    if services.is_some() {
        // A scale-out node takes requests at once, but is ready, as the
        // embedded engine is from the start, once its broker session is up.
        let check = records.clone();
        eventually("the node's RabbitMQ session", async || {
            check.work_queue_unavailable().is_none()
        })
        .await;
    }
    TestApp {
        address,
        client: reqwest::Client::new(),
        provider: None,
        records,
        data_dir,
        services,
        shutdown,
        task,
    }
}

/// With `HERALD_TEST_BACKEND=scaleout`, the suites that start Herald through
/// [`spawn_gateway`] run on the scale-out engine, each app on a private
/// Redis and vhost of its own.
fn scaleout_services() -> Option<(services::PrivateRedis, services::Vhost)> {
    if std::env::var("HERALD_TEST_BACKEND").as_deref() != Ok("scaleout") {
        return None;
    }
    let redis = services::PrivateRedis::start();
    let vhost = services::Vhost::create();
    match (redis, vhost) {
        (Some(redis), Some(vhost)) => Some((redis, vhost)),
        _ => {
            panic!("HERALD_TEST_BACKEND=scaleout needs redis-server and RabbitMQ on 127.0.0.1:5672")
        }
    }
}

/// A loopback port bound but not listening: connections to it are refused,
/// and no other socket can take it, until `listen` makes it a listener.
pub fn reserved_port() -> TcpSocket {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .expect("a loopback port");
    socket
}

/// Says that this machine lacks what a test needs. Under CI (`CI=true`, as
/// `.ci/run` sets it) that fails the test, naming what to install, so a
/// machine without a service never passes silently; elsewhere the test is
/// skipped with a message on standard error.
pub fn missing(what: &str, install: &str) {
    let under_ci = std::env::var("CI").is_ok_and(|ci| ci == "true" || ci == "1");
    assert!(!under_ci, "{what} is missing under CI: {install}");
    eprintln!("skipped: {what} is missing ({install})");
}

/// The path of command `name` on `PATH` (or `/usr/sbin`, `/sbin`); when it
/// is missing, [`missing`] says so and this answers `None`.
pub fn require_command(name: &str, install: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<std::path::PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin".into(), "/sbin".into()]);
    let found = dirs
        .into_iter()
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        missing(&format!("the command {name}"), install);
    }
    found
}

/// Waits until `check` holds, looking again every few milliseconds; fails
/// the test, naming `what`, once [`SETTLE_TIMEOUT`] has passed.
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

pub fn email() -> Value {
    json!({"to": "user@example.com", "message": "Your code is 1234", "type": "email"})
}

impl TestApp {
    pub fn provider(&self) -> &Simulator {
        &self
            .provider
            .as_ref()
            .expect("this app has a simulator")
            .simulator
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.address))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("request sent")
    }

    pub async fn create(&self, body: &Value) -> reqwest::Response {
        self.post_json("/v1/requests", body).await
    }

    /// Creates a request that must be accepted; returns its id.
    pub async fn create_ok(&self, body: &Value) -> String {
        let response = self.create(body).await;
        assert_eq!(
            response.status(),
            201,
            "create answered {}",
            response.status()
        );
        let body: Value = response.json().await.unwrap();
        body["id"].as_str().expect("an id").to_string()
    }

    pub async fn process(&self, id: &str) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/requests/{id}/process", self.address))
            .send()
            .await
            .expect("request sent")
    }

    /// Creates and processes a request; returns its id.
    pub async fn submit(&self, body: &Value) -> String {
        let id = self.create_ok(body).await;
        assert_eq!(self.process(&id).await.status(), 202);
        id
    }

    pub async fn status_of(&self, id: &str) -> String {
        let body: Value = self
            .get(&format!("/v1/requests/{id}"))
            .await
            .json()
            .await
            .unwrap();
        body["status"].as_str().unwrap_or_default().to_string()
    }

    pub async fn events_of(&self, id: &str) -> Vec<Value> {
        let body: Value = self
            .get(&format!("/v1/requests/{id}/events"))
            .await
            .json()
            .await
            .unwrap();
        body["events"].as_array().cloned().unwrap_or_default()
    }

    /// The `attempt_finished` events of a request, oldest first.
    pub async fn attempts_of(&self, id: &str) -> Vec<Value> {
        let events = self.events_of(id).await;
        events
            .into_iter()
            .filter(|e| e["event"] == "attempt_finished")
            .collect()
    }

    /// Polls until the request is `sent` or `failed`; returns which.
    pub async fn wait_until_final(&self, id: &str) -> String {
        let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        loop {
            let status = self.status_of(id).await;
            if status == "sent" || status == "failed" {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id} still {status}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Shuts the app down as SIGTERM would, and checks it stopped cleanly.
    /// The data directory is free to open again once this returns.
    pub async fn stop(self) -> AppData {
        let Self {
            shutdown,
            task,
            data_dir,
            services,
            ..
        } = self;
        shutdown.cancel();
        let stopped = tokio::time::timeout(SETTLE_TIMEOUT, task).await;
        let stopped = stopped.expect("the app stops within the settle timeout");
        stopped.expect("app task").expect("clean shutdown");
        AppData { data_dir, services }
    }
}
