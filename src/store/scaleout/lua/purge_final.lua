-- purge_final: ARGV cutoff ms, limit. Deletes up to `limit` requests final
-- since before the cutoff, oldest first, with their history and their
-- idempotency key (in the same script, so no key outlives its request).
-- Returns {how many, the last id purged or ''}.
local ids = redis.call('ZRANGEBYSCORE', P .. ':final', '-inf', '(' .. ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  local rk = P .. ':req:' .. id
  local idem = redis.call('HGET', rk, 'ik')
  if idem then redis.call('DEL', P .. ':idem:' .. idem) end
  if redis.call('DEL', rk) == 1 then redis.call('DECR', P .. ':count') end
  redis.call('DEL', P .. ':ev:' .. id)
  redis.call('ZREM', P .. ':final', id)
  redis.call('ZREM', P .. ':onbroker', id)
end
return {#ids, ids[#ids] or ''}
