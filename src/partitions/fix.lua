-- Fixes a namespace's partition count on its first `serve`, and returns the stored one.
-- KEYS[1]: the partition count key; KEYS[2..]: events streams of partition 0 (those the
-- caller's Redis user may read), which only a namespace served before partition counts were
-- stored can hold without KEYS[1] (it has 1).
-- ARGV[1]: the count asked for.
local stored = redis.call('GET', KEYS[1])
if stored then
  return stored
end
if ARGV[1] ~= '1' then
  for i = 2, #KEYS do
    -- (TYPE, not EXISTS: a service's Redis user may run it on the streams it follows.)
    if redis.call('TYPE', KEYS[i])['ok'] ~= 'none' then
      return 'used:' .. KEYS[i]
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
