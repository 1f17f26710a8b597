-- join: registers a member with a fresh lease and returns the sequence it starts from.
-- KEYS[1] sequence   KEYS[2] members (zset)   KEYS[3] acks (hash)   KEYS[4] need (hash)
-- KEYS[5] waits (zset, see publish.lua)
-- ARGV[1] member id   ARGV[2] lease in ms   ARGV[3] '1': report PUBLISH whatever the version
-- The member subscribed (and saw the subscription confirmed) before this runs, so every
-- invalidation sequenced after the returned value reaches it, provided it subscribed the way
-- this server publishes.
-- Returns {sequence, sharded}: sharded is 1 if this server publishes coherence messages with
-- SPUBLISH (Redis 7 and later; see publish.lua), else 0.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
-- Forget members whose lease ran out more than a minute ago (bounded bookkeeping).
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - 60000, 'LIMIT', 0, 100)
for _, id in ipairs(dead) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
  redis.call('HDEL', KEYS[4], id)
  redis.call('ZREM', KEYS[5], id)
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], cur)
redis.call('HSET', KEYS[4], ARGV[1], cur)
local sharded = ARGV[3] ~= '1' and (redis.REDIS_VERSION_NUM or 0) >= 458752
return {cur, sharded and 1 or 0}
