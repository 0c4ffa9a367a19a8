local function check()
  touch(view_comments(base, post_id))
  return nil
end
local function apply()
  put_comment(base, post_id, comment_id, view, final)
  return 'applied'
end
