-- purge_field: remove one sub-entry and fence every lease on the whole key. One declared key.
-- KEYS[1] the cache key's hash
-- ARGV[1] the sub-entry's hash field   ARGV[2] invalidation channel ('' publishes nothing)
-- ARGV[3] payload
-- Returns 1 if the sub-entry was removed, else 0. Only frees memory: runs at maxmemory.
local had = redis.call('HEXISTS', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1], '!g')
if ARGV[2] ~= '' then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return had
