local function check() return nil end
local function apply()
  put_comment(base, post_id, comment_id, view, final)
  return 'applied'
end
