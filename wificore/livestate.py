"""Reading a subscriber's live state from the state Redis: its live sessions and usage.

live.lua (rlm_wificore/live.lua) keeps one hash per subscriber in its bucket
(:meth:`wificore.keys.Keys.subscriber`): field ``u`` its usage, one field per session,
msgpack arrays (see live.lua's U_* and S_* positions). A session is live while its
deadline is ahead and its NAS had no Accounting-On/Off since its last record: the
epoch it saw then is still the NAS's (the bucket's ``nasep`` hash, field nas_id =
``"<epoch> <event time>"``). A hash of 8 fields or more has a live list (field ``\x02``:
the fields of the sessions not stopped): only those are read. A Redis upgraded with sessions in flight still holds some
in the layout before 2026-12-02 (a live set and a usage hash per subscriber), moved at
each session's next record: they are read too until then.

Every reader goes through :attr:`Reader.script`: one call per bucket, four keys per
subscriber of that bucket (one Redis Cluster slot).
"""

from __future__ import annotations

import functools
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.exceptions import NoScriptError

from .keys import Keys

#: live.lua, whose usage codec the scripts here share (its "usage codec" block).
LIVE_LUA = Path(__file__).resolve().parent.parent / "rlm_wificore" / "live.lua"


def _codec() -> str:
    """live.lua's usage codec (month_start, u_fill, u_store), as live.lua has it."""
    text = LIVE_LUA.read_text(encoding="utf-8")
    begin, end = "-- usage codec: begin\n", "-- usage codec: end\n"
    return text[text.index(begin):text.index(end) + len(end)]


#: The usage a state carries, in this order: the lifetime totals, then each quota
#: period's id and counters (wificore/quota.py FIELDS: d, w, m).
USAGE_FIELDS = ("octets", "time_s", "d", "do", "dt", "w", "wo", "wt", "m", "mo", "mt")

@functools.cache
def u_load_lua() -> str:
    """live.lua's reading and writing of its usage field (the week's and month's ids and
    counters left out when they follow from the day's), for the scripts here: ``u_load``
    completes an unpacked array, ``u_store`` packs one. Read when first asked (importing
    does no I/O)."""
    return _codec() + "local u_load = u_fill\n"

#: KEYS: per subscriber its hash, its bucket's NAS epochs, its live set and usage hash of
#: the layout before 2026-12-02. ARGV[1]: now (epoch s); ARGV[2] '1': the row keys of the
#: live sessions too. Reply per subscriber: {live count, {USAGE_FIELDS values (nil where
#: absent)}, {nas ids of the live sessions}, {row keys (ARGV[2] '1')}}.
_READ_BODY = """
local now, rows = tonumber(ARGV[1]), ARGV[2] == '1'
local S_DEADLINE, S_ROW, S_BORN, S_NAS, S_EPOCH = 6, 8, 9, 13, 14
local out = {}
for i = 1, #KEYS, 4 do
  -- The usage, and the sessions the live list names (field \2: those not stopped); a hash
  -- of before the list: every field.
  local head = redis.call('HMGET', KEYS[i], 'u', '\2')
  local all = {}
  local ok, names = pcall(cmsgpack.unpack, head[2] or '')
  if head[2] and ok and type(names) == 'table' then
    if head[1] then all[1], all[2] = 'u', head[1] end
    for j = 1, #names, 1000 do
      local part = {unpack(names, j, math.min(j + 999, #names))}
      local vals = redis.call('HMGET', KEYS[i], unpack(part))
      for n = 1, #part do
        if vals[n] then
          all[#all + 1] = part[n]
          all[#all + 1] = vals[n]
        end
      end
    end
  else
    all = redis.call('HGETALL', KEYS[i])
  end
  local u, live = nil, {}
  for j = 1, #all, 2 do
    if all[j] ~= '\2' then
      local ok2, v = pcall(cmsgpack.unpack, all[j + 1])
      if ok2 and type(v) == 'table' then
        if all[j] == 'u' then
          u = u_load(v)
        elseif (tonumber(v[S_DEADLINE]) or 0) > now then
          live[#live + 1] = {all[j], v}
        end
      end
    end
  end
  local count, nas, keys = 0, {}, {}
  if #live > 0 then
    local ids = {}
    for j, l in ipairs(live) do ids[j] = string.format('%d', tonumber(l[2][S_NAS]) or 0) end
    local eps = redis.call('HMGET', KEYS[i + 1], unpack(ids))
    for j, l in ipairs(live) do
      local cur = eps[j] and tonumber(string.match(eps[j], '^(%d+)')) or 0
      if (tonumber(l[2][S_EPOCH]) or 0) >= cur then
        count = count + 1
        nas[#nas + 1] = tonumber(l[2][S_NAS]) or 0
        if rows then
          local name, suffix = l[1], l[2][S_ROW]
          if string.byte(name, 1) == 0 then
            name = string.gsub(string.sub(name, 2), '.', function(c) return string.format('%02x', string.byte(c)) end)
          elseif string.byte(name, 1) == 1 then
            name = string.sub(name, 2)
          end
          if suffix == false then
            suffix = string.format('%x', math.floor(tonumber(l[2][S_BORN]) or 0))
          end
          keys[#keys + 1] = (suffix == '' or type(suffix) ~= 'string') and name or (name .. ':' .. suffix)
        end
      end
    end
  end
  count = count + redis.call('ZCOUNT', KEYS[i + 2], ARGV[1], '+inf')
  if rows then
    for _, k in ipairs(redis.call('ZRANGEBYSCORE', KEYS[i + 2], ARGV[1], '+inf')) do keys[#keys + 1] = k end
  end
  local usage = {}
  if u then
    usage[1], usage[2] = u[1] or false, u[2] or false
    for j = 3, 11 do usage[j] = u[j + 1] or false end
  else
    usage = redis.call('HMGET', KEYS[i + 3], 'octets', 'time_s', 'd', 'do', 'dt', 'w', 'wo', 'wt', 'm', 'mo', 'mt')
  end
  out[#out + 1] = {count, usage, nas, keys}
end
return out
"""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One subscriber's state as read: live sessions (count, their NASes, row keys if asked)
    and the usage (``USAGE_FIELDS`` order, None where absent)."""

    sessions: int
    values: tuple[int | None, ...]
    nas: tuple[int, ...] = ()
    rows: tuple[str, ...] = ()

    @property
    def usage(self) -> dict[str, int]:
        """The usage fields that are there, by name."""
        return {f: v for f, v in zip(USAGE_FIELDS, self.values, strict=False) if v is not None}


def subscriber_keys(keys: Keys, tenant_id: int, username: str) -> list[str]:
    """The four keys :attr:`Reader.script` reads for one subscriber."""
    return list(keys.subscriber_state(tenant_id, username))


def parse(reply: Any) -> Snapshot:
    """One subscriber's part of :attr:`Reader.script`'s reply (run for every re-read of the
    state thread: kept lean)."""
    count, raw, nas, rows = reply
    values = tuple(None if v is None else int(v) for v in raw)
    if len(values) < len(USAGE_FIELDS):
        values += (None,) * (len(USAGE_FIELDS) - len(values))
    return Snapshot(int(count), values, tuple(map(int, nas)) if nas else (),
                    tuple(r.decode() if isinstance(r, bytes) else str(r) for r in rows) if rows else ())


class Reader:
    """:attr:`Reader.script` on one client (a Redis, a Redis Cluster, or queued on a pipeline)."""

    @functools.cached_property
    def script(self) -> str:
        """The reader script: live.lua's usage codec and :data:`_READ_BODY`."""
        return u_load_lua() + _READ_BODY

    @functools.cached_property
    def sha(self) -> str:
        return hashlib.sha1(self.script.encode()).hexdigest()

    def queue(self, pipe: Any, keys: Keys, tenant_id: int, username: str, now: float, rows: bool = False) -> None:
        """Queue one subscriber's read on ``pipe`` (EVALSHA: :meth:`run` loads the script
        when the pipeline's Redis does not have it yet)."""
        pipe.evalsha(self.sha, 4, *subscriber_keys(keys, tenant_id, username), now, "1" if rows else "0")

    def call(self, r: Any, names: list[str], now: float, rows: bool = False) -> list[Any]:
        """One call over the keys of subscribers of one bucket."""
        args = (now, "1" if rows else "0")
        try:
            return list(r.evalsha(self.sha, len(names), *names, *args))
        except NoScriptError:
            return list(r.eval(self.script, len(names), *names, *args))

    def read(self, r: Any, keys: Keys, subscribers: list[tuple[int, str]], rows: bool = False,
             now: float | None = None) -> list[Snapshot]:
        """The states of (tenant, username) pairs: one call per bucket."""
        now = time.time() if now is None else now
        by_bucket: dict[int, list[int]] = {}
        for i, (t, u) in enumerate(subscribers):
            by_bucket.setdefault(keys.bucket(t, u), []).append(i)
        out: list[Snapshot | None] = [None] * len(subscribers)
        for members in by_bucket.values():
            names: list[str] = []
            for i in members:
                names += subscriber_keys(keys, *subscribers[i])
            for i, part in zip(members, self.call(r, names, now, rows), strict=True):
                out[i] = parse(part)
        return [s for s in out if s is not None]

    def load(self, r: Any) -> None:
        """Make the script known to ``r`` (after a NOSCRIPT from a pipeline)."""
        r.script_load(self.script)


#: The module's one reader (stateless: the script's SHA).
READER = Reader()


def read(r: Any, keys: Keys, tenant_id: int, username: str, rows: bool = False,
         now: float | None = None) -> Snapshot:
    """One subscriber's live state (tools, tests)."""
    return READER.read(r, keys, [(tenant_id, username)], rows, now)[0]


def sessions(r: Any, keys: Keys, tenant_id: int, username: str, now: float | None = None) -> int:
    """How many live sessions Simultaneous-Use counts for the subscriber (at ``now``)."""
    return read(r, keys, tenant_id, username, now=now).sessions


def usage(r: Any, keys: Keys, tenant_id: int, username: str) -> dict[str, int]:
    """The subscriber's usage fields (``USAGE_FIELDS``, absent ones left out)."""
    return read(r, keys, tenant_id, username).usage
