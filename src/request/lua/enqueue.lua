-- Adds a request to an inbox, stamped with its deadline by Redis's clock and the id of the last
-- entry of an events stream (the posts'). KEYS[1]: the inbox, KEYS[2]: that events stream; ARGV[1]: the
-- timeout in milliseconds, ARGV[2..]: the request's other fields, names and values.
local now = redis.call('TIME')
local deadline = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[1])
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local after = '0-0'
if #last > 0 then after = last[1][1] end
return redis.call('XADD', KEYS[1], '*', 'deadline_ms', string.format('%d', deadline),
  'after', after, unpack(ARGV, 2))
