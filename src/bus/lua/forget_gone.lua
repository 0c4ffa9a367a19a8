-- Removes a consumer that is gone from a group, if it still holds nothing and has been idle for
-- ARGV[3] ms and its liveness key KEYS[2] is still missing: checked here, in one step, so that a
-- consumer that read meanwhile never loses the entries it holds. KEYS[1]: the stream; ARGV[1]:
-- the group, ARGV[2]: the consumer.
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local name, pending, idle
  for i = 1, #consumer, 2 do
    if consumer[i] == 'name' then name = consumer[i + 1] end
    if consumer[i] == 'pending' then pending = consumer[i + 1] end
    if consumer[i] == 'idle' then idle = consumer[i + 1] end
  end
  if name == ARGV[2] then
    if pending == 0 and idle >= tonumber(ARGV[3]) then
      return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
    end
    return 0
  end
end
return 0
