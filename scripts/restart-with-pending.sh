#!/usr/bin/env bash
# Restart with a large outbox, end to end: how long the release `herald` takes
# from exec to its first `200` on `/ready`, and to its first delivery, on a data
# directory holding 1M pending requests.
#
#   cargo bench --bench store_recovery     # builds (and caches) the fixtures, ~5 min the first time
#   scripts/restart-with-pending.sh [DATA_DIR]
#
# DATA_DIR defaults to the newest of the store bench's 1M fixtures, as its
# building process left it (`after_crash`: 32 leases outstanding, sled's whole
# log to replay). Each of RUNS (3) runs copies it afresh and syncs the copy
# (outside the timing; the copy sits in the page cache, so this is a warm
# restart; COLD=1 drops the page cache first, as after a reboot or on a new
# node, and needs root), starts `herald provider-sim --profile healthy` and
# `herald serve` on loopback, polls `/ready` every 10 ms, then waits for the
# first `sent`. Prints one line per run.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

RUNS=${RUNS:-3}
COLD=${COLD:-0}
HERALD_PORT=${HERALD_PORT:-5301}
SIM_PORT=${SIM_PORT:-5302}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
LOG_PREFIX=restart
WORK=$(mktemp -d "${TMPDIR:-/tmp}/herald-restart.XXXXXX")
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

FIXTURE=${1:-$(ls -td "$TARGET_DIR"/tmp/herald-store-fixtures/*-1000000-pending/after_crash 2>/dev/null | head -1)}
[[ -n "$FIXTURE" && -d "$FIXTURE" ]] ||
  die "no data dir given and no 1M fixture under $TARGET_DIR/tmp (run: cargo bench --bench store_recovery)"

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cargo build --quiet --release --bin herald
HERALD="$TARGET_DIR/release/herald"

RUST_LOG=warn "$HERALD" provider-sim --listen "127.0.0.1:$SIM_PORT" --profile healthy \
  >"$WORK/sim.log" 2>&1 &
PIDS+=($!)
wait_ready "http://127.0.0.1:$SIM_PORT/health" provider-sim "$!"

now_ms() { echo $(($(date +%s%N) / 1000000)); }

sent_count() {
  curl -fsS --max-time 1 "http://127.0.0.1:$HERALD_PORT/metrics" 2>/dev/null |
    awk '/^herald_requests_finished_total\{status="sent"\}/ {print $2; found=1} END {if (!found) print 0}'
}

log "fixture: $FIXTURE ($(du -sh "$FIXTURE" | cut -f1))"
for run in $(seq "$RUNS"); do
  rm -rf "$WORK/data"
  cp -r "$FIXTURE" "$WORK/data"
  # Write the copy back before timing: a crashed Herald leaves its log already
  # fsynced, while a fresh 872 MiB copy is dirty page cache whose writeback
  # would compete with the replay for the disk and the CPU.
  sync
  if [[ $COLD == 1 ]]; then
    echo 3 >/proc/sys/vm/drop_caches || die "COLD=1 needs root to drop the page cache"
  fi
  started=$(now_ms)
  RUST_LOG=warn "$HERALD" serve --listen "127.0.0.1:$HERALD_PORT" --data-dir "$WORK/data" \
    --provider-url "http://127.0.0.1:$SIM_PORT" >"$WORK/herald.log" 2>&1 &
  herald=$!
  PIDS+=("$herald")
  until ready=$(curl -fsS --max-time 1 "http://127.0.0.1:$HERALD_PORT/ready" 2>/dev/null); do
    kill -0 "$herald" 2>/dev/null || die "herald exited (see $WORK/herald.log)"
    sleep 0.01
  done
  ready_ms=$(($(now_ms) - started))
  until [[ $(sent_count) != 0 ]]; do
    kill -0 "$herald" 2>/dev/null || die "herald exited (see $WORK/herald.log)"
    (($(now_ms) - started < 60000)) || die "no delivery within 60 s of the restart"
    sleep 0.05
  done
  sent_ms=$(($(now_ms) - started))
  echo "run $run: /ready 200 after ${ready_ms} ms ($ready), first sent after ${sent_ms} ms"
  kill -TERM "$herald"
  wait "$herald" || die "herald did not stop cleanly"
done
