#!/usr/bin/env bash
# A/B benchmark: durable create throughput of two or more `herald` binaries,
# measured in alternation in one run, so a busy machine slows each alike and
# the ratios hold where the absolute figures do not.
#
#   scripts/bench-ab.sh before=/path/to/herald after=target/release/herald [more=BIN ENV=VALUE...]
#
# Each argument is LABEL=BINARY, optionally followed by `+VAR=VALUE` words
# that set environment variables for that binary only (e.g. a scratch knob).
# For ROUNDS rounds (5), every binary in turn gets a fresh data dir, a warm-up
# and a wrk run of DURATION_SECS (10) at CONNS (64) connections with
# scripts/bench-create.lua, then is stopped with SIGTERM. Prints every run and,
# per binary, the median req/s and p99 and the ratio of each median to the
# first binary's. Loopback only; every run is bounded by its duration.
#
# Knobs: ROUNDS (5), DURATION_SECS (10), WARMUP_SECS (2), THREADS (2),
# CONNS (64), PORT (5111).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${ROUNDS:-5}
DURATION_SECS=${DURATION_SECS:-10}
WARMUP_SECS=${WARMUP_SECS:-2}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
PORT=${PORT:-5111}
LUA="$ROOT/scripts/bench-create.lua"
LOG_PREFIX=bench-ab
WORK=$(mktemp -d)
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

command -v wrk >/dev/null || die "wrk is not installed (Debian: apt-get install -y wrk)"
[[ $# -ge 2 ]] || die "usage: $0 LABEL=BINARY [+VAR=VALUE...] LABEL=BINARY ..."

labels=() bins=() envs=()
for arg in "$@"; do
  if [[ $arg == +* ]]; then
    envs[$((${#labels[@]} - 1))]+=" ${arg#+}"
  else
    labels+=("${arg%%=*}") bins+=("${arg#*=}") envs+=("")
  fi
done
for bin in "${bins[@]}"; do [[ -x $bin ]] || die "not an executable: $bin"; done

HERALD_PID=
cleanup() {
  [[ -n $HERALD_PID ]] && kill "$HERALD_PID" 2>/dev/null && wait "$HERALD_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

# run INDEX ROUND: one measured run; prints "label round req/s p99_ms".
run() {
  local i=$1 round=$2 data="$WORK/data-$1-$2"
  # shellcheck disable=SC2086
  env ${envs[$i]} "${bins[$i]}" serve --listen "127.0.0.1:$PORT" --data-dir "$data" \
    --provider-url http://127.0.0.1:9 >"$WORK/herald-$i-$round.log" 2>&1 &
  HERALD_PID=$!
  wait_ready "http://127.0.0.1:$PORT/health" "${labels[$i]}" "$HERALD_PID"
  wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP_SECS}s" -s "$LUA" "http://127.0.0.1:$PORT" >/dev/null
  local line
  line=$(wrk -t"$THREADS" -c"$CONNS" -d"${DURATION_SECS}s" -s "$LUA" "http://127.0.0.1:$PORT" | grep '^BENCH')
  kill -TERM "$HERALD_PID" && wait "$HERALD_PID" || die "${labels[$i]} did not stop cleanly"
  HERALD_PID=
  local requests duration p99 errors
  requests=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$line")
  duration=$(sed -E 's/.*duration_us=([0-9]+).*/\1/' <<<"$line")
  p99=$(sed -E 's/.*p99_us=([0-9]+).*/\1/' <<<"$line")
  errors=$(sed -E 's/.*errors_status=([0-9]+).*/\1/' <<<"$line")
  [[ $errors == 0 ]] || die "${labels[$i]}: $errors answers were not 201"
  awk -v l="${labels[$i]}" -v r="$round" -v n="$requests" -v d="$duration" -v p="$p99" \
    'BEGIN { printf "%s %d %.0f %.3f\n", l, r, n / (d / 1e6), p / 1000 }'
}

log "commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'); ${ROUNDS} rounds of ${DURATION_SECS}s at ${CONNS} connections"
results="$WORK/results"
for round in $(seq "$ROUNDS"); do
  for i in "${!bins[@]}"; do
    run "$i" "$round" | tee -a "$results"
  done
done

echo
echo "| binary | runs | median req/s | median p99 ms | ratio to ${labels[0]} |"
echo "| --- | ---: | ---: | ---: | ---: |"
base=
for label in "${labels[@]}"; do
  median_rate=$(awk -v l="$label" '$1 == l { print $3 }' "$results" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
  median_p99=$(awk -v l="$label" '$1 == l { print $4 }' "$results" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
  base=${base:-$median_rate}
  awk -v l="$label" -v n="$ROUNDS" -v r="$median_rate" -v p="$median_p99" -v b="$base" \
    'BEGIN { printf "| %s | %d | %.0f | %.3f | %.3f |\n", l, n, r, p, r / b }'
done
