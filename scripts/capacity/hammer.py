#!/usr/bin/env python3
"""A gateway that hammers the provider, as the public solutions of the
challenge do: the contract's three endpoints over an in-memory queue, and
WORKERS threads that each take the next request from the queue and call the
provider; a 429 (or 5xx) puts the request back at the end of the queue at
once, with no delay, until its 18th attempt fails it. (Retrying in place
instead fails nearly everything within seconds: 2,400 of 2,609 requests in
46 s, so it is no baseline for 5 minutes of delivery.)
It is the baseline scripts/provider-capacity.sh measures Herald against; it
keeps nothing durable and is not part of Herald.

  hammer.py --listen 127.0.0.1:5931 --provider http://127.0.0.1:3931 [--workers 10]

GET /dump lists every request with its status and the times (ms since the
epoch) of its process call and of its delivery.
"""
import argparse
import http.client
import json
import queue
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_ATTEMPTS = 18


def now_ms():
    return int(time.time() * 1000)


class State:
    def __init__(self, attempts_per_sec):
        self.lock = threading.Lock()
        self.requests = {}
        self.work = queue.Queue()
        self.gap = 1.0 / attempts_per_sec if attempts_per_sec else 0.0
        self.next_attempt = time.monotonic()
        self.pace = threading.Lock()

    def wait_turn(self):
        if not self.gap:
            return
        with self.pace:
            now = time.monotonic()
            turn = max(now, self.next_attempt)
            self.next_attempt = turn + self.gap
        time.sleep(max(0.0, turn - now))


def worker(state, provider, api_key):
    url = urllib.parse.urlsplit(provider)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    while True:
        rid = state.work.get()
        with state.lock:
            record = state.requests[rid]
            record["status"] = "processing"
            record["attempts"] += 1
        body = json.dumps({"to": record["to"], "message": record["message"], "type": record["type"]})
        state.wait_turn()
        try:
            conn.request("POST", f"/v1/notify?trace_id={rid}", body,
                         {"Content-Type": "application/json", "X-API-Key": api_key})
            answer = conn.getresponse()
            answer.read()
            status = answer.status
        except OSError:
            conn.close()
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
            status = None
        if status is not None and 200 <= status < 300:
            outcome = "sent"
        elif status is not None and status != 429 and status < 500:
            outcome = "failed"
        elif record["attempts"] < MAX_ATTEMPTS:
            state.work.put(rid)
            continue
        else:
            outcome = "failed"
        with state.lock:
            record["status"] = outcome
            record["final_ms"] = now_ms()


def handler_for(state):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def answer(self, status, payload):
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            parts = self.path.strip("/").split("/")
            if parts == ["v1", "requests"]:
                body = json.loads(raw)
                rid = str(uuid.uuid4())
                with state.lock:
                    state.requests[rid] = dict(body, status="queued", attempts=0,
                                               created_ms=now_ms(), process_ms=None, final_ms=None)
                return self.answer(201, {"id": rid})
            if len(parts) == 4 and parts[:2] == ["v1", "requests"] and parts[3] == "process":
                with state.lock:
                    record = state.requests.get(parts[2])
                    fresh = record is not None and record["process_ms"] is None
                    if fresh:
                        record["process_ms"] = now_ms()
                if record is None:
                    return self.answer(404, {"error": "not found"})
                if fresh:
                    state.work.put(parts[2])
                return self.answer(202, {"id": parts[2]})
            return self.answer(404, {"error": "not found"})

        def do_GET(self):
            parts = self.path.strip("/").split("/")
            if parts == ["dump"]:
                with state.lock:
                    return self.answer(200, [
                        {"id": rid, "status": r["status"], "process_ms": r["process_ms"],
                         "final_ms": r["final_ms"], "attempts": r["attempts"]}
                        for rid, r in state.requests.items()])
            if parts == ["health"]:
                with state.lock:
                    busy = sum(1 for r in state.requests.values() if r["status"] in ("queued", "processing")
                               and r["process_ms"] is not None)
                return self.answer(200, {"pending": busy})
            if len(parts) == 3 and parts[:2] == ["v1", "requests"]:
                with state.lock:
                    record = state.requests.get(parts[2])
                    view = record and {"id": parts[2], "status": record["status"]}
                return self.answer(200, view) if view else self.answer(404, {"error": "not found"})
            return self.answer(404, {"error": "not found"})

    return Handler


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--provider", required=True)
    parser.add_argument("--api-key", default="test-dev-2026")
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--attempts-per-sec", type=float, default=0.0)
    args = parser.parse_args()
    state = State(args.attempts_per_sec)
    for _ in range(args.workers):
        threading.Thread(target=worker, args=(state, args.provider, args.api_key), daemon=True).start()
    host, port = args.listen.rsplit(":", 1)
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("loopback only")
    server = ThreadingHTTPServer((host, int(port)), handler_for(state))
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
