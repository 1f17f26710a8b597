-- token: publishes a Bounded-mode freshness token (and returns the current sequence) from the
-- node that sequences invalidations, so it travels behind every invalidation published before it.
-- KEYS[1] sequence   ARGV[1] coherence channel   ARGV[2] token ('T' .. id .. ' ' .. n, or '')
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if ARGV[2] ~= '' then
  redis.call('PUBLISH', ARGV[1], ARGV[2])
end
return cur
