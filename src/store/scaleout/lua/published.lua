-- published: ARGV id, seq, id, seq, ... The broker confirmed these
-- messages: their due entries go, unless the record was rescheduled since
-- (a newer seq owns the entry then).
local removed = 0
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('HGET', P .. ':req:' .. id, 'seq') == ARGV[i + 1] then
    removed = removed + redis.call('ZREM', P .. ':due', id)
  end
end
return removed
