local base = generation_base(ARGV[1], redis.call('GET', KEYS[1]))
return redis.call('HGET', view_comments(base, ARGV[2]), ARGV[3])
