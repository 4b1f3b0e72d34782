//! The durable outbox: the only module that knows sled.
//!
//! Trees:
//! - `requests`: request id → [`RequestRecord`];
//! - `outbox`: [`OutboxKey`] (priority, due time, id) → nothing; work waiting for the dispatcher;
//! - `leases`: request id → the outbox key it was leased from; work an attempt is running on;
//! - `events`: (request id, sequence) → [`Event`]; the append-only history;
//! - `idempotency`: client key → [`IdempotencyRecord`];
//! - `meta`: the on-disk format version and the per-priority counts of
//!   undelivered requests ([`pending`]);
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
//! `reads.rs` are the operations, `reopen.rs` brings the store back after a
//! write failed, `inspect.rs` is `herald check` and `herald export`.

mod codec;
mod commit;
mod datadir;
mod depth;
mod engine;
mod format;
mod health;
mod inspect;
mod integrity;
mod keys;
mod open;
mod pending;
mod reads;
mod records;
mod reopen;
mod retention;
mod writes;

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

pub use codec::{CodecError, RECORD_VERSION, decode, encode};
pub use commit::FlushStats;
pub use datadir::DataDirError;
pub use health::State as StorageState;
pub use inspect::{CheckReport, check, export};
pub use integrity::Loss;
pub use keys::OutboxKey;
pub use records::{AttemptReport, Event, EventKind, IdempotencyRecord, RequestRecord};
pub use retention::PurgeBatch;

use commit::{FlushError, Flusher};
use datadir::DataDir;
use depth::OutboxDepth;
use engine::Engine;
use format::FORMAT_VERSION;
use health::Health;

use crate::domain::{Notification, RequestId, Status};

/// What went wrong, in the store's own terms: the API and the dispatcher act
/// on these meanings, never on sled's errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no request with id {0}")]
    NotFound(RequestId),
    #[error("the idempotency key was already used with a different request body")]
    IdempotencyConflict,
    /// Nothing can be made durable now: a full disk, an I/O error, a store
    /// being reopened or lost. Nothing was accepted.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The attempt's lease was taken back (returned to the outbox) before it finished.
    #[error("request {0} is no longer leased by this attempt")]
    LeaseLost(RequestId),
    /// Something stored cannot be read.
    #[error("damaged data: {0}")]
    Corrupt(String),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(
        "the data directory holds format version {found}, written by a newer Herald; this build reads version {FORMAT_VERSION}: run that newer Herald, or restore a backup"
    )]
    IncompatibleFormat { found: u8 },
    /// Acknowledged data is missing, found at open.
    #[error(
        "{loss} in {dir}: restore the directory from a backup, or start with --accept-data-loss to go on without them (`herald export --data-dir {dir}` saves what is readable first)"
    )]
    DataLoss { dir: String, loss: String },
}

/// sled's errors where no running store is involved (opening, checking,
/// upgrading); a running store goes through `Store::sled_failed`, which also
/// stops writes.
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

/// What `create` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateOutcome {
    Created(RequestId),
    /// The idempotency key was seen before with the same body: the original id.
    Replayed(RequestId),
}

/// What `request_processing` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessOutcome {
    /// The request entered the outbox now.
    Accepted(Status),
    /// `process` had been called before; nothing changed.
    AlreadyRequested(Status),
}

/// An attempt the dispatcher is running: the request leaves the outbox while leased.
#[derive(Clone, Debug)]
pub struct Lease {
    pub id: RequestId,
    pub notification: Notification,
    /// This attempt's number, from 1.
    pub attempt: u32,
    pub process_requested_at_ms: u64,
}

/// How an attempt ends for the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Sent,
    RetryAt {
        due_ms: u64,
    },
    /// Try again at `due_ms`, and the attempt does not count against the
    /// retry budget (the provider said "later", or refused Herald itself, not
    /// the request): the next lease runs its number again.
    Deferred {
        due_ms: u64,
    },
    Failed,
}

impl Decision {
    /// When the request is tried again, if it is.
    pub fn next_attempt_at_ms(self) -> Option<u64> {
        match self {
            Self::RetryAt { due_ms } | Self::Deferred { due_ms } => Some(due_ms),
            Self::Sent | Self::Failed => None,
        }
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
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            cache_capacity_bytes: 8 * 1024 * 1024,
            accept_data_loss: false,
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
pub struct Store {
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
    recovered_at_open: usize,
}

impl Store {
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
    /// answers the reason instead, so the gateway exits non-zero.
    pub async fn close(self) -> Result<FlushStats, StoreError> {
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
    pub(crate) async fn processed(store: &Store, priority: Priority) -> RequestId {
        let CreateOutcome::Created(id) = store.create(notification(priority), None).await.unwrap()
        else {
            panic!("a fresh create is created")
        };
        store.request_processing(id).await.unwrap();
        id
    }

    /// A fresh store holding one processed request.
    pub(crate) async fn store_with_one_processed() -> (tempfile::TempDir, Store, RequestId) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = processed(&store, Priority::Normal).await;
        (dir, store, id)
    }

    /// The engine, for tests that look at sled's trees.
    pub(crate) fn engine(store: &Store) -> Arc<Engine> {
        store.engine().unwrap()
    }
}
