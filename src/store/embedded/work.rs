//! The embedded engine's work source: the outbox's most urgent due entry,
//! waited for without polling.
//!
//! `next` registers for a wake-up before it looks, so work that arrives
//! between the look and the wait is not missed; it then sleeps until the
//! earliest entry falls due, or until the store says work arrived (a
//! `process`, a retry scheduled, a lease returned). Nothing outside the
//! store wakes it.

use std::time::Duration;

use super::EmbeddedStore;
use crate::domain::now_ms;
use crate::store::{Lease, StoreError};

impl EmbeddedStore {
    /// Waits until an outbox entry is due, then leases the most urgent one.
    pub async fn next_lease(&self) -> Result<Lease, StoreError> {
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let now = now_ms(); // read once: a second read could pass `due`
            if let Some(lease) = self.lease_next_due(now)? {
                return Ok(lease);
            }
            match self.next_due_ms()? {
                Some(due) => {
                    let wait = Duration::from_millis(due.saturating_sub(now));
                    tokio::select! {
                        () = &mut woken => {}
                        () = tokio::time::sleep(wait) => {}
                    }
                }
                None => woken.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::Priority;
    use crate::store::embedded::tests::{notification, processed};
    use crate::store::{AttemptReport, CreateOutcome, Decision};

    const DEADLINE: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn next_waits_for_a_process_call_and_then_leases_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let waiting = tokio::spawn({
            let store = store.clone();
            async move { store.next_lease().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "nothing to lease yet");
        let CreateOutcome::Created(id) = store
            .create(notification(Priority::Low), None)
            .await
            .unwrap()
        else {
            panic!("created")
        };
        store.request_processing(id).await.unwrap();
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
        let lease = store.next_lease().await.unwrap();
        let due_ms = now_ms() + 200;
        store
            .finish_attempt(
                &lease,
                AttemptReport::default(),
                Decision::RetryAt { due_ms },
            )
            .await
            .unwrap();
        let again = tokio::time::timeout(DEADLINE, store.next_lease())
            .await
            .expect("leased")
            .unwrap();
        assert_eq!((again.id, again.attempt), (id, 2));
        assert!(now_ms() >= due_ms, "not before the retry's time");
    }
}
