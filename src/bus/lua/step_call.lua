-- What the steps of one script call share (its batch form runs the steps of many entries).
-- Reads of keys no step writes (a generation's pointer), made once per call.
local read = {}
local function read_once(key)
  local value = read[key]
  if value == nil then
    value = redis.call('GET', key)
    read[key] = value
  end
  return value
end
-- Redis's clock in milliseconds, read once per call: the steps of a batch are one instant.
local clock
local function now_ms()
  if clock == nil then
    local now = redis.call('TIME')
    clock = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  end
  return clock
end
-- Entries of KEYS[1], the stream the steps' entries come from, to delete once every step has
-- run: one XDEL for them all.
local deleted = {}
local function delete_later(id)
  deleted[#deleted + 1] = id
end
