//! The start-up guard: Redis is the truth store, so it must keep every
//! acknowledged write. Herald reads `appendonly`, `appendfsync` and
//! `maxmemory-policy` and refuses to start unless they are `yes`, `always`
//! and `noeviction` (`--allow-volatile-redis` turns the refusal into a
//! warning, which `/ready` shows too).

use redis::cmd;

use super::link::RedisLink;
use crate::store::StoreError;

/// Each setting, the value durability needs, and how to get it.
const REQUIRED: [(&str, &str, &str); 3] = [
    (
        "appendonly",
        "yes",
        "run redis-server with --appendonly yes (or CONFIG SET appendonly yes)",
    ),
    (
        "appendfsync",
        "always",
        "run redis-server with --appendfsync always (or CONFIG SET appendfsync always)",
    ),
    (
        "maxmemory-policy",
        "noeviction",
        "run redis-server with --maxmemory-policy noeviction",
    ),
];

/// What the guard found wrong: `None` when Redis keeps every write.
pub(super) async fn volatility(redis: &RedisLink) -> Result<Option<String>, StoreError> {
    let mut problems = Vec::new();
    for (setting, wanted, fix) in REQUIRED {
        let answer: Vec<String> = redis
            .command(cmd("CONFIG").arg("GET").arg(setting))
            .await
            .map_err(|error| {
                StoreError::Refused(format!(
                    "cannot read Redis' {setting} with CONFIG GET ({error}); Herald must check that Redis keeps every write (or pass --allow-volatile-redis)"
                ))
            })?;
        let actual = answer.get(1).map_or("(unset)", String::as_str);
        if actual != wanted {
            problems.push(format!(
                "Redis has {setting} {actual}, which can lose acknowledged requests; {fix}"
            ));
        }
    }
    Ok((!problems.is_empty()).then(|| problems.join("; ")))
}
