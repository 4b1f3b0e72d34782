#!/usr/bin/env python3
"""Figures for scripts/provider-capacity.sh, from the gateway's own records
and the simulator's /stats (all on loopback).

  report.py herald --base URL --ids FILE --stats FILE --secs S --capacity R
  report.py hammer --base URL --stats FILE --secs S --capacity R
  report.py backlog --base URL --count N            (create + process N requests)
  report.py window --first FILE --last FILE --secs S [--bound B] [--capacity R]

`herald`/`hammer` print one JSON object: created, sent, failed, not_final,
calls, the share of calls answered 429, admitted calls per second (calls the
provider counted: every answer but a 429) over S seconds divided by the
capacity R, and p50/p99 of (sent - process) over the requests sent.
`window` compares two /stats snapshots S seconds apart.
"""
import argparse
import concurrent.futures
import http.client
import json
import sys
import threading
import urllib.parse

_local = threading.local()


def call(base, method, path, body=None):
    url = urllib.parse.urlsplit(base)
    conn = getattr(_local, "conn", None)
    if conn is None or getattr(_local, "base", None) != base:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        _local.conn, _local.base = conn, base
    headers = {"Content-Type": "application/json"} if body is not None else {}
    try:
        conn.request(method, path, None if body is None else json.dumps(body), headers)
        answer = conn.getresponse()
        data = answer.read()
    except (OSError, http.client.HTTPException):
        _local.conn = None
        raise
    return answer.status, (json.loads(data) if data else None)


def percentile(values, share):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def provider_figures(stats, secs, capacity):
    by_status = {int(k): v for k, v in stats["by_status"].items()}
    calls = stats["calls_total"]
    refused = by_status.get(429, 0)
    admitted = calls - refused
    return {
        "calls": calls,
        "by_status": by_status,
        "share_429": round(refused / calls, 4) if calls else 0.0,
        "admitted_per_sec": round(admitted / secs, 3),
        "admitted_per_sec_over_capacity": round(admitted / secs / capacity, 4),
    }


def summary(statuses, latencies_ms, stats, secs, capacity):
    sent = statuses.count("sent")
    failed = statuses.count("failed")
    figures = {
        "created": len(statuses),
        "sent": sent,
        "failed": failed,
        "not_final": len(statuses) - sent - failed,
        "sent_minus_process_p50_s": round(percentile(latencies_ms, 0.50) / 1000, 1) if latencies_ms else None,
        "sent_minus_process_p99_s": round(percentile(latencies_ms, 0.99) / 1000, 1) if latencies_ms else None,
        "secs": round(secs, 1),
    }
    figures.update(provider_figures(stats, secs, capacity))
    return figures


def window_slack(base, limit, window_ms):
    """How far apart the provider saw each call and the `limit`-th before it,
    beyond its window: the margin arrival jitter left (ms; negative would be
    a window over its limit). Over admitted calls only (429s are not counted)."""
    _, calls = call(base, "GET", "/calls")
    admitted = [c["at_ms"] for c in calls if c["status"] != 429]
    slack = [admitted[i + limit] - admitted[i] - window_ms for i in range(len(admitted) - limit)]
    if not slack:
        return None
    return {"min": min(slack), "p1": percentile(slack, 0.01), "p50": percentile(slack, 0.5)}


def herald(args):
    ids = [line.split()[-1] for line in open(args.ids) if line.strip()]

    def one(rid):
        status, history = call(args.base, "GET", f"/v1/requests/{rid}/events")
        if status != 200:
            return "missing", None
        events = history["events"]
        processed = next((e["at_ms"] for e in events if e["event"] == "process_requested"), None)
        sent = next((e["at_ms"] for e in events if e["status"] == "sent"), None)
        final = events[-1]["status"]
        return final, (sent - processed if sent is not None and processed is not None else None)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, ids))
    statuses = [status for status, _ in results]
    latencies = [ms for _, ms in results if ms is not None]
    print(json.dumps(summary(statuses, latencies, json.load(open(args.stats)), args.secs, args.capacity)))


def hammer(args):
    _, records = call(args.base, "GET", "/dump")
    statuses = [r["status"] for r in records]
    latencies = [r["final_ms"] - r["process_ms"] for r in records if r["status"] == "sent"]
    print(json.dumps(summary(statuses, latencies, json.load(open(args.stats)), args.secs, args.capacity)))


def backlog(args):
    body = {"to": "backlog@example.com", "message": "backlog", "type": "email"}

    def one(_):
        status, created = call(args.base, "POST", "/v1/requests", body)
        assert status == 201, status
        status, _ = call(args.base, "POST", f"/v1/requests/{created['id']}/process")
        assert status in (200, 202), status

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(args.count)))


def window(args):
    first, last = json.load(open(args.first)), json.load(open(args.last))
    by_status = {}
    for key in set(first["by_status"]) | set(last["by_status"]):
        by_status[key] = last["by_status"].get(key, 0) - first["by_status"].get(key, 0)
    delta = {"calls_total": last["calls_total"] - first["calls_total"], "by_status": by_status}
    figures = provider_figures(delta, args.secs, args.capacity or 1.0)
    if not args.capacity:
        del figures["admitted_per_sec_over_capacity"]
    delivered = last["delivered"] - first["delivered"]
    figures["delivered_per_sec"] = round(delivered / args.secs, 3)
    if args.bound:
        figures["delivered_over_bound"] = round(delivered / args.secs / args.bound, 3)
    print(json.dumps(figures))


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("herald", "hammer"):
        p = sub.add_parser(name)
        p.add_argument("--base", required=True)
        p.add_argument("--stats", required=True)
        p.add_argument("--secs", type=float, required=True)
        p.add_argument("--capacity", type=float, required=True)
        if name == "herald":
            p.add_argument("--ids", required=True)
    p = sub.add_parser("backlog")
    p.add_argument("--base", required=True)
    p.add_argument("--count", type=int, required=True)
    p = sub.add_parser("window")
    p.add_argument("--first", required=True)
    p.add_argument("--last", required=True)
    p.add_argument("--secs", type=float, required=True)
    p.add_argument("--bound", type=float)
    p.add_argument("--capacity", type=float)
    args = parser.parse_args()
    {"herald": herald, "hammer": hammer, "backlog": backlog, "window": window}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
