-- purge: remove the key and fence its leases, present or absent. One declared key.
-- KEYS[1] the cache key's hash
-- ARGV[1] invalidation channel ('' publishes nothing: flush publishes once at the end)
-- ARGV[2] payload
-- Returns 1 if a value or sub-entry was removed, else 0. Only frees memory: runs at maxmemory.
local n = redis.call('HLEN', KEYS[1])
if n > 0 and redis.call('HEXISTS', KEYS[1], '!g') == 1 then
  n = n - 1
end
-- Unlinking the key deletes the marker, which fences: a save needs the marker equal to its
-- lease, and a new marker is minted with a value never handed out before. An absent key has no
-- marker, so nothing to do. UNLINK, not DEL: a huge hash is freed in the background instead of
-- blocking the server for every client.
redis.call('UNLINK', KEYS[1])
if ARGV[1] ~= '' then
  redis.call('PUBLISH', ARGV[1], ARGV[2])
end
if n > 0 then
  return 1
end
return 0
