#!/usr/bin/env bash
# HTTP benchmark: Herald's durable create against an axum no-op, same run.
#
#   scripts/bench-http.sh
#
# Builds release binaries, starts on loopback only
#   - examples/noop_server (the baseline: parses the body, answers 201, stores nothing),
#   - `herald provider-sim` (idle: nothing calls process, so nothing is dispatched),
#   - `herald serve` with a fresh data dir in a temp dir,
# then runs wrk (scripts/bench-create.lua: POST /v1/requests with a JSON body)
# for a bounded time against each: no-op, Herald, no-op again at 64 connections,
# then Herald at the lighter loads in EXTRA_CONNS. Every measured run is preceded
# by a warm-up. Prints a summary table and the target check, checks that the
# data dir really holds the records, and stops everything it started on exit.
#
# wrk runs on the same machine as the servers and shares its cores with them.
#
# Knobs (environment): DURATION_SECS (15), WARMUP_SECS (3), THREADS (2),
# CONNS (64), EXTRA_CONNS ("1 8"), NOOP_PORT (5100), HERALD_PORT (5101),
# SIM_PORT (5102), HERALD_RUST_LOG (unset: Herald's default log filter),
# IDLE_MAX_CORES (0.15) and IDLE_WAIT_SECS (600): before each measured run, wait
# until the machine runs less than that much other work, for at most that long.
# KEEP_WORKDIR (0), CARGO_TARGET_DIR (cargo's default), BENCH_REV (label for
# the commit when the tree is not a git checkout), BASELINE_BIN (unset: another
# herald binary, say one built from an older commit, measured in the same run
# right after Herald, on BASELINE_PORT (5103); the summary gives herald/baseline).
# HERALD_SERVE_FLAGS and BASELINE_SERVE_FLAGS (unset): extra flags for each
# `serve`, split on spaces: say `--backend scaleout --redis-url ... --amqp-url ...`
# for Herald and nothing for the baseline, to compare the engines in one run.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

DURATION_SECS=${DURATION_SECS:-15}
WARMUP_SECS=${WARMUP_SECS:-3}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
EXTRA_CONNS=${EXTRA_CONNS:-"1 8"}
NOOP_PORT=${NOOP_PORT:-5100}
HERALD_PORT=${HERALD_PORT:-5101}
SIM_PORT=${SIM_PORT:-5102}
BASELINE_PORT=${BASELINE_PORT:-5103}
BASELINE_BIN=${BASELINE_BIN:-}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
LUA="$ROOT/scripts/bench-create.lua"
TICK_HZ=$(getconf CLK_TCK)
IDLE_MAX_CORES=${IDLE_MAX_CORES:-0.15}
IDLE_WAIT_SECS=${IDLE_WAIT_SECS:-600}

# Targets from the issue.
TARGET_RATIO=0.5
TARGET_P99_MS=5

LOG_PREFIX=bench
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

if ! command -v wrk >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "wrk missing: installing the Debian package"
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
  else
    die "wrk is not installed (Debian: apt-get install -y wrk)"
  fi
fi
command -v curl >/dev/null 2>&1 || die "curl is needed to wait for the servers"

for port in "$NOOP_PORT" "$HERALD_PORT" "$SIM_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port on 127.0.0.1 is already in use (set NOOP_PORT/HERALD_PORT/SIM_PORT)"
  fi
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/herald-bench.XXXXXX")
clean_up_on_exit

log "building release binaries (target dir: $TARGET_DIR)"
cargo build --release --bins --examples
HERALD_BIN="$TARGET_DIR/release/herald"
NOOP_BIN="$TARGET_DIR/release/examples/noop_server"
[[ -x $HERALD_BIN ]] || die "no $HERALD_BIN after the build"
[[ -x $NOOP_BIN ]] || die "no $NOOP_BIN after the build"


# The no-op server has only POST /v1/requests: a valid create is its readiness probe.
wait_noop() {
  local url=$1 pid=$2
  for _ in $(seq 150); do
    kill -0 "$pid" 2>/dev/null || die "noop_server exited early"
    if curl -fsS -o /dev/null --max-time 1 -H 'content-type: application/json' \
      -d '{"to":"user@example.com","message":"hello","type":"email"}' "$url" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  die "noop_server did not become ready"
}

log "starting noop_server on 127.0.0.1:$NOOP_PORT"
"$NOOP_BIN" --listen "127.0.0.1:$NOOP_PORT" >"$WORK/noop.log" 2>&1 &
NOOP_PID=$!
PIDS+=("$NOOP_PID")

log "starting herald provider-sim on 127.0.0.1:$SIM_PORT"
env -u RUST_LOG "$HERALD_BIN" provider-sim --listen "127.0.0.1:$SIM_PORT" >"$WORK/sim.log" 2>&1 &
SIM_PID=$!
PIDS+=("$SIM_PID")

DATA_DIR="$WORK/data"
herald_env=(env -u RUST_LOG)
if [[ -n ${HERALD_RUST_LOG:-} ]]; then
  herald_env=(env "RUST_LOG=$HERALD_RUST_LOG")
fi

# start_serve NAME BINARY PORT DATA_DIR [FLAGS...]: starts `serve`; sets STARTED_PID.
start_serve() {
  local name=$1 bin=$2 port=$3 data=$4
  shift 4
  log "starting $name ($bin serve $*) on 127.0.0.1:$port (data dir $data)"
  "${herald_env[@]}" "$bin" serve \
    --listen "127.0.0.1:$port" \
    --data-dir "$data" \
    --provider-url "http://127.0.0.1:$SIM_PORT" "$@" >"$WORK/$name.log" 2>&1 &
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
}

# shellcheck disable=SC2086 # the extra flags are split on purpose
start_serve herald "$HERALD_BIN" "$HERALD_PORT" "$DATA_DIR" ${HERALD_SERVE_FLAGS:-}
HERALD_PID=$STARTED_PID
if [[ -n $BASELINE_BIN ]]; then
  # shellcheck disable=SC2086 # the extra flags are split on purpose
  start_serve baseline "$BASELINE_BIN" "$BASELINE_PORT" "$WORK/baseline-data" ${BASELINE_SERVE_FLAGS:-}
  BASELINE_PID=$STARTED_PID
  wait_ready "http://127.0.0.1:$BASELINE_PORT/ready" baseline "$BASELINE_PID"
fi

wait_noop "http://127.0.0.1:$NOOP_PORT/v1/requests" "$NOOP_PID"
wait_ready "http://127.0.0.1:$SIM_PORT/health" provider-sim "$SIM_PID"
wait_ready "http://127.0.0.1:$HERALD_PORT/ready" herald "$HERALD_PID"

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# Busy ticks of the whole machine (every core): wrk, the server, the kernel.
machine_busy_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }

# Sets CHILDREN_CPU to the CPU seconds (user + system) used by this shell's
# finished children so far. Not a $(...) function: a subshell has its own count.
children_cpu() {
  times >"$WORK/times"
  CHILDREN_CPU=$(awk 'NR == 2 {
    t = 0
    for (i = 1; i <= 2; i++) { split($i, ms, "m"); sub(/s$/, "", ms[2]); t += ms[1] * 60 + ms[2] }
    printf "%.3f\n", t
  }' "$WORK/times")
}

# Cores the whole machine keeps busy over one second.
machine_load() {
  local a b
  a=$(machine_busy_ticks)
  sleep 1
  b=$(machine_busy_ticks)
  awk -v d=$((b - a)) -v hz="$TICK_HZ" 'BEGIN { printf "%.2f\n", d / hz }'
}

# Waits (up to IDLE_WAIT_SECS) until the machine is idle, so that other work
# (a build, another benchmark) does not share the cores with the warm-up and
# the measured run that follow; prints the load it saw last.
wait_idle() {
  local load waited=0
  while :; do
    load=$(machine_load)
    if awk -v l="$load" -v max="$IDLE_MAX_CORES" 'BEGIN { exit !(l <= max) }'; then
      echo "$load"
      return 0
    fi
    if ((waited >= IDLE_WAIT_SECS)); then
      log "warning: machine still busy ($load cores) after ${IDLE_WAIT_SECS}s; measuring anyway"
      echo "$load"
      return 0
    fi
    ((waited == 0)) && log "machine busy ($load cores of other work): waiting for it to be idle"
    sleep 4
    waited=$((waited + 5))
  done
}

# Herald's group-commit counters from GET /metrics: "flushes writes flush_seconds"
# (zeros when the build has no /metrics).
commit_counters() {
  curl -fsS --max-time 2 "http://127.0.0.1:$HERALD_PORT/metrics" 2>/dev/null |
    awk '
      $1 == "herald_group_commit_batch_size_count" { n = $2 }
      $1 == "herald_group_commit_batch_size_sum" { w = $2 }
      $1 == "herald_group_commit_flush_duration_seconds_sum" { f = $2 }
      END { printf "%d %d %.6f\n", n, w, f }' || echo "0 0 0"
}

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
HERALD_WRK_REQUESTS=0

# run_wrk LABEL PID URL CONNS: warm-up, then one measured run; appends a row to $RESULTS.
run_wrk() {
  local label=$1 pid=$2 url=$3 conns=$4
  local threads=$THREADS
  ((conns < threads)) && threads=$conns
  local out="$WORK/wrk-$label.txt"
  local idle_load wrk_cpu_before wrk_cpu_after
  idle_load=$(wait_idle)
  if ((WARMUP_SECS > 0)); then
    log "$label: warm-up ${WARMUP_SECS}s (-t$threads -c$conns)"
    timeout $((WARMUP_SECS + 30)) wrk -t"$threads" -c"$conns" -d"${WARMUP_SECS}s" \
      -s "$LUA" "$url" >"$out.warmup"
  fi
  log "$label: measuring ${DURATION_SECS}s (-t$threads -c$conns --latency)"
  local before after commit_before="0 0 0" commit_after="0 0 0"
  [[ $pid == "$HERALD_PID" ]] && commit_before=$(commit_counters)
  local machine_before machine_after
  children_cpu
  wrk_cpu_before=$CHILDREN_CPU
  machine_before=$(machine_busy_ticks)
  before=$(cpu_ticks "$pid")
  timeout $((DURATION_SECS + 30)) wrk -t"$threads" -c"$conns" -d"${DURATION_SECS}s" \
    --timeout 10s --latency -s "$LUA" "$url" >"$out"
  after=$(cpu_ticks "$pid")
  machine_after=$(machine_busy_ticks)
  children_cpu
  wrk_cpu_after=$CHILDREN_CPU
  [[ $pid == "$HERALD_PID" ]] && commit_after=$(commit_counters)
  local line
  line=$(grep '^BENCH ' "$out") || die "no BENCH line in $out"
  if [[ $label == herald* ]]; then
    local warm_reqs=0 reqs
    [[ -f $out.warmup ]] && warm_reqs=$(grep -o 'requests=[0-9]*' "$out.warmup" | cut -d= -f2)
    reqs=$(grep -o 'requests=[0-9]*' "$out" | cut -d= -f2)
    HERALD_WRK_REQUESTS=$((HERALD_WRK_REQUESTS + warm_reqs + reqs))
  fi
  awk -v label="$label" -v conns="$conns" -v ticks=$((after - before)) -v hz="$TICK_HZ" \
    -v machine_ticks=$((machine_after - machine_before)) -v idle_load="$idle_load" \
    -v wrk_cpu="$(awk -v a="$wrk_cpu_after" -v b="$wrk_cpu_before" 'BEGIN { print a - b }')" \
    -v cb="$commit_before" -v ca="$commit_after" '
    {
      for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
      split(cb, b, " "); split(ca, a, " ")
      flushes = a[1] - b[1]; writes = a[2] - b[2]; flush_secs = a[3] - b[3]
      secs = v["duration_us"] / 1e6
      rps = v["requests"] / secs
      errors = v["errors_connect"] + v["errors_read"] + v["errors_write"] + v["errors_timeout"] + v["errors_status"]
      cpu = ticks / hz
      commit = "-\t-\t-"
      if (flushes > 0)
        commit = sprintf("%.0f\t%.1f\t%.3f", flushes / secs, writes / flushes, flush_secs * 1000 / flushes)
      machine = machine_ticks / hz / secs
      printf "%s\t%d\t%.0f\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%d\t%d\t%.2f\t%.1f\t%.2f\t%.2f\t%.2f\t%s\n",
        label, conns, rps, v["p50_us"] / 1000, v["p90_us"] / 1000, v["p99_us"] / 1000,
        v["p999_us"] / 1000, v["max_us"] / 1000, v["requests"], errors,
        cpu / secs, (v["requests"] > 0 ? cpu * 1e6 / v["requests"] : 0),
        wrk_cpu / secs, machine - cpu / secs - wrk_cpu / secs, idle_load, commit
    }' <<<"$line" >>"$RESULTS"
}

run_wrk noop-1 "$NOOP_PID" "http://127.0.0.1:$NOOP_PORT/v1/requests" "$CONNS"
run_wrk herald "$HERALD_PID" "http://127.0.0.1:$HERALD_PORT/v1/requests" "$CONNS"
if [[ -n $BASELINE_BIN ]]; then
  run_wrk baseline "$BASELINE_PID" "http://127.0.0.1:$BASELINE_PORT/v1/requests" "$CONNS"
fi
run_wrk noop-2 "$NOOP_PID" "http://127.0.0.1:$NOOP_PORT/v1/requests" "$CONNS"
for c in $EXTRA_CONNS; do
  run_wrk "herald-c$c" "$HERALD_PID" "http://127.0.0.1:$HERALD_PORT/v1/requests" "$c"
done

# Creates Herald counted (GET /metrics), or its "request stored" log lines in
# builds without /metrics; then stop it cleanly (it flushes on SIGTERM) before
# looking at its data dir.
STORED=$(curl -fsS --max-time 2 "http://127.0.0.1:$HERALD_PORT/metrics" 2>/dev/null |
  awk '$1 == "herald_requests_created_total" { print $2 }')
STORED_FROM="herald_requests_created_total"
if [[ -z $STORED ]]; then
  STORED=$(grep -c 'request stored' "$WORK/herald.log" || true)
  STORED_FROM="'request stored' log lines"
fi
kill -TERM "$HERALD_PID"
for _ in $(seq 100); do
  kill -0 "$HERALD_PID" 2>/dev/null || break
  sleep 0.1
done
kill -0 "$HERALD_PID" 2>/dev/null && die "herald did not stop within 10 s of SIGTERM"
wait "$HERALD_PID" 2>/dev/null || true
# The scale-out engine keeps nothing in the data dir: "none".
DATA_SIZE=$( (du -sh "$DATA_DIR" 2>/dev/null || echo none) | cut -f1)

echo
echo "== HTTP: durable create vs no-op =="
if rev=$(git rev-parse --short HEAD 2>/dev/null); then
  git diff --quiet HEAD -- src Cargo.toml Cargo.lock || rev="$rev, with uncommitted changes to src/ or Cargo files"
else
  rev=${BENCH_REV:-"unknown (not a git checkout; set BENCH_REV)"}
fi
echo "commit:  $rev"
echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(free -h | awk '/^Mem:/ { print $2 }') RAM, data dir on $(df -h "$WORK" | awk 'NR == 2 { print $1 " (" $2 ")" }')"
echo "load:    wrk $(wrk --version 2>&1 | head -1 | awk '{ print $2 }'), ${DURATION_SECS}s per run after ${WARMUP_SECS}s warm-up, -t$THREADS, same machine as the servers"
echo
{
  printf 'run\tconns\treq/s\tp50 ms\tp90 ms\tp99 ms\tp99.9 ms\tmax ms\trequests\terrors\tserver cores\tserver CPU us/req\twrk cores\trest cores\tload before\tflushes/s\twrites/flush\tms/flush\n'
  cat "$RESULTS"
} | column -t -s $'\t'
cat <<'LEGEND'
  latencies from wrk (--latency); errors = connect/read/write/timeout errors + non-2xx/3xx answers
  server cores: CPU time of the server process (all threads) / wall time; server CPU us/req: its CPU per request
  wrk cores: CPU of wrk itself; rest cores: all other busy CPU (kernel threads doing the server's
  I/O such as jbd2 and virtio, and any unrelated work); load before: busy cores in the second before the run
  flushes/s, writes/flush, ms/flush: Herald's group commit, from GET /metrics (herald_group_commit_*)
LEGEND
echo

awk -F'\t' -v target_ratio="$TARGET_RATIO" -v target_p99="$TARGET_P99_MS" -v conns="$CONNS" '
  $1 == "noop-1" { n1 = $3 }
  $1 == "noop-2" { n2 = $3 }
  $1 == "herald" { h = $3; p99 = $6 }
  $1 == "baseline" { b = $3; bp99 = $6 }
  END {
    if (b > 0)
      printf "ratio herald/baseline at -c%d: %.3f throughput, %.3f p99\n", conns, h / b, p99 / bp99
    noop = (n1 + n2) / 2
    ratio = h / noop
    printf "ratio herald/noop at -c%d: %.3f (vs noop-1 %.3f, vs noop-2 %.3f)\n", conns, ratio, h / n1, h / n2
    printf "target throughput >= %.2fx no-op: %s (%.3fx)\n", target_ratio, (ratio >= target_ratio ? "MET" : "MISSED"), ratio
    printf "target p99 <= %d ms at -c%d: %s (%.3f ms)\n", target_p99, conns, (p99 <= target_p99 ? "MET" : "MISSED"), p99
  }' "$RESULTS"
echo "herald data dir: $DATA_SIZE after stop; Herald stored ${STORED} (${STORED_FROM}); wrk counted ${HERALD_WRK_REQUESTS} completed creates (warm-ups included)"
if ((STORED < HERALD_WRK_REQUESTS)); then
  die "herald logged fewer stored requests than wrk completed"
fi
