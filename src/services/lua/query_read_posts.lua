local base = generation_base(ARGV[1], redis.call('GET', KEYS[1]))
local ids
if ARGV[2] == 'ids' then
  ids = {unpack(ARGV, 4)}
else
  ids = redis.call('ZRANGE', view_posts(base), ARGV[2], '+', 'BYLEX', 'LIMIT', 0, tonumber(ARGV[3]))
end
local posts = {}
for _, id in ipairs(ids) do
  local title = redis.call('HGET', view_post(base, id), 'title')
  if title then
    posts[#posts + 1] = {id, title, redis.call('HVALS', view_comments(base, id))}
  end
end
return posts
