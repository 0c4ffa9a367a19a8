-- A comment on a post this service does not know stays pending: the post may not have reached
-- it yet (see `Comments::unknown_post`).
local function check_request()
  touch(comment_key(base, comment_id), comment_ids(base), known_posts(base))
  if redis.call('SISMEMBER', known_posts(base), post_id) == 0 then return 'unknown_post' end
  return nil
end
local function apply_request()
  add_comment(base, comment_id, post_id, content, 'pending')
  publish(COMMENT_CREATED, event)
  remember(response)
  answer(response)
  return 'applied'
end
