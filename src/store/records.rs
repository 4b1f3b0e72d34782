//! The records every engine keeps: a request, its history, an idempotency
//! binding. The API shows them, the dispatcher writes attempt reports.
//!
//! The embedded engine stores these very types in postcard, where fields and
//! variant order are the on-disk format: postcard encodes fields
//! positionally, with no count, and enum variants by index. Changing a
//! struct's fields, even appending one, takes a new `RECORD_VERSION`; enum
//! variants may be appended (`migrations-notes/README.md`). The tests in
//! `embedded/codec.rs` pin the encoding of every enum, so a reordering cannot
//! change the disk format unnoticed.

use serde::{Deserialize, Serialize};

use crate::domain::{Notification, RequestId, Status};

/// One notification request and where it stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub id: RequestId,
    pub notification: Notification,
    pub status: Status,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// When `process` was first called; the retry budget's age counts from here.
    pub process_requested_at_ms: Option<u64>,
    /// Provider attempts started so far.
    pub attempts: u32,
    pub next_attempt_at_ms: Option<u64>,
    pub provider_id: Option<String>,
    pub last_error: Option<String>,
    /// How many events the history holds; the next event's sequence number.
    pub event_count: u32,
}

/// Sequence of the `created` event, implied by the record since format 2.
pub const CREATED_SEQUENCE: u32 = 0;
/// Sequence of the `process_requested` event, implied by the record since format 3.
pub const PROCESS_REQUESTED_SEQUENCE: u32 = 1;

impl RequestRecord {
    /// The events the record stands for instead of storing them, with their
    /// sequence numbers: `created` (its `created_at_ms`) and, once `process`
    /// was called, `process_requested` (its `process_requested_at_ms`); the
    /// request was `queued` at both. Databases written by older formats store
    /// them too; readers prefer the stored ones.
    pub fn implied_events(&self) -> impl Iterator<Item = (u32, Event)> {
        let created = Event {
            at_ms: self.created_at_ms,
            status: Status::Queued,
            kind: EventKind::Created,
        };
        let process_requested = self.process_requested_at_ms.map(|at_ms| Event {
            at_ms,
            status: Status::Queued,
            kind: EventKind::ProcessRequested,
        });
        std::iter::once((CREATED_SEQUENCE, created))
            .chain(process_requested.map(|event| (PROCESS_REQUESTED_SEQUENCE, event)))
    }
}

/// One entry of a request's append-only history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub at_ms: u64,
    /// The request's status once this event happened.
    pub status: Status,
    pub kind: EventKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// `POST /v1/requests` stored the request (implied by the record).
    Created,
    /// `process` was called; the request entered the outbox (implied by the record).
    ProcessRequested,
    /// The dispatcher leased the request for attempt number `attempt`.
    AttemptStarted { attempt: u32 },
    /// The provider answered (or failed to); `next_attempt_at_ms` is set when a retry was scheduled.
    AttemptFinished(AttemptReport),
    /// A lease left by a crash or an interrupted shutdown went back to the outbox.
    LeaseRecovered,
}

/// What one provider call did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptReport {
    pub attempt: u32,
    pub http_status: Option<u16>,
    pub error: Option<String>,
    pub provider_id: Option<String>,
    pub latency_ms: u64,
    pub next_attempt_at_ms: Option<u64>,
}

/// An idempotency key's binding to the request it created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub id: RequestId,
    pub notification: Notification,
}
