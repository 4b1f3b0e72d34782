#!/usr/bin/env bash
# Herald's delivery rate against a provider that admits R calls per second
# (R*10 per sliding 10 s, the reference provider's rule) at 50 ms latency:
# submits N requests at once, waits until all are final, and prints the rate
# Herald delivered at, against R, with the provider's 429 count.
#   scripts/delivery-rate.sh [N=300] [R=5]
# Herald runs with its defaults, which pace it to the reference provider (50 per
# sliding 10 s); the simulator answers no 500s here, so every call can deliver.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-300}
r=${2:-5}
sim_port=${SIM_PORT:-3911}
port=${PORT:-5911}
data=$(mktemp -d)
cargo build --quiet --release --bin herald
bin=target/release/herald
"$bin" provider-sim --listen "127.0.0.1:$sim_port" --latency-min-ms 50 --latency-max-ms 50 \
  --window-calls $((r * 10)) --window-secs 10 --error-rate 0 >/dev/null 2>&1 &
sim=$!
RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$port" --data-dir "$data" \
  --provider-url "http://127.0.0.1:$sim_port" >/dev/null 2>&1 &
herald=$!
trap 'kill $herald $sim 2>/dev/null; wait 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do curl -sf "127.0.0.1:$port/ready" >/dev/null && break; sleep 0.1; done

body='{"to":"user@example.com","message":"rate check","type":"email"}'
# The clock starts with the first request: submitting is far faster than the
# provider's pace, so the backlog never runs dry until the end.
start=$(date +%s.%N)
for _ in $(seq "$n"); do
  id=$(curl -sf -X POST "127.0.0.1:$port/v1/requests" -H 'content-type: application/json' -d "$body" \
       | sed -E 's/.*"id":"([^"]+)".*/\1/')
  curl -sf -o /dev/null -X POST "127.0.0.1:$port/v1/requests/$id/process"
done
deadline=$(( $(date +%s) + n / r * 3 + 60 ))
while [ "$(curl -sf "127.0.0.1:$port/ready" | sed -E 's/.*"pending":([0-9]+).*/\1/')" != 0 ]; do
  [ "$(date +%s)" -lt "$deadline" ] || { echo "did not drain in time"; exit 1; }
  sleep 0.2
done
end=$(date +%s.%N)
stats=$(curl -sf "127.0.0.1:$sim_port/stats")
python3 - "$n" "$r" "$start" "$end" "$stats" <<'PY'
import json, sys
n, r, start, end, stats = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), json.loads(sys.argv[5])
elapsed = end - start
rate = stats["delivered"] / elapsed
print(f"requests {n}, provider capacity R = {r:g}/s (50 ms latency)")
print(f"delivered {stats['delivered']} (unique {stats['unique_delivered']}, duplicates {stats['duplicate_deliveries']}) in {elapsed:.1f} s")
print(f"answers by status {stats['by_status']}")
print(f"delivery rate {rate:.2f}/s = {rate / r:.3f} R (target >= 0.95 R)")
PY
