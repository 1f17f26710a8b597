-- get_or_lease: the entry's value if present, else a lease on the key. One declared key.
-- KEYS[1] the cache key's hash
-- ARGV[1] the entry's hash field ('!v' for the key's value, 'f:' .. name for a sub-entry)
-- ARGV[2] a random client nonce (hex) used only if a marker must be minted
-- ARGV[3] marker lifetime in ms (the maximum lease age) for a hash that holds only the marker
-- ARGV[4] the largest stored value (bytes) the client accepts
-- ARGV[5] '1' to ignore a present value (the client could not decode it): hand out a lease
-- Returns {1, value, pttl} on a hit, {0, proof, issued_seconds, issued_micros, skipped} on a miss,
-- where skipped is the size of a present value that was too large, or 0.
local skipped = 0
if ARGV[5] ~= '1' then
  -- The size first: a value over the limit never crosses the wire.
  local n = redis.call('HSTRLEN', KEYS[1], ARGV[1])
  if n > tonumber(ARGV[4]) then
    skipped = n
  else
    local v = redis.call('HGET', KEYS[1], ARGV[1])
    if v then
      return {1, v, redis.call('PTTL', KEYS[1])}
    end
  end
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
-- The lease carries a proof, never the marker: a digest keyed by the marker (a secret the
-- client never sees) over the field and the issue time, so a holder can neither rebind the
-- lease to another field nor move its issue time. save.lua recomputes it.
local proof = redis.sha1hex(g .. '\n' .. ARGV[1] .. '\n' .. t[1] .. '\n' .. t[2] .. '\n' .. g)
return {0, proof, t[1], t[2], skipped}
