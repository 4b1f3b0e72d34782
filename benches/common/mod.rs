//! Helpers the store benches share: runtimes, sample notifications, and a
//! fixture builder that fills a data directory through the public `Store` API.

#![allow(dead_code)] // each bench binary uses its own share of these helpers

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use herald::domain::{Channel, Notification, Priority, now_ms};
use herald::store::embedded::EmbeddedStore as Store;
use herald::store::{AttemptReport, Decision};
use tokio::runtime::Runtime;

/// A multi-threaded runtime like the gateway's (one worker per core).
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The priority of the `i`-th sample request: 20% high, 50% normal, 30% low.
pub fn priority_of(i: u64) -> Priority {
    match i % 10 {
        0 | 1 => Priority::High,
        2..=6 => Priority::Normal,
        _ => Priority::Low,
    }
}

/// A notification about the size the API accepts in practice (a ~120-byte message).
pub fn notification(i: u64) -> Notification {
    Notification {
        to: format!("user{i}@example.com"),
        message: format!(
            "Your verification code is {:06}. It expires in 10 minutes. \
             If you did not ask for it, ignore this message.",
            i % 1_000_000
        ),
        channel: match i % 3 {
            0 => Channel::Email,
            1 => Channel::Sms,
            _ => Channel::Push,
        },
        priority: priority_of(i),
    }
}

/// The report of a successful provider call.
pub fn sent_report(attempt: u32) -> AttemptReport {
    AttemptReport {
        attempt,
        http_status: Some(202),
        provider_id: Some("prov-0123456789".into()),
        latency_ms: 12,
        ..AttemptReport::default()
    }
}

/// Runs `count` jobs numbered `0..count` over `tasks` concurrent tasks and
/// waits for all of them. Each task takes every `tasks`-th number.
pub async fn spread<F, Fut>(count: u64, tasks: u64, job: F)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let job = Arc::new(job);
    let handles: Vec<_> = (0..tasks.min(count.max(1)))
        .map(|task| {
            let job = job.clone();
            tokio::spawn(async move {
                let mut i = task;
                while i < count {
                    job(i).await;
                    beat();
                    i += tasks;
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("bench task panicked");
    }
}

/// Adds `count` requests to the outbox: `create` then `request_processing`,
/// each awaited until durable, over `tasks` concurrent tasks.
pub async fn fill_outbox(store: &Arc<Store>, first: u64, count: u64, tasks: u64) {
    let store = store.clone();
    spread(count, tasks, move |i| {
        let store = store.clone();
        async move {
            let outcome = store
                .create(notification(first + i), None)
                .await
                .expect("create");
            let herald::store::CreateOutcome::Created(id) = outcome else {
                unreachable!("no idempotency key was given")
            };
            store.request_processing(id).await.expect("process");
        }
    })
    .await;
}

/// Leases up to `count` due entries (they stay leased) and makes that durable.
pub async fn lease_some(store: &Store, count: u64) -> u64 {
    let now = now_ms();
    let mut leased = 0;
    while leased < count {
        beat();
        match store.lease_next_due(now).expect("lease") {
            Some(_) => leased += 1,
            None => break,
        }
    }
    store.durable().await.expect("durable");
    leased
}

/// Leases every due entry and schedules it for a retry `delay` from now, so the
/// outbox holds entries that are not due yet.
pub async fn schedule_retries(store: &Arc<Store>, count: u64, delay: Duration, tasks: u64) {
    let now = now_ms();
    let mut leases = Vec::new();
    while (leases.len() as u64) < count {
        beat();
        match store.lease_next_due(now).expect("lease") {
            Some(lease) => leases.push(lease),
            None => break,
        }
    }
    let leases = Arc::new(leases);
    let wait_ms = delay.as_millis() as u64;
    let total = leases.len() as u64;
    let store = store.clone();
    spread(total, tasks, move |i| {
        let (store, leases) = (store.clone(), leases.clone());
        async move {
            let lease = &leases[i as usize];
            let report = AttemptReport {
                attempt: lease.attempt,
                http_status: Some(503),
                error: Some("HTTP 503".into()),
                ..AttemptReport::default()
            };
            store
                .finish_attempt(lease, report, Decision::RetryAfter { wait_ms })
                .await
                .expect("finish");
        }
    })
    .await;
}

/// What [`build_recovery_fixture`] made, and how long it took.
#[derive(Debug)]
pub struct FixtureReport {
    pub pending: u64,
    pub leased: u64,
    pub build: Duration,
    pub bytes_on_disk: u64,
}

/// Fills a fresh data directory at `dir` with `pending` requests in the outbox,
/// `leased` of them then leased (as a crash would leave them), and closes it.
pub fn build_recovery_fixture(dir: &Path, pending: u64, leased: u64) -> FixtureReport {
    let started = Instant::now();
    let rt = runtime();
    rt.block_on(async {
        let store = Arc::new(Store::open(dir).expect("open fixture store"));
        // Batches keep the sled transaction working set (and memory) bounded.
        let batch = 50_000;
        let mut done = 0;
        while done < pending {
            let n = batch.min(pending - done);
            fill_outbox(&store, done, n, 256).await;
            done += n;
        }
        let got = lease_some(&store, leased).await;
        assert_eq!(got, leased, "fixture leased fewer entries than asked");
        assert_eq!(store.pending(), pending);
        let store = Arc::into_inner(store).expect("no other store handle");
        store.close().await.expect("close fixture store");
    });
    rt.shutdown_timeout(Duration::from_secs(30));
    FixtureReport {
        pending,
        leased,
        build: started.elapsed(),
        bytes_on_disk: dir_size(dir),
    }
}

/// Copies a closed data directory, recursively.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy dir");
    for entry in std::fs::read_dir(from).expect("read fixture dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy fixture file");
            // Written back now, not during the open that reads it: a crashed
            // store's log is already on disk, and the writeback of a fresh copy
            // would compete with the open for the disk and the CPU.
            std::fs::File::open(&target)
                .and_then(|copy| copy.sync_all())
                .expect("sync fixture copy");
        }
    }
}

/// Bytes of every file under `dir`.
pub fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| {
            let entry = entry.expect("dir entry");
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                dir_size(&entry.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

static HEARTBEAT: AtomicU64 = AtomicU64::new(0);

/// Records progress for [`start_watchdog`].
pub fn beat() {
    HEARTBEAT.fetch_add(1, Ordering::Relaxed);
}

/// Ends the bench process with an explanation if nothing calls [`beat`] for
/// `stall`: sled 0.34 can deadlock under write load (a writer holding the
/// segment accountant waits for a file truncation queued behind I/O threads that
/// wait for that same lock), and a hung `cargo bench` says nothing about why.
pub fn start_watchdog(stall: Duration) {
    static STARTED: Once = Once::new();
    STARTED.call_once(|| {
        std::thread::spawn(move || {
            let tick = Duration::from_secs(5);
            let (mut last, mut quiet) = (HEARTBEAT.load(Ordering::Relaxed), Duration::ZERO);
            loop {
                std::thread::sleep(tick);
                let now = HEARTBEAT.load(Ordering::Relaxed);
                if now != last {
                    (last, quiet) = (now, Duration::ZERO);
                    continue;
                }
                quiet += tick;
                if quiet >= stall {
                    eprintln!(
                        "bench watchdog: no progress for {quiet:?}; most likely the sled 0.34 \
                         deadlock (main thread in SegmentAccountant::next waiting for a \
                         truncation, sled-io threads in IoBufs::write_to_log). \
                         Attach gdb to confirm; aborting."
                    );
                    std::process::exit(2);
                }
            }
        });
    });
}
