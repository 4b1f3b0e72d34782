//! Outages: windows during which nothing listens on the simulator's port, so
//! connections are refused (a TCP reset, not an HTTP answer), as when a
//! provider is down. The simulator serves in spells: each on a fresh listener
//! bound to the same address, ended by the next outage or by shutdown.
//!
//! A spell ends gracefully: its listener closes at once and idle kept-alive
//! connections are closed, but calls in service are answered. A call is never
//! delivered behind its caller's back, so an outage alone causes no duplicate.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

/// How often, and how long, re-binding the port is tried after an outage
/// (another socket may hold it for a moment).
const REBIND_ATTEMPTS: u32 = 50;
const REBIND_PAUSE: Duration = Duration::from_millis(100);

/// When the provider is down: `after` the start of serving, for `duration`,
/// then again every `every` from one start to the next (if set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutagePlan {
    pub after: Duration,
    pub duration: Duration,
    pub every: Option<Duration>,
}

/// One outage: refused from `start` until `end`, offsets from the start of serving.
#[derive(Clone, Copy, Debug)]
struct Outage {
    start: Duration,
    end: Duration,
}

impl OutagePlan {
    /// The outages in order: one, or an endless series.
    fn outages(self) -> impl Iterator<Item = Outage> {
        std::iter::successors(Some(self.after), move |start| {
            self.every.map(|every| *start + every)
        })
        .map(move |start| Outage {
            start,
            end: start + self.duration,
        })
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, closing the port
/// during every outage of `plan`; then waits for the calls in service.
pub(super) async fn serve_in_spells(
    listener: TcpListener,
    router: Router,
    plan: Option<OutagePlan>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let addr = listener.local_addr()?;
    let started = Instant::now();
    let mut shutdown = pin!(shutdown);
    let mut spells = JoinSet::new();
    let mut listener = listener;
    for outage in plan.into_iter().flat_map(OutagePlan::outages) {
        let spell = spawn_spell(&mut spells, listener, router.clone());
        let outage_came = wait_until(started + outage.start, &mut shutdown).await;
        drop(spell);
        if !outage_came {
            return finish(spells).await;
        }
        tracing::info!(%addr, duration = ?(outage.end - outage.start), "provider simulator outage: refusing connections");
        if !wait_until(started + outage.end, &mut shutdown).await {
            return finish(spells).await;
        }
        listener = rebind(addr).await?;
        tracing::info!(%addr, "provider simulator back from its outage");
    }
    let last_spell = spawn_spell(&mut spells, listener, router);
    shutdown.await;
    drop(last_spell);
    finish(spells).await
}

/// Serves on `listener` in a task until the returned guard drops.
fn spawn_spell(
    spells: &mut JoinSet<io::Result<()>>,
    listener: TcpListener,
    router: Router,
) -> DropGuard {
    let end = CancellationToken::new();
    let server =
        axum::serve(listener, router).with_graceful_shutdown(end.clone().cancelled_owned());
    spells.spawn(server.into_future());
    end.drop_guard()
}

/// Sleeps until `deadline`; false when `shutdown` came first.
async fn wait_until(deadline: Instant, shutdown: &mut Pin<&mut impl Future<Output = ()>>) -> bool {
    tokio::select! {
        () = tokio::time::sleep_until(deadline) => true,
        () = shutdown.as_mut() => false,
    }
}

async fn rebind(addr: SocketAddr) -> io::Result<TcpListener> {
    let mut attempts = 0;
    loop {
        match TcpListener::bind(addr).await {
            Err(error)
                if error.kind() == io::ErrorKind::AddrInUse && attempts < REBIND_ATTEMPTS =>
            {
                attempts += 1;
                tracing::warn!(%addr, "the simulator's port is taken; trying again");
                tokio::time::sleep(REBIND_PAUSE).await;
            }
            bound => return bound,
        }
    }
}

/// Waits until every spell has answered its calls; the first failure wins.
async fn finish(mut spells: JoinSet<io::Result<()>>) -> io::Result<()> {
    let mut result = Ok(());
    while let Some(spell) = spells.join_next().await {
        let outcome = spell.unwrap_or_else(|panicked| Err(io::Error::other(panicked)));
        result = result.and(outcome);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::testing::fast_config;
    use crate::simulator::{SimConfig, Simulator};

    /// How long the socket tests wait for a state the schedule guarantees.
    const PATIENCE: Duration = Duration::from_secs(20);

    fn plan(after: u64, duration: u64, every: Option<u64>) -> OutagePlan {
        OutagePlan {
            after: Duration::from_secs(after),
            duration: Duration::from_secs(duration),
            every: every.map(Duration::from_secs),
        }
    }

    fn windows(plan: OutagePlan, count: usize) -> Vec<(u64, u64)> {
        plan.outages()
            .take(count)
            .map(|outage| (outage.start.as_secs(), outage.end.as_secs()))
            .collect()
    }

    #[test]
    fn without_a_period_there_is_one_outage() {
        assert_eq!(windows(plan(30, 10, None), 3), [(30, 40)]);
    }

    #[test]
    fn a_period_repeats_the_outage_from_each_start() {
        assert_eq!(
            windows(plan(30, 5, Some(60)), 3),
            [(30, 35), (90, 95), (150, 155)]
        );
    }

    /// Connects to `addr` until the answer is `refused` (or not); panics after `PATIENCE`.
    async fn wait_for_refusal(addr: SocketAddr, refused: bool) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            // A connect that races the listener closing is reset, not refused:
            // that is the transition, so keep looking.
            match tokio::net::TcpStream::connect(addr).await {
                Err(error) if refused && error.kind() == io::ErrorKind::ConnectionRefused => return,
                Ok(_) if !refused => return,
                _ => {}
            }
            assert!(Instant::now() < deadline, "{addr}: never refused={refused}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn outages_refuse_connections_then_the_same_port_serves_again() {
        // Repeating outages make the test independent of how fast it runs:
        // whatever it misses, the next outage (or recovery) comes round.
        let config = SimConfig {
            outages: Some(Box::new(OutagePlan {
                after: Duration::from_millis(200),
                duration: Duration::from_secs(1),
                every: Some(Duration::from_secs(2)),
            })),
            ..fast_config()
        };
        let running = Simulator::spawn(config).await.unwrap();
        let health = format!("{}/health", running.url());
        let client = reqwest::Client::new();
        wait_for_refusal(running.addr, false).await;
        // A pooled connection from before the outage must not outlive it.
        let deadline = Instant::now() + PATIENCE;
        while client.get(&health).send().await.is_err() {
            assert!(Instant::now() < deadline, "{health} never answered");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        wait_for_refusal(running.addr, true).await;
        assert!(client.get(&health).send().await.unwrap_err().is_connect());
        wait_for_refusal(running.addr, false).await;
        assert_eq!(client.get(&health).send().await.unwrap().status(), 200);
    }
}
