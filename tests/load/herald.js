// k6 load suite for Herald.
//
// Every iteration is one client's whole journey: create a notification
// (POST /v1/requests), ask for its delivery (POST /v1/requests/{id}/process),
// then poll GET /v1/requests/{id} until it is `sent` or `failed`, giving up
// after a bounded time ("not settled"). HTTP requests are tagged by name
// (`create`, `process`, `status`, `ready`) so thresholds and dashboards can
// tell them apart.
//
//   k6 run tests/load/herald.js                                   # steady, http://localhost:5000
//   SCENARIO=ramp BASE_URL=http://127.0.0.1:5201 k6 run tests/load/herald.js
//   scripts/load-test.sh [steady|ramp|trouble|all]                # builds, starts Herald + simulator, runs k6
//
// docker-compose: `docker-compose run --rm load-test` runs this file from the
// grafana/k6 image with BASE_URL=http://app:5000 and no other setting, so the
// default scenario (steady) is sized for the reference provider the compose
// `provider` service simulates.
//
// Scenarios (env SCENARIO, default `steady`):
//   steady   constant arrival rate below the provider's capacity (the reference
//            provider admits 50 calls per sliding 10 s, and so does Herald's
//            default pace): every request must be sent.
//   ramp     arrival rate ramping well above that capacity: Herald must keep
//            answering fast while its backlog grows. Requests that do not
//            settle within the polling bound are expected; they are reported,
//            not failed.
//   trouble  the provider is in trouble (simulator profile `flaky`: 30% of calls
//            answer 500/502/503, or `throttled`: 429 with Retry-After above a set
//            rate; with compose: SIM_ERROR_RATE=0.3 on `provider`), at a base
//            rate it can still take plus one burst above it: the API must stay
//            fast and at least 99% of the requests must be sent within the bound.
//
// Thresholds (all scenarios unless said otherwise):
//   herald_5xx          count==0    no 5xx from Herald, on any route
//   herald_no_answer    count==0    no request to Herald without an answer (timeout, reset)
//   http_req_duration{name:create}   p(95)<50 ms
//   http_req_duration{name:process}  p(95)<50 ms
//   delivered           rate>=0.99  (steady, trouble; reported only in ramp)
//
// Custom metrics (also in InfluxDB for the Grafana scorecard): delivered,
// requests_sent / _failed / _not_settled / _create_failed / _process_failed,
// delivery_ms (create -> sent as Herald recorded it: updated_at_ms - created_at_ms),
// settle_observed_ms (create -> the poll that saw the final status),
// delivery_attempts, herald_pending (GET /ready every 5 s), herald_5xx, herald_no_answer.
//
// Knobs (env; durations in k6 syntax such as 90s or 2m):
//   BASE_URL (http://localhost:5000), SCENARIO (steady)
//   STEADY_RATE (4 per s), STEADY_DURATION (2m)
//   RAMP_START_RATE (2), RAMP_PEAK_RATE (25), RAMP_WARM (20s), RAMP_UP (60s), RAMP_HOLD (40s)
//   TROUBLE_RATE (2 per s), TROUBLE_DURATION (2m), TROUBLE_BURST_RATE (6 per s) for
//   TROUBLE_BURST (15s) in the middle of the run (a burst rate <= the base rate: no burst)
//   RATE / DURATION override the chosen scenario's base rate / duration (steady, trouble)
//   POLL_MIN_MS (500), POLL_MAX_MS (1000): wait between two status polls
//   SETTLE_TIMEOUT_S (steady 30, ramp 20, trouble 60): polling bound per request
//   DELIVERED_MIN (0.99), CREATE_P95_MS (50), PROCESS_P95_MS (50)
//   MAX_VUS: virtual users, all allocated up front (default: peak rate x (settle bound + 5 s))
//   BACKLOG_WATCH (1): sample GET /ready's `pending` every 5 s as the gauge herald_pending

import http from 'k6/http';
import { check, sleep } from 'k6';
import exec from 'k6/execution';
import { Counter, Gauge, Rate, Trend } from 'k6/metrics';

const BASE_URL = (__ENV.BASE_URL || 'http://localhost:5000').replace(/\/+$/, '');
const SCENARIO = (__ENV.SCENARIO || 'steady').trim().toLowerCase();

function num(name, fallback) {
  const raw = __ENV[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value)) throw new Error(`${name}=${raw} is not a number`);
  return value;
}
function str(name, fallback) {
  const raw = __ENV[name];
  return raw === undefined || raw === '' ? fallback : raw;
}
// Seconds in a k6 duration such as "90s", "2m", "1m30s" or a bare number of seconds.
function seconds(duration) {
  if (/^\d+(\.\d+)?$/.test(duration)) return Number(duration);
  let total = 0;
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h)/g;
  let match;
  let consumed = '';
  while ((match = re.exec(duration)) !== null) {
    const unit = { ms: 0.001, s: 1, m: 60, h: 3600 }[match[2]];
    total += Number(match[1]) * unit;
    consumed += match[0];
  }
  if (consumed !== duration) throw new Error(`bad duration: ${duration}`);
  return total;
}

const POLL_MIN_MS = num('POLL_MIN_MS', 500);
const POLL_MAX_MS = Math.max(POLL_MIN_MS, num('POLL_MAX_MS', 1000));
const SETTLE_DEFAULTS = { steady: 30, ramp: 20, trouble: 60 };
if (!(SCENARIO in SETTLE_DEFAULTS)) {
  throw new Error(`SCENARIO=${SCENARIO}: expected steady, ramp or trouble`);
}
const SETTLE_TIMEOUT_S = num('SETTLE_TIMEOUT_S', SETTLE_DEFAULTS[SCENARIO]);
const DELIVERED_MIN = num('DELIVERED_MIN', 0.99);
const CREATE_P95_MS = num('CREATE_P95_MS', 50);
const PROCESS_P95_MS = num('PROCESS_P95_MS', 50);
const BACKLOG_WATCH = str('BACKLOG_WATCH', '1') !== '0';
// An iteration lasts about create + process + the polling bound; arrival-rate
// executors need that many VUs per request started per second.
const ITERATION_BOUND_S = SETTLE_TIMEOUT_S + 5;

// Herald's answers, whatever the route: a 5xx is a threshold failure.
const herald5xx = new Counter('herald_5xx');
// Requests Herald never answered (k6 saw status 0: timeout, refused, reset).
const heraldNoAnswer = new Counter('herald_no_answer');
// One sample per iteration: true when the request reached `sent` within the bound.
const delivered = new Rate('delivered');
const sentCount = new Counter('requests_sent');
const failedCount = new Counter('requests_failed');
const notSettledCount = new Counter('requests_not_settled');
const createFailedCount = new Counter('requests_create_failed');
const processFailedCount = new Counter('requests_process_failed');
// Create -> sent as Herald recorded it (updated_at_ms - created_at_ms of a sent request).
const deliveryMs = new Trend('delivery_ms', true);
// Create -> the poll that first saw a final status, as the client saw it.
const settleObservedMs = new Trend('settle_observed_ms', true);
const attempts = new Trend('delivery_attempts');
const pending = new Gauge('herald_pending');

function buildScenario() {
  const graceful = `${Math.ceil(ITERATION_BOUND_S + 5)}s`;
  if (SCENARIO === 'steady') {
    const rate = num('RATE', num('STEADY_RATE', 4));
    const duration = str('DURATION', str('STEADY_DURATION', '2m'));
    const maxVUs = num('MAX_VUS', Math.ceil(rate * ITERATION_BOUND_S) + 10);
    return {
      seconds: seconds(duration),
      graceful,
      scenario: {
        executor: 'constant-arrival-rate',
        rate,
        timeUnit: '1s',
        duration,
        // Every VU up front: VUs allocated mid-run come too late and k6
        // drops the arrivals meanwhile.
        preAllocatedVUs: maxVUs,
        maxVUs,
        gracefulStop: graceful,
        tags: { scenario_kind: SCENARIO },
      },
    };
  }
  if (SCENARIO === 'trouble') {
    // A base rate below what the provider in trouble still delivers, with one
    // burst above it in the middle: a provider that throttles "above a set
    // rate" only answers 429 when Herald has a backlog to push, and under
    // `flaky` the retries then compete with new work.
    const rate = num('RATE', num('TROUBLE_RATE', 2));
    const burstRate = num('TROUBLE_BURST_RATE', 6);
    const burst = seconds(str('TROUBLE_BURST', '15s'));
    const total = seconds(str('DURATION', str('TROUBLE_DURATION', '2m')));
    const before = Math.max(0, Math.round((total - burst - 10) * 0.4));
    const after = Math.max(0, total - before - burst - 10);
    const stages =
      burstRate > rate && burst > 0
        ? [
            { target: rate, duration: `${before}s` },
            { target: burstRate, duration: '5s' },
            { target: burstRate, duration: `${burst}s` },
            { target: rate, duration: '5s' },
            { target: rate, duration: `${after}s` },
          ]
        : [{ target: rate, duration: `${total}s` }];
    const top = Math.max(rate, burstRate);
    const maxVUs = num('MAX_VUS', Math.ceil(top * ITERATION_BOUND_S) + 10);
    return {
      seconds: total,
      graceful,
      scenario: {
        executor: 'ramping-arrival-rate',
        startRate: rate,
        timeUnit: '1s',
        stages,
        preAllocatedVUs: maxVUs,
        maxVUs,
        gracefulStop: graceful,
        tags: { scenario_kind: SCENARIO },
      },
    };
  }
  // ramp: a warm-up below capacity, then up to the peak, then hold it.
  const start = num('RAMP_START_RATE', 2);
  const peak = num('RAMP_PEAK_RATE', 25);
  const warm = str('RAMP_WARM', '20s');
  const up = str('RAMP_UP', '60s');
  const hold = str('RAMP_HOLD', '40s');
  const maxVUs = num('MAX_VUS', Math.ceil(peak * ITERATION_BOUND_S) + 20);
  return {
    seconds: seconds(warm) + seconds(up) + seconds(hold),
    graceful,
    scenario: {
      executor: 'ramping-arrival-rate',
      startRate: start,
      timeUnit: '1s',
      stages: [
        { target: start, duration: warm },
        { target: peak, duration: up },
        { target: peak, duration: hold },
      ],
      preAllocatedVUs: maxVUs,
      maxVUs,
      gracefulStop: graceful,
      tags: { scenario_kind: SCENARIO },
    },
  };
}

const plan = buildScenario();

const scenarios = { [SCENARIO]: plan.scenario };
if (BACKLOG_WATCH) {
  // One VU reading Herald's backlog (GET /ready -> pending) every 5 s while
  // requests arrive, for the summary (herald_pending max) and for Grafana.
  scenarios.backlog = {
    executor: 'constant-vus',
    vus: 1,
    duration: `${Math.ceil(plan.seconds)}s`,
    gracefulStop: '5s',
    exec: 'watchBacklog',
    tags: { scenario_kind: 'backlog' },
  };
}

const thresholds = {
  herald_5xx: ['count==0'],
  herald_no_answer: ['count==0'],
  [`http_req_duration{name:create}`]: [`p(95)<${CREATE_P95_MS}`],
  [`http_req_duration{name:process}`]: [`p(95)<${PROCESS_P95_MS}`],
  // No limit on status polls; listed so the summary shows them apart.
  [`http_req_duration{name:status}`]: [],
  [`checks{step:create}`]: [],
  [`checks{step:process}`]: [],
};
if (SCENARIO === 'ramp') {
  // Saturation run: a request that does not settle within the bound is the
  // expected backlog, so the rate is reported without a limit.
  thresholds.delivered = [];
} else {
  thresholds.delivered = [`rate>=${DELIVERED_MIN}`];
}

export const options = {
  scenarios,
  thresholds,
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'],
  // Poll bodies are small; keeping them is what lets us read `status`.
  discardResponseBodies: false,
};

const JSON_HEADERS = { 'Content-Type': 'application/json' };
const TYPES = ['email', 'sms', 'push'];

function recipient(type, n) {
  switch (type) {
    case 'email':
      return `k6-user-${n}@example.com`;
    case 'sms':
      return `+1555${String(n % 10000000).padStart(7, '0')}`;
    default:
      return `device-token-k6-${n}`;
  }
}

// Counts what every answer from Herald says about Herald itself.
function observe(res, name) {
  if (res.status === 0) {
    heraldNoAnswer.add(1, { name });
  } else if (res.status >= 500) {
    herald5xx.add(1, { name });
  }
  return res;
}

function pollPause() {
  sleep((POLL_MIN_MS + Math.random() * (POLL_MAX_MS - POLL_MIN_MS)) / 1000);
}

export function setup() {
  const res = http.get(`${BASE_URL}/ready`, { tags: { name: 'ready' }, timeout: '10s' });
  if (res.status !== 200) {
    throw new Error(`Herald at ${BASE_URL} is not ready: /ready answered ${res.status} ${res.body}`);
  }
  const at = Date.now();
  const start = res.json('pending');
  console.log(`herald at ${BASE_URL}: scenario=${SCENARIO} pending at start=${start} settle bound=${SETTLE_TIMEOUT_S}s`);
  if (start > 0 && SCENARIO !== 'ramp') {
    // A backlog left by an earlier run (the compose data volume keeps it)
    // is delivered first and delays this run's requests.
    console.warn(`Herald already has ${start} undelivered request(s): they go first, so 'delivered' may suffer`);
  }
  return { pendingAtStart: start, startedAt: at };
}

export default function () {
  const n = exec.scenario.iterationInTest;
  const type = TYPES[n % TYPES.length];
  const payload = JSON.stringify({
    to: recipient(type, n),
    message: `Herald k6 ${SCENARIO} #${n}: your code is ${String(n % 1000000).padStart(6, '0')}`,
    type,
  });

  const started = Date.now();
  const created = observe(
    http.post(`${BASE_URL}/v1/requests`, payload, {
      headers: JSON_HEADERS,
      tags: { name: 'create' },
      timeout: '10s',
    }),
    'create',
  );
  let id = null;
  if (created.status === 201) {
    try {
      id = created.json('id');
    } catch (_) {
      id = null;
    }
  }
  const createOk = check(
    created,
    { 'create: 201 with an id': () => created.status === 201 && typeof id === 'string' && id.length > 0 },
    { step: 'create' },
  );
  if (!createOk) {
    createFailedCount.add(1);
    delivered.add(false);
    return;
  }

  const processed = observe(
    http.post(`${BASE_URL}/v1/requests/${id}/process`, null, {
      tags: { name: 'process' },
      timeout: '10s',
    }),
    'process',
  );
  const processOk = check(
    processed,
    { 'process: 200 or 202': (r) => r.status === 202 || r.status === 200 },
    { step: 'process' },
  );
  if (!processOk) {
    processFailedCount.add(1);
    delivered.add(false);
    return;
  }

  const deadline = started + SETTLE_TIMEOUT_S * 1000;
  for (;;) {
    pollPause();
    const res = observe(
      http.get(`${BASE_URL}/v1/requests/${id}`, { tags: { name: 'status' }, timeout: '10s' }),
      'status',
    );
    if (res.status === 200) {
      let body = null;
      try {
        body = res.json();
      } catch (_) {
        body = null;
      }
      const status = body && body.status;
      if (status === 'sent' || status === 'failed') {
        settleObservedMs.add(Date.now() - started);
        if (typeof body.attempts === 'number') attempts.add(body.attempts);
        if (status === 'sent') {
          delivered.add(true);
          sentCount.add(1);
          if (typeof body.updated_at_ms === 'number' && typeof body.created_at_ms === 'number') {
            deliveryMs.add(body.updated_at_ms - body.created_at_ms);
          }
        } else {
          delivered.add(false);
          failedCount.add(1);
          console.warn(`request ${id} (${type}) failed after ${body.attempts} attempt(s)`);
        }
        return;
      }
    }
    if (Date.now() >= deadline) {
      delivered.add(false);
      notSettledCount.add(1);
      return;
    }
  }
}

export function watchBacklog() {
  const res = observe(http.get(`${BASE_URL}/ready`, { tags: { name: 'ready' }, timeout: '10s' }), 'ready');
  if (res.status === 200) {
    try {
      pending.add(res.json('pending'));
    } catch (_) {
      // not JSON: counted nowhere, the 5xx/no-answer counters cover real failures
    }
  }
  sleep(5);
}

export function teardown(data) {
  const res = http.get(`${BASE_URL}/ready`, { tags: { name: 'ready' }, timeout: '10s' });
  let now = 'unknown';
  try {
    now = res.json('pending');
  } catch (_) {
    now = `${res.status}`;
  }
  console.log(
    `herald at ${BASE_URL}: pending at start=${data.pendingAtStart}, at end=${now} ` +
      `(${Math.round((Date.now() - data.startedAt) / 1000)} s)`,
  );
}
