for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then return {'rebuilding', KEYS[i]} end
end
local expected = {}
for i = 2, #ARGV do expected[ARGV[i]] = true end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups ~= #ARGV - 1 then return {'changed'} end
for _, info in ipairs(groups) do
  local name
  for i = 1, #info, 2 do
    if info[i] == 'name' then name = info[i + 1] end
  end
  if not expected[name] then return {'changed'} end
  if #redis.call('XPENDING', KEYS[1], name, '-', '(' .. ARGV[1], 1) > 0 then
    return {'changed'}
  end
end
-- A bounded number of entries per call, so that the script stays short inside Redis: whole
-- nodes first (`~`), then the few left before the boundary, once no whole node is.
local removed = redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[1], 'LIMIT', TRIM_STEP)
if removed > 0 then return {'trimmed', removed, 'more'} end
return {'trimmed', redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1]), 'done'}
