-- Every step: check() reads and may end the step with the entry left pending; the entry is
-- then claimed, and apply() writes. The body cannot write before the claim: only apply()
-- writes, and it runs only once the claim succeeded.
local function step()
  local early = check()
  if early ~= nil then return early end
  if not claim() then return 'stale' end
  return apply()
end
-- One entry's step, protected, once `one(k, a)` has set the entry's names.
local function run_step()
  claimed = false
  local ok, result = pcall(step)
  if ok then return result end
  local message = type(result) == 'table' and result.err or tostring(result)
  if not claimed then return redis.error_reply(message) end
  -- Acknowledged, then failed: Redis keeps what was written, so the entry goes to the dead
  -- letters with the error rather than being lost.
  local fields = {}
  for _, found in ipairs(redis.call('XRANGE', stream, entry_id, entry_id)) do
    for i = 1, #found[2], 2 do
      local value = found[2][i + 1]
      if #value > DEAD_LETTER_FIELD_BYTES then
        value = string.sub(value, 1, DEAD_LETTER_FIELD_BYTES) .. '... (' .. #value .. ' bytes in all)'
      end
      fields[found[2][i]] = value
    end
  end
  redis.call('XADD', dead, 'MAXLEN', '~', DEAD_LETTERS_KEPT, '*', 'stream', stream, 'id', entry_id,
    'service', group, 'reason', 'failed after it was acknowledged, maybe part-applied: ' .. message,
    'deliveries', deliveries, 'entry', cjson.encode(fields))
  return 'failed_after_claim'
end
