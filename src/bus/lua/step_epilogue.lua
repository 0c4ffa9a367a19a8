end
local ok, result = pcall(step)
if ok then return result end
local message = type(result) == 'table' and result.err or tostring(result)
if not claimed then return redis.error_reply(message) end
local entry = {}
for _, found in ipairs(redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])) do
  for i = 1, #found[2], 2 do entry[found[2][i]] = found[2][i + 1] end
end
redis.call('XADD', KEYS[#KEYS], '*', 'stream', KEYS[1], 'id', ARGV[2], 'service', ARGV[1],
  'reason', 'failed after it was acknowledged, maybe part-applied: ' .. message,
  'deliveries', ARGV[#ARGV], 'entry', cjson.encode(entry))
return 'STEP_FAILED'
