-- Applies a batch of events to one generation with the service's own apply functions (`calls`,
-- defined before this): KEYS[1] is the generation's base (named as a key for its hash tag),
-- then ARGV holds for each event the name of an apply function, its number of arguments, and
-- its arguments.
local base = KEYS[1]
local i = 1
while i <= #ARGV do
  local apply = calls[ARGV[i]]
  if not apply then return redis.error_reply('ERR no apply function ' .. ARGV[i]) end
  local count = tonumber(ARGV[i + 1])
  apply(base, unpack(ARGV, i + 2, i + 1 + count))
  i = i + 2 + count
end
return 'applied'
