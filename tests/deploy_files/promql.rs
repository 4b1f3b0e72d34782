//! The dashboard's Prometheus queries name only metrics Herald exports
//! (docs/metrics.md): a PromQL name extractor and its check.

use std::collections::BTreeSet;

use crate::files::read;
use crate::grafana::{dashboard, prometheus_exprs};

/// The series names docs/metrics.md lists: counters and gauges as named,
/// histograms as their `_bucket`, `_sum` and `_count` series.
pub fn exported_series() -> BTreeSet<String> {
    let mut series = BTreeSet::new();
    for line in read("docs/metrics.md").lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | `name` | type | labels | what |
        if cells.len() < 4 || !cells[1].starts_with('`') {
            continue;
        }
        let name = cells[1].trim_matches('`');
        match cells[2] {
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    series.insert(format!("{name}{suffix}"));
                }
            }
            "counter" | "gauge" => {
                series.insert(name.to_string());
            }
            other => panic!("docs/metrics.md: unknown type `{other}` for {name}"),
        }
    }
    assert!(
        series.len() >= 10,
        "docs/metrics.md's table did not parse: {series:?}"
    );
    series
}

const PROMQL_AGGREGATIONS: &str = "\
    sum min max avg group stddev stdvar count count_values bottomk topk quantile \
    limitk limit_ratio";
const PROMQL_FUNCTIONS: &str = "\
    abs absent absent_over_time avg_over_time ceil changes clamp clamp_max clamp_min \
    count_over_time delta deriv floor histogram_quantile idelta increase irate \
    label_replace last_over_time max_over_time min_over_time quantile_over_time rate \
    resets round scalar sort sort_desc sqrt sum_over_time time timestamp vector";
/// Keywords followed by a label list in parentheses.
const PROMQL_LABEL_LIST_KEYWORDS: &str = "\
    by without on ignoring group_left group_right";
const PROMQL_KEYWORDS: &str = "\
    and or unless bool offset inf nan";

/// Whether a whitespace-separated word list holds `word`.
fn listed(list: &str, word: &str) -> bool {
    list.split_whitespace().any(|w| w == word)
}

/// The metric names and function names a PromQL expression uses. Label
/// matchers, label lists, ranges, strings, numbers and Grafana variables are skipped.
pub fn promql_names(expr: &str) -> Result<(Vec<String>, Vec<String>), String> {
    let chars: Vec<char> = expr.chars().collect();
    let (mut metrics, mut functions) = (Vec::new(), Vec::new());
    let mut i = 0;
    let skip_to = |from: usize, close: char| -> Result<usize, String> {
        chars[from..]
            .iter()
            .position(|c| *c == close)
            .map(|p| from + p + 1)
            .ok_or_else(|| format!("unclosed `{close}` in `{expr}`"))
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            // Label matchers hold no metric names (strings in them may hold `}` in theory; not here).
            i = skip_to(i, '}')?;
        } else if c == '[' {
            i = skip_to(i, ']')?;
        } else if c == '"' || c == '\'' || c == '`' {
            i = skip_to(i + 1, c)?;
        } else if c == '$' {
            i += 1;
            while i < chars.len() && (chars[i].is_alphanumeric() || "_{}".contains(chars[i])) {
                i += 1;
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let lower = word.to_ascii_lowercase();
            let called = chars.get(next) == Some(&'(');
            if listed(PROMQL_LABEL_LIST_KEYWORDS, lower.as_str()) {
                if called {
                    i = skip_to(next, ')')?;
                }
            } else if listed(PROMQL_AGGREGATIONS, word.as_str()) || called {
                functions.push(word);
            } else if !listed(PROMQL_KEYWORDS, lower.as_str()) {
                metrics.push(word);
            }
        } else {
            i += 1;
        }
    }
    Ok((metrics, functions))
}

/// What is wrong with an expression's names, if anything: `exported` is
/// every series the scraped targets export.
pub fn promql_problems(expr: &str, exported: &BTreeSet<String>) -> Vec<String> {
    match promql_names(expr) {
        Err(error) => vec![error],
        Ok((metrics, functions)) => {
            let mut problems: Vec<String> = Vec::new();
            if metrics.is_empty() {
                problems.push("names no metric".to_string());
            }
            problems.extend(
                metrics
                    .into_iter()
                    .filter(|m| !exported.contains(m))
                    .map(|m| {
                        format!(
                            "`{m}` is not a series Herald (docs/metrics.md) or an exporter exports"
                        )
                    }),
            );
            problems.extend(
                functions
                    .into_iter()
                    .filter(|f| {
                        !listed(PROMQL_FUNCTIONS, f.as_str())
                            && !listed(PROMQL_AGGREGATIONS, f.as_str())
                    })
                    .map(|f| format!("`{f}` is not a PromQL function")),
            );
            problems
        }
    }
}

#[test]
fn promql_checker_accepts_exported_series_and_rejects_others() {
    let exported = exported_series();
    let fine = [
        r#"sum by (route) (rate(herald_http_requests_total{status=~"5.."}[$__rate_interval]))"#,
        "histogram_quantile(0.99, sum by (le, route) (rate(herald_http_request_duration_seconds_bucket[5m])))",
        "sum(rate(herald_group_commit_batch_size_sum[1m])) / sum(rate(herald_group_commit_batch_size_count[1m]))",
        "max(herald_circuit_breaker_state) > bool 1",
        "sum(herald_outbox_depth) without (priority)",
    ];
    for expr in fine {
        assert_eq!(
            promql_problems(expr, &exported),
            Vec::<String>::new(),
            "{expr}"
        );
    }
    let wrong = [
        "sum(rate(herald_bogus_total[5m]))",
        // A histogram's bare name is no series.
        "rate(herald_http_request_duration_seconds[5m])",
        "sum by (job) (up)",
        "rate_of(herald_http_requests_total[5m])",
        r#"sum(rate({__name__="herald_http_requests_total"}[5m]))"#,
    ];
    for expr in wrong {
        assert!(
            !promql_problems(expr, &exported).is_empty(),
            "should be rejected: {expr}"
        );
    }
}

#[test]
fn grafana_prometheus_queries_name_only_metrics_herald_exports() {
    let exported = exported_series();
    let exprs = prometheus_exprs(&dashboard());
    assert!(!exprs.is_empty(), "the dashboard has no Prometheus query");
    for expr in exprs {
        let problems = promql_problems(&expr, &exported);
        assert!(problems.is_empty(), "`{expr}`: {problems:?}");
    }
}
