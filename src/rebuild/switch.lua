-- KEYS[1]: the generation pointer; KEYS[2..]: the events streams the rebuild read. ARGV[1]: the
-- new generation, ARGV[2]: the live generation when the rebuild started; then, for each stream
-- in KEYS order, the last id applied from it (`0-0` for none) and how many entries had been
-- removed from it when the rebuild checked it for a gap.
if (redis.call('GET', KEYS[1]) or '0') ~= ARGV[2] then
  return {'switched'}
end
for i = 2, #KEYS do
  local removed = ARGV[2 * i]
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local info = redis.call('XINFO', 'STREAM', KEYS[i])
    local length, added
    for j = 1, #info, 2 do
      if info[j] == 'length' then length = info[j + 1] end
      if info[j] == 'entries-added' then added = info[j + 1] end
    end
    if added - length ~= tonumber(removed) then
      return {'trimmed', KEYS[i]}
    end
  elseif removed ~= '0' then
    return {'trimmed', KEYS[i]}
  end
end
for i = 2, #KEYS do
  if #redis.call('XRANGE', KEYS[i], '(' .. ARGV[2 * i - 1], '+', 'COUNT', 1) > 0 then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
