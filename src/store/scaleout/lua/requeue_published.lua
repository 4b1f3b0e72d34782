-- requeue_published: ARGV limit. RabbitMQ lost the messages Redis knows it
-- held (`onbroker`): up to `limit` of them go back to the due set, due now,
-- for the mover to publish again; a copy that survived after all is fenced
-- by its seq like any duplicate. Final and leased requests need no message.
-- Returns {how many were requeued, how many are left}.
local now = now_ms()
local onbroker = P .. ':onbroker'
local ids = redis.call('ZRANGE', onbroker, 0, tonumber(ARGV[2]) - 1)
local requeued = 0
for _, id in ipairs(ids) do
  local f = redis.call('HMGET', P .. ':req:' .. id, 'st', 'lo')
  if f[1] and f[1] ~= 'sent' and f[1] ~= 'failed' and not f[2] then
    redis.call('ZADD', P .. ':due', now, id)
    requeued = requeued + 1
  end
  redis.call('ZREM', onbroker, id)
end
return {requeued, redis.call('ZCARD', onbroker)}
