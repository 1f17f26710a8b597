-- list_fields: one HSCAN step over a key's hash, returning only sub-entry names. One declared key.
-- KEYS[1] the cache key's hash
-- ARGV[1] the cursor   ARGV[2] the COUNT hint
-- Returns {next_cursor, name, name, ...} with the 'f:' prefix still on each name. Values never
-- cross the wire (HSCAN without NOVALUES, which Redis 7.0 lacks, would send them).
local r = redis.call('HSCAN', KEYS[1], ARGV[1], 'MATCH', 'f:*', 'COUNT', ARGV[2])
local out = {r[1]}
local kv = r[2]
for i = 1, #kv, 2 do
  out[#out + 1] = kv[i]
end
return out
