local function check()
  touch(known_posts(base))
  return nil
end
local function apply()
  learn_post(base, post_id)
  return 'applied'
end
