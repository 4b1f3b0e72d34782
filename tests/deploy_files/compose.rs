//! docker-compose.yml: its services as Compose reads them (environment,
//! defaults, commands, volumes, durations) and what each service must be.

use std::collections::{BTreeMap, BTreeSet};

use yaml_rust2::Yaml;

use crate::dockerfile::{env_of, healthcheck_command, runtime_stage};
use crate::files::{env_vars_herald_reads, read, repo};
use crate::grafana::dashboards_provider_path;
use crate::yaml::{scalar, strings, text, yaml};

pub fn compose() -> Yaml {
    yaml("docker-compose.yml")
}

pub fn service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    let service = &compose["services"][name];
    assert!(
        service.as_hash().is_some(),
        "docker-compose.yml has no service `{name}`"
    );
    service
}

/// `environment:` as a map, whether written as a map or as `KEY=value` items.
pub fn environment(service: &Yaml) -> BTreeMap<String, String> {
    match &service["environment"] {
        Yaml::Hash(map) => map
            .iter()
            .map(|(k, v)| (text(k, "env name"), scalar(v).unwrap_or_default()))
            .collect(),
        Yaml::Array(items) => items
            .iter()
            .map(|item| {
                let item = text(item, "env item");
                let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        Yaml::BadValue => BTreeMap::new(),
        other => panic!("environment should be a map or a list, found {other:?}"),
    }
}

/// The value Compose uses when the variable is not set: `${NAME:-default}` → `default`.
fn default_value(value: &str) -> String {
    match value
        .strip_prefix("${")
        .and_then(|rest| rest.strip_suffix('}'))
    {
        Some(inner) => match inner.split_once(":-").or_else(|| inner.split_once('-')) {
            Some((_, default)) => default.to_string(),
            None => String::new(),
        },
        None => value.to_string(),
    }
}

pub fn env_default(service: &Yaml, name: &str) -> String {
    let env = environment(service);
    let value = env
        .get(name)
        .unwrap_or_else(|| panic!("environment has no {name}: {env:?}"));
    default_value(value)
}

/// `command:` as words, whether a string or a list.
pub fn command_words(service: &Yaml) -> Vec<String> {
    match &service["command"] {
        Yaml::String(s) => s.split_whitespace().map(String::from).collect(),
        other => strings(other, "command"),
    }
}

pub fn depends_on(service: &Yaml) -> Vec<String> {
    match &service["depends_on"] {
        Yaml::Hash(map) => map.keys().map(|k| text(k, "depends_on")).collect(),
        other => strings(other, "depends_on"),
    }
}

/// Short-syntax volumes as (source, target).
pub fn volumes(service: &Yaml) -> Vec<(String, String)> {
    strings(&service["volumes"], "volumes")
        .iter()
        .map(|v| {
            let mut parts = v.split(':');
            let source = parts.next().unwrap_or_default().to_string();
            let target = parts
                .next()
                .unwrap_or_else(|| panic!("volume `{v}` has no target"));
            (source, target.to_string())
        })
        .collect()
}

pub fn volume_source_for<'a>(mounts: &'a [(String, String)], target: &str) -> Option<&'a str> {
    mounts
        .iter()
        .find(|(_, t)| t == target)
        .map(|(s, _)| s.as_str())
}

/// A Compose duration (`30s`, `1m30s`, `500ms`) in milliseconds.
fn duration_ms(value: &str) -> u64 {
    let mut total = 0;
    let mut rest = value.trim();
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let number: u64 = rest[..digits]
            .parse()
            .unwrap_or_else(|_| panic!("bad duration `{value}`"));
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            unit => panic!("unknown unit `{unit}` in duration `{value}`"),
        };
        total += number * factor;
        rest = &rest[unit_len..];
    }
    total
}

#[test]
fn compose_defines_app_provider_influxdb_grafana_load_test_and_prometheus() {
    let compose = compose();
    for name in [
        "app",
        "provider",
        "influxdb",
        "grafana",
        "load-test",
        "prometheus",
    ] {
        service(&compose, name);
    }
}

#[test]
fn compose_app_is_built_here_and_publishes_port_5000() {
    let compose = compose();
    let app = service(&compose, "app");
    let context = scalar(&app["build"]).or_else(|| scalar(&app["build"]["context"]));
    assert_eq!(
        context.as_deref(),
        Some("."),
        "app should build this repo's Dockerfile"
    );
    assert!(strings(&app["ports"], "ports").contains(&"5000:5000".to_string()));
}

#[test]
fn compose_app_keeps_its_data_in_a_named_volume_at_the_images_data_dir() {
    let compose = compose();
    let app = service(&compose, "app");
    let data_dir = env_of(&runtime_stage())
        .get("HERALD_DATA_DIR")
        .cloned()
        .expect("the image sets HERALD_DATA_DIR");
    let mounts = volumes(app);
    let source = volume_source_for(&mounts, &data_dir)
        .unwrap_or_else(|| panic!("app mounts nothing on {data_dir}: {mounts:?}"));
    assert!(
        !source.starts_with('.') && !source.starts_with('/'),
        "{data_dir} should be a named volume, not a bind mount: {source}"
    );
    assert!(
        !compose["volumes"][source].is_badvalue(),
        "volume `{source}` is not declared under top-level `volumes:`"
    );
}

#[test]
fn compose_app_calls_the_provider_service_with_the_key_the_simulator_accepts() {
    let compose = compose();
    let app = service(&compose, "app");
    let provider = service(&compose, "provider");
    assert_eq!(env_default(app, "PROVIDER_URL"), "http://provider:3001");
    assert!(depends_on(app).contains(&"provider".to_string()));
    let key = environment(app)["PROVIDER_API_KEY"].clone();
    assert!(
        !default_value(&key).is_empty(),
        "app needs a PROVIDER_API_KEY"
    );
    assert_eq!(
        environment(provider).get("PROVIDER_API_KEY"),
        Some(&key),
        "app and the simulator must agree on the API key"
    );
}

#[test]
fn compose_provider_runs_the_simulator_from_the_app_image() {
    let compose = compose();
    let app = service(&compose, "app");
    let provider = service(&compose, "provider");
    assert_eq!(command_words(provider), ["provider-sim"]);
    assert_eq!(
        provider["image"], app["image"],
        "provider should reuse app's image"
    );
    assert_eq!(
        provider["build"], app["build"],
        "provider must be buildable on its own: the README starts it before app"
    );
    assert!(strings(&provider["ports"], "ports").contains(&"3001:3001".to_string()));
    assert!(environment(provider).contains_key("SIM_ERROR_RATE"));
}

#[test]
fn compose_provider_healthcheck_probes_the_simulators_port() {
    let compose = compose();
    let test = strings(
        &service(&compose, "provider")["healthcheck"]["test"],
        "healthcheck",
    );
    assert_eq!(
        test.first().map(String::as_str),
        Some("CMD"),
        "exec form: no shell in the image"
    );
    assert!(
        test.iter().any(|w| w == "http://127.0.0.1:3001/health"),
        "the image's healthcheck probes 5000; the simulator listens on 3001: {test:?}"
    );
    assert_eq!(
        test[1..3],
        healthcheck_command()[..2],
        "same binary and subcommand as the image"
    );
}

#[test]
fn compose_and_dockerfile_env_vars_are_ones_herald_reads() {
    let known = env_vars_herald_reads();
    let compose = compose();
    let mut used: Vec<String> = ["app", "provider", "herald-1", "herald-2", "herald-3"]
        .iter()
        .flat_map(|name| environment(service(&compose, name)).into_keys())
        .collect();
    used.extend(env_of(&runtime_stage()).into_keys());
    // Read by the platform rather than a flag: the dynamic loader, the log filter.
    let platform = ["LD_LIBRARY_PATH", "RUST_LOG"];
    for name in used {
        assert!(
            known.contains(&name) || platform.contains(&name.as_str()),
            "{name} is not an env var any herald flag reads"
        );
    }
}

#[test]
fn compose_app_stop_grace_period_outlasts_herald_shutdown_grace() {
    let compose = compose();
    let app = service(&compose, "app");
    let grace_ms = match environment(app).get("HERALD_SHUTDOWN_GRACE_MS") {
        Some(value) => default_value(value).parse::<u64>().expect("a number of ms"),
        None => {
            let config = read("src/config.rs");
            let after = config
                .split("\"HERALD_SHUTDOWN_GRACE_MS\"")
                .nth(1)
                .expect("src/config.rs declares HERALD_SHUTDOWN_GRACE_MS");
            let default = after
                .split("default_value_t = ")
                .nth(1)
                .expect("HERALD_SHUTDOWN_GRACE_MS has a default");
            default
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '_')
                .filter(|c| *c != '_')
                .collect::<String>()
                .parse()
                .expect("a numeric default")
        }
    };
    let stop = text(&app["stop_grace_period"], "stop_grace_period");
    // The grace covers open connections and in-flight calls (at once); the
    // flush and exit come after it.
    assert!(
        duration_ms(&stop) >= grace_ms + 5_000,
        "stop_grace_period {stop} leaves no time to flush after a {grace_ms} ms grace"
    );
}

#[test]
fn compose_duration_parser_reads_compose_units() {
    assert_eq!(duration_ms("30s"), 30_000);
    assert_eq!(duration_ms("1m30s"), 90_000);
    assert_eq!(duration_ms("250ms"), 250);
}

#[test]
fn compose_influxdb_is_1_8_with_the_k6_database() {
    let compose = compose();
    let influxdb = service(&compose, "influxdb");
    assert_eq!(text(&influxdb["image"], "image"), "influxdb:1.8");
    assert_eq!(env_default(influxdb, "INFLUXDB_DB"), "k6");
    assert!(strings(&influxdb["ports"], "ports").contains(&"8086:8086".to_string()));
}

#[test]
fn compose_grafana_allows_anonymous_viewers_and_mounts_the_provisioning() {
    let compose = compose();
    let grafana = service(&compose, "grafana");
    assert!(text(&grafana["image"], "image").starts_with("grafana/grafana"));
    assert!(strings(&grafana["ports"], "ports").contains(&"3000:3000".to_string()));
    assert_eq!(env_default(grafana, "GF_AUTH_ANONYMOUS_ENABLED"), "true");
    assert_eq!(env_default(grafana, "GF_AUTH_ANONYMOUS_ORG_ROLE"), "Viewer");

    let mounts = volumes(grafana);
    assert_eq!(
        volume_source_for(&mounts, "/etc/grafana/provisioning"),
        Some("./deploy/grafana/provisioning")
    );
    let dashboards_dir = dashboards_provider_path();
    assert_eq!(
        volume_source_for(&mounts, &dashboards_dir),
        Some("./deploy/grafana/dashboards"),
        "the dashboards provider reads {dashboards_dir}; mount the dashboards there"
    );
    for (source, _) in &mounts {
        assert!(
            repo().join(source).exists(),
            "{source} does not exist in the repo"
        );
    }

    // The home dashboard path, if set, is a mounted file that exists.
    if let Some(home) = environment(grafana).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH") {
        let file = home
            .strip_prefix(&format!("{dashboards_dir}/"))
            .unwrap_or_else(|| panic!("{home} is outside {dashboards_dir}"));
        assert!(repo().join("deploy/grafana/dashboards").join(file).exists());
    }
}

#[test]
fn compose_load_test_runs_the_k6_script_into_influxdb_only_on_demand() {
    let compose = compose();
    let load = service(&compose, "load-test");
    assert!(text(&load["image"], "image").starts_with("grafana/k6"));
    assert!(
        !strings(&load["profiles"], "profiles").is_empty(),
        "load-test needs a profile so `docker-compose up -d` does not start it"
    );
    let influx_db = env_default(service(&compose, "influxdb"), "INFLUXDB_DB");
    assert_eq!(
        env_default(load, "K6_OUT"),
        format!("influxdb=http://influxdb:8086/{influx_db}")
    );
    assert_eq!(env_default(load, "BASE_URL"), "http://app:5000");
    assert!(depends_on(load).contains(&"app".to_string()));

    let mounts = volumes(load);
    let scripts = volume_source_for(&mounts, "/scripts").expect("load-test mounts /scripts");
    assert_eq!(scripts, "./tests/load");
    assert_eq!(command_words(load), ["run", "/scripts/herald.js"]);
    assert!(
        repo().join("tests/load/herald.js").is_file(),
        "tests/load/herald.js, the k6 script load-test runs, is missing"
    );
}

#[test]
fn compose_prometheus_mounts_the_scrape_config() {
    let compose = compose();
    let prometheus = service(&compose, "prometheus");
    assert!(text(&prometheus["image"], "image").starts_with("prom/prometheus"));
    assert!(strings(&prometheus["ports"], "ports").contains(&"9090:9090".to_string()));
    assert_eq!(
        volume_source_for(&volumes(prometheus), "/etc/prometheus/prometheus.yml"),
        Some("./deploy/prometheus/prometheus.yml")
    );
}

/// The services `docker-compose up -d <names>` starts: the names and their depends_on.
fn started_by(compose: &Yaml, names: &[&str]) -> BTreeSet<String> {
    let mut started = BTreeSet::new();
    let mut queue: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    while let Some(name) = queue.pop() {
        if started.insert(name.clone()) {
            queue.extend(depends_on(service(compose, &name)));
        }
    }
    started
}

#[test]
fn compose_readme_first_step_starts_the_infrastructure_without_app() {
    let compose = compose();
    let started = started_by(&compose, &["provider", "influxdb", "grafana"]);
    assert!(
        !started.contains("app"),
        "step 1 must not need app yet: {started:?}"
    );
    assert!(!started.contains("load-test"));
    assert!(
        started.contains("prometheus"),
        "grafana's Prometheus should come up with it"
    );
    // A service with no published image (none named, or this repo's) must be
    // buildable, or `up` would try to pull it.
    for name in &started {
        let s = service(&compose, name);
        let local = scalar(&s["image"]).is_none_or(|image| image.starts_with("herald"));
        assert!(
            !local || !s["build"].is_badvalue(),
            "{name} uses a local image but has no build section"
        );
    }
}
