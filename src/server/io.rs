//! A connection's socket as hyper sees it: every read and write tells the
//! [`Connection`] that bytes moved, and the answers hyper writes by itself
//! (to a request it could not parse: `400`, `414`, `431`, with an empty body)
//! are replaced by the API's JSON error.
//!
//! hyper 1.x has no hook for those answers, but they are easy to tell apart:
//! they are written while a request's headers are being read, before any
//! handler saw it, and the API never answers with an empty body.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::table::Connection;

/// The body of the JSON answer that replaces hyper's own answer of a status.
pub type ProtocolErrorBody = fn(u16) -> Option<String>;

pub struct WatchedIo<T> {
    inner: T,
    connection: Arc<Connection>,
    protocol_error_body: ProtocolErrorBody,
    /// hyper's own answer, rewritten, and how much of it is written.
    replacement: Option<(Vec<u8>, usize)>,
}

impl<T> WatchedIo<T> {
    pub fn new(
        inner: T,
        connection: Arc<Connection>,
        protocol_error_body: ProtocolErrorBody,
    ) -> Self {
        Self {
            inner,
            connection,
            protocol_error_body,
            replacement: None,
        }
    }

    /// The JSON answer to write instead of `written`, if `written` is hyper's
    /// own empty-bodied answer to a request no handler saw.
    fn rewrite(&self, written: &[u8]) -> Option<Vec<u8>> {
        if !self.connection.is_reading_headers() {
            return None;
        }
        let head = std::str::from_utf8(written).ok()?;
        let status_line = head.strip_prefix("HTTP/1.1 ")?;
        let status: u16 = status_line.get(..3)?.parse().ok()?;
        if !head.contains("\r\ncontent-length: 0\r\n") || !head.ends_with("\r\n\r\n") {
            return None;
        }
        let body = (self.protocol_error_body)(status)?;
        let reason = status_line.split("\r\n").next().unwrap_or_default();
        Some(
            format!(
                "HTTP/1.1 {reason}\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.connection.on_read();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WatchedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.replacement.is_none()
            && let Some(answer) = self.rewrite(buf)
        {
            self.replacement = Some((answer, 0));
        }
        let this = &mut *self;
        let Some((answer, written)) = this.replacement.as_mut() else {
            let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
            if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
                this.connection.on_write();
            }
            return polled;
        };
        // hyper's answer is taken whole; ours goes out in its place, and
        // anything hyper writes after it (nothing, as it closes) is dropped.
        while *written < answer.len() {
            match Pin::new(&mut this.inner).poll_write(cx, &answer[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                other => return other,
            }
        }
        this.connection.on_write();
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // Only an answer no handler gave can need the rewrite: that one (rare)
        // goes through `poll_write` in one piece; every other write as it is.
        if self.replacement.is_some() || self.connection.is_reading_headers() {
            let flat: Vec<u8> = bufs.iter().flat_map(|buf| buf.iter().copied()).collect();
            return self.poll_write(cx, &flat);
        }
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.connection.on_write();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::table::{Admission, ConnectionTable, Entry};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn body(status: u16) -> Option<String> {
        (status == 431).then(|| r#"{"error":{"code":"headers_too_large"}}"#.to_string())
    }

    async fn written_through(connection: Arc<Connection>, bytes: &[u8]) -> String {
        let (client, server) = tokio::io::duplex(4096);
        let mut io = WatchedIo::new(server, connection, body);
        io.write_all(bytes).await.unwrap();
        io.shutdown().await.unwrap();
        drop(io);
        let mut received = String::new();
        let mut client = client;
        client.read_to_string(&mut received).await.unwrap();
        received
    }

    fn open() -> Entry {
        match ConnectionTable::new(4).admit() {
            Admission::Open(entry) => entry,
            Admission::Full => unreachable!("an empty table admits"),
        }
    }

    const HYPERS_431: &[u8] =
        b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";

    #[tokio::test]
    async fn hypers_own_answer_to_unparsable_headers_becomes_json() {
        let entry = open();
        let received = written_through(entry.connection.clone(), HYPERS_431).await;
        assert!(
            received.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{received}"
        );
        assert!(received.contains("content-type: application/json\r\n"));
        assert!(received.contains("connection: close\r\n"));
        assert!(received.ends_with(r#"{"error":{"code":"headers_too_large"}}"#));
    }

    #[tokio::test]
    async fn an_answer_a_handler_gave_is_left_alone() {
        let answered = open();
        drop(answered.connection.enter_handler());
        let received = written_through(answered.connection.clone(), HYPERS_431).await;
        assert_eq!(received.as_bytes(), HYPERS_431);

        let fresh = open();
        let with_body = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let received = written_through(fresh.connection.clone(), with_body).await;
        assert_eq!(received.as_bytes(), with_body);
    }
}
