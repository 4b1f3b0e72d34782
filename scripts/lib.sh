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
