local function check()
  touch(view_post(base, post_id), view_posts(base))
  return nil
end
local function apply()
  add_post(base, post_id, title)
  return 'applied'
end
