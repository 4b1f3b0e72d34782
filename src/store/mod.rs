//! The seam between Herald and the databases it runs on.
//!
//! `api/`, `dispatch/` and `retention` talk to three traits and nothing
//! else, so an engine can change without them:
//! - [`Records`]: every request, its history and idempotency key; the writes
//!   the API makes (create, process) and the outcomes the dispatcher records;
//!   the count of undelivered work; retention's purges; the store's health.
//! - [`WorkSource`]: the next due delivery. The dispatcher asks and waits
//!   inside [`WorkSource::next`] until something is due or new work arrives:
//!   it never peeks at the store's order, and nothing wakes it from outside.
//! - [`RateGate`]: the pace of provider calls: a slot to wait for, told of a
//!   `429` (with its `Retry-After`) and of relief.
//!
//! Each engine lives in its own folder and is the only code that knows its
//! database: [`embedded`] (one process, its files in the data directory;
//! the default) and [`scaleout`] (several nodes sharing Redis and RabbitMQ).
//!
//! Data walks one way: HTTP → [`Records`] → [`WorkSource`] → dispatcher →
//! provider → [`Records`].

pub mod embedded;
pub mod rate;
mod records;
pub mod scaleout;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

pub use records::{AttemptReport, Event, EventKind, IdempotencyRecord, RequestRecord};

use crate::domain::{Channel, Notification, RequestId, Status};

/// What went wrong, in the store's own terms: the API and the dispatcher act
/// on these meanings, never on an engine's errors. The API maps each to its
/// HTTP answer in one place (`api/error.rs`).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no request with id {0}")]
    NotFound(RequestId),
    #[error("the idempotency key was already used with a different request body")]
    IdempotencyConflict,
    /// Nothing can be made durable or read now: a full disk, an I/O error, a
    /// store being reopened or lost, a database out of reach. Nothing was
    /// accepted.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The attempt's lease was taken back before it finished.
    #[error("request {0} is no longer leased by this attempt")]
    LeaseLost(RequestId),
    /// Something stored cannot be read.
    #[error("damaged data: {0}")]
    Corrupt(String),
    /// The store cannot be opened as it is (its directory, its format, data
    /// missing): the message says what to do.
    #[error("{0}")]
    Refused(String),
}

/// Whether the store takes writes now, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageState {
    Serving,
    /// Writes fail; the engine is recovering by itself.
    Unavailable(String),
    /// Writes are refused for good: the data is gone from under the gateway.
    Lost(String),
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

/// A delivery leased to one attempt: the request leaves the queue while leased.
#[derive(Clone, Debug)]
pub struct Lease {
    pub id: RequestId,
    pub notification: Notification,
    /// This attempt's number, from 1.
    pub attempt: u32,
    pub process_requested_at_ms: u64,
    /// The instance whose attempt holds the lease.
    pub owner: InstanceId,
    /// When the lease may be taken back if its owner has not finished it.
    pub deadline_ms: u64,
}

/// How an attempt ends for the request. A retry's wait counts from when the
/// store records the outcome, by the store's own clock (Redis' for the
/// scale-out engine): a `Retry-After: 1` then means a second after the
/// history's `attempt_finished`, and a node whose clock is off cannot move
/// a retry earlier. (An absolute time from the dispatcher's clock let the
/// next attempt start a millisecond short of it, once in CI.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Sent,
    /// Try again once `wait_ms` have passed.
    RetryAfter {
        wait_ms: u64,
    },
    /// Try again once `wait_ms` have passed, and the attempt does not count
    /// against the retry budget (the provider said "later", or refused
    /// Herald itself, not the request): the next lease runs its number again.
    Deferred {
        wait_ms: u64,
    },
    Failed,
}

impl Decision {
    /// How long until the request is tried again, if it is.
    pub fn retry_wait_ms(self) -> Option<u64> {
        match self {
            Self::RetryAfter { wait_ms } | Self::Deferred { wait_ms } => Some(wait_ms),
            Self::Sent | Self::Failed => None,
        }
    }
}

/// What one [`Records::purge_final_before`] call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PurgeBatch {
    pub purged: usize,
    /// Where the next call resumes; `None` once the cutoff was reached.
    pub resume_after: Option<RequestId>,
}

/// Which gateway process holds a lease: `--instance-id`, by default the host
/// name and the process id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct InstanceId(pub String);

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Every request, its history and idempotency key.
#[async_trait]
pub trait Records: Send + Sync {
    /// Stores a new `queued` request durably, or answers the request an
    /// idempotency key with the same body made before. `owner` is the API
    /// client that creates it, when client keys are on.
    async fn create(
        &self,
        notification: Notification,
        idempotency_key: Option<&str>,
        owner: Option<&str>,
    ) -> Result<CreateOutcome, StoreError>;

    /// The API client that created `id`, if one did.
    async fn owner_of(&self, id: RequestId) -> Result<Option<String>, StoreError>;

    /// The request `key` is bound to with this same body, if any: what a
    /// create with `key` would answer as a replay, without writing anything.
    async fn replay_of(
        &self,
        key: &str,
        notification: &Notification,
    ) -> Result<Option<RequestId>, StoreError>;

    /// Records, durably and once, that `id` is to be delivered.
    async fn request_processing(&self, id: RequestId) -> Result<ProcessOutcome, StoreError>;

    async fn get(&self, id: RequestId) -> Result<Option<RequestRecord>, StoreError>;

    /// The request's history, oldest first; `None` for an unknown id.
    async fn events(&self, id: RequestId) -> Result<Option<Vec<Event>>, StoreError>;

    /// Requests stored, in any status.
    async fn request_count(&self) -> Result<u64, StoreError>;

    /// Waits until every write made so far is durable: a lease must be
    /// before its provider call starts.
    async fn sync(&self) -> Result<(), StoreError>;

    /// Ends a leased attempt as `decision` says, records `report` in the
    /// history, durably. Returns the request's new status.
    async fn finish_attempt(
        &self,
        lease: &Lease,
        report: AttemptReport,
        decision: Decision,
    ) -> Result<Status, StoreError>;

    /// Returns a lease whose attempt never called the provider, due now, with
    /// its attempt number given back. `LeaseLost` when it is not there.
    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError>;

    /// Deletes up to `limit` requests final since before `cutoff_ms`, oldest
    /// first after `resume_after`, with their history.
    async fn purge_final_before(
        &self,
        cutoff_ms: u64,
        resume_after: Option<RequestId>,
        limit: usize,
    ) -> Result<PurgeBatch, StoreError>;

    /// Deletes the idempotency keys whose requests the purge deletes for the
    /// same cutoff; returns how many. Runs before the purge.
    async fn purge_idempotency_before(&self, cutoff_ms: u64) -> Result<usize, StoreError>;

    /// Requests waiting to be delivered or being attempted: the one count of
    /// undelivered work (the outbox bound and `/ready` read it).
    fn pending(&self) -> u64;

    /// Whether writes can be made durable now.
    fn storage_state(&self) -> StorageState;

    /// A standing risk to acknowledged writes the operator accepted (a
    /// scale-out Redis started with `--allow-volatile-redis`), for `/ready`.
    fn warning(&self) -> Option<String> {
        None
    }

    /// Why the work queue cannot carry work now, when it cannot (the
    /// scale-out engine's RabbitMQ out of reach): writes are still taken,
    /// and their work waits in the store, but `/ready` says so.
    fn work_queue_unavailable(&self) -> Option<String> {
        None
    }

    /// The engine's own upkeep until `shutdown` (the embedded engine reopens
    /// its database after a failed write).
    async fn maintain(&self, shutdown: CancellationToken);

    /// Makes every write durable and lets the database go; every call after
    /// it answers `Unavailable`. A lost store answers why, so the gateway
    /// exits non-zero.
    async fn close(&self) -> Result<(), StoreError>;
}

/// Which channels may have a call now: for each, how long its own limit
/// keeps the next call waiting (`None`: it may go now). The work source
/// leases only from channels it lets through, so a throttled channel holds
/// no slot and delays no other channel.
pub type ChannelAdmission<'a> = &'a (dyn Fn(Channel) -> Option<Duration> + Sync);

/// Due deliveries, one lease at a time.
#[async_trait]
pub trait WorkSource: Send + Sync {
    /// Waits until a delivery is due in a channel `admits` lets through (or
    /// new work arrives, or a channel frees up), then leases the most urgent
    /// one to this instance: highest priority first, then the request that
    /// asked for delivery first, retries included once their backoff has
    /// passed. The lease is durable once [`Records::sync`] returns.
    async fn next(&self, admits: ChannelAdmission<'_>) -> Result<Lease, StoreError>;

    /// Takes back the leases no running attempt holds: those this instance
    /// abandoned (a shutdown past its grace), and any whose owner is gone.
    async fn recover(&self) -> Result<usize, StoreError>;
}

/// A call the rate gate let through, handed back with what became of it.
#[derive(Debug)]
pub struct RateSlot {
    /// The gate's own number for the call.
    pub id: u64,
    /// The call took the last free place of the gate's window: a `429` for
    /// it means the provider counted calls closer together than the gate did.
    pub filled_window: bool,
}

/// The pace of provider calls.
#[async_trait]
pub trait RateGate: Send + Sync {
    /// Waits for a slot for the next call, whatever its channel.
    async fn until_ready(&self) -> RateSlot;

    /// How long the channel's own limit (if it has one) keeps its next call
    /// waiting; `None` when it may go now.
    fn channel_wait(&self, channel: Channel) -> Option<Duration>;

    /// Takes the channel's next place: a lease of that channel was made
    /// after [`RateGate::channel_wait`] said it was free.
    fn take_channel(&self, channel: Channel);

    /// The slot's call goes out now: the provider counts it from about now.
    fn sending(&self, slot: &RateSlot);

    /// The slot was not used (no call was made in it).
    fn not_sent(&self, slot: RateSlot);

    /// The provider refused the slot's call with `429`, saying when to come
    /// back if it did.
    fn throttled(&self, slot: &RateSlot, retry_after: Option<Duration>);

    /// The provider answered the slot's call without throttling.
    fn relieved(&self, slot: &RateSlot);

    /// The provider is failing: this process's circuit breaker is open for
    /// `hold`. A gate shared by several nodes holds all of them that long;
    /// a gate of one process has nothing to add (the breaker holds it).
    fn provider_down(&self, _hold: Duration) {}
}

/// One engine, as the rest of Herald sees it.
#[derive(Clone)]
pub struct Backend {
    pub records: Arc<dyn Records>,
    pub work: Arc<dyn WorkSource>,
    pub gate: Arc<dyn RateGate>,
}
