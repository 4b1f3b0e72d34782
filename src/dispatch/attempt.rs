//! One delivery attempt: pace it, call the provider, decide what the answer
//! means for the request, and record that durably.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::breaker::CircuitBreaker;
use super::provider::{CallOutcome, ProviderClient};
use crate::domain::now_ms;
use crate::instruments;
use crate::retry::RetryPolicy;
use crate::store::{AttemptReport, Decision, Lease, RateGate, RateSlot, Records, StoreError};

/// How long to wait before retrying a failed write of an attempt's outcome.
const RECORD_RETRY_DELAY: Duration = Duration::from_millis(500);

/// What every attempt shares.
pub struct AttemptContext {
    pub records: Arc<dyn Records>,
    pub provider: ProviderClient,
    pub gate: Arc<dyn RateGate>,
    pub breaker: CircuitBreaker,
    pub retry: RetryPolicy,
}

impl AttemptContext {
    pub async fn run(&self, lease: Lease, slot: RateSlot) {
        // The lease must be on disk before the call: a lease a failed flush
        // lost would otherwise be leased and sent again after the store reopens.
        if let Err(error) = self.records.sync().await {
            tracing::debug!(%error, "lease not durable; returning it unsent");
            self.gate.not_sent(slot);
            return self.release(&lease).await;
        }
        self.gate.sending(&slot);
        let started = Instant::now();
        let outcome = self.provider.send(lease.id, &lease.notification).await;
        let latency = started.elapsed();

        let outage = self.update_health(&outcome, &slot);
        let mut judged = decide(
            &self.retry,
            &lease,
            outcome.clone(),
            outage,
            latency,
            now_ms(),
        );
        if judged.0 == Decision::Failed && !outage && self.outage_followed(&outcome).await {
            judged = decide(&self.retry, &lease, outcome, true, latency, now_ms());
        }
        let (decision, report) = judged;
        tracing::info!(
            attempt = lease.attempt,
            http_status = report.http_status,
            latency_ms = report.latency_ms,
            error = report.error.as_deref(),
            ?decision,
            "provider attempt"
        );
        instruments::provider_attempt(attempt_outcome(&report, decision), latency);
        self.record(&lease, report, decision).await;
        match decision {
            Decision::Sent => instruments::request_finished("sent"),
            Decision::Failed => instruments::request_finished("failed"),
            Decision::RetryAfter { .. } | Decision::Deferred { .. } => {}
        }
    }

    /// Feeds the outcome to the breaker and the rate gate; returns whether the
    /// provider is in an outage (the breaker is open).
    fn update_health(&self, outcome: &CallOutcome, slot: &RateSlot) -> bool {
        match outcome {
            CallOutcome::Transient { retry_after, .. } if outcome.is_throttled() => {
                self.gate.throttled(slot, *retry_after);
            }
            _ => self.gate.relieved(slot),
        }
        if outcome.is_provider_failure() {
            let open = self.breaker.record_failure();
            if open {
                // Other nodes sharing the gate hold too.
                self.gate.provider_down(self.breaker.cooldown());
            }
            open
        } else {
            self.breaker.record_success();
            false
        }
    }

    /// A provider failure would end the request (its last attempt), but the
    /// breaker has not opened: whether this failure was the first of an
    /// outage shows only in what the next calls get. Waits for that, at most
    /// a breaker cool-down: `true` if the breaker opens first, `false` if
    /// another call succeeds first (the failure was this request's own) or
    /// nothing is known by then.
    async fn outage_followed(&self, outcome: &CallOutcome) -> bool {
        if !outcome.is_provider_failure() {
            return false;
        }
        self.breaker.opens_before_a_success().await
    }

    /// Writes the outcome, retrying until it is durable: the provider has
    /// answered, and forgetting that would send the request again. While the
    /// store is unavailable (a full disk) the lease stays on disk, and the
    /// outcome is recorded once the store serves again.
    async fn record(&self, lease: &Lease, report: AttemptReport, decision: Decision) {
        loop {
            match self
                .records
                .finish_attempt(lease, report.clone(), decision)
                .await
            {
                Ok(status) => {
                    tracing::debug!(%status, "attempt recorded");
                    return;
                }
                Err(error @ StoreError::LeaseLost(_)) => {
                    // Recorded by an earlier try whose flush failed, or recovered.
                    tracing::warn!(%error, "attempt outcome not recorded again");
                    return;
                }
                Err(error) => {
                    tracing::debug!(%error, "could not record the attempt yet; retrying");
                    tokio::time::sleep(RECORD_RETRY_DELAY).await;
                }
            }
        }
    }

    /// Returns an unsent lease to the outbox, retrying until that is durable.
    async fn release(&self, lease: &Lease) {
        loop {
            match self.records.release_lease(lease).await {
                Ok(()) | Err(StoreError::LeaseLost(_)) => return,
                Err(error) => {
                    tracing::debug!(%error, "could not return the lease yet; retrying");
                    tokio::time::sleep(RECORD_RETRY_DELAY).await;
                }
            }
        }
    }
}

/// The `outcome` label of `herald_provider_attempts_total`.
fn attempt_outcome(report: &AttemptReport, decision: Decision) -> &'static str {
    match (decision, report.http_status) {
        (Decision::Sent, _) => "sent",
        (Decision::Failed, _) => "failed",
        (Decision::Deferred { .. }, Some(429)) => "throttled",
        (Decision::Deferred { .. }, _) => "retry",
        (Decision::RetryAfter { .. }, None) => "timeout",
        (Decision::RetryAfter { .. }, Some(_)) => "retry",
    }
}

/// What an attempt's outcome means for the request. While the breaker is open
/// (`outage`) a transient failure is always retried; the failures that open
/// it are judged by the retry budget like any other.
pub fn decide(
    policy: &RetryPolicy,
    lease: &Lease,
    outcome: CallOutcome,
    outage: bool,
    latency: Duration,
    now_ms: u64,
) -> (Decision, AttemptReport) {
    let mut report = AttemptReport {
        attempt: lease.attempt,
        latency_ms: latency.as_millis() as u64,
        ..AttemptReport::default()
    };
    let deferred = outcome.spends_no_attempt();
    let decision = match outcome {
        CallOutcome::Delivered {
            status,
            provider_id,
        } => {
            report.http_status = Some(status);
            report.provider_id = provider_id;
            Decision::Sent
        }
        CallOutcome::Rejected { status, error } => {
            report.http_status = Some(status);
            report.error = Some(error);
            Decision::Failed
        }
        CallOutcome::Transient {
            status,
            retry_after,
            error,
        } => {
            report.http_status = status;
            let age = Duration::from_millis(now_ms.saturating_sub(lease.process_requested_at_ms));
            // A 429 says "later", not "broken", and a refused key or URL is
            // Herald's fault, not the request's: they spend no attempts, only age.
            let budget_left = if deferred {
                age < policy.max_age
            } else {
                policy.allows_retry(lease.attempt, age)
            };
            if outage || budget_left {
                let delay = policy.delay(lease.attempt, retry_after, &mut rand::rng());
                let wait_ms = delay.as_millis() as u64;
                report.error = Some(error);
                if deferred {
                    Decision::Deferred { wait_ms }
                } else {
                    Decision::RetryAfter { wait_ms }
                }
            } else {
                report.error = Some(format!(
                    "{error} (retry budget spent after {} attempts)",
                    lease.attempt
                ));
                Decision::Failed
            }
        }
    };
    (decision, report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Channel, Notification, Priority, RequestId};

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            max_attempts: 3,
            max_age: Duration::from_secs(3600),
        }
    }

    fn lease(attempt: u32) -> Lease {
        Lease {
            id: RequestId::new(),
            notification: Notification {
                to: "a@example.com".into(),
                message: "hi".into(),
                channel: Channel::Email,
                priority: Priority::Normal,
            },
            attempt,
            process_requested_at_ms: 1_000,
            owner: crate::store::InstanceId("test".into()),
            deadline_ms: u64::MAX,
        }
    }

    fn server_error() -> CallOutcome {
        CallOutcome::Transient {
            status: Some(500),
            retry_after: None,
            error: "HTTP 500".into(),
        }
    }

    #[test]
    fn a_2xx_is_sent_with_its_provider_id() {
        let delivered = CallOutcome::Delivered {
            status: 200,
            provider_id: Some("p-1".into()),
        };
        let (decision, report) = decide(
            &policy(),
            &lease(1),
            delivered,
            false,
            Duration::ZERO,
            2_000,
        );
        assert_eq!(decision, Decision::Sent);
        assert_eq!(report.provider_id.as_deref(), Some("p-1"));
    }

    #[test]
    fn a_4xx_fails_at_once() {
        let rejected = CallOutcome::Rejected {
            status: 422,
            error: "HTTP 422".into(),
        };
        let (decision, report) =
            decide(&policy(), &lease(1), rejected, false, Duration::ZERO, 2_000);
        assert_eq!(decision, Decision::Failed);
        assert_eq!(report.http_status, Some(422));
    }

    #[test]
    fn transient_failures_retry_until_the_budget_is_spent() {
        let (decision, _) = decide(
            &policy(),
            &lease(2),
            server_error(),
            false,
            Duration::ZERO,
            2_000,
        );
        assert!(matches!(decision, Decision::RetryAfter { .. }));
        let (decision, report) = decide(
            &policy(),
            &lease(3),
            server_error(),
            false,
            Duration::ZERO,
            2_000,
        );
        assert_eq!(decision, Decision::Failed);
        assert!(
            report
                .error
                .unwrap()
                .contains("retry budget spent after 3 attempts")
        );
    }

    #[test]
    fn an_outage_never_fails_a_request() {
        let (decision, _) = decide(
            &policy(),
            &lease(9),
            server_error(),
            true,
            Duration::ZERO,
            2_000,
        );
        assert!(matches!(decision, Decision::RetryAfter { .. }));
    }

    #[test]
    fn a_refused_key_spends_no_attempts_only_age() {
        let refused = CallOutcome::Transient {
            status: Some(401),
            retry_after: None,
            error: "HTTP 401".into(),
        };
        let (decision, _) = decide(&policy(), &lease(50), refused, false, Duration::ZERO, 2_000);
        assert!(matches!(decision, Decision::Deferred { .. }));
    }

    #[test]
    fn throttling_spends_no_attempts_only_age() {
        let throttled = || CallOutcome::Transient {
            status: Some(429),
            retry_after: None,
            error: "HTTP 429".into(),
        };
        let (decision, _) = decide(
            &policy(),
            &lease(50),
            throttled(),
            false,
            Duration::ZERO,
            2_000,
        );
        assert!(matches!(decision, Decision::Deferred { .. }));
        let too_old = 1_000 + policy().max_age.as_millis() as u64;
        let (decision, _) = decide(
            &policy(),
            &lease(2),
            throttled(),
            false,
            Duration::ZERO,
            too_old,
        );
        assert_eq!(decision, Decision::Failed);
    }

    #[test]
    fn retry_after_sets_the_earliest_next_attempt() {
        let throttled = CallOutcome::Transient {
            status: Some(429),
            retry_after: Some(Duration::from_secs(7)),
            error: "HTTP 429".into(),
        };
        let (decision, _) = decide(
            &policy(),
            &lease(1),
            throttled,
            false,
            Duration::ZERO,
            2_000,
        );
        assert!(matches!(decision, Decision::Deferred { wait_ms } if wait_ms >= 7_000));
    }
}
