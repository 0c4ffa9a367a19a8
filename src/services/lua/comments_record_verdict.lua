-- A verdict for a comment already decided changes nothing: one `CommentUpdated` per comment.
local status
local function check()
  status = nil
  touch(comment_ids(base), comment_key(base, comment_id))
  status = redis.call('HGET', comment_key(base, comment_id), 'status')
  if not status then return 'unknown_comment' end
  return nil
end
local function apply()
  if status == 'pending' then
    set_status(base, comment_id, verdict)
    publish(COMMENT_UPDATED, event)
  end
  return 'applied'
end
