-- Applies a batch of events to one generation with the service's own apply functions (`calls`,
-- defined before this): KEYS[1] is the generation's base (named as a key for its hash tag),
-- then ARGV holds runs of calls to one function: its name, how many arguments each call takes,
-- how many calls, then the calls' arguments one after the other.
local base = KEYS[1]
local i = 1
local last = #ARGV
while i <= last do
  local apply = calls[ARGV[i]]
  if not apply then return redis.error_reply('ERR no apply function ' .. ARGV[i]) end
  local count = tonumber(ARGV[i + 1])
  local times = tonumber(ARGV[i + 2])
  i = i + 3
  for _ = 1, times do
    apply(base, unpack(ARGV, i, i + count - 1))
    i = i + count
  end
end
return 'applied'
