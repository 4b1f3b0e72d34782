-- rescue: ARGV limit, starting owner or ''. Takes back, of the `limit`
-- leases that end soonest, those past their deadline, whose owner's liveness
-- key is gone, or held by the starting owner (a node starting again under its
-- own instance id holds none of the leases its killed run left, and its key
-- is alive again): a new seq (so the dead attempt's finish and its
-- redelivered message are fenced), due now, a `lease_recovered` event.
-- Returns how many.
local now = now_ms()
local inflight = P .. ':inflight'
local leases = redis.call('ZRANGE', inflight, 0, tonumber(ARGV[2]) - 1, 'WITHSCORES')
local rescued = 0
for i = 1, #leases, 2 do
  local id = leases[i]
  local rk = P .. ':req:' .. id
  local f = redis.call('HMGET', rk, 'lo', 'st')
  if not f[1] then
    redis.call('ZREM', inflight, id)
  elseif tonumber(leases[i + 1]) <= now or f[1] == ARGV[3]
      or redis.call('EXISTS', P .. ':node:' .. f[1]) == 0 then
    redis.call('HDEL', rk, 'lo', 'ld')
    redis.call('ZREM', inflight, id)
    redis.call('HINCRBY', rk, 'seq', 1)
    redis.call('ZADD', P .. ':due', now, id)
    event(id, now, f[2], '"LeaseRecovered"')
    rescued = rescued + 1
  end
end
return rescued
