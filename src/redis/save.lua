-- save_with_lease: atomic compare-and-save. One declared key.
-- KEYS[1] the cache key's hash
-- ARGV[1] the entry's hash field   ARGV[2] the encoded value
-- ARGV[3] the lease's proof   ARGV[4] lease issued seconds   ARGV[5] lease issued micros
-- ARGV[6] maximum lease age in microseconds   ARGV[7] TTL in ms
-- Returns 1 if stored, 0 if stale (marker gone or changed, the lease is too old, was issued in
-- the future, or was issued for another field).
local g = redis.call('HGET', KEYS[1], '!g')
if not g then
  return 0
end
local s, us = tonumber(ARGV[4]), tonumber(ARGV[5])
if not s or not us then
  return 0
end
-- The proof binds the lease to this key's current marker, this field and this issue time.
if redis.sha1hex(g .. '\n' .. ARGV[1] .. '\n' .. ARGV[4] .. '\n' .. ARGV[5] .. '\n' .. g) ~= ARGV[3] then
  return 0
end
local t = redis.call('TIME')
local age = (tonumber(t[1]) - s) * 1000000 + (tonumber(t[2]) - us)
-- An issue time in the future (a server clock that stepped back, a failover to a server whose
-- clock is behind) would make the age negative and defeat the maximum lease age.
if age < 0 or age > tonumber(ARGV[6]) then
  return 0
end
-- Entries of one key share the key's TTL: never extend an existing entry's lifetime.
local had_data = redis.call('HLEN', KEYS[1]) > 1
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local ms = tonumber(ARGV[7])
local p = redis.call('PTTL', KEYS[1])
if (not had_data) or p < 0 or p > ms then
  redis.call('PEXPIRE', KEYS[1], ms)
end
return 1
