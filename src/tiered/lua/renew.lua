-- renew: a member acknowledges the highest contiguous sequence it applied, and renews its lease
-- if it keeps up.
-- KEYS[1] sequence   KEYS[2] members (zset)   KEYS[3] acks (hash)   KEYS[4] need (hash)
-- KEYS[5] waits (zset: writer id -> the latest sequence it waits for; see publish.lua)
-- ARGV[1] member id   ARGV[2] applied sequence   ARGV[3] lease in ms
-- ARGV[4] the prefix of the writers' acknowledgement channels (the writer's id completes it)
-- ARGV[5] '1' to use PUBLISH whatever the version (see publish.lua)
-- The acknowledgement `A<id> <w>` goes only to the writers waiting for a sequence this member
-- had not acknowledged before (waits above its previous acknowledgement), each on its own
-- channel, with SPUBLISH on Redis 7 and later (see publish.lua), else PUBLISH: a member's ack
-- costs one message per waiting writer, not one delivery per instance of the namespace.
-- Returns 1 (renewed), 0 (acknowledged, not renewed: the member is behind what was published
-- before its previous renewal) or -1 (the lease had lapsed: writers may have stopped waiting
-- for this member, which must flush its L1 and join again).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local exp = redis.call('ZSCORE', KEYS[2], ARGV[1])
if (not exp) or tonumber(exp) <= now then
  return -1
end
local w = tonumber(ARGV[2])
local prev = redis.call('HGET', KEYS[3], ARGV[1]) or '0'
redis.call('HSET', KEYS[3], ARGV[1], w)
local sharded = ARGV[5] ~= '1' and (redis.REDIS_VERSION_NUM or 0) >= 458752
local waiting = redis.call('ZRANGEBYSCORE', KEYS[5], '(' .. prev, '+inf')
for _, writer in ipairs(waiting) do
  if writer ~= ARGV[1] then
    if redis.call('ZSCORE', KEYS[2], writer) then
      local ack = 'A' .. ARGV[1] .. ' ' .. ARGV[2]
      redis.call(sharded and 'SPUBLISH' or 'PUBLISH', ARGV[4] .. writer, ack)
    else
      -- No longer a member (it left, or was forgotten): it rechecks through check.lua.
      redis.call('ZREM', KEYS[5], writer)
    end
  end
end
local need = tonumber(redis.call('HGET', KEYS[4], ARGV[1]) or '0')
if w < need then
  return 0
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], tonumber(redis.call('GET', KEYS[1]) or '0'))
return 1
