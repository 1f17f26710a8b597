-- insert: unconditional write that fences. One declared key.
-- KEYS[1] the cache key's hash
-- ARGV[1] the encoded value   ARGV[2] TTL in ms   ARGV[3] invalidation channel   ARGV[4] payload
-- The UNLINK comes first: it frees memory (so the HSET may run at maxmemory with noeviction once
-- something was freed), drops the marker (fencing every outstanding lease) and drops sub-entries
-- that predate this write.
redis.call('UNLINK', KEYS[1])
redis.call('HSET', KEYS[1], '!v', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
