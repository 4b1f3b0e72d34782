//! The Lua scripts, one per state change, each run atomically by Redis: a
//! script plays the part a sled transaction plays in the embedded engine.
//! Every script starts with `lua/prelude.lua` (the key prefix, Redis' clock,
//! the event helper); [`redis::Script`] runs them by hash and reloads one
//! Redis has forgotten (after a restart: NOSCRIPT).

use redis::Script;

/// Every script, compiled once at start.
pub(super) struct Scripts {
    pub create: Script,
    pub process: Script,
    pub claim_due: Script,
    pub published: Script,
    pub requeue_published: Script,
    pub lease: Script,
    pub finish: Script,
    pub release: Script,
    pub rescue: Script,
    pub report: Script,
    pub purge_final: Script,
    pub gate_reserve: Script,
    pub gate_sent: Script,
    pub gate_throttled: Script,
    pub gate_channel: Script,
}

const PRELUDE: &str = include_str!("lua/prelude.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

impl Scripts {
    pub fn new() -> Self {
        Self {
            create: script(include_str!("lua/create.lua")),
            process: script(include_str!("lua/process.lua")),
            claim_due: script(include_str!("lua/claim_due.lua")),
            published: script(include_str!("lua/published.lua")),
            requeue_published: script(include_str!("lua/requeue_published.lua")),
            lease: script(include_str!("lua/lease.lua")),
            finish: script(include_str!("lua/finish.lua")),
            release: script(include_str!("lua/release.lua")),
            rescue: script(include_str!("lua/rescue.lua")),
            report: script(include_str!("lua/report.lua")),
            purge_final: script(include_str!("lua/purge_final.lua")),
            gate_reserve: script(include_str!("lua/gate_reserve.lua")),
            gate_sent: script(include_str!("lua/gate_sent.lua")),
            gate_throttled: script(include_str!("lua/gate_throttled.lua")),
            gate_channel: script(include_str!("lua/gate_channel.lua")),
        }
    }
}
