-- published: ARGV id, seq, id, seq, ... The broker confirmed these
-- messages: their due entries go, unless the record was rescheduled since
-- (a newer seq owns the entry then), and Redis remembers that the broker
-- holds them (`onbroker`, by publish time) until one is leased, so that a
-- broker which lost its messages can be given them again (`dataset.rs`).
local removed = 0
local now = now_ms()
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('HGET', P .. ':req:' .. id, 'seq') == ARGV[i + 1] then
    removed = removed + redis.call('ZREM', P .. ':due', id)
    redis.call('ZADD', P .. ':onbroker', now, id)
  end
end
return removed
