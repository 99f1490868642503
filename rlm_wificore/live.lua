-- One accounting record into Redis, atomically: the live session (what
-- Simultaneous-Use reads), the subscriber's usage counters (delta against
-- the last counters seen for the session, so a replay adds nothing), and
-- the record appended to its stream partition for batch_writer.
--
-- KEYS[1] live ZSET   KEYS[2] usage HASH   KEYS[3] session HASH
-- KEYS[4] stream      KEYS[5] NAS live ZSET (members "user\nsession_key")
-- ARGV: status, session_key, username, in, out, time_s, expires_at, now,
--       payload, session_ttl_s, usage_ttl_s, channel, tenant_id
local status, skey, user = ARGV[1], ARGV[2], ARGV[3]
local now = tonumber(ARGV[8])

if status == 'on' or status == 'off' then
  -- The NAS restarted: none of its sessions is live any more. The live
  -- ZSETs share the tenant's hash tag, so they are in this slot.
  local prefix = string.match(KEYS[1], '^(.*:live:)')
  local members = redis.call('ZRANGE', KEYS[5], 0, -1)
  for _, m in ipairs(members) do
    local sep = string.find(m, '\n', 1, true)
    if sep then
      redis.call('ZREM', prefix .. string.sub(m, 1, sep - 1), string.sub(m, sep + 1))
    end
  end
  redis.call('DEL', KEYS[5])
  redis.call('XADD', KEYS[4], '*', 'd', ARGV[9])
  redis.call('PUBLISH', ARGV[12], '["t",' .. ARGV[13] .. ']')
  return #members
end

local last = redis.call('HMGET', KEYS[3], 'i', 'o', 't', 'x')
local li, lo, lt = tonumber(last[1]) or 0, tonumber(last[2]) or 0, tonumber(last[3]) or 0
local ni, no, nt = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
redis.call('XADD', KEYS[4], '*', 'd', ARGV[9])
if last[4] == '1' then
  return -1  -- a Stop was final: nothing after it counts or revives the session
end
local di, dout, dt = math.max(0, ni - li), math.max(0, no - lo), math.max(0, nt - lt)
-- Numbers leave Lua through string.format('%d'): tostring() would print
-- large counters in exponent form.
local function int(x) return string.format('%d', x) end
redis.call('HSET', KEYS[3], 'i', int(math.max(li, ni)), 'o', int(math.max(lo, no)),
           't', int(math.max(lt, nt)))
if di + dout > 0 or dt > 0 then
  redis.call('HINCRBY', KEYS[2], 'octets', int(di + dout))
  redis.call('HINCRBY', KEYS[2], 'time_s', int(dt))
end
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[11]))
local member = user .. '\n' .. skey
if status == 'stop' then
  redis.call('HSET', KEYS[3], 'x', '1')
  redis.call('ZREM', KEYS[1], skey)
  redis.call('ZREM', KEYS[5], member)
else
  local expires = tonumber(ARGV[7])
  redis.call('ZADD', KEYS[1], expires, skey)
  redis.call('ZADD', KEYS[5], expires, member)
  -- Sessions whose NAS went silent expire on their own.
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
  local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  redis.call('EXPIREAT', KEYS[1], int(math.ceil(tonumber(top[2]))))
  redis.call('EXPIRE', KEYS[5], tonumber(ARGV[10]))
end
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[10]))
if status ~= 'interim' then
  redis.call('PUBLISH', ARGV[12], cjson.encode({'l', tonumber(ARGV[13]), user}))
end
return 1
