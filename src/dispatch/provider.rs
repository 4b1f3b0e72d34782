//! The provider's HTTP client: one pooled reqwest client, and the rules that
//! turn an answer into "delivered", "try again" or "give up".

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, LOCATION, RETRY_AFTER};
use serde::{Deserialize, Serialize};

use crate::domain::{Notification, RequestId};
use crate::secret::Secret;

/// How much of an error answer's body goes into the request's history.
const ERROR_BODY_LIMIT: usize = 512;

#[derive(Clone, Debug)]
pub struct ProviderSettings {
    /// Base URL; calls go to `{base_url}/v1/notify`.
    pub base_url: String,
    pub api_key: Secret,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

/// What one call came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    /// `2xx`: the provider took it.
    Delivered {
        status: u16,
        provider_id: Option<String>,
    },
    /// Worth another try: `408`, `429`, `5xx`, a timeout or an unreachable
    /// provider, and `3xx`/`401`/`403`/`404`, which refuse Herald's key or
    /// URL, not the request: a configuration fault, fixed for every request at once.
    Transient {
        status: Option<u16>,
        retry_after: Option<Duration>,
        error: String,
    },
    /// Any other `4xx`: trying again would get the same answer.
    Rejected { status: u16, error: String },
}

impl CallOutcome {
    /// Whether this says the provider itself is in trouble (not merely busy or
    /// unhappy with one request): what the circuit breaker counts.
    pub fn is_provider_failure(&self) -> bool {
        match self {
            CallOutcome::Transient { status, .. } => {
                status.is_none_or(|s| s >= 500 || refuses_herald(s))
            }
            _ => false,
        }
    }

    /// Whether the answer is about the provider's state or Herald's
    /// configuration, not the request: `429`, `3xx`, `401`, `403`, `404`. Such an
    /// attempt spends no retry budget, only age.
    pub fn spends_no_attempt(&self) -> bool {
        match self {
            CallOutcome::Transient {
                status: Some(status),
                ..
            } => *status == 429 || refuses_herald(*status),
            _ => false,
        }
    }

    pub fn is_throttled(&self) -> bool {
        matches!(
            self,
            CallOutcome::Transient {
                status: Some(429),
                ..
            }
        )
    }
}

#[derive(Serialize)]
struct NotifyBody<'a> {
    to: &'a str,
    message: &'a str,
    #[serde(rename = "type")]
    channel: &'a str,
}

#[derive(Deserialize)]
struct NotifyAnswer {
    provider_id: Option<String>,
}

pub struct ProviderClient {
    http: reqwest::Client,
    notify_url: String,
    api_key: Secret,
}

impl ProviderClient {
    pub fn new(settings: &ProviderSettings) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            // A redirect would carry `X-API-Key` and the notification to
            // wherever the provider points: only `--provider-url` gets them.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            http,
            notify_url: format!("{}/v1/notify", settings.base_url),
            api_key: settings.api_key.clone(),
        })
    }

    /// Sends one notification. The request id travels as `Idempotency-Key` (so a
    /// provider that de-duplicates can) and as `trace_id`.
    pub async fn send(&self, id: RequestId, notification: &Notification) -> CallOutcome {
        let id = id.to_string();
        let body = NotifyBody {
            to: &notification.to,
            message: &notification.message,
            channel: notification.channel.as_str(),
        };
        let sent = self
            .http
            .post(&self.notify_url)
            .query(&[
                ("priority", notification.priority.as_str()),
                ("trace_id", id.as_str()),
            ])
            .header("X-API-Key", self.api_key.expose())
            .header("Idempotency-Key", &id)
            .json(&body)
            .send()
            .await;
        match sent {
            Ok(response) => classify_response(response).await,
            Err(error) => CallOutcome::Transient {
                status: None,
                retry_after: None,
                error: describe_transport_error(&error),
            },
        }
    }
}

async fn classify_response(response: reqwest::Response) -> CallOutcome {
    let status = response.status();
    let retry_after = parse_retry_after(response.headers(), SystemTime::now());
    if status.is_success() {
        // A 2xx is a delivery even when its body is not what we expect.
        let provider_id = response
            .json::<NotifyAnswer>()
            .await
            .ok()
            .and_then(|a| a.provider_id);
        return CallOutcome::Delivered {
            status: status.as_u16(),
            provider_id,
        };
    }
    if status.is_redirection() {
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("(none)");
        tracing::error!(
            status = status.as_u16(),
            location,
            "the provider answered with a redirect, which Herald never follows (it would send the key elsewhere): check PROVIDER_URL; work stays queued"
        );
    }
    let error = error_text(status, response.text().await.unwrap_or_default());
    if matches!(status.as_u16(), 401 | 403 | 404) {
        tracing::error!(%error, "the provider refuses Herald's key or URL: check PROVIDER_API_KEY and PROVIDER_URL; work stays queued");
    }
    if is_transient(status) {
        CallOutcome::Transient {
            status: Some(status.as_u16()),
            retry_after,
            error,
        }
    } else {
        CallOutcome::Rejected {
            status: status.as_u16(),
            error,
        }
    }
}

fn is_transient(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
        || refuses_herald(status.as_u16())
}

/// A wrong `X-API-Key` (`401`), a missing one (`403`), a wrong
/// `PROVIDER_URL` (`404`) or one that has moved (`3xx`, never followed):
/// failing every request for it would empty the outbox into `failed` at the
/// provider's pace; the breaker holds the work instead, until the
/// configuration is fixed.
fn refuses_herald(status: u16) -> bool {
    matches!(status, 300..=399 | 401 | 403 | 404)
}

fn error_text(status: StatusCode, body: String) -> String {
    let mut body = body.trim().to_string();
    if body.len() > ERROR_BODY_LIMIT {
        let cut = (0..=ERROR_BODY_LIMIT)
            .rev()
            .find(|&i| body.is_char_boundary(i))
            .unwrap_or(0);
        body.truncate(cut);
        body.push('…');
    }
    format!("HTTP {}: {body}", status.as_u16())
}

fn describe_transport_error(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timeout: the provider did not answer in time".to_string()
    } else if error.is_connect() {
        "connect: the provider is unreachable".to_string()
    } else {
        format!("transport: {error}")
    }
}

/// The longest `Retry-After` honoured. It pauses every call, so a larger value
/// (a day, or a number that would overflow a clock) is taken as this much.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// `Retry-After` as seconds or as an HTTP date, at most [`MAX_RETRY_AFTER`].
fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let date = httpdate::parse_http_date(value).ok()?;
            date.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(retry_after: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_str(retry_after).unwrap());
        headers
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            parse_retry_after(&headers("3"), now),
            Some(Duration::from_secs(3))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(20));
        assert_eq!(
            parse_retry_after(&headers(&later), now),
            Some(Duration::from_secs(20))
        );
        assert_eq!(parse_retry_after(&headers("soon"), now), None);
        let forever = u64::MAX.to_string();
        assert_eq!(
            parse_retry_after(&headers(&forever), now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse_retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn transient_statuses_are_408_429_5xx_and_a_refused_key_or_url() {
        for code in [
            301, 302, 307, 308, 401, 403, 404, 408, 429, 500, 502, 503, 504,
        ] {
            assert!(is_transient(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [400, 409, 413, 422] {
            assert!(!is_transient(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }

    #[test]
    fn only_trouble_with_the_provider_itself_counts_against_the_breaker() {
        let transient = |status| CallOutcome::Transient {
            status,
            retry_after: None,
            error: String::new(),
        };
        assert!(transient(None).is_provider_failure());
        assert!(transient(Some(503)).is_provider_failure());
        assert!(transient(Some(401)).is_provider_failure());
        assert!(!transient(Some(408)).is_provider_failure());
        assert!(!transient(Some(429)).is_provider_failure());
        assert!(transient(Some(429)).is_throttled());
    }

    #[test]
    fn long_error_bodies_are_cut_on_a_char_boundary() {
        let text = error_text(StatusCode::BAD_REQUEST, "é".repeat(600));
        assert!(text.starts_with("HTTP 400: é"));
        assert!(text.ends_with('…'));
        assert!(text.len() < 600);
    }
}
