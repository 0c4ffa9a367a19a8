-- The comments service's rules for changing its state, used by its live steps and by
-- `blogctl rebuild comments`.
local function learn_post(base, post_id)
  redis.call('SADD', known_posts(base), post_id)
end
-- Lists a comment in the generation's index, which dropping the generation goes through: every
-- function that writes a comment's key lists it. (`blogctl rebuild comments` also calls it on the
-- generation it replaces, for each comment of the log, which completes an index an earlier
-- version never wrote.)
local function index_comment(base, comment_id)
  redis.call('SADD', comment_ids(base), comment_id)
end
local function add_comment(base, comment_id, post_id, content, status)
  redis.call('HSET', comment_key(base, comment_id), 'id', comment_id, 'postId', post_id,
    'content', content, 'status', status)
  index_comment(base, comment_id)
end
local function set_status(base, comment_id, status)
  redis.call('HSET', comment_key(base, comment_id), 'status', status)
  index_comment(base, comment_id)
end
