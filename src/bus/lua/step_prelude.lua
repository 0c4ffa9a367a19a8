local claimed = false
local function claim()
  claimed = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 1
  return claimed
end
local function publish(kind, data)
  return redis.call('XADD', KEYS[2], '*', 'type', kind, 'version', 'ENVELOPE_VERSION',
    'request_id', ARGV[3], 'producer', ARGV[1], 'data', data)
end
local function step()
