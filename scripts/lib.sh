# Shell helpers shared by the measurement scripts (sourced, not run).
# The caller sets LOG_PREFIX (e.g. "bench") and WORK (its scratch directory).

log() { printf '[%s] %s\n' "${LOG_PREFIX:-script}" "$*" >&2; }

die() {
  log "error: $*"
  exit 1
}

# wait_ready URL NAME PID [SECONDS=15]: waits until URL answers 2xx; dies if
# the process PID exits first or the time runs out.
wait_ready() {
  local url=$1 name=$2 pid=$3 seconds=${4:-15}
  for _ in $(seq $((seconds * 10))); do
    kill -0 "$pid" 2>/dev/null || die "$name exited early (see $WORK)"
    if curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  die "$name did not become ready at $url"
}

# Processes the sourcing script started (it appends their pids), for
# stop_started and clean_up_on_exit.
PIDS=()

# stop_started: SIGTERM to every process in PIDS, then SIGKILL to any still
# running 5 s later.
stop_started() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}

# clean_up_on_exit: when the script exits (or gets INT/TERM), stop what it
# started and remove $WORK, unless KEEP_WORKDIR=1; the exit status is kept.
clean_up_on_exit() {
  trap _clean_up EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

_clean_up() {
  local status=$?
  trap - EXIT INT TERM
  stop_started
  if [[ ${KEEP_WORKDIR:-0} == 1 ]]; then
    log "kept $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$status"
}
