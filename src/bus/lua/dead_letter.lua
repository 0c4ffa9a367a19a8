-- Moves the entry to the dead letters, and deletes it from its stream when `delete` is '1'
-- (requests are deleted once handled).
local function check() return nil end
local function apply()
  redis.call('XADD', dead, 'MAXLEN', '~', DEAD_LETTERS_KEPT, '*', 'stream', stream, 'id', entry_id, 'service', group,
    'reason', reason, 'deliveries', tries, 'entry', fields)
  if delete == '1' then redis.call('XDEL', stream, entry_id) end
  return 'dead'
end
