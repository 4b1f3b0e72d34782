//! The durable outbox: the only module that knows sled.
//!
//! Trees:
//! - `requests`: request id → [`RequestRecord`];
//! - `outbox`: [`OutboxKey`] (priority, due time, id) → nothing; work waiting for the dispatcher;
//! - `leases`: request id → the outbox key it was leased from; work an attempt is running on;
//! - `events`: (request id, sequence) → [`Event`]; the append-only history;
//! - `idempotency`: client key → [`IdempotencyRecord`] (with client keys on,
//!   the key is prefixed by the client's name: see `src/api/auth.rs`);
//! - `owners`: request id → the API client that created it ([`owners`]);
//! - `meta`: the on-disk format version and the per-priority counts of
//!   undelivered requests ([`pending`]).
//!
//! Every state change after the create writes the request, its outbox or lease
//! entry, its event and the counts it changes in one sled transaction (a create
//! writes one fresh key with compare-and-swap: see [`Store::create`]; the
//! events of the create and of `process` are the record itself: see
//! [`RequestRecord::implied_events`]); acknowledgements wait for
//! [`GroupCommit`] to make them durable.

mod codec;
mod commit;
mod depth;
mod format;
mod keys;
mod owners;
mod pending;
mod records;
mod retention;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree, abort};
use sled::{Transactional, Tree};

pub use codec::{CodecError, RECORD_VERSION, decode, encode};
pub use commit::{FlushStats, GroupCommit};
use depth::EntryState;
use format::FORMAT_VERSION;
pub use keys::OutboxKey;
pub use records::{AttemptReport, Event, EventKind, IdempotencyRecord, RequestRecord};
pub use retention::PurgeBatch;

use crate::domain::{Notification, RequestId, Status, now_ms};
use crate::instruments;
use depth::OutboxDepth;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no request with id {0}")]
    NotFound(RequestId),
    #[error("the idempotency key was already used with a different request body")]
    IdempotencyConflict,
    #[error(
        "the data directory holds format version {found}; this build reads version {FORMAT_VERSION}"
    )]
    IncompatibleFormat { found: u8 },
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("could not make the write durable: {0}")]
    Flush(Arc<sled::Error>),
    /// The attempt's lease was taken back (returned to the outbox) before it finished.
    #[error("request {0} is no longer leased by this attempt")]
    LeaseLost(RequestId),
    #[error("corrupt {tree} key of {len} bytes")]
    CorruptKey { tree: &'static str, len: usize },
    #[error("corrupt pending count of {0} bytes")]
    CorruptCount(usize),
    #[error("corrupt record: {0}")]
    Codec(#[from] CodecError),
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(error: TransactionError<StoreError>) -> Self {
        match error {
            TransactionError::Abort(error) => error,
            TransactionError::Storage(error) => StoreError::Sled(error),
        }
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

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

/// How the database is tuned.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Upper bound of sled's page cache. sled's own default (1 GiB) would let
    /// memory grow far past what a sidecar gateway should use.
    pub cache_capacity_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            cache_capacity_bytes: 8 * 1024 * 1024,
        }
    }
}

/// The durable outbox. Cheap to share behind an `Arc`.
pub struct Store {
    requests: Tree,
    outbox: Tree,
    leases: Tree,
    events: Tree,
    idempotency: Tree,
    owners: Tree,
    meta: Tree,
    commit: GroupCommit,
    flusher: tokio::task::JoinHandle<FlushStats>,
    /// Requests in the outbox or leased: processing asked for, not yet final.
    depth: OutboxDepth,
    recovered_at_open: usize,
}

impl Store {
    /// Opens (or creates) the store in `path`, checks its format version and
    /// returns every lease a crash left behind to the outbox. Starts the flusher,
    /// so it must run inside a tokio runtime.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, &StoreOptions::default())
    }

    /// [`Store::open`] with explicit tuning.
    pub fn open_with(path: &Path, options: &StoreOptions) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(options.cache_capacity_bytes)
            .open()?;
        let (meta, outbox, leases) = (
            db.open_tree("meta")?,
            db.open_tree("outbox")?,
            db.open_tree("leases")?,
        );
        let trees = format::Trees {
            meta: &meta,
            outbox: &outbox,
            leases: &leases,
        };
        format::check_or_upgrade(&db, &trees)?;
        let (commit, flusher) = GroupCommit::start(db.clone());
        let store = Self {
            requests: db.open_tree("requests")?,
            outbox,
            leases,
            events: db.open_tree("events")?,
            idempotency: db.open_tree("idempotency")?,
            owners: db.open_tree("owners")?,
            meta,
            commit,
            flusher,
            depth: OutboxDepth::default(),
            recovered_at_open: 0,
        };
        let recovered = store.recover_leases()?;
        instruments::recovered_leases(recovered);
        // After recovery nothing is leased: every undelivered entry is in the outbox.
        let pending = pending::load(&store.meta)?;
        let depth = OutboxDepth::starting_at(|p| pending[usize::from(p.rank())]);
        Ok(Self {
            depth,
            recovered_at_open: recovered,
            ..store
        })
    }

    /// How many leases a crash had left, returned to the outbox at open.
    pub fn recovered_at_open(&self) -> usize {
        self.recovered_at_open
    }

    /// Requests stored, in any status.
    pub fn request_count(&self) -> usize {
        self.requests.len()
    }

    /// Requests waiting in the outbox or being attempted.
    pub fn pending(&self) -> u64 {
        self.depth.total()
    }

    /// Stores a new `queued` request and waits until it is on disk.
    ///
    /// Unlike every later transition, a create uses no sled transaction: sled
    /// 0.34 runs transactions under one process-wide exclusive lock, which
    /// serialised creates and held them off during every flush (a third of the
    /// throughput, measured). A create touches keys no one else writes yet,
    /// so compare-and-swap gives what the transaction gave; the one flush
    /// below covers all of its writes. Its `created` event is the record
    /// itself (see [`Store::events`]): one write per create, not two.
    pub async fn create(
        &self,
        notification: Notification,
        idempotency_key: Option<&str>,
    ) -> Result<CreateOutcome, StoreError> {
        self.create_for(notification, idempotency_key, None).await
    }

    /// [`Store::create`], for the API client `owner` when there is one.
    pub async fn create_for(
        &self,
        notification: Notification,
        idempotency_key: Option<&str>,
        owner: Option<&str>,
    ) -> Result<CreateOutcome, StoreError> {
        let now = now_ms();
        let mut id = RequestId::new();
        let mut outcome = CreateOutcome::Created(id);
        if let Some(key) = idempotency_key {
            let existing = self.bind_idempotency_key(key, id, &notification)?;
            if let Some(existing) = existing {
                id = existing;
                outcome = CreateOutcome::Replayed(existing);
            }
        }
        if let Some(owner) = owner {
            self.bind_owner(id, owner)?;
        }
        // Also on a replay: a crash between the binding and the request leaves
        // the binding alone, and the replay completes it.
        self.insert_new_request(id, notification, now)?;
        self.durable().await?;
        Ok(outcome)
    }

    /// Binds `key` to `id` unless it is bound already; returns the id it was
    /// bound to before, or refuses a different body.
    fn bind_idempotency_key(
        &self,
        key: &str,
        id: RequestId,
        notification: &Notification,
    ) -> Result<Option<RequestId>, StoreError> {
        let binding = encode(&IdempotencyRecord {
            id,
            notification: notification.clone(),
        })?;
        match self
            .idempotency
            .compare_and_swap(key, None::<&[u8]>, Some(binding))?
        {
            Ok(()) => Ok(None),
            Err(taken) => {
                let bytes = taken.current.ok_or(StoreError::IdempotencyConflict)?;
                bound_id(&bytes, notification).map(Some)
            }
        }
    }

    /// The request `key` is bound to with this same body, if any: what a
    /// create with `key` would answer as a replay, without writing anything.
    pub fn replay_of(
        &self,
        key: &str,
        notification: &Notification,
    ) -> Result<Option<RequestId>, StoreError> {
        match self.idempotency.get(key)? {
            Some(bytes) => bound_id(&bytes, notification).map(Some),
            None => Ok(None),
        }
    }

    /// Writes a `queued` request unless it exists already.
    fn insert_new_request(
        &self,
        id: RequestId,
        notification: Notification,
        now: u64,
    ) -> Result<(), StoreError> {
        let record = RequestRecord {
            id,
            notification,
            status: Status::Queued,
            created_at_ms: now,
            updated_at_ms: now,
            process_requested_at_ms: None,
            attempts: 0,
            next_attempt_at_ms: None,
            provider_id: None,
            last_error: None,
            // Sequence 0, `created`, is this record itself.
            event_count: 1,
        };
        // Compare-and-swap: a replay of the same idempotency key may have
        // written it already, concurrently or before a crash.
        let _ =
            self.requests
                .compare_and_swap(id.as_bytes(), None::<&[u8]>, Some(encode(&record)?))?;
        Ok(())
    }

    /// Records the intent to send `id`: puts it in the outbox once, and waits
    /// until that is on disk. Later calls change nothing.
    pub async fn request_processing(&self, id: RequestId) -> Result<ProcessOutcome, StoreError> {
        let now = now_ms();
        let trees = (&self.requests, &self.outbox, &self.meta);
        let outcome = trees.transaction(|(requests, outbox, meta)| {
            let mut record = get_record(requests, id)?;
            if record.process_requested_at_ms.is_some() {
                let outcome = ProcessOutcome::AlreadyRequested(record.status);
                return Ok((outcome, record.notification.priority));
            }
            record.process_requested_at_ms = Some(now);
            let key = OutboxKey::new(record.notification.priority, now, id);
            outbox.insert(&key.encode(), &b""[..])?;
            pending::adjust(meta, record.notification.priority, 1)?;
            // Its `process_requested` event is the record's
            // `process_requested_at_ms`: nothing to store (format 3).
            advance_history(&mut record, now);
            put_record(requests, &record)?;
            Ok((
                ProcessOutcome::Accepted(record.status),
                record.notification.priority,
            ))
        })?;
        if let ProcessOutcome::Accepted(_) = outcome.0 {
            self.depth.add(outcome.1, EntryState::Waiting);
        }
        // Also for a repeated call: the first call's write may still be in flight.
        self.durable().await?;
        Ok(outcome.0)
    }

    pub fn get(&self, id: RequestId) -> Result<Option<RequestRecord>, StoreError> {
        match self.requests.get(id.as_bytes())? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The request's history, oldest first; `None` for an unknown id.
    ///
    /// The events the record implies (`created`, `process_requested`: see
    /// [`RequestRecord::implied_events`]) are merged with the stored ones by
    /// sequence; where an older format stored one of them, the stored one is read.
    pub fn events(&self, id: RequestId) -> Result<Option<Vec<Event>>, StoreError> {
        let Some(record) = self.get(id)? else {
            return Ok(None);
        };
        let mut history: BTreeMap<u32, Event> = record.implied_events().collect();
        for entry in self.events.scan_prefix(id.as_bytes()) {
            let (key, bytes) = entry?;
            let sequence = keys::event_sequence(&key).ok_or(StoreError::CorruptKey {
                tree: "events",
                len: key.len(),
            })?;
            history.insert(sequence, decode(&bytes)?);
        }
        Ok(Some(history.into_values().collect()))
    }

    /// When the earliest outbox entry falls due, whatever its priority.
    pub fn next_due_ms(&self) -> Result<Option<u64>, StoreError> {
        let mut earliest = None;
        for rank in rank_range() {
            if let Some(key) = self.outbox.scan_prefix([rank]).keys().next() {
                let key = decode_outbox_key(&key?)?;
                earliest = Some(earliest.map_or(key.due_ms, |due: u64| due.min(key.due_ms)));
            }
        }
        Ok(earliest)
    }

    /// Takes the most urgent due entry out of the outbox and leases it: highest
    /// priority first, then earliest due. The request becomes `processing`.
    pub fn lease_next_due(&self, now_ms: u64) -> Result<Option<Lease>, StoreError> {
        for rank in rank_range() {
            while let Some(entry) = self.outbox.range(OutboxKey::due_range(rank, now_ms)).next() {
                let (key_bytes, _) = entry?;
                let key = decode_outbox_key(&key_bytes)?;
                if let Some(lease) = self.lease(key)? {
                    return Ok(Some(lease));
                }
            }
        }
        Ok(None)
    }

    fn lease(&self, key: OutboxKey) -> Result<Option<Lease>, StoreError> {
        let now = now_ms();
        let key_bytes = key.encode();
        let priority = key.priority();
        let taken = self.attempt_trees().transaction(
            |(leases, outbox, requests, events, meta)| {
                if outbox.remove(&key_bytes)?.is_none() {
                    // Leased by someone else since it was read: nothing to do.
                    return Ok(Taken::Gone);
                }
                let mut record = match requests.get(key.id.as_bytes())? {
                    Some(bytes) => decode::<RequestRecord>(&bytes).map_err(abort_with)?,
                    None => {
                        // An entry without its request cannot be sent: drop it, keep going.
                        tracing::error!(id = %key.id, "outbox entry without a request; removed");
                        pending::adjust(meta, priority, -1)?;
                        return Ok(Taken::Orphan);
                    }
                };
                record.status = Status::Processing;
                record.attempts += 1;
                record.next_attempt_at_ms = None;
                leases.insert(key.id.as_bytes(), &key_bytes)?;
                let attempt = record.attempts;
                append_event(
                    events,
                    &mut record,
                    EventKind::AttemptStarted { attempt },
                    now,
                )?;
                put_record(requests, &record)?;
                Ok(Taken::Leased(Lease {
                    id: record.id,
                    notification: record.notification,
                    attempt,
                    process_requested_at_ms: record.process_requested_at_ms.unwrap_or(now),
                }))
            },
        )?;
        match taken {
            Taken::Leased(lease) => {
                let priority = lease.notification.priority;
                self.depth
                    .moved(priority, EntryState::Waiting, EntryState::Leased);
                Ok(Some(lease))
            }
            Taken::Orphan => {
                self.depth.remove(priority, EntryState::Waiting);
                Ok(None)
            }
            Taken::Gone => Ok(None),
        }
    }

    /// Ends a leased attempt as `decision` says, records `report` in the history,
    /// and waits until that is on disk. Returns the request's new status.
    pub async fn finish_attempt(
        &self,
        lease: &Lease,
        mut report: AttemptReport,
        decision: Decision,
    ) -> Result<Status, StoreError> {
        let now = now_ms();
        report.next_attempt_at_ms = decision.next_attempt_at_ms();
        let priority = lease.notification.priority;
        let trees = self.attempt_trees();
        let status = trees.transaction(|(leases, outbox, requests, events, meta)| {
            if leases.remove(lease.id.as_bytes())?.is_none() {
                // Recovered meanwhile: the request is back in the outbox and
                // its next attempt records the outcome.
                return abort(StoreError::LeaseLost(lease.id));
            }
            let mut record = get_record(requests, lease.id)?;
            match decision {
                Decision::Sent => {
                    record.status = Status::Sent;
                    record.provider_id = report.provider_id.clone();
                    pending::adjust(meta, priority, -1)?;
                }
                Decision::Failed => {
                    record.status = Status::Failed;
                    pending::adjust(meta, priority, -1)?;
                }
                Decision::RetryAt { due_ms } | Decision::Deferred { due_ms } => {
                    let key = OutboxKey::new(record.notification.priority, due_ms, lease.id);
                    outbox.insert(&key.encode(), &b""[..])?;
                    record.next_attempt_at_ms = Some(due_ms);
                }
            }
            if let Decision::Deferred { .. } = decision {
                record.attempts = record.attempts.saturating_sub(1);
            }
            record.last_error = report.error.clone();
            let event = EventKind::AttemptFinished(report.clone());
            append_event(events, &mut record, event, now)?;
            put_record(requests, &record)?;
            Ok(record.status)
        })?;
        match decision {
            Decision::RetryAt { .. } | Decision::Deferred { .. } => {
                self.depth
                    .moved(priority, EntryState::Leased, EntryState::Waiting)
            }
            Decision::Sent | Decision::Failed => self.depth.remove(priority, EntryState::Leased),
        }
        self.durable().await?;
        Ok(status)
    }

    /// The trees leasing, finishing and recovering an attempt write, in the
    /// order their transactions name them: leases, outbox, requests, events, meta.
    fn attempt_trees(&self) -> (&Tree, &Tree, &Tree, &Tree, &Tree) {
        (
            &self.leases,
            &self.outbox,
            &self.requests,
            &self.events,
            &self.meta,
        )
    }

    /// Puts every leased entry back in the outbox, due now, keeping its priority.
    /// Runs at open (after a crash) and after a shutdown that abandoned attempts.
    pub fn recover_leases(&self) -> Result<usize, StoreError> {
        let now = now_ms();
        let mut recovered = 0;
        for entry in self.leases.iter() {
            let (id_bytes, key_bytes) = entry?;
            let leased_from = decode_outbox_key(&key_bytes)?;
            let priority = leased_from.priority();
            let trees = self.attempt_trees();
            let returned = trees.transaction(|(leases, outbox, requests, events, meta)| {
                leases.remove(&id_bytes)?;
                let Some(bytes) = requests.get(leased_from.id.as_bytes())? else {
                    // A lease without its request cannot be sent: drop it, as
                    // `lease` drops such an outbox entry, rather than refuse to open.
                    tracing::error!(id = %leased_from.id, "lease without a request; removed");
                    pending::adjust(meta, priority, -1)?;
                    return Ok(false);
                };
                let mut record: RequestRecord = decode(&bytes).map_err(abort_with)?;
                let key = OutboxKey {
                    due_ms: now,
                    ..leased_from
                };
                outbox.insert(&key.encode(), &b""[..])?;
                append_event(events, &mut record, EventKind::LeaseRecovered, now)?;
                put_record(requests, &record)?;
                Ok(true)
            })?;
            if returned {
                self.depth
                    .moved(priority, EntryState::Leased, EntryState::Waiting);
                recovered += 1;
            } else {
                self.depth.remove(priority, EntryState::Leased);
            }
        }
        Ok(recovered)
    }

    /// Waits until every write made so far is on disk.
    pub async fn durable(&self) -> Result<(), StoreError> {
        self.commit.durable().await.map_err(StoreError::Flush)
    }

    /// Flushes, stops the flusher and releases the database (its lock included).
    pub async fn close(self) -> Result<FlushStats, StoreError> {
        self.durable().await?;
        let Self {
            commit, flusher, ..
        } = self;
        drop(commit);
        flusher
            .await
            .map_err(|error| StoreError::Sled(sled::Error::ReportableBug(error.to_string())))
    }

    /// Whether the database answers reads: the readiness probe's store check.
    pub fn is_healthy(&self) -> bool {
        self.meta.get(format::FORMAT_VERSION_KEY).is_ok()
    }
}

fn rank_range() -> impl Iterator<Item = u8> {
    crate::domain::Priority::ALL.iter().map(|p| p.rank())
}

fn decode_outbox_key(bytes: &[u8]) -> Result<OutboxKey, StoreError> {
    OutboxKey::decode(bytes).ok_or(StoreError::CorruptKey {
        tree: "outbox",
        len: bytes.len(),
    })
}

/// The id of an idempotency binding, or a conflict when it was made for
/// another body.
fn bound_id(binding: &[u8], notification: &Notification) -> Result<RequestId, StoreError> {
    let existing: IdempotencyRecord = decode(binding)?;
    if existing.notification == *notification {
        Ok(existing.id)
    } else {
        Err(StoreError::IdempotencyConflict)
    }
}

/// What `lease` found at an outbox entry.
enum Taken {
    Leased(Lease),
    /// The entry had no request; it was removed.
    Orphan,
    /// The entry was gone already.
    Gone,
}

fn abort_with(error: CodecError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(StoreError::Codec(error))
}

fn get_record(requests: &TransactionalTree, id: RequestId) -> TxResult<RequestRecord> {
    match requests.get(id.as_bytes())? {
        Some(bytes) => decode(&bytes).map_err(abort_with),
        None => abort(StoreError::NotFound(id)),
    }
}

fn put_record(requests: &TransactionalTree, record: &RequestRecord) -> TxResult<()> {
    requests.insert(record.id.as_bytes(), encode(record).map_err(abort_with)?)?;
    Ok(())
}

/// Appends an event to the record's history and advances its sequence.
fn append_event(
    events: &TransactionalTree,
    record: &mut RequestRecord,
    kind: EventKind,
    now: u64,
) -> TxResult<()> {
    let event = Event {
        at_ms: now,
        status: record.status,
        kind,
    };
    let key = keys::event_key(record.id, record.event_count);
    events.insert(&key, encode(&event).map_err(abort_with)?)?;
    advance_history(record, now);
    Ok(())
}

/// Counts one more event in the record's history, stored or implied.
fn advance_history(record: &mut RequestRecord, now: u64) {
    record.updated_at_ms = now;
    record.event_count += 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Channel, Priority};

    /// A valid notification; the store's other test modules use it too.
    pub(super) fn notification(priority: Priority) -> Notification {
        Notification {
            to: "user@example.com".into(),
            message: "hi".into(),
            channel: Channel::Email,
            priority,
        }
    }

    async fn processed(store: &Store, priority: Priority) -> RequestId {
        let CreateOutcome::Created(id) = store.create(notification(priority), None).await.unwrap()
        else {
            panic!("created")
        };
        store.request_processing(id).await.unwrap();
        id
    }

    /// A fresh store holding one normal request, processed: due in the outbox.
    async fn store_with_one_processed() -> (tempfile::TempDir, Store, RequestId) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = processed(&store, Priority::Normal).await;
        (dir, store, id)
    }

    #[tokio::test]
    async fn leases_go_by_priority_then_age_and_skip_entries_not_yet_due() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let low = processed(&store, Priority::Low).await;
        let normal = processed(&store, Priority::Normal).await;
        let high = processed(&store, Priority::High).await;
        let now = now_ms() + 1;
        let order: Vec<RequestId> = (0..3)
            .map(|_| store.lease_next_due(now).unwrap().unwrap().id)
            .collect();
        assert_eq!(order, [high, normal, low]);
        assert!(store.lease_next_due(now).unwrap().is_none());
        assert_eq!(store.get(high).unwrap().unwrap().status, Status::Processing);
        assert_eq!(store.pending(), 3, "leased entries are still pending");
    }

    #[tokio::test]
    async fn a_retry_returns_to_the_outbox_and_a_final_outcome_leaves_it() {
        let (_dir, store, id) = store_with_one_processed().await;
        let lease = store.lease_next_due(now_ms() + 1).unwrap().unwrap();
        let later = now_ms() + 60_000;
        let report = AttemptReport {
            attempt: 1,
            http_status: Some(503),
            ..AttemptReport::default()
        };
        let status = store
            .finish_attempt(&lease, report, Decision::RetryAt { due_ms: later })
            .await
            .unwrap();
        assert_eq!(status, Status::Processing);
        assert_eq!(store.next_due_ms().unwrap(), Some(later));
        assert!(
            store.lease_next_due(now_ms()).unwrap().is_none(),
            "not due yet"
        );

        let lease = store.lease_next_due(later).unwrap().unwrap();
        assert_eq!(lease.attempt, 2);
        let report = AttemptReport {
            attempt: 2,
            http_status: Some(200),
            ..AttemptReport::default()
        };
        store
            .finish_attempt(&lease, report, Decision::Sent)
            .await
            .unwrap();
        assert_eq!(store.get(id).unwrap().unwrap().status, Status::Sent);
        assert_eq!((store.pending(), store.next_due_ms().unwrap()), (0, None));
        let kinds: Vec<_> = store
            .events(id)
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|e| e.status)
            .collect();
        use Status::*;
        assert_eq!(
            kinds,
            [Queued, Queued, Processing, Processing, Processing, Sent]
        );
    }

    #[tokio::test]
    async fn the_record_implies_its_created_and_process_events_and_attempts_are_stored() {
        let (_dir, store, id) = store_with_one_processed().await;
        let stored_sequences = || -> Vec<u32> {
            let stored = store.events.scan_prefix(id.as_bytes()).keys();
            stored
                .map(|key| keys::event_sequence(&key.unwrap()).unwrap())
                .collect()
        };
        assert_eq!(stored_sequences(), Vec::<u32>::new());
        store.lease_next_due(now_ms() + 1).unwrap().unwrap();
        assert_eq!(stored_sequences(), [2]);

        let record = store.get(id).unwrap().unwrap();
        let history = store.events(id).unwrap().unwrap();
        let kinds: Vec<_> = history.iter().map(|e| e.kind.clone()).collect();
        use EventKind::*;
        assert_eq!(
            kinds,
            [Created, ProcessRequested, AttemptStarted { attempt: 1 }]
        );
        assert_eq!(history[0].at_ms, record.created_at_ms);
        assert_eq!(Some(history[1].at_ms), record.process_requested_at_ms);
        assert_eq!(record.event_count, 3);
    }

    #[tokio::test]
    async fn leases_left_by_a_crash_return_to_the_outbox_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let store = Store::open(dir.path()).unwrap();
            let id = processed(&store, Priority::High).await;
            store.lease_next_due(now_ms() + 1).unwrap().unwrap();
            store.close().await.unwrap();
            id // closed with the lease outstanding, as a crash would leave it
        };
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.recovered_at_open(), 1);
        assert_eq!(store.pending(), 1);
        let lease = store.lease_next_due(now_ms() + 1).unwrap().unwrap();
        assert_eq!((lease.id, lease.attempt), (id, 2));
        let events = store.events(id).unwrap().unwrap();
        assert!(events.iter().any(|e| e.kind == EventKind::LeaseRecovered));
    }

    #[tokio::test]
    async fn a_deferred_attempt_does_not_count_against_the_budget() {
        let (_dir, store, id) = store_with_one_processed().await;
        let now = now_ms();
        let mut attempts = Vec::new();
        for decision in [
            Decision::Deferred { due_ms: now },
            Decision::RetryAt { due_ms: now },
            Decision::Deferred { due_ms: now },
            Decision::Sent,
        ] {
            let lease = store.lease_next_due(now + 1).unwrap().unwrap();
            attempts.push(lease.attempt);
            let report = AttemptReport {
                attempt: lease.attempt,
                ..AttemptReport::default()
            };
            store
                .finish_attempt(&lease, report, decision)
                .await
                .unwrap();
        }
        assert_eq!(attempts, [1, 1, 2, 2]);
        let record = store.get(id).unwrap().unwrap();
        assert_eq!((record.status, record.attempts), (Status::Sent, 2));
        let finished = store.events(id).unwrap().unwrap();
        let finished = finished
            .iter()
            .filter(|e| matches!(e.kind, EventKind::AttemptFinished(_)));
        assert_eq!(finished.count(), 4, "the history keeps every call");
    }

    #[tokio::test]
    async fn an_outbox_entry_is_leased_once() {
        let (_dir, store, id) = store_with_one_processed().await;
        let key = store.outbox.iter().next().unwrap().unwrap().0;
        let key = decode_outbox_key(&key).unwrap();
        let first = store.lease(key).unwrap().unwrap();
        assert_eq!((first.id, first.attempt), (id, 1));
        assert!(store.lease(key).unwrap().is_none(), "already leased");
        assert_eq!(store.get(id).unwrap().unwrap().attempts, 1);
        assert_eq!(store.pending(), 1);
    }

    #[tokio::test]
    async fn an_attempt_whose_lease_was_recovered_records_nothing() {
        let (_dir, store, id) = store_with_one_processed().await;
        let lease = store.lease_next_due(now_ms() + 1).unwrap().unwrap();
        assert_eq!(store.recover_leases().unwrap(), 1);

        let late = store.finish_attempt(&lease, AttemptReport::default(), Decision::Sent);
        assert!(matches!(late.await, Err(StoreError::LeaseLost(lost)) if lost == id));
        let record = store.get(id).unwrap().unwrap();
        assert_eq!(record.status, Status::Processing);
        assert_eq!(store.pending(), 1);
        let again = store.lease_next_due(now_ms() + 1).unwrap().unwrap();
        assert_eq!((again.id, again.attempt), (id, 2));
    }

    #[tokio::test]
    async fn a_lease_without_its_request_is_dropped_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let id = processed(&store, Priority::High).await;
            store.lease_next_due(now_ms() + 1).unwrap().unwrap();
            store.requests.remove(id.as_bytes()).unwrap();
            store.close().await.unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.recovered_at_open(), 0);
        assert_eq!((store.pending(), store.leases.len()), (0, 0));
    }

    #[tokio::test]
    async fn processing_twice_and_unknown_ids_change_nothing() {
        let (_dir, store, id) = store_with_one_processed().await;
        let again = store.request_processing(id).await.unwrap();
        assert_eq!(again, ProcessOutcome::AlreadyRequested(Status::Queued));
        assert_eq!(store.pending(), 1);
        let unknown = RequestId::new();
        assert!(matches!(
            store.request_processing(unknown).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(store.get(unknown).unwrap().is_none());
        assert!(store.events(unknown).unwrap().is_none());
    }

    #[tokio::test]
    async fn idempotency_keys_bind_one_body() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let first = store
            .create(notification(Priority::Normal), Some("k"))
            .await
            .unwrap();
        let CreateOutcome::Created(id) = first else {
            panic!("created")
        };
        let replay = store
            .create(notification(Priority::Normal), Some("k"))
            .await
            .unwrap();
        assert_eq!(replay, CreateOutcome::Replayed(id));
        let other = store.create(notification(Priority::High), Some("k")).await;
        assert!(matches!(other, Err(StoreError::IdempotencyConflict)));
        assert_eq!(store.request_count(), 1);
    }

    #[tokio::test]
    async fn a_replay_completes_a_binding_a_crash_left_without_its_request() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = RequestId::new();
        let binding = IdempotencyRecord {
            id,
            notification: notification(Priority::Normal),
        };
        store
            .idempotency
            .insert("k", encode(&binding).unwrap())
            .unwrap();
        let replay = store
            .create(notification(Priority::Normal), Some("k"))
            .await
            .unwrap();
        assert_eq!(replay, CreateOutcome::Replayed(id));
        assert_eq!(store.get(id).unwrap().unwrap().status, Status::Queued);
        assert_eq!(store.events(id).unwrap().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn pending_counts_persist_through_every_transition_and_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            for priority in [
                Priority::High,
                Priority::High,
                Priority::Normal,
                Priority::Low,
            ] {
                processed(&store, priority).await;
            }
            store
                .create(notification(Priority::Low), None)
                .await
                .unwrap();
            let due = now_ms() + 1;
            let sent = store.lease_next_due(due).unwrap().unwrap();
            let report = AttemptReport::default();
            store
                .finish_attempt(&sent, report.clone(), Decision::Sent)
                .await
                .unwrap();
            let retried = store.lease_next_due(due).unwrap().unwrap();
            let retry = Decision::RetryAt { due_ms: due };
            store
                .finish_attempt(&retried, report.clone(), retry)
                .await
                .unwrap();
            let failed = store.lease_next_due(due).unwrap().unwrap();
            store
                .finish_attempt(&failed, report, Decision::Failed)
                .await
                .unwrap();
            store.lease_next_due(due).unwrap().unwrap();
            assert_eq!(store.pending(), 2);
            store.close().await.unwrap(); // one lease outstanding, as a crash leaves it
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.recovered_at_open(), 1);
        assert_eq!(store.pending(), 2);
        let persisted = pending::load(&store.meta).unwrap();
        let scanned = pending::count_by_scan(&store.outbox, &store.leases).unwrap();
        assert_eq!(persisted, scanned);
        assert_eq!(persisted.iter().sum::<u64>(), 2);
    }

    /// Marks `store` as written by format `version`, closes it, opens its
    /// directory again and checks that the open upgraded it.
    async fn reopened_as_format(store: Store, dir: &Path, version: u8) -> Store {
        store
            .meta
            .insert(format::FORMAT_VERSION_KEY, &[version])
            .unwrap();
        store.close().await.unwrap();
        let store = Store::open(dir).unwrap();
        let found = store.meta.get(format::FORMAT_VERSION_KEY).unwrap();
        assert_eq!(found.as_deref(), Some(&[FORMAT_VERSION][..]));
        store
    }

    /// An event as an older format stored it, at sequence `seq` of `id`.
    fn store_event(store: &Store, id: RequestId, seq: u32, at_ms: u64, kind: EventKind) {
        let event = Event {
            at_ms,
            status: Status::Queued,
            kind,
        };
        let key = keys::event_key(id, seq);
        store.events.insert(key, encode(&event).unwrap()).unwrap();
    }

    #[tokio::test]
    async fn a_format_1_database_is_upgraded_and_keeps_its_stored_created_events() {
        let dir = tempfile::tempdir().unwrap();
        let created_at = 1_700_000_000_000;
        let store = Store::open(dir.path()).unwrap();
        let id = processed(&store, Priority::High).await;
        processed(&store, Priority::Low).await;
        store.lease_next_due(now_ms() + 1).unwrap().unwrap();
        // What format 1 left: no counts, a stored `created` event.
        for &priority in Priority::ALL {
            store.meta.remove(pending::key(priority)).unwrap();
        }
        let seq = records::CREATED_SEQUENCE;
        store_event(&store, id, seq, created_at, EventKind::Created);

        let store = reopened_as_format(store, dir.path(), 1).await;
        assert_eq!((store.pending(), store.recovered_at_open()), (2, 1));
        let events = store.events(id).unwrap().unwrap();
        let created: Vec<_> = events
            .iter()
            .filter(|e| e.kind == EventKind::Created)
            .collect();
        assert_eq!(created.len(), 1, "{events:?}");
        assert_eq!(created[0].at_ms, created_at);
        assert_eq!(events[0].kind, EventKind::Created);
    }

    #[tokio::test]
    async fn a_format_2_database_is_upgraded_and_keeps_its_stored_process_events() {
        let dir = tempfile::tempdir().unwrap();
        let requested_at = 1_700_000_000_000;
        let store = Store::open(dir.path()).unwrap();
        let id = processed(&store, Priority::Normal).await;
        // What format 2 left: a stored `process_requested` event.
        let seq = records::PROCESS_REQUESTED_SEQUENCE;
        store_event(&store, id, seq, requested_at, EventKind::ProcessRequested);

        let store = reopened_as_format(store, dir.path(), 2).await;
        assert_eq!(store.pending(), 1);
        let events = store.events(id).unwrap().unwrap();
        let kinds: Vec<_> = events.iter().map(|e| e.kind.clone()).collect();
        assert_eq!(kinds, [EventKind::Created, EventKind::ProcessRequested]);
        assert_eq!(events[1].at_ms, requested_at, "the stored event is read");
    }

    #[tokio::test]
    async fn a_database_of_another_format_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("meta")
                .unwrap()
                .insert(format::FORMAT_VERSION_KEY, &[FORMAT_VERSION + 1])
                .unwrap();
            db.flush().unwrap();
        }
        let refused = Store::open(dir.path());
        assert!(
            matches!(refused, Err(StoreError::IncompatibleFormat { found }) if found == FORMAT_VERSION + 1)
        );
    }
}
