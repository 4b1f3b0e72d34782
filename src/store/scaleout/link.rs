//! The connection to Redis: one multiplexed, self-reconnecting connection
//! per node, every call bounded by a timeout, and the health the calls show
//! (`storage_state`). Redis out of reach is `StoreError::Unavailable`, which
//! the API answers with `503` and `Retry-After`, never a hang.

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, RedisError, ScriptInvocation};

use crate::store::{StorageState, StoreError};

/// How long one Redis call may take before it counts as Redis unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) struct RedisLink {
    connection: ConnectionManager,
    /// Why the last call failed, until one succeeds again.
    failure: Mutex<Option<String>>,
}

impl RedisLink {
    /// Connects to `url`; refuses to start when Redis cannot be reached.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let refused = |error: RedisError| {
            StoreError::Refused(format!(
                "cannot reach Redis at {} ({error}); start it or fix --redis-url",
                super::redacted(url)
            ))
        };
        let client = redis::Client::open(url).map_err(refused)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_max_delay(Duration::from_secs(1))
            .set_number_of_retries(2);
        let connection = tokio::time::timeout(
            CALL_TIMEOUT * 2,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| {
            StoreError::Refused(format!("Redis at {} did not answer", super::redacted(url)))
        })?
        .map_err(refused)?;
        crate::instruments::storage_state("serving");
        Ok(Self {
            connection,
            failure: Mutex::new(None),
        })
    }

    /// Runs a script.
    pub async fn script<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut connection = self.connection.clone();
        let called = tokio::time::timeout(CALL_TIMEOUT, invocation.invoke_async(&mut connection));
        self.judge(called.await)
    }

    /// Runs a plain command.
    pub async fn command<T: FromRedisValue>(&self, command: &Cmd) -> Result<T, StoreError> {
        let mut connection = self.connection.clone();
        let called = tokio::time::timeout(CALL_TIMEOUT, command.query_async(&mut connection));
        self.judge(called.await)
    }

    /// Serving while calls succeed; unavailable, with the reason, after one failed.
    pub fn state(&self) -> StorageState {
        match self
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            None => StorageState::Serving,
            Some(reason) => StorageState::Unavailable(reason.clone()),
        }
    }

    fn judge<T>(
        &self,
        called: Result<Result<T, RedisError>, tokio::time::error::Elapsed>,
    ) -> Result<T, StoreError> {
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        match called {
            Ok(Ok(value)) => {
                if let Some(reason) = failure.take() {
                    tracing::info!(was = reason, "Redis answers again");
                    crate::instruments::storage_state("serving");
                }
                Ok(value)
            }
            // A reply Herald cannot read is a bug or foreign data, not an outage.
            Ok(Err(error)) if error.kind() == redis::ErrorKind::UnexpectedReturnType => {
                Err(StoreError::Corrupt(format!("Redis answered: {error}")))
            }
            Ok(Err(error)) => Err(self.failed(&mut failure, format!("Redis: {error}"))),
            Err(_) => Err(self.failed(
                &mut failure,
                format!("Redis did not answer within {CALL_TIMEOUT:?}"),
            )),
        }
    }

    fn failed(&self, failure: &mut Option<String>, reason: String) -> StoreError {
        if failure.is_none() {
            tracing::warn!(%reason, "Redis unavailable");
            crate::instruments::storage_state("unavailable");
        }
        *failure = Some(reason.clone());
        StoreError::Unavailable(reason)
    }
}
