local base = generation_base(ARGV[1], redis.call('GET', KEYS[1]))
-- A read touches every view key it reads before reading it, naming the pointer too: while a
-- Cluster moves the slot, the master importing it checks a command only if it names several
-- keys, and a one-key read of a key still on the old master would find nothing there.
local function touch(...) redis.call('EXISTS', KEYS[1], ...) end
local ids
if ARGV[2] == 'ids' then
  ids = {unpack(ARGV, 4)}
else
  touch(view_posts(base))
  ids = redis.call('ZRANGE', view_posts(base), ARGV[2], '+', 'BYLEX', 'LIMIT', 0, tonumber(ARGV[3]))
end
local posts = {}
for _, id in ipairs(ids) do
  touch(view_post(base, id), view_comments(base, id))
  local title = redis.call('HGET', view_post(base, id), 'title')
  if title then
    posts[#posts + 1] = {id, title, redis.call('HVALS', view_comments(base, id))}
  end
end
return posts
