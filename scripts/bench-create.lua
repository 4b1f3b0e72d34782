-- wrk script for scripts/bench-http.sh: every request is Herald's create,
-- POST /v1/requests with a JSON body. No per-response Lua callback (it would
-- cost wrk CPU that the servers need on a 2-core machine); answers of 4xx/5xx
-- are still counted by wrk itself as errors.status and printed below.
wrk.method = "POST"
wrk.path = "/v1/requests"
wrk.body = '{"to":"user@example.com","message":"hello","type":"email"}'
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
  -- One machine-readable line, parsed by bench-http.sh.
  io.write(string.format(
    "BENCH requests=%d duration_us=%d errors_connect=%d errors_read=%d errors_write=%d errors_timeout=%d errors_status=%d p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d\n",
    summary.requests, summary.duration,
    summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout, summary.errors.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
