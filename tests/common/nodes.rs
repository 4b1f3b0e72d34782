//! Scale-out nodes for the tests: real `herald` binaries on a private
//! Redis and vhost (`services.rs`), and the waits and calls the scale-out
//! suites share.

use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use herald::simulator::{RunningSimulator, Simulator};

use super::child::HeraldProcess;
use super::fast_provider;
use super::services::{PrivateRedis, Vhost, scaleout_flags};

/// An HTTP client whose every call has a deadline.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client")
}

/// The private services, or `None` (the test is skipped) when missing.
pub fn services() -> Option<(PrivateRedis, Vhost)> {
    Some((PrivateRedis::start()?, Vhost::create()?))
}

/// One node; its data directory is unused by this engine, but required.
pub async fn node(dir: &TempDir, provider: &str, flags: &[String]) -> HeraldProcess {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    HeraldProcess::start(dir.path(), provider, &flags).await
}

/// A `--dispatch external` node on `redis` and `vhost`: it publishes the
/// work and calls no provider (senders of the operator's own do).
pub async fn external_node(
    dir: &TempDir,
    redis: &str,
    vhost: &Vhost,
    extra: &[&str],
) -> HeraldProcess {
    let mut flags = scaleout_flags(redis, vhost);
    flags.extend(["--dispatch", "external"].map(String::from));
    flags.extend(extra.iter().map(|flag| flag.to_string()));
    node(dir, "http://127.0.0.1:9", &flags).await
}

/// A ready [`external_node`], with a client and the directory it keeps.
pub async fn ready_external_node(
    redis: &PrivateRedis,
    vhost: &Vhost,
    extra: &[&str],
) -> (reqwest::Client, TempDir, HeraldProcess) {
    let client = client();
    let dir = TempDir::new().unwrap();
    let herald = external_node(&dir, &redis.url(), vhost, extra).await;
    herald.wait_ready(&client).await;
    (client, dir, herald)
}

/// One ready node on `redis` and `vhost`, calling a fast simulator of its own.
pub struct OneNode {
    pub provider: RunningSimulator,
    pub client: reqwest::Client,
    pub herald: HeraldProcess,
    /// Kept for the node's life (bind it, e.g. `dir: _dir`).
    pub dir: TempDir,
}

pub async fn one_ready_node(redis: &PrivateRedis, vhost: &Vhost) -> OneNode {
    let provider = Simulator::spawn(fast_provider()).await.unwrap();
    let client = client();
    let dir = TempDir::new().unwrap();
    let herald = node(&dir, &provider.url(), &scaleout_flags(&redis.url(), vhost)).await;
    herald.wait_ready(&client).await;
    OneNode {
        provider,
        client,
        herald,
        dir,
    }
}

/// Creates `body` on `herald` and asks for its delivery; returns its id.
pub async fn submit(herald: &HeraldProcess, client: &reqwest::Client, body: &Value) -> String {
    let response = client
        .post(format!("{}/v1/requests", herald.address))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(herald.process(client, &id).await, 202);
    id
}

/// Every id reached the provider exactly once.
pub fn assert_delivered_once(provider: &Simulator, ids: &[String]) {
    for id in ids {
        assert_eq!(provider.deliveries_of(id), 1, "{id} delivered once");
    }
}

/// Waits, up to `within`, until every id is `sent` or `failed` on `herald`;
/// fails naming the first still open.
pub async fn all_final(
    herald: &HeraldProcess,
    client: &reqwest::Client,
    ids: &[String],
    within: Duration,
) {
    let deadline = tokio::time::Instant::now() + within;
    for id in ids {
        loop {
            let status = herald.request(client, id).await["status"].clone();
            if status == "sent" || status == "failed" {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id} is still {status} after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Waits up to 15 s until `id` is final on `herald`; its record then.
pub async fn final_record(herald: &HeraldProcess, client: &reqwest::Client, id: &str) -> Value {
    let ids = [id.to_string()];
    all_final(herald, client, &ids, Duration::from_secs(15)).await;
    herald.request(client, id).await
}

/// A command on the private Redis through redis-cli.
pub fn redis_command(redis: &PrivateRedis, args: &[&str]) {
    let status = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string()])
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("redis-cli runs");
    assert!(status.success(), "redis-cli {args:?}");
}

pub fn uuid_like() -> &'static str {
    "01890000-0000-7000-8000-000000000000"
}
