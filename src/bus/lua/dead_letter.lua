if not claim() then return 'stale' end
redis.call('XADD', KEYS[2], '*', 'stream', KEYS[1], 'id', ARGV[2], 'service', ARGV[1],
  'reason', ARGV[4], 'deliveries', ARGV[5], 'entry', ARGV[6])
if ARGV[7] == '1' then redis.call('XDEL', KEYS[1], ARGV[2]) end
return 'dead'
