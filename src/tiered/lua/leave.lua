-- leave: a member that stopped serving its L1 drops out, so that no writer waits for it.
-- KEYS[1] members (zset)   KEYS[2] acks (hash)   KEYS[3] need (hash)
-- KEYS[4] waits (zset, see publish.lua)   ARGV[1] member id
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
return 1
