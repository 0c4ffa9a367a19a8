-- Every request step: drop(), answer() and remember(), for the body's apply_request().
-- Deletes the request from the inbox, once the call's steps have run.
local function drop()
  delete_later(entry_id)
end
-- Leaves the answer for the client in its reply key, and deletes the request.
local function answer(body)
  redis.call('RPUSH', reply, body)
  redis.call('PEXPIRE', reply, REPLY_TTL_MS)
  drop()
end
-- Keeps the answer under the request id, for a retry with the same id, after the request's
-- fingerprint (see the request layer).
local function remember(body)
  redis.call('SET', remembered, fingerprint .. ' ' .. body, 'PX', ANSWER_MEMORY_MS)
end
