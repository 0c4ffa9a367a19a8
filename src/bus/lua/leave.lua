for _, stream in ipairs(KEYS) do
  for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', stream, ARGV[1])) do
    local name, pending
    for i = 1, #consumer, 2 do
      if consumer[i] == 'name' then name = consumer[i + 1] end
      if consumer[i] == 'pending' then pending = consumer[i + 1] end
    end
    if name == ARGV[2] and pending == 0 then
      redis.call('XGROUP', 'DELCONSUMER', stream, ARGV[1], ARGV[2])
    end
  end
end
return 'left'
