//! docker-compose.yml's `scale` profile: three Herald nodes on the
//! scale-out engine, Redis and RabbitMQ under them, the entry proxy in
//! front (deploy/scale/nginx.conf), Prometheus's scrape jobs for all of
//! them and the scale-out dashboard: that it starts only on demand, that
//! Redis is durable, that the nodes are distinct, and that the proxy, the
//! scrape jobs and the panels name what the profile runs.

use std::collections::{BTreeMap, BTreeSet};

use yaml_rust2::Yaml;

use crate::compose::{
    command_words, compose, depends_on, env_default, service, volume_source_for, volumes,
};
use crate::dockerfile::{env_of, runtime_stage};
use crate::files::read;
use crate::grafana::{dashboard_at, prometheus_exprs};
use crate::promql::{exported_series, promql_names, promql_problems};
use crate::yaml::{scalar, strings, text, yaml};

const PROFILE: &str = "scale";
const NODES: [&str; 3] = ["herald-1", "herald-2", "herald-3"];
const ENTRY: &str = "entry";
const SCALE_DASHBOARD: &str = "deploy/grafana/dashboards/scale-out.json";

/// Series RabbitMQ's own Prometheus plugin serves, as read from a running
/// 3.10.8 node (Debian's package) with the plugin on: `/metrics` (the
/// aggregate) and `/metrics/detailed?family=queue_coarse_metrics` (per queue).
const RABBITMQ_SERIES: &str = "\
    rabbitmq_queue_messages rabbitmq_queue_messages_ready rabbitmq_queue_messages_unacked \
    rabbitmq_queues rabbitmq_global_messages_received_total \
    rabbitmq_global_messages_delivered_total rabbitmq_global_messages_redelivered_total \
    rabbitmq_global_messages_acknowledged_total rabbitmq_global_messages_confirmed_total \
    rabbitmq_detailed_queue_messages rabbitmq_detailed_queue_messages_ready \
    rabbitmq_detailed_queue_messages_unacked";

/// Series oliver006/redis_exporter serves (its README's list): per command
/// from `INFO commandstats`, and the memory and reachability gauges.
const REDIS_EXPORTER_SERIES: &str = "\
    redis_up redis_commands_total redis_commands_duration_seconds_total \
    redis_memory_used_bytes redis_connected_clients";

/// Every series the profile's scrape targets export, and Prometheus's own `up`.
fn scraped_series() -> BTreeSet<String> {
    let mut series = exported_series();
    for list in [RABBITMQ_SERIES, REDIS_EXPORTER_SERIES, "up"] {
        series.extend(list.split_whitespace().map(String::from));
    }
    series
}

fn profiles(service: &Yaml) -> Vec<String> {
    strings(&service["profiles"], "profiles")
}

/// The services of the profile, by name.
fn scale_services(compose: &Yaml) -> BTreeSet<String> {
    let services = compose["services"].as_hash().expect("services");
    services
        .iter()
        .filter(|(_, s)| profiles(s).iter().any(|p| p == PROFILE))
        .map(|(name, _)| text(name, "service name"))
        .collect()
}

/// The word after `flag` in a command.
fn flag<'a>(words: &'a [String], name: &str) -> Option<&'a str> {
    let at = words.iter().position(|w| w == name)?;
    words.get(at + 1).map(String::as_str)
}

/// The port Herald listens on in its image (`HERALD_LISTEN`).
fn herald_port() -> String {
    let listen = env_of(&runtime_stage())
        .get("HERALD_LISTEN")
        .cloned()
        .expect("the image sets HERALD_LISTEN");
    let (_, port) = listen.rsplit_once(':').expect("HERALD_LISTEN has a port");
    port.to_string()
}

/// Each node's `--instance-id`, by service name.
fn instance_ids(compose: &Yaml) -> BTreeMap<String, String> {
    NODES
        .iter()
        .map(|name| {
            let words = command_words(service(compose, name));
            let id = flag(&words, "--instance-id")
                .unwrap_or_else(|| panic!("{name} has no --instance-id: {words:?}"));
            (name.to_string(), id.to_string())
        })
        .collect()
}

#[test]
fn scale_services_start_only_with_the_scale_profile() {
    let compose = compose();
    let expected: BTreeSet<String> = ["redis", "rabbitmq", "redis-exporter", ENTRY]
        .into_iter()
        .chain(NODES)
        .map(String::from)
        .collect();
    assert_eq!(scale_services(&compose), expected);
    for name in &expected {
        assert_eq!(profiles(service(&compose, name)), [PROFILE], "{name}");
    }
    // Nothing that starts without a profile needs one of them.
    let services = compose["services"].as_hash().expect("services");
    for (name, s) in services {
        if profiles(s).is_empty() {
            let needs: BTreeSet<String> = depends_on(s).into_iter().collect();
            let scale: Vec<_> = needs.intersection(&expected).collect();
            assert!(scale.is_empty(), "{name:?} needs {scale:?}");
        }
    }
    for volume in ["redis-data", "rabbitmq-data"] {
        assert!(
            !compose["volumes"][volume].is_badvalue(),
            "volume `{volume}` is not declared under top-level `volumes:`"
        );
    }
}

#[test]
fn scale_redis_keeps_every_write_on_disk_and_never_evicts() {
    let compose = compose();
    let redis = service(&compose, "redis");
    assert!(text(&redis["image"], "image").starts_with("redis:7"));
    let words = command_words(redis);
    assert_eq!(words.first().map(String::as_str), Some("redis-server"));
    for (setting, value) in [
        ("--appendonly", "yes"),
        ("--appendfsync", "always"),
        ("--maxmemory-policy", "noeviction"),
    ] {
        assert_eq!(flag(&words, setting), Some(value), "{words:?}");
    }
    assert_eq!(
        volume_source_for(&volumes(redis), "/data"),
        Some("redis-data"),
        "the AOF lives in a named volume"
    );
}

#[test]
fn scale_rabbitmq_has_its_management_ui_and_prometheus_plugin() {
    let compose = compose();
    let rabbitmq = service(&compose, "rabbitmq");
    let image = text(&rabbitmq["image"], "image");
    assert!(
        image.starts_with("rabbitmq:3") && image.ends_with("-management"),
        "{image}"
    );
    assert!(strings(&rabbitmq["ports"], "ports").contains(&"15672:15672".to_string()));
    assert!(
        scalar(&rabbitmq["hostname"]).is_some(),
        "a fixed node name keeps its data"
    );
    let mounts = volumes(rabbitmq);
    let plugins = volume_source_for(&mounts, "/etc/rabbitmq/enabled_plugins")
        .expect("rabbitmq mounts its enabled_plugins");
    let plugins = read(plugins.trim_start_matches("./"));
    for plugin in ["rabbitmq_management", "rabbitmq_prometheus"] {
        assert!(
            plugins.contains(plugin),
            "{plugin} is not enabled: {plugins}"
        );
    }
    assert!(
        plugins.trim_end().ends_with("]."),
        "an Erlang term: {plugins}"
    );
}

#[test]
fn scale_herald_nodes_run_the_scaleout_engine_with_distinct_instance_ids() {
    let compose = compose();
    let app = service(&compose, "app");
    let ids = instance_ids(&compose);
    let distinct: BTreeSet<&String> = ids.values().collect();
    assert_eq!(distinct.len(), NODES.len(), "instance ids repeat: {ids:?}");
    for name in NODES {
        let node = service(&compose, name);
        let words = command_words(node);
        assert_eq!(words.first().map(String::as_str), Some("serve"), "{name}");
        assert_eq!(flag(&words, "--backend"), Some("scaleout"), "{name}");
        assert_eq!(
            flag(&words, "--redis-url"),
            Some("redis://redis:6379"),
            "{name}"
        );
        let amqp = flag(&words, "--amqp-url").unwrap_or_default();
        assert!(
            amqp.starts_with("amqp://") && amqp.contains("@rabbitmq:5672/"),
            "{name}: {amqp}"
        );
        assert_eq!(node["image"], app["image"], "{name} runs this repo's image");
        assert_eq!(node["build"], app["build"], "{name}");
        assert_eq!(
            env_default(node, "PROVIDER_URL"),
            env_default(app, "PROVIDER_URL")
        );
        let needs = depends_on(node);
        for backing in ["redis", "rabbitmq", "provider"] {
            assert!(needs.iter().any(|n| n == backing), "{name} needs {backing}");
        }
        assert!(
            node["ports"].is_badvalue(),
            "{name}: only the entry port is published"
        );
        assert_eq!(
            node["stop_grace_period"], app["stop_grace_period"],
            "{name}"
        );
    }
}

/// nginx.conf without comments, as `;`/`{`/`}`-ended statements of words.
fn nginx_statements(config: &str) -> Vec<Vec<String>> {
    let mut statements = Vec::new();
    let mut words = Vec::new();
    for line in config.lines() {
        let line = line.split('#').next().unwrap_or_default();
        for token in line.replace([';', '{', '}'], " \u{0} ").split_whitespace() {
            if token == "\u{0}" {
                if !words.is_empty() {
                    statements.push(std::mem::take(&mut words));
                }
            } else {
                words.push(token.to_string());
            }
        }
    }
    statements
}

#[test]
fn scale_entry_proxy_spreads_calls_over_all_three_nodes() {
    let compose = compose();
    let entry = service(&compose, ENTRY);
    let config = volume_source_for(&volumes(entry), "/etc/nginx/nginx.conf")
        .expect("the entry proxy mounts its nginx.conf")
        .trim_start_matches("./")
        .to_string();
    let statements = nginx_statements(&read(&config));
    let find =
        |name: &str| -> Vec<&Vec<String>> { statements.iter().filter(|s| s[0] == name).collect() };
    let upstreams = find("upstream");
    assert_eq!(upstreams.len(), 1, "one upstream in {config}");
    let upstream = &upstreams[0][1];
    let servers: BTreeSet<&str> = find("server")
        .iter()
        .filter_map(|s| s.get(1).map(String::as_str))
        .filter(|address| address.contains(':'))
        .collect();
    let port = herald_port();
    let nodes: BTreeSet<String> = NODES.iter().map(|n| format!("{n}:{port}")).collect();
    let nodes: BTreeSet<&str> = nodes.iter().map(String::as_str).collect();
    assert_eq!(servers, nodes, "{config} names every node on Herald's port");
    assert_eq!(find("proxy_pass")[0][1], format!("http://{upstream}"));
    // A POST that reached a node is never sent to another one as well.
    let next = find("proxy_next_upstream");
    assert!(
        next.iter()
            .all(|s| !s.iter().any(|w| w == "non_idempotent")),
        "{next:?}"
    );

    let listen = &find("listen")[0][1];
    let published = strings(&entry["ports"], "ports");
    assert_eq!(published, [format!("{listen}:{listen}")], "the entry port");
    for node in NODES {
        assert!(
            depends_on(entry).iter().any(|n| n == node),
            "entry needs {node}"
        );
    }
}

#[test]
fn scale_nginx_statements_are_read_without_comments() {
    let statements = nginx_statements("a b; # c;\nd { e f:1 x=y; }\n");
    assert_eq!(
        statements,
        [vec!["a", "b"], vec!["d"], vec!["e", "f:1", "x=y"]]
    );
}

/// Prometheus's scrape jobs by name: (metrics path, targets with their labels).
fn scrape_jobs() -> BTreeMap<String, (String, Vec<(String, Yaml)>)> {
    let config = yaml("deploy/prometheus/prometheus.yml");
    let jobs = config["scrape_configs"].as_vec().expect("scrape_configs");
    jobs.iter()
        .map(|job| {
            let path = scalar(&job["metrics_path"]).unwrap_or_else(|| "/metrics".into());
            let targets = job["static_configs"]
                .as_vec()
                .into_iter()
                .flatten()
                .flat_map(|sc| {
                    let labels = sc["labels"].clone();
                    strings(&sc["targets"], "targets")
                        .into_iter()
                        .map(move |t| (t, labels.clone()))
                })
                .collect();
            (text(&job["job_name"], "job_name"), (path, targets))
        })
        .collect()
}

#[test]
fn scale_prometheus_scrapes_each_node_by_its_instance_id_and_the_exporters() {
    let compose = compose();
    let jobs = scrape_jobs();
    let (_, targets) = jobs.get("herald-scale").expect("a herald-scale job");
    let labelled: BTreeMap<String, String> = targets
        .iter()
        .map(|(target, labels)| (target.clone(), text(&labels["node"], "node label")))
        .collect();
    let port = herald_port();
    let expected: BTreeMap<String, String> = instance_ids(&compose)
        .into_iter()
        .map(|(name, id)| (format!("{name}:{port}"), id))
        .collect();
    assert_eq!(
        labelled, expected,
        "every node, labelled by its --instance-id"
    );

    let (path, targets) = jobs
        .get("rabbitmq-queues")
        .expect("a per-queue RabbitMQ job");
    assert_eq!(path, "/metrics/detailed");
    assert_eq!(
        targets[0].0, "rabbitmq:15692",
        "the rabbitmq_prometheus plugin's port"
    );
    assert_eq!(jobs.get("rabbitmq").map(|j| &j.1[0].0), Some(&targets[0].0));
    let config = yaml("deploy/prometheus/prometheus.yml");
    let queues_job = config["scrape_configs"]
        .as_vec()
        .into_iter()
        .flatten()
        .find(|job| job["job_name"].as_str() == Some("rabbitmq-queues"))
        .expect("rabbitmq-queues");
    assert_eq!(
        strings(&queues_job["params"]["family"], "family"),
        ["queue_coarse_metrics"]
    );
    let (_, targets) = jobs.get("redis").expect("a redis job");
    let (host, _) = targets[0].0.split_once(':').expect("host:port");
    assert!(profiles(service(&compose, host)).contains(&PROFILE.to_string()));
    assert_eq!(
        env_default(service(&compose, host), "REDIS_ADDR"),
        "redis://redis:6379"
    );
}

/// The `job="…"` label values an expression selects.
fn jobs_selected(expr: &str) -> Vec<String> {
    expr.split("job=\"")
        .skip(1)
        .filter_map(|rest| rest.split_once('"').map(|(job, _)| job.to_string()))
        .collect()
}

#[test]
fn scale_dashboard_queries_series_the_profile_scrapes_per_node_and_for_the_cluster() {
    let dashboard = dashboard_at(SCALE_DASHBOARD);
    let exprs = prometheus_exprs(&dashboard);
    let known = scraped_series();
    let jobs = scrape_jobs();
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let problems = promql_problems(expr, &known);
        assert!(problems.is_empty(), "`{expr}`: {problems:?}");
        let selected = jobs_selected(expr);
        assert!(!selected.is_empty(), "`{expr}` selects no scrape job");
        for job in selected {
            assert!(jobs.contains_key(&job), "`{expr}`: no scrape job `{job}`");
        }
        used.extend(promql_names(expr).map(|(m, _)| m).unwrap_or_default());
    }
    for (series, what) in [
        (
            "rabbitmq_detailed_queue_messages_ready",
            "RabbitMQ queue depth",
        ),
        ("redis_commands_duration_seconds_total", "Redis latency"),
        ("herald_http_requests_total", "the API's answers"),
        ("herald_provider_attempts_total", "provider calls"),
        (
            "herald_recovered_leases_total",
            "leases taken back from a killed node",
        ),
    ] {
        assert!(used.contains(series), "no panel shows {what} ({series})");
    }
    let per_node = exprs
        .iter()
        .filter(|e| e.contains("by (node)") || e.contains(", node)"));
    assert!(per_node.count() >= 4, "panels per node");
    let cluster = exprs
        .iter()
        .filter(|e| e.contains("herald_") && !e.contains("node"));
    assert!(cluster.count() >= 4, "panels for the cluster");
    assert!(
        exprs.iter().any(|e| e.contains("by (queue)")),
        "queue depth per queue"
    );
}

#[test]
fn scale_job_selector_reader_finds_every_job() {
    let expr = r#"sum(a{job="x"}) / sum(b{job="y",le="1"})"#;
    assert_eq!(jobs_selected(expr), ["x", "y"]);
    assert!(jobs_selected("sum(a)").is_empty());
}
