-- finish: ARGV id, seq, owner, decision (sent|failed|retry|deferred), wait ms
-- (retry and deferred), report JSON, provider id or '', error or ''. Fenced
-- by the lease's seq and owner: a rescued lease records nothing ('lost'), as
-- in the embedded engine. A retry falls due the wait after Redis' now, the
-- clock that stamps the history and claims the due set.
local id = ARGV[2]
local rk = P .. ':req:' .. id
local f = redis.call('HMGET', rk, 'seq', 'lo', 'at')
if not f[1] or f[1] ~= ARGV[3] or f[2] ~= ARGV[4] then return {'lost'} end
local now = now_ms()
local decision = ARGV[5]
redis.call('HDEL', rk, 'lo', 'ld')
redis.call('ZREM', P .. ':inflight', id)
local status = 'processing'
local report = ARGV[7]
local pending
if decision == 'sent' or decision == 'failed' then
  status = decision
  redis.call('HSET', rk, 'st', status)
  redis.call('HDEL', rk, 'nx')
  if decision == 'sent' then
    if ARGV[8] ~= '' then redis.call('HSET', rk, 'pid', ARGV[8]) else redis.call('HDEL', rk, 'pid') end
  end
  redis.call('ZADD', P .. ':final', now, id)
  pending = redis.call('DECR', P .. ':pending')
else
  local due = now + tonumber(ARGV[6])
  redis.call('HINCRBY', rk, 'seq', 1)
  redis.call('HSET', rk, 'nx', int(due))
  redis.call('ZADD', P .. ':due', due, id)
  local decoded = cjson.decode(report)
  decoded.next_attempt_at_ms = due
  report = cjson.encode(decoded)
  if decision == 'deferred' then
    redis.call('HSET', rk, 'at', math.max(0, tonumber(f[3]) - 1))
  end
  pending = tonumber(redis.call('GET', P .. ':pending') or '0')
end
if ARGV[9] ~= '' then redis.call('HSET', rk, 'err', ARGV[9]) else redis.call('HDEL', rk, 'err') end
event(id, now, status, '{"AttemptFinished":' .. report .. '}')
return {status, int(pending)}
