//! The embedded engine: the durable outbox in one sled database, the only
//! code that knows sled. It implements [`Records`] and [`WorkSource`] for one
//! process; `pacing/` is its [`RateGate`](crate::store::RateGate).
//!
//! Trees:
//! - `requests`: request id → [`RequestRecord`];
//! - `outbox`: [`OutboxKey`] (priority, channel, time delivery was asked, id) → nothing; work that may go now;
//! - `delayed`: (due time, id) → the outbox key it takes once due; retries in their backoff;
//! - `leases`: request id → the outbox key it was leased from, with the
//!   lease's deadline and owner (`keys.rs`); work an attempt is running on;
//! - `events`: (request id, sequence) → [`Event`]; the append-only history;
//! - `idempotency`: client key → [`IdempotencyRecord`] (with client keys on,
//!   the key is prefixed by the client's name: see `src/api/auth.rs`);
//! - `owners`: request id → the API client that created it (`owners.rs`);
//! - `meta`: the on-disk format version and the per-priority counts of
//!   undelivered requests (`pending.rs`);
//! - sled's default tree: the number of the last group-commit flush
//!   (`commit.rs`), which the integrity record repeats (`integrity.rs`).
//!
//! Every state change after the create writes the request, its outbox or lease
//! entry, its event and the counts it changes in one sled transaction (a create
//! writes one fresh key with compare-and-swap: see `writes.rs`; the events of
//! the create and of `process` are the record itself: see
//! [`RequestRecord::implied_events`]); acknowledgements wait for the group
//! commit to make them durable.
//!
//! Where things live: `open.rs` opens and checks a directory, `writes.rs` and
//! `reads.rs` are the operations, `work.rs` waits for due work, `reopen.rs`
//! brings the store back after a write failed, `inspect.rs` is `herald check`
//! and `herald export`, `seam.rs` is the trait implementations.

mod attempts;
mod codec;
mod commit;
mod datadir;
mod disk_sync;
mod engine;
mod format;
mod health;
mod inspect;
mod integrity;
mod keys;
mod open;
mod owners;
pub mod pacing;
mod pending;
mod reads;
mod reopen;
mod retention;
mod seam;
mod work;
mod writes;

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::Notify;

pub use codec::{CodecError, RECORD_VERSION, decode, encode};
pub use commit::FlushStats;
pub use datadir::DataDirError;
pub use engine::TREES;
pub use inspect::{CheckReport, ExportLine, check, export};
pub use keys::OutboxKey;

use commit::{FlushError, Flusher};
use datadir::DataDir;
use engine::Engine;
use health::Health;
use pending::OutboxDepth;

use super::{
    AttemptReport, CreateOutcome, Decision, Event, EventKind, IdempotencyRecord, InstanceId, Lease,
    ProcessOutcome, PurgeBatch, RequestRecord, StorageState, StoreError,
};
use crate::domain::RequestId;

/// The log filter for the database library: warnings only.
pub const LOG_FILTER: &str = "sled=warn";

/// sled's errors where no running store is involved (opening, checking,
/// upgrading); a running store goes through `EmbeddedStore::sled_failed`,
/// which also stops writes.
impl From<sled::Error> for StoreError {
    fn from(error: sled::Error) -> Self {
        match error {
            sled::Error::Io(io) => StoreError::Unavailable(io.to_string()),
            other => StoreError::Corrupt(engine::describe(&other)),
        }
    }
}

impl From<sled::transaction::TransactionError<StoreError>> for StoreError {
    fn from(error: sled::transaction::TransactionError<StoreError>) -> Self {
        match error {
            sled::transaction::TransactionError::Abort(error) => error,
            sled::transaction::TransactionError::Storage(error) => error.into(),
        }
    }
}

impl From<CodecError> for StoreError {
    fn from(error: CodecError) -> Self {
        StoreError::Corrupt(error.to_string())
    }
}

impl From<DataDirError> for StoreError {
    fn from(error: DataDirError) -> Self {
        StoreError::Refused(error.to_string())
    }
}

/// How the database is tuned and opened.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Upper bound of sled's page cache. sled's own default (1 GiB) would let
    /// memory grow far past what a sidecar gateway should use.
    pub cache_capacity_bytes: u64,
    /// Open even when acknowledged requests are missing, taking what is
    /// left as the truth from now on (`--accept-data-loss`).
    pub accept_data_loss: bool,
    /// Whose leases this process writes.
    pub instance: InstanceId,
    /// How long a lease is given before it may be taken back: an attempt's
    /// whole provider call and more (the embedded engine takes back only
    /// leases of processes that are gone, which the directory lock proves).
    pub lease_for: std::time::Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            cache_capacity_bytes: 8 * 1024 * 1024,
            accept_data_loss: false,
            instance: InstanceId(format!("herald-{}", std::process::id())),
            lease_for: std::time::Duration::from_secs(60),
        }
    }
}

/// The running engine and the flusher task serving it.
struct Running {
    engine: Arc<Engine>,
    flusher: tokio::task::JoinHandle<Flusher>,
    released: tokio::sync::oneshot::Receiver<()>,
}

/// The durable outbox. Cheap to share behind an `Arc`.
pub struct EmbeddedStore {
    dir: Arc<DataDir>,
    options: StoreOptions,
    health: Arc<Health>,
    /// The open engine; `None` while the store is being reopened or is lost.
    engine: RwLock<Option<Arc<Engine>>>,
    /// What closing or reopening needs to take the engine down.
    running: Mutex<
        Option<(
            tokio::task::JoinHandle<Flusher>,
            tokio::sync::oneshot::Receiver<()>,
        )>,
    >,
    /// Requests in the outbox or leased: processing asked for, not yet final.
    depth: OutboxDepth,
    /// Requests leased to attempts still running in this process: a reopen
    /// returns every other lease it finds to the outbox.
    live_leases: Mutex<HashSet<RequestId>>,
    /// Wakes [`WorkSource::next`](crate::store::WorkSource::next): new or
    /// returned work is in the outbox.
    wake: Notify,
    recovered_at_open: usize,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `path` with the default options.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, &StoreOptions::default())
    }

    /// How many leases a crash had left, returned to the outbox at open.
    pub fn recovered_at_open(&self) -> usize {
        self.recovered_at_open
    }

    /// Requests stored, in any status.
    pub fn request_count(&self) -> Result<usize, StoreError> {
        Ok(self.engine()?.requests.len())
    }

    /// Requests waiting in the outbox or being attempted.
    pub fn pending(&self) -> u64 {
        self.depth.total()
    }

    /// The work source has new or returned work to look at.
    fn work_arrived(&self) {
        self.wake.notify_one();
    }

    /// Whether writes can be made durable now, and if not, why.
    pub fn storage_state(&self) -> StorageState {
        if self.health.state() == StorageState::Serving && !self.dir.is_in_place() {
            self.health.lose(&format!(
                "the data directory {} was deleted or replaced while Herald ran",
                self.dir.path().display()
            ));
        }
        self.health.state()
    }

    /// Waits until every write made so far is on disk.
    pub async fn durable(&self) -> Result<(), StoreError> {
        let engine = self.engine()?;
        engine.commit.durable().await.map_err(unavailable)
    }

    /// Flushes, stops the flusher, releases the database and records the
    /// clean stop in the integrity record. A store whose directory was lost
    /// answers the reason instead, so the gateway exits non-zero. Every call
    /// after it answers `Unavailable`.
    pub async fn close(&self) -> Result<FlushStats, StoreError> {
        let flushed = self.durable().await;
        let taken = self.take_engine().await;
        if let StorageState::Lost(reason) = self.storage_state() {
            return Err(StoreError::Unavailable(reason));
        }
        flushed?;
        let Some(mut flusher) = taken else {
            return Err(StoreError::Unavailable("the store was not open".into()));
        };
        open::record_clean_stop(&self.dir, &mut flusher)?;
        self.dir.release();
        Ok(flusher.stats)
    }

    /// The engine for one operation, or why there is none.
    fn engine(&self) -> Result<Arc<Engine>, StoreError> {
        let slot = self.engine.read().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some(engine) => Ok(engine.clone()),
            None => Err(StoreError::Unavailable(
                self.health
                    .refusal()
                    .unwrap_or_else(|| "the store is closed".into()),
            )),
        }
    }

    /// Takes the engine down: waits until its last user let go and the
    /// flusher stopped, so sled has closed its files. Returns what the
    /// flusher owned.
    async fn take_engine(&self) -> Option<Flusher> {
        let engine = self
            .engine
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(engine);
        let running = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let (flusher, released) = running?;
        let _ = released.await;
        flusher.await.ok()
    }

    /// Puts a freshly opened engine in place.
    fn install(&self, running: Running) {
        let Running {
            engine,
            flusher,
            released,
        } = running;
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = Some((flusher, released));
        *self.engine.write().unwrap_or_else(|p| p.into_inner()) = Some(engine);
    }

    /// A sled error during an operation: an I/O failure means sled refuses
    /// writes from now on, so the store stops taking them and reopens.
    fn sled_failed(&self, error: sled::Error) -> StoreError {
        match error {
            sled::Error::Corruption { .. } => {
                StoreError::Corrupt(format!("sled read damaged data: {error}"))
            }
            error => {
                let reason = engine::describe(&error);
                self.health.fail(&reason);
                StoreError::Unavailable(reason)
            }
        }
    }
}

/// A failed flush, as the callers see it (the flusher has told [`Health`]).
fn unavailable(error: FlushError) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::Notification;
    use crate::domain::{Channel, Priority};

    /// A valid notification; the store's other test modules use it too.
    pub(crate) fn notification(priority: Priority) -> Notification {
        Notification {
            to: "user@example.com".into(),
            message: "hello".into(),
            channel: Channel::Email,
            priority,
        }
    }

    /// Creates and processes one request of `priority`; returns its id.
    pub(crate) async fn processed(store: &EmbeddedStore, priority: Priority) -> RequestId {
        let CreateOutcome::Created(id) = store.create(notification(priority), None).await.unwrap()
        else {
            panic!("a fresh create is created")
        };
        store.request_processing(id).await.unwrap();
        id
    }

    /// A fresh store holding one processed request.
    pub(crate) async fn store_with_one_processed() -> (tempfile::TempDir, EmbeddedStore, RequestId)
    {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let id = processed(&store, Priority::Normal).await;
        (dir, store, id)
    }

    /// The engine, for tests that look at sled's trees.
    pub(crate) fn engine(store: &EmbeddedStore) -> Arc<Engine> {
        store.engine().unwrap()
    }
}
