-- get: one entry's value, if present and not larger than the client accepts. One declared key.
-- KEYS[1] the cache key's hash
-- ARGV[1] the entry's hash field   ARGV[2] the largest stored value (bytes) the client accepts
-- Returns {1, value, pttl}, {0} if absent, or {2, size} if the value is too large (never sent).
local n = redis.call('HSTRLEN', KEYS[1], ARGV[1])
if n > tonumber(ARGV[2]) then
  return {2, n}
end
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then
  return {1, v, redis.call('PTTL', KEYS[1])}
end
return {0}
