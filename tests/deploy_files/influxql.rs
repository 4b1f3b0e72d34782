//! The dashboard's InfluxDB queries read k6's measurements: an InfluxQL
//! `FROM` extractor and its check.

use std::collections::BTreeSet;
use std::fs;

use crate::files::repo;
use crate::grafana::{dashboard, influx_queries};

/// k6's built-in metrics, which its InfluxDB output writes as measurements.
const K6_MEASUREMENTS: &str = "\
    checks data_received data_sent dropped_iterations group_duration \
    http_req_blocked http_req_connecting http_req_duration http_req_failed \
    http_req_receiving http_req_sending http_req_tls_handshaking http_req_waiting \
    http_reqs iteration_duration iterations vus vus_max";

/// Custom metrics the k6 script declares (`new Trend('name')` and the like).
fn k6_script_metrics() -> BTreeSet<String> {
    let script = fs::read_to_string(repo().join("tests/load/herald.js")).unwrap_or_default();
    let mut names = BTreeSet::new();
    for kind in ["Counter", "Gauge", "Rate", "Trend"] {
        for piece in script.split(&format!("new {kind}(")).skip(1) {
            let piece = piece.trim_start();
            let quote = piece.chars().next().filter(|c| "'\"`".contains(*c));
            if let Some((name, _)) = quote.and_then(|q| piece[1..].split_once(q)) {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// The measurements an InfluxQL query reads (`FROM "name"` or `FROM name`).
pub fn influx_measurements(query: &str) -> Vec<String> {
    let mut out = Vec::new();
    let upper = query.to_ascii_uppercase();
    let mut from = 0;
    while let Some(found) = upper[from..].find("FROM ") {
        let start = from + found + "FROM ".len();
        let rest = query[start..].trim_start();
        let name = match rest.strip_prefix('"') {
            Some(quoted) => quoted.split('"').next().unwrap_or_default().to_string(),
            None => rest
                .split(|c: char| c.is_whitespace() || c == ',')
                .next()
                .unwrap_or_default()
                .to_string(),
        };
        out.push(name);
        from = start;
    }
    out
}

#[test]
fn influx_measurement_parser_reads_from_clauses() {
    assert_eq!(
        influx_measurements(
            r#"SELECT percentile("value", 95) FROM "http_req_duration" WHERE $timeFilter"#
        ),
        ["http_req_duration"]
    );
    assert_eq!(
        influx_measurements("select sum(value) from http_reqs where $timeFilter"),
        ["http_reqs"]
    );
    assert!(influx_measurements("SELECT 1").is_empty());
}

#[test]
fn grafana_influx_queries_read_k6_measurements_within_the_time_picker() {
    let mut known: BTreeSet<String> = K6_MEASUREMENTS
        .split_whitespace()
        .map(String::from)
        .collect();
    known.extend(k6_script_metrics());
    let queries = influx_queries(&dashboard());
    assert!(
        !queries.is_empty(),
        "the dashboard has no k6 (InfluxDB) query"
    );
    for query in queries {
        let measurements = influx_measurements(&query);
        assert!(!measurements.is_empty(), "`{query}` reads no measurement");
        for m in measurements {
            assert!(known.contains(&m), "`{query}`: `{m}` is not a k6 metric");
        }
        assert!(
            query.contains("$timeFilter"),
            "`{query}` ignores the dashboard's time range"
        );
    }
}
