//! The kill-restart drill as a test: the `herald-drill` binary runs the real
//! `herald` binary under load, kills it three times with SIGKILL, and must
//! report nothing lost and nothing stuck after the outbox drains; once on the
//! embedded engine, once on three scale-out nodes.

mod common;

use std::process::{Command, Output};

use common::services::{PrivateRedis, Vhost};

/// Finds `| {what} | value | ... |` in the drill's table and returns the value.
fn table_value<'a>(table: &'a str, what: &str) -> &'a str {
    let prefix = format!("| {what} | ");
    table
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|rest| rest.split(" |").next())
        .unwrap_or_else(|| panic!("no `{what}` row in:\n{table}"))
}

/// Runs the drill with `args` and checks its verdict and the table's counts.
fn drill_passes(args: &[&str], requests: &str) {
    let output: Output = Command::new(env!("CARGO_BIN_EXE_herald-drill"))
        .args(["--herald-bin", env!("CARGO_BIN_EXE_herald")])
        .args(["--profile", "healthy", "--seed", "2026"])
        .args(["--kills", "3", "--requests", requests, "--clients", "32"])
        .args(["--timeout-secs", "120"])
        .args(args)
        .output()
        .expect("the drill runs");
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "drill failed ({}):\n{table}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(table_value(&table, "kills (SIGKILL, then restart)"), "3");
    assert_eq!(table_value(&table, "requests acknowledged (201)"), requests);
    assert_eq!(table_value(&table, "lost"), "0");
    assert_eq!(
        table_value(&table, "stuck queued/processing after drain"),
        "0"
    );
    assert_eq!(table_value(&table, "sent"), requests);
}

#[test]
fn three_kills_under_load_lose_nothing_and_leave_nothing_stuck() {
    drill_passes(&[], "3000");
}

#[test]
fn three_kills_of_scale_out_nodes_lose_nothing_and_leave_nothing_stuck() {
    let (Some(redis), Some(vhost)) = (PrivateRedis::start(), Vhost::create()) else {
        return;
    };
    let (redis_url, amqp_url) = (redis.url(), vhost.amqp_url());
    drill_passes(
        &[
            "--backend",
            "scaleout",
            "--nodes",
            "3",
            "--redis-url",
            &redis_url,
            "--amqp-url",
            &amqp_url,
        ],
        "1500",
    );
}
