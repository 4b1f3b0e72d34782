#!/usr/bin/env bash
# Resident memory across rounds of delivered traffic, with and without
# retention: each of ROUNDS (3) rounds runs wrk for DURATION seconds (40) of
# create + process (scripts/create-and-process.lua, 32 connections) against a
# release `herald serve` that delivers to `herald provider-sim --profile
# healthy` as fast as it can (rate 100000/s, 256 in flight), waits until
# nothing is pending, then waits RETENTION+12 s so the sweeper (every quarter
# of the retention time) can delete what was sent. Prints RSS after each step.
# Loopback only; needs wrk.
#   RETENTION=20 scripts/retention-memory.sh     # retention of 20 s
#   RETENTION=0 scripts/retention-memory.sh      # keep everything
set -euo pipefail
cd "$(dirname "$0")/.."
retention=${RETENTION:-20}
rounds=${ROUNDS:-3}
duration=${DURATION:-40}
port=${PORT:-5401}
sim_port=${SIM_PORT:-5402}
cargo build --quiet --release --bin herald
data=$(mktemp -d)
RUST_LOG=warn target/release/herald provider-sim --listen "127.0.0.1:$sim_port" --profile healthy \
  >/dev/null 2>&1 &
sim=$!
RUST_LOG=warn target/release/herald serve --listen "127.0.0.1:$port" --data-dir "$data" \
  --provider-url "http://127.0.0.1:$sim_port" --rate-per-sec 100000 --rate-burst 1000 \
  --max-in-flight 256 --retention-secs "$retention" >/dev/null 2>&1 &
herald=$!
trap 'kill $herald $sim 2>/dev/null; wait 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do curl -sf "127.0.0.1:$port/ready" >/dev/null && break; sleep 0.1; done

rss() { echo "$(($(awk '/^VmRSS/ {print $2}' "/proc/$herald/status") / 1024)) MiB"; }
metric() { curl -s "127.0.0.1:$port/metrics" | awk -v name="$1" 'index($0, name) == 1 {print $2}'; }
pending() { curl -s "127.0.0.1:$port/ready" | sed -E 's/.*"pending":([0-9]+).*/\1/'; }

echo "retention ${retention}s (0: keep everything), idle RSS $(rss)"
for round in $(seq "$rounds"); do
  wrk -t1 -c32 -d"${duration}s" -s scripts/create-and-process.lua "http://127.0.0.1:$port" |
    grep -E "Requests/sec"
  echo "round $round after the load: RSS $(rss), pending $(pending)"
  for _ in $(seq 300); do [[ $(pending) == 0 ]] && break; sleep 1; done
  echo "round $round delivered: RSS $(rss), created $(metric herald_requests_created_total)," \
    "sent $(metric 'herald_requests_finished_total{status="sent"}')"
  sleep $((retention + 12))
  echo "round $round after retention: RSS $(rss), deleted $(metric herald_requests_purged_total)," \
    "data dir $(du -sh "$data" | cut -f1)"
done
echo "peak RSS (VmHWM): $(($(awk '/^VmHWM/ {print $2}' "/proc/$herald/status") / 1024)) MiB"
