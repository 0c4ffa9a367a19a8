local function check() return nil end
local function apply()
  publish('CommentModerated', verdict)
  return 'applied'
end
