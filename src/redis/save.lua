-- save_with_lease: atomic compare-and-save. One declared key.
-- KEYS[1] the cache key's hash
-- ARGV[1] the entry's hash field   ARGV[2] the encoded value
-- ARGV[3] the lease's proof   ARGV[4] lease issued seconds   ARGV[5] lease issued micros
-- ARGV[6] maximum lease age in microseconds   ARGV[7] TTL in ms
-- ARGV[8] (optional) the source position the value was read at, 20 decimal digits ('' for none)
-- ARGV[9] (optional) channel to announce a fill's end on   ARGV[10] its payload
-- ARGV[11] (optional) '1' for a refresh ahead of expiry: the key's TTL starts again at ARGV[7]
--          if the refreshed entry is the key's only entry
-- Returns 1 if stored, 0 if stale (marker gone or changed, the lease is too old, was issued in
-- the future, or was issued for another field, or a floor refuses it).
--
-- The fill (see get_or_lease.lua): a save that lands ends any fill in progress (the value is
-- there now); a refused save under the filler's own lease ends its fill (others may take it).
-- Either way, if a caller waits for the end, it is announced on ARGV[9].
local g = redis.call('HGET', KEYS[1], '!g')
if not g then
  return 0
end
local m = string.match(g, '^[^|]+')
local fs, waiting = string.match(g, '|(%d+)|(%d)$')
local s, us = tonumber(ARGV[4]), tonumber(ARGV[5])
if not s or not us then
  return 0
end
-- The proof binds the lease to this key's current marker, this field and this issue time.
if redis.sha1hex(m .. '\n' .. ARGV[1] .. '\n' .. ARGV[4] .. '\n' .. ARGV[5] .. '\n' .. m) ~= ARGV[3] then
  return 0
end
local issued = s * 1000000 + us
-- Ends the fill in progress (if `any`, whoever fills; else only if this lease is the filler's).
local function end_fill(any)
  if fs and tonumber(fs) > 0 and (any or tonumber(fs) == issued) then
    redis.call('HSET', KEYS[1], '!g', m)
    if waiting == '1' and ARGV[9] and ARGV[9] ~= '' then
      redis.call('PUBLISH', ARGV[9], ARGV[10])
    end
  end
end
local t = redis.call('TIME')
local age = (tonumber(t[1]) - s) * 1000000 + (tonumber(t[2]) - us)
-- An issue time in the future (a server clock that stepped back, a failover to a server whose
-- clock is behind) would make the age negative and defeat the maximum lease age.
if age < 0 or age > tonumber(ARGV[6]) then
  end_fill(false)
  return 0
end
-- The key's floors (see floors.lua): a lease issued before the hold-off deadline, or before the
-- deadline of an intent still counted open, and a save as of a position (ARGV[8], 20 digits)
-- below the floor are refused.
local f = redis.call('HGET', KEYS[1], '!f')
if f then
  local fh, fp, fn, fd = string.match(f, '^(%d+):(%d+):(%d+):(%d+)$')
  if issued < tonumber(fh) or (tonumber(fn) > 0 and issued < tonumber(fd)) then
    end_fill(false)
    return 0
  end
  if ARGV[8] and ARGV[8] ~= '' and ARGV[8] < fp then
    end_fill(false)
    return 0
  end
end
-- A saved value ends the stale grace of the one a purge replaced (see purge.lua): it is current.
if ARGV[1] == '!v' then
  redis.call('HDEL', KEYS[1], '!s')
end
-- Entries of one key share the key's TTL: never extend an existing entry's lifetime. Neither
-- the floors nor a grace copy are entries.
local meta = redis.call('HEXISTS', KEYS[1], '!f') + redis.call('HEXISTS', KEYS[1], '!s')
local had_data = redis.call('HLEN', KEYS[1]) - meta > 1
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local ms = tonumber(ARGV[7])
local p = redis.call('PTTL', KEYS[1])
local renew = ARGV[11] == '1' and ARGV[1] == '!v'
  and redis.call('HLEN', KEYS[1]) - meta == 2
if renew or (not had_data) or p < 0 or p > ms then
  redis.call('PEXPIRE', KEYS[1], ms)
end
end_fill(true)
return 1
