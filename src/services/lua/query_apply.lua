-- The query view's rules for applying an event, used by its live steps and by
-- `blogctl rebuild query`. Each write commutes, as two instances may apply events out of order.
local function add_post(base, post_id, title)
  redis.call('HSET', view_post(base, post_id), 'id', post_id, 'title', title)
  redis.call('ZADD', view_posts(base), 0, post_id)
end
-- `final` '1': the comment's status is final and replaces whatever is there; a pending one
-- never does.
local function put_comment(base, post_id, comment_id, view, final)
  local comments = view_comments(base, post_id)
  if final == '1' then
    redis.call('HSET', comments, comment_id, view)
  else
    redis.call('HSETNX', comments, comment_id, view)
  end
end
