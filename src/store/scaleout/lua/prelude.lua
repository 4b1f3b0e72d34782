-- Prepended to every Herald script. ARGV[1] is the key prefix, a Redis
-- Cluster hash tag ("{herald}"), so every key a script builds from it lives
-- in one slot. Times come from Redis' own clock, so nodes never disagree.
local P = ARGV[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Lua 5.1 numbers are doubles: format integers explicitly, never tostring.
local function int(n)
  return string.format('%d', n)
end
-- Appends an event (the JSON of `store::Event`) to the history and counts it
-- on the record, as the embedded engine's `append_event` does.
local function event(id, at, status, kind)
  local list = P .. ':ev:' .. id
  local count = redis.call('RPUSH', list, '{"at_ms":' .. int(at) .. ',"status":"' .. status .. '","kind":' .. kind .. '}')
  redis.call('HSET', P .. ':req:' .. id, 'ec', count, 'ua', int(at))
end
