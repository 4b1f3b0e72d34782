//! How records look in Redis. A request is a hash (short field names: every
//! request carries them), its history a list of [`Event`] JSON. The messages
//! on RabbitMQ are in `messages.rs`.

use std::collections::HashMap;

use crate::domain::{Notification, Priority, RequestId, Status};
use crate::store::{Event, RequestRecord, StoreError};

/// The AMQP priority of a request: high 3, normal 2, low 1 (0: unknown).
pub(super) fn amqp_priority(priority: Priority) -> u8 {
    match priority {
        Priority::High => 3,
        Priority::Normal => 2,
        Priority::Low => 1,
    }
}

pub(super) fn notification_json(notification: &Notification) -> Result<String, StoreError> {
    serde_json::to_string(notification).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn notification_from(json: &str) -> Result<Notification, StoreError> {
    serde_json::from_str(json).map_err(|e| corrupt("a notification", e))
}

/// A request's hash (`HGETALL`), or `None` when it has none.
pub(super) fn record_from(
    id: RequestId,
    fields: &HashMap<String, String>,
) -> Result<Option<RequestRecord>, StoreError> {
    if fields.is_empty() {
        return Ok(None);
    }
    let text = |name: &str| {
        fields
            .get(name)
            .ok_or_else(|| StoreError::Corrupt(format!("request {id} has no field {name}")))
    };
    let number = |name: &str| -> Result<u64, StoreError> {
        text(name)?
            .parse()
            .map_err(|e| corrupt(&format!("field {name} of {id}"), e))
    };
    let optional = |name: &str| -> Result<Option<u64>, StoreError> {
        fields
            .get(name)
            .map(|v| {
                v.parse()
                    .map_err(|e| corrupt(&format!("field {name} of {id}"), e))
            })
            .transpose()
    };
    let status: Status = text("st")?.parse().map_err(StoreError::Corrupt)?;
    Ok(Some(RequestRecord {
        id,
        notification: notification_from(text("n")?)?,
        status,
        created_at_ms: number("ca")?,
        updated_at_ms: number("ua")?,
        process_requested_at_ms: optional("pr")?,
        attempts: number("at")? as u32,
        next_attempt_at_ms: optional("nx")?,
        provider_id: fields.get("pid").cloned(),
        last_error: fields.get("err").cloned(),
        event_count: number("ec")? as u32,
    }))
}

pub(super) fn event_from(json: &str) -> Result<Event, StoreError> {
    serde_json::from_str(json).map_err(|e| corrupt("an event", e))
}

fn corrupt(what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what} in Redis cannot be read: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AttemptReport, EventKind};

    /// The scripts write events as text; these are the shapes they write.
    #[test]
    fn the_events_the_scripts_write_read_as_events() {
        let report = serde_json::to_string(&AttemptReport {
            attempt: 2,
            http_status: Some(500),
            error: Some("HTTP 500".into()),
            ..AttemptReport::default()
        })
        .unwrap();
        let written = [
            r#"{"at_ms":1764640000123,"status":"queued","kind":"Created"}"#.to_string(),
            r#"{"at_ms":1,"status":"processing","kind":{"AttemptStarted":{"attempt":2}}}"#
                .to_string(),
            format!(r#"{{"at_ms":2,"status":"processing","kind":{{"AttemptFinished":{report}}}}}"#),
            r#"{"at_ms":3,"status":"processing","kind":"LeaseRecovered"}"#.to_string(),
        ];
        let kinds: Vec<EventKind> = written
            .iter()
            .map(|json| event_from(json).unwrap().kind)
            .collect();
        assert_eq!(kinds[0], EventKind::Created);
        assert_eq!(kinds[1], EventKind::AttemptStarted { attempt: 2 });
        assert!(matches!(&kinds[2], EventKind::AttemptFinished(r) if r.http_status == Some(500)));
        assert_eq!(kinds[3], EventKind::LeaseRecovered);
        assert_eq!(event_from(&written[0]).unwrap().at_ms, 1_764_640_000_123);
    }
}
