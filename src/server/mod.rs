//! The HTTP server under the API: accepts connections, holds each to its
//! timeouts (header read, body read, idle), keeps their number under a cap
//! well below the descriptor limit, and shuts down gracefully.
//!
//! `axum::serve` has none of these limits: a client sending its headers
//! slowly, a body that never ends or an idle keep-alive stayed open for ever,
//! and near the descriptor limit `accept` failed once a second while new
//! clients hung.

mod body;
mod connection;
mod fd_limit;
mod io;
mod table;

use std::io::ErrorKind;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use body::{BodyTimedOut, body_timeout_in};
pub use connection::MAX_HEAD_BYTES;
pub use io::ProtocolErrorBody;
use table::{Admission, ConnectionTable, Timeouts};

/// The server's limits.
#[derive(Clone, Copy, Debug)]
pub struct ServerSettings {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// Open connections at most (lowered to fit the descriptor limit).
    pub max_connections: usize,
}

/// How long to pause when `accept` fails for want of a resource (descriptors,
/// memory): long enough not to spin, short enough that a waiting client is
/// not left hanging (hyper-util and axum pause a whole second).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// How often a failing `accept` is logged at most.
const ACCEPT_WARNING_EVERY: Duration = Duration::from_secs(5);

/// Serves `router` on `listener` until `shutdown`; then stops accepting, lets
/// every connection finish the request it is in, and returns once all are
/// closed. Dropping the returned future closes every connection at once.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: ServerSettings,
    answers: Answers,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let fd_limit = fd_limit::raise_to_hard();
    let cap = fd_limit::connection_cap(settings.max_connections, fd_limit);
    if cap < settings.max_connections {
        tracing::warn!(
            configured = settings.max_connections,
            cap,
            fd_limit,
            "the open-file limit leaves room for fewer connections than --max-connections"
        );
    }
    tracing::info!(max_connections = cap, fd_limit, "accepting connections");
    let table = ConnectionTable::new(cap);
    let shared = Arc::new(connection::Shared {
        router,
        timeouts: Timeouts {
            header_read: settings.header_read_timeout,
            idle: settings.idle_timeout,
        },
        body_read_timeout: settings.body_read_timeout,
        protocol_error_body: answers.protocol_error_body,
        http: connection::Shared::http1(),
    });
    let mut connections = JoinSet::new();
    let mut last_warning: Option<Instant> = None;
    let mut memory = MemoryUpkeep::default();
    let mut upkeep = tokio::time::interval(MEMORY_UPKEEP_EVERY);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = upkeep.tick() => memory.after_count(table.open_count()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match table.admit() {
                    Admission::Open(entry) => {
                        let task = connection::serve(stream, entry, shared.clone(), shutdown.clone());
                        connections.spawn(task);
                    }
                    Admission::Full => refuse(stream, &answers.refusal),
                },
                Err(error) if is_resource_exhaustion(&error) => {
                    // The backlog keeps the client; a freed descriptor takes it next.
                    let shed = table.shed_one();
                    if last_warning.is_none_or(|at| at.elapsed() >= ACCEPT_WARNING_EVERY) {
                        tracing::warn!(%error, shed, open = table.open_count(), "accept failed for want of resources");
                        last_warning = Some(Instant::now());
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                // The connection went before it was accepted (reset, aborted): the next one.
                Err(error) => tracing::debug!(%error, "accept failed"),
            },
        }
    }
    drop(listener);
    tracing::info!(
        open = table.open_count(),
        "stopped accepting; open connections finish their request"
    );
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// The answers the server writes by itself, in the API's JSON.
#[derive(Clone)]
pub struct Answers {
    /// The whole HTTP response refusing a connection past the cap.
    pub refusal: Bytes,
    pub protocol_error_body: ProtocolErrorBody,
}

/// Answers a connection the cap leaves no room for, without waiting: the
/// answer fits in a fresh socket's send buffer, or is not sent.
fn refuse(stream: TcpStream, refusal: &[u8]) {
    match stream.try_write(refusal) {
        Ok(_) => tracing::debug!("connection refused: at the cap, every connection in a handler"),
        Err(error) => tracing::debug!(%error, "connection refused, unanswered"),
    }
}

/// How often the open connections are counted for [`MemoryUpkeep`].
const MEMORY_UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Connections that must have closed since the peak before freed memory is
/// handed back: a burst, not the ordinary coming and going of clients.
const CLOSED_BEFORE_RELEASE: usize = 256;

/// Hands memory back to the kernel once a burst of connections has closed
/// (see [`crate::allocator::release_free_memory`]).
#[derive(Default)]
struct MemoryUpkeep {
    peak: usize,
}

impl MemoryUpkeep {
    fn after_count(&mut self, open: usize) {
        if self.peak.saturating_sub(open) >= CLOSED_BEFORE_RELEASE {
            tracing::debug!(
                peak = self.peak,
                open,
                "connections closed: releasing free memory"
            );
            tokio::task::spawn_blocking(crate::allocator::release_free_memory);
            self.peak = open;
        }
        self.peak = self.peak.max(open);
    }
}

/// `accept` errors that say the process or the system is out of something,
/// not that one connection failed.
fn is_resource_exhaustion(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    ) || error.kind() == ErrorKind::OutOfMemory
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_is_released_only_after_a_burst_of_connections_closed() {
        let mut memory = MemoryUpkeep::default();
        memory.after_count(1_000);
        memory.after_count(1_000 - CLOSED_BEFORE_RELEASE + 1);
        assert_eq!(memory.peak, 1_000, "the ordinary coming and going");
        memory.after_count(1_000 - CLOSED_BEFORE_RELEASE);
        assert_eq!(
            memory.peak,
            1_000 - CLOSED_BEFORE_RELEASE,
            "released; counted anew"
        );
        memory.after_count(2_000);
        assert_eq!(memory.peak, 2_000);
    }
}
