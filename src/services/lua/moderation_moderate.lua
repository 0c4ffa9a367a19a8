local function check() return nil end
local function apply()
  publish(COMMENT_MODERATED, verdict)
  return 'applied'
end
