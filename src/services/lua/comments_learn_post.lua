local function check() return nil end
local function apply()
  learn_post(base, post_id)
  return 'applied'
end
