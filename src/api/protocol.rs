//! The API's answers for what the HTTP server decides by itself, before any
//! handler runs: the JSON bodies that replace hyper's own `400`/`414`/`431`,
//! the refusal of a connection past the cap, and the headers some errors
//! carry (`WWW-Authenticate`, `Retry-After`, `Connection: close`).

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, header};

use super::error::ApiError;
use crate::server::MAX_HEAD_BYTES;

/// How long a client refused for the connection cap should wait.
const CONNECTIONS_RETRY_AFTER_SECS: u64 = 1;

/// The JSON body answering hyper's own answer of `status`, if it has one.
pub fn protocol_error_body(status: u16) -> Option<String> {
    let error = match status {
        400 => ApiError::MalformedRequest,
        414 => ApiError::UriTooLong,
        431 => ApiError::HeadersTooLarge(MAX_HEAD_BYTES),
        _ => return None,
    };
    serde_json::to_string(&error.body()).ok()
}

/// The whole response to a connection refused at the cap, ready to write.
pub fn connection_refusal() -> Bytes {
    let error = ApiError::TooManyConnections;
    let body = serde_json::to_string(&error.body()).unwrap_or_default();
    let status = error.status();
    Bytes::from(format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: {CONNECTIONS_RETRY_AFTER_SECS}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default(),
        body.len()
    ))
}

/// The headers an error answer carries besides its body.
pub fn add_headers(error: &ApiError, headers: &mut HeaderMap) {
    match error {
        ApiError::Unauthorized => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        // The rest of the body may still be on its way: this connection is done.
        ApiError::BodyTimeout(_) => {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_errors_have_json_bodies() {
        for (status, code) in [
            (400, "malformed_request"),
            (414, "uri_too_long"),
            (431, "headers_too_large"),
        ] {
            let body: serde_json::Value =
                serde_json::from_str(&protocol_error_body(status).unwrap()).unwrap();
            assert_eq!(body["error"]["code"], code);
        }
        assert_eq!(protocol_error_body(500), None);
    }

    #[test]
    fn the_refusal_is_a_complete_response() {
        let refusal = String::from_utf8(connection_refusal().to_vec()).unwrap();
        assert!(refusal.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        let (head, body) = refusal.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains("retry-after: 1"));
        assert!(body.contains("too_many_connections"));
    }
}
