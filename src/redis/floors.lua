-- floors: a write that fences and raises the key's floors (hold-off deadline, source position,
-- open write intents), kept in the reserved field '!f' of the key's hash. One declared key.
-- KEYS[1] the cache key's hash
-- ARGV[1] mode: 'purge', 'insert', 'begin' (opens an intent) or 'end' (ends one)
-- ARGV[2] hold-off in microseconds (0: none)
-- ARGV[3] source position, 20 decimal digits ('' for none)
-- ARGV[4] intent lifetime in microseconds (for 'begin')
-- ARGV[5] how long the floors outlive the write, in ms (the maximum lease age)
-- ARGV[6] invalidation channel ('' publishes nothing)   ARGV[7] payload
-- ARGV[8] the encoded value ('insert')   ARGV[9] the value's TTL in ms ('insert')
-- ARGV[10] (optional, 'purge') the stale grace in ms: the replaced value is kept in '!s' as
--          purge.lua keeps it
-- '!f' is 'H:P:N:D': hold-off deadline (server microseconds), position floor (20 digits),
-- intents open, latest intent deadline. Every part only rises, except N, which ends count down.
-- Returns 1 if a value or sub-entry was removed, else 0.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local h, p, n, d = 0, '00000000000000000000', 0, 0
local f = redis.call('HGET', KEYS[1], '!f')
if f then
  local fh, fp, fn, fd = string.match(f, '^(%d+):(%d+):(%d+):(%d+)$')
  if fh then
    h, p, n, d = tonumber(fh), fp, tonumber(fn), tonumber(fd)
  end
end
local data = redis.call('HLEN', KEYS[1]) - redis.call('HEXISTS', KEYS[1], '!g')
  - redis.call('HEXISTS', KEYS[1], '!s')
if f then
  data = data - 1
end
local grace = 0
local replaced = nil
if ARGV[1] == 'purge' then
  grace = tonumber(ARGV[10] or '') or 0
  if grace > 0 then
    replaced = redis.call('HGET', KEYS[1], '!v')
  end
end
-- Freeing first: deleting the marker fences every outstanding lease (see purge.lua).
redis.call('DEL', KEYS[1])
local hold = tonumber(ARGV[2])
if hold > 0 and now + hold > h then
  h = now + hold
end
if ARGV[3] ~= '' and ARGV[3] > p then
  p = ARGV[3]
end
local mode = ARGV[1]
if mode == 'begin' then
  n = n + 1
  if now + tonumber(ARGV[4]) > d then
    d = now + tonumber(ARGV[4])
  end
elseif mode == 'end' and n > 0 then
  n = n - 1
end
redis.call('HSET', KEYS[1], '!f', string.format('%d:%s:%d:%d', h, p, n, d))
-- The floors live at least the maximum lease age, and until the hold-off and any open intent's
-- deadline have passed.
local keep = tonumber(ARGV[5])
local until_us = math.max(h, n > 0 and d or 0)
if until_us > now then
  keep = math.max(keep, math.floor((until_us - now) / 1000) + 1)
end
if mode == 'insert' then
  redis.call('HSET', KEYS[1], '!v', ARGV[8])
  keep = math.max(keep, tonumber(ARGV[9]))
end
if replaced then
  redis.call('HSET', KEYS[1], '!s', t[1] .. string.format('%06d', tonumber(t[2])) .. '|' .. replaced)
  keep = math.max(keep, grace)
end
redis.call('PEXPIRE', KEYS[1], keep)
if ARGV[6] ~= '' then
  redis.call('PUBLISH', ARGV[6], ARGV[7])
end
if data > 0 then
  return 1
end
return 0
