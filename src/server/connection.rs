//! One client connection, from accept to close: hyper's HTTP/1 protocol over
//! a [`WatchedIo`], the router behind a service that marks when a handler
//! runs and times the request body, and a watchdog that closes the connection
//! when a deadline passes, when the table evicts it, or (gracefully) on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use super::body::TimedBody;
use super::io::{ProtocolErrorBody, WatchedIo};
use super::table::{Connection, Entry, Timeouts};

/// Largest request head (request line and headers), in bytes; a larger one
/// gets `431`. With the read buffer held to the same size, it bounds what a
/// slow client can make the server hold: hyper's default buffer grows to
/// about 400 KiB a connection. (nginx allows 32 KiB of headers too.)
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// What every connection shares.
pub struct Shared {
    pub router: Router,
    pub timeouts: Timeouts,
    pub body_read_timeout: Duration,
    pub protocol_error_body: ProtocolErrorBody,
    pub http: http1::Builder,
}

impl Shared {
    pub fn http1() -> http1::Builder {
        let mut http = http1::Builder::new();
        // No hyper timer: the header timeout is the watchdog's (below), which
        // tells a request's headers from the wait between two requests.
        http.max_buf_size(MAX_HEAD_BYTES)
            .max_header_size(MAX_HEAD_BYTES);
        http
    }
}

/// Serves one connection until it closes, a deadline passes, it is evicted,
/// or, after `shutdown`, its request in progress is answered.
pub async fn serve(
    stream: TcpStream,
    entry: Entry,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let connection = entry.connection.clone();
    let io = WatchedIo::new(stream, connection.clone(), shared.protocol_error_body);
    let service = RouterService {
        router: shared.router.clone(),
        connection: connection.clone(),
        body_read_timeout: shared.body_read_timeout,
    };
    let conn = shared.http.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    // A token of its own: every connection polling the shared one would
    // contend for its lock on each wake-up.
    let shutdown = shutdown.child_token();
    let mut draining = false;
    loop {
        let check = connection.next_check(&shared.timeouts);
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(error) = served {
                    tracing::debug!(%error, "connection ended with an error");
                }
                break;
            }
            () = tokio::time::sleep_until(check) => {
                if let Some(expiry) = connection.expired(&shared.timeouts) {
                    tracing::debug!(?expiry, "closing a connection past its deadline");
                    break;
                }
            }
            () = connection.evicted() => {
                tracing::debug!("closing the least active connection to make room");
                break;
            }
            () = shutdown.cancelled(), if !draining => {
                // Finishes the request in progress, if any, then closes.
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
    drop(entry);
}

/// The router, as hyper calls it for each request of one connection.
struct RouterService {
    router: Router,
    connection: Arc<Connection>,
    body_read_timeout: Duration,
}

impl hyper::service::Service<hyper::Request<Incoming>> for RouterService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let in_handler = self.connection.enter_handler();
        let timeout = self.body_read_timeout;
        let request: Request = request.map(|body| Body::new(TimedBody::new(body, timeout)));
        let mut router = self.router.clone();
        Box::pin(async move {
            let response = router.call(request).await;
            drop(in_handler);
            response
        })
    }
}
