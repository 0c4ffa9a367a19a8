-- The comments service's rules for changing its state, used by its live steps and by
-- `blogctl rebuild comments`.
local function learn_post(base, post_id)
  redis.call('SADD', known_posts(base), post_id)
end
local function add_comment(base, comment_id, post_id, content, status)
  redis.call('HSET', comment_key(base, comment_id), 'id', comment_id, 'postId', post_id,
    'content', content, 'status', status)
end
local function set_status(base, comment_id, status)
  redis.call('HSET', comment_key(base, comment_id), 'status', status)
end
