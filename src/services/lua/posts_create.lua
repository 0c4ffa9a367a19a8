local function check_request() return nil end
local function apply_request()
  redis.call('HSET', post, 'id', post_id, 'title', title)
  publish(POST_CREATED, event)
  remember(response)
  answer(response)
  return 'applied'
end
