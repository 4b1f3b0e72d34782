-- report: ARGV id, seq, outcome (sent|failed|retry), provider id or '',
-- error or '', retry delay ms (retry only), the attempt the node judged.
-- An external sender's report on the message {id, seq} it consumed: applied
-- once, to the schedule it names; a repeat, or a report on an older copy,
-- changes nothing. The history gets the attempt's start and its end, as if
-- a node had made the call. A retry (which the node judged against its
-- retry budget for that attempt number) gets a new seq and a due entry, so
-- the mover publishes it again after its delay.
local id = ARGV[2]
local rk = P .. ':req:' .. id
local f = redis.call('HMGET', rk, 'seq', 'st', 'at', 'lo')
if not f[1] then return 'missing' end
if f[2] == 'sent' or f[2] == 'failed' then return 'final' end
if f[1] ~= ARGV[3] or f[4] then return 'stale' end
local now = now_ms()
local outcome = ARGV[4]
local attempt = tonumber(f[3]) + 1
if outcome == 'retry' and attempt ~= tonumber(ARGV[8]) then return 'stale' end
redis.call('HSET', rk, 'at', attempt)
event(id, now, 'processing', '{"AttemptStarted":{"attempt":' .. int(attempt) .. '}}')
local provider_id, error, next_at = cjson.null, cjson.null, cjson.null
if ARGV[6] ~= '' then
  error = ARGV[6]
  redis.call('HSET', rk, 'err', ARGV[6])
end
redis.call('ZREM', P .. ':onbroker', id)
local status = outcome
if outcome == 'retry' then
  status = 'processing'
  next_at = now + tonumber(ARGV[7])
  redis.call('HINCRBY', rk, 'seq', 1)
  redis.call('HSET', rk, 'st', status, 'nx', int(next_at))
  redis.call('ZADD', P .. ':due', next_at, id)
else
  if ARGV[5] ~= '' then
    provider_id = ARGV[5]
    if outcome == 'sent' then redis.call('HSET', rk, 'pid', ARGV[5]) end
  end
  redis.call('HSET', rk, 'st', outcome)
  redis.call('HDEL', rk, 'nx')
  redis.call('ZREM', P .. ':due', id)
  redis.call('ZADD', P .. ':final', now, id)
  redis.call('DECR', P .. ':pending')
end
local report = cjson.encode({attempt = attempt, http_status = cjson.null, error = error,
  provider_id = provider_id, latency_ms = 0, next_attempt_at_ms = next_at})
event(id, now, status, '{"AttemptFinished":' .. report .. '}')
return 'applied'
