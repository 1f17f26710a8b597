-- stale: the value the last purge replaced, if the key has no value, another caller fills it,
-- and that purge is younger than the caller's grace. Reads only. One declared key.
-- KEYS[1] the cache key's hash
-- ARGV[1] the caller's stale grace in microseconds   ARGV[2] the maximum lease age in ms
-- ARGV[3] the largest stored value (bytes) the client accepts
-- Returns {1, value, replaced_ago_micros}, else {0}. See get_or_lease.lua for '!g' and
-- purge.lua for '!s'.
if redis.call('HEXISTS', KEYS[1], '!v') == 1 then
  return {0}
end
local g = redis.call('HGET', KEYS[1], '!g')
if not g then
  return {0}
end
local fs = string.match(g, '|(%d+)|%d$')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if not fs or tonumber(fs) == 0 or tonumber(fs) > now
    or tonumber(fs) + tonumber(ARGV[2]) * 1000 <= now then
  return {0}
end
local st = redis.call('HGET', KEYS[1], '!s')
if not st then
  return {0}
end
local i = string.find(st, '|', 1, true)
local ago = now - tonumber(string.sub(st, 1, i - 1))
if ago < 0 or ago >= tonumber(ARGV[1]) or #st - i > tonumber(ARGV[3]) then
  return {0}
end
return {1, string.sub(st, i + 1), ago}
