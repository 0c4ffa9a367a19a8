-- Drops a page of a generation's comments: KEYS[1] is its index of comments, ARGV[1] the
-- generation's base, ARGV[2] the most to drop. Pops that many ids from the generation's index of comments and deletes their keys in
-- the same step, so that a drop cut short leaves every comment it did not delete still listed.
-- Returns how many ids it popped (fewer than asked: the index is now empty, and gone).
local base = ARGV[1]
local ids = redis.call('SPOP', KEYS[1], tonumber(ARGV[2]))
if #ids == 0 then return 0 end
local doomed = {}
for i, id in ipairs(ids) do
  doomed[i] = comment_key(base, id)
end
redis.call('UNLINK', unpack(doomed))
return #ids
