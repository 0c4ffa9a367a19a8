-- Runs the step `one(k, a)` above for each entry of the call, in order: an entry's own KEYS come
-- after `k` and its ARGV after `a` (the shared ones first; a single step has no others). Each
-- step is checked, claimed and protected on its own: an error ends that entry's step only, with
-- the entry as the step left it (pending when it failed before its claim), and is its reply.
local replies = {}
local k, a = SHARED_KEYS, SHARED_ARGS
repeat
  local ok, reply = pcall(one, k, a)
  if not ok then
    reply = redis.error_reply(type(reply) == 'table' and reply.err or tostring(reply))
  end
  replies[#replies + 1] = reply
  k, a = k + ENTRY_KEYS, a + ENTRY_ARGS
until a >= #ARGV
if #deleted > 0 then
  redis.call('XDEL', KEYS[1], unpack(deleted))
end
if SINGLE then return replies[1] end
return replies
