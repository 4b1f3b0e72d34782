#!/usr/bin/env bash
# Herald's resident memory under sustained durable creates: wrk at 64
# connections for DURATION seconds (default 60) against a release build, RSS
# sampled every second from /proc; prints the request rate and RSS min/max and
# the peak (VmHWM). Needs wrk (apt-get install -y wrk). Loopback only.
#   scripts/memory-under-load.sh [DURATION=60]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-60}
port=${PORT:-5912}
data=$(mktemp -d)
cargo build --quiet --release --bin herald
RUST_LOG=warn target/release/herald serve --listen "127.0.0.1:$port" --data-dir "$data" \
  --provider-url http://127.0.0.1:9 >/dev/null 2>&1 &
herald=$!
trap 'kill $herald 2>/dev/null; wait 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do curl -sf "127.0.0.1:$port/ready" >/dev/null && break; sleep 0.1; done

rss() { awk '/^VmRSS/ {print $2}' "/proc/$herald/status"; }
echo "idle RSS: $(( $(rss) / 1024 )) MiB"
samples=$(mktemp)
( for _ in $(seq "$duration"); do rss >> "$samples"; sleep 1; done ) &
sampler=$!
wrk -t2 -c64 -d"${duration}s" -s scripts/bench-create.lua "http://127.0.0.1:$port" | grep -E "Requests/sec|Latency|requests in"
wait $sampler
sort -n "$samples" | awk 'NR==1 {min=$1} {max=$1} END {printf "RSS under load: min %d MiB, max %d MiB\n", min/1024, max/1024}'
echo "peak RSS (VmHWM): $(( $(awk '/^VmHWM/ {print $2}' "/proc/$herald/status") / 1024 )) MiB"
echo "data dir: $(du -sh "$data" | cut -f1)"
rm -f "$samples"
