-- gate_sent: ARGV member, only if present (1|0). Stamps the slot's place
-- in the window at now: its call goes out now (it was reserved when the
-- dispatcher began to wait for work, maybe long before), or it is still
-- held and must stay in the window (only if present: a place given back
-- meanwhile stays free).
if ARGV[3] == '1' then
  redis.call('ZADD', P .. ':rate:log', 'XX', now_ms(), ARGV[2])
else
  redis.call('ZADD', P .. ':rate:log', now_ms(), ARGV[2])
end
return 1
