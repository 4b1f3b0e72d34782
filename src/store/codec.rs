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
    use crate::domain::{Channel, Notification, Priority};

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
}
