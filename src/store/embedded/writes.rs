//! The writes the API makes: create and process. Each writes its keys in
//! one sled transaction (a create uses compare-and-swap instead) and waits
//! for the group commit. The transaction helpers every transition uses are
//! here too; an attempt's own transitions are in `attempts.rs`.

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree, abort};

use super::commit::Ack;
use super::engine::Engine;
use super::pending::EntryState;
use super::{
    CreateOutcome, EmbeddedStore, ProcessOutcome, StoreError, decode, encode, keys, pending,
    unavailable,
};
use super::{Event, EventKind, IdempotencyRecord, OutboxKey, RequestRecord};
use crate::domain::{Notification, RequestId, Status, now_ms};

pub(super) type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

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
}

pub(super) fn abort_with(error: super::CodecError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(error.into())
}

pub(super) fn get_record(requests: &TransactionalTree, id: RequestId) -> TxResult<RequestRecord> {
    match requests.get(id.as_bytes())? {
        Some(bytes) => decode(&bytes).map_err(abort_with),
        None => abort(StoreError::NotFound(id)),
    }
}

pub(super) fn put_record(requests: &TransactionalTree, record: &RequestRecord) -> TxResult<()> {
    requests.insert(record.id.as_bytes(), encode(record).map_err(abort_with)?)?;
    Ok(())
}

/// Appends an event to the record's history and advances its sequence.
pub(super) fn append_event(
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
pub(super) fn advance_history(record: &mut RequestRecord, now: u64) {
    record.updated_at_ms = now;
    record.event_count += 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Priority;
    use crate::store::embedded::tests::{engine, notification, store_with_one_processed};

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
}
