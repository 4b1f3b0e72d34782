//! What stops a drill before it can judge Herald, and the phase deadlines
//! that keep every wait bounded.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::time::Instant;

/// A drill that could not run to the end. (A Herald that lost or stuck
/// requests is not this: that is a finished drill with a failing verdict.)
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// The command line asks for something the drill cannot run.
    #[error("{0}")]
    Usage(String),
    #[error("cannot start {bin}: {source}")]
    Spawn {
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error("herald exited by itself ({status}); see {log}")]
    HeraldExited { status: ExitStatus, log: PathBuf },
    #[error("{phase} did not finish within {limit:?}")]
    Timeout {
        phase: &'static str,
        limit: Duration,
    },
    #[error("herald answered {status} to {what}: {body}")]
    Refused {
        what: &'static str,
        status: u16,
        body: String,
    },
    #[error("a drill task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// When a phase must be over.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    phase: &'static str,
    limit: Duration,
    at: Instant,
}

impl Deadline {
    pub fn after(phase: &'static str, limit: Duration) -> Self {
        Self {
            phase,
            limit,
            at: Instant::now() + limit,
        }
    }

    /// A timeout error once the deadline has passed.
    pub fn check(&self) -> Result<(), DrillError> {
        if Instant::now() < self.at {
            Ok(())
        } else {
            Err(DrillError::Timeout {
                phase: self.phase,
                limit: self.limit,
            })
        }
    }

    pub fn passed(&self) -> bool {
        self.check().is_err()
    }
}
