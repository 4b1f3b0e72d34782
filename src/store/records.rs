//! The records the store persists (format version 1; see `migrations-notes/`).
//!
//! Field and variant order is part of the on-disk format: postcard encodes
//! fields positionally and enum variants by index, so append, never reorder.

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
    /// Stored after `POST /v1/requests`.
    Created,
    /// `process` was called; the request entered the outbox.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Channel, Priority};
    use crate::store::codec::{decode, encode};

    #[test]
    fn request_and_event_records_round_trip() {
        let record = RequestRecord {
            id: RequestId::new(),
            notification: Notification {
                to: "+15550100".into(),
                message: "code 1234".into(),
                channel: Channel::Sms,
                priority: Priority::Low,
            },
            status: Status::Processing,
            created_at_ms: 1,
            updated_at_ms: 2,
            process_requested_at_ms: Some(2),
            attempts: 3,
            next_attempt_at_ms: Some(9),
            provider_id: None,
            last_error: Some("HTTP 500".into()),
            event_count: 4,
        };
        assert_eq!(
            decode::<RequestRecord>(&encode(&record).unwrap()).unwrap(),
            record
        );

        let event = Event {
            at_ms: 5,
            status: Status::Sent,
            kind: EventKind::AttemptFinished(AttemptReport {
                attempt: 2,
                http_status: Some(200),
                provider_id: Some("p-1".into()),
                latency_ms: 120,
                ..AttemptReport::default()
            }),
        };
        assert_eq!(decode::<Event>(&encode(&event).unwrap()).unwrap(), event);
    }
}
