//! The real `herald` binary as a child process, for the tests that need a
//! process: kill -9, signals, logs as operators see them.
//!
//! Herald binds `127.0.0.1:0` itself and the helper reads the bound address
//! from its `listening` log line, so no test frees a port for a child to bind
//! later (another process could take it meanwhile). Dropping the handle kills
//! the child, so a failed test leaves no `herald` behind.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::oneshot;

use super::{SETTLE_TIMEOUT, eventually};

/// The log filter [`HeraldProcess::start`] runs with: quiet, except the
/// `listening` line the address is read from.
const QUIET: &str = "warn,herald::app=info";

pub struct HeraldProcess {
    child: Child,
    pub address: String,
    /// Reads the log to its end; returns the lines when they were asked for.
    log_reader: Option<JoinHandle<Vec<String>>>,
}

impl HeraldProcess {
    /// Starts `herald serve` on a free port with fast pacing; `extra` flags come last.
    pub async fn start(data_dir: impl AsRef<Path>, provider_url: &str, extra: &[&str]) -> Self {
        match Self::spawn(data_dir.as_ref(), provider_url, extra, QUIET, false, |_| {}).await {
            Ok(herald) => herald,
            Err(refused) => panic!("herald refused to start: {refused:?}"),
        }
    }

    /// As [`HeraldProcess::start`], for a start that may be refused: then
    /// the exit status and the last line Herald wrote to standard error.
    pub async fn try_start(
        data_dir: impl AsRef<Path>,
        provider_url: &str,
        extra: &[&str],
    ) -> Result<Self, Refusal> {
        Self::spawn(data_dir.as_ref(), provider_url, extra, QUIET, false, |_| {}).await
    }

    /// As [`HeraldProcess::start`], logging at `filter` (`RUST_LOG`, which
    /// must let `herald::app`'s info through) and keeping every log line for
    /// [`HeraldProcess::terminate_with_logs`].
    pub async fn start_logging(
        data_dir: impl AsRef<Path>,
        provider_url: &str,
        extra: &[&str],
        filter: &str,
    ) -> Self {
        let started = Self::spawn(data_dir.as_ref(), provider_url, extra, filter, true, |_| {});
        let started = started.await;
        started.unwrap_or_else(|refused| panic!("herald refused to start: {refused:?}"))
    }

    /// As [`HeraldProcess::start`], with the open-file limit (soft and hard)
    /// at `limit`: Herald cannot raise it.
    pub async fn start_with_open_file_limit(
        data_dir: impl AsRef<Path>,
        provider_url: &str,
        extra: &[&str],
        limit: u64,
    ) -> Self {
        use std::os::unix::process::CommandExt;
        let set_limit = move |command: &mut Command| {
            let limit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            // SAFETY: setrlimit is async-signal-safe and touches only the child.
            let in_child = move || match unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            };
            // SAFETY: the closure calls only setrlimit between fork and exec.
            unsafe { command.pre_exec(in_child) };
        };
        let started = Self::spawn(
            data_dir.as_ref(),
            provider_url,
            extra,
            QUIET,
            false,
            set_limit,
        );
        started
            .await
            .unwrap_or_else(|refused| panic!("herald refused to start: {refused:?}"))
    }

    async fn spawn(
        data_dir: &Path,
        provider_url: &str,
        extra: &[&str],
        filter: &str,
        keep_logs: bool,
        configure: impl FnOnce(&mut Command),
    ) -> Result<Self, Refusal> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
        command
            .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--provider-url", provider_url])
            .args(["--rate-per-sec", "5000", "--rate-burst", "100"])
            .args(["--retry-base-ms", "20", "--retry-max-delay-ms", "200"])
            .args(extra)
            .env("RUST_LOG", filter)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        configure(&mut command);
        let mut child = command.spawn().expect("herald starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let stderr_reader = std::thread::spawn(move || last_line(stderr));
        let (address, bound) = oneshot::channel();
        let log_reader = std::thread::spawn(move || read_log(stdout, address, keep_logs));
        // Owned before the first wait, so a panic below kills the child too.
        let mut herald = Self {
            child,
            address: String::new(),
            log_reader: Some(log_reader),
        };
        let bound = tokio::time::timeout(SETTLE_TIMEOUT, bound)
            .await
            .expect("herald never logged the address it listens on");
        let Ok(bound) = bound else {
            // The log ended before the `listening` line: Herald stopped.
            let status = herald.child.wait().expect("herald reaped");
            let last_line = stderr_reader.join().unwrap_or_default();
            return Err(Refusal { status, last_line });
        };
        herald.address = format!("http://{bound}");
        Ok(herald)
    }

    /// Polls `/ready` until it answers 200; returns its body.
    pub async fn wait_ready(&self, client: &reqwest::Client) -> Value {
        let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        loop {
            let answer = client.get(format!("{}/ready", self.address)).send().await;
            if let Ok(response) = answer
                && response.status() == 200
            {
                return response.json().await.unwrap();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "herald never became ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls `/ready` until it answers `503` naming `component`; its body.
    pub async fn wait_not_ready(&self, client: &reqwest::Client, component: &str) -> Value {
        let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        loop {
            let ready = client.get(format!("{}/ready", self.address)).send().await;
            if let Ok(ready) = ready
                && ready.status() == 503
            {
                let body: Value = ready.json().await.unwrap_or_default();
                if body["error"]["component"] == component {
                    return body;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/ready never said {component} is not ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates the usual test request; returns its id.
    pub async fn create(&self, client: &reqwest::Client) -> String {
        let response = self.post_create(client).await;
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        body["id"].as_str().unwrap().to_string()
    }

    /// Tries to create the usual test request; the HTTP status.
    pub async fn create_status(&self, client: &reqwest::Client) -> u16 {
        self.post_create(client).await.status().as_u16()
    }

    async fn post_create(&self, client: &reqwest::Client) -> reqwest::Response {
        client
            .post(format!("{}/v1/requests", self.address))
            .json(&super::email())
            .send()
            .await
            .unwrap()
    }

    /// Asks for delivery; returns the HTTP status.
    pub async fn process(&self, client: &reqwest::Client, id: &str) -> u16 {
        let url = format!("{}/v1/requests/{id}/process", self.address);
        client.post(url).send().await.unwrap().status().as_u16()
    }

    /// `GET /v1/requests/{id}`'s body.
    pub async fn request(&self, client: &reqwest::Client, id: &str) -> Value {
        let url = format!("{}/v1/requests/{id}", self.address);
        client.get(url).send().await.unwrap().json().await.unwrap()
    }

    /// `GET /v1/requests/{id}/events`: the request's history as the API answers it.
    pub async fn events(&self, client: &reqwest::Client, id: &str) -> Value {
        let url = format!("{}/v1/requests/{id}/events", self.address);
        client.get(url).send().await.unwrap().json().await.unwrap()
    }

    /// The kinds of the request's events, oldest first (`created`, ...).
    pub async fn event_kinds(&self, client: &reqwest::Client, id: &str) -> Vec<String> {
        let events = self.events(client, id).await;
        events["events"]
            .as_array()
            .expect("a history")
            .iter()
            .map(|e| e["event"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// The process id, for tools that attach to it (strace).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (SIGHUP, say) to the process.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety implications.
        let result = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(result, 0, "signal delivered");
    }

    /// SIGKILL, then reaps the process.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL sent");
        self.child.wait().expect("herald reaped");
    }

    /// Sends SIGTERM and waits for the process to exit. The wait is async, so
    /// a simulator on this test's runtime keeps answering the calls Herald drains.
    pub async fn terminate(self) -> ExitStatus {
        self.terminate_with_logs().await.0
    }

    /// As [`HeraldProcess::terminate`]; also returns the log lines kept since
    /// the start (none unless started by [`HeraldProcess::start_logging`]).
    pub async fn terminate_with_logs(mut self) -> (ExitStatus, Vec<String>) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety implications.
        let result = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(result, 0, "signal delivered");
        let mut exit = None;
        eventually("herald exits after SIGTERM", async || {
            exit = self.child.try_wait().expect("herald's status");
            exit.is_some()
        })
        .await;
        let lines = self.log_reader.take().map(JoinHandle::join);
        let lines = lines.unwrap_or(Ok(Vec::new())).expect("the log reader");
        (exit.expect("herald exited"), lines)
    }
}

impl Drop for HeraldProcess {
    fn drop(&mut self) {
        // Both fail only for a process already reaped, which is what we want anyway.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A start Herald refused: how it exited and what it said last on standard error.
#[derive(Debug)]
pub struct Refusal {
    pub status: ExitStatus,
    pub last_line: String,
}

/// Passes Herald's standard error through to the test's, keeping the last line.
fn last_line(stderr: impl Read) -> String {
    let mut last = String::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        eprintln!("{line}");
        last = line;
    }
    last
}

/// Reads Herald's JSON log until it ends: sends the address of the
/// `listening` line, and returns every line if `keep` says so.
fn read_log(stdout: ChildStdout, address: oneshot::Sender<String>, keep: bool) -> Vec<String> {
    let mut address = Some(address);
    let mut kept = Vec::new();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if let Some(bound) = listening_address(&line)
            && let Some(address) = address.take()
        {
            let _ = address.send(bound);
        }
        if keep {
            kept.push(line);
        }
    }
    kept
}

/// The `addr` of Herald's `listening` log line.
fn listening_address(line: &str) -> Option<String> {
    let entry: Value = serde_json::from_str(line).ok()?;
    let fields = &entry["fields"];
    if fields["message"] != "listening" {
        return None;
    }
    fields["addr"].as_str().map(str::to_string)
}
