-- Every step: claim() and publish(). The names of KEYS and ARGV are declared above this.
local claimed = false
-- Acknowledges the entry; false when it was no longer pending (already applied). A redelivered
-- entry's count of tries (see `Consumer::count_try`) goes with it, in the same atomic step.
local function claim()
  claimed = redis.call('XACK', stream, group, entry_id) == 1
  if claimed and tonumber(deliveries) > 1 then
    redis.call('HDEL', attempts, stream .. '/' .. entry_id)
  end
  return claimed
end
-- Adds an event to the service's own events stream, caused by the same request as the entry.
local function publish(kind, data)
  return redis.call('XADD', events, '*', 'type', kind, 'version', ENVELOPE_VERSION,
    'request_id', request_id, 'producer', group, 'data', data)
end
