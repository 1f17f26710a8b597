-- insert: unconditional write that fences. One declared key.
-- KEYS[1] the cache key's hash
-- ARGV[1] the encoded value   ARGV[2] TTL in ms   ARGV[3] invalidation channel ('' publishes nothing)
-- ARGV[4] payload
-- The UNLINK comes first: it frees memory (so the HSET may run at maxmemory with noeviction once
-- something was freed), drops the marker (fencing every outstanding lease) and drops sub-entries
-- that predate this write.
-- The floors (see floors.lua) survive it, and keep the key alive at least as long as they need.
local f = redis.call('HGET', KEYS[1], '!f')
local f_ms = redis.call('PTTL', KEYS[1])
redis.call('UNLINK', KEYS[1])
redis.call('HSET', KEYS[1], '!v', ARGV[1])
if f and f_ms > tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], '!f', f)
  redis.call('PEXPIRE', KEYS[1], f_ms)
else
  if f and f_ms > 0 then
    redis.call('HSET', KEYS[1], '!f', f)
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if ARGV[3] ~= '' then
  redis.call('PUBLISH', ARGV[3], ARGV[4])
end
return 1
