-- release: ARGV id, seq, owner, give back (1|0). The lease goes back, due
-- now; an attempt that never called the provider (1) gives its attempt
-- number back too, an abandoned one (0) may have called it and keeps it.
local id = ARGV[2]
local rk = P .. ':req:' .. id
local f = redis.call('HMGET', rk, 'seq', 'lo', 'at', 'st')
if not f[1] or f[1] ~= ARGV[3] or f[2] ~= ARGV[4] then return 0 end
local now = now_ms()
redis.call('HDEL', rk, 'lo', 'ld')
redis.call('ZREM', P .. ':inflight', id)
redis.call('HINCRBY', rk, 'seq', 1)
if ARGV[5] == '1' then
  redis.call('HSET', rk, 'at', math.max(0, tonumber(f[3]) - 1))
end
redis.call('ZADD', P .. ':due', now, id)
event(id, now, f[4], '"LeaseRecovered"')
return 1
