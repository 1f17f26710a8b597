-- token: publishes a Bounded-mode freshness token (and returns the current sequence) from the
-- node that sequences invalidations, so it travels behind every invalidation published before it.
-- KEYS[1] sequence   ARGV[1] coherence channel   ARGV[2] token ('T' .. id .. ' ' .. n, or '')
-- ARGV[3] '1' to use PUBLISH whatever the version (see publish.lua)
-- Returns {sequence, sharded}: sharded is 1 if this server publishes coherence messages with
-- SPUBLISH (Redis 7 and later; see publish.lua), else 0.
local sharded = ARGV[3] ~= '1' and (redis.REDIS_VERSION_NUM or 0) >= 458752
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if ARGV[2] ~= '' then
  redis.call(sharded and 'SPUBLISH' or 'PUBLISH', ARGV[1], ARGV[2])
end
return {cur, sharded and 1 or 0}
