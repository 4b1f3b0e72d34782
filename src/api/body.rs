//! Turning a create request's raw body and headers into a validated
//! [`Notification`], with an error that says exactly what is wrong: the
//! `/v1/requests` body ([`CreateBody`]) and the founding document's
//! `/api/v1/notifications` body ([`NotificationBody`]), read and checked by
//! the same rules.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::error::Category;
use utoipa::ToSchema;

use super::error::ApiError;
use super::text;
use crate::domain::{Channel, Notification, Priority};

/// Longest accepted `to`, in characters (an e-mail address, a phone number or a device token).
pub const MAX_TO_CHARS: usize = 512;
/// Longest accepted `message`, in characters.
pub const MAX_MESSAGE_CHARS: usize = 10_000;
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

// Every field is optional here so that a missing one gets its own message;
// the schema attributes describe what a valid body must hold.
/// A notification to deliver: a JSON object.
#[derive(Deserialize, ToSchema)]
#[schema(as = NewRequest, example = json!({"to": "user@example.com", "message": "Your code is 1234", "type": "email"}))]
pub struct CreateBody {
    /// Recipient: an e-mail address, a phone number or a device token (1 to 512 characters).
    #[schema(value_type = String, required = true, max_length = 512)]
    to: Option<String>,
    /// The text to deliver (1 to 10,000 characters).
    #[schema(value_type = String, required = true, max_length = 10000)]
    message: Option<String>,
    #[serde(rename = "type")]
    #[schema(value_type = Channel, required = true)]
    channel: Option<String>,
    /// Dispatch order; `normal` when absent.
    #[schema(value_type = Option<Priority>)]
    priority: Option<String>,
}

/// The founding document's notification: a JSON object. The channel is
/// `channel` or, by its other name, `type`: exactly one of the two.
#[derive(Deserialize, ToSchema)]
#[schema(as = NewNotification, example = json!({"to": "user@example.com", "message": "Your code is 1234", "channel": "email", "priority": "critical"}))]
pub struct NotificationBody {
    /// Recipient: an e-mail address, a phone number or a device token (1 to 512 characters).
    #[schema(value_type = String, required = true, max_length = 512)]
    to: Option<String>,
    /// The text to deliver (1 to 10,000 characters).
    #[schema(value_type = String, required = true, max_length = 10000)]
    message: Option<String>,
    /// The delivery channel. Send this or `type`, not both.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Channel)]
    channel: Option<Option<String>>,
    /// Another name for `channel`. Send this or `channel`, not both.
    #[serde(default, rename = "type", deserialize_with = "present")]
    #[schema(value_type = Channel)]
    kind: Option<Option<String>>,
    /// Dispatch order (`critical` is `high`); `normal` when absent.
    #[schema(value_type = Option<String>)]
    priority: Option<String>,
}

/// A field that may be absent (`None`) or sent as `null` (`Some(None)`).
fn present<'de, D: Deserializer<'de>>(value: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(value).map(Some)
}

/// A create body: JSON that becomes a [`Notification`] once every field is checked.
pub trait NotificationFields: DeserializeOwned {
    fn validate(self) -> Result<Notification, ApiError>;
}

/// Checks size, content type and JSON, then every field.
pub fn parse_create<B: NotificationFields>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Notification, ApiError> {
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge { limit },
        _ => match crate::server::body_timeout_in(&rejection) {
            Some(timeout) => ApiError::BodyTimeout(timeout),
            None => ApiError::MalformedJson(rejection.body_text()),
        },
    })?;
    if !is_json(headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    if !body.trim_ascii_start().starts_with(b"{") {
        return Err(not_an_object(&body));
    }
    let parsed: B = serde_json::from_slice(&body).map_err(|error| match error.classify() {
        Category::Data => ApiError::Validation(format!("invalid body: {error}")),
        _ => ApiError::MalformedJson(error.to_string()),
    })?;
    parsed.validate()
}

/// serde would take an array for the struct too, field by field.
fn not_an_object(body: &[u8]) -> ApiError {
    match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
        Ok(_) => ApiError::Validation("the body must be a JSON object".into()),
        Err(error) => ApiError::MalformedJson(error.to_string()),
    }
}

/// JSON, or no `Content-Type` at all: clients written against other
/// solutions of the challenge send none, and mean JSON.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers.get(header::CONTENT_TYPE) else {
        return true;
    };
    let Ok(content_type) = content_type.to_str() else {
        return false;
    };
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

impl NotificationFields for CreateBody {
    fn validate(self) -> Result<Notification, ApiError> {
        checked(self.to, self.message, || {
            let channel = channel_field("type", self.channel)?;
            let priority = match self.priority {
                Some(priority) => priority_field(&priority)?,
                None => Priority::Normal,
            };
            Ok((channel, priority))
        })
    }
}

impl NotificationFields for NotificationBody {
    fn validate(self) -> Result<Notification, ApiError> {
        checked(self.to, self.message, || {
            let channel = match (self.channel, self.kind) {
                (Some(channel), None) => channel_field("channel", channel)?,
                (None, Some(kind)) => channel_field("type", kind)?,
                (Some(_), Some(_)) => {
                    return Err(ApiError::Validation(
                        "send `channel` or `type` (two names for one field), not both".into(),
                    ));
                }
                (None, None) => {
                    return Err(ApiError::Validation(
                        "`channel` (or `type`) is required (email, sms or push)".into(),
                    ));
                }
            };
            let priority = match self.priority.as_deref() {
                Some(CRITICAL) => Priority::High,
                Some(priority) => priority_field(priority).map_err(|_| {
                    ApiError::Validation(format!(
                        "`priority`: unknown priority `{priority}`; expected one of: high, normal, low, {CRITICAL}"
                    ))
                })?,
                None => Priority::Normal,
            };
            Ok((channel, priority))
        })
    }
}

/// The founding document's name for the `high` priority.
pub const CRITICAL: &str = "critical";

/// `to` and `message` checked first, then the channel and priority as
/// `rest` reads them.
fn checked(
    to: Option<String>,
    message: Option<String>,
    rest: impl FnOnce() -> Result<(Channel, Priority), ApiError>,
) -> Result<Notification, ApiError> {
    let to = text_field("to", to, MAX_TO_CHARS)?;
    let message = text_field("message", message, MAX_MESSAGE_CHARS)?;
    let (channel, priority) = rest()?;
    Ok(Notification {
        to,
        message,
        channel,
        priority,
    })
}

fn channel_field(name: &str, value: Option<String>) -> Result<Channel, ApiError> {
    value
        .ok_or_else(|| ApiError::Validation(format!("`{name}` is required (email, sms or push)")))?
        .parse::<Channel>()
        .map_err(|reason| ApiError::Validation(format!("`{name}`: {reason}")))
}

fn priority_field(value: &str) -> Result<Priority, ApiError> {
    value
        .parse::<Priority>()
        .map_err(|reason| ApiError::Validation(format!("`priority`: {reason}")))
}

fn text_field(name: &str, value: Option<String>, max_chars: usize) -> Result<String, ApiError> {
    let value = value.ok_or_else(|| ApiError::Validation(format!("`{name}` is required")))?;
    if text::is_blank(&value) {
        return Err(ApiError::Validation(format!("`{name}` must not be empty")));
    }
    if value.chars().count() > max_chars {
        return Err(ApiError::Validation(format!(
            "`{name}` is longer than {max_chars} characters"
        )));
    }
    // `to` is an address: control characters there are never legitimate, and
    // format characters (a bidi override, a zero-width space) make it display
    // as another address.
    if name == "to" && text::has_invisible(&value) {
        return Err(ApiError::Validation(
            "`to` must not contain control or format characters (such as bidi overrides or zero-width spaces)".into(),
        ));
    }
    Ok(value)
}

/// The optional `Idempotency-Key` header, checked.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    // Which one would count is anyone's guess: refuse both.
    if values.next().is_some() {
        return Err(ApiError::RepeatedIdempotencyKey);
    }
    let key = value
        .to_str()
        .map_err(|_| ApiError::InvalidIdempotencyKey)?;
    let valid = !key.is_empty()
        && key.len() <= MAX_IDEMPOTENCY_KEY_LEN
        && key.bytes().all(|b| b.is_ascii_graphic());
    if valid {
        Ok(Some(key))
    } else {
        Err(ApiError::InvalidIdempotencyKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn json_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        headers
    }

    fn parse(body: &str) -> Result<Notification, ApiError> {
        parse_create::<CreateBody>(&json_headers(), Ok(Bytes::from(body.to_string())), 1024)
    }

    fn parse_notification(body: &str) -> Result<Notification, ApiError> {
        parse_create::<NotificationBody>(&json_headers(), Ok(Bytes::from(body.to_string())), 1024)
    }

    /// Each body is refused as invalid, with a message holding its text.
    fn assert_refused(parse: fn(&str) -> Result<Notification, ApiError>, cases: &[(&str, &str)]) {
        for (body, expected) in cases {
            match parse(body) {
                Err(ApiError::Validation(message)) => {
                    assert!(message.contains(expected), "{body}: {message}")
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn accepts_a_valid_body_with_default_priority() {
        let n = parse(r#"{"to":"a@b.c","message":"hi","type":"email"}"#).unwrap();
        assert_eq!((n.channel, n.priority), (Channel::Email, Priority::Normal));
    }

    #[test]
    fn names_what_is_wrong() {
        let cases = [
            (r#"{"message":"hi","type":"sms"}"#, "`to` is required"),
            (
                r#"{"to":"  ","message":"hi","type":"sms"}"#,
                "`to` must not be empty",
            ),
            (r#"{"to":"x","message":"hi"}"#, "`type` is required"),
            (
                r#"{"to":"x","message":"hi","type":"fax"}"#,
                "unknown channel `fax`",
            ),
            (
                r#"{"to":"x","message":"hi","type":"sms","priority":"urgent"}"#,
                "unknown priority",
            ),
            (
                r#"{"to":"x\n","message":"hi","type":"sms"}"#,
                "control or format characters",
            ),
            (
                r#"{"to":"a\u202emoc.b@c","message":"hi","type":"sms"}"#,
                "control or format characters",
            ),
            (
                r#"{"to":"a\u200b@b.c","message":"hi","type":"sms"}"#,
                "control or format characters",
            ),
            (r#"{"to":5,"message":"hi","type":"sms"}"#, "invalid type"),
        ];
        assert_refused(parse, &cases);
    }

    #[test]
    fn a_notification_names_its_channel_once_by_either_name() {
        for (body, channel, priority) in [
            (
                r#"{"to":"x","message":"hi","channel":"sms"}"#,
                Channel::Sms,
                Priority::Normal,
            ),
            (
                r#"{"to":"x","message":"hi","type":"push","priority":"low"}"#,
                Channel::Push,
                Priority::Low,
            ),
            (
                r#"{"to":"x","message":"hi","channel":"email","priority":"critical"}"#,
                Channel::Email,
                Priority::High,
            ),
            (
                r#"{"to":"x","message":"hi","channel":"email","priority":null}"#,
                Channel::Email,
                Priority::Normal,
            ),
        ] {
            let n = parse_notification(body).unwrap();
            assert_eq!((n.channel, n.priority), (channel, priority), "{body}");
        }
        let cases = [
            (
                r#"{"to":"x","message":"hi"}"#,
                "`channel` (or `type`) is required",
            ),
            (
                r#"{"to":"x","message":"hi","channel":"sms","type":"sms"}"#,
                "not both",
            ),
            (
                r#"{"to":"x","message":"hi","channel":"sms","type":"email"}"#,
                "not both",
            ),
            (
                r#"{"to":"x","message":"hi","channel":null}"#,
                "`channel` is required",
            ),
            (
                r#"{"to":"x","message":"hi","channel":null,"type":"sms"}"#,
                "not both",
            ),
            (
                r#"{"to":"x","message":"hi","type":"fax"}"#,
                "`type`: unknown channel `fax`",
            ),
            (
                r#"{"to":"x","message":"hi","channel":"sms","priority":"urgent"}"#,
                "high, normal, low, critical",
            ),
            (r#"{"message":"hi","channel":"sms"}"#, "`to` is required"),
            (r#"{"to":"x","message":"hi","channel":5}"#, "invalid type"),
        ];
        assert_refused(parse_notification, &cases);
        // `/v1/requests` keeps its own names: no `channel`, no `critical`.
        assert!(parse(r#"{"to":"x","message":"hi","channel":"sms"}"#).is_err());
        assert!(parse(r#"{"to":"x","message":"hi","type":"sms","priority":"critical"}"#).is_err());
    }

    #[test]
    fn only_an_object_is_a_body() {
        for json in [r#"["x@y.z", "hi", "email", "high"]"#, r#" "x""#, "42"] {
            assert!(
                matches!(parse(json), Err(ApiError::Validation(_))),
                "{json}"
            );
        }
        assert!(matches!(parse("[1,"), Err(ApiError::MalformedJson(_))));
    }

    #[test]
    fn malformed_json_and_wrong_content_type_are_told_apart() {
        assert!(matches!(
            parse(r#"{"to":"#),
            Err(ApiError::MalformedJson(_))
        ));
        let mut plain = HeaderMap::new();
        plain.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let body = Ok(Bytes::from_static(b"{}"));
        assert!(matches!(
            parse_create::<CreateBody>(&plain, body, 1024),
            Err(ApiError::UnsupportedMediaType)
        ));
    }

    #[test]
    fn a_body_without_a_content_type_is_read_as_json() {
        let body = r#"{"to":"a@b.c","message":"hi","type":"push"}"#;
        let parsed = parse_create::<CreateBody>(&HeaderMap::new(), Ok(Bytes::from(body)), 1024);
        let parsed = parsed.unwrap();
        assert_eq!(parsed.channel, Channel::Push);
    }

    #[test]
    fn idempotency_keys_are_checked() {
        let mut headers = HeaderMap::new();
        assert_eq!(idempotency_key(&headers).unwrap(), None);
        headers.insert("idempotency-key", HeaderValue::from_static("order-42"));
        assert_eq!(idempotency_key(&headers).unwrap(), Some("order-42"));
        headers.insert("idempotency-key", HeaderValue::from_static("has space"));
        assert!(idempotency_key(&headers).is_err());
        headers.insert("idempotency-key", HeaderValue::from_static("order-42"));
        headers.append("idempotency-key", HeaderValue::from_static("order-42"));
        assert!(matches!(
            idempotency_key(&headers),
            Err(ApiError::RepeatedIdempotencyKey)
        ));
    }
}
