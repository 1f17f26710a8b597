-- save_with_lease: atomic compare-and-save. One declared key.
-- KEYS[1] the cache key's hash
-- ARGV[1] the entry's hash field   ARGV[2] the encoded value
-- ARGV[3] the lease's generation   ARGV[4] lease issued seconds   ARGV[5] lease issued micros
-- ARGV[6] maximum lease age in microseconds   ARGV[7] TTL in ms
-- ARGV[8] (optional) the source position the value was read at, 20 decimal digits
-- Returns 1 if stored, 0 if stale (marker gone or changed, or the lease is too old).
if redis.call('HGET', KEYS[1], '!g') ~= ARGV[3] then
  return 0
end
local t = redis.call('TIME')
local age = (tonumber(t[1]) - tonumber(ARGV[4])) * 1000000 + (tonumber(t[2]) - tonumber(ARGV[5]))
if age > tonumber(ARGV[6]) then
  return 0
end
-- The key's floors (see floors.lua): a lease issued before the hold-off deadline, or before the
-- deadline of an intent still counted open, and a save as of a position (ARGV[8], 20 digits)
-- below the floor are refused.
local f = redis.call('HGET', KEYS[1], '!f')
if f then
  local fh, fp, fn, fd = string.match(f, '^(%d+):(%d+):(%d+):(%d+)$')
  local issued = tonumber(ARGV[4]) * 1000000 + tonumber(ARGV[5])
  if issued < tonumber(fh) or (tonumber(fn) > 0 and issued < tonumber(fd)) then
    return 0
  end
  if ARGV[8] and ARGV[8] ~= '' and ARGV[8] < fp then
    return 0
  end
end
-- Entries of one key share the key's TTL: never extend an existing entry's lifetime.
local had_data = redis.call('HLEN', KEYS[1]) - redis.call('HEXISTS', KEYS[1], '!f') > 1
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local ms = tonumber(ARGV[7])
local p = redis.call('PTTL', KEYS[1])
if (not had_data) or p < 0 or p > ms then
  redis.call('PEXPIRE', KEYS[1], ms)
end
return 1
