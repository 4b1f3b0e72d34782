//! On-disk encoding: one version byte, then the record in postcard.
//!
//! The version byte lets a future release read old records and upgrade them
//! (see `migrations-notes/`). bincode is deliberately not used: its last
//! release does not compile and the crate is unmaintained.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The version byte in front of every record value: the shape of the records
/// this build writes. Bump it together with a note in `migrations-notes/`.
pub const RECORD_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty record")]
    Empty,
    #[error("record has format version {found}, this build reads version {RECORD_VERSION}")]
    UnsupportedVersion { found: u8 },
    #[error("malformed record: {0}")]
    Postcard(#[from] postcard::Error),
    #[error("malformed record: {0} bytes left over")]
    TrailingBytes(usize),
}

/// Encodes `value` as `[RECORD_VERSION, postcard bytes...]`.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut bytes = vec![RECORD_VERSION];
    postcard::to_io(value, &mut bytes)?;
    Ok(bytes)
}

/// Decodes bytes written by [`encode`], refusing any version it does not know.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    match version {
        RECORD_VERSION => match postcard::take_from_bytes(body)? {
            (value, []) => Ok(value),
            (_, rest) => Err(CodecError::TrailingBytes(rest.len())),
        },
        found => Err(CodecError::UnsupportedVersion { found }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Channel, Notification, Priority, RequestId, Status};
    use crate::store::{AttemptReport, Event, EventKind, RequestRecord};

    fn sample() -> Notification {
        Notification {
            to: "user@example.com".into(),
            message: "héllo".into(),
            channel: Channel::Sms,
            priority: Priority::High,
        }
    }

    /// Why a struct's fields never change within a record version.
    #[test]
    fn a_record_read_as_a_struct_with_a_field_appended_fails() {
        #[derive(serde::Serialize)]
        struct Before {
            a: u32,
        }
        #[derive(Debug, serde::Deserialize)]
        struct After {
            _a: u32,
            #[serde(default)]
            _b: Option<u64>,
        }
        let bytes = encode(&Before { a: 7 }).unwrap();
        assert!(matches!(
            decode::<After>(&bytes),
            Err(CodecError::Postcard(_))
        ));
    }

    #[test]
    fn bytes_left_over_are_refused() {
        let mut bytes = encode(&sample()).unwrap();
        bytes.extend([9, 9]);
        assert!(matches!(
            decode::<Notification>(&bytes),
            Err(CodecError::TrailingBytes(2))
        ));
    }

    #[test]
    fn round_trips_with_a_leading_version_byte() {
        let bytes = encode(&sample()).unwrap();
        assert_eq!(bytes[0], RECORD_VERSION);
        assert_eq!(decode::<Notification>(&bytes).unwrap(), sample());
    }

    #[test]
    fn refuses_unknown_versions() {
        let mut bytes = encode(&sample()).unwrap();
        bytes[0] = RECORD_VERSION + 1;
        assert!(matches!(
            decode::<Notification>(&bytes),
            Err(CodecError::UnsupportedVersion { found }) if found == RECORD_VERSION + 1
        ));
    }

    #[test]
    fn refuses_empty_and_truncated_records() {
        assert!(matches!(
            decode::<Notification>(&[]),
            Err(CodecError::Empty)
        ));
        let bytes = encode(&sample()).unwrap();
        assert!(matches!(
            decode::<Notification>(&bytes[..bytes.len() - 3]),
            Err(CodecError::Postcard(_))
        ));
    }

    #[test]
    fn every_enum_keeps_its_variant_indexes_on_disk() {
        use crate::domain::Status;
        use crate::store::{AttemptReport, EventKind};
        // postcard writes a variant as its index: these bytes are the format.
        let index = |bytes: Vec<u8>| bytes[1];
        let statuses = [
            Status::Queued,
            Status::Processing,
            Status::Sent,
            Status::Failed,
        ];
        let channels = [Channel::Email, Channel::Sms, Channel::Push];
        let priorities = [Priority::High, Priority::Normal, Priority::Low];
        let kinds = [
            EventKind::Created,
            EventKind::ProcessRequested,
            EventKind::AttemptStarted { attempt: 1 },
            EventKind::AttemptFinished(AttemptReport::default()),
            EventKind::LeaseRecovered,
        ];
        let encoded = |values: Vec<Vec<u8>>| values.into_iter().map(index).collect::<Vec<_>>();
        assert_eq!(
            encoded(statuses.iter().map(|v| encode(v).unwrap()).collect()),
            [0, 1, 2, 3]
        );
        assert_eq!(
            encoded(channels.iter().map(|v| encode(v).unwrap()).collect()),
            [0, 1, 2]
        );
        assert_eq!(
            encoded(priorities.iter().map(|v| encode(v).unwrap()).collect()),
            [0, 1, 2]
        );
        assert_eq!(
            encoded(kinds.iter().map(|v| encode(v).unwrap()).collect()),
            [0, 1, 2, 3, 4]
        );
    }

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
