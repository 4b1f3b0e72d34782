-- lease: ARGV id, seq, owner, lease length (ms). Fences a delivered message:
-- only the record's current seq, not final and not leased, starts an
-- attempt. A lease held by a dead node is taken back by `rescue`, which
-- bumps the seq, never here. A lease held answers its owner: this node's
-- own, unknown to it, is one whose reply a timeout lost.
local id = ARGV[2]
local rk = P .. ':req:' .. id
local f = redis.call('HMGET', rk, 'seq', 'st', 'lo', 'n', 'at', 'pr')
if not f[1] then return {'missing'} end
if f[2] == 'sent' or f[2] == 'failed' then return {'final'} end
if f[1] ~= ARGV[3] then return {'stale'} end
if f[3] then return {'held', f[3]} end
local now = now_ms()
local deadline = now + tonumber(ARGV[5])
local attempt = tonumber(f[5]) + 1
redis.call('HSET', rk, 'st', 'processing', 'at', attempt, 'lo', ARGV[4], 'ld', int(deadline))
redis.call('HDEL', rk, 'nx')
redis.call('ZREM', P .. ':due', id)
redis.call('ZREM', P .. ':onbroker', id)
redis.call('ZADD', P .. ':inflight', deadline, id)
event(id, now, 'processing', '{"AttemptStarted":{"attempt":' .. int(attempt) .. '}}')
return {'leased', f[4], int(attempt), f[6] or '0', int(deadline)}
