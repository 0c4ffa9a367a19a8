for _, id in ipairs(ARGV) do
  if #redis.call('XRANGE', KEYS[1], id, id) == 0 then return {'missing', id} end
end
return {'dropped', redis.call('XDEL', KEYS[1], unpack(ARGV))}
