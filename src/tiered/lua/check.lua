-- check: which of the given members still hold a live lease without having acknowledged seq.
-- KEYS[1] members (zset)   KEYS[2] acks (hash)
-- ARGV[1] seq   ARGV[2..] member ids
-- Returns {id1, remaining_ms1, ...} for each member still live (server clock) with ack < seq.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local s = tonumber(ARGV[1])
local out = {}
for i = 2, #ARGV do
  local exp = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if exp and tonumber(exp) > now then
    local a = tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '0')
    if a < s then
      out[#out + 1] = ARGV[i]
      out[#out + 1] = tonumber(exp) - now
    end
  end
end
return out
