#!/usr/bin/env bash
# The configured rate against a provider with capacity to spare: how many
# deliveries a second each engine makes under each rate setting, one node,
# in one run (issue 22, item 4).
#
#   scripts/bench-rate.sh
#
# Builds the release binary, starts on loopback only a provider simulator with
# no limit (20-80 ms a call), then for each engine and each setting in RATES a
# fresh `herald serve` (scale-out: a private durable redis-server in a
# temporary directory and a vhost of its own on the machine's RabbitMQ),
# creates and queues REQUESTS requests with hey (Debian's package), and times
# from the first create until every request is `sent` (at most MAX_SECS per
# run). Prints one line per
# run: engine, setting, requests, seconds, delivered/s, ratio to the setting.
#
# Knobs (environment): REQUESTS (2000), MAX_SECS (150), ENGINES ("embedded
# scaleout"), RATES (";"-separated flag sets, below), FLAGS (flags for every
# run, say "--max-in-flight 128"), PORT (5110),
# SIM_PORT (5111), REDIS_PORT (5112).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
REQUESTS=${REQUESTS:-2000}
FLAGS=${FLAGS:-}
MAX_SECS=${MAX_SECS:-150}
ENGINES=${ENGINES:-"embedded scaleout"}
RATES=${RATES:-"--rate-per-sec 5;--rate-per-sec 20;--rate-per-sec 200;--rate-per-sec 200 --rate-burst 20;--rate-per-sec 1000;--rate-per-sec 2000;--rate-limit 2000/10s"}
PORT=${PORT:-5110}
SIM_PORT=${SIM_PORT:-5111}
REDIS_PORT=${REDIS_PORT:-5112}
export PATH="$PATH:/usr/sbin:/sbin"

command -v hey >/dev/null || { echo "hey is missing: apt-get install hey" >&2; exit 1; }
cargo build --release --locked --bin herald >&2
BIN="$ROOT/target/release/herald"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN" provider-sim --listen "127.0.0.1:$SIM_PORT" --window-calls 100000000 \
  --latency-min-ms 20 --latency-max-ms 80 --error-rate 0 --max-concurrent 100000 >/dev/null 2>&1 &
PIDS+=($!)

wait_http() { # URL SECONDS
  local deadline=$((SECONDS + $2))
  until curl -fsS -o /dev/null --max-time 1 "$1"; do
    ((SECONDS < deadline)) || { echo "no answer from $1" >&2; return 1; }
    sleep 0.2
  done
}

# Creates and queues REQUESTS requests in one call each (/api/v1/notifications),
# 32 at a time: hey makes a few thousand a second here, so the backlog is
# there well before the provider could drain it.
submit_all() {
  hey -n "$REQUESTS" -c 32 -t 10 -m POST -T application/json \
    -d '{"to":"user@example.com","message":"m","channel":"email"}' \
    "http://127.0.0.1:$PORT/api/v1/notifications" > "$WORK/hey.txt"
  grep -q '\[202\]' "$WORK/hey.txt" || { cat "$WORK/hey.txt" >&2; return 1; }
}

# How many creates were accepted (hey sends REQUESTS rounded down to a
# multiple of its 32 workers).
accepted() {
  awk '/\[202\]/ { print $2 }' "$WORK/hey.txt"
}

sent_count() {
  curl -fsS --max-time 2 "http://127.0.0.1:$PORT/metrics" |
    awk '/^herald_requests_finished_total/ && /status="sent"/ { n += $2 } END { print n + 0 }'
}

run_one() { # ENGINE FLAGS
  local engine=$1 flags=$2 extra=()
  rm -rf "$WORK/data"
  if [[ $engine == scaleout ]]; then
    mkdir -p "$WORK/redis"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --appendonly yes --appendfsync always \
      --maxmemory-policy noeviction --save '' --dir "$WORK/redis" --daemonize no >/dev/null 2>&1 &
    REDIS_PID=$!
    local vhost="herald-rate-$$-$RANDOM"
    rabbitmqctl add_vhost "$vhost" >/dev/null
    rabbitmqctl set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null
    extra=(--backend scaleout --redis-url "redis://127.0.0.1:$REDIS_PORT" --amqp-url "amqp://guest:guest@127.0.0.1:5672/$vhost")
    sleep 0.5
  fi
  # shellcheck disable=SC2086
  "$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" \
    --provider-url "http://127.0.0.1:$SIM_PORT" $flags $FLAGS "${extra[@]}" >/dev/null 2>&1 &
  local herald=$!
  wait_http "http://127.0.0.1:$PORT/ready" 30
  local start deadline sent
  start=$(date +%s.%N)
  submit_all
  local wanted
  wanted=$(accepted)
  deadline=$((SECONDS + MAX_SECS))
  sent=0
  while ((SECONDS < deadline)); do
    sent=$(sent_count)
    ((sent >= wanted)) && break
    sleep 0.2
  done
  local end
  end=$(date +%s.%N)
  kill "$herald"; wait "$herald" 2>/dev/null || true
  if [[ $engine == scaleout ]]; then
    kill "$REDIS_PID"; wait "$REDIS_PID" 2>/dev/null || true
    rm -rf "$WORK/redis"
    rabbitmqctl delete_vhost "$vhost" >/dev/null
  fi
  awk -v e="$engine" -v f="$flags" -v n="$sent" -v s="$start" -v t="$end" -v r="$(rate_of "$flags")" \
    'BEGIN { secs = t - s; rate = n / secs; printf "%-9s %-36s %5d sent %7.1f s %8.1f/s %6.3f\n", e, f, n, secs, rate, rate / r }'
}

# The setting's rate in calls per second.
rate_of() {
  local flags=$1
  if [[ $flags =~ --rate-limit\ ([0-9]+)/([0-9]+)s ]]; then
    awk -v n="${BASH_REMATCH[1]}" -v w="${BASH_REMATCH[2]}" 'BEGIN { print n / w }'
  elif [[ $flags =~ --rate-per-sec\ ([0-9.]+) ]]; then
    echo "${BASH_REMATCH[1]}"
  else
    echo 5
  fi
}

wait_http "http://127.0.0.1:$SIM_PORT/health" 10 || true
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $REQUESTS requests a run, flags: ${FLAGS:-none}; timed from the first create to the last sent"
printf '%-9s %-36s %10s %9s %10s %6s\n' engine setting sent seconds delivered ratio
IFS=';' read -r -a settings <<< "$RATES"
for engine in $ENGINES; do
  for flags in "${settings[@]}"; do
    run_one "$engine" "$flags"
  done
done
