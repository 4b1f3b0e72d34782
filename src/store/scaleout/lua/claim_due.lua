-- claim_due: ARGV limit, republish timeout (ms), whole ('1': the message
-- carries the whole notification, for external senders; '0': a pointer).
-- Takes up to `limit` due entries and pushes each forward by the timeout, so
-- a mover that dies before the broker confirms leaves them to come back, not
-- lost. Returns {ms until the next entry falls due or -1, then per entry:
-- id, seq, channel, priority, notification JSON, created at, attempts,
-- idempotency key} (the last four '' for a pointer).
local now = now_ms()
local due = P .. ':due'
local whole = ARGV[4] == '1'
local ids = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {'-1'}
for _, id in ipairs(ids) do
  local rk = P .. ':req:' .. id
  local f = redis.call('HMGET', rk, 'seq', 'ch', 'pri', 'st', 'lo')
  if not f[1] or f[4] == 'sent' or f[4] == 'failed' or f[5] then
    redis.call('ZREM', due, id)
  else
    redis.call('ZADD', due, now + tonumber(ARGV[3]), id)
    local w = {'', '', '', ''}
    if whole then w = redis.call('HMGET', rk, 'n', 'ca', 'at', 'ik') end
    for _, v in ipairs({id, f[1], f[2], f[3], w[1], w[2], w[3], w[4]}) do
      table.insert(out, v or '')
    end
  end
end
local first = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
if first[2] then out[1] = int(math.max(0, tonumber(first[2]) - now)) end
return out
