-- get_or_lease: the entry's value if present, else a lease on the key. One declared key.
-- KEYS[1] the cache key's hash
-- ARGV[1] the entry's hash field ('!v' for the key's value, 'f:' .. name for a sub-entry)
-- ARGV[2] a random client nonce (hex) used only if a marker must be minted
-- ARGV[3] marker lifetime in ms (the maximum lease age) for a hash that holds only the marker
-- Returns {1, value, pttl} on a hit, {0, generation, issued_seconds, issued_micros} on a miss.
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then
  return {1, v, redis.call('PTTL', KEYS[1])}
end
local t = redis.call('TIME')
local g = redis.call('HGET', KEYS[1], '!g')
if not g then
  -- Minted, not counted: server time plus a client nonce is never handed out twice, so a lost
  -- marker (TTL, eviction, FLUSHALL, restart, failover) can never be recreated equal to an old one.
  g = t[1] .. '.' .. t[2] .. '.' .. ARGV[2]
  redis.call('HSET', KEYS[1], '!g', g)
end
if redis.call('HLEN', KEYS[1]) == 1 then
  -- Only the marker lives here: bound its lifetime by the maximum lease age (I5).
  local ms = tonumber(ARGV[3])
  if redis.call('PTTL', KEYS[1]) < ms then
    redis.call('PEXPIRE', KEYS[1], ms)
  end
end
return {0, g, t[1], t[2]}
