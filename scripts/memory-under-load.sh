#!/usr/bin/env bash
# Herald's resident memory under a sustained rate of durable creates: `hey` at
# a fixed RATE (default 10000 requests/s, over 64 connections) for DURATION
# seconds (default 60) against a release build; RSS sampled every second from
# /proc and printed every 10 s, then the achieved rate, the peak (VmHWM) and
# the data dir size. RATE=max drives it with wrk as fast as it goes instead.
# Needs hey (and wrk for RATE=max); installs the Debian packages when run as
# root. Loopback only.
#   scripts/memory-under-load.sh [DURATION=60]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-60}
rate=${RATE:-10000}
conns=64
port=${PORT:-5912}
tool=hey
[[ $rate == max ]] && tool=wrk
if ! command -v "$tool" >/dev/null 2>&1; then
  [[ $(id -u) -eq 0 ]] || { echo "install $tool (apt-get install -y $tool)" >&2; exit 1; }
  apt-get update -qq && apt-get install -y -qq "$tool" >/dev/null
fi
data=$(mktemp -d)
cargo build --quiet --release --bin herald
RUST_LOG=warn target/release/herald serve --listen "127.0.0.1:$port" --data-dir "$data" \
  --provider-url http://127.0.0.1:9 >/dev/null 2>&1 &
herald=$!
trap 'kill $herald 2>/dev/null; wait 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do curl -sf "127.0.0.1:$port/ready" >/dev/null && break; sleep 0.1; done

rss() { awk '/^VmRSS/ {print $2}' "/proc/$herald/status"; }
echo "idle RSS: $(($(rss) / 1024)) MiB"
(for second in $(seq "$duration"); do
  sleep 1
  ((second % 10 == 0)) && echo "after ${second} s: RSS $(($(rss) / 1024)) MiB"
done) &
sampler=$!
url="http://127.0.0.1:$port/v1/requests"
if [[ $tool == wrk ]]; then
  wrk -t2 -c$conns -d"${duration}s" -s scripts/bench-create.lua "$url" | grep -E "Requests/sec|Latency|requests in"
else
  # hey's -q is per connection.
  hey -z "${duration}s" -c $conns -q $(((rate + conns - 1) / conns)) -m POST -T application/json \
    -d '{"to":"user@example.com","message":"hello","type":"email"}' "$url" |
    grep -E "Requests/sec|99% in|\[[0-9]{3}\]"
fi
wait $sampler
echo "peak RSS (VmHWM): $(($(awk '/^VmHWM/ {print $2}' "/proc/$herald/status") / 1024)) MiB"
echo "requests stored: $(curl -s "127.0.0.1:$port/metrics" | awk '/^herald_requests_created_total/ {print $2}')"
echo "data dir: $(du -sh "$data" | cut -f1)"
