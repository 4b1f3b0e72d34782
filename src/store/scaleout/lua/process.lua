-- process: ARGV id. Asks for delivery once: the record gets its first seq
-- and enters the due set now; the mover publishes it.
local id = ARGV[2]
local rk = P .. ':req:' .. id
local st = redis.call('HGET', rk, 'st')
if not st then return {'missing'} end
if redis.call('HEXISTS', rk, 'pr') == 1 then return {'already', st} end
local now = now_ms()
redis.call('HINCRBY', rk, 'seq', 1)
redis.call('HSET', rk, 'pr', int(now))
redis.call('ZADD', P .. ':due', now, id)
local pending = redis.call('INCR', P .. ':pending')
event(id, now, st, '"ProcessRequested"')
return {'accepted', st, int(pending)}
