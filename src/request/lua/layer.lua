-- Every request step, after the body's check_request() and apply_request(): a request its client
-- gave up on, one past its deadline and one whose id was answered before are claimed and
-- settled here, without the body. An answer is remembered as `<fingerprint> <answer>`: the same
-- request again gets the answer; another request under the same id is refused.
local abandoned, expired, earlier
local function check()
  abandoned, expired, earlier = false, false, nil
  -- The client's mark is a string; an earlier answer under the same name would be a list.
  abandoned = redis.call('TYPE', reply)['ok'] == 'string'
  if abandoned then return nil end
  local now = now_ms()
  -- A deadline further ahead than any client's timeout was not written by a client.
  expired = now > tonumber(deadline) or tonumber(deadline) > now + MAX_TIMEOUT_MS
  if expired then return nil end
  earlier = redis.call('GET', remembered)
  if earlier then return nil end
  return check_request()
end
local function apply()
  if abandoned then
    drop()
    return 'abandoned'
  end
  if expired then
    drop()
    return 'expired'
  end
  if earlier then
    local seen, first = string.match(earlier, '^(%x+) (.*)$')
    if seen == nil or seen == fingerprint then
      -- (An answer remembered before fingerprints were kept is taken as is.)
      answer(first or earlier)
      return 'repeated'
    end
    -- The `Invalid` answer of `Reply` in src/request/mod.rs.
    answer(cjson.encode({outcome = 'invalid', message = 'request id ' .. request_id ..
      ' was already used for a different request'}))
    return 'answered'
  end
  return apply_request()
end
