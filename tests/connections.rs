//! Hostile clients at the socket: slow headers, a body that never ends, an
//! idle keep-alive and a flood of connections past the cap are all closed or
//! refused, while a normal client is still served; and the HTTP layer's own
//! errors answer in JSON.

mod common;

use std::time::Duration;

use common::{SETTLE_TIMEOUT, TestApp, email, fast_provider, spawn_app_with};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A timeout a test waits out, and one it never sees pass.
const SHORT_MS: u64 = 300;
const LONG_MS: u64 = 60_000;

/// Timeouts (header read, body read, idle) and the connection cap.
struct Limits(u64, u64, u64, usize);

async fn app_with(Limits(header, body, idle, cap): Limits) -> TestApp {
    spawn_app_with(fast_provider(), |config| {
        config.header_read_timeout_ms = header;
        config.body_read_timeout_ms = body;
        config.idle_timeout_ms = idle;
        config.max_connections = cap;
    })
    .await
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .expect("connected")
}

/// Reads until the server closes the connection; returns what it sent.
/// Fails the test if it is still open after [`SETTLE_TIMEOUT`].
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let read = tokio::time::timeout(SETTLE_TIMEOUT, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    });
    read.await.expect("the server closed the connection");
    String::from_utf8_lossy(&received).into_owned()
}

/// The JSON body of a raw HTTP response.
fn json_body(response: &str) -> Value {
    let (_, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {response}"))
}

#[tokio::test]
async fn headers_sent_slowly_are_cut_off_by_the_header_timeout() {
    let app = app_with(Limits(SHORT_MS, LONG_MS, LONG_MS, 64)).await;
    let mut slowloris = connect(&app).await;
    let trickle = async {
        slowloris
            .write_all(b"POST /v1/requests HTTP/1.1\r\n")
            .await?;
        // A header line now and then, for ever: the traffic never stops.
        for i in 0.. {
            tokio::time::sleep(Duration::from_millis(50)).await;
            slowloris
                .write_all(format!("x-{i}: y\r\n").as_bytes())
                .await?;
        }
        Ok::<_, std::io::Error>(())
    };
    let cut_off = tokio::time::timeout(SETTLE_TIMEOUT, trickle).await;
    assert!(
        matches!(cut_off, Ok(Err(_))),
        "the server stopped taking the headers"
    );
    assert_eq!(read_until_closed(&mut slowloris).await, "", "no answer");
    assert_eq!(app.create_ok(&email()).await.len(), 36, "others are served");
    app.stop().await;
}

#[tokio::test]
async fn a_body_that_never_ends_gets_408_and_the_connection_is_closed() {
    let app = app_with(Limits(LONG_MS, SHORT_MS, LONG_MS, 64)).await;
    let stream = connect(&app).await;
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(
            b"POST /v1/requests HTTP/1.1\r\nHost: herald\r\n\
              Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .await
        .unwrap();
    let dripping = tokio::spawn(async move {
        while writer.write_all(b"1\r\n \r\n").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(SETTLE_TIMEOUT, reader.read_to_end(&mut answer)).await;
    assert!(closed.is_ok(), "the connection was closed");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(json_body(&answer)["error"]["code"], "body_timeout");
    dripping.abort();
    assert_eq!(app.records.request_count().await.unwrap(), 0);
    app.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_by_the_idle_timeout() {
    let app = app_with(Limits(LONG_MS, LONG_MS, SHORT_MS, 64)).await;
    let mut idle = connect(&app).await;
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: herald\r\n\r\n")
        .await
        .unwrap();
    // The answer comes, then nothing: the connection waits for a next
    // request that never comes, and the idle timeout closes it.
    let received = read_until_closed(&mut idle).await;
    assert!(received.starts_with("HTTP/1.1 200"), "{received}");
    assert!(
        !received.contains("connection: close"),
        "kept alive at first"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_flood_of_idle_connections_past_the_cap_does_not_lock_out_a_client() {
    let app = app_with(Limits(LONG_MS, LONG_MS, LONG_MS, 16)).await;
    // Four times the cap, each open and silent, as long as the test runs.
    let mut flood = Vec::new();
    for _ in 0..64 {
        flood.push(connect(&app).await);
    }
    // Served now, not once the flood's timeouts (a minute) have passed.
    let id = tokio::time::timeout(SETTLE_TIMEOUT, app.create_ok(&email()))
        .await
        .expect("a normal client is served during the flood");
    assert_eq!(app.status_of(&id).await, "queued");
    // The flood made room for itself: the oldest went first.
    let evicted = read_until_closed(&mut flood[0]).await;
    assert_eq!(evicted, "", "closed without an answer");
    app.stop().await;
}

#[tokio::test]
async fn past_the_cap_with_every_connection_in_a_handler_a_newcomer_is_refused_at_once() {
    let app = app_with(Limits(LONG_MS, LONG_MS, LONG_MS, 4)).await;
    // Each holds a handler: its body is promised and never comes.
    let mut busy = Vec::new();
    for _ in 0..4 {
        let mut stream = connect(&app).await;
        stream
            .write_all(
                b"POST /v1/requests HTTP/1.1\r\nHost: herald\r\n\
                  Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
            )
            .await
            .unwrap();
        busy.push(stream);
    }
    // Once all four are in their handlers, a newcomer is told so and closed
    // (until then it displaces one still sending its headers: no answer).
    let refused = async {
        loop {
            let mut newcomer = connect(&app).await;
            let answer = read_until_closed(&mut newcomer).await;
            if !answer.is_empty() {
                return answer;
            }
        }
    };
    let answer = tokio::time::timeout(SETTLE_TIMEOUT, refused)
        .await
        .expect("a newcomer was refused");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"));
    assert_eq!(json_body(&answer)["error"]["code"], "too_many_connections");
    drop(busy);
    app.stop().await;
}

#[tokio::test]
async fn the_http_layers_own_errors_answer_in_json() {
    let app = app_with(Limits(LONG_MS, LONG_MS, LONG_MS, 64)).await;
    let too_many_headers: String = (0..200).map(|i| format!("x-{i}: y\r\n")).collect();
    let huge_header = format!("x-big: {}\r\n", "a".repeat(herald::server::MAX_HEAD_BYTES));
    let cases = [
        (
            "GET /health HTTP/1.1\r\nbad header\r\n\r\n".to_string(),
            "400",
            "malformed_request",
        ),
        (
            "G(T /health HTTP/1.1\r\n\r\n".to_string(),
            "400",
            "malformed_request",
        ),
        (
            format!("GET /health HTTP/1.1\r\n{too_many_headers}\r\n"),
            "431",
            "headers_too_large",
        ),
        (
            format!("GET /health HTTP/1.1\r\n{huge_header}\r\n"),
            "431",
            "headers_too_large",
        ),
    ];
    for (request, status, code) in cases {
        let mut stream = connect(&app).await;
        // The server may answer and close before it has read everything.
        let _ = stream.write_all(request.as_bytes()).await;
        let answer = read_until_closed(&mut stream).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{status}: {answer}"
        );
        assert!(
            answer.contains("content-type: application/json"),
            "{answer}"
        );
        assert_eq!(json_body(&answer)["error"]["code"], code, "{answer}");
    }
    app.stop().await;
}

#[tokio::test]
async fn near_the_open_file_limit_a_flood_still_leaves_room_for_a_client() {
    let provider = herald::simulator::Simulator::spawn(fast_provider())
        .await
        .unwrap();
    let data_dir = tempfile::TempDir::new().unwrap();
    let client = reqwest::Client::new();
    // 128 descriptors in all, and a cap far above them: the cap comes down to fit.
    let herald = common::child::HeraldProcess::start_with_open_file_limit(
        &data_dir,
        &provider.url(),
        &["--max-connections", "1000"],
        128,
    )
    .await;
    herald.wait_ready(&client).await;
    let address = herald.address.trim_start_matches("http://").to_string();
    let mut flood = Vec::new();
    for _ in 0..300 {
        flood.push(TcpStream::connect(&address).await.expect("connected"));
    }
    let served = tokio::time::timeout(SETTLE_TIMEOUT, herald.create(&client)).await;
    assert!(
        served.is_ok(),
        "a normal client is served past the descriptor limit"
    );
    drop(flood);
    assert!(herald.terminate().await.success());
}
