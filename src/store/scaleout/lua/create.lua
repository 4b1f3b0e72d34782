-- create: ARGV id, notification JSON, idempotency key or '', owner or '',
-- channel, AMQP priority. The idempotency binding and the record are one
-- write, so no crash leaves a key pointing at nothing.
local id, body, idem, owner = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if idem ~= '' then
  local bound = redis.call('GET', P .. ':idem:' .. idem)
  if bound then
    local sep = string.find(bound, '\n', 1, true)
    if string.sub(bound, sep + 1) == body then
      return {'replayed', string.sub(bound, 1, sep - 1)}
    end
    return {'conflict'}
  end
  redis.call('SET', P .. ':idem:' .. idem, id .. '\n' .. body)
end
local now = now_ms()
local rk = P .. ':req:' .. id
redis.call('HSET', rk, 'n', body, 'st', 'queued', 'ca', int(now), 'ua', int(now),
  'at', 0, 'ec', 0, 'seq', 0, 'ch', ARGV[6], 'pri', ARGV[7])
if idem ~= '' then redis.call('HSET', rk, 'ik', idem) end
if owner ~= '' then redis.call('HSET', rk, 'ow', owner) end
event(id, now, 'queued', '"Created"')
redis.call('INCR', P .. ':count')
return {'created', id}
