//! The binary as operators run it: SIGTERM drains and exits 0, the
//! `healthcheck` subcommand, and JSON logs that carry the request id.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::child::HeraldProcess;
use common::{eventually, fast_provider, spawn_provider_with_latency};
use herald::simulator::Simulator;
use serde_json::Value;
use tempfile::TempDir;

#[tokio::test]
async fn sigterm_lets_in_flight_calls_finish_then_exits_zero() {
    // Each provider call takes 300 ms, so the SIGTERM lands mid-call.
    let provider = spawn_provider_with_latency(300, 300).await;
    let data_dir = TempDir::new().unwrap();
    let client = reqwest::Client::new();
    let herald = HeraldProcess::start(&data_dir, &provider.url(), &[]).await;
    herald.wait_ready(&client).await;
    let id = herald.create(&client).await;
    assert_eq!(herald.process(&client, &id).await, 202);
    // In progress, or (on a machine slow enough to miss that) already answered.
    let simulator = &provider.simulator;
    eventually("the provider has the call", async || {
        simulator.calls_in_progress() > 0 || !simulator.calls_of(&id).is_empty()
    })
    .await;

    assert!(herald.terminate().await.success(), "exit 0 after SIGTERM");
    assert_eq!(
        provider.simulator.deliveries_of(&id),
        1,
        "the call in flight finished"
    );

    // The outcome was recorded before exit: a restart has nothing left to send.
    let herald = HeraldProcess::start(&data_dir, &provider.url(), &[]).await;
    let ready = herald.wait_ready(&client).await;
    assert_eq!(ready["pending"], 0);
    assert_eq!(herald.request(&client, &id).await["status"], "sent");
    assert!(herald.terminate().await.success());
}

#[tokio::test]
async fn a_client_holding_a_connection_open_does_not_hold_up_the_shutdown() {
    use tokio::io::AsyncWriteExt;

    let provider = spawn_provider_with_latency(1, 1).await;
    let data_dir = TempDir::new().unwrap();
    let client = reqwest::Client::new();
    let herald =
        HeraldProcess::start(&data_dir, &provider.url(), &["--shutdown-grace-ms", "300"]).await;
    herald.wait_ready(&client).await;
    let id = herald.create(&client).await;

    // Half a request: its body never comes, and the connection stays open.
    let address = herald.address.trim_start_matches("http://").to_string();
    let mut stalled = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = "POST /v1/requests HTTP/1.1\r\nHost: herald\r\n\
        Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"to\":";
    stalled.write_all(head.as_bytes()).await.unwrap();

    let status = tokio::time::timeout(Duration::from_secs(30), herald.terminate())
        .await
        .expect("the shutdown did not wait for the stalled client");
    assert!(status.success(), "exit 0");
    drop(stalled);

    let herald = HeraldProcess::start(&data_dir, &provider.url(), &[]).await;
    herald.wait_ready(&client).await;
    assert_eq!(herald.request(&client, &id).await["status"], "queued");
    assert!(herald.terminate().await.success());
}

#[tokio::test]
async fn healthcheck_exits_zero_only_when_herald_answers() {
    let provider = Simulator::spawn(fast_provider()).await.unwrap();
    let data_dir = TempDir::new().unwrap();
    let herald = HeraldProcess::start(&data_dir, &provider.url(), &[]).await;
    herald.wait_ready(&reqwest::Client::new()).await;
    let probe = |url: String| {
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["healthcheck", "--url", &url])
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .unwrap()
    };
    assert!(probe(format!("{}/health", herald.address)).success());
    assert!(!probe(format!("{}/no-such-route", herald.address)).success());
    let address = herald.address.clone();
    assert!(herald.terminate().await.success());
    assert!(
        !probe(format!("{address}/health")).success(),
        "nothing listens any more"
    );
}

#[tokio::test]
async fn json_logs_carry_the_request_id_on_every_line_about_it() {
    let provider = Simulator::spawn(fast_provider()).await.unwrap();
    let data_dir = TempDir::new().unwrap();
    let client = reqwest::Client::new();
    // The helper's herald always logs JSON (it reads its address from the log).
    let herald =
        HeraldProcess::start_logging(&data_dir, &provider.url(), &[], "warn,herald=debug").await;
    herald.wait_ready(&client).await;

    let id = herald.create(&client).await;
    assert_eq!(herald.process(&client, &id).await, 202);
    // The attempt is in flight until its outcome is logged and recorded,
    // and the SIGTERM drain waits for it.
    eventually("the provider has delivered it", async || {
        provider.simulator.deliveries_of(&id) > 0
    })
    .await;
    let (status, lines) = herald.terminate_with_logs().await;
    assert!(status.success());

    let lines: Vec<Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let about_requests = ["request stored", "processing requested", "provider attempt"];
    for message in about_requests {
        let line = lines
            .iter()
            .find(|l| l["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("no `{message}` line in {lines:?}"));
        let carried = line["fields"]["id"] == id.as_str() || line["span"]["id"] == id.as_str();
        assert!(carried, "`{message}` does not carry the id: {line}");
    }
}

#[test]
fn the_readme_run_command_runs_herald() {
    // `cargo run --release -- dev` needs a default binary: the crate has two.
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    assert!(
        manifest
            .lines()
            .any(|line| line.trim() == "default-run = \"herald\"")
    );
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(readme.contains("cargo run --release -- dev"));
    let version = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("herald "));
}
