#!/usr/bin/env bash
# Renders Herald's /docs page in headless Chromium with background networking
# off and checks that Swagger UI drew every contract route: the page must work
# with no internet, from the assets compiled into the binary.
# Needs Debian's chromium (apt-get install -y chromium). Writes docs.png.
set -euo pipefail
cd "$(dirname "$0")/.."

port=${PORT:-5089}
data=$(mktemp -d)
profile=$(mktemp -d)
cargo build --quiet --bin herald
target/debug/herald serve --listen "127.0.0.1:$port" --data-dir "$data" >/dev/null 2>&1 &
herald=$!
trap 'kill $herald 2>/dev/null; rm -rf "$data" "$profile"' EXIT
for _ in $(seq 50); do curl -sf "127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done

flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run
       --disable-background-networking --disable-component-update --disable-sync
       --user-data-dir="$profile" --virtual-time-budget=5000)
dom=$(timeout 60 chromium "${flags[@]}" --dump-dom "http://127.0.0.1:$port/docs" 2>/dev/null)
timeout 60 chromium "${flags[@]}" --window-size=1280,1000 --screenshot=docs.png "http://127.0.0.1:$port/docs" 2>/dev/null

missing=0
for path in /v1/requests '/v1/requests/{id}' '/v1/requests/{id}/process' '/v1/requests/{id}/events' /health /ready /metrics; do
  if grep -qF "data-path=\"$path\"" <<<"$dom"; then echo "rendered: $path"; else echo "MISSING: $path"; missing=1; fi
done
exit $missing
