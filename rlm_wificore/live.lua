-- A batch of spooled records into Redis. Auth-log records are appended to
-- their stream partition. For accounting records, in one call: for each record
-- the live session (what Simultaneous-Use reads), the subscriber's usage
-- counters (delta against the last counters seen for the session, so a
-- replay adds nothing) and the record itself appended to its stream
-- partition for batch_writer. The forwarder sends a span of the spool as it
-- lies on disk, frames and all; they are split and decoded (cmsgpack) here,
-- so the radiusd process spends no Python time per record on the way to Redis.
-- Here too (see docs/batch-writer.md, "Accounting: counters, session identity,
-- liveness"): the counter rules, the generations of a reused Acct-Session-Id and
-- the interim interval a session's liveness uses; the stream's copy of each
-- record carries the results (wire.LIVE_FIELDS), which batch_writer stores.
--
-- ARGV[1] key prefix   ARGV[2] stream partitions   ARGV[3] now (epoch s)
-- ARGV[4] session_stale_interims   ARGV[5] session TTL s   ARGV[6] usage TTL s
-- ARGV[7] largest record   ARGV[8] a span of spool frames: <u32 LE length><record>
--         (rlm_wificore.spool; the last frame may be cut short)
-- ARGV[9] '0' when this Redis also holds the cached profiles and plans (one URL for
--         both roles): an accept's interval is then not kept, the Start reads the
--         plan's; anything else (or absent) keeps it (the roles split, a cluster)
-- ARGV[10] the bucket of every record of the call (a Redis Cluster: KEYS[1] is that
--         bucket's stream, the forwarder groups the frames by their tag); empty or
--         absent: one Redis, each record in the bucket of its frame's tag
-- ARGV[11] the forwarder's id, ARGV[12] its mark as Redis held it after the last call
--         that answered ('' = none yet), ARGV[13] the mark this call sets; ARGV[11]
--         empty or absent: no mark (a cluster's calls, tools). See below.
-- Returns {records, bytes consumed, segment ended (0/1), corrupt frames (0/1)},
-- framing as rlm_wificore/spool.py describes it; or {-1, the mark held} and nothing done.
--
-- Keys are built here from the records (docs/redis-keys.md): every key of a record is
-- tagged {b<bucket>}, the bucket of its tenant and username (wificore.keys.bucket_of),
-- which the frame's length word carries (spool.py); a frame from before 2026-12-01 has
-- none and its bucket is computed here (crc32). A NAS's Accounting-On/Off (tag TAG_ALL)
-- concerns every bucket; its stream copy goes to bucket nas_id % parts. See
-- docs/decisions.md, "Redis Cluster: one slot per call".
local prefix, parts, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local stale, session_ttl, usage_ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local keep_accept_iv = ARGV[9] ~= '0'
local only = tonumber(ARGV[10] or '')
local channel = prefix .. ':inval'
local TAG_ALL, LEN_SPAN = 2047, 2097152  -- wificore.keys.TAG_ALL; 2^21 (spool.LEN_MASK + 1)
-- Subscribers whose live sessions a Start or Stop changed: announced in one message
-- per call ({"L", [[tenant, user], ...]}), not one per record, so that every radiusd
-- wakes once per call to drop its copies, not once per record.
local changed = {}
-- NASes whose Accounting-On/Off of this call ended their sessions ({"N", [[tenant, nas_id], ...]}).
local nas_changed = {}

local function int(x) return string.format('%d', x) end

-- crc32 (zlib's), for frames without a tag: the bucket is crc32("<tenant>:<user>") % parts.
-- Its table is built at the first such frame of a call, not at every call: the 2,048
-- steps cost ~0.4 ms, and Redis runs the whole script body at each EVALSHA.
local CRC = nil
local function crc_table()
  local t = {}
  for i = 0, 255 do
    local c = i
    for _ = 1, 8 do
      if bit.band(c, 1) == 1 then c = bit.bxor(bit.rshift(c, 1), 0xEDB88320) else c = bit.rshift(c, 1) end
    end
    t[i] = c
  end
  return t
end
local function crc32(s)
  if CRC == nil then CRC = crc_table() end
  local c = 0xFFFFFFFF
  for i = 1, #s do
    c = bit.bxor(bit.rshift(c, 8), CRC[bit.band(bit.bxor(c, string.byte(s, i)), 255)])
  end
  c = bit.bnot(c)
  if c < 0 then c = c + 4294967296 end
  return c
end

-- Version 2 records carry their fields by position (wificore/wire.py,
-- ACCT_FIELDS and AUTH_FIELDS); version 1 as a map. The fields used here, by name:
local function fields(rec)
  local v = rec[3]
  if rec[1] == 1 then return v end
  if rec[2] == 'auth' then return {tenant_id = v[1], username = v[5], result = v[7], interim_s = v[10]} end
  return {tenant_id = v[1], nas_id = v[2], session_key = v[3], username = v[5], status = v[6],
          event_ts = v[7], arrival_ts = v[8], session_time_s = v[9], input_octets = v[10],
          output_octets = v[11], interim_s = v[18], local_day = v[26]}
end

-- Counter rules (docs/batch-writer.md, "Counter rules"; batch_writer/records.py applies the
-- same maxima to records that never passed through this script). Values are exact here
-- (Lua numbers are doubles: exact up to 2^53).
local MAX_OCTETS = 1125899906842624     -- 2^50 octets per session and direction
local MAX_SESSION_TIME_S = 157680000    -- 5 x 365 days
local FLAG_REFUSED, FLAG_BACKWARDS = 1, 2
local MIN_INTERIM_S, MAX_INTERIM_S = 10, 604800  -- batch_writer.records.INTERIM_RANGE_S
-- How long an accept's interval waits for its session's first record (a NAS sends the
-- Start moments after the accept; later than this, the tenant's largest interval applies).
local ACCEPT_IV_TTL_S = 120
-- A record "started" (event time - session time) more than this before or after the
-- generation's start belongs to another generation of the Acct-Session-Id.
local SLACK_S = 60
local ACCT_BODY = 26                    -- wire.ACCT_FIELDS (radiusd's part of the body)
local LIVE_N = 7                        -- wire.LIVE_FIELDS

-- The stream's copy of a version 2 record gets wire.LIVE_FIELDS appended to its body
-- (no re-encoding: the body is the last element, so the array header's count is
-- rewritten and the values appended). [0x93, 0x02, 0xa4 "acct", 0xdc, count u16 BE, ...]
local function extend(payload, rec, ...)
  if rec[1] ~= 2 or string.byte(payload, 8) ~= 0xdc then return payload end
  local n = string.byte(payload, 9) * 256 + string.byte(payload, 10)
  if n > ACCT_BODY then return payload end
  return string.sub(payload, 1, 7) .. struct.pack('>BI2', 0xdc, ACCT_BODY + LIVE_N)
         .. string.sub(payload, 11) .. string.rep(string.char(0xc0), ACCT_BODY - n)
         .. cmsgpack.pack(...)
end

-- The plan id of a cached profile, the interval of a cached plan (rlm_wificore's
-- Profile.pack / Plan.pack arrays: plan_id 9th, interim_interval_s 6th); nil if unreadable.
local function profile_plan(raw)
  local ok, prof = pcall(cmsgpack.unpack, raw)
  if ok and type(prof) == 'table' and type(prof[9]) == 'number' then return prof[9] end
  return nil
end

local function plan_interval(raw)
  local ok, plan = pcall(cmsgpack.unpack, raw)
  if ok and type(plan) == 'table' and type(plan[6]) == 'number' and plan[6] > 0 then return plan[6] end
  return nil
end

-- Quota periods (wificore/quota.py): a record's usage counts in its local day (the
-- tenant's calendar, the record's local_day), in the ISO week (from its Monday) and in
-- the month (from its 1st) of that day. The usage hash keeps each period's id (its
-- first local day) and counters: d do dt, w wo wt, m mo mt. A newer id starts the
-- period's counters again; a record of an older period counts in the totals only.
-- As stored, the usage leaves out what follows from the rest (false): the week's id when
-- it is the Monday of the day's, the month's when it is the 1st of the day's month, a
-- week's counter equal to the day's, a month's equal to the week's (the usual case: 16 B
-- less per subscriber). wificore/livestate.py's scripts take this block as it is, from
-- here to its end mark: one codec.
-- usage codec: begin
local function month_start(z)
  -- days from 1970-01-01 -> the day of the 1st of its month (civil_from_days, H. Hinnant)
  local zz = z + 719468
  local era = math.floor(zz / 146097)
  local doe = zz - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
                          - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  return z - (doy - math.floor((153 * mp + 2) / 5))
end
-- The stored array ``U`` completed (in place).
local function u_fill(U)
  if #U >= 12 then
    local d = U[4]
    if U[7] == false then U[7] = d - (d + 3) % 7 end
    if U[10] == false then U[10] = month_start(d) end
    if U[8] == false then U[8] = U[5] end
    if U[9] == false then U[9] = U[6] end
    if U[11] == false then U[11] = U[8] end
    if U[12] == false then U[12] = U[9] end
  end
  return U
end
local function u_store(U)
  if #U < 12 then return cmsgpack.pack(U) end
  local E, d = {}, U[4]
  for i = 1, 12 do E[i] = U[i] end
  if U[7] == d - (d + 3) % 7 then E[7] = false end
  if U[10] == month_start(d) then E[10] = false end
  if U[8] == U[5] then E[8] = false end
  if U[9] == U[6] then E[9] = false end
  if U[11] == U[8] then E[11] = false end
  if U[12] == U[9] then E[12] = false end
  return cmsgpack.pack(E)
end
-- usage codec: end


-- The subscriber's usage (field 'u' of its hash): a msgpack array, U_* positions. The
-- periods (d do dt, w wo wt, m mo mt: 4-12) are left out until a record counts in one.
local U_OCTETS, U_TIME, U_PRUNE = 1, 2, 3
local PERIOD_FIELDS = {'d', 'do', 'dt', 'w', 'wo', 'wt', 'm', 'mo', 'mt'}  -- of the layout before 2026-12-02
-- Count d octets and dt seconds of local day `day` into the periods of U.
local function period_count(U, day, d, dt)
  local ids = {day, day - (day + 3) % 7, month_start(day)}
  for i = 1, 3 do
    local at = 3 * i + 1
    local c = tonumber(U[at])
    if c == nil or ids[i] > c then
      U[at], U[at + 1], U[at + 2] = ids[i], d, dt
    elseif c == ids[i] then
      U[at + 1], U[at + 2] = (tonumber(U[at + 1]) or 0) + d, (tonumber(U[at + 2]) or 0) + dt
    end
  end
end

local function u_load(raw) return u_fill(cmsgpack.unpack(raw)) end

-- A session (a field of the subscriber's hash named by its session key: its Acct-Session-
-- Id's current generation), a msgpack array: the last counters seen (the delta base),
-- the totals when they differ from them (a counter went backwards; else false), the live
-- deadline (0: stopped), the refresh time (stopped: the Stop's time), the row key's
-- suffix (<session_key>:<suffix>; '' = the plain key; false = the hex of the start's
-- whole seconds, the usual one), the generation's start, the
-- generation, the previous generation's suffix (false: none), the interval liveness
-- uses, the NAS, the NAS's epoch at the session's last record (wificore/livestate.py).
local S_LI, S_LO, S_T, S_I, S_O, S_DEADLINE, S_REFRESH = 1, 2, 3, 4, 5, 6, 7
local S_ROW, S_BORN, S_GEN, S_PREV, S_IV, S_NAS, S_EPOCH = 8, 9, 10, 11, 12, 13, 14
-- A session's field: (the session keys radiusd makes: hex) \0 and the bytes, else its key,
-- or \1 and the key when that could be another field's name: 'u' (the usage), one
-- beginning with \0 (a hex key's) or \1 (an escaped one). wificore/livestate.py reads
-- the names back.
local function field_of(skey)
  if #skey >= 8 and #skey % 2 == 0 and not string.find(skey, '[^0-9a-f]') then
    return '\0' .. (string.gsub(skey, '..', function(h) return string.char(tonumber(h, 16)) end))
  end
  local c = string.byte(skey, 1)
  if skey == 'u' or (c and c <= 2) then return '\1' .. skey end
  return skey
end
-- Field \2 of the subscriber's hash: the fields of its sessions not stopped (a msgpack
-- array; one whose deadline passed goes at the next pruning), so that a reader reads those
-- sessions only, not every session of the session TTL (a hotspot subscriber: hundreds).
-- Kept once the hash holds LIST_FROM fields (none in a hash of fewer: read whole, as cheap).
local LIVE_LIST, LIST_FROM = '\2', 8
-- How often a subscriber's hash is pruned of the sessions a session TTL past their last
-- refresh or Stop (at a record of the subscriber, when due).
local PRUNE_EVERY_S = 21600

-- The dead-letter stream of a frame: its bucket's (undecodable: the tag's, else 0).
local function dead_of(tag)
  local b = only or ((tag >= 1 and tag <= parts) and tag - 1) or 0
  return prefix .. ':{b' .. int(b) .. '}:dead'
end

-- A version 2 auth-log record, as wire.pack_values writes it: [2, "auth", [tenant_id, ...]]
-- (0x93 0x02 0xa4 "auth", then a fixarray). With one Redis for both roles nothing of it
-- is read when its bucket is known (the call's, or its frame's tag): it is appended to
-- that bucket's stream as it is, not decoded (cmsgpack.unpack of the whole record was
-- half of this script's work per login). Anything else, an untagged frame included, is
-- decoded below; a body that does not decode after all is dead-lettered by batch_writer.
local AUTH_HEAD = string.char(0x93, 0x02, 0xa4) .. 'auth'
local function auth_bucket(payload, tag)
  if string.sub(payload, 1, 7) ~= AUTH_HEAD then return nil end
  local n = string.byte(payload, 8)
  if not n or n < 0x91 or n > 0x9f then return nil end
  return only or ((tag >= 1 and tag <= parts) and tag - 1) or nil
end

local function one(payload, tag)
  if not keep_accept_iv then
    local b = auth_bucket(payload, tag)
    if b then
      local bp = prefix .. ':{b' .. int(b) .. '}:'
      redis.call('XADD', bp .. 'stream', '*', 'd', payload)
      return
    end
  end
  local ok, rec = pcall(cmsgpack.unpack, payload)
  if not ok or type(rec) ~= 'table' or (rec[1] ~= 1 and rec[1] ~= 2) or type(rec[3]) ~= 'table' then
    local dl = dead_of(tag)
    redis.call('XADD', dl, '*', 'd', payload, 'reason', 'undecodable record', 'source', 'radiusd',
               'ts', ARGV[3])
    return
  end
  local f = fields(rec)
  local t = int(tonumber(f.tenant_id) or 0)
  -- The record's bucket: the call's (a cluster), its frame's tag, or computed (no tag).
  local b = only
  if b == nil then
    if tag >= 1 and tag <= parts then
      b = tag - 1
    else
      b = crc32(t .. ':' .. tostring(f.username or '')) % parts
    end
  end
  local bp = prefix .. ':{b' .. int(b) .. '}:'
  local stream = bp .. 'stream'
  -- The keys of the tenant before 2026-12-01 ({tenant} tag): the cached profile and plan
  -- (one Redis for both roles), the state of a session that started before the upgrade.
  local tp = prefix .. ':{' .. t .. '}:'
  if rec[2] == 'auth' then
    redis.call('XADD', stream, '*', 'd', payload)
    -- An accept carries its plan's interim interval: kept for the session about to start
    -- (a state Redis of its own cannot read the cached profile and plan below), and the
    -- tenant's largest interval follows it. Not with one Redis for both roles
    -- (ARGV[9] '0'): the Start reads the cached plan, and an accept costs one XADD.
    local aiv = tonumber(f.interim_s)
    if keep_accept_iv and f.result == 'accept' and aiv and aiv >= MIN_INTERIM_S and aiv <= MAX_INTERIM_S and type(f.username) == 'string' then
      redis.call('SET', bp .. 'iv:' .. t .. ':' .. f.username, int(aiv), 'EX', ACCEPT_IV_TTL_S)
      local most = redis.call('GET', bp .. 'ivmax:' .. t)
      if aiv > (tonumber(most) or 0) then
        redis.call('SET', bp .. 'ivmax:' .. t, int(aiv), 'EX', usage_ttl)
      end
    end
    return
  end
  if f.invalid then
    redis.call('XADD', bp .. 'dead', '*', 'd', payload, 'reason', tostring(f.invalid), 'source', 'radiusd',
               'ts', ARGV[3])
    return
  end
  local status, skey, user = f.status, f.session_key, f.username
  local ev = tonumber(f.event_ts) or now

  if status == 'on' or status == 'off' then
    -- The NAS restarted: none of its sessions is live any more, and an Acct-Session-Id
    -- it uses again from now on is a new session (see the generations below). Nothing
    -- lists a NAS's sessions: the NAS's epoch (field nas_id of the bucket's nasep hash:
    -- "<epoch> <event time>", the epoch a number that only grows) is moved on, and a
    -- session is live only while the epoch it saw at its last record is the NAS's
    -- current one (readers: wificore/livestate.py). Every radiusd is told the NAS
    -- ({"N", [[tenant, nas_id], ...]}) and drops the cached states of that NAS's users
    -- only. Its sessions are in every bucket: each bucket's epoch (a cluster: this
    -- call's bucket; the forwarder sends the record to every bucket), the record itself
    -- to one stream.
    local home = math.floor(tonumber(f.nas_id) or 0) % parts
    local on_at = string.format('%.3f', ev)
    local first, last_b = 0, parts - 1
    if only then first, last_b = only, only end
    for nb = first, last_b do
      local np = prefix .. ':{b' .. int(nb) .. '}:'
      if nb == home then
        redis.call('XADD', np .. 'stream', '*', 'd', payload)
      end
      local cur = redis.call('HGET', np .. 'nasep:' .. t, int(f.nas_id))
      -- The same Accounting-On/Off again (a replay of the spool, the NAS's retransmission
      -- with its Event-Timestamp): the epoch stays, the sessions since stay live.
      if not (cur and string.match(cur, '^%d+ (.*)$') == on_at) then
        local epoch = math.max(math.floor(now), (cur and tonumber(string.match(cur, '^(%d+)')) or 0) + 1)
        redis.call('HSET', np .. 'nasep:' .. t, int(f.nas_id), int(epoch) .. ' ' .. on_at)
      end
      redis.call('EXPIRE', np .. 'nasep:' .. t, usage_ttl)
      -- The layout before 2026-12-02 (one Redis upgraded with sessions in flight): the
      -- NAS's set of the bucket names its sessions still kept in their own keys.
      local naslive = np .. 'naslive:' .. t .. ':' .. int(f.nas_id)
      local members = redis.call('ZRANGE', naslive, 0, -1)
      for _, m in ipairs(members) do
        local sep = string.find(m, '\n', 1, true)
        if sep then
          local skey = string.sub(m, sep + 1)
          local u = string.sub(m, 1, sep - 1)
          redis.call('ZREM', np .. 'live:' .. t .. ':' .. u, skey)
          local base = np .. 'sess:' .. string.match(skey, '^([^:]*)')
          if redis.call('EXISTS', base) == 1 then
            redis.call('HDEL', base, 'r')
            redis.call('HSET', base, 'n', on_at)
          end
          changed[#changed + 1] = {f.tenant_id, u}
        end
      end
      redis.call('DEL', naslive)
    end
    nas_changed[#nas_changed + 1] = {f.tenant_id, math.floor(tonumber(f.nas_id) or 0)}
    return
  end

  -- Counter rules, part 1: a counter above its plausible maximum is refused (taken as
  -- not reported: the last value stays), the record itself is kept.
  local flags = 0
  local ni, no, nt = tonumber(f.input_octets), tonumber(f.output_octets), tonumber(f.session_time_s)
  if ni == nil or ni < 0 or ni > MAX_OCTETS then ni = nil; flags = FLAG_REFUSED end
  if no == nil or no < 0 or no > MAX_OCTETS then no = nil; flags = FLAG_REFUSED end
  if nt == nil or nt < 0 or nt > MAX_SESSION_TIME_S then nt = nil; flags = FLAG_REFUSED end

  -- The subscriber's hash: field 'u' its usage (U_* positions), one field per session
  -- (its Acct-Session-Id's current generation, S_* positions), both msgpack arrays.
  local sub = bp .. 's:' .. t .. ':' .. user
  local nas = math.floor(tonumber(f.nas_id) or 0)
  local field = field_of(skey)
  local got = redis.call('HMGET', sub, 'u', field, LIVE_LIST)
  local epraw = redis.call('HGET', bp .. 'nasep:' .. t, int(nas))
  local epoch, on_at = 0, nil
  if epraw then
    local e, at = string.match(epraw, '^(%d+) (.*)$')
    epoch, on_at = tonumber(e) or 0, tonumber(at)
  end
  local U, S = nil, nil
  if got[1] then U = u_load(got[1]) end
  if got[2] then S = cmsgpack.unpack(got[2]) end
  -- The live list, once the hash holds LIST_FROM fields: read with the rest; made (from
  -- every session, once) by the record that adds a field to a hash of that many.
  local L, L_dirty = nil, false
  if got[3] then
    local ok, l = pcall(cmsgpack.unpack, got[3])
    if ok and type(l) == 'table' then L = l end
  end
  local new_field = not got[2]
  local function note_live(name, alive)
    if L == nil then
      if not new_field or redis.call('HLEN', sub) < LIST_FROM then return end
      L, L_dirty = {}, true
      local all = redis.call('HGETALL', sub)
      for j = 1, #all, 2 do
        if all[j] ~= 'u' and all[j] ~= LIVE_LIST then
          local ok, o = pcall(cmsgpack.unpack, all[j + 1])
          if ok and type(o) == 'table' and (tonumber(o[S_DEADLINE]) or 0) ~= 0 then L[#L + 1] = all[j] end
        end
      end
    end
    for i = 1, #L do
      if L[i] == name then
        if not alive then table.remove(L, i); L_dirty = true end
        return
      end
    end
    if alive then L[#L + 1] = name; L_dirty = true end
  end
  local migrated = false
  if not S then
    local osess = bp .. 'sess:' .. skey
    local olive, ouse = bp .. 'live:' .. t .. ':' .. user, bp .. 'use:' .. t .. ':' .. user
    if only == nil then
      -- One Redis upgraded from before 2026-12-01: a session (and its subscriber's live set
      -- and usage) kept under the tenant's tag moves to the bucket's keys of before
      -- 2026-12-02 (RENAME keeps the expiry), and from there into the hash below. Not in a
      -- cluster (the old layout never ran on one).
      local old, old_live, old_use = tp .. 'sess:' .. skey, tp .. 'live:' .. user, tp .. 'use:' .. user
      local moved = redis.call('EXISTS', old) == 1
      if moved then
        redis.call('RENAME', old, osess)
      end
      if moved or status == 'start' then
        if redis.call('EXISTS', ouse) == 0 then
          if redis.call('EXISTS', old_use) == 1 then
            redis.call('RENAME', old_use, ouse)
          end
        end
      end
      if moved then
        if redis.call('EXISTS', olive) == 0 then
          if redis.call('EXISTS', old_live) == 1 then
            redis.call('RENAME', old_live, olive)
          end
        end
      end
    end
    -- The layout before 2026-12-02 (a hash per session, a live set, a usage hash, per-NAS
    -- sets): the session's state moves into the subscriber's hash at its first record
    -- since, its old keys deleted (its live deadline is the live set's score).
    local o = redis.call('HMGET', osess, 'i', 'o', 't', 'x', 'r', 'I', 'O', 'k', 'b', 'n', 'g', 'p', 'v')
    if o[3] then
      local k0 = o[8] or skey
      local dl = 0
      if o[4] ~= '1' then
        dl = tonumber(redis.call('ZSCORE', olive, k0)) or 1
      end
      local ps = false
      if o[12] then ps = (o[12] == skey) and '' or string.sub(o[12], #skey + 2) end
      S = {tonumber(o[1]) or 0, tonumber(o[2]) or 0, tonumber(o[3]) or 0, tonumber(o[6]) or false,
           tonumber(o[7]) or false, dl, tonumber(o[5]) or 0, (k0 == skey) and '' or string.sub(k0, #skey + 2),
           tonumber(o[9]) or false, tonumber(o[11]) or 0, ps, tonumber(o[13]) or false, nas,
           (dl == 1) and (epoch - 1) or epoch}  -- (not in the old live set: not live now)
      redis.call('DEL', osess)
      redis.call('ZREM', olive, k0)
      redis.call('ZREM', bp .. 'naslive:' .. t .. ':' .. int(nas), user .. '\n' .. k0)
      migrated = true
      -- An Accounting-On/Off the old layout applied to it (field n) before any epoch here.
      if not on_at then on_at = tonumber(o[10]) end
    end
    if not U then
      local ou = redis.call('HMGET', ouse, 'octets', 'time_s', unpack(PERIOD_FIELDS))
      if ou[1] or ou[2] then
        U = {tonumber(ou[1]) or 0, tonumber(ou[2]) or 0, 0}
        if ou[3] or ou[6] or ou[9] then
          for i = 3, 11 do U[i + 1] = tonumber(ou[i]) or 0 end
        end
        redis.call('DEL', ouse)
        migrated = true
      end
    end
  end
  local exists = S ~= nil
  -- A record the NAS sent before its last Accounting-On/Off (its event time, the NAS's
  -- clock, before that one's) that reached radiusd before the Accounting-On/Off was applied
  -- here (its arrival before the epoch, which is the time it was applied: a slower spool,
  -- the spools draining after a Redis outage) does not make its session live again: it
  -- keeps the epoch it had (a session new here: the one before; one a later record made
  -- live again stays live). Its usage counts.
  local ep = epoch
  local arrival = tonumber(f.arrival_ts)
  if on_at and ev < on_at and arrival and arrival < epoch then
    local had = exists and tonumber(S[S_EPOCH]) or 0
    ep = (had >= epoch) and had or math.min(had, epoch - 1)
  end
  local new_hash = not U
  if new_hash then
    U = {0, 0, math.floor(now + PRUNE_EVERY_S)}
  end
  -- A record that counts nothing still keeps what moved from the old keys.
  local function save_moved()
    note_live(field, S[S_DEADLINE] ~= 0)
    if L_dirty then
      redis.call('HSET', sub, field, cmsgpack.pack(S), 'u', u_store(U), LIVE_LIST, cmsgpack.pack(L))
    else
      redis.call('HSET', sub, field, cmsgpack.pack(S), 'u', u_store(U))
    end
    redis.call('EXPIREAT', sub, int(math.ceil(now + usage_ttl)))
  end
  -- Generations of one Acct-Session-Id (one row each in PostgreSQL, row key
  -- <session_key>:<S_ROW>): a Start after a Stop, a session starting after the NAS's
  -- Accounting-On/Off, or after everything seen of the current one, is a new session.
  -- S_ROW '' = the plain key (a hash from before 2026-12-01).
  local born = exists and S[S_BORN] or nil
  if born == false then born = nil end
  local function rowkey(suffix)
    if suffix == false then return skey .. ':' .. string.format('%x', math.floor(born or 0)) end
    return (suffix == '') and skey or (skey .. ':' .. suffix)
  end
  local k = exists and rowkey(S[S_ROW]) or skey
  local seen = born and (born + (S[S_T] or 0))
  local gen = exists and S[S_GEN] or 0
  local prev = exists and S[S_PREV] and rowkey(S[S_PREV]) or nil
  local x = exists and S[S_DEADLINE] == 0
  local rs = ev - (nt or 0)  -- when this record says its session started
  -- Only a Start, or a record whose session time restarted below the last one, can open a
  -- generation: a NAS that sends no Acct-Session-Time in its Interims, or whose clock is
  -- set mid-session (an NTP sync), goes on as one session.
  local lt0 = exists and S[S_T] or 0
  local dated = status == 'start' or ((nt or 0) > 0 and nt < lt0)
  local newgen = not exists
  local iv = exists and S[S_IV] or nil
  if iv == false then iv = nil end
  if exists then
    if prev and born and rs < born - SLACK_S then
      -- A late record of the previous generation: to its row, nothing live or counted.
      redis.call('XADD', stream, '*', 'd', extend(payload, rec, prev, nil, nil, nil, flags, nil, nil))
      if migrated then save_moved() end
      return
    elseif status == 'start' and x and not (born and rs >= born - SLACK_S and rs < seen) then
      -- (A Start saying its session began before the Stop's end is that session's own,
      -- late or repeated: the Stop stays final below. A reused id starts after it.)
      newgen = true
    elseif dated and on_at and born and born < on_at and rs >= on_at then
      newgen = true
    elseif dated and seen and rs > seen + SLACK_S then
      newgen = true
    elseif x then
      -- A Stop was final: nothing after it counts or revives the session.
      redis.call('XADD', stream, '*', 'd', extend(payload, rec, k, S[S_T], S[S_I] or S[S_LI],
                 S[S_O] or S[S_LO], flags, iv, nil))
      if migrated then save_moved() end
      return
    end
  end
  local li, lo, lt = exists and S[S_LI] or 0, exists and S[S_LO] or 0, exists and S[S_T] or 0
  local LI, LO = exists and S[S_I] or li, exists and S[S_O] or lo
  local refresh_at = exists and S[S_REFRESH] or 0
  if newgen then
    if exists then prev, gen = k, gen + 1 end
    k = skey .. ':' .. string.format('%x', math.floor(rs))
    if k == prev then k = k .. '.' .. gen end
    li, lo, lt, LI, LO, born, iv, x = 0, 0, 0, 0, 0, rs, nil, false
    refresh_at = 0  -- refresh due now
  end
  if iv == nil then
    -- The interval liveness uses, resolved at the session's first record: the plan's (the
    -- one the login's accept carried, kept above; else the subscriber's profile and plan
    -- as authorize cached them in Redis, moments before the Start, when this is the same
    -- Redis), else the largest plan interval seen for the tenant, else the record's. Never
    -- the radiusd process's own cache.
    iv = tonumber(f.interim_s) or 300
    local found = redis.call('GET', bp .. 'iv:' .. t .. ':' .. user)
    found = tonumber(found)
    if found then
      redis.call('DEL', bp .. 'iv:' .. t .. ':' .. user)  -- taken: the session keeps it
    elseif only == nil then
      -- Not in a cluster: the cached profile and plan are in other slots there.
      local praw = redis.call('GET', tp .. 'u:' .. user)
      local plan_id = praw and profile_plan(praw)
      if plan_id then
        local plraw = redis.call('GET', tp .. 'plan:' .. int(plan_id))
        found = plraw and plan_interval(plraw)
      end
    end
    local most = redis.call('GET', bp .. 'ivmax:' .. t)
    most = tonumber(most) or 0
    if found then
      if found > most then
        redis.call('SET', bp .. 'ivmax:' .. t, int(found), 'EX', usage_ttl)
      end
      iv = found
    else
      iv = math.max(iv, most)
    end
  end

  -- Counter rules, part 2: deltas against the last counters seen. A record whose session
  -- time is behind the last is late (reordered): it adds nothing. A counter lower than
  -- the last while the session time moved on went backwards (a NAS reset, a 32-bit wrap
  -- without Gigawords): the new value is the new base and counts in full (flagged).
  -- The totals (S_I, S_O) go to the stream: PostgreSQL stores what is counted here.
  local late = nt ~= nil and nt < lt
  local moved = nt ~= nil and nt > lt
  local function step(c, l)
    if c == nil or late then return 0, l end
    if c >= l then return c - l, c end
    if moved then flags = flags + ((flags >= FLAG_BACKWARDS) and 0 or FLAG_BACKWARDS); return c, c end
    return 0, l
  end
  local di, bi = step(ni, li)
  local dout, bo = step(no, lo)
  local dt = moved and (nt - lt) or 0
  LI, LO = LI + di, LO + dout
  local tt = math.max(lt, nt or 0)
  -- The hash's expiry is refreshed when the session's refresh time is due, not at every
  -- Interim: every R seconds, R = twice the live deadline, at most a quarter of the
  -- session TTL. See docs/decisions.md.
  local deadline = iv * stale + 60
  local every = math.min(2 * deadline, session_ttl / 4)
  local due = now >= refresh_at
  -- The local day this record's usage counts in (quota periods), for the stream too:
  -- batch_writer keeps the session's totals per such day (session_days). A late record
  -- counts nothing and names no day (its totals are those of a later one).
  local day = tonumber(f.local_day)
  if day then day = math.floor(day) end
  redis.call('XADD', stream, '*', 'd', extend(payload, rec, k, tt, LI, LO, flags, iv,
                                               (not late) and day or nil))
  local write_u = new_hash or migrated
  if di + dout > 0 or dt > 0 then
    local d = di + dout
    U[U_OCTETS] = U[U_OCTETS] + d
    U[U_TIME] = U[U_TIME] + dt
    if day then period_count(U, day, d, dt) end
    write_u = true
  end
  if due then refresh_at = math.floor(now + every) end
  local dl
  if status == 'stop' then
    -- Stopped (S_DEADLINE 0): kept for replays and late records until pruned, a session
    -- TTL after the Stop (S_REFRESH the Stop's time).
    dl, refresh_at = 0, math.floor(now)
  else
    -- A session whose NAS goes silent ends on its own: readers count it only while its
    -- deadline is ahead (and its NAS had no Accounting-On/Off since: S_EPOCH).
    dl = math.ceil(now + deadline)
  end
  local row = string.sub(k, #skey + 2)
  if row == string.format('%x', math.floor(born or rs)) then row = false end
  S = {bi, bo, tt, (LI ~= bi) and LI or false, (LO ~= bo) and LO or false, dl, refresh_at, row,
       born or rs, gen, prev and ((prev == skey) and '' or string.sub(prev, #skey + 2)) or false,
       iv, nas, ep}
  -- Pruning (bounded: a subscriber reconnecting all day): every PRUNE_EVERY_S, the sessions
  -- a session TTL past their last refresh (or their Stop) go.
  if now >= (U[U_PRUNE] or 0) then
    local all = redis.call('HGETALL', sub)
    local doomed, ended = {}, {}
    for j = 1, #all, 2 do
      local name = all[j]
      if name ~= 'u' and name ~= field and name ~= LIVE_LIST then
        local ok, o = pcall(cmsgpack.unpack, all[j + 1])
        -- (one still live, an interval longer than the TTL, stays until its deadline)
        if not ok or type(o) ~= 'table' or (now > (tonumber(o[S_REFRESH]) or 0) + session_ttl
                                            and (tonumber(o[S_DEADLINE]) or 0) < now) then
          doomed[#doomed + 1] = name
        end
        if not ok or type(o) ~= 'table' or (tonumber(o[S_DEADLINE]) or 0) < now then ended[name] = true end
      end
    end
    -- The live list keeps the sessions whose deadline is ahead (a later record enters one again).
    note_live(field, true)
    if L then
      local keep = {}
      for i = 1, #L do
        if not ended[L[i]] then keep[#keep + 1] = L[i] end
      end
      if #keep ~= #L then L, L_dirty = keep, true end
    end
    for j = 1, #doomed, 1000 do  -- unpack's bound on the arguments of one call
      redis.call('HDEL', sub, unpack(doomed, j, math.min(j + 999, #doomed)))
    end
    U[U_PRUNE] = math.floor(now + PRUNE_EVERY_S)
    write_u = true
  end
  note_live(field, dl ~= 0)
  if write_u and L_dirty then
    redis.call('HSET', sub, field, cmsgpack.pack(S), 'u', u_store(U), LIVE_LIST, cmsgpack.pack(L))
  elseif write_u then
    redis.call('HSET', sub, field, cmsgpack.pack(S), 'u', u_store(U))
  elseif L_dirty then
    redis.call('HSET', sub, field, cmsgpack.pack(S), LIVE_LIST, cmsgpack.pack(L))
  else
    redis.call('HSET', sub, field, cmsgpack.pack(S))
  end
  if due or newgen or migrated or new_hash then
    redis.call('EXPIREAT', sub, int(math.ceil(now + usage_ttl)))
  end
  if due and status ~= 'stop' then
    -- The NAS's clock against the arrival time, for the NOC (bounded: one field per NAS),
    -- kept by the sessions of the NAS's home bucket (nas_id % parts) only: once per NAS.
    local arrival = tonumber(f.arrival_ts)
    if arrival and arrival > 0 and b == nas % parts then
      redis.call('HSET', bp .. 'nasskew:' .. t, int(nas), string.format('%.0f', ev - arrival))
      redis.call('EXPIRE', bp .. 'nasskew:' .. t, session_ttl)
    end
  end
  if status ~= 'interim' then
    changed[#changed + 1] = {f.tenant_id, user}
  end
end

-- The forwarder's mark ({p}:fwd:<id>), set in the same call as the records: after a
-- restart Redis holds it and the records of the same calls, or neither. A Redis with
-- appendfsync everysec answers before it writes while a fsync is still running (the
-- write waits up to 2 s): killed meanwhile, it comes back without calls it answered. A
-- call expecting a mark other than the one held does nothing and returns that one: the
-- forwarder sends again what was lost before anything after it (rlm_wificore/background.py).
if (ARGV[11] or '') ~= '' then
  local mark = prefix .. ':fwd:' .. ARGV[11]
  local held = redis.call('GET', mark) or ''
  if ARGV[12] ~= '' and held ~= ARGV[12] then
    return {-1, held}
  end
  redis.call('SET', mark, ARGV[13], 'EX', session_ttl)
end

local largest, span = tonumber(ARGV[7]), ARGV[8]
local pos, size, records, ended, corrupt = 1, #span, 0, 0, 0
while pos + 3 <= size do
  local w = struct.unpack('<I4', span, pos)
  local n, tag = w % LEN_SPAN, math.floor(w / LEN_SPAN)
  if w == 4294967295 or n == 0 or n > largest then
    -- 0: never written; 4294967295: the writer moved on; else nothing after it can be framed.
    ended = 1
    if w ~= 0 and w ~= 4294967295 then corrupt = 1 end
    break
  end
  if pos + 3 + n > size then break end
  local payload = string.sub(span, pos + 4, pos + 3 + n)
  -- One bad record must not stop the batch (the forwarder would retry it forever).
  local ok, err = pcall(one, payload, tag)
  if not ok then
    local dl = dead_of(tag)
    redis.call('XADD', dl, '*', 'd', payload, 'reason', 'script error: ' .. tostring(err),
               'source', 'radiusd', 'ts', ARGV[3])
  end
  records = records + 1
  pos = pos + 4 + n
end
if #changed > 0 then
  redis.call('PUBLISH', channel, cjson.encode({'L', changed}))
end
if #nas_changed > 0 then
  redis.call('PUBLISH', channel, cjson.encode({'N', nas_changed}))
end
return {records, pos - 1, ended, corrupt}
