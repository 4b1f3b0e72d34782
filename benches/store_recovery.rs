//! Startup: how long `Store::open` takes on a data directory holding 100 000 and
//! 1 000 000 pending requests. The gateway binds its listener only after
//! `Store::open` returns, so this is the floor of "restart → /ready answers".
//!
//! Fixtures are built with the public API (`create` + `request_processing` over
//! 256 concurrent tasks, then `lease_next_due` on half of them, as a crash
//! mid-dispatch would leave them) and closed. Building the 1M one takes minutes,
//! so fixtures are kept under the target directory (`CARGO_TARGET_TMPDIR`),
//! keyed by a hash of the store sources that decide the on-disk layout; they are
//! rebuilt when those change, or when `HERALD_BENCH_REBUILD_FIXTURES=1`. The
//! build time and size on disk are printed. Every iteration opens a fresh copy
//! of the pristine fixture (the copy is made outside the timing, and the opened
//! store is dropped outside the timing), so each open has the same work to do.
//! The copies sit in the page cache: this is a warm restart (crash or
//! redeploy), not a cold boot.
//!
//! - `store_open/{100k,1M}_pending_half_leased`: `Store::open` after a crash:
//!   sled recovery, the format check, `recover_leases` returning half of the
//!   entries to the outbox (one transaction each), and the `pending()` count.
//!   At 1M this takes about a minute per open, too long for ten samples, so by
//!   default it is timed once and printed (`store_open/1M_pending_half_leased:
//!   one open took ...`); `HERALD_BENCH_SLOW=1` samples it like the others.
//! - `store_open/{100k,1M}_pending_none_leased`: `Store::open` after a clean
//!   stop (the same data once opened and closed): no leases to return.
//! - `store_open_parts/sled_open_and_trees/*`: sled alone opening the directory
//!   (with the store's default cache size) and the store's six trees, without
//!   the store's own start-up work.
//! - `store_open_parts/pending_count/*`: the `pending()` initialisation (the
//!   outbox depth per priority), as `Store::open` computes it: one
//!   `scan_prefix(rank).count()` per priority, together a full scan of the
//!   outbox tree, timed on a freshly opened sled database.
//!
//! The difference between `half_leased` and `none_leased` is the cost of
//! returning the leases.

mod common;

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{
    BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use herald::domain::Priority;
use herald::store::{Store, StoreOptions};
use tempfile::TempDir;

use common::{beat, build_recovery_fixture, copy_dir, runtime, start_watchdog};

const TREES: [&str; 6] = [
    "requests",
    "outbox",
    "leases",
    "events",
    "idempotency",
    "meta",
];

/// The sources that decide what a data directory holds; a change rebuilds the fixtures.
const LAYOUT_SOURCES: [&str; 5] = [
    include_str!("../src/store/mod.rs"),
    include_str!("../src/store/records.rs"),
    include_str!("../src/store/keys.rs"),
    include_str!("../src/store/codec.rs"),
    include_str!("../src/domain.rs"),
];

/// A closed data directory after a crash, and the same data after one clean open.
struct Fixture {
    pending: u64,
    after_crash: PathBuf,
    after_clean_stop: PathBuf,
}

fn load_fixture(pending: u64) -> Fixture {
    let mut hasher = DefaultHasher::new();
    LAYOUT_SOURCES.hash(&mut hasher);
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("herald-store-fixtures");
    let suffix = format!("-{pending}-pending");
    let dir = root.join(format!("{:016x}{suffix}", hasher.finish()));
    let fixture = Fixture {
        pending,
        after_crash: dir.join("after_crash"),
        after_clean_stop: dir.join("after_clean_stop"),
    };
    let report = dir.join("report.txt");
    let rebuild = std::env::var_os("HERALD_BENCH_REBUILD_FIXTURES").is_some_and(|v| v == "1");
    if !rebuild && let Ok(text) = std::fs::read_to_string(&report) {
        println!("fixture (cached in {}): {text}", dir.display());
        return fixture;
    }

    // Fixtures of an older layout only take disk space.
    std::fs::create_dir_all(&root).expect("fixture root");
    for entry in std::fs::read_dir(&root).expect("read fixture root") {
        let path = entry.expect("dir entry").path();
        if path.to_string_lossy().ends_with(&suffix) {
            std::fs::remove_dir_all(&path).expect("remove old fixture");
        }
    }
    let building = tempfile::tempdir_in(&root).expect("tempdir");
    let after_crash = building.path().join("after_crash");
    let built = build_recovery_fixture(&after_crash, pending, pending / 2);
    let text = format!(
        "{} pending, {} leased, built in {:.1?} ({:.0} requests/s, each create + \
         request_processing), {:.1} MiB on disk",
        built.pending,
        built.leased,
        built.build,
        built.pending as f64 / built.build.as_secs_f64(),
        built.bytes_on_disk as f64 / (1024.0 * 1024.0),
    );
    println!("fixture (built in {}): {text}", dir.display());

    let after_clean_stop = building.path().join("after_clean_stop");
    copy_dir(&after_crash, &after_clean_stop);
    let rt = runtime();
    rt.block_on(async {
        let store = Store::open(&after_clean_stop).expect("open fixture copy");
        assert_eq!(store.recovered_at_open() as u64, pending / 2);
        store.close().await.expect("close fixture copy");
    });
    rt.shutdown_timeout(Duration::from_secs(30));
    std::fs::write(building.path().join("report.txt"), &text).expect("write report");
    std::fs::rename(building.keep(), &dir).expect("move fixture in place");
    fixture
}

fn fresh_copy(from: &Path) -> TempDir {
    beat();
    let to = tempfile::tempdir().expect("tempdir");
    copy_dir(from, to.path());
    beat();
    to
}

/// Opens a copy of `from` like the gateway does and checks what it found.
fn open_copy(rt: &tokio::runtime::Runtime, dir: &TempDir, pending: u64, leased: u64) -> Store {
    let _guard = rt.enter();
    let store = Store::open(dir.path()).expect("open");
    beat();
    assert_eq!(store.recovered_at_open() as u64, leased);
    assert_eq!(store.pending(), pending);
    store
}

fn slow_runs_wanted() -> bool {
    std::env::var_os("HERALD_BENCH_SLOW").is_some_and(|v| v == "1")
}

fn store_open(c: &mut Criterion) {
    start_watchdog(Duration::from_secs(600));
    let rt = runtime();
    for (label, pending) in [("100k", 100_000u64), ("1M", 1_000_000)] {
        let fixture = std::cell::OnceCell::new();
        let fixture = || fixture.get_or_init(|| load_fixture(pending));

        let mut group = c.benchmark_group("store_open");
        group
            .throughput(Throughput::Elements(pending))
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(1))
            .measurement_time(Duration::from_secs(5));

        let name = format!("{label}_pending_half_leased");
        if pending < 1_000_000 || slow_runs_wanted() {
            group.bench_function(BenchmarkId::from_parameter(&name), |b| {
                let fixture = fixture();
                b.iter_batched(
                    || fresh_copy(&fixture.after_crash),
                    |dir| {
                        let store = open_copy(&rt, &dir, fixture.pending, fixture.pending / 2);
                        (store, dir)
                    },
                    BatchSize::PerIteration,
                )
            });
        } else if criterion_filter_matches(&format!("store_open/{name}")) {
            let fixture = fixture();
            let dir = fresh_copy(&fixture.after_crash);
            let started = Instant::now();
            let store = open_copy(&rt, &dir, fixture.pending, fixture.pending / 2);
            let took = started.elapsed();
            drop(store);
            println!(
                "store_open/{name}: one open took {took:.2?} ({:.0} leases returned/s); \
                 not sampled (HERALD_BENCH_SLOW=1 samples it)",
                (fixture.pending / 2) as f64 / took.as_secs_f64()
            );
        }

        let id = BenchmarkId::from_parameter(format!("{label}_pending_none_leased"));
        group.bench_function(id, |b| {
            let fixture = fixture();
            b.iter_batched(
                || fresh_copy(&fixture.after_clean_stop),
                |dir| (open_copy(&rt, &dir, fixture.pending, 0), dir),
                BatchSize::PerIteration,
            )
        });
        group.finish();

        let mut group = c.benchmark_group("store_open_parts");
        group
            .throughput(Throughput::Elements(pending))
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(1))
            .measurement_time(Duration::from_secs(5));
        let cache_capacity = StoreOptions::default().cache_capacity_bytes;

        let id = BenchmarkId::new("sled_open_and_trees", format!("{label}_pending"));
        group.bench_function(id, |b| {
            let fixture = fixture();
            b.iter_batched(
                || fresh_copy(&fixture.after_crash),
                |dir| {
                    let db = sled::Config::new()
                        .path(dir.path())
                        .cache_capacity(cache_capacity)
                        .open()
                        .expect("sled");
                    let trees: Vec<_> = TREES
                        .iter()
                        .map(|name| db.open_tree(name).expect("tree"))
                        .collect();
                    (trees, db, dir)
                },
                BatchSize::PerIteration,
            )
        });

        let id = BenchmarkId::new("pending_count", format!("{label}_pending"));
        group.bench_function(id, |b| {
            let fixture = fixture();
            b.iter_batched(
                || {
                    let dir = fresh_copy(&fixture.after_clean_stop);
                    let db = sled::Config::new()
                        .path(dir.path())
                        .cache_capacity(cache_capacity)
                        .open()
                        .expect("sled");
                    let outbox = db.open_tree("outbox").expect("tree");
                    (outbox, db, dir)
                },
                |(outbox, db, dir)| {
                    let counted: usize = Priority::ALL
                        .iter()
                        .map(|priority| outbox.scan_prefix([priority.rank()]).count())
                        .sum();
                    assert_eq!(counted as u64, fixture.pending);
                    (outbox, db, dir)
                },
                BatchSize::PerIteration,
            )
        });
        group.finish();
    }
}

/// Whether `cargo bench -- FILTER` selects `id` and asks for real measurements
/// (not `--list` or `--test`); for work done outside criterion's own filtering.
fn criterion_filter_matches(id: &str) -> bool {
    const TAKES_VALUE: [&str; 14] = [
        "--baseline",
        "--color",
        "--confidence-level",
        "--format",
        "--load-baseline",
        "--measurement-time",
        "--noise-threshold",
        "--nresamples",
        "--output-format",
        "--plotting-backend",
        "--profile-time",
        "--sample-size",
        "--save-baseline",
        "--warm-up-time",
    ];
    let mut filters = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--list" || arg == "--test" {
            return false;
        } else if TAKES_VALUE.contains(&arg.as_str()) {
            args.next();
        } else if !arg.starts_with('-') {
            filters.push(arg);
        }
    }
    filters.is_empty() || filters.iter().any(|f| id.contains(f.as_str()))
}

criterion_group!(benches, store_open);
criterion_main!(benches);
