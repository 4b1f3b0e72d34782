#!/usr/bin/env python3
"""Turns one load run's files into a short Markdown report (scripts/load-test.sh).

One run:  report.py --label L --scenario S --profile P --k6-rc N --summary summary.json
                    --timeline timeline.csv --sim-stats stats.json --ready ready.json
                    --metrics metrics.txt --drained 0|1 [--arrival TEXT] [--capacity TEXT]
Combine:  report.py --combine report-a.md report-b.md ...   (one table of every run)

The per-run report ends with a machine-readable line `<!-- row: {...} -->`
that --combine reads back.
"""

import argparse
import csv
import json
import re
import sys

COLUMNS = [
    ("run", "run"),
    ("arrival", "arrival (req/s)"),
    ("requests", "requests"),
    ("create", "create p95 / p99 (ms)"),
    ("process", "process p95 / p99 (ms)"),
    ("status", "status p95 (ms)"),
    ("server", "inside Herald: create · process p95 / p99 (ms)"),
    ("5xx", "Herald 5xx"),
    ("delivered", "delivered within bound"),
    ("not_settled", "not settled / failed (k6 / Herald after drain)"),
    ("delivery_ms", "create→sent p50 / p95 (s)"),
    ("backlog", "backlog peak → after drain"),
    ("rate", "2xx/s: mean / saturated / best 10 s (provider capacity)"),
    ("calls", "provider calls: 2xx / 429 / 5xx"),
    ("dups", "duplicate deliveries"),
    ("cpu", "cores: machine / herald / sim"),
    ("probe", "curl GET /health p50 / p99 / max (ms)"),
    ("pressure", "io / cpu pressure"),
    ("thresholds", "k6 thresholds"),
]


def load_json(path):
    try:
        with open(path) as f:
            text = f.read().strip()
        return json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}


def fmt_ms(v):
    if v is None:
        return "–"
    return f"{v:.1f}" if v < 100 else f"{v:.0f}"


def metric(summary, name):
    return summary.get("metrics", {}).get(name, {})


def thresholds(summary):
    """(name, expression, passed) for every threshold; in --summary-export a
    threshold's value is true when it was crossed (failed)."""
    out = []
    for name, m in summary.get("metrics", {}).items():
        for expr, crossed in (m.get("thresholds") or {}).items():
            out.append((name, expr, not crossed))
    return sorted(out)


def prometheus(path):
    samples = {}
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("#") or not line.strip():
                    continue
                m = re.match(r'^([a-zA-Z_:][\w:]*)(\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})?\s+(\S+)', line)
                if m:
                    samples[(m.group(1), m.group(2) or "")] = float(m.group(3))
    except OSError:
        pass
    return samples


def timeline(path):
    rows = []
    try:
        with open(path) as f:
            for r in csv.DictReader(f):
                try:
                    rows.append({k: float(v) for k, v in r.items() if v not in ("", None)})
                except ValueError:
                    continue
    except OSError:
        pass
    return [r for r in rows if "delivered" in r and "t_s" in r]


def rates(rows, active_until_s, saturated_backlog=20):
    """2xx per second from the simulator's counts sampled every 5 s: the mean
    while Herald had work, the mean over the intervals that began with a
    backlog of at least `saturated_backlog` (Herald saturated: this is its
    delivery rate), and the best 10 s window."""
    if len(rows) < 2:
        return None, None, None
    best = 0.0
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            span = rows[j]["t_s"] - rows[i]["t_s"]
            if span >= 9.5:
                best = max(best, (rows[j]["delivered"] - rows[i]["delivered"]) / span)
                break
    busy = [r for r in rows if r["t_s"] <= active_until_s] if active_until_s else rows
    if len(busy) < 2:
        busy = rows
    span = busy[-1]["t_s"] - rows[0]["t_s"]
    mean = (busy[-1]["delivered"] - rows[0]["delivered"]) / span if span > 0 else None
    sat_n = sat_t = 0.0
    for a, b in zip(rows, rows[1:]):
        if a.get("pending", 0) >= saturated_backlog:
            sat_n += b["delivered"] - a["delivered"]
            sat_t += b["t_s"] - a["t_s"]
    saturated = sat_n / sat_t if sat_t >= 20 else None
    return mean, saturated, best


def histogram_quantile(prom, name, q, **labels):
    """The q-quantile of a Prometheus histogram (linear inside the bucket, as
    histogram_quantile does), from the cumulative buckets whose labels match."""
    buckets = []
    for (metric_name, lbls), value in prom.items():
        if metric_name != name + "_bucket":
            continue
        parsed = dict(re.findall(r'(\w+)="([^"]*)"', lbls))
        if any(parsed.get(k) != v for k, v in labels.items()):
            continue
        le = parsed.get("le")
        buckets.append((float("inf") if le == "+Inf" else float(le), value))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return None


def herald_side(prom, q, method, route):
    v = histogram_quantile(prom, "herald_http_request_duration_seconds", q, method=method, route=route)
    return None if v is None else v * 1000


def probe_times(path):
    """GET /health times (ms) measured by curl during the k6 run, and failures."""
    times, failures = [], 0
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) != 2:
                    continue
                if parts[0] == "200":
                    times.append(float(parts[1]) * 1000)
                else:
                    failures += 1
    except (OSError, TypeError, ValueError):
        pass
    return sorted(times), failures


def quantile(sorted_values, q):
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def herald_failed_total(prom):
    return prom.get(("herald_requests_finished_total", '{status="failed"}'), 0)


def one(args):
    summary = load_json(args.summary)
    stats = load_json(args.sim_stats)
    ready = load_json(args.ready)
    prom = prometheus(args.metrics)
    rows = timeline(args.timeline)

    create = metric(summary, "http_req_duration{name:create}")
    process = metric(summary, "http_req_duration{name:process}")
    status = metric(summary, "http_req_duration{name:status}")
    delivered = metric(summary, "delivered")
    d_pass, d_fail = delivered.get("passes", 0), delivered.get("fails", 0)
    total = d_pass + d_fail
    count = lambda name: int(metric(summary, name).get("count", 0))
    sent, failed = count("requests_sent"), count("requests_failed")
    not_settled = count("requests_not_settled")
    create_failed, process_failed = count("requests_create_failed"), count("requests_process_failed")
    dropped = count("dropped_iterations")
    five = count("herald_5xx")
    no_answer = count("herald_no_answer")
    dms = metric(summary, "delivery_ms")
    pend = metric(summary, "herald_pending")
    by_status = {int(k): v for k, v in (stats.get("by_status") or {}).items()}
    ok2xx = sum(v for k, v in by_status.items() if 200 <= k < 300)
    s429 = by_status.get(429, 0)
    s5xx = sum(v for k, v in by_status.items() if k >= 500)
    other4xx = sum(v for k, v in by_status.items() if 400 <= k < 500 and k != 429)
    dups = stats.get("duplicate_deliveries")

    # Busy until the first sample where the backlog was 0 after having been > 0
    # late in the run; simpler: until the last sample with pending > 0, plus one.
    active_until = None
    for i, r in enumerate(rows):
        if r.get("pending", 0) > 0 and i + 1 < len(rows):
            active_until = rows[i + 1]["t_s"]
    mean_rate, sat_rate, best10 = rates(rows, active_until)
    busy_rows = [r for r in rows if active_until is None or r["t_s"] <= active_until]
    cpu = lambda key: (sum(r.get(key, 0) for r in busy_rows) / len(busy_rows)) if busy_rows else None
    calls_per10 = None
    if len(rows) >= 2:
        best = 0.0
        for i in range(len(rows)):
            for j in range(i + 1, len(rows)):
                span = rows[j]["t_s"] - rows[i]["t_s"]
                if span >= 9.5:
                    admitted = (rows[j]["calls_total"] - rows[j]["s429"]) - (rows[i]["calls_total"] - rows[i]["s429"])
                    best = max(best, admitted / span * 10)
                    break
        calls_per10 = best

    herald_attempts = {
        m.group(1): v
        for (name, labels), v in prom.items()
        if name == "herald_provider_attempts_total" and (m := re.search(r'outcome="([^"]+)"', labels))
    }
    herald_http5xx = sum(
        v for (name, labels), v in prom.items()
        if name == "herald_http_requests_total" and re.search(r'status="5\d\d"', labels)
    )
    created_total = prom.get(("herald_requests_created_total", ""))

    server = {
        "create": [herald_side(prom, q, "POST", "/v1/requests") for q in (0.95, 0.99)],
        "process": [herald_side(prom, q, "POST", "/v1/requests/{id}/process") for q in (0.95, 0.99)],
        "status": [herald_side(prom, q, "GET", "/v1/requests/{id}") for q in (0.95, 0.99)],
    }
    flush = [histogram_quantile(prom, "herald_group_commit_flush_duration_seconds", q) for q in (0.5, 0.99)]
    flush = [None if v is None else v * 1000 for v in flush]
    pressure = lambda key: (sum(r.get(key, 0) for r in busy_rows) / len(busy_rows)) if busy_rows and any(key in r for r in busy_rows) else None
    io_pressure, cpu_pressure = pressure("io_some_pct"), pressure("cpu_some_pct")

    probes, probe_failures = probe_times(args.probe)

    ths = thresholds(summary)
    th_ok = all(p for _, _, p in ths) if ths else None
    th_text = "pass" if th_ok else ("FAIL: " + ", ".join(f"{n} {e}" for n, e, p in ths if not p) if ths else "no summary")

    def pct(a, b):
        return f"{100 * a / b:.2f}%" if b else "–"

    row = {
        "run": f"{args.label} ({args.profile})",
        "arrival": args.arrival or "",
        "requests": str(total),
        "create": f"{fmt_ms(create.get('p(95)'))} / {fmt_ms(create.get('p(99)'))}",
        "process": f"{fmt_ms(process.get('p(95)'))} / {fmt_ms(process.get('p(99)'))}",
        "status": fmt_ms(status.get("p(95)")),
        "server": " · ".join(f"{fmt_ms(a)} / {fmt_ms(b)}" for a, b in (server["create"], server["process"])),
        "5xx": str(five) + (f" (+{no_answer} unanswered)" if no_answer else ""),
        "delivered": f"{pct(d_pass, total)} ({d_pass}/{total})",
        "not_settled": f"{not_settled} / {failed}/{int(herald_failed_total(prom))}" + (f" (+{create_failed + process_failed} refused)" if create_failed + process_failed else ""),
        "delivery_ms": (f"{dms['med'] / 1000:.2f} / {dms['p(95)'] / 1000:.2f}" if dms.get("med") is not None else "–"),
        "backlog": f"{int(pend.get('max', 0))} → {ready.get('pending', '?')}",
        "rate": (f"{mean_rate:.2f} / {'–' if sat_rate is None else f'{sat_rate:.2f}'} / {best10:.2f} ({args.capacity})" if mean_rate is not None and best10 is not None else "–"),
        "calls": f"{ok2xx} / {s429} / {s5xx}" + (f" (+{other4xx} other 4xx)" if other4xx else ""),
        "dups": str(dups) if dups is not None else "?",
        "cpu": (f"{cpu('machine_cores'):.2f} / {cpu('herald_cores'):.2f} / {cpu('sim_cores'):.2f}" if busy_rows else "–"),
        "probe": ("–" if not probes else f"{fmt_ms(quantile(probes, 0.5))} / {fmt_ms(quantile(probes, 0.99))} / {fmt_ms(probes[-1])}"),
        "pressure": ("–" if io_pressure is None else f"{io_pressure:.0f}% / {cpu_pressure:.0f}%"),
        "thresholds": th_text + ("" if args.k6_rc in (0, 99) else f" (k6 exit {args.k6_rc})"),
    }

    out = []
    out.append(f"### {args.label}: scenario `{args.scenario}`, simulator `{args.profile}`")
    out.append("")
    out.append(f"- requests started: {total} (k6 dropped {dropped} arrivals for lack of VUs)")
    out.append(f"- create p95 / p99: {row['create']} ms; process p95 / p99: {row['process']} ms; status p95: {row['status']} ms")
    out.append(
        "- inside Herald (herald_http_request_duration_seconds, bucket-interpolated) p95 / p99: "
        + "; ".join(f"{k} {fmt_ms(a)} / {fmt_ms(b)} ms" for k, (a, b) in server.items())
        + (f"; group-commit fsync p50 / p99 {fmt_ms(flush[0])} / {fmt_ms(flush[1])} ms" if flush[0] is not None else "")
    )
    if probes:
        out.append(
            f"- GET /health timed by curl outside k6 ({len(probes)} probes, {probe_failures} failed): "
            f"p50 {fmt_ms(quantile(probes, 0.5))}, p95 {fmt_ms(quantile(probes, 0.95))}, p99 {fmt_ms(quantile(probes, 0.99))}, max {fmt_ms(probes[-1])} ms"
        )
    out.append(f"- Herald 5xx seen by k6: {five}; requests without an answer: {no_answer}; 5xx in Herald's /metrics: {herald_http5xx:g}")
    out.append(f"- delivered within the polling bound: {row['delivered']}; sent {sent}, failed {failed}, not settled {not_settled}, create refused {create_failed}, process refused {process_failed}")
    if dms:
        out.append(f"- create→sent as Herald recorded it: p50 {dms.get('med', 0) / 1000:.2f} s, p95 {dms.get('p(95)', 0) / 1000:.2f} s, max {dms.get('max', 0) / 1000:.2f} s")
    out.append(f"- backlog (GET /ready pending): peak {int(pend.get('max', 0))} while requests arrived; {ready.get('pending', '?')} at the end (drained within the bound: {'yes' if args.drained == 1 else 'no'})")
    if mean_rate is not None:
        out.append(
            f"- provider 2xx per second while Herald had work: mean {mean_rate:.2f}"
            + ("" if sat_rate is None else f", saturated (backlog ≥ 20) {sat_rate:.2f}")
            + f", best 10 s window {best10:.2f}; provider capacity {args.capacity}, Herald's limit 50 per sliding 10 s by default (--rate-limit)"
        )
    if calls_per10 is not None:
        out.append(f"- provider calls admitted (not 429) in the busiest 10 s: {calls_per10:.0f}")
    out.append(f"- provider /stats: calls {stats.get('calls_total', '?')}, by status {json.dumps(by_status, sort_keys=True)}, delivered {stats.get('delivered', '?')}, unique {stats.get('unique_delivered', '?')}, duplicate deliveries {dups}")
    if herald_attempts:
        out.append("- Herald provider attempts by outcome: " + ", ".join(f"{k} {v:g}" for k, v in sorted(herald_attempts.items())))
    herald_failed = prom.get(("herald_requests_finished_total", '{status="failed"}'), 0)
    herald_sent = prom.get(("herald_requests_finished_total", '{status="sent"}'), 0)
    if created_total is not None and stats.get("unique_delivered") is not None:
        lost = created_total - stats["unique_delivered"] - herald_failed
        out.append(
            f"- {'after the drain' if args.drained == 1 else 'at the end (backlog not drained)'}: "
            f"Herald created {created_total:g}, sent {herald_sent:g}, failed for good {herald_failed:g}; "
            f"the provider delivered {stats['unique_delivered']} distinct ids → unaccounted {lost:g}"
            + (" (the backlog)" if args.drained != 1 else "")
        )
    out.append(f"- cores busy while Herald had work (of 2; k6 included in machine): {row['cpu']}")
    if io_pressure is not None:
        out.append(f"- machine pressure while Herald had work (/proc/pressure, some avg10): io {io_pressure:.0f}%, cpu {cpu_pressure:.0f}%")
    out.append(f"- k6 thresholds: {th_text}" + ("" if args.k6_rc in (0, 99) else f" (k6 exit {args.k6_rc})"))
    for name, expr, passed in ths:
        out.append(f"  - {'✓' if passed else '✗'} `{name}` `{expr}`")
    out.append("")
    out.append(f"<!-- row: {json.dumps(row, ensure_ascii=False)} -->")
    print("\n".join(out))


def combine(paths):
    rows = []
    for p in paths:
        try:
            with open(p) as f:
                m = re.search(r"<!-- row: (\{.*\}) -->", f.read())
        except OSError:
            continue
        if m:
            rows.append(json.loads(m.group(1)))
    keys = [k for k, _ in COLUMNS]
    print("| " + " | ".join(h for _, h in COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for r in rows:
        print("| " + " | ".join(r.get(k, "") for k in keys) + " |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--combine", nargs="+")
    ap.add_argument("--label")
    ap.add_argument("--scenario")
    ap.add_argument("--profile")
    ap.add_argument("--arrival")
    ap.add_argument("--capacity", default="5 calls/s")
    ap.add_argument("--k6-rc", type=int, default=0)
    ap.add_argument("--summary")
    ap.add_argument("--timeline")
    ap.add_argument("--sim-stats")
    ap.add_argument("--ready")
    ap.add_argument("--metrics")
    ap.add_argument("--drained", type=int, default=0)
    ap.add_argument("--probe")
    args = ap.parse_args()
    if args.combine:
        combine(args.combine)
    else:
        one(args)


if __name__ == "__main__":
    sys.exit(main())
