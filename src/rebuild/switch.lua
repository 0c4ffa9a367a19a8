if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[3] then
  return {'switched'}
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  local length, added
  for i = 1, #info, 2 do
    if info[i] == 'length' then length = info[i + 1] end
    if info[i] == 'entries-added' then added = info[i + 1] end
  end
  if added - length ~= tonumber(ARGV[4]) then
    return {'trimmed'}
  end
elseif ARGV[4] ~= '0' then
  return {'trimmed'}
end
if #redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', 1) > 0 then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2])
return 1
