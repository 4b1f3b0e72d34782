//! Every state change: create, process, lease, finish, release and the
//! recovery of leases. Each writes its keys in one sled transaction (a create
//! uses compare-and-swap instead) and waits for the group commit.

use std::collections::HashSet;

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree, abort};

use super::commit::Ack;
use super::engine::Engine;
use super::keys::LeaseEntry;
use super::pending::EntryState;
use super::{AttemptReport, Event, EventKind, IdempotencyRecord, OutboxKey, RequestRecord};
use super::{
    CreateOutcome, Decision, EmbeddedStore, Lease, ProcessOutcome, StoreError, decode, encode,
    keys, pending, unavailable,
};
use crate::domain::{Notification, RequestId, Status, now_ms};

pub(super) type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// What `lease` found at an outbox entry.
enum Taken {
    Leased(Lease),
    /// The entry had no request; it was removed.
    Orphan,
    /// The entry was gone already.
    Gone,
}

impl EmbeddedStore {
    /// Stores a new `queued` request and waits until it is on disk (and
    /// counted in the integrity record).
    ///
    /// Unlike every later transition, a create uses no sled transaction: sled
    /// 0.34 runs transactions under one process-wide exclusive lock, which
    /// serialised creates and held them off during every flush (a third of the
    /// throughput, measured). A create touches keys no one else writes yet,
    /// so compare-and-swap gives what the transaction gave; the one flush
    /// below covers all of its writes. Its `created` event is the record
    /// itself (see [`EmbeddedStore::events`]): one write per create, not two.
    pub async fn create(
        &self,
        notification: Notification,
        idempotency_key: Option<&str>,
    ) -> Result<CreateOutcome, StoreError> {
        self.create_for(notification, idempotency_key, None).await
    }

    /// [`EmbeddedStore::create`], for the API client `owner` when there is one.
    pub async fn create_for(
        &self,
        notification: Notification,
        idempotency_key: Option<&str>,
        owner: Option<&str>,
    ) -> Result<CreateOutcome, StoreError> {
        let engine = self.engine()?;
        let now = now_ms();
        let mut id = RequestId::new();
        let mut outcome = CreateOutcome::Created(id);
        if let Some(key) = idempotency_key {
            let existing = self.bind_idempotency_key(&engine, key, id, &notification)?;
            if let Some(existing) = existing {
                id = existing;
                outcome = CreateOutcome::Replayed(existing);
            }
        }
        if let Some(owner) = owner {
            self.bind_owner(&engine, id, owner)?;
        }
        // Also on a replay: a crash between the binding and the request leaves
        // the binding alone, and the replay completes it.
        let inserted = self.insert_new_request(&engine, id, notification, now)?;
        let ack = if inserted {
            Ack::Created(id)
        } else {
            Ack::Nothing
        };
        engine.commit.durable_with(ack).await.map_err(unavailable)?;
        Ok(outcome)
    }

    /// Binds `key` to `id` unless it is bound already; returns the id it was
    /// bound to before, or refuses a different body.
    fn bind_idempotency_key(
        &self,
        engine: &Engine,
        key: &str,
        id: RequestId,
        notification: &Notification,
    ) -> Result<Option<RequestId>, StoreError> {
        let binding = encode(&IdempotencyRecord {
            id,
            notification: notification.clone(),
        })?;
        let swapped = engine
            .idempotency
            .compare_and_swap(key, None::<&[u8]>, Some(binding))
            .map_err(|e| self.sled_failed(e))?;
        match swapped {
            Ok(()) => Ok(None),
            Err(taken) => {
                let bytes = taken.current.ok_or(StoreError::IdempotencyConflict)?;
                super::reads::bound_id(&bytes, notification).map(Some)
            }
        }
    }

    /// Writes a `queued` request unless it exists already; whether it wrote it.
    fn insert_new_request(
        &self,
        engine: &Engine,
        id: RequestId,
        notification: Notification,
        now: u64,
    ) -> Result<bool, StoreError> {
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
        let swapped = engine
            .requests
            .compare_and_swap(id.as_bytes(), None::<&[u8]>, Some(encode(&record)?))
            .map_err(|e| self.sled_failed(e))?;
        Ok(swapped.is_ok())
    }

    /// Records the intent to send `id`: puts it in the outbox once, and waits
    /// until that is on disk. Later calls change nothing.
    pub async fn request_processing(&self, id: RequestId) -> Result<ProcessOutcome, StoreError> {
        let engine = self.engine()?;
        let now = now_ms();
        let trees = (&engine.requests, &engine.outbox, &engine.meta);
        let outcome = trees.transaction(|(requests, outbox, meta)| {
            let mut record = get_record(requests, id)?;
            if record.process_requested_at_ms.is_some() {
                let outcome = ProcessOutcome::AlreadyRequested(record.status);
                return Ok((outcome, record.notification.priority));
            }
            record.process_requested_at_ms = Some(now);
            let notification = &record.notification;
            let key = OutboxKey::new(notification.priority, notification.channel, now, id);
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
        });
        let outcome = self.committed(outcome)?;
        if let ProcessOutcome::Accepted(_) = outcome.0 {
            self.depth.add(outcome.1, EntryState::Waiting);
            self.work_arrived();
        }
        // Also for a repeated call: the first call's write may still be in flight.
        engine.commit.durable().await.map_err(unavailable)?;
        Ok(outcome.0)
    }

    /// Leases the entry at `key`, if it is still in the outbox.
    pub(super) fn lease(
        &self,
        engine: &Engine,
        key: OutboxKey,
    ) -> Result<Option<Lease>, StoreError> {
        let now = now_ms();
        let key_bytes = key.encode();
        let priority = key.priority();
        let taken =
            attempt_trees(engine).transaction(|(leases, outbox, requests, events, meta)| {
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
                let lease = LeaseEntry {
                    leased_from: key,
                    deadline_ms: now + self.options.lease_for.as_millis() as u64,
                    owner: self.options.instance.0.clone(),
                };
                leases.insert(key.id.as_bytes(), lease.encode())?;
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
                    owner: self.options.instance.clone(),
                    deadline_ms: lease.deadline_ms,
                }))
            });
        match self.committed(taken)? {
            Taken::Leased(lease) => {
                let priority = lease.notification.priority;
                self.depth
                    .moved(priority, EntryState::Waiting, EntryState::Leased);
                self.live_leases().insert(lease.id);
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
        let engine = self.engine()?;
        let now = now_ms();
        report.next_attempt_at_ms = decision.next_attempt_at_ms();
        let priority = lease.notification.priority;
        let trees = (
            &engine.leases,
            &engine.outbox,
            &engine.requests,
            &engine.events,
            &engine.meta,
            &engine.delayed,
        );
        let status = trees.transaction(|(leases, outbox, requests, events, meta, delayed)| {
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
                    // It keeps its place in line: once due, it goes before
                    // everything that asked for delivery after it.
                    let order_ms = record.process_requested_at_ms.unwrap_or(now);
                    let notification = &record.notification;
                    let key = OutboxKey::new(
                        notification.priority,
                        notification.channel,
                        order_ms,
                        lease.id,
                    );
                    if due_ms <= now {
                        outbox.insert(&key.encode(), &b""[..])?;
                    } else {
                        delayed.insert(&keys::delayed_key(due_ms, lease.id), &key.encode()[..])?;
                    }
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
        });
        let status = self.committed(status).inspect_err(|error| {
            if let StoreError::LeaseLost(id) = error {
                self.live_leases().remove(id);
            }
        })?;
        self.live_leases().remove(&lease.id);
        match decision {
            Decision::RetryAt { .. } | Decision::Deferred { .. } => {
                self.depth
                    .moved(priority, EntryState::Leased, EntryState::Waiting);
                self.work_arrived();
            }
            Decision::Sent | Decision::Failed => self.depth.remove(priority, EntryState::Leased),
        }
        engine.commit.durable().await.map_err(unavailable)?;
        Ok(status)
    }

    /// Returns a lease whose attempt never called the provider to the
    /// outbox, due now, giving its attempt number back; waits until that is
    /// on disk. `LeaseLost` when the lease is not there (a failed flush lost
    /// it, or it was recovered): the entry is in the outbox already.
    pub async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let engine = self.engine()?;
        let returned = self.return_to_outbox(&engine, lease.id, true)?;
        self.live_leases().remove(&lease.id);
        if !returned {
            return Err(StoreError::LeaseLost(lease.id));
        }
        engine.commit.durable().await.map_err(unavailable)
    }

    /// Puts every leased entry back in the outbox, due now, keeping its priority.
    /// Runs at open (after a crash) and after a shutdown that abandoned attempts.
    pub fn recover_leases(&self) -> Result<usize, StoreError> {
        let engine = self.engine()?;
        self.live_leases().clear();
        self.recover_leases_except(&engine, &HashSet::new())
    }

    /// Returns every lease but those of `live` attempts to the outbox.
    pub(super) fn recover_leases_except(
        &self,
        engine: &Engine,
        live: &HashSet<RequestId>,
    ) -> Result<usize, StoreError> {
        let mut recovered = 0;
        for entry in engine.leases.iter().keys() {
            let id_bytes = entry.map_err(|e| self.sled_failed(e))?;
            let id = <[u8; 16]>::try_from(id_bytes.as_ref())
                .map(RequestId::from_bytes)
                .map_err(|_| {
                    StoreError::Corrupt(format!("a lease key of {} bytes", id_bytes.len()))
                })?;
            if !live.contains(&id) && self.return_to_outbox(engine, id, false)? {
                recovered += 1;
            }
        }
        Ok(recovered)
    }

    /// Moves the lease of `id` back to the outbox, due now, with a
    /// `lease_recovered` event; `released` (the attempt never ran) also gives
    /// its attempt number back. Whether there was such a lease.
    fn return_to_outbox(
        &self,
        engine: &Engine,
        id: RequestId,
        released: bool,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let returned =
            attempt_trees(engine).transaction(|(leases, outbox, requests, events, meta)| {
                let Some(lease_bytes) = leases.remove(id.as_bytes())? else {
                    return Ok(None);
                };
                let leased_from = super::reads::decode_lease(&lease_bytes)
                    .map_err(ConflictableTransactionError::Abort)?
                    .leased_from;
                let priority = leased_from.priority();
                let Some(bytes) = requests.get(id.as_bytes())? else {
                    // A lease without its request cannot be sent: drop it, as
                    // `lease` drops such an outbox entry, rather than refuse to open.
                    tracing::error!(%id, "lease without a request; removed");
                    pending::adjust(meta, priority, -1)?;
                    return Ok(Some((priority, false)));
                };
                let mut record: RequestRecord = decode(&bytes).map_err(abort_with)?;
                // Back in its place in line, due now.
                outbox.insert(&leased_from.encode(), &b""[..])?;
                if released {
                    record.attempts = record.attempts.saturating_sub(1);
                }
                append_event(events, &mut record, EventKind::LeaseRecovered, now)?;
                put_record(requests, &record)?;
                Ok(Some((priority, true)))
            });
        match self.committed(returned)? {
            Some((priority, true)) => {
                self.depth
                    .moved(priority, EntryState::Leased, EntryState::Waiting);
                self.work_arrived();
                Ok(true)
            }
            Some((priority, false)) => {
                self.depth.remove(priority, EntryState::Leased);
                Ok(false)
            }
            None => Ok(false),
        }
    }

    /// A transaction's result in the store's terms.
    pub(super) fn committed<T>(
        &self,
        result: Result<T, TransactionError<StoreError>>,
    ) -> Result<T, StoreError> {
        result.map_err(|error| match error {
            TransactionError::Abort(error) => error,
            TransactionError::Storage(error) => self.sled_failed(error),
        })
    }

    fn live_leases(&self) -> std::sync::MutexGuard<'_, HashSet<RequestId>> {
        self.live_leases.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The trees leasing, finishing and recovering an attempt write, in the
/// order their transactions name them: leases, outbox, requests, events, meta.
fn attempt_trees(
    engine: &Engine,
) -> (
    &sled::Tree,
    &sled::Tree,
    &sled::Tree,
    &sled::Tree,
    &sled::Tree,
) {
    (
        &engine.leases,
        &engine.outbox,
        &engine.requests,
        &engine.events,
        &engine.meta,
    )
}

fn abort_with(error: super::CodecError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(error.into())
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
    use crate::domain::Priority;
    use crate::store::embedded::tests::{
        engine, notification, processed, store_with_one_processed,
    };

    #[tokio::test]
    async fn leases_go_by_priority_then_age_and_skip_entries_not_yet_due() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
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
            let stored = engine(&store).events.scan_prefix(id.as_bytes()).keys();
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
            let store = EmbeddedStore::open(dir.path()).unwrap();
            let id = processed(&store, Priority::High).await;
            store.lease_next_due(now_ms() + 1).unwrap().unwrap();
            store.close().await.unwrap();
            id // closed with the lease outstanding, as a crash would leave it
        };
        let store = EmbeddedStore::open(dir.path()).unwrap();
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
        let key = engine(&store).outbox.iter().next().unwrap().unwrap().0;
        let key = super::super::reads::decode_outbox_key(&key).unwrap();
        let first = store.lease(&engine(&store), key).unwrap().unwrap();
        assert_eq!((first.id, first.attempt), (id, 1));
        assert!(
            store.lease(&engine(&store), key).unwrap().is_none(),
            "already leased"
        );
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
            let store = EmbeddedStore::open(dir.path()).unwrap();
            let id = processed(&store, Priority::High).await;
            store.lease_next_due(now_ms() + 1).unwrap().unwrap();
            engine(&store).requests.remove(id.as_bytes()).unwrap();
            store.close().await.unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.recovered_at_open(), 0);
        assert_eq!((store.pending(), engine(&store).leases.len()), (0, 0));
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
        let store = EmbeddedStore::open(dir.path()).unwrap();
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
        assert_eq!(store.request_count().unwrap(), 1);
    }

    #[tokio::test]
    async fn a_replay_completes_a_binding_a_crash_left_without_its_request() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let id = RequestId::new();
        let binding = IdempotencyRecord {
            id,
            notification: notification(Priority::Normal),
        };
        engine(&store)
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
            let store = EmbeddedStore::open(dir.path()).unwrap();
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
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.recovered_at_open(), 1);
        assert_eq!(store.pending(), 2);
        let persisted = pending::load(&engine(&store).meta).unwrap();
        let scanned = pending::count_by_scan(
            &engine(&store).outbox,
            &engine(&store).delayed,
            &engine(&store).leases,
        )
        .unwrap();
        assert_eq!(persisted, scanned);
        assert_eq!(persisted.iter().sum::<u64>(), 2);
    }
}
