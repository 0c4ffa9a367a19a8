-- The cut of one partition, in one step: for each of its events streams (KEYS), the last id it
-- generated, its length and how many entries were ever added to it ({'0-0', 0, 0} for a stream
-- that does not exist; {'not a stream'} when the key is something else). No event written after
-- it is exported.
local cut = {}
for i, stream in ipairs(KEYS) do
  local kind = redis.call('TYPE', stream)['ok']
  if kind == 'none' then
    cut[i] = {'0-0', 0, 0}
  elseif kind ~= 'stream' then
    return {'not a stream', stream}
  else
    local info = redis.call('XINFO', 'STREAM', stream)
    local fields = {}
    for j = 1, #info, 2 do fields[info[j]] = info[j + 1] end
    cut[i] = {fields['last-generated-id'], fields['length'], fields['entries-added']}
  end
end
return cut
