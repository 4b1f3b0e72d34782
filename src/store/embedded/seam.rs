//! The embedded engine behind the seam: [`Records`] and [`WorkSource`] are
//! the store's own operations, named as the rest of Herald calls them.

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::EmbeddedStore;
use crate::domain::{Notification, RequestId, Status};
use crate::store::{
    AttemptReport, ChannelAdmission, CreateOutcome, Decision, Event, Lease, ProcessOutcome,
    PurgeBatch, Records, RequestRecord, StorageState, StoreError, WorkSource,
};

#[async_trait]
impl Records for EmbeddedStore {
    async fn create(
        &self,
        notification: Notification,
        idempotency_key: Option<&str>,
        owner: Option<&str>,
    ) -> Result<CreateOutcome, StoreError> {
        EmbeddedStore::create_for(self, notification, idempotency_key, owner).await
    }

    async fn owner_of(&self, id: RequestId) -> Result<Option<String>, StoreError> {
        EmbeddedStore::owner_of(self, id)
    }

    async fn replay_of(
        &self,
        key: &str,
        notification: &Notification,
    ) -> Result<Option<RequestId>, StoreError> {
        EmbeddedStore::replay_of(self, key, notification)
    }

    async fn request_processing(&self, id: RequestId) -> Result<ProcessOutcome, StoreError> {
        EmbeddedStore::request_processing(self, id).await
    }

    async fn get(&self, id: RequestId) -> Result<Option<RequestRecord>, StoreError> {
        EmbeddedStore::get(self, id)
    }

    async fn events(&self, id: RequestId) -> Result<Option<Vec<Event>>, StoreError> {
        EmbeddedStore::events(self, id)
    }

    async fn request_count(&self) -> Result<u64, StoreError> {
        EmbeddedStore::request_count(self).map(|count| count as u64)
    }

    async fn sync(&self) -> Result<(), StoreError> {
        self.durable().await
    }

    async fn finish_attempt(
        &self,
        lease: &Lease,
        report: AttemptReport,
        decision: Decision,
    ) -> Result<Status, StoreError> {
        EmbeddedStore::finish_attempt(self, lease, report, decision).await
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        EmbeddedStore::release_lease(self, lease).await
    }

    async fn purge_final_before(
        &self,
        cutoff_ms: u64,
        resume_after: Option<RequestId>,
        limit: usize,
    ) -> Result<PurgeBatch, StoreError> {
        EmbeddedStore::purge_final_before(self, cutoff_ms, resume_after, limit).await
    }

    async fn purge_idempotency_before(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        EmbeddedStore::purge_idempotency_before(self, cutoff_ms).await
    }

    fn pending(&self) -> u64 {
        EmbeddedStore::pending(self)
    }

    fn storage_state(&self) -> StorageState {
        EmbeddedStore::storage_state(self)
    }

    async fn maintain(&self, shutdown: CancellationToken) {
        self.keep_available(shutdown).await
    }

    async fn close(&self) -> Result<(), StoreError> {
        let stats = EmbeddedStore::close(self).await?;
        tracing::info!(
            flushes = stats.flushes,
            writes = stats.waiters_served,
            "store closed"
        );
        Ok(())
    }
}

#[async_trait]
impl WorkSource for EmbeddedStore {
    async fn next(&self, admits: ChannelAdmission<'_>) -> Result<Lease, StoreError> {
        self.next_lease(admits).await
    }

    /// Every lease: in one process, a lease no attempt holds was abandoned
    /// by this instance, and the directory lock proves no other is alive.
    async fn recover(&self) -> Result<usize, StoreError> {
        self.recover_leases()
    }
}
