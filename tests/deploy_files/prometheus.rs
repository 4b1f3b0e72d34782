//! deploy/prometheus: the scrape configuration.

use crate::compose::{compose, service};
use crate::yaml::{strings, text, yaml};

#[test]
fn prometheus_scrapes_app_metrics_on_port_5000() {
    let config = yaml("deploy/prometheus/prometheus.yml");
    let jobs = config["scrape_configs"]
        .as_vec()
        .expect("prometheus.yml has scrape_configs");
    let herald = jobs
        .iter()
        .find(|job| {
            job["static_configs"]
                .as_vec()
                .into_iter()
                .flatten()
                .any(|sc| strings(&sc["targets"], "targets").contains(&"app:5000".to_string()))
        })
        .expect("a scrape job targets app:5000");
    assert_eq!(text(&herald["metrics_path"], "metrics_path"), "/metrics");
    // Inside the compose network Prometheus reaches app's container port.
    let compose = compose();
    let container_ports: Vec<String> = strings(&service(&compose, "app")["ports"], "ports")
        .iter()
        .filter_map(|p| p.rsplit(':').next().map(String::from))
        .collect();
    assert!(
        container_ports.contains(&"5000".to_string()),
        "{container_ports:?}"
    );
}
