//! The work messages on RabbitMQ, in the two forms a node publishes: a
//! pointer `{form: "pointer", id, seq}` for Herald's own nodes
//! (`--dispatch provider`, which read the record from Redis), and the whole
//! notification for senders of the operator's own (`--dispatch external`),
//! which must act on the message alone. Each message names its form, in its
//! body and in the AMQP `type`, so a node never misreads one meant for an
//! external sender. `docs/asyncapi.yaml` documents both, and
//! `tests/scaleout_messages.rs` checks it against what the nodes publish.

use serde::{Deserialize, Serialize};

use crate::domain::{Channel, Priority, RequestId};

/// The AMQP `type` of a pointer message.
pub(super) const POINTER_TYPE: &str = "herald.work.pointer";
/// The AMQP `type` of a whole-notification message.
pub(super) const NOTIFICATION_TYPE: &str = "herald.work.notification";

/// A work message: which request, and which schedule of it (`seq` grows on
/// every reschedule, so an older copy is told apart and dropped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Pointer {
    pub id: RequestId,
    pub seq: u64,
}

/// What an external sender needs to deliver a notification, and to report on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct NotificationMessage {
    pub id: RequestId,
    pub seq: u64,
    /// The attempt this message stands for: 1 for the first.
    pub attempt: u32,
    pub to: String,
    pub message: String,
    #[serde(rename = "type")]
    pub channel: Channel,
    pub priority: Priority,
    /// When the request was created, RFC 3339 in UTC.
    pub created_at: String,
    pub created_at_ms: u64,
    /// The client's `Idempotency-Key` on create, where it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// A work message in either form, tagged by `form`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "form", rename_all = "snake_case")]
pub(super) enum WorkMessage {
    Pointer(Pointer),
    Notification(NotificationMessage),
}

impl WorkMessage {
    pub fn pointer(&self) -> Pointer {
        match self {
            Self::Pointer(pointer) => pointer.clone(),
            Self::Notification(full) => Pointer {
                id: full.id,
                seq: full.seq,
            },
        }
    }

    /// The AMQP `type` this form is published with.
    pub fn amqp_type(&self) -> &'static str {
        match self {
            Self::Pointer(_) => POINTER_TYPE,
            Self::Notification(_) => NOTIFICATION_TYPE,
        }
    }
}

/// A pointer as nodes published it before messages named their form:
/// exactly `{id, seq}`, nothing else, so a damaged whole notification is
/// never read as one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnnamedPointer {
    id: RequestId,
    seq: u64,
}

/// Why a node that dispatches to the provider itself cannot take a message.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum Unreadable {
    #[error("not a work message {{form, id, seq}} on a channel's routing key")]
    Damaged,
    #[error(
        "a whole notification for an external sender (form notification) reached a node that dispatches to the provider itself (--dispatch provider): the cluster mixes dispatch modes"
    )]
    ForExternalSenders,
}

/// The pointer of a message a `--dispatch provider` node consumed: a
/// pointer, named or from before forms were named; anything else is
/// [`Unreadable`].
pub(super) fn pointer_for_own_dispatch(body: &[u8]) -> Result<Pointer, Unreadable> {
    match serde_json::from_slice::<WorkMessage>(body) {
        Ok(WorkMessage::Pointer(pointer)) => Ok(pointer),
        Ok(WorkMessage::Notification(_)) => Err(Unreadable::ForExternalSenders),
        Err(_) => serde_json::from_slice::<UnnamedPointer>(body)
            .map(|old| Pointer {
                id: old.id,
                seq: old.seq,
            })
            .map_err(|_| Unreadable::Damaged),
    }
}

/// Milliseconds since the Unix epoch as RFC 3339 in UTC, to the millisecond.
pub(super) fn rfc3339_ms(ms: u64) -> String {
    let (days, rest) = ((ms / 86_400_000) as i64, ms % 86_400_000);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute) = (rest / 3_600_000, rest / 60_000 % 60);
    let (second, milli) = (rest / 1000 % 60, rest % 1000);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{milli:03}Z")
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> NotificationMessage {
        NotificationMessage {
            id: RequestId::new(),
            seq: 2,
            attempt: 2,
            to: "user@example.com".into(),
            message: "Your code is 1234".into(),
            channel: Channel::Email,
            priority: Priority::High,
            created_at: rfc3339_ms(1_764_640_000_123),
            created_at_ms: 1_764_640_000_123,
            idempotency_key: None,
        }
    }

    #[test]
    fn each_form_round_trips_and_names_itself() {
        let message = WorkMessage::Notification(full());
        let json: serde_json::Value = serde_json::to_value(&message).unwrap();
        assert_eq!(json["form"], "notification");
        assert_eq!(json["type"], "email");
        assert_eq!(json["priority"], "high");
        assert!(json.get("idempotency_key").is_none(), "absent, not null");
        assert_eq!(
            serde_json::from_value::<WorkMessage>(json).unwrap(),
            message
        );
        let pointer = WorkMessage::Pointer(message.pointer());
        let json = serde_json::to_string(&pointer).unwrap();
        assert!(json.starts_with(r#"{"form":"pointer","id":"#), "{json}");
    }

    #[test]
    fn a_node_of_its_own_dispatch_reads_pointers_only() {
        let message = full();
        let named = serde_json::to_vec(&WorkMessage::Pointer(
            WorkMessage::Notification(message.clone()).pointer(),
        ))
        .unwrap();
        assert_eq!(pointer_for_own_dispatch(&named).unwrap().seq, 2);
        let unnamed = format!(r#"{{"id":"{}","seq":7}}"#, message.id);
        assert_eq!(pointer_for_own_dispatch(unnamed.as_bytes()).unwrap().seq, 7);
        let whole = serde_json::to_vec(&WorkMessage::Notification(message.clone())).unwrap();
        assert_eq!(
            pointer_for_own_dispatch(&whole),
            Err(Unreadable::ForExternalSenders)
        );
        let damaged = format!(r#"{{"form":"notification","id":"{}","seq":7}}"#, message.id);
        assert_eq!(
            pointer_for_own_dispatch(damaged.as_bytes()),
            Err(Unreadable::Damaged)
        );
        assert_eq!(
            pointer_for_own_dispatch(b"not json"),
            Err(Unreadable::Damaged)
        );
    }

    #[test]
    fn times_are_rfc3339_in_utc() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_764_640_000_123), "2025-12-02T01:46:40.123Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
