-- claim_due: ARGV limit, republish timeout (ms). Takes up to `limit` due
-- entries and pushes each forward by the timeout, so a mover that dies
-- before the broker confirms leaves them to come back, not lost. Returns
-- {ms until the next entry falls due or -1, id, seq, channel, priority, ...}.
local now = now_ms()
local due = P .. ':due'
local ids = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {'-1'}
for _, id in ipairs(ids) do
  local f = redis.call('HMGET', P .. ':req:' .. id, 'seq', 'ch', 'pri', 'st', 'lo')
  if not f[1] or f[4] == 'sent' or f[4] == 'failed' or f[5] then
    redis.call('ZREM', due, id)
  else
    redis.call('ZADD', due, now + tonumber(ARGV[3]), id)
    table.insert(out, id)
    table.insert(out, f[1])
    table.insert(out, f[2])
    table.insert(out, f[3])
  end
end
local first = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
if first[2] then out[1] = int(math.max(0, tonumber(first[2]) - now)) end
return out
