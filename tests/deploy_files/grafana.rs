//! Grafana provisioning: the data sources, the dashboards provider and the
//! scorecard dashboard's panels and queries, and what the scorecard shows.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::compose::{compose, env_default, service};
use crate::files::{files_under, read, repo};
use crate::influxql::influx_measurements;
use crate::promql::promql_names;
use crate::yaml::{scalar, text, yaml};

const DATASOURCES: &str = "deploy/grafana/provisioning/datasources/datasources.yml";
const DASHBOARD_PROVIDERS: &str = "deploy/grafana/provisioning/dashboards/dashboards.yml";
const DASHBOARD: &str = "deploy/grafana/dashboards/backend-performance-scorecard.json";

/// Data sources by uid: (type, url, database).
fn datasources() -> BTreeMap<String, (String, String, Option<String>)> {
    let config = yaml(DATASOURCES);
    assert_eq!(config["apiVersion"].as_i64(), Some(1));
    config["datasources"]
        .as_vec()
        .expect("datasources list")
        .iter()
        .map(|ds| {
            let database = scalar(&ds["jsonData"]["dbName"]).or_else(|| scalar(&ds["database"]));
            (
                text(&ds["uid"], "uid"),
                (text(&ds["type"], "type"), text(&ds["url"], "url"), database),
            )
        })
        .collect()
}

pub fn dashboards_provider_path() -> String {
    let config = yaml(DASHBOARD_PROVIDERS);
    assert_eq!(config["apiVersion"].as_i64(), Some(1));
    let providers = config["providers"].as_vec().expect("providers list");
    assert_eq!(providers.len(), 1, "one dashboards provider");
    assert_eq!(text(&providers[0]["type"], "type"), "file");
    text(&providers[0]["options"]["path"], "options.path")
}

#[test]
fn grafana_datasources_are_influxdb_k6_and_prometheus_on_the_compose_services() {
    let datasources = datasources();
    let (kind, url, database) = datasources.get("influxdb").expect("uid influxdb");
    assert_eq!(kind, "influxdb");
    assert_eq!(url, "http://influxdb:8086");
    let k6_db = env_default(service(&compose(), "influxdb"), "INFLUXDB_DB");
    assert_eq!(database.as_deref(), Some(k6_db.as_str()));

    let (kind, url, _) = datasources.get("prometheus").expect("uid prometheus");
    assert_eq!(kind, "prometheus");
    assert_eq!(url, "http://prometheus:9090");
}

#[test]
fn grafana_dashboards_provider_reads_a_folder_holding_the_scorecard() {
    let path = dashboards_provider_path();
    assert!(
        path.starts_with('/'),
        "options.path is a container path: {path}"
    );
    assert!(repo().join(DASHBOARD).is_file());
}

pub fn dashboard() -> Value {
    dashboard_at(DASHBOARD)
}

pub fn dashboard_at(path: &str) -> Value {
    serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is not valid JSON: {e}"))
}

/// Every dashboard file the provider loads, as a repo path.
fn dashboard_files() -> Vec<String> {
    let files = files_under(&repo().join("deploy/grafana/dashboards"));
    let names = files.iter().filter_map(|f| f.file_name()?.to_str());
    names
        .filter(|name| name.ends_with(".json"))
        .map(|name| format!("deploy/grafana/dashboards/{name}"))
        .collect()
}

/// Every panel, including those inside collapsed rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Every (datasource uid, target) of the dashboard's data panels.
fn targets(dashboard: &Value) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let uid = target["datasource"]["uid"]
                .as_str()
                .or_else(|| panel["datasource"]["uid"].as_str())
                .unwrap_or_else(|| {
                    panic!("panel {} has a target without a datasource", panel["title"])
                });
            out.push((uid.to_string(), target));
        }
    }
    out
}

pub fn prometheus_exprs(dashboard: &Value) -> Vec<String> {
    targets(dashboard)
        .into_iter()
        .filter(|(uid, _)| uid == "prometheus")
        .map(|(_, t)| {
            t["expr"]
                .as_str()
                .expect("a Prometheus target has an expr")
                .to_string()
        })
        .collect()
}

pub fn influx_queries(dashboard: &Value) -> Vec<String> {
    targets(dashboard)
        .into_iter()
        .filter(|(uid, _)| uid == "influxdb")
        .map(|(_, t)| {
            assert_eq!(
                t["rawQuery"],
                Value::Bool(true),
                "InfluxDB targets are raw InfluxQL"
            );
            t["query"]
                .as_str()
                .expect("an InfluxDB target has a query")
                .to_string()
        })
        .collect()
}

#[test]
fn grafana_dashboard_is_the_scorecard_and_every_panel_queries_a_provisioned_datasource() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "backend-performance-scorecard");
    let files = dashboard_files();
    assert!(
        files.len() >= 2,
        "the scorecard and the scale-out dashboard: {files:?}"
    );
    let known = datasources();
    let mut uids = BTreeSet::new();
    for file in files {
        let dashboard = dashboard_at(&file);
        let uid = dashboard["uid"].as_str().unwrap_or_default().to_string();
        assert!(uids.insert(uid), "{file}: a uid another dashboard has");
        assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
        let panels = panels(&dashboard);
        assert!(!panels.is_empty(), "{file} has no panels");

        let mut ids = BTreeSet::new();
        for panel in &panels {
            let id = panel["id"].as_u64().expect("every panel has a numeric id");
            assert!(ids.insert(id), "{file}: panel id {id} is used twice");
            if panel["type"] == "row" {
                continue;
            }
            let targets = panel["targets"].as_array().map(Vec::len).unwrap_or(0);
            assert!(
                targets > 0,
                "{file}: panel {} queries nothing",
                panel["title"]
            );
        }
        for (uid, _) in targets(&dashboard) {
            assert!(
                known.contains_key(&uid),
                "{file}: datasource uid `{uid}` is not provisioned"
            );
        }
    }
}

// The scorecard shows what the challenge judges.
#[test]
fn grafana_dashboard_shows_throughput_latency_outcomes_retries_queue_breaker_and_batching() {
    let dashboard = dashboard();
    let exprs = prometheus_exprs(&dashboard).join("\n");
    let queries = influx_queries(&dashboard).join("\n");
    let used: BTreeSet<String> = prometheus_exprs(&dashboard)
        .iter()
        .flat_map(|e| promql_names(e).map(|(m, _)| m).unwrap_or_default())
        .collect();
    for (series, what) in [
        ("herald_http_requests_total", "Herald throughput"),
        (
            "herald_http_request_duration_seconds_bucket",
            "Herald endpoint latency",
        ),
        (
            "herald_requests_finished_total",
            "share of requests sent / failed",
        ),
        (
            "herald_provider_attempts_total",
            "provider errors absorbed and retries",
        ),
        ("herald_outbox_depth", "queue depth over time"),
        ("herald_circuit_breaker_state", "circuit breaker state"),
        (
            "herald_group_commit_batch_size_bucket",
            "group commit batch size",
        ),
    ] {
        assert!(used.contains(series), "no panel shows {what} ({series})");
    }
    for quantile in ["histogram_quantile(0.95,", "histogram_quantile(0.99,"] {
        assert!(
            exprs.contains(quantile),
            "no {quantile} over Herald's latency"
        );
    }
    let measurements: BTreeSet<String> = influx_queries(&dashboard)
        .iter()
        .flat_map(|q| influx_measurements(q))
        .collect();
    for m in ["http_reqs", "http_req_duration"] {
        assert!(measurements.contains(m), "no panel shows k6's {m}");
    }
    for p in [r#"percentile("value", 95)"#, r#"percentile("value", 99)"#] {
        assert!(queries.contains(p), "no k6 {p}");
    }
    assert!(
        queries.contains("\"name\""),
        "k6 latency should be split by request name"
    );
}
