local function check() return nil end
local function apply()
  add_post(base, post_id, title)
  return 'applied'
end
