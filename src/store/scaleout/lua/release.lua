-- release: ARGV id, seq, owner. An attempt that never called the provider
-- gives its lease and its attempt number back; the record is due now.
local id = ARGV[2]
local rk = P .. ':req:' .. id
local f = redis.call('HMGET', rk, 'seq', 'lo', 'at', 'st')
if not f[1] or f[1] ~= ARGV[3] or f[2] ~= ARGV[4] then return 0 end
local now = now_ms()
redis.call('HDEL', rk, 'lo', 'ld')
redis.call('ZREM', P .. ':inflight', id)
redis.call('HINCRBY', rk, 'seq', 1)
redis.call('HSET', rk, 'at', math.max(0, tonumber(f[3]) - 1))
redis.call('ZADD', P .. ':due', now, id)
event(id, now, f[4], '"LeaseRecovered"')
return 1
