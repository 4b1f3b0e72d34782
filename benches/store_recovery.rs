//! Startup: how long `Store::open` takes on a data directory holding 100 000 and
//! 1 000 000 pending requests. The gateway binds its listener only after
//! `Store::open` returns, so this is the floor of "restart → /ready answers"
//! (`scripts/restart-with-pending.sh` times the real binary end to end).
//!
//! Fixtures are built with the public API (`create` + `request_processing` over
//! 256 concurrent tasks, then `lease_next_due` on 32 of them, the gateway's
//! default `--max-in-flight`, as a crash mid-dispatch leaves them), all in one
//! process lifetime, and closed. Building the 1M one takes minutes, so fixtures
//! are kept under the target directory (`CARGO_TARGET_TMPDIR`), keyed by a hash
//! of the store sources that decide the on-disk layout; they are rebuilt when
//! those change, or when `HERALD_BENCH_REBUILD_FIXTURES=1`. The build time and
//! size on disk are printed. Every iteration opens a fresh copy of the pristine
//! fixture (the copy is made and written back to disk outside the timing, and
//! the opened store is dropped outside the timing), so each open has the same
//! work to do. The copies sit in the page cache: this is a warm restart (crash
//! or redeploy), not a cold boot.
//!
//! - `store_open/{100k,1M}_pending_after_crash`: `Store::open` of the fixture as
//!   its building process left it: sled replays its whole log (sled 0.34 writes
//!   its snapshot only when it opens), the format check, the 32 leases returned
//!   to the outbox, the persisted pending counts read.
//! - `store_open/{100k,1M}_pending_after_restart`: the same data once opened
//!   and closed again: sled's snapshot is current, little log to replay.
//! - `store_open_parts/sled_open_and_trees/*`: sled alone opening the
//!   after-crash directory (with the store's default cache size) and the
//!   store's six trees, without the store's own start-up work.

mod common;

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    BatchSize, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group,
    criterion_main,
};
use herald::store::embedded::{EmbeddedStore as Store, StoreOptions, TREES};
use tempfile::TempDir;

use common::{beat, build_recovery_fixture, copy_dir, runtime, start_watchdog};

/// The sources that decide what a data directory holds; a change rebuilds the fixtures.
const LAYOUT_SOURCES: [&str; 9] = [
    include_str!("../src/store/embedded/mod.rs"),
    include_str!("../src/store/embedded/writes.rs"),
    include_str!("../src/store/embedded/format.rs"),
    include_str!("../src/store/embedded/pending.rs"),
    include_str!("../src/store/records.rs"),
    include_str!("../src/store/embedded/keys.rs"),
    include_str!("../src/store/embedded/codec.rs"),
    include_str!("../src/store/embedded/integrity.rs"),
    include_str!("../src/domain.rs"),
];

/// Leases outstanding in the fixture: the gateway's default `--max-in-flight`.
const LEASED: u64 = 32;

/// A closed data directory after a crash, and the same data after one restart.
struct Fixture {
    pending: u64,
    after_crash: PathBuf,
    after_restart: PathBuf,
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
        after_restart: dir.join("after_restart"),
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
    let built = build_recovery_fixture(&after_crash, pending, LEASED);
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

    let after_restart = building.path().join("after_restart");
    copy_dir(&after_crash, &after_restart);
    let rt = runtime();
    rt.block_on(async {
        let store = Store::open(&after_restart).expect("open fixture copy");
        assert_eq!(store.recovered_at_open() as u64, LEASED);
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

fn store_open(c: &mut Criterion) {
    start_watchdog(Duration::from_secs(600));
    let rt = runtime();
    for (label, pending) in [("100k", 100_000u64), ("1M", 1_000_000)] {
        let fixture = std::cell::OnceCell::new();
        let fixture = || fixture.get_or_init(|| load_fixture(pending));

        let mut group = c.benchmark_group("store_open");
        configure(&mut group, pending);
        let cases = [("after_crash", LEASED, false), ("after_restart", 0, true)];
        for (case, leased, restarted) in cases {
            let id = BenchmarkId::from_parameter(format!("{label}_pending_{case}"));
            group.bench_function(id, |b| {
                let fixture = fixture();
                let from = if restarted {
                    &fixture.after_restart
                } else {
                    &fixture.after_crash
                };
                b.iter_batched(
                    || fresh_copy(from),
                    |dir| (open_copy(&rt, &dir, fixture.pending, leased), dir),
                    BatchSize::PerIteration,
                )
            });
        }
        group.finish();

        let mut group = c.benchmark_group("store_open_parts");
        configure(&mut group, pending);
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

        group.finish();
    }
}

fn configure(group: &mut BenchmarkGroup<'_, WallTime>, pending: u64) {
    group
        .throughput(Throughput::Elements(pending))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(5));
}

criterion_group!(benches, store_open);
criterion_main!(benches);
