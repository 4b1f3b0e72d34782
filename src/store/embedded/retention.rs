//! Retention: deleting requests that reached a final status long enough ago,
//! with their history, their owner and their idempotency key.
//!
//! Request ids are UUIDv7, whose first 48 bits are the creation time in
//! milliseconds, so the `requests` tree is in creation order and a purge reads
//! only the part created before its cutoff. A request goes only when it is final
//! (`sent` or `failed`) and has been since before the cutoff; undelivered work
//! is kept whatever its age. An idempotency binding goes with its request, and
//! first: [`EmbeddedStore::purge_idempotency_before`] runs before
//! [`EmbeddedStore::purge_final_before`], because a binding left without its request
//! would let a replay of its key write the request again, as new (that is how a
//! replay completes a create a crash cut short).

use std::ops::Bound;

use sled::Transactional;

use super::commit::Ack;
use super::engine::Engine;
use super::{
    EmbeddedStore, IdempotencyRecord, PurgeBatch, RequestRecord, StoreError, decode, keys,
    unavailable,
};
use crate::domain::RequestId;

impl EmbeddedStore {
    /// Reads up to `limit` requests created before `cutoff_ms`, oldest first
    /// and after `resume_after`, deletes those that became final before the
    /// cutoff with their events, and waits until that is on disk. Reading a
    /// bounded batch keeps each call short even when old undelivered requests,
    /// which are kept, lie in the way. The integrity record stops counting
    /// them first (durably), so a crash between the two leaves more requests
    /// than counted, never fewer.
    pub async fn purge_final_before(
        &self,
        cutoff_ms: u64,
        resume_after: Option<RequestId>,
        limit: usize,
    ) -> Result<PurgeBatch, StoreError> {
        let engine = self.engine()?;
        let start = match resume_after {
            Some(id) => Bound::Excluded(*id.as_bytes()),
            None => Bound::Unbounded,
        };
        let range = (start, Bound::Excluded(created_at_or_after(cutoff_ms)));
        let mut expired = Vec::new();
        let mut scanned = 0;
        let mut last_seen = None;
        for entry in engine.requests.range(range).take(limit) {
            let (key, bytes) = entry.map_err(|e| self.sled_failed(e))?;
            scanned += 1;
            last_seen = <[u8; 16]>::try_from(key.as_ref())
                .ok()
                .map(RequestId::from_bytes);
            let Some(record) = readable::<RequestRecord>(&key, &bytes) else {
                continue;
            };
            if record.status.is_terminal() && record.updated_at_ms < cutoff_ms {
                expired.push(record);
            }
        }
        if !expired.is_empty() {
            let retiring = expired.iter().map(|record| record.id).collect();
            engine
                .commit
                .durable_with(Ack::Retiring(retiring))
                .await
                .map_err(unavailable)?;
            for record in &expired {
                self.delete_request(&engine, record)?;
            }
            engine.commit.durable().await.map_err(unavailable)?;
        }
        Ok(PurgeBatch {
            purged: expired.len(),
            resume_after: if scanned == limit { last_seen } else { None },
        })
    }

    /// Deletes the idempotency bindings whose request [`EmbeddedStore::purge_final_before`]
    /// deletes for the same cutoff (final since before it), or which were made
    /// before it and have no request, and waits until that is on disk. Returns
    /// how many.
    pub async fn purge_idempotency_before(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        let engine = self.engine()?;
        let cutoff = created_at_or_after(cutoff_ms);
        let mut purged = 0;
        for entry in engine.idempotency.iter() {
            let (key, bytes) = entry.map_err(|e| self.sled_failed(e))?;
            let Some(binding) = readable::<IdempotencyRecord>(&key, &bytes) else {
                continue;
            };
            let id = binding.id.as_bytes();
            if id[..] >= cutoff[..] {
                continue;
            }
            let expired = match engine.requests.get(id).map_err(|e| self.sled_failed(e))? {
                Some(record) => readable::<RequestRecord>(id, &record)
                    .is_some_and(|r| r.status.is_terminal() && r.updated_at_ms < cutoff_ms),
                None => true,
            };
            if expired {
                // Compare-and-swap: a binding rewritten meanwhile is not this one.
                let removed = engine
                    .idempotency
                    .compare_and_swap(&key, Some(&bytes), None::<&[u8]>)
                    .map_err(|e| self.sled_failed(e))?;
                purged += usize::from(removed.is_ok());
            }
        }
        if purged > 0 {
            engine.commit.durable().await.map_err(unavailable)?;
        }
        Ok(purged)
    }

    /// Removes a final request, every event of its history and its owner in
    /// one transaction.
    fn delete_request(&self, engine: &Engine, record: &RequestRecord) -> Result<(), StoreError> {
        let trees = (&engine.requests, &engine.events, &engine.owners);
        let deleted = trees.transaction(|(requests, events, owners)| {
            requests.remove(record.id.as_bytes())?;
            owners.remove(record.id.as_bytes())?;
            // Sequence 0 is stored only by databases first written in format 1.
            for seq in 0..record.event_count {
                events.remove(&keys::event_key(record.id, seq))?;
            }
            Ok::<_, sled::transaction::ConflictableTransactionError<StoreError>>(())
        });
        self.committed(deleted)
    }
}

/// The record, or `None` (logged) when it cannot be decoded: one unreadable
/// record is left for an operator rather than stop every later purge.
fn readable<T: serde::de::DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Option<T> {
    decode(bytes)
        .inspect_err(|error| tracing::error!(%error, ?key, "retention: unreadable record skipped"))
        .ok()
}

/// The smallest request id created at `ms`: every id below it is older.
fn created_at_or_after(ms: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Priority, Status, now_ms};
    use crate::store::embedded::tests::{engine, notification};
    use crate::store::{AttemptReport, CreateOutcome, Decision};

    async fn create(store: &EmbeddedStore, key: Option<&str>) -> RequestId {
        create_with(store, key, Priority::Normal).await
    }

    async fn create_with(
        store: &EmbeddedStore,
        key: Option<&str>,
        priority: Priority,
    ) -> RequestId {
        match store.create(notification(priority), key).await.unwrap() {
            CreateOutcome::Created(id) | CreateOutcome::Replayed(id) => id,
        }
    }

    /// Creates, processes and finishes a request with `decision`.
    async fn finished(store: &EmbeddedStore, key: Option<&str>, decision: Decision) -> RequestId {
        let id = create(store, key).await;
        store.request_processing(id).await.unwrap();
        let lease = store.lease_next_due(now_ms() + 1).unwrap().unwrap();
        assert_eq!(lease.id, id);
        store
            .finish_attempt(&lease, AttemptReport::default(), decision)
            .await
            .unwrap();
        id
    }

    #[test]
    fn ids_of_a_millisecond_sort_after_its_bound_and_before_the_next() {
        let id = RequestId::new();
        let mut ms = [0u8; 8];
        ms[2..].copy_from_slice(&id.as_bytes()[..6]);
        let ms = u64::from_be_bytes(ms);
        assert!(created_at_or_after(ms)[..] <= id.as_bytes()[..]);
        assert!(id.as_bytes()[..] < created_at_or_after(ms + 1)[..]);
    }

    #[tokio::test]
    async fn only_final_requests_older_than_the_cutoff_go_with_their_history_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let sent = finished(&store, Some("k-sent"), Decision::Sent).await;
        let failed = finished(&store, None, Decision::Failed).await;
        let queued = create(&store, Some("k-queued")).await;
        // Low: the later leases of normal requests pass it by.
        let waiting = create_with(&store, None, Priority::Low).await;
        store.request_processing(waiting).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let cutoff = now_ms();
        let recent = finished(&store, Some("k-recent"), Decision::Sent).await;

        // Batches of two: the sent and the failed request, then the two kept.
        let batches = [
            (None, 2, Some(failed)),
            (Some(failed), 0, Some(waiting)),
            (Some(waiting), 0, None),
        ];
        for (resume_after, purged, next) in batches {
            let batch = store.purge_final_before(cutoff, resume_after, 2);
            let batch = batch.await.unwrap();
            assert_eq!((batch.purged, batch.resume_after), (purged, next));
        }
        let again = store.purge_final_before(cutoff, None, 10).await.unwrap();
        assert_eq!(
            again,
            PurgeBatch {
                purged: 0,
                resume_after: None
            }
        );
        for gone in [sent, failed] {
            assert!(store.get(gone).unwrap().is_none());
            assert!(store.events(gone).unwrap().is_none());
            assert_eq!(
                engine(&store).events.scan_prefix(gone.as_bytes()).count(),
                0
            );
        }
        assert_eq!(store.get(queued).unwrap().unwrap().status, Status::Queued);
        assert_eq!(store.get(waiting).unwrap().unwrap().status, Status::Queued);
        assert_eq!(store.get(recent).unwrap().unwrap().status, Status::Sent);
        assert_eq!(store.pending(), 1, "undelivered work is kept");

        assert_eq!(store.purge_idempotency_before(cutoff).await.unwrap(), 1);
        assert_ne!(
            create(&store, Some("k-sent")).await,
            sent,
            "the key was freed"
        );
        assert_eq!(create(&store, Some("k-queued")).await, queued);
        assert_eq!(create(&store, Some("k-recent")).await, recent);
        assert_eq!(store.request_count().unwrap(), 4, "three kept, one new");
    }

    #[tokio::test]
    async fn a_replay_between_the_two_purges_makes_a_new_request_not_the_old_one_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let sent = finished(&store, Some("k"), Decision::Sent).await;
        let cutoff = now_ms() + 1;

        assert_eq!(store.purge_idempotency_before(cutoff).await.unwrap(), 1);
        let replay = create(&store, Some("k")).await;
        assert_ne!(
            replay, sent,
            "the key went first, so it names a new request"
        );
        assert_eq!(store.get(sent).unwrap().unwrap().status, Status::Sent);

        let batch = store.purge_final_before(cutoff, None, 10).await.unwrap();
        assert_eq!(batch.purged, 1);
        assert!(store.get(sent).unwrap().is_none());
        assert_eq!(store.get(replay).unwrap().unwrap().status, Status::Queued);
        assert_eq!(create(&store, Some("k")).await, replay);
    }

    #[tokio::test]
    async fn an_unreadable_record_is_skipped_not_a_stop() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let unreadable = RequestId::new();
        engine(&store)
            .requests
            .insert(unreadable.as_bytes(), &[1, 0xff][..])
            .unwrap();
        let sent = finished(&store, None, Decision::Sent).await;
        let cutoff = now_ms() + 1;

        let batch = store.purge_final_before(cutoff, None, 10).await.unwrap();
        assert_eq!(batch.purged, 1);
        assert!(store.get(sent).unwrap().is_none());
        assert!(
            engine(&store)
                .requests
                .contains_key(unreadable.as_bytes())
                .unwrap()
        );
    }

    #[tokio::test]
    async fn purged_requests_stay_gone_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            let id = finished(&store, None, Decision::Sent).await;
            let cutoff = now_ms() + 1;
            let batch = store.purge_final_before(cutoff, None, 10).await.unwrap();
            assert_eq!(batch.purged, 1);
            store.close().await.unwrap();
            id
        };
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert!(store.get(id).unwrap().is_none());
        assert_eq!((store.request_count().unwrap(), store.pending()), (0, 0));
    }
}
