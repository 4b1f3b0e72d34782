//! The drill's one table (Markdown, so it pastes into BENCHMARKS.md) and its
//! verdict: nothing lost, nothing stuck, nothing marked sent that the provider
//! never delivered, and no more duplicates than the kills can explain.

use std::fmt::Write as _;
use std::time::Duration;

use herald::simulator::{Profile, SimStats};

/// Everything a finished drill measured.
pub struct Report {
    pub profile: Profile,
    /// The engine's flags, as the drill was given them (empty: embedded).
    pub engine: String,
    pub nodes: usize,
    pub seed: u64,
    pub clients: usize,
    pub requests: usize,
    pub max_in_flight: usize,
    /// Kills made (fewer than asked only if the load ended first).
    pub kills: usize,
    pub acknowledged: usize,
    pub lost: usize,
    pub stuck: usize,
    /// What `/ready` reported once every request was final.
    pub pending_after_drain: Option<u64>,
    pub sent: usize,
    pub failed: usize,
    pub sent_never_delivered: usize,
    pub provider: SimStats,
    pub client_retries: usize,
    /// From each restart to its first 200 on `/ready`.
    pub restarts: Vec<Duration>,
    pub load_time: Duration,
    pub drain_time: Duration,
}

impl Report {
    /// At most every call in flight at a kill is delivered again after it.
    pub fn duplicate_bound(&self) -> u64 {
        (self.kills * self.max_in_flight) as u64
    }

    /// Duplicates a stall (Herald timing out, then trying again) does not explain.
    pub fn duplicates_left_to_kills(&self) -> u64 {
        self.provider.duplicate_deliveries - self.provider.duplicates_after_stall
    }

    /// What the drill found wrong; empty when Herald passed.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.lost > 0 {
            problems.push(format!("{} acknowledged requests were lost", self.lost));
        }
        if self.stuck > 0 {
            problems.push(format!(
                "{} requests are stuck queued or processing",
                self.stuck
            ));
        }
        if self.pending_after_drain != Some(0) {
            problems.push(format!(
                "/ready reports {} pending once every request is final",
                pending(self.pending_after_drain)
            ));
        }
        if self.sent_never_delivered > 0 {
            problems.push(format!(
                "{} requests are sent but the provider never delivered them",
                self.sent_never_delivered
            ));
        }
        if self.duplicates_left_to_kills() > self.duplicate_bound() {
            problems.push(format!(
                "{} duplicate deliveries after kills; at most {} calls were in flight",
                self.duplicates_left_to_kills(),
                self.duplicate_bound()
            ));
        }
        problems
    }

    /// The command that replays this drill, and the table.
    pub fn render(&self) -> String {
        let mut out = format!(
            "herald-drill --profile {} --seed {} --kills {} --requests {} --clients {} --max-in-flight {}{}\n\n",
            self.profile,
            self.seed,
            self.kills,
            self.requests,
            self.clients,
            self.max_in_flight,
            self.engine
        );
        out.push_str("| what | value | must be |\n| --- | --- | --- |\n");
        for (what, value, must_be) in self.rows() {
            // Writing to a String cannot fail.
            let _ = writeln!(out, "| {what} | {value} | {must_be} |");
        }
        out
    }

    fn rows(&self) -> Vec<(&'static str, String, String)> {
        let none = String::new;
        vec![
            ("herald nodes", self.nodes.to_string(), none()),
            (
                "herald --max-in-flight",
                self.max_in_flight.to_string(),
                none(),
            ),
            (
                "kills (SIGKILL, then restart)",
                self.kills.to_string(),
                none(),
            ),
            (
                "requests acknowledged (201)",
                self.acknowledged.to_string(),
                none(),
            ),
            (
                "found after recovery (GET 200)",
                (self.acknowledged - self.lost).to_string(),
                none(),
            ),
            ("lost", self.lost.to_string(), "0".into()),
            (
                "stuck queued/processing after drain",
                self.stuck.to_string(),
                "0".into(),
            ),
            (
                "pending on /ready after drain",
                pending(self.pending_after_drain),
                "0".into(),
            ),
            ("sent", self.sent.to_string(), none()),
            ("failed", self.failed.to_string(), none()),
            (
                "sent, never delivered by the provider",
                self.sent_never_delivered.to_string(),
                "0".into(),
            ),
            (
                "provider calls",
                self.provider.calls_total.to_string(),
                none(),
            ),
            (
                "provider answers by status",
                answers_by_status(&self.provider),
                none(),
            ),
            (
                "provider duplicate deliveries",
                self.provider.duplicate_deliveries.to_string(),
                none(),
            ),
            (
                "duplicates after a stall (Herald timed out)",
                self.provider.duplicates_after_stall.to_string(),
                none(),
            ),
            (
                "duplicates left to the kills",
                self.duplicates_left_to_kills().to_string(),
                format!(
                    "≤ {} ({} kills × {} in flight)",
                    self.duplicate_bound(),
                    self.kills,
                    self.max_in_flight
                ),
            ),
            (
                "client calls repeated (Herald down or cut off)",
                self.client_retries.to_string(),
                none(),
            ),
            (
                "restart → first 200 on /ready",
                spread(&self.restarts),
                none(),
            ),
            ("load with kills", seconds(self.load_time), none()),
            ("drain after the load", seconds(self.drain_time), none()),
        ]
    }
}

fn pending(reported: Option<u64>) -> String {
    reported.map_or_else(|| "no answer".into(), |pending| pending.to_string())
}

fn answers_by_status(stats: &SimStats) -> String {
    let answers: Vec<String> = stats
        .by_status
        .iter()
        .map(|(status, count)| format!("{status}: {count}"))
        .collect();
    answers.join(", ")
}

/// min / median / max, in milliseconds.
fn spread(times: &[Duration]) -> String {
    let mut sorted = times.to_vec();
    sorted.sort();
    match (sorted.first(), sorted.get(sorted.len() / 2), sorted.last()) {
        (Some(min), Some(median), Some(max)) => format!(
            "min {} ms / median {} ms / max {} ms",
            min.as_millis(),
            median.as_millis(),
            max.as_millis()
        ),
        _ => "no restarts".into(),
    }
}

fn seconds(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            profile: Profile::Healthy,
            engine: String::new(),
            nodes: 1,
            seed: 1,
            clients: 4,
            requests: 10,
            max_in_flight: 16,
            kills: 2,
            acknowledged: 10,
            lost: 0,
            stuck: 0,
            pending_after_drain: Some(0),
            sent: 10,
            failed: 0,
            sent_never_delivered: 0,
            provider: SimStats {
                duplicate_deliveries: 40,
                duplicates_after_stall: 8,
                ..SimStats::default()
            },
            client_retries: 0,
            restarts: vec![Duration::from_millis(30), Duration::from_millis(10)],
            load_time: Duration::ZERO,
            drain_time: Duration::ZERO,
        }
    }

    #[test]
    fn duplicates_a_stall_explains_do_not_count_against_the_kills() {
        let report = report();
        assert_eq!(report.duplicates_left_to_kills(), 32);
        assert!(report.problems().is_empty());
        let too_many = Report {
            provider: SimStats {
                duplicate_deliveries: 41,
                ..report.provider.clone()
            },
            ..report
        };
        assert_eq!(too_many.problems().len(), 1);
    }

    #[test]
    fn every_loss_is_a_problem() {
        let report = Report {
            lost: 1,
            stuck: 2,
            pending_after_drain: None,
            sent_never_delivered: 3,
            ..report()
        };
        assert_eq!(report.problems().len(), 4);
    }

    #[test]
    fn the_table_shows_the_bound_and_the_restart_spread() {
        let table = report().render();
        assert!(table.contains("| lost | 0 | 0 |"));
        assert!(table.contains("≤ 32 (2 kills × 16 in flight)"));
        assert!(table.contains("min 10 ms / median 30 ms / max 30 ms"));
    }
}
