local base = generation_base(ARGV[1], redis.call('GET', KEYS[1]))
-- Touched with the pointer first, as in query_read_posts.lua: on the master importing a moving
-- slot, a one-key read of a key still on the old master would find nothing.
redis.call('EXISTS', KEYS[1], view_comments(base, ARGV[2]))
return redis.call('HGET', view_comments(base, ARGV[2]), ARGV[3])
