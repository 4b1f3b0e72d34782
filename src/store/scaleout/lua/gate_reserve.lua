-- gate_reserve: ARGV calls, window ms, member. The cluster's sliding window
-- of provider calls: takes a place if fewer than the limit (or the lower
-- limit a 429 imposed, growing back 10% a second) were taken in the last
-- window and no pause holds; else says how long to wait.
-- Returns {1, window now full (1|0)} or {0, wait ms}.
local now = now_ms()
local pause = redis.call('PTTL', P .. ':rate:pause')
if pause > 0 then return {0, pause} end
local log = P .. ':rate:log'
local window = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
local limit = tonumber(ARGV[2])
local imposed = redis.call('HMGET', P .. ':rate:imposed', 'calls', 'at')
if imposed[1] then
  local grown = tonumber(imposed[1]) * math.pow(1.1, (now - tonumber(imposed[2])) / 1000)
  if grown >= limit then
    redis.call('DEL', P .. ':rate:imposed')
  else
    limit = math.max(1, math.floor(grown))
  end
end
local taken = redis.call('ZCARD', log)
if taken < limit then
  redis.call('ZADD', log, now, ARGV[4])
  redis.call('PEXPIRE', log, window * 2)
  if taken + 1 >= limit then return {1, 1} end
  return {1, 0}
end
-- The place that frees first for this limit: the (taken - limit + 1)th oldest.
local frees = redis.call('ZRANGE', log, taken - limit, taken - limit, 'WITHSCORES')
return {0, math.max(1, tonumber(frees[2]) + window - now)}
