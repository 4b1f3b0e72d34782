-- gate_channel: ARGV channel, gap µs. Claims the channel's next free place
-- for the asking node: one call per gap for the whole cluster (GCRA with a
-- burst of one). The key holds when the next free place begins; a claim
-- takes [max(that, now), +gap) and moves it to the place's end, so places
-- are disjoint, each one node's, given in the order nodes ask. The key
-- expires once its time has passed: a missing key means the channel is free.
-- Returns the µs from now until the claimed place begins (0: it has).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local key = P .. ':rate:channel:' .. ARGV[2]
local gap = tonumber(ARGV[3])
local start = math.max(now, tonumber(redis.call('GET', key) or '0'))
local next_free = start + gap
redis.call('SET', key, int(next_free), 'PX', int(math.ceil((next_free - now) / 1000)))
return start - now
