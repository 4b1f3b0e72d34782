//! After the load: wait for Herald's outbox to drain, then read back every
//! acknowledged request and sort them by what became of them.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use crate::child::Launcher;
use crate::failure::{Deadline, DrillError};

const DRAIN_POLL: Duration = Duration::from_millis(200);
/// Longer than a provider outage plus the breaker's cooldown, when the count
/// rightly stands still.
const STANDSTILL: Duration = Duration::from_secs(15);
/// How long to wait before reading requests that were still on their way again.
const STUCK_RECHECK: Duration = Duration::from_secs(1);
const READ_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// What became of one acknowledged request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    Sent,
    Failed,
    Queued,
    Processing,
    /// `404`: Herald acknowledged it, then forgot it.
    Lost,
}

impl Found {
    fn is_stuck(self) -> bool {
        matches!(self, Found::Queued | Found::Processing)
    }
}

/// `GET /v1/requests/{id}`'s body, as far as the drill reads it.
#[derive(Deserialize)]
struct RequestStatus {
    status: String,
}

/// What became of every acknowledged request.
pub struct Audit {
    findings: Vec<Found>,
    /// `/ready`'s count once every request was final (or the deadline passed);
    /// `None` if it did not answer.
    pub pending_after_drain: Option<u64>,
}

impl Audit {
    pub fn count(&self, found: Found) -> usize {
        self.findings.iter().filter(|f| **f == found).count()
    }

    pub fn stuck(&self) -> usize {
        self.findings.iter().filter(|f| f.is_stuck()).count()
    }

    /// The ids Herald reports `sent`, given the ids in the order audited.
    pub fn sent_ids<'a>(&self, ids: &'a [String]) -> impl Iterator<Item = &'a String> {
        ids.iter()
            .zip(&self.findings)
            .filter(|(_, found)| **found == Found::Sent)
            .map(|(id, _)| id)
    }
}

/// Waits for the outbox to drain, then reads every acknowledged request back;
/// those still queued or processing are read again (after another wait) until
/// none is or the deadline passes. Ends with what `/ready` says is pending.
pub async fn drain_and_audit(
    launcher: &Launcher,
    http: &reqwest::Client,
    ids: &[String],
    workers: usize,
    deadline: Deadline,
) -> Result<Audit, DrillError> {
    let reader = Arc::new(Reader {
        http: http.clone(),
        base_url: launcher.base_url(),
        deadline,
    });
    wait_for_drain(launcher, http, deadline).await;
    let mut findings = reader.read_all(ids.to_vec(), workers).await?;
    loop {
        let stuck: Vec<usize> = (0..ids.len()).filter(|&i| findings[i].is_stuck()).collect();
        if stuck.is_empty() || deadline.passed() {
            break;
        }
        tokio::time::sleep(STUCK_RECHECK).await;
        wait_for_drain(launcher, http, deadline).await;
        let again = stuck.iter().map(|&i| ids[i].clone()).collect();
        let reread = reader.read_all(again, workers).await?;
        for (i, found) in stuck.into_iter().zip(reread) {
            findings[i] = found;
        }
    }
    let pending_after_drain = launcher.readiness(http).await.map(|ready| ready.pending);
    Ok(Audit {
        findings,
        pending_after_drain,
    })
}

/// Polls `/ready` until it reports nothing pending, or the count has stood
/// still for `STANDSTILL` (then only reading the requests tells whether work
/// is left: a count that is wrong would otherwise hold the drill until the
/// deadline), or the deadline passes.
async fn wait_for_drain(launcher: &Launcher, http: &reqwest::Client, deadline: Deadline) {
    let mut last_seen: Option<(u64, Instant)> = None;
    while !deadline.passed() {
        if let Some(ready) = launcher.readiness(http).await {
            if ready.pending == 0 {
                return;
            }
            match last_seen {
                Some((pending, since)) if pending == ready.pending => {
                    if since.elapsed() >= STANDSTILL {
                        return;
                    }
                }
                _ => last_seen = Some((ready.pending, Instant::now())),
            }
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// Reads request statuses from Herald.
struct Reader {
    http: reqwest::Client,
    base_url: String,
    deadline: Deadline,
}

impl Reader {
    /// The findings for `ids`, in their order, read by `workers` tasks at once.
    async fn read_all(
        self: &Arc<Self>,
        ids: Vec<String>,
        workers: usize,
    ) -> Result<Vec<Found>, DrillError> {
        let share = ids.len().div_ceil(workers).max(1);
        let tasks: Vec<_> = ids
            .chunks(share)
            .map(|chunk| {
                let (reader, chunk) = (self.clone(), chunk.to_vec());
                tokio::spawn(async move { reader.read_each(&chunk).await })
            })
            .collect();
        let mut findings = Vec::with_capacity(ids.len());
        for task in tasks {
            findings.extend(task.await??);
        }
        Ok(findings)
    }

    async fn read_each(&self, ids: &[String]) -> Result<Vec<Found>, DrillError> {
        let mut findings = Vec::with_capacity(ids.len());
        for id in ids {
            findings.push(self.read(id).await?);
        }
        Ok(findings)
    }

    /// One request's status; a failed read is tried again until the deadline.
    async fn read(&self, id: &str) -> Result<Found, DrillError> {
        let url = format!("{}/v1/requests/{id}", self.base_url);
        loop {
            if let Ok(response) = self.http.get(&url).send().await {
                match response.status().as_u16() {
                    404 => return Ok(Found::Lost),
                    200 => {
                        if let Ok(body) = response.json::<RequestStatus>().await {
                            return parse_status(&body.status);
                        }
                    }
                    _ => {}
                }
            }
            self.deadline.check()?;
            tokio::time::sleep(READ_RETRY_PAUSE).await;
        }
    }
}

fn parse_status(status: &str) -> Result<Found, DrillError> {
    match status {
        "sent" => Ok(Found::Sent),
        "failed" => Ok(Found::Failed),
        "queued" => Ok(Found::Queued),
        "processing" => Ok(Found::Processing),
        other => Err(DrillError::Refused {
            what: "a status read",
            status: 200,
            body: format!("unknown status `{other}`"),
        }),
    }
}
