-- A batch of spooled records into Redis. Auth-log records are appended to
-- their stream partition. For accounting records, in one call: for each record
-- the live session (what Simultaneous-Use reads), the subscriber's usage
-- counters (delta against the last counters seen for the session, so a
-- replay adds nothing) and the record itself appended to its stream
-- partition for batch_writer. The forwarder sends a span of the spool as it
-- lies on disk, frames and all; they are split and decoded (cmsgpack) here,
-- so the radiusd process spends no Python time per record on the way to Redis.
--
-- ARGV[1] key prefix   ARGV[2] stream partitions   ARGV[3] now (epoch s)
-- ARGV[4] session_stale_interims   ARGV[5] session TTL s   ARGV[6] usage TTL s
-- ARGV[7] largest record   ARGV[8] a span of spool frames: <u32 LE length><record>
--         (rlm_wificore.spool; the last frame may be cut short)
-- Returns {records, bytes consumed, segment ended (0/1), corrupt frames (0/1)},
-- framing as rlm_wificore/spool.py describes it.
--
-- Keys are built here from the records, so this script needs one Redis node
-- (see docs/decisions.md, "Stream partitions by tenant").
local prefix, parts, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local stale, session_ttl, usage_ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local channel = prefix .. ':inval'
local dead = prefix .. ':dead'
-- Subscribers whose live sessions a Start or Stop changed: announced in one message
-- per call ({"L", [[tenant, user], ...]}), not one per record, so that every radiusd
-- wakes once per call to drop its copies, not once per record.
local changed = {}

local function int(x) return string.format('%d', x) end

-- Version 2 records carry their fields by position (wificore/wire.py,
-- ACCT_FIELDS and AUTH_FIELDS); version 1 as a map. The fields used here, by name:
local function fields(rec)
  local v = rec[3]
  if rec[1] == 1 then return v end
  if rec[2] == 'auth' then return {tenant_id = v[1]} end
  return {tenant_id = v[1], nas_id = v[2], session_key = v[3], username = v[5], status = v[6],
          session_time_s = v[9], input_octets = v[10], output_octets = v[11], interim_s = v[18]}
end

local function one(payload)
  local ok, rec = pcall(cmsgpack.unpack, payload)
  if not ok or type(rec) ~= 'table' or (rec[1] ~= 1 and rec[1] ~= 2) or type(rec[3]) ~= 'table' then
    redis.call('XADD', dead, '*', 'd', payload, 'reason', 'undecodable record', 'source', 'radiusd',
               'ts', ARGV[3])
    return
  end
  local f = fields(rec)
  if rec[2] == 'auth' then
    redis.call('XADD', prefix .. ':stream:{' .. int(f.tenant_id % parts) .. '}', '*', 'd', payload)
    return
  end
  if f.invalid then
    redis.call('XADD', dead, '*', 'd', payload, 'reason', tostring(f.invalid), 'source', 'radiusd',
               'ts', ARGV[3])
    return
  end
  local t = int(f.tenant_id)
  local tp = prefix .. ':{' .. t .. '}:'
  local stream = prefix .. ':stream:{' .. int(f.tenant_id % parts) .. '}'
  local naslive = tp .. 'naslive:' .. int(f.nas_id)
  local status, skey, user = f.status, f.session_key, f.username
  redis.call('XADD', stream, '*', 'd', payload)

  if status == 'on' or status == 'off' then
    -- The NAS restarted: none of its sessions is live any more.
    -- Only these users' cached copies are stale: they are announced with the
    -- others of this call ({"L", ...}), not the whole tenant.
    local members = redis.call('ZRANGE', naslive, 0, -1)
    for _, m in ipairs(members) do
      local sep = string.find(m, '\n', 1, true)
      if sep then
        local skey = string.sub(m, sep + 1)
        local u = string.sub(m, 1, sep - 1)
        redis.call('ZREM', tp .. 'live:' .. u, skey)
        -- Should the session go on all the same, its next record enters it again.
        redis.call('HDEL', tp .. 'sess:' .. skey, 'r')
        changed[#changed + 1] = {f.tenant_id, u}
      end
    end
    redis.call('DEL', naslive)
    return
  end

  local live, usage, sess = tp .. 'live:' .. user, tp .. 'use:' .. user, tp .. 'sess:' .. skey
  local last = redis.call('HMGET', sess, 'i', 'o', 't', 'x', 'r')
  if last[4] == '1' then
    return  -- a Stop was final: nothing after it counts or revives the session
  end
  local li, lo, lt = tonumber(last[1]) or 0, tonumber(last[2]) or 0, tonumber(last[3]) or 0
  local ni, no, nt = f.input_octets, f.output_octets, f.session_time_s
  local di, dout, dt = math.max(0, ni - li), math.max(0, no - lo), math.max(0, nt - lt)
  -- Expiries are refreshed when the session's refresh time (field r) is due, not at
  -- every Interim: refresh every R seconds, R = half a longer horizon (4 x the live
  -- deadline), at most a quarter of the session TTL. See docs/decisions.md.
  local deadline = f.interim_s * stale + 60
  local every = math.min(2 * deadline, session_ttl / 4)
  local refresh_at = tonumber(last[5]) or 0
  local due = now >= refresh_at
  local fresh = redis.call('HSET', sess, 'i', int(math.max(li, ni)), 'o', int(math.max(lo, no)),
                           't', int(math.max(lt, nt))) > 0  -- a new session hash
  if di + dout > 0 or dt > 0 then
    local d = di + dout
    -- The value equals the increment: the key (or field) is new and has no expiry yet.
    local total = redis.call('HINCRBY', usage, 'octets', int(d))
    redis.call('HINCRBY', usage, 'time_s', int(dt))
    if due or total == d then
      redis.call('EXPIRE', usage, usage_ttl)
    end
  end
  local member = user .. '\n' .. skey
  if status == 'stop' then
    redis.call('HSET', sess, 'x', '1')
    redis.call('ZREM', live, skey)
    redis.call('ZREM', naslive, member)
    redis.call('EXPIRE', sess, session_ttl)
  else
    -- A session whose NAS goes silent expires on its own: the live set's score
    -- is the deadline, and readers count only members whose deadline is ahead.
    -- The key outlives every deadline set until the next refresh of any of its
    -- sessions: its expiry is at least (refresh time + deadline).
    local expires = now + deadline
    if redis.call('ZADD', live, expires, skey) == 1 then
      -- A new member (a Start, or a session whose Start was lost): drop the
      -- expired ones, and let the key live as long as its latest deadline
      -- plus one refresh interval.
      redis.call('ZREMRANGEBYSCORE', live, '-inf', now)
      local top = redis.call('ZRANGE', live, -1, -1, 'WITHSCORES')
      redis.call('EXPIREAT', live, int(math.ceil(tonumber(top[2]) + every)))
    elseif due then
      redis.call('EXPIREAT', live, int(math.ceil(expires + every)), 'GT')
    end
    -- The NAS's set is only for Accounting-On/Off, refreshed at the same times:
    -- a NAS holds thousands of sessions, and a ZADD into that set is the
    -- dearest command here. A member of a dead session may linger up to the
    -- horizon; removing it from a live set it already left is harmless.
    if due then
      local horizon = 4 * deadline
      if redis.call('ZADD', naslive, now + horizon, member) == 1 then
        redis.call('ZREMRANGEBYSCORE', naslive, '-inf', now)
      end
      redis.call('EXPIRE', naslive, session_ttl)
      redis.call('HSET', sess, 'r', int(now + every))
    end
    if due or fresh then
      redis.call('EXPIRE', sess, session_ttl)
    end
  end
  if status ~= 'interim' then
    changed[#changed + 1] = {f.tenant_id, user}
  end
end

local largest, span = tonumber(ARGV[7]), ARGV[8]
local pos, size, records, ended, corrupt = 1, #span, 0, 0, 0
while pos + 3 <= size do
  local n = struct.unpack('<I4', span, pos)
  if n == 0 or n == 4294967295 or n > largest then
    -- 0: never written; 4294967295: the writer moved on; else nothing after it can be framed.
    ended = 1
    if n ~= 0 and n ~= 4294967295 then corrupt = 1 end
    break
  end
  if pos + 3 + n > size then break end
  local payload = string.sub(span, pos + 4, pos + 3 + n)
  -- One bad record must not stop the batch (the forwarder would retry it forever).
  local ok, err = pcall(one, payload)
  if not ok then
    redis.call('XADD', dead, '*', 'd', payload, 'reason', 'script error: ' .. tostring(err),
               'source', 'radiusd', 'ts', ARGV[3])
  end
  records = records + 1
  pos = pos + 4 + n
end
if #changed > 0 then
  redis.call('PUBLISH', channel, cjson.encode({'L', changed}))
end
return {records, pos - 1, ended, corrupt}
