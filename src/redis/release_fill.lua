-- release_fill: the filler gives its fill up (its load failed), so a waiter may take it at once
-- instead of when the fill lease lapses. One declared key.
-- KEYS[1] the cache key's hash
-- ARGV[1] the entry's hash field   ARGV[2] the lease's proof
-- ARGV[3] lease issued seconds   ARGV[4] lease issued micros
-- ARGV[5] channel to announce the fill's end on   ARGV[6] its payload
-- Returns 1 if the lease was the filler's and its fill ended, else 0 (nothing changes).
local g = redis.call('HGET', KEYS[1], '!g')
if not g then
  return 0
end
local m = string.match(g, '^[^|]+')
local fs, waiting = string.match(g, '|(%d+)|(%d)$')
local s, us = tonumber(ARGV[3]), tonumber(ARGV[4])
if not fs or not s or not us then
  return 0
end
if redis.sha1hex(m .. '\n' .. ARGV[1] .. '\n' .. ARGV[3] .. '\n' .. ARGV[4] .. '\n' .. m) ~= ARGV[2] then
  return 0
end
if tonumber(fs) ~= s * 1000000 + us then
  return 0
end
redis.call('HSET', KEYS[1], '!g', m)
if waiting == '1' and ARGV[5] ~= '' then
  redis.call('PUBLISH', ARGV[5], ARGV[6])
end
return 1
