#!/usr/bin/env bash
# Contract test: schemathesis, every check, against Herald's own OpenAPI
# document (GET /openapi.json), bounded to well under 2 minutes.
#
#   scripts/contract-test.sh
#
# Starts on loopback only, with fresh data dirs:
#   - `herald provider-sim` (healthy profile: deliveries succeed at once),
#   - `herald serve` with no client keys: schemathesis runs every check
#     (`--checks all`: status codes, content types, headers and bodies against
#     the document, schema-valid data accepted, schema-invalid data refused, no
#     5xx, unsupported methods, ...);
#   - `herald serve` with a client keys file: the same, sending a client's key
#     (the document then declares the bearer key, and `ignored_auth` checks that
#     a call without it is refused).
# Any failure exits non-zero. Everything started is stopped on exit.
#
# Needs python3 with schemathesis (`pip install schemathesis`; .ci/run installs
# it when missing). Uses target/release/herald if it is newer than the
# sources, else builds and uses the debug binary.
#
# Knobs (environment): MAX_EXAMPLES (40, per operation, first run),
# MAX_EXAMPLES_WITH_KEYS (15), SEED (2026: a fixed seed, so a failure
# reproduces), RUN_TIMEOUT_SECS (50, per schemathesis run), KEEP_WORKDIR (0).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

MAX_EXAMPLES=${MAX_EXAMPLES:-40}
MAX_EXAMPLES_WITH_KEYS=${MAX_EXAMPLES_WITH_KEYS:-15}
SEED=${SEED:-2026}
RUN_TIMEOUT_SECS=${RUN_TIMEOUT_SECS:-50}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

LOG_PREFIX=contract
WORK=$(mktemp -d "${TMPDIR:-/tmp}/herald-contract.XXXXXX")
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

# schemathesis through python3, whatever the PATH holds for its scripts.
schemathesis() {
  python3 -c 'import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())' "$@"
}
python3 -c 'import schemathesis' 2>/dev/null ||
  die "schemathesis is not installed for python3 (pip install schemathesis)"
command -v curl >/dev/null 2>&1 || die "curl is needed to wait for the servers"

clean_up_on_exit

HERALD_BIN="$TARGET_DIR/release/herald"
if [[ ! -x $HERALD_BIN ]] || [[ -n $(find src Cargo.toml Cargo.lock -newer "$HERALD_BIN" -print -quit) ]]; then
  log "building the debug binary"
  cargo build --locked --bin herald
  HERALD_BIN="$TARGET_DIR/debug/herald"
fi
log "using $HERALD_BIN"

# A free loopback port (bound, read, released).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

SIM_PORT=$(free_port)
env -u RUST_LOG "$HERALD_BIN" provider-sim --listen "127.0.0.1:$SIM_PORT" --profile healthy \
  >"$WORK/sim.log" 2>&1 &
SIM_PID=$!
PIDS+=("$SIM_PID")
wait_ready "http://127.0.0.1:$SIM_PORT/health" provider-sim "$SIM_PID"

# run_schemathesis NAME MAX_EXAMPLES [HERALD FLAGS...] [-- SCHEMATHESIS FLAGS...]
run_schemathesis() {
  local name=$1 examples=$2
  shift 2
  local herald_flags=() st_flags=()
  while (($#)); do
    if [[ $1 == -- ]]; then
      shift
      st_flags=("$@")
      break
    fi
    herald_flags+=("$1")
    shift
  done
  local port
  port=$(free_port)
  env -u RUST_LOG "$HERALD_BIN" serve --listen "127.0.0.1:$port" --data-dir "$WORK/data-$name" \
    --provider-url "http://127.0.0.1:$SIM_PORT" --rate-per-sec 1000 --rate-burst 100 \
    "${herald_flags[@]}" >"$WORK/herald-$name.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  wait_ready "http://127.0.0.1:$port/ready" "herald ($name)" "$pid"
  log "$name: schemathesis, every check, $examples examples per operation, seed $SEED"
  (cd "$WORK" && timeout "$RUN_TIMEOUT_SECS" schemathesis run "http://127.0.0.1:$port/openapi.json" \
    --checks all --max-examples "$examples" --seed "$SEED" --workers 2 \
    --generation-database none "${st_flags[@]}") || die "$name: schemathesis found failures (or ran out of time)"
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
}

run_schemathesis open "$MAX_EXAMPLES"

CLIENT_KEY="contract-client-key-0123456789"
printf '# name key\ncontract %s\n' "$CLIENT_KEY" >"$WORK/client-keys"
run_schemathesis with-keys "$MAX_EXAMPLES_WITH_KEYS" --client-keys-file "$WORK/client-keys" \
  -- -H "Authorization: Bearer $CLIENT_KEY"

log "no failures"
