//! Which API client owns a request: the `owners` tree, request id → the
//! client's name (UTF-8), written only for requests created with client keys
//! on. A tree of its own, not a record field: records keep their shape (no new
//! record version), and a gateway without client keys writes nothing more.

use super::engine::Engine;
use super::{EmbeddedStore, StoreError};
use crate::domain::RequestId;

impl EmbeddedStore {
    /// The client that created `id`, if one did.
    pub fn owner_of(&self, id: RequestId) -> Result<Option<String>, StoreError> {
        let engine = self.engine()?;
        let owner = engine
            .owners
            .get(id.as_bytes())
            .map_err(|e| self.sled_failed(e))?;
        Ok(owner.map(|name| String::from_utf8_lossy(&name).into_owned()))
    }

    /// Records `owner` as the owner of `id`. Written before the request
    /// itself and made durable by the same flush: the log keeps writes in
    /// order, so a crash cannot leave an owned request without its owner (at
    /// worst an owner without a request, which names nothing).
    pub(super) fn bind_owner(
        &self,
        engine: &Engine,
        id: RequestId,
        owner: &str,
    ) -> Result<(), StoreError> {
        engine
            .owners
            .insert(id.as_bytes(), owner.as_bytes())
            .map_err(|e| self.sled_failed(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::domain::{Channel, Notification, Priority, now_ms};
    use crate::store::embedded::EmbeddedStore as Store;
    use crate::store::{AttemptReport, CreateOutcome, Decision};

    fn notification() -> Notification {
        Notification {
            to: "a@example.com".into(),
            message: "hi".into(),
            channel: Channel::Email,
            priority: Priority::Normal,
        }
    }

    #[tokio::test]
    async fn a_request_created_for_a_client_is_owned_by_it_and_others_by_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let CreateOutcome::Created(owned) = store
            .create_for(notification(), None, Some("billing"))
            .await
            .unwrap()
        else {
            panic!("created")
        };
        let CreateOutcome::Created(anonymous) = store.create(notification(), None).await.unwrap()
        else {
            panic!("created")
        };
        assert_eq!(store.owner_of(owned).unwrap().as_deref(), Some("billing"));
        assert_eq!(store.owner_of(anonymous).unwrap(), None);
    }

    #[tokio::test]
    async fn retention_deletes_the_owner_with_its_request() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let outcome = store.create_for(notification(), None, Some("billing"));
        let CreateOutcome::Created(id) = outcome.await.unwrap() else {
            panic!("created")
        };
        store.request_processing(id).await.unwrap();
        let lease = store.lease_next_due(now_ms() + 1).unwrap().unwrap();
        let report = AttemptReport::default();
        store
            .finish_attempt(&lease, report, Decision::Sent)
            .await
            .unwrap();

        let purged = store
            .purge_final_before(now_ms() + 1_000, None, 10)
            .await
            .unwrap();
        assert_eq!(purged.purged, 1);
        assert_eq!(store.owner_of(id).unwrap(), None);
    }
}
