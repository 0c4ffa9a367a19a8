-- KEYS[1]: a rebuild's lock; ARGV[1]: the rebuild's own value, ARGV[2]: how long to hold it (ms).
-- Takes the lock, or keeps it (its expiry pushed back) when this rebuild holds it already:
-- 1 when the rebuild holds it now, 0 when another does.
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
