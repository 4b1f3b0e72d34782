-- gate_sent: ARGV member. The slot's call goes out now: its place in the
-- window counts from now (it was taken when the dispatcher began to wait
-- for work, which may have been long before).
redis.call('ZADD', P .. ':rate:log', now_ms(), ARGV[2])
return 1
