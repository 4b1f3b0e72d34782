#!/usr/bin/env bash
# Durable creates on 1, 2 and 3 scale-out nodes against one embedded node, in
# one run (BENCHMARKS.md, "Scale-out engine").
#
#   scripts/bench-scaleout.sh
#
# Starts on loopback a private redis-server (AOF `appendfsync always`,
# `noeviction`, its own temporary directory), a RabbitMQ vhost of its own on
# the broker at 127.0.0.1:5672 (rabbitmqctl), an idle provider simulator, and
# for each N in NODES: N `herald serve --backend scaleout` nodes on that
# Redis, with CONNS connections spread over them (one wrk per node, all at
# once, scripts/bench-create.lua); then one embedded node with CONNS
# connections. Every run lasts DURATION_SECS after WARMUP_SECS of warm-up.
# Prints one line per run: creates/s summed over the nodes, the worst node's
# p99, and the Redis server's CPU per create. Stops everything it started.
#
# Knobs: DURATION_SECS (10), WARMUP_SECS (2), CONNS (64), NODES ("1 2 3"),
# REDIS_PORT (16391), BASE_PORT (5411), HERALD_BIN (target/release/herald,
# built when unset).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
DURATION_SECS=${DURATION_SECS:-10}
WARMUP_SECS=${WARMUP_SECS:-2}
CONNS=${CONNS:-64}
NODES=${NODES:-"1 2 3"}
REDIS_PORT=${REDIS_PORT:-16391}
BASE_PORT=${BASE_PORT:-5411}
LUA="$ROOT/scripts/bench-create.lua"
LOG_PREFIX=bench-scaleout
WORK=$(mktemp -d "${TMPDIR:-/tmp}/herald-scaleout.XXXXXX")
VHOST="herald-bench-$$"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
trap 'stop_started; rabbitmqctl -q delete_vhost "$VHOST" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

for tool in wrk redis-server rabbitmqctl; do
  command -v "$tool" >/dev/null || die "$tool is needed (Debian: wrk, redis-server, rabbitmq-server)"
done
if [[ -z ${HERALD_BIN:-} ]]; then
  cargo build --quiet --release --locked --bin herald
  HERALD_BIN=target/release/herald
fi

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$WORK" --save "" \
  --appendonly yes --appendfsync always --maxmemory-policy noeviction \
  --logfile "$WORK/redis.log" &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
rabbitmqctl -q add_vhost "$VHOST" >/dev/null
rabbitmqctl -q set_permissions -p "$VHOST" guest '.*' '.*' '.*' >/dev/null

SIM_PORT=$((BASE_PORT + 9))
"$HERALD_BIN" provider-sim --listen "127.0.0.1:$SIM_PORT" >"$WORK/sim.log" 2>&1 &
PIDS+=($!)
wait_ready "http://127.0.0.1:$SIM_PORT/health" simulator "$!"

# node PORT NAME [FLAGS...]: one `herald serve` on PORT, ready.
node() {
  local port=$1 name=$2
  shift 2
  env -u RUST_LOG "$HERALD_BIN" serve --listen "127.0.0.1:$port" --data-dir "$WORK/$name-data" \
    --provider-url "http://127.0.0.1:$SIM_PORT" --instance-id "$name" "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  wait_ready "http://127.0.0.1:$port/ready" "$name" "$!" 30
}

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# measure LABEL PORT...: wrk on every port at once, CONNS connections in all.
measure() {
  local label=$1 port
  shift
  local per=$((CONNS / $#))
  for port in "$@"; do
    wrk -t1 -c"$per" -d"${WARMUP_SECS}s" -s "$LUA" "http://127.0.0.1:$port" >/dev/null &
  done
  wait_for_wrk
  local redis_before
  redis_before=$(cpu_ticks "$REDIS_PID")
  for port in "$@"; do
    wrk -t1 -c"$per" -d"${DURATION_SECS}s" -s "$LUA" "http://127.0.0.1:$port" >"$WORK/wrk-$port.txt" &
  done
  wait_for_wrk
  local redis_ticks=$(($(cpu_ticks "$REDIS_PID") - redis_before))
  grep -h '^BENCH' "$WORK"/wrk-*.txt | awk -v label="$label" -v ticks="$redis_ticks" \
    -v hz="$(getconf CLK_TCK)" -v secs="$DURATION_SECS" '
    { for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
      rate += f["requests"] / (f["duration_us"] / 1e6); errors += f["errors_status"]
      if (f["p99_us"] > p99) p99 = f["p99_us"] }
    END { printf "%-12s %9.0f creates/s  worst p99 %6.2f ms  errors %d  redis CPU %.1f us/create\n",
            label, rate, p99 / 1000, errors, ticks / hz * 1e6 / (rate * secs) }'
  rm -f "$WORK"/wrk-*.txt
}

# Waits for this shell's wrk processes (the servers run on).
wait_for_wrk() {
  local pid
  for pid in $(jobs -p); do
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == wrk ]] && wait "$pid"
  done
  return 0
}

scaleout=(--backend scaleout --redis-url "redis://127.0.0.1:$REDIS_PORT"
  --amqp-url "amqp://guest:guest@127.0.0.1:5672/$VHOST")
log "gateway $HERALD_BIN, $CONNS connections, ${DURATION_SECS}s per run"
started=0
for n in $NODES; do
  while ((started < n)); do
    node $((BASE_PORT + started)) "node-$((started + 1))" "${scaleout[@]}"
    started=$((started + 1))
  done
  ports=()
  for ((i = 0; i < n; i++)); do ports+=($((BASE_PORT + i))); done
  measure "scaleout×$n" "${ports[@]}"
done
node $((BASE_PORT + 8)) embedded
measure "embedded" $((BASE_PORT + 8))
