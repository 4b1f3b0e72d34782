//! The image's commands, run against the binary the Dockerfile builds.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::compose::{command_words, compose, service};
use crate::dockerfile::{args_of, exec_form, healthcheck_command, runtime_stage};

fn herald(args: &[&str]) -> ExitStatus {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn herald");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait for herald") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("herald {args:?} did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A one-connection HTTP server answering `status`; returns its port.
fn one_shot_server(status: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut request = Vec::new();
            let mut buffer = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            let body = r#"{"status":"ok"}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// The Dockerfile's healthcheck arguments with the URL pointed at `url`.
fn healthcheck_args_for(url: &str) -> Vec<String> {
    healthcheck_command()
        .into_iter()
        .skip(1)
        .map(|w| {
            if w.starts_with("http://") {
                url.to_string()
            } else {
                w
            }
        })
        .collect()
}

#[test]
fn dockerfile_healthcheck_command_exits_0_when_healthy_and_1_otherwise() {
    let healthy = one_shot_server("200 OK");
    let args = healthcheck_args_for(&format!("http://127.0.0.1:{healthy}/health"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(
        herald(&args).code(),
        Some(0),
        "herald {args:?} against a 200"
    );

    let unhealthy = one_shot_server("503 Service Unavailable");
    let args = healthcheck_args_for(&format!("http://127.0.0.1:{unhealthy}/health"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(
        herald(&args).code(),
        Some(1),
        "herald {args:?} against a 503"
    );

    // Bound but not listening: connections are refused, and the port stays
    // ours (a port merely released could be taken by another test meanwhile).
    let reserved = tokio::net::TcpSocket::new_v4().expect("a socket");
    reserved.bind(([127, 0, 0, 1], 0).into()).expect("bind");
    let closed = reserved.local_addr().expect("local addr").port();
    let args = healthcheck_args_for(&format!("http://127.0.0.1:{closed}/health"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(
        herald(&args).code(),
        Some(1),
        "herald {args:?} with nothing listening"
    );
}

#[test]
fn image_and_compose_commands_are_real_herald_subcommands() {
    let cmd = exec_form(args_of(&runtime_stage(), "CMD")[0], "CMD");
    let compose = compose();
    let provider = command_words(service(&compose, "provider"));
    // The scale profile's nodes: every flag they pass must be one `serve` takes.
    let nodes =
        ["herald-1", "herald-2", "herald-3"].map(|node| command_words(service(&compose, node)));
    for words in [cmd, provider].into_iter().chain(nodes) {
        let mut args: Vec<&str> = words.iter().map(String::as_str).collect();
        args.push("--help");
        assert!(
            herald(&args).success(),
            "`herald {}` is not a command",
            args.join(" ")
        );
    }
}
