//! The clients: each creates a request and asks for its delivery, then the
//! next, until the drill's count is used up. Like real clients they ride out
//! a dead Herald: a call cut or refused by a kill is sent again after the
//! restart (creates carry an `Idempotency-Key`, so a repeat is never a second
//! request). With several nodes, request `n` goes to node `n mod N` and each
//! repeat to the next node, as a client behind a load balancer would.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::failure::{Deadline, DrillError};

/// How long a client waits before repeating a call Herald did not take.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
const CHANNELS: [&str; 3] = ["email", "sms", "push"];
const PRIORITIES: [&str; 3] = ["high", "normal", "low"];

/// The load every client shares.
pub struct Load {
    http: reqwest::Client,
    /// One per node.
    base_urls: Vec<String>,
    requests: usize,
    next_request: AtomicUsize,
    acknowledged: AtomicUsize,
    retried: AtomicUsize,
    running_clients: AtomicUsize,
}

/// `201`'s body.
#[derive(Deserialize)]
struct Created {
    id: String,
}

impl Load {
    pub fn new(http: reqwest::Client, base_urls: Vec<String>, requests: usize) -> Self {
        Self {
            http,
            base_urls,
            requests,
            next_request: AtomicUsize::new(0),
            acknowledged: AtomicUsize::new(0),
            retried: AtomicUsize::new(0),
            running_clients: AtomicUsize::new(0),
        }
    }

    /// Creates acknowledged with a 201 so far.
    pub fn acknowledged(&self) -> usize {
        self.acknowledged.load(Ordering::SeqCst)
    }

    /// Calls sent again because Herald was down or cut them off.
    pub fn retried(&self) -> usize {
        self.retried.load(Ordering::SeqCst)
    }

    pub fn clients_running(&self) -> bool {
        self.running_clients.load(Ordering::SeqCst) > 0
    }

    /// Starts `clients` clients; each returns the ids it got acknowledged.
    pub fn spawn_clients(
        self: &Arc<Self>,
        clients: usize,
        deadline: Deadline,
    ) -> Vec<tokio::task::JoinHandle<Result<Vec<String>, DrillError>>> {
        self.running_clients.store(clients, Ordering::SeqCst);
        (0..clients)
            .map(|_| {
                let load = self.clone();
                tokio::spawn(async move {
                    let result = load.run_client(deadline).await;
                    load.running_clients.fetch_sub(1, Ordering::SeqCst);
                    result
                })
            })
            .collect()
    }

    async fn run_client(&self, deadline: Deadline) -> Result<Vec<String>, DrillError> {
        let mut ids = Vec::new();
        while let Some(number) = self.take_request() {
            let id = self.create(number, deadline).await?;
            self.acknowledged.fetch_add(1, Ordering::SeqCst);
            self.process(number, &id, deadline).await?;
            ids.push(id);
        }
        Ok(ids)
    }

    fn take_request(&self) -> Option<usize> {
        let number = self.next_request.fetch_add(1, Ordering::SeqCst);
        (number < self.requests).then_some(number)
    }

    /// Creates request `number` until Herald acknowledges it; returns its id.
    async fn create(&self, number: usize, deadline: Deadline) -> Result<String, DrillError> {
        let body = request_body(number);
        let mut turn = number;
        loop {
            let sent = self
                .http
                .post(format!("{}/v1/requests", self.node(turn)))
                .header("Idempotency-Key", format!("drill-{number}"))
                .json(&body)
                .send()
                .await;
            if let Ok(response) = sent {
                if response.status() == 201 {
                    // A body cut off by a kill is fetched again by the retry.
                    if let Ok(created) = response.json::<Created>().await {
                        return Ok(created.id);
                    }
                } else {
                    refuse_unless_transient("a create", response).await?;
                }
            }
            self.pause(deadline).await?;
            turn += 1;
        }
    }

    /// Asks for the delivery of `id` until Herald acknowledges it (202, or
    /// 200 when an earlier call cut off by a kill had made it).
    async fn process(&self, number: usize, id: &str, deadline: Deadline) -> Result<(), DrillError> {
        let mut turn = number;
        loop {
            let sent = self
                .http
                .post(format!("{}/v1/requests/{id}/process", self.node(turn)))
                .send()
                .await;
            if let Ok(response) = sent {
                if [200, 202].contains(&response.status().as_u16()) {
                    return Ok(());
                }
                refuse_unless_transient("a process call", response).await?;
            }
            self.pause(deadline).await?;
            turn += 1;
        }
    }

    /// The node a call goes to.
    fn node(&self, turn: usize) -> &str {
        &self.base_urls[turn % self.base_urls.len()]
    }

    async fn pause(&self, deadline: Deadline) -> Result<(), DrillError> {
        deadline.check()?;
        self.retried.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(RETRY_PAUSE).await;
        Ok(())
    }
}

/// A 5xx (say, a store that cannot flush) is worth another try; anything else
/// means the drill or Herald is broken.
async fn refuse_unless_transient(
    what: &'static str,
    response: reqwest::Response,
) -> Result<(), DrillError> {
    let status = response.status();
    if status.is_server_error() {
        return Ok(());
    }
    Err(DrillError::Refused {
        what,
        status: status.as_u16(),
        body: response.text().await.unwrap_or_default(),
    })
}

/// Request `number`'s body; channels and priorities take turns.
fn request_body(number: usize) -> Value {
    json!({
        "to": format!("user{number}@example.com"),
        "message": format!("drill message {number}"),
        "type": CHANNELS[number % CHANNELS.len()],
        "priority": PRIORITIES[number / CHANNELS.len() % PRIORITIES.len()],
    })
}
