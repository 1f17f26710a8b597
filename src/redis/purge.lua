-- purge: remove the key and fence its leases, present or absent. One declared key.
-- KEYS[1] the cache key's hash
-- ARGV[1] invalidation channel ('' publishes nothing: flush publishes once at the end)
-- ARGV[2] payload
-- ARGV[3] (optional) the stale grace in ms ('' or absent: none): the replaced value is kept in
--         '!s' as '<server µs of this purge>|<value>' for that long (see fill.rs, *Stale grace*)
-- Returns 1 if a value or sub-entry was removed, else 0. Only frees memory: runs at maxmemory
-- (the grace copy is at most the value just freed, written after the UNLINK).
local n = redis.call('HLEN', KEYS[1])
if n > 0 and redis.call('HEXISTS', KEYS[1], '!g') == 1 then
  n = n - 1
end
-- A grace copy left by an earlier purge is not data: it never counts, and never survives.
if n > 0 and redis.call('HEXISTS', KEYS[1], '!s') == 1 then
  n = n - 1
end
local grace = tonumber(ARGV[3] or '') or 0
local v = nil
if grace > 0 then
  v = redis.call('HGET', KEYS[1], '!v')
end
-- The floors (see floors.lua) survive the purge: lowering one would revive leases.
local f = redis.call('HGET', KEYS[1], '!f')
local f_ms = redis.call('PTTL', KEYS[1])
if f then
  n = n - 1
end
-- Unlinking the key deletes the marker, which fences: a save needs the marker equal to its
-- lease, and a new marker is minted with a value never handed out before. An absent key has no
-- marker, so nothing to do. UNLINK, not DEL: a huge hash is freed in the background instead of
-- blocking the server for every client.
redis.call('UNLINK', KEYS[1])
if f and f_ms > 0 then
  redis.call('HSET', KEYS[1], '!f', f)
  redis.call('PEXPIRE', KEYS[1], f_ms)
end
if v then
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[1], '!s', t[1] .. string.format('%06d', tonumber(t[2])) .. '|' .. v)
  if not (f and f_ms > grace) then
    redis.call('PEXPIRE', KEYS[1], grace)
  end
end
if ARGV[1] ~= '' then
  redis.call('PUBLISH', ARGV[1], ARGV[2])
end
if n > 0 then
  return 1
end
return 0
