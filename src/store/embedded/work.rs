//! The embedded engine's work source: the most urgent due delivery, waited
//! for without polling.
//!
//! Due work sits in the outbox by priority, channel and the time delivery
//! was asked for; retries wait out their backoff in `delayed` and move into
//! the outbox once due, keeping their place in line (oldest first). A lease
//! takes, of the most urgent priority with work, the oldest entry among the
//! channels whose own limit lets a call through now, so a throttled channel
//! neither holds a dispatcher slot nor delays another.
//!
//! `next_lease` registers for a wake-up before it looks, so work that
//! arrives between the look and the wait is not missed; it then sleeps until
//! the earliest delayed entry falls due or a waiting channel frees up, or
//! until the store says work arrived (a `process`, a retry due at once, a
//! lease returned). Nothing outside the store wakes it.

use std::time::Duration;

use sled::Transactional;

use super::engine::Engine;
use super::{EmbeddedStore, keys};
use crate::domain::now_ms;
use crate::store::{ChannelAdmission, Lease, StoreError};

/// Delayed entries moved into the outbox per look: bounds the work one
/// lease does after a long outage let many retries fall due at once.
const PROMOTE_BATCH: usize = 256;

/// What one look at the outbox found.
enum Looked {
    Leased(Lease),
    /// Nothing to lease now; work in a waiting channel frees up after this long.
    Wait(Option<Duration>),
}

impl EmbeddedStore {
    /// Waits until an entry is due in a channel `admits` lets through, then
    /// leases the most urgent one.
    pub async fn next_lease(&self, admits: ChannelAdmission<'_>) -> Result<Lease, StoreError> {
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let now = now_ms(); // read once: a second read could pass `due`
            let engine = self.engine()?;
            let channel_wait = match self.look(&engine, now, admits)? {
                Looked::Leased(lease) => return Ok(lease),
                Looked::Wait(wait) => wait,
            };
            let delayed = self
                .next_delayed_ms(&engine)?
                .map(|due| Duration::from_millis(due.saturating_sub(now)));
            drop(engine);
            match [channel_wait, delayed].into_iter().flatten().min() {
                Some(wait) => tokio::select! {
                    () = &mut woken => {}
                    () = tokio::time::sleep(wait) => {}
                },
                None => woken.await,
            }
        }
    }

    /// Leases the most urgent due entry of any channel, moving retries due
    /// by `now_ms` into the outbox first; `None` when nothing is due.
    pub fn lease_next_due(&self, now_ms: u64) -> Result<Option<Lease>, StoreError> {
        let engine = self.engine()?;
        match self.look(&engine, now_ms, &|_| None)? {
            Looked::Leased(lease) => Ok(Some(lease)),
            Looked::Wait(_) => Ok(None),
        }
    }

    fn look(
        &self,
        engine: &Engine,
        now_ms: u64,
        admits: ChannelAdmission<'_>,
    ) -> Result<Looked, StoreError> {
        self.promote_due(engine, now_ms)?;
        loop {
            let heads = self.ready_heads(engine)?;
            let mut waiting: Option<Duration> = None;
            let mut chosen = None;
            for head in heads {
                if chosen.is_some_and(|c: keys::OutboxKey| c.rank < head.rank) {
                    break; // a more urgent priority has work that may go
                }
                match admits(head.channel()) {
                    None if chosen
                        .is_none_or(|c| (head.order_ms, head.id) < (c.order_ms, c.id)) =>
                    {
                        chosen = Some(head);
                    }
                    None => {}
                    Some(wait) => waiting = Some(waiting.map_or(wait, |w| w.min(wait))),
                }
            }
            let Some(key) = chosen else {
                return Ok(Looked::Wait(waiting));
            };
            // Gone (leased meanwhile) or without its request: look again.
            if let Some(lease) = self.lease(engine, key)? {
                return Ok(Looked::Leased(lease));
            }
        }
    }

    /// Moves up to [`PROMOTE_BATCH`] delayed entries due by `now_ms` into
    /// the outbox, each in one transaction.
    fn promote_due(&self, engine: &Engine, now_ms: u64) -> Result<(), StoreError> {
        let due: Vec<_> = engine
            .delayed
            .range(keys::delayed_due_by(now_ms))
            .take(PROMOTE_BATCH)
            .collect::<Result<_, _>>()
            .map_err(|e| self.sled_failed(e))?;
        for (delayed_key, outbox_key) in due {
            let moved = (&engine.delayed, &engine.outbox).transaction(|(delayed, outbox)| {
                if delayed.remove(&delayed_key)?.is_some() {
                    outbox.insert(&outbox_key, &b""[..])?;
                }
                Ok::<_, sled::transaction::ConflictableTransactionError<StoreError>>(())
            });
            self.committed(moved)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::{Channel, Notification, Priority};
    use crate::store::embedded::tests::{notification, processed};
    use crate::store::{AttemptReport, CreateOutcome, Decision};

    const DEADLINE: Duration = Duration::from_secs(10);

    /// Every channel may go.
    fn any_channel(_: Channel) -> Option<Duration> {
        None
    }

    async fn processed_on(
        store: &EmbeddedStore,
        channel: Channel,
        priority: Priority,
    ) -> crate::domain::RequestId {
        let notification = Notification {
            channel,
            ..notification(priority)
        };
        let CreateOutcome::Created(id) = store.create(notification, None).await.unwrap() else {
            panic!("created")
        };
        store.request_processing(id).await.unwrap();
        id
    }

    #[tokio::test]
    async fn next_waits_for_a_process_call_and_then_leases_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let waiting = tokio::spawn({
            let store = store.clone();
            async move { store.next_lease(&any_channel).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "nothing to lease yet");
        let id = processed(&store, Priority::Low).await;
        let lease = tokio::time::timeout(DEADLINE, waiting)
            .await
            .expect("woken")
            .unwrap()
            .unwrap();
        assert_eq!(lease.id, id);
    }

    #[tokio::test]
    async fn next_sleeps_until_a_retry_falls_due() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let id = processed(&store, Priority::Normal).await;
        let lease = store.next_lease(&any_channel).await.unwrap();
        let due_ms = now_ms() + 200;
        let retry = Decision::RetryAfter { wait_ms: 200 };
        store
            .finish_attempt(&lease, AttemptReport::default(), retry)
            .await
            .unwrap();
        let again = tokio::time::timeout(DEADLINE, store.next_lease(&any_channel))
            .await
            .expect("leased")
            .unwrap();
        assert_eq!((again.id, again.attempt), (id, 2));
        assert!(now_ms() >= due_ms, "not before the retry's time");
    }

    #[tokio::test]
    async fn a_retry_past_its_backoff_goes_before_work_that_asked_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let first = processed(&store, Priority::Normal).await;
        let lease = store.lease_next_due(now_ms()).unwrap().unwrap();
        let retry = Decision::RetryAfter { wait_ms: 50 };
        store
            .finish_attempt(&lease, AttemptReport::default(), retry)
            .await
            .unwrap();
        let due_ms = store.next_due_ms().unwrap().expect("scheduled");
        let mut asked_after = Vec::new();
        for _ in 0..3 {
            asked_after.push(processed(&store, Priority::Normal).await);
        }
        let before_due = store.lease_next_due(due_ms - 1).unwrap().unwrap();
        assert_eq!(
            before_due.id, asked_after[0],
            "not before its backoff has passed"
        );
        let after_due = store.lease_next_due(due_ms).unwrap().unwrap();
        assert_eq!(
            after_due.id, first,
            "then first: it asked before the others"
        );
    }

    #[tokio::test]
    async fn a_channel_that_must_wait_is_passed_over_not_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let email = processed_on(&store, Channel::Email, Priority::High).await;
        let sms = processed_on(&store, Channel::Sms, Priority::Low).await;
        let email_waits =
            |channel| (channel == Channel::Email).then_some(Duration::from_secs(3_600));
        let lease = tokio::time::timeout(DEADLINE, store.next_lease(&email_waits))
            .await
            .expect("leased")
            .unwrap();
        assert_eq!(lease.id, sms, "the sms goes while the email channel waits");
        let lease = store.next_lease(&any_channel).await.unwrap();
        assert_eq!(lease.id, email);
    }
}
