//! The scale-out engine: several stateless Herald nodes sharing one Redis
//! (the truth: records, history, idempotency keys, the due set, the leases
//! and the rate limiter) and one RabbitMQ (the work: pointer messages
//! `{form, id, seq}`, or whole notifications for external senders). The
//! only code that knows Redis or AMQP.
//!
//! - `link.rs`: the Redis connection, timeouts and health; `guard.rs`: the
//!   start-up check that Redis keeps every write; `dataset.rs`: the
//!   dataset's identity in Redis and in RabbitMQ, so either side's loss shows;
//! - `scripts.rs` and `lua/`: one Lua script per state change;
//! - `codec.rs`: how records look in Redis; `messages.rs`: the work
//!   messages on RabbitMQ, in their two forms;
//! - `records.rs`: [`Records`](crate::store::Records) on Redis;
//! - `broker.rs`: the RabbitMQ session, topology, publishing and consuming;
//! - `mover.rs`: due entries (new work, retries past their backoff) to RabbitMQ;
//! - `work.rs`: [`WorkSource`](crate::store::WorkSource): a delivery fenced
//!   into a lease, acked once its outcome is recorded;
//! - `liveness.rs`: each node's liveness key and the rescuer of dead
//!   nodes' leases;
//! - `reports.rs`: external senders' reports (`--dispatch external`);
//! - `gate/`: [`RateGate`](crate::store::RateGate), one sliding window
//!   shared by every node, and per-channel places shared the same way.
//!
//! The design is `shared/design/scale-out.md` (design B); the README's
//! "Scale-out engine" section says where this build differs.

mod broker;
mod codec;
mod dataset;
mod gate;
mod guard;
mod link;
mod liveness;
mod messages;
mod mover;
mod records;
mod reports;
mod scripts;
mod work;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

pub use gate::SharedGate;

use super::{InstanceId, RateGate, StoreError};
use crate::domain::RequestId;
use crate::store::rate::RateSettings;
use broker::Broker;
use link::RedisLink;
use scripts::Scripts;

/// How the engine reaches its services and names itself.
#[derive(Clone, Debug)]
pub struct ScaleoutOptions {
    pub redis_url: String,
    pub amqp_url: String,
    /// Every key lives under the hash tag `{prefix}`: one slot, and one
    /// prefix per deployment (or per test) sharing a Redis.
    pub prefix: String,
    pub instance: InstanceId,
    /// Start on a Redis that may lose writes, with a warning.
    pub allow_volatile: bool,
    /// How long a lease is given before the rescuer may take it back.
    pub lease_for: Duration,
    /// Unacknowledged deliveries per queue a node holds.
    pub prefetch: u16,
    /// `--dispatch external`: senders of the operator's own consume the work
    /// and report on `herald.status`; this node calls no provider.
    pub external: bool,
    /// Serve a Redis that lost its data (`dataset.rs`) as a new dataset.
    pub accept_data_loss: bool,
    /// When the retries external senders report go again (`reports.rs`).
    pub retry: crate::retry::RetryPolicy,
}

/// A leased delivery: its schedule (the fence) and its message to ack.
struct Held {
    seq: u64,
    message: lapin::message::Delivery,
}

/// The engine, shared behind an `Arc` by the API, the dispatcher and its
/// own background tasks.
pub struct ScaleoutStore {
    redis: Arc<RedisLink>,
    scripts: Arc<Scripts>,
    /// `{prefix}`, the hash tag every key starts with.
    tag: String,
    options: ScaleoutOptions,
    /// The dataset marker this node serves (`dataset.rs`).
    dataset: String,
    /// Why Redis may lose writes, when `--allow-volatile-redis` let it.
    volatile: Option<String>,
    /// Undelivered requests, as the scripts last counted them.
    pending: AtomicU64,
    broker: Broker,
    gate: Arc<SharedGate>,
    /// Leases this node's attempts hold, by request.
    held: Mutex<HashMap<RequestId, Held>>,
    /// New work is due: wakes this node's mover.
    due: Notify,
    closed: AtomicBool,
    /// Why the data this node served is gone (Redis came back empty), once it is.
    lost: Mutex<Option<String>>,
}

impl ScaleoutStore {
    /// Connects to Redis, checks that it keeps every write (or warns, when
    /// allowed), and builds the engine and its shared rate gate. RabbitMQ is
    /// connected by [`Records::maintain`](crate::store::Records::maintain),
    /// which keeps trying: work waits in Redis meanwhile.
    pub async fn open(
        options: ScaleoutOptions,
        rate: &RateSettings,
    ) -> Result<(Arc<Self>, Arc<dyn RateGate>), StoreError> {
        let redis = Arc::new(RedisLink::connect(&options.redis_url).await?);
        let volatile = match guard::volatility(&redis).await? {
            None => None,
            Some(problem) if options.allow_volatile => {
                tracing::warn!(%problem, "--allow-volatile-redis: acknowledged requests may be lost");
                Some(format!(
                    "volatile Redis (--allow-volatile-redis): {problem}"
                ))
            }
            Some(problem) => {
                return Err(StoreError::Refused(format!(
                    "{problem} (or pass --allow-volatile-redis to accept losing them)"
                )));
            }
        };
        let scripts = Arc::new(Scripts::new());
        let tag = format!("{{{}}}", options.prefix);
        let dataset = dataset::mark(&redis, &tag).await?;
        let gate = SharedGate::new(
            redis.clone(),
            scripts.clone(),
            tag.clone(),
            &options.instance,
            rate,
        )
        .map_err(|error| StoreError::Refused(error.to_string()))?;
        let gate = Arc::new(gate);
        let store = Arc::new(Self {
            redis,
            scripts,
            tag,
            broker: Broker::new(options.amqp_url.clone(), options.prefetch, options.external),
            gate: gate.clone(),
            dataset,
            options,
            volatile,
            pending: AtomicU64::new(0),
            held: Mutex::new(HashMap::new()),
            due: Notify::new(),
            closed: AtomicBool::new(false),
            lost: Mutex::new(None),
        });
        store.beat().await?;
        store.rescue_at_start().await?;
        store.refresh_pending().await?;
        tracing::info!(instance = %store.options.instance, pending = store.pending.load(Ordering::Relaxed), "scale-out engine open");
        Ok((store, gate))
    }

    /// Why the store refuses calls now, if it does.
    fn refusal(&self) -> Result<(), StoreError> {
        if let Some(reason) = self.lost_reason() {
            return Err(StoreError::Unavailable(reason));
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable("the store is closed".into()));
        }
        Ok(())
    }

    fn lost_reason(&self) -> Option<String> {
        self.lost.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<RequestId, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `url` with any password masked, for messages.
fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("****"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}
