//! Herald as a child process: always started with the drill's flags on the
//! same loopback port and data directory, killed with SIGKILL, started again.
//! A cluster is one launcher per node.

use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use crate::failure::{Deadline, DrillError};

/// Flags that keep Herald's pacing and retries out of the way: the drill is
/// about recovery, so the provider and the backoff must not be the bottleneck.
const FAST_FLAGS: [&str; 8] = [
    "--rate-per-sec",
    "2000",
    "--rate-burst",
    "100",
    "--retry-base-ms",
    "50",
    "--retry-max-delay-ms",
    "1000",
];
const READY_POLL: Duration = Duration::from_millis(5);

/// How to start Herald, identically every time.
pub struct Launcher {
    bin: PathBuf,
    listen: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
    provider_url: String,
    max_in_flight: usize,
    /// The engine's flags and this node's instance id.
    node_flags: Vec<String>,
}

/// `GET /ready`'s body.
#[derive(Deserialize)]
pub struct Readiness {
    pub pending: u64,
}

impl Launcher {
    /// A launcher on a loopback port free right now, kept for every restart.
    pub fn new(
        bin: PathBuf,
        data_dir: PathBuf,
        log: PathBuf,
        provider_url: String,
        max_in_flight: usize,
        node_flags: Vec<String>,
    ) -> std::io::Result<Self> {
        let listen = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?;
        Ok(Self {
            bin,
            listen,
            data_dir,
            log,
            provider_url,
            max_in_flight,
            node_flags,
        })
    }

    /// Herald's base URL, the same across restarts.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.listen)
    }

    pub fn start(&self) -> Result<HeraldProcess, DrillError> {
        let spawn_error = |source| DrillError::Spawn {
            bin: self.bin.clone(),
            source,
        };
        let log = self.open_log().map_err(spawn_error)?;
        let child = Command::new(&self.bin)
            .args(["serve", "--listen", &self.listen.to_string()])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--provider-url", &self.provider_url])
            .args(["--max-in-flight", &self.max_in_flight.to_string()])
            .args(FAST_FLAGS)
            .args(&self.node_flags)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(spawn_error)?)
            .stderr(log)
            .spawn()
            .map_err(spawn_error)?;
        Ok(HeraldProcess {
            child,
            started: Instant::now(),
            log: self.log.clone(),
        })
    }

    /// Every run appends to one log, so a failed drill keeps the whole story.
    fn open_log(&self) -> std::io::Result<File> {
        OpenOptions::new().create(true).append(true).open(&self.log)
    }

    /// Herald's readiness, or `None` while it does not answer 200.
    pub async fn readiness(&self, http: &reqwest::Client) -> Option<Readiness> {
        let response = http
            .get(format!("{}/ready", self.base_url()))
            .send()
            .await
            .ok()?;
        if response.status() != 200 {
            return None;
        }
        response.json().await.ok()
    }
}

/// A running Herald; dropping it kills it, so no drill leaves one behind.
pub struct HeraldProcess {
    child: Child,
    started: Instant,
    log: PathBuf,
}

impl HeraldProcess {
    /// Waits for the first 200 on `/ready`; returns how long that took from the start.
    pub async fn wait_ready(
        &mut self,
        launcher: &Launcher,
        http: &reqwest::Client,
        deadline: Deadline,
    ) -> Result<Duration, DrillError> {
        loop {
            if launcher.readiness(http).await.is_some() {
                return Ok(self.started.elapsed());
            }
            self.check_alive()?;
            deadline.check()?;
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// SIGKILL, then reaps the process.
    pub fn kill(&mut self) -> Result<(), DrillError> {
        self.check_alive()?;
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// An error if Herald has exited, which it must never do by itself.
    fn check_alive(&mut self) -> Result<(), DrillError> {
        match self.child.try_wait()? {
            Some(status) => Err(DrillError::HeraldExited {
                status,
                log: self.log.clone(),
            }),
            None => Ok(()),
        }
    }
}

impl Drop for HeraldProcess {
    fn drop(&mut self) {
        // Both fail only for a process already reaped, which is what we want anyway.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
