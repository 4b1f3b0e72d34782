//! The real `herald` binary as a child process, for the tests that need a
//! process: kill -9, signals, logs as operators see them.

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use super::{SETTLE_TIMEOUT, unused_addr};

pub struct HeraldProcess {
    pub child: Child,
    pub address: String,
}

impl HeraldProcess {
    /// Starts `herald serve` on a free port with fast pacing; `extra` flags come last.
    pub fn start(data_dir: &TempDir, provider_url: &str, extra: &[&str]) -> Self {
        Self::start_logging(data_dir, provider_url, extra, "warn", Stdio::null())
    }

    /// As [`HeraldProcess::start`], logging at `filter` (`RUST_LOG`) to `stdout`.
    pub fn start_logging(
        data_dir: &TempDir,
        provider_url: &str,
        extra: &[&str],
        filter: &str,
        stdout: Stdio,
    ) -> Self {
        Self::spawn(data_dir, provider_url, extra, filter, stdout, |_| {})
    }

    /// As [`HeraldProcess::start`], with the open-file limit (soft and hard)
    /// at `limit`: Herald cannot raise it.
    pub fn start_with_open_file_limit(
        data_dir: &TempDir,
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
        Self::spawn(
            data_dir,
            provider_url,
            extra,
            "warn",
            Stdio::null(),
            set_limit,
        )
    }

    fn spawn(
        data_dir: &TempDir,
        provider_url: &str,
        extra: &[&str],
        filter: &str,
        stdout: Stdio,
        configure: impl FnOnce(&mut Command),
    ) -> Self {
        let listen = unused_addr();
        let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
        command
            .args(["serve", "--listen", &listen.to_string()])
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(["--provider-url", provider_url])
            .args(["--rate-per-sec", "5000", "--rate-burst", "100"])
            .args(["--retry-base-ms", "20", "--retry-max-delay-ms", "200"])
            .args(extra)
            .env("RUST_LOG", filter)
            .stdout(stdout)
            .stderr(Stdio::inherit());
        configure(&mut command);
        let child = command.spawn().expect("herald starts");
        Self {
            child,
            address: format!("http://{listen}"),
        }
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

    /// Creates the usual test request; returns its id.
    pub async fn create(&self, client: &reqwest::Client) -> String {
        let response = client
            .post(format!("{}/v1/requests", self.address))
            .json(&super::email())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        body["id"].as_str().unwrap().to_string()
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

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(mut self) -> ExitStatus {
        // SAFETY: kill(2) on our own child's pid has no memory-safety implications.
        let result = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(result, 0, "signal delivered");
        self.child.wait().unwrap()
    }
}
