//! `herald-drill`, the kill-restart drill: runs the `herald` binary as a child
//! process under a steady load of create+process, kills it with SIGKILL at
//! random moments, restarts it on the same data directory, lets the outbox
//! drain and prints one table. On the scale-out engine it runs `--nodes`
//! nodes on one Redis and RabbitMQ and each kill takes one of them. It exits 0 only if no acknowledged request was
//! lost or left stuck, none is marked sent without a delivery, and the
//! provider's duplicates stay within what the kills can explain.
//!
//! This file owns the drill's phases, in order; the pieces are its modules.

mod args;
mod audit;
mod child;
mod failure;
mod load;
mod report;
mod workspace;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use herald::config::BackendKind;
use herald::simulator::{SimConfig, Simulator};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use args::DrillArgs;
use audit::{Audit, Found};
use child::{HeraldProcess, Launcher};
use failure::{Deadline, DrillError};
use load::Load;
use report::Report;
use workspace::Workspace;

/// Longest a single HTTP call to Herald may take before the client gives up on it.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
const KILL_POLL: Duration = Duration::from_millis(2);
const IDLE_POLL: Duration = Duration::from_millis(100);

#[tokio::main]
async fn main() -> ExitCode {
    let args = DrillArgs::parse();
    let workspace = match Workspace::prepare(args.work_dir.clone()) {
        Ok(workspace) => workspace,
        Err(error) => {
            eprintln!("herald-drill: cannot prepare the work directory: {error}");
            return ExitCode::from(2);
        }
    };
    match drill(&args, &workspace).await {
        Ok(report) => {
            println!("{}", report.render());
            let problems = report.problems();
            workspace.finish(problems.is_empty());
            if problems.is_empty() {
                println!("PASS");
                ExitCode::SUCCESS
            } else {
                println!("FAIL: {}", problems.join("; "));
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("herald-drill: {error}");
            workspace.finish(false);
            ExitCode::from(2)
        }
    }
}

async fn drill(args: &DrillArgs, workspace: &Workspace) -> Result<Report, DrillError> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let limit = Duration::from_secs(args.timeout_secs);
    let provider = Simulator::spawn(SimConfig {
        seed: Some(seed),
        ..args.profile.config()
    })
    .await?;
    let launchers = launchers(args, workspace, &provider.url())?;
    let http = reqwest::Client::builder().timeout(HTTP_TIMEOUT).build()?;
    let addresses: Vec<String> = launchers.iter().map(Launcher::base_url).collect();
    eprintln!(
        "drill: profile {}, seed {seed}, {:?} engine, herald on {}",
        args.profile,
        args.backend,
        addresses.join(" ")
    );
    let mut nodes = Vec::with_capacity(launchers.len());
    for launcher in &launchers {
        let mut node = launcher.start()?;
        node.wait_ready(launcher, &http, Deadline::after("the first start", limit))
            .await?;
        nodes.push(node);
    }
    let load = load_with_kills(args, seed, &launchers, &http, &mut nodes).await?;
    eprintln!(
        "drill: load done in {:.1?}; waiting for the outbox to drain",
        load.duration
    );
    let drain_started = Instant::now();
    let drain_deadline = Deadline::after("the drain", limit);
    // Any node answers for all: they share the records.
    let audit = audit::drain_and_audit(
        &launchers[0],
        &http,
        &load.ids,
        args.clients,
        drain_deadline,
    )
    .await?;
    let drain_time = drain_started.elapsed();
    for node in &mut nodes {
        node.kill()?;
    }
    // A stalled call may still deliver: let it land before reading the ledger.
    let last_calls = Deadline::after("the provider's last calls", limit);
    wait_until_idle(&provider.simulator, last_calls).await?;
    Ok(report(
        args,
        seed,
        &load,
        &audit,
        drain_time,
        &provider.simulator,
    ))
}

/// What the load phase leaves behind.
struct LoadOutcome {
    /// Every acknowledged request.
    ids: Vec<String>,
    client_retries: usize,
    /// From each restart to its first 200 on `/ready`.
    restarts: Vec<Duration>,
    duration: Duration,
}

/// One launcher per node: the engine's flags, an instance id each, and (for
/// the embedded engine's one node) the workspace's data directory.
fn launchers(
    args: &DrillArgs,
    workspace: &Workspace,
    provider_url: &str,
) -> Result<Vec<Launcher>, DrillError> {
    let engine = args.engine_flags().map_err(DrillError::Usage)?;
    let bin = herald_bin(args)?;
    (0..args.nodes)
        .map(|node| {
            let mut flags = engine.clone();
            flags.extend([
                "--instance-id".to_string(),
                format!("drill-node-{}", node + 1),
            ]);
            let data_dir = match args.nodes {
                1 => workspace.data_dir(),
                _ => workspace.data_dir().join(format!("node-{}", node + 1)),
            };
            let launcher = Launcher::new(
                bin.clone(),
                data_dir,
                workspace.log(),
                provider_url.to_string(),
                args.max_in_flight,
                flags,
            )?;
            Ok(launcher)
        })
        .collect()
}

/// Runs the clients and, meanwhile, kills a node at each kill point and
/// puts a restarted one in its place.
async fn load_with_kills(
    args: &DrillArgs,
    seed: u64,
    launchers: &[Launcher],
    http: &reqwest::Client,
    nodes: &mut [HeraldProcess],
) -> Result<LoadOutcome, DrillError> {
    let started = Instant::now();
    let limit = Duration::from_secs(args.timeout_secs);
    let deadline = Deadline::after("the load", limit);
    let addresses = launchers.iter().map(Launcher::base_url).collect();
    let load = Arc::new(Load::new(http.clone(), addresses, args.requests));
    let clients = load.spawn_clients(args.clients, deadline);
    let mut restarts = Vec::new();
    for (kill_at, node) in kill_points(seed, args.kills, args.requests, launchers.len()) {
        if !wait_for_acknowledged(&load, kill_at, deadline).await? {
            break;
        }
        let launcher = &launchers[node];
        nodes[node].kill()?;
        nodes[node] = launcher.start()?;
        let ready_after = nodes[node]
            .wait_ready(launcher, http, Deadline::after("a restart", limit))
            .await?;
        eprintln!(
            "drill: kill {} of {} (node {}) at {kill_at} acknowledged; ready again after {ready_after:?}",
            restarts.len() + 1,
            args.kills,
            node + 1
        );
        restarts.push(ready_after);
    }
    let mut ids = Vec::with_capacity(args.requests);
    for client in clients {
        ids.extend(client.await??);
    }
    Ok(LoadOutcome {
        ids,
        client_retries: load.retried(),
        restarts,
        duration: started.elapsed(),
    })
}

fn report(
    args: &DrillArgs,
    seed: u64,
    load: &LoadOutcome,
    audit: &Audit,
    drain_time: Duration,
    provider: &Simulator,
) -> Report {
    // The URLs may carry credentials: the replay line names the flags only.
    let engine = match args.backend {
        BackendKind::Scaleout => format!(
            " --backend scaleout --nodes {} --redis-url … --amqp-url …",
            args.nodes
        ),
        BackendKind::Embedded => String::new(),
    };
    Report {
        profile: args.profile,
        engine,
        nodes: args.nodes,
        seed,
        clients: args.clients,
        requests: args.requests,
        max_in_flight: args.max_in_flight,
        kills: load.restarts.len(),
        acknowledged: load.ids.len(),
        lost: audit.count(Found::Lost),
        stuck: audit.stuck(),
        pending_after_drain: audit.pending_after_drain,
        sent: audit.count(Found::Sent),
        failed: audit.count(Found::Failed),
        sent_never_delivered: never_delivered(provider, audit.sent_ids(&load.ids)),
        provider: provider.stats(),
        client_retries: load.client_retries,
        restarts: load.restarts.clone(),
        load_time: load.duration,
        drain_time,
    }
}

/// The kill moments, as counts of acknowledged creates (uniform over the
/// load, sorted), each with the node it kills: the same for the same seed.
fn kill_points(seed: u64, kills: usize, requests: usize, nodes: usize) -> Vec<(usize, usize)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut points: Vec<usize> = (0..kills).map(|_| rng.random_range(1..requests)).collect();
    points.sort_unstable();
    points
        .into_iter()
        .map(|point| (point, rng.random_range(0..nodes)))
        .collect()
}

/// Waits until `count` creates are acknowledged; false if the clients all
/// stopped first (their results say why).
async fn wait_for_acknowledged(
    load: &Load,
    count: usize,
    deadline: Deadline,
) -> Result<bool, DrillError> {
    loop {
        if load.acknowledged() >= count {
            return Ok(true);
        }
        if !load.clients_running() {
            return Ok(false);
        }
        deadline.check()?;
        tokio::time::sleep(KILL_POLL).await;
    }
}

async fn wait_until_idle(simulator: &Simulator, deadline: Deadline) -> Result<(), DrillError> {
    while simulator.calls_in_progress() > 0 {
        deadline.check()?;
        tokio::time::sleep(IDLE_POLL).await;
    }
    Ok(())
}

/// How many of `sent` the provider never answered 2xx.
fn never_delivered<'a>(simulator: &Simulator, sent: impl Iterator<Item = &'a String>) -> usize {
    let delivered: HashSet<String> = simulator
        .calls()
        .into_iter()
        .filter(|call| call.is_delivery())
        .map(|call| call.id)
        .collect();
    sent.filter(|id| !delivered.contains(*id)).count()
}

/// `--herald-bin`, else `herald` next to this executable (both are in
/// `target/release` after `cargo build --release --bins`).
fn herald_bin(args: &DrillArgs) -> std::io::Result<PathBuf> {
    match &args.herald_bin {
        Some(bin) => Ok(bin.clone()),
        None => Ok(std::env::current_exe()?.with_file_name("herald")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_points_lie_inside_the_load_and_replay_with_the_seed() {
        let points = kill_points(7, 20, 100, 3);
        assert_eq!(points.len(), 20);
        assert!(points.is_sorted_by_key(|(point, _)| *point));
        assert!(points.iter().all(|(point, _)| (1..100).contains(point)));
        assert!(points.iter().all(|(_, node)| *node < 3));
        assert_eq!(points, kill_points(7, 20, 100, 3));
        assert!(
            kill_points(7, 20, 100, 1)
                .iter()
                .all(|(_, node)| *node == 0)
        );
    }
}
