-- get_or_lease: the entry's value if present, else a lease on the key. One declared key.
-- KEYS[1] the cache key's hash
-- ARGV[1] the entry's hash field ('!v' for the key's value, 'f:' .. name for a sub-entry)
-- ARGV[2] a random client nonce (hex) used only if a marker must be minted
-- ARGV[3] marker lifetime in ms (the maximum lease age) for a hash that holds only the marker;
--         also how long a filler holds the fill
-- ARGV[4] the largest stored value (bytes) the client accepts
-- ARGV[5] '1' to ignore a present value (the client could not decode it): hand out a lease
-- ARGV[6] (optional) fill mode: '0' (or absent) hands every caller a lease; '1' hands the lease
--         to one filler at a time and answers "fill in progress" to the others; '2' does the same
--         and sets the waiters flag, so that the fill's end is announced (see save.lua)
-- ARGV[7] (optional, with ARGV[5] = '1': a refresh ahead of expiry) the refresh point in ms:
--         if the key has more TTL left than that, it is not due (any more): returns {4}
-- ARGV[8] (optional, fill modes, field '!v') the caller's stale grace in microseconds: while
--         another caller fills, the value the last purge replaced ('!s', see purge.lua) is
--         returned if that purge is less than this old: {5, ms, value, replaced_ago_micros}
-- Returns {1, value, pttl} on a hit, {0, proof, issued_seconds, issued_micros, skipped} on a miss,
-- where skipped is the size of a present value that was too large, or 0, and (fill modes only)
-- {3, ms} while another caller's fill lease is younger than the maximum lease age, ms being how
-- long it has left.
--
-- '!g' holds 'marker' or 'marker|filler|waiting': the filler is the issue time (server
-- microseconds) of the current fill lease, 0 for none; waiting is '1' if a caller waits for the
-- fill's end to be announced. The filler lives inside the marker's field, so everything that
-- fences (deleting the marker) also ends the fill, and the hash holds no extra field.
local skipped = 0
if ARGV[7] and ARGV[7] ~= '' and redis.call('PTTL', KEYS[1]) > tonumber(ARGV[7]) then
  -- Another caller refreshed it meanwhile.
  return {4}
end
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
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local mode = ARGV[6] or '0'
local g = redis.call('HGET', KEYS[1], '!g')
local m, filler, waiting = nil, 0, '0'
if g then
  m = string.match(g, '^[^|]+')
  local fs, fw = string.match(g, '|(%d+)|(%d)$')
  if fs then
    filler, waiting = tonumber(fs), fw
  end
end
if mode ~= '0' and m and filler > 0 then
  -- A filler issued in the future (a server clock that stepped back) could never save: lapsed.
  local left = filler + tonumber(ARGV[3]) * 1000 - now
  if left > 0 and filler <= now then
    local grace = tonumber(ARGV[8] or '') or 0
    if grace > 0 and ARGV[1] == '!v' then
      local st = redis.call('HGET', KEYS[1], '!s')
      if st then
        local i = string.find(st, '|', 1, true)
        local ago = now - tonumber(string.sub(st, 1, i - 1))
        if ago >= 0 and ago < grace and #st - i <= tonumber(ARGV[4]) then
          return {5, math.floor(left / 1000) + 1, string.sub(st, i + 1), ago}
        end
      end
    end
    if mode == '2' and waiting ~= '1' then
      redis.call('HSET', KEYS[1], '!g', m .. '|' .. string.format('%d', filler) .. '|1')
    end
    return {3, math.floor(left / 1000) + 1}
  end
end
if not m then
  -- Minted, not counted: server time plus a client nonce is never handed out twice, so a lost
  -- marker (TTL, eviction, FLUSHALL, restart, failover) can never be recreated equal to an old one.
  m = t[1] .. '.' .. t[2] .. '.' .. ARGV[2]
end
if mode ~= '0' then
  -- This caller is the filler now (taking over a lapsed one keeps its waiters).
  redis.call('HSET', KEYS[1], '!g', m .. '|' .. string.format('%d', now) .. '|' .. waiting)
elseif not g then
  redis.call('HSET', KEYS[1], '!g', m)
end
if redis.call('HLEN', KEYS[1]) - redis.call('HEXISTS', KEYS[1], '!f')
    - redis.call('HEXISTS', KEYS[1], '!s') == 1 then
  -- Only the marker (and the floors and a grace copy, which set their own lifetimes) lives here: bound its lifetime by the maximum lease age (I5).
  local ms = tonumber(ARGV[3])
  if redis.call('PTTL', KEYS[1]) < ms then
    redis.call('PEXPIRE', KEYS[1], ms)
  end
end
-- The lease carries a proof, never the marker: a digest keyed by the marker (a secret the
-- client never sees) over the field and the issue time, so a holder can neither rebind the
-- lease to another field nor move its issue time. save.lua recomputes it.
local proof = redis.sha1hex(m .. '\n' .. ARGV[1] .. '\n' .. t[1] .. '\n' .. t[2] .. '\n' .. m)
return {0, proof, t[1], t[2], skipped}
