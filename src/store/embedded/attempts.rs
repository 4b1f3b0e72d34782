//! An attempt's transitions: lease an outbox entry, finish the attempt,
//! release a lease that was never sent, and take back leases no attempt
//! holds. Each writes the request, its outbox or lease entry, its event and
//! the counts it changes in one sled transaction.

use std::collections::HashSet;

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, abort};

use super::engine::Engine;
use super::keys::LeaseEntry;
use super::pending::EntryState;
use super::writes::{abort_with, append_event, get_record, put_record};
use super::{AttemptReport, EventKind, OutboxKey, RequestRecord};
use super::{Decision, EmbeddedStore, Lease, StoreError, decode, keys, pending, unavailable};
use crate::domain::{RequestId, Status, now_ms};

/// What `lease` found at an outbox entry.
enum Taken {
    Leased(Lease),
    /// The entry had no request; it was removed.
    Orphan,
    /// The entry was gone already.
    Gone,
}

impl EmbeddedStore {
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
        report.next_attempt_at_ms = decision.retry_wait_ms().map(|wait| now + wait);
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
                Decision::RetryAfter { wait_ms } | Decision::Deferred { wait_ms } => {
                    let due_ms = now + wait_ms;
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
            Decision::RetryAfter { .. } | Decision::Deferred { .. } => {
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
        let report = AttemptReport {
            attempt: 1,
            http_status: Some(503),
            ..AttemptReport::default()
        };
        let before = now_ms();
        let retry = Decision::RetryAfter { wait_ms: 60_000 };
        let status = store.finish_attempt(&lease, report, retry).await.unwrap();
        assert_eq!(status, Status::Processing);
        let later = store.next_due_ms().unwrap().expect("scheduled");
        assert!((before + 60_000..=now_ms() + 60_000).contains(&later));
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
            Decision::Deferred { wait_ms: 0 },
            Decision::RetryAfter { wait_ms: 0 },
            Decision::Deferred { wait_ms: 0 },
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
            let retry = Decision::RetryAfter { wait_ms: 0 };
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
