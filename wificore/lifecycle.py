"""wificore-admin's lifecycle commands: tenant suspend / resume / delete, plan set,
nas delete (its open sessions closed as an Accounting-Off closes them), and
`nas list` across every shard.

What radiusd caches follows each change as it follows `subscriber set` and
`plan add`: the shard's triggers (migrations 0001, 0007) announce the committed
change on ``wificore_inval``, the relay drops the Redis copy and tells every
process (rlm_wificore/invalidation.py). A tenant's status is cached like a plan
(``Keys.tenant``); these commands also delete the Redis copies they make stale
themselves, so a change applies at once even while no relay listens.
"""

from __future__ import annotations

import argparse
import struct
import time
import uuid
from typing import TYPE_CHECKING, Any

import psycopg

from . import livestate, quota, roles, wire
from .errors import InputError
from .keys import Keys
from .settings import Settings

if TYPE_CHECKING:
    from .admin import Admin

#: Plan options `plan add` and `plan set` take (integers; framed_pool is text).
PLAN_INTS = ("rate_up_kbps", "rate_down_kbps", "session_timeout_s", "idle_timeout_s",
             "data_quota_bytes", "time_quota_s", "simultaneous_use")
QUOTA_PERIOD_HELP = ("what the data and time quotas count over: none (the lifetime), daily, weekly "
                     "(from Monday 00:00) or monthly (from the 1st 00:00), in the tenant's time zone")
#: The tenant's rows on its shard, deleted in this order (children first).
TENANT_TABLES = ("session_days", "sessions", "auth_log", "coa_attempts", "subscribers", "plans", "nas")
#: The script radiusd's forwarder runs for each span of its spool (records into Redis).
LIVE_LUA = livestate.LIVE_LUA


def _redis(url: str | None) -> Any:
    if not url:
        return None
    return roles.client(url, socket_timeout=2)


def _forget(a: Admin, keys: list[str]) -> None:
    """Delete cached copies in the cache Redis (best effort: each has a TTL, and the
    relay deletes them on the shard's announcement as well)."""
    import redis
    r = _redis(a.cache_redis_url)
    if r is None or not keys:
        return
    try:
        r.delete(*keys)
    except redis.RedisError:
        pass
    finally:
        r.close()


def _tenant_keys(url: str | None, prefix: str, tenant_id: int) -> int:
    """Delete every key of the tenant in one Redis; how many: its cache keys
    (``{prefix}:{<tenant>}:…``) and its state keys in every bucket
    (``{prefix}:{b<N>}:<kind>:<tenant>[:…]``, wificore/keys.py). Session hashes of the
    layout before 2026-12-02 (``…:sess:<session key>``) name no tenant: they expire on
    their own (2 days)."""
    import redis
    r = _redis(url)
    if r is None:
        return 0
    deleted = 0
    try:
        batch: list[bytes] = []
        for match in (f"{prefix}:{{{tenant_id}}}:*", f"{prefix}:{{b*}}:*:{tenant_id}:*",
                      f"{prefix}:{{b*}}:*:{tenant_id}"):
            for key in r.scan_iter(match=match, count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    deleted += int(r.delete(*batch))
                    batch = []
        if batch:
            deleted += int(r.delete(*batch))
    except redis.RedisError as exc:
        raise InputError(f"redis: the tenant's rows are deleted, its keys not all ({exc}); "
                         "run `tenant delete` again") from None
    finally:
        r.close()
    return deleted


# ---------------------------------------------------------------------- tenants
def _set_status(a: Admin, tenant_id: int, status: str) -> None:
    with a.connect(tenant_id) as conn:
        cur = conn.execute("UPDATE tenants SET status = %s WHERE tenant_id = %s", (status, tenant_id))
        if cur.rowcount != 1:
            raise InputError(f"tenant: {tenant_id} does not exist (wificore-admin tenant add)")
    _forget(a, [a.keys.tenant(tenant_id), a.keys.tenant_zone(tenant_id)])


def cmd_tenant_suspend(a: Admin, args: argparse.Namespace) -> None:
    """Its logins are rejected (tenant_suspended); its accounting is still answered and stored."""
    _set_status(a, args.tenant, "suspended")
    print(f"tenant {args.tenant} suspended: its logins are rejected (tenant_suspended)")
    from . import session_admin
    if session_admin.queue_job(a, "disconnect_tenant", tenant=args.tenant, reason="tenant_suspended"):
        print("disconnect of its live sessions queued")


def cmd_tenant_resume(a: Admin, args: argparse.Namespace) -> None:
    _set_status(a, args.tenant, "active")
    print(f"tenant {args.tenant} active")


def cmd_tenant_delete(a: Admin, args: argparse.Namespace) -> None:
    """The tenant's rows on its shard, then its keys in Redis. One transaction on the shard."""
    tenant_id = args.tenant
    with a.connect(tenant_id) as conn:
        a.tenant_exists(conn, tenant_id)
        counts = {t: conn.execute(f"SELECT count(*) FROM {t} WHERE tenant_id = %s",  # noqa: S608 (fixed names)
                                  (tenant_id,)).fetchone()[0] for t in TENANT_TABLES}  # type: ignore[index]
        if not args.yes:
            raise InputError(f"tenant delete: removes tenant {tenant_id} with "
                             + ", ".join(f"{n} {t}" for t, n in counts.items())
                             + " rows for good; add --yes to do it")
        ips = [r[0] for r in conn.execute("SELECT host(ip) FROM nas WHERE tenant_id = %s", (tenant_id,))]
        for table in TENANT_TABLES:
            conn.execute(f"DELETE FROM {table} WHERE tenant_id = %s", (tenant_id,))  # noqa: S608
        conn.execute("DELETE FROM tenants WHERE tenant_id = %s", (tenant_id,))
        conn.execute("DELETE FROM tenant_moves WHERE tenant_id = %s", (tenant_id,))  # a move's journal
    from . import nas_admin
    nas_admin.forget_cached(a, ips)
    keys = _tenant_keys(a.cache_redis_url, a.keys.p, tenant_id)
    if a.state_redis_url != a.cache_redis_url:
        keys += _tenant_keys(a.state_redis_url, a.keys.p, tenant_id)
    print(f"tenant {tenant_id} deleted: " + ", ".join(f"{n} {t}" for t, n in counts.items())
          + f", {keys} Redis keys")


# ------------------------------------------------------------ tenant time zone
#: Per usage (a subscriber hash's field ``u``, live.lua's U_* positions: the periods' ids
#: at 4, 7, 10; or a usage hash of the layout before 2026-12-02: fields d, w, m): a period
#: id later than the new zone's current one is set to it, its counters kept. Returns how
#: many ids it moved.
_ZONE_BODY = """
local moved = 0
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return 0 end
local raw = redis.call('HGET', KEYS[1], 'u')
if raw then
  local u = u_load(cmsgpack.unpack(raw))
  for i = 1, 3 do
    local cur = tonumber(u[3 * i + 1])
    if cur and cur > tonumber(ARGV[i]) then
      u[3 * i + 1] = tonumber(ARGV[i])
      moved = moved + 1
    end
  end
  if moved > 0 then redis.call('HSET', KEYS[1], 'u', u_store(u)) end
  return moved
end
local names = {'d', 'w', 'm'}
for i = 1, 3 do
  local cur = tonumber(redis.call('HGET', KEYS[1], names[i]))
  if cur and cur > tonumber(ARGV[i]) then
    redis.call('HSET', KEYS[1], names[i], ARGV[i])
    moved = moved + 1
  end
end
return moved
"""
#: radiusd follows a zone change within about a second; a record booked in that time
#: under the old zone's later date is moved by the second pass.
ZONE_SETTLE_S = 2.0


def _period_ids(zone_name: str, now: float) -> tuple[int, int, int]:
    day = quota.ZoneClock(zone_name).day(now)
    week, month = quota.period_start("weekly", day), quota.period_start("monthly", day)
    assert week is not None and month is not None
    return day, week, month


def follow_zone_change(a: Admin, tenant_id: int, old: str, new: str, *, settle_s: float = ZONE_SETTLE_S) -> int:
    """A tenant's time zone changed to one whose local date is earlier (westwards): live.lua
    counts a record into a period only if its id is not older than the stored one, so every
    record of the new zone's today counted into no period until the old zone's date came
    round (a daily quota was not enforced for up to a day). The stored ids later than the
    new zone's are set to its current ones, the counters kept (that usage is the recent
    past, in the new zone's current period as far as it can be told). Eastwards the next
    record starts the new periods on its own. Returns how many usage hashes changed."""
    now = time.time()
    if old == new or all(n >= o for n, o in zip(_period_ids(new, now), _period_ids(old, now), strict=True)):
        return 0
    r = _redis(a.state_redis_url)
    if r is None:
        return 0
    import redis
    changed = 0
    try:
        script = r.register_script(livestate.u_load_lua() + _ZONE_BODY)
        for attempt in range(2):
            if attempt:
                time.sleep(settle_s)
            ids = _period_ids(new, time.time())
            for pattern in (a.keys.subscriber_pattern(tenant_id), a.keys.prior_usage_pattern(tenant_id)):
                for key in r.scan_iter(match=pattern, count=1000):
                    if int(script(keys=[key], args=list(ids))) and not attempt:
                        changed += 1
    except redis.RedisError as exc:
        raise InputError(f"redis: the time zone is changed, the usage periods not all ({exc}); "
                         "run the same `tenant add` again") from None
    finally:
        r.close()
    return changed


# ------------------------------------------------------------------------ plans
def cmd_plan_set(a: Admin, args: argparse.Namespace) -> None:
    """Change only the options given; the plan's subscribers keep it."""
    from .admin import v_positive
    changes: dict[str, Any] = {}
    for f in PLAN_INTS:
        value = getattr(args, f)
        if value is not None:
            changes[f] = v_positive(value, f)
    if args.interim_interval_s is not None:
        if not 60 <= args.interim_interval_s <= 2**31 - 1:
            raise InputError("interim_interval_s: must be at least 60 (and at most 2147483647)")
        changes["interim_interval_s"] = args.interim_interval_s
    if args.framed_pool is not None:
        if len(args.framed_pool) > 64:
            raise InputError("framed_pool: must be 1..64 characters, or 'none'")
        changes["framed_pool"] = None if args.framed_pool in ("", "none") else args.framed_pool
    if args.framed_ipv6_pool is not None:
        from .admin import v_pool
        changes["framed_ipv6_pool"] = (None if args.framed_ipv6_pool in ("", "none")
                                       else v_pool(args.framed_ipv6_pool, "framed_ipv6_pool"))
    if args.quota_period is not None:
        from .admin import v_choice
        changes["quota_period"] = v_choice(args.quota_period, "quota_period", quota.PERIODS)
    for f in args.clear or ():
        if f not in PLAN_INTS or f == "simultaneous_use":
            raise InputError(f"clear: {f!r} is not one of "
                             + ", ".join(x for x in PLAN_INTS if x != "simultaneous_use"))
        if f in changes:
            raise InputError(f"clear: {f} is also given a value")
        changes[f] = None
    if not changes:
        raise InputError("plan set: nothing to change (--rate-up-kbps, --rate-down-kbps, "
                         "--session-timeout-s, --idle-timeout-s, --interim-interval-s, "
                         "--data-quota-bytes, --time-quota-s, --simultaneous-use, --framed-pool, "
                         "--framed-ipv6-pool, --quota-period, --clear)")
    with a.connect(args.tenant) as conn:
        a.tenant_exists(conn, args.tenant)
        sets = ", ".join(f"{c} = %s" for c in changes)
        row = conn.execute(f"UPDATE plans SET {sets} WHERE tenant_id = %s AND name = %s "  # noqa: S608
                           "RETURNING plan_id", (*changes.values(), args.tenant, args.name)).fetchone()
        if row is None:
            raise InputError(f"plan: {args.name!r} does not exist in tenant {args.tenant} "
                             "(wificore-admin plan add)")
    _forget(a, [a.keys.plan(args.tenant, row[0])])
    print(f"plan {row[0]} {args.name} updated: {', '.join(sorted(changes))}")
    if {"rate_up_kbps", "rate_down_kbps"} & set(changes):
        # The new rate for the plan's live sessions: CoA-Requests from the CoA sidecar.
        from . import session_admin
        if session_admin.queue_job(a, "coa", tenant=args.tenant, plan=row[0], reason="plan_change"):
            print("CoA of the plan's live sessions queued")


# -------------------------------------------------------------------------- NAS
def cmd_nas_list_all(a: Admin) -> None:
    """Every NAS of every tenant on every shard."""
    from .admin import _print_rows
    rows = []
    for shard in a.map:
        with psycopg.connect(shard.dsn) as conn:
            for r in conn.execute("SELECT tenant_id, nas_id, name, host(ip), vendor, kind_check, coa_port, "
                                  "CASE WHEN require_message_authenticator THEN 'yes' ELSE 'no' END FROM nas"):
                rows.append((*r[:5], shard.name, *r[5:]))
    _print_rows(sorted(rows), ("tenant_id", "nas_id", "name", "ip", "vendor", "shard", "kind_check",
                               "coa_port", "require_message_authenticator"))


def _redis_live_on_nas(r: Any, keys: Keys, tenant_id: int, nas_id: int, now: float) -> int:
    """Live sessions of the NAS in the state Redis: no index lists a NAS's sessions (its
    Accounting-On/Off moves the NAS's epoch instead), so every subscriber hash of the
    tenant is read (SCAN, then the readers' script, a bucket at a time); plus the per-NAS
    sets of the layout before 2026-12-02."""
    count = sum(int(r.zcount(keys.prior_nas_live(b, tenant_id, nas_id), now, "+inf")) for b in range(keys.partitions))
    prefix = f"{keys.p}:"
    batch: list[tuple[int, str]] = []

    def flush() -> int:
        snaps = livestate.READER.read(r, keys, batch, now=now)
        batch.clear()
        return sum(s.nas.count(nas_id) for s in snaps)
    for key in r.scan_iter(match=keys.subscriber_pattern(tenant_id), count=1000):
        name = key.decode() if isinstance(key, bytes) else str(key)
        user = name[len(prefix):].split(":", 3)[3]  # {bB}:s:T:user
        batch.append((tenant_id, user))
        if len(batch) >= 500:
            count += flush()
    if batch:
        count += flush()
    return count


def live_sessions(a: Admin, conn: psycopg.Connection, tenant_id: int, nas_id: int) -> int:
    """Open sessions of a NAS: open rows on the shard, or live entries in the state Redis."""
    row = conn.execute("SELECT count(*) FROM sessions WHERE tenant_id = %s AND nas_id = %s "
                       "AND stopped_at IS NULL", (tenant_id, nas_id)).fetchone()
    count = int(row[0]) if row else 0
    import redis
    r = _redis(a.state_redis_url)
    if r is not None:
        try:
            now = time.time()
            count = max(count, _redis_live_on_nas(r, a.keys, tenant_id, nas_id, now))
        except redis.RedisError:
            pass
        finally:
            r.close()
    return count


def close_sessions(a: Admin, tenant_id: int, nas_id: int) -> None:
    """Close every session of a NAS as its Accounting-Off would: the same record through
    the same script as radiusd's forwarder (live.lua ends the live sessions in Redis and
    announces them; the batch writer closes the open rows, CLOSE_NAS)."""
    now = time.time()
    values: dict[str, Any] = dict.fromkeys(wire.ACCT_FIELDS)
    values.update(tenant_id=tenant_id, nas_id=nas_id, session_key="", acct_session_id="", username="",
                  status="off", event_ts=now, arrival_ts=now, session_time_s=0, input_octets=0,
                  output_octets=0, input_packets=0, output_packets=0,
                  record_id="admin-" + uuid.uuid4().hex)
    body = wire.pack_values(wire.KIND_ACCT, [values[f] for f in wire.ACCT_FIELDS])
    frame = struct.pack("<I", len(body)) + body
    settings = Settings.from_env()
    import redis
    r = _redis(a.state_redis_url)
    if r is None:
        raise InputError("redis: no state Redis (--redis-url) to close the NAS's sessions in")
    try:
        # ARGV as rlm_wificore/background.py's Forwarder passes them; an Accounting-Off
        # uses the prefix, the partitions, the time and the frame only.
        r.eval(LIVE_LUA.read_text(encoding="utf-8"), 0, a.keys.p, settings.stream_partitions, now,
               settings.session_stale_interims, 2 * 86400, 90 * 86400, len(body), frame)
    except redis.RedisError as exc:
        raise InputError(f"redis: could not close the NAS's sessions ({exc}); nothing deleted") from None
    finally:
        r.close()


def cmd_nas_delete(a: Admin, args: argparse.Namespace) -> None:
    """Remove a NAS and close its open sessions (as its Accounting-Off would)."""
    with a.connect(args.tenant) as conn:
        row = conn.execute("SELECT nas_id, host(ip) FROM nas WHERE tenant_id = %s AND name = %s",
                           (args.tenant, args.name)).fetchone()
        if row is None:
            raise InputError(f"nas: no NAS {args.name!r} in tenant {args.tenant}")
        nas_id, ip = row
        live = live_sessions(a, conn, args.tenant, nas_id)
        conn.execute("DELETE FROM nas WHERE tenant_id = %s AND nas_id = %s", (args.tenant, nas_id))
        if live:  # before the commit: if Redis cannot take it, the NAS stays
            close_sessions(a, args.tenant, nas_id)
    from . import nas_admin
    nas_admin.forget_cached(a, [ip])
    print(f"nas {nas_id} {args.name} {ip} deleted from tenant {args.tenant}, {live} open sessions closed")


# ----------------------------------------------------------------------- parser
def register(tenant: argparse._SubParsersAction, nas: argparse._SubParsersAction,
             plan: argparse._SubParsersAction) -> None:
    """The parsers of these commands (wired into admin.py's parser)."""
    x = tenant.add_parser("suspend", help="reject the tenant's logins (tenant_suspended); "
                          "accounting is still answered")
    x.add_argument("--tenant", type=int, required=True)
    x.set_defaults(fn=cmd_tenant_suspend)
    x = tenant.add_parser("resume", help="accept the tenant's logins again")
    x.add_argument("--tenant", type=int, required=True)
    x.set_defaults(fn=cmd_tenant_resume)
    x = tenant.add_parser("delete", help="delete the tenant with its subscribers, plans, NAS, "
                          "sessions, auth log, CoA attempts and Redis keys")
    x.add_argument("--tenant", type=int, required=True)
    x.add_argument("--yes", action="store_true", help="really (refused without)")
    x.set_defaults(fn=cmd_tenant_delete)

    x = nas.add_parser("delete", help="remove a NAS; its open sessions are closed")
    x.add_argument("--tenant", type=int, required=True)
    x.add_argument("--name", required=True)
    x.set_defaults(fn=cmd_nas_delete)

    x = plan.add_parser("set", help="change only the options given")
    x.add_argument("--tenant", type=int, required=True)
    x.add_argument("--name", required=True)
    for f in PLAN_INTS:
        x.add_argument("--" + f.replace("_", "-"), dest=f, type=int)
    x.add_argument("--interim-interval-s", dest="interim_interval_s", type=int)
    x.add_argument("--framed-pool", help="a pool name, or 'none'")
    x.add_argument("--framed-ipv6-pool", help="an IPv6 pool name (Framed-IPv6-Pool), or 'none'")
    x.add_argument("--quota-period", help=QUOTA_PERIOD_HELP)
    x.add_argument("--clear", action="append", metavar="OPTION",
                   help="unset an option (e.g. --clear data_quota_bytes); repeatable")
    x.set_defaults(fn=cmd_plan_set)
