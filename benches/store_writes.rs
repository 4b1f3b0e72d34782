//! Store throughput on the write path, measured through the public `Store` API
//! on a real sled data directory in a tempdir, inside a multi-threaded tokio
//! runtime like the gateway's.
//!
//! - `durable_create/{1,8,64}_concurrent_writers`: `Store::create` (one
//!   request record, written with compare-and-swap) awaited until group commit
//!   has made it durable, with N tasks creating at once. Reported per create; the
//!   throughput is creates per second.
//! - `state_transition/lease_and_finish_sent/{1,16}_in_flight`: one request's
//!   attempt as the dispatcher runs it: `lease_next_due` (outbox → lease,
//!   request → `processing`, `attempt_started` event, one transaction), then
//!   `finish_attempt(.., Decision::Sent)` (lease removed, request → `sent`,
//!   `attempt_finished` event, pending count, one transaction) awaited until
//!   durable.
//!   The outbox is refilled before each sample, outside the timing.
//!
//! After each of these, the store is closed and the group commit's batching is
//! printed: waiters served per flush (`fsync`), fills included.
//! - `outbox_scan/*/10k_entries`: the dispatcher's scans of an outbox holding
//!   10 000 entries (20% high, 50% normal, 30% low priority; 8 000 due now,
//!   2 000 scheduled for a retry in an hour): `next_due_ms`, `lease_next_due`
//!   taking the most urgent due entry (no durable wait: leasing is not awaited
//!   by the dispatcher either), and `lease_next_due` when nothing is due.
//!   Leased entries are put back with `recover_leases` every 1 000 leases,
//!   outside the timing, so the outbox stays between 9 000 and 10 000 entries.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use herald::domain::now_ms;
use herald::store::Decision;
use herald::store::embedded::EmbeddedStore as Store;
use tokio::runtime::Runtime;

use common::{
    beat, fill_outbox, notification, runtime, schedule_retries, sent_report, spread, start_watchdog,
};

fn open_store(rt: &Runtime, dir: &tempfile::TempDir) -> Arc<Store> {
    let _guard = rt.enter();
    Arc::new(Store::open(dir.path()).expect("open store"))
}

fn durable_create(c: &mut Criterion) {
    start_watchdog(Duration::from_secs(300));
    let rt = runtime();
    let mut group = c.benchmark_group("durable_create");
    group
        .throughput(Throughput::Elements(1))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for writers in [1u64, 8, 64] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(&rt, &dir);
        let id = BenchmarkId::from_parameter(format!("{writers}_concurrent_writers"));
        group.bench_function(id, |b| {
            b.iter_custom(|creates| {
                let store = store.clone();
                rt.block_on(async move {
                    let started = Instant::now();
                    spread(creates, writers, move |i| {
                        let store = store.clone();
                        async move {
                            store.create(notification(i), None).await.expect("create");
                        }
                    })
                    .await;
                    started.elapsed()
                })
            })
        });
        report_batching(
            &rt,
            store,
            &format!("durable_create/{writers}_concurrent_writers"),
        );
    }
    group.finish();
}

/// Closes the store and prints how many waiters each group-commit flush served.
fn report_batching(rt: &Runtime, store: Arc<Store>, name: &str) {
    let store = Arc::into_inner(store).expect("the bench holds the only store handle");
    let stats = rt.block_on(store.close()).expect("close");
    println!(
        "{name}: {} waiters over {} group-commit flushes ({:.1} per flush)",
        stats.waiters_served,
        stats.flushes,
        stats.waiters_served as f64 / stats.flushes.max(1) as f64
    );
}

fn state_transition(c: &mut Criterion) {
    start_watchdog(Duration::from_secs(300));
    let rt = runtime();
    let mut group = c.benchmark_group("state_transition");
    group
        .throughput(Throughput::Elements(1))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for in_flight in [1u64, 16] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(&rt, &dir);
        let mut numbered = 0;
        let id = BenchmarkId::new("lease_and_finish_sent", format!("{in_flight}_in_flight"));
        group.bench_function(id, |b| {
            b.iter_custom(|transitions| {
                let store = store.clone();
                let first = numbered;
                numbered += transitions;
                rt.block_on(async move {
                    fill_outbox(&store, first, transitions, 64).await;
                    let started = Instant::now();
                    spread(transitions, in_flight, move |_| {
                        let store = store.clone();
                        async move {
                            let lease = store
                                .lease_next_due(now_ms())
                                .expect("lease")
                                .expect("the outbox holds a due entry per transition");
                            store
                                .finish_attempt(&lease, sent_report(lease.attempt), Decision::Sent)
                                .await
                                .expect("finish");
                        }
                    })
                    .await;
                    started.elapsed()
                })
            })
        });
        let name = format!("state_transition/lease_and_finish_sent/{in_flight}_in_flight");
        report_batching(&rt, store, &name);
    }
    group.finish();
}

fn outbox_scan(c: &mut Criterion) {
    start_watchdog(Duration::from_secs(300));
    const ENTRIES: u64 = 10_000;
    const NOT_DUE: u64 = 2_000;
    const PUT_BACK_EVERY: u64 = 1_000;

    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(&rt, &dir);
    rt.block_on(async {
        fill_outbox(&store, 0, NOT_DUE, 64).await;
        schedule_retries(&store, NOT_DUE, Duration::from_secs(3600), 64).await;
        fill_outbox(&store, NOT_DUE, ENTRIES - NOT_DUE, 64).await;
    });
    assert_eq!(store.pending(), ENTRIES);

    let mut group = c.benchmark_group("outbox_scan");
    group
        .throughput(Throughput::Elements(1))
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    group.bench_function(BenchmarkId::new("next_due_ms", "10k_entries"), |b| {
        b.iter(|| store.next_due_ms().expect("next_due_ms"))
    });

    group.bench_function(BenchmarkId::new("lease_next_due", "10k_entries"), |b| {
        b.iter_custom(|leases| {
            let mut timed = Duration::ZERO;
            let mut left = leases;
            while left > 0 {
                let chunk = left.min(PUT_BACK_EVERY);
                let now = now_ms();
                let started = Instant::now();
                for _ in 0..chunk {
                    let lease = store.lease_next_due(now).expect("lease");
                    assert!(lease.is_some(), "the outbox holds due entries");
                    beat();
                }
                timed += started.elapsed();
                store.recover_leases().expect("recover");
                left -= chunk;
            }
            timed
        })
    });

    group.bench_function(
        BenchmarkId::new("lease_next_due_nothing_due", "10k_entries"),
        |b| b.iter(|| assert!(store.lease_next_due(0).expect("lease").is_none())),
    );
    group.finish();
}

criterion_group!(benches, durable_create, state_transition, outbox_scan);
criterion_main!(benches);
