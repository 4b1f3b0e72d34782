#!/usr/bin/env bash
# Resident memory under slow connections: before, while CONNS connections
# send their headers a line at a time, and after they close.
#
#   scripts/slow-connections.sh
#   BASELINE_BIN=/path/to/older/herald scripts/slow-connections.sh   # the same, for both
#
# Builds the release binary, starts `herald serve` on loopback (fresh data dir,
# no provider needed: nothing is processed), sends 200 creates as a warm-up and
# reads VmRSS (before); opens CONNS connections that each send a request line
# and then one header line a second, for HOLD_SECS (under the header-read
# timeout, so Herald holds them all), sampling VmRSS (during: the peak), times
# one normal create meanwhile; closes them, waits SETTLE_SECS and reads VmRSS
# again (after). With BASELINE_BIN, does the same against that binary first.
# Prints one table. Stops everything it started on exit.
#
# Knobs (environment): CONNS (3000), HOLD_SECS (6: under the 10 s header timeout), SETTLE_SECS (5),
# PORT (5111), BASELINE_BIN (unset), KEEP_WORKDIR (0).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

CONNS=${CONNS:-3000}
HOLD_SECS=${HOLD_SECS:-6}
SETTLE_SECS=${SETTLE_SECS:-5}
PORT=${PORT:-5111}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

LOG_PREFIX=slow
WORK=$(mktemp -d "${TMPDIR:-/tmp}/herald-slow.XXXXXX")
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
clean_up_on_exit
command -v curl >/dev/null 2>&1 || die "curl is needed to wait for the server"
# The client needs a descriptor per connection.
ulimit -n $((CONNS + 256)) 2>/dev/null || die "cannot raise the open-file limit to $((CONNS + 256))"

log "building the release binary"
cargo build --release --locked --bin herald
HERALD_BIN="$TARGET_DIR/release/herald"

rss_kib() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status"; }

# measure LABEL BINARY: one row of the table.
measure() {
  local label=$1 bin=$2
  local data="$WORK/data-$label"
  env -u RUST_LOG "$bin" serve --listen "127.0.0.1:$PORT" --data-dir "$data" \
    --provider-url http://127.0.0.1:9 >"$WORK/herald-$label.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  wait_ready "http://127.0.0.1:$PORT/ready" "herald ($label)" "$pid"
  for _ in $(seq 200); do
    curl -fsS -o /dev/null -H 'content-type: application/json' \
      -d '{"to":"user@example.com","message":"hello","type":"email"}' "http://127.0.0.1:$PORT/v1/requests"
  done
  local before
  before=$(rss_kib "$pid")
  python3 - "$PORT" "$CONNS" "$HOLD_SECS" "$pid" >"$WORK/client-$label.txt" <<'EOF'
import socket, sys, time, urllib.request

port, conns, hold, pid = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]

def rss():
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

sockets, peak, refused = [], rss(), 0
for i in range(conns):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"POST /v1/requests HTTP/1.1\r\nHost: herald\r\n")
        sockets.append(s)
    except OSError:
        refused += 1
started, served_ms, line = time.monotonic(), None, 0
while time.monotonic() - started < hold:
    line += 1
    for s in sockets:
        try:
            s.sendall(f"x-slow-{line}: y\r\n".encode())
        except OSError:
            pass
    peak = max(peak, rss())
    if served_ms is None:
        body = b'{"to":"user@example.com","message":"during","type":"email"}'
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/requests", data=body,
                                         headers={"content-type": "application/json"})
        t0 = time.monotonic()
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 201
        served_ms = (time.monotonic() - t0) * 1000
    time.sleep(1)
open_at_end = 0
for s in sockets:
    try:
        s.sendall(b"x-last: y\r\n")
        open_at_end += 1
    except OSError:
        pass
    s.close()
print(peak, len(sockets), refused, open_at_end, f"{served_ms:.1f}")
EOF
  local peak opened refused open_at_end served_ms
  read -r peak opened refused open_at_end served_ms <"$WORK/client-$label.txt"
  sleep "$SETTLE_SECS"
  local after
  after=$(rss_kib "$pid")
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  printf '%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\n' "$label" "$(basename "$bin")" "$CONNS" "$opened" "$open_at_end" \
    $((before / 1024)) $((peak / 1024)) $((after / 1024)) "$served_ms" >>"$WORK/results.tsv"
}

: >"$WORK/results.tsv"
if [[ -n ${BASELINE_BIN:-} ]]; then
  measure baseline "$BASELINE_BIN"
fi
measure herald "$HERALD_BIN"

echo
echo "== Resident memory under $CONNS slow connections (headers a line a second, ${HOLD_SECS}s) =="
if rev=$(git rev-parse --short HEAD 2>/dev/null); then
  git diff --quiet HEAD -- src Cargo.toml Cargo.lock || rev="$rev, with uncommitted changes"
fi
echo "commit: ${rev:-unknown}; machine: $(nproc) cores"
{
  printf 'run\tbinary\tconnections\topened\tstill open at the end\tRSS before MiB\tRSS during (peak) MiB\tRSS after MiB\tone create during, ms\n'
  cat "$WORK/results.tsv"
} | column -t -s $'\t'
