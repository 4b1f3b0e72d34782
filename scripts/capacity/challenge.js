// The challenge's own load shape (its k6 script): virtual users ramp
// 0 -> 50 -> 150 -> 200 over 40 s, and each iteration creates a
// notification, asks for its delivery, waits 0.5 s, reads it back and waits
// 1 s. Every created id is logged (`id <uuid>`) so scripts/provider-capacity.sh
// can read each request's outcome after the drain.
//   BASE_URL=http://127.0.0.1:5000 k6 run scripts/capacity/challenge.js
import http from 'k6/http';
import { sleep } from 'k6';

const BASE_URL = __ENV.BASE_URL || 'http://localhost:5000';
const TYPES = ['email', 'sms', 'push'];

export const options = {
  stages: [
    { duration: '10s', target: 50 },
    { duration: '20s', target: 150 },
    { duration: '10s', target: 200 },
  ],
  gracefulRampDown: '0s',
  gracefulStop: '5s',
};

export default function () {
  const params = { headers: { 'Content-Type': 'application/json' }, timeout: '10s' };
  const body = JSON.stringify({
    to: `user${__VU}@example.com`,
    message: `iteration ${__ITER} of VU ${__VU}`,
    type: TYPES[__ITER % TYPES.length],
  });
  const created = http.post(`${BASE_URL}/v1/requests`, body, params);
  if (created.status !== 201) {
    return;
  }
  const id = created.json('id');
  console.log(`id ${id}`);
  http.post(`${BASE_URL}/v1/requests/${id}/process`, null, params);
  sleep(0.5);
  http.get(`${BASE_URL}/v1/requests/${id}`, params);
  sleep(1);
}
