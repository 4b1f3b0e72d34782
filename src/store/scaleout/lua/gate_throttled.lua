-- gate_throttled: ARGV configured calls, pause ms (0: none), halve (1|0).
-- A 429 at any node halves the cluster's limit (at most once a second, so
-- one burst of refusals does not collapse it) and, given a Retry-After,
-- pauses every node; an open breaker only pauses them (halve 0).
local now = now_ms()
local pause = tonumber(ARGV[3])
if pause > 0 and redis.call('PTTL', P .. ':rate:pause') < pause then
  redis.call('SET', P .. ':rate:pause', '1', 'PX', pause)
end
if ARGV[4] ~= '1' then return 1 end
local key = P .. ':rate:imposed'
local imposed = redis.call('HMGET', key, 'calls', 'at')
local current = tonumber(ARGV[2])
if imposed[1] then
  if now - tonumber(imposed[2]) < 1000 then return 0 end
  current = math.min(current, tonumber(imposed[1]) * math.pow(1.1, (now - tonumber(imposed[2])) / 1000))
end
redis.call('HSET', key, 'calls', int(math.max(1, math.floor(current / 2))), 'at', int(now))
redis.call('PEXPIRE', key, 600000)
return 1
