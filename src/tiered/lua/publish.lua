-- publish: a tiered write's sequenced invalidation, and (Strict) the members it must wait for.
-- KEYS[1] sequence   KEYS[2] members (zset: id -> lease expiry, server ms)   KEYS[3] acks (hash)
-- KEYS[4] waits (zset: writer id -> the latest sequence it waits acknowledgements for)
-- ARGV[1] coherence channel   ARGV[2] invalidation ('K' .. key or 'F')   ARGV[3] the writer's id
-- ARGV[4] '1' to list the members to wait for
-- ARGV[5] '1' to use PUBLISH whatever the version (tests of the classic path on a new server)
-- Redis 7 and later: SPUBLISH, so the message is delivered by this shard (the channel hashes to
-- the coherence keys' slot), not broadcast over the cluster bus; older servers: PUBLISH.
-- Returns {seq, id1, remaining_ms1, id2, remaining_ms2, ...}: every member whose lease is live
-- (by this server's clock), other than the writer, that has not acknowledged seq yet, and the
-- time left on its lease. If there is one, the writer is recorded in waits with seq, so that
-- those members' acknowledgements are sent to it (see renew.lua).
local s = redis.call('INCR', KEYS[1])
local sharded = ARGV[5] ~= '1' and (redis.REDIS_VERSION_NUM or 0) >= 458752
redis.call(sharded and 'SPUBLISH' or 'PUBLISH', ARGV[1], '#' .. s .. ' ' .. ARGV[2])
local out = {s}
if ARGV[4] ~= '1' then
  return out
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf', 'WITHSCORES')
for i = 1, #live, 2 do
  if live[i] ~= ARGV[3] then
    local a = tonumber(redis.call('HGET', KEYS[3], live[i]) or '0')
    if a < s then
      out[#out + 1] = live[i]
      out[#out + 1] = tonumber(live[i + 1]) - now
    end
  end
end
if #out > 1 then
  redis.call('ZADD', KEYS[4], s, ARGV[3])
end
return out
