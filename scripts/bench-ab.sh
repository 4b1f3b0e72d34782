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
# scripts/bench-create.lua, then is stopped with SIGTERM. Besides req/s and
# p99 it reports the server's CPU time per create (user + system, from
# /proc/PID/stat over the measured run), which the disk's fsync latency moves
# far less than it moves throughput. Each round starts one
# binary later than the last, so no binary always runs in the same place of a
# round (measured: the last of five ran 5–10% slower, whichever it was). Prints every run and,
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
TICK_HZ=$(getconf CLK_TCK)
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

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# run INDEX ROUND: one measured run; prints "label round req/s p99_ms cpu_us_per_create".
run() {
  local i=$1 round=$2 data="$WORK/data-$1-$2"
  # shellcheck disable=SC2086
  env ${envs[$i]} "${bins[$i]}" serve --listen "127.0.0.1:$PORT" --data-dir "$data" \
    --provider-url http://127.0.0.1:9 >"$WORK/herald-$i-$round.log" 2>&1 &
  HERALD_PID=$!
  wait_ready "http://127.0.0.1:$PORT/health" "${labels[$i]}" "$HERALD_PID"
  wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP_SECS}s" -s "$LUA" "http://127.0.0.1:$PORT" >/dev/null
  local line ticks_before ticks_after
  ticks_before=$(cpu_ticks "$HERALD_PID")
  line=$(wrk -t"$THREADS" -c"$CONNS" -d"${DURATION_SECS}s" -s "$LUA" "http://127.0.0.1:$PORT" | grep '^BENCH')
  ticks_after=$(cpu_ticks "$HERALD_PID")
  kill -TERM "$HERALD_PID" && wait "$HERALD_PID" || die "${labels[$i]} did not stop cleanly"
  HERALD_PID=
  local requests duration p99 errors
  requests=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$line")
  duration=$(sed -E 's/.*duration_us=([0-9]+).*/\1/' <<<"$line")
  p99=$(sed -E 's/.*p99_us=([0-9]+).*/\1/' <<<"$line")
  errors=$(sed -E 's/.*errors_status=([0-9]+).*/\1/' <<<"$line")
  [[ $errors == 0 ]] || die "${labels[$i]}: $errors answers were not 201"
  awk -v l="${labels[$i]}" -v r="$round" -v n="$requests" -v d="$duration" -v p="$p99" \
    -v t=$((ticks_after - ticks_before)) -v hz="$TICK_HZ" \
    'BEGIN { printf "%s %d %.0f %.3f %.1f\n", l, r, n / (d / 1e6), p / 1000, t / hz * 1e6 / n }'
}

log "commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'); ${ROUNDS} rounds of ${DURATION_SECS}s at ${CONNS} connections"
results="$WORK/results"
count=${#bins[@]}
for round in $(seq "$ROUNDS"); do
  for offset in $(seq 0 $((count - 1))); do
    run $(((round + offset) % count)) "$round" | tee -a "$results"
  done
done

echo
echo "| binary | runs | median req/s | ratio to ${labels[0]} | median p99 ms | median CPU µs/create | ratio to ${labels[0]} |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
median() { awk -v l="$1" -v c="$2" '$1 == l { print $c }' "$results" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
base_rate= base_cpu=
for label in "${labels[@]}"; do
  rate=$(median "$label" 3) p99=$(median "$label" 4) cpu=$(median "$label" 5)
  base_rate=${base_rate:-$rate} base_cpu=${base_cpu:-$cpu}
  awk -v l="$label" -v n="$ROUNDS" -v r="$rate" -v p="$p99" -v c="$cpu" -v br="$base_rate" -v bc="$base_cpu" \
    'BEGIN { printf "| %s | %d | %.0f | %.3f | %.3f | %.1f | %.3f |\n", l, n, r, r / br, p, c, c / bc }'
done
