"""wificore-admin: migrations, tenants, NAS, plans and subscribers on every shard.

Bad input gets a one-line error naming the field (and the CSV row), a
non-zero exit, and nothing half-written: every command is one transaction.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import ipaddress
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any, cast

import psycopg

from . import lifecycle, livestate, nas_admin, quota, roles
from .errors import ConfigError, InputError, UnknownTenant, WiFiCoreError
from .keys import Keys
from .md4 import nt_hash
from .migrate import migrate_all
from .profile import KIND_CHECKS, KINDS, PW_TYPES, STATUS, UNKNOWN, Profile, normalise_mac
from .settings import Settings
from .shardmap import ShardMap
from .tenant_time import parse_instant, show_instant, tenant_zone, v_zone
from .text import printable
from .vendors import VENDORS

_BCRYPT = re.compile(r"^\$2[abxy]\$\d\d\$[./A-Za-z0-9]{53}$")
_NTHASH = re.compile(r"^[0-9a-fA-F]{32}$")
EXPIRES_HELP = ("in the tenant's time zone: a date (valid through that day: until the next "
                "local midnight), a date-time (local), or one with an offset")
#: A shard that does not answer fails the command instead of hanging it.
CONNECT_TIMEOUT_S = 10
CSV_FIELDS = ("username", "password", "password_type", "kind", "plan", "status", "expires_at",
              "mac_binding", "framed_ip", "framed_ipv6_prefix", "delegated_ipv6_prefix")


# ------------------------------------------------------------------ validation
def v_username(value: str, field: str = "username") -> str:
    if not value or len(value) > 253 or not value.isprintable():
        raise InputError(f"{field}: must be 1..253 printable characters")
    return value


def v_password(password: str, password_type: str, *, hash_cleartext: bool) -> str:
    if password_type not in PW_TYPES:
        raise InputError(f"password_type: {password_type!r} is not one of {', '.join(PW_TYPES)}")
    if not password:
        raise InputError("password: must not be empty")
    if password_type == "nthash" and not _NTHASH.match(password):
        if not hash_cleartext:
            raise InputError("password: an nthash is 32 hex digits")
        return nt_hash(password)
    if password_type == "bcrypt" and not _BCRYPT.match(password):
        if not hash_cleartext:
            raise InputError("password: not a bcrypt hash ($2y$NN$…)")
        import bcrypt
        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(10)).decode()
    if password_type == "nthash":
        return password.lower()
    return password


def v_choice(value: str, field: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise InputError(f"{field}: {value!r} is not one of {', '.join(choices)}")
    return value


def v_time(value: str | None, field: str, tz: dt.tzinfo = dt.UTC) -> dt.datetime | None:
    """A date or date-time read in the tenant's zone ``tz`` (wificore/tenant_time.py)."""
    return parse_instant(value, field, tz)


def v_mac(value: str | None, field: str = "mac_binding") -> str | None:
    if not value:
        return None
    mac = normalise_mac(value)
    if mac is None:
        raise InputError(f"{field}: {value!r} is not a MAC address")
    return mac


def v_ip(value: str | None, field: str, *, v4_only: bool = False) -> str | None:
    """An IP address, normalised: an IPv4-mapped IPv6 one (``::ffff:192.0.2.1``) is the
    IPv4 address it maps (a NAS stored so never matched the IPv4 source of its packets,
    and escaped the one-address-one-tenant check). ``v4_only``: Framed-IP-Address is an
    IPv4 attribute (RFC 2865 5.8; radiusd sent 0.0.0.0 for an IPv6 one)."""
    if not value:
        return None
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise InputError(f"{field}: {value!r} is not an IP address") from None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if v4_only and ip.version != 4:
        raise InputError(f"{field}: {value!r} is not an IPv4 address (Framed-IP-Address); "
                         "an IPv6 subscriber takes --framed-ipv6-prefix")
    return str(ip)


def v_ipv6_prefix(value: str | None, field: str) -> str | None:
    """An IPv6 prefix, '2001:db8:1::/64' (Framed-IPv6-Prefix, Delegated-IPv6-Prefix): no
    host bits set; normalised (ipaddress)."""
    if not value:
        return None
    try:
        net = ipaddress.IPv6Network(value, strict=True)
    except ValueError as exc:
        raise InputError(f"{field}: {value!r} is not an IPv6 prefix such as 2001:db8:1::/64 "
                         f"({exc})") from None
    if "/" not in value:
        raise InputError(f"{field}: {value!r} has no prefix length (2001:db8:1::/64)")
    return str(net)


def v_pool(value: str | None, field: str) -> str | None:
    """A NAS pool name (Framed-Pool, Framed-IPv6-Pool): 1..64 printable characters."""
    if value is None:
        return None
    if not 1 <= len(value) <= 64 or not value.isprintable():
        raise InputError(f"{field}: must be 1..64 printable characters")
    return value


#: The plan options stored as bigint (migration 0001); the others are integer columns.
BIGINT_FIELDS = frozenset({"data_quota_bytes", "time_quota_s"})


def v_positive(value: int | None, field: str) -> int | None:
    if value is not None and value <= 0:
        raise InputError(f"{field}: must be greater than 0")
    top = 2**63 - 1 if field in BIGINT_FIELDS else 2**31 - 1
    if value is not None and value > top:
        raise InputError(f"{field}: must be at most {top}")
    return value


# --------------------------------------------------------------------- helpers
def _partitions() -> int:
    raw = os.environ.get("WIFICORE_STREAM_PARTITIONS") or ""
    try:
        return int(raw) if raw.strip() else int(Settings.stream_partitions)
    except ValueError:
        raise InputError("WIFICORE_STREAM_PARTITIONS: expected an integer") from None


class Admin:
    def __init__(self, shard_map: ShardMap, redis_url: str | None, key_prefix: str = "wc", *,
                 cache_redis_url: str | None = None, state_redis_url: str | None = None) -> None:
        self.map = shard_map
        self.redis_url = redis_url
        # The two roles (roles.py): each falls back to redis_url.
        self.cache_redis_url = cache_redis_url or redis_url
        self.state_redis_url = state_redis_url or redis_url
        # The buckets of the state keys (wificore/keys.py): the radiusd's stream_partitions.
        self.keys = Keys(key_prefix, _partitions())

    def connect(self, tenant_id: int, *, writing: bool = True) -> psycopg.Connection:
        """A connection to the tenant's shard, in a transaction. ``writing``: refused while
        the tenant is being moved (tenant move): the transaction holds the shared form of
        the move's fence lock, so a move waits for it and it sees a move's fence."""
        try:
            shard = self.map.shard_for(tenant_id)
        except UnknownTenant as exc:
            raise InputError(f"tenant: {exc}") from None
        conn = psycopg.connect(shard.dsn, connect_timeout=CONNECT_TIMEOUT_S)
        if writing:
            try:
                conn.execute("SELECT pg_advisory_xact_lock_shared(871017, %s)", (tenant_id % 32,))
                row = conn.execute("SELECT moving FROM tenants WHERE tenant_id = %s",
                                   (tenant_id,)).fetchone()
            except BaseException:
                conn.close()
                raise
            if row is not None and row[0] is not None:
                conn.close()
                raise InputError(f"tenant: {tenant_id} is being moved ({row[0]}; wificore-admin "
                                 f"tenant move): try again once the move is done")
        return conn

    def tenant_exists(self, conn: psycopg.Connection, tenant_id: int) -> None:
        if not conn.execute("SELECT 1 FROM tenants WHERE tenant_id = %s", (tenant_id,)).fetchone():
            raise InputError(f"tenant: {tenant_id} does not exist (wificore-admin tenant add)")

    def plan_id(self, conn: psycopg.Connection, tenant_id: int, name: str) -> int:
        row = conn.execute("SELECT plan_id FROM plans WHERE tenant_id = %s AND name = %s",
                           (tenant_id, name)).fetchone()
        if row is None:
            raise InputError(f"plan: {name!r} does not exist in tenant {tenant_id}")
        return row[0]


def returned(cur: psycopg.Cursor[Any]) -> Any:
    """The value an INSERT ... RETURNING gave back."""
    row = cur.fetchone()
    if row is None:
        raise WiFiCoreError("the database returned no row")
    return row[0]


def _print_rows(rows: Iterable[Sequence[Any]], header: Sequence[str]) -> None:
    w = csv.writer(sys.stdout, delimiter="\t", lineterminator="\n")
    w.writerow(header)
    for row in rows:  # values may come from packets: never a raw CR, LF or tab
        w.writerow(["" if v is None else printable(v) if isinstance(v, str) else v for v in row])


# -------------------------------------------------------------------- commands
def cmd_migrate(a: Admin, args: argparse.Namespace) -> None:
    for shard, versions in migrate_all(a.map).items():
        print(f"{shard}: " + (f"applied {', '.join(map(str, versions))}" if versions else "up to date"))


def cmd_tenant_add(a: Admin, args: argparse.Namespace) -> None:
    if args.id <= 0:
        raise InputError("id: must be greater than 0")
    if not 1 <= len(args.name) <= 200:
        raise InputError("name: must be 1..200 characters")
    tz = None if args.time_zone is None else v_zone(args.time_zone)
    with a.connect(args.id) as conn:
        before = conn.execute("SELECT time_zone FROM tenants WHERE tenant_id = %s", (args.id,)).fetchone()
        # An existing id: its name is updated, and its time zone when one is given.
        zone = returned(conn.execute(
            "INSERT INTO tenants (tenant_id, name, time_zone) VALUES (%s, %s, COALESCE(%s, 'UTC')) "
            "ON CONFLICT (tenant_id) DO UPDATE SET name = EXCLUDED.name, "
            "time_zone = COALESCE(%s, tenants.time_zone) RETURNING time_zone",
            (args.id, args.name, tz, tz)))
    print(f"tenant {args.id} ({args.name}, time zone {zone}) on shard {a.map.shard_for(args.id).name}")
    if before is not None and before[0] != zone:
        from . import lifecycle
        moved = lifecycle.follow_zone_change(a, args.id, str(before[0]), str(zone))
        if moved:
            print(f"{moved} subscribers' current quota periods moved to the new zone's dates")


def cmd_tenant_list(a: Admin, args: argparse.Namespace) -> None:
    rows = []
    for shard in a.map:
        with psycopg.connect(shard.dsn) as conn:
            for r in conn.execute("SELECT tenant_id, name, status, time_zone FROM tenants "
                                  "ORDER BY tenant_id"):
                rows.append((*r, shard.name))
    _print_rows(sorted(rows), ("tenant_id", "name", "status", "time_zone", "shard"))


def cmd_tenant_move(a: Admin, args: argparse.Namespace) -> None:
    from . import move
    if args.settle_s is not None and not 0 <= args.settle_s <= 600:
        raise InputError("settle-s: 0..600")
    if args.abort:
        move.abort(args.shard_map, args.tenant)
        return
    if not args.to:
        raise InputError("to: which shard (or --abort)")
    move.move(a, args.shard_map, args.tenant, args.to,
              settle_s=move.SETTLE_S if args.settle_s is None else args.settle_s)


def cmd_nas_add(a: Admin, args: argparse.Namespace) -> None:
    ip = v_ip(args.ip, "ip")
    if ip is None:
        raise InputError("ip: required")
    if not 1 <= len(args.secret) <= 128:
        raise InputError("secret: must be 1..128 characters")
    v_choice(args.vendor, "vendor", VENDORS)
    v_choice(args.require_message_authenticator, "require_message_authenticator", ("yes", "no"))
    require_ma = args.require_message_authenticator == "yes"
    v_choice(args.kind_check, "kind_check", KIND_CHECKS)
    coa_port = nas_admin.v_port(args.coa_port)
    with a.connect(args.tenant) as conn:
        a.tenant_exists(conn, args.tenant)
        # --replace updates the NAS in place: its nas_id (part of its session keys) stays.
        nas_id = nas_admin.add(a, conn, tenant_id=args.tenant, name=args.name, ip=ip, secret=args.secret,
                               vendor=args.vendor, replace=args.replace, require_message_authenticator=require_ma,
                               kind_check=args.kind_check, coa_port=coa_port)
    nas_admin.forget_cached(a, [ip])
    print(f"nas {nas_id} {args.name} {ip} ({args.vendor}) in tenant {args.tenant}, "
          f"require_message_authenticator {'yes' if require_ma else 'no'}, kind_check {args.kind_check}, "
          f"coa_port {coa_port}")


def cmd_nas_list(a: Admin, args: argparse.Namespace) -> None:
    if args.tenant is None:  # every tenant on every shard
        lifecycle.cmd_nas_list_all(a)
        return
    with a.connect(args.tenant, writing=False) as conn:
        rows = conn.execute("SELECT nas_id, name, host(ip), vendor, kind_check, coa_port, CASE WHEN "
                            "require_message_authenticator THEN 'yes' ELSE 'no' END FROM nas "
                            "WHERE tenant_id = %s ORDER BY nas_id", (args.tenant,)).fetchall()
    _print_rows(rows, ("nas_id", "name", "ip", "vendor", "kind_check", "coa_port",
                       "require_message_authenticator"))


def cmd_plan_add(a: Admin, args: argparse.Namespace) -> None:
    for f in ("rate_up_kbps", "rate_down_kbps", "session_timeout_s", "idle_timeout_s",
              "data_quota_bytes", "time_quota_s", "simultaneous_use"):
        v_positive(getattr(args, f), f)
    if not 60 <= args.interim_interval_s <= 2**31 - 1:
        raise InputError("interim_interval_s: must be at least 60 (and at most 2147483647)")
    ipv6_pool = v_pool(args.framed_ipv6_pool, "framed_ipv6_pool")
    period = v_choice(args.quota_period, "quota_period", quota.PERIODS)
    with a.connect(args.tenant) as conn:
        a.tenant_exists(conn, args.tenant)
        # Create only: an existing plan is changed with `plan set`, which keeps the
        # options it is not given (an add over it reset every one left out).
        row = conn.execute(
            "INSERT INTO plans (tenant_id, name, rate_up_kbps, rate_down_kbps, session_timeout_s,"
            " idle_timeout_s, interim_interval_s, data_quota_bytes, time_quota_s, simultaneous_use,"
            " framed_pool, framed_ipv6_pool, quota_period)"
            " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
            " ON CONFLICT (tenant_id, name) DO NOTHING RETURNING plan_id",
            (args.tenant, args.name, args.rate_up_kbps, args.rate_down_kbps, args.session_timeout_s,
             args.idle_timeout_s, args.interim_interval_s, args.data_quota_bytes, args.time_quota_s,
             args.simultaneous_use or 1, args.framed_pool, ipv6_pool, period)).fetchone()
        if row is None:
            raise InputError(f"name: plan {args.name!r} already exists in tenant {args.tenant}; "
                             "change it with `wificore-admin plan set` (only the options given)")
        plan_id = row[0]
    print(f"plan {plan_id} {args.name} in tenant {args.tenant}")


def cmd_plan_list(a: Admin, args: argparse.Namespace) -> None:
    with a.connect(args.tenant, writing=False) as conn:
        rows = conn.execute(
            "SELECT plan_id, name, rate_up_kbps, rate_down_kbps, session_timeout_s, idle_timeout_s,"
            " interim_interval_s, data_quota_bytes, time_quota_s, simultaneous_use, framed_pool,"
            " framed_ipv6_pool, quota_period FROM plans WHERE tenant_id = %s ORDER BY plan_id",
            (args.tenant,)).fetchall()
    _print_rows(rows, ("plan_id", "name", "rate_up_kbps", "rate_down_kbps", "session_timeout_s",
                       "idle_timeout_s", "interim_interval_s", "data_quota_bytes", "time_quota_s",
                       "simultaneous_use", "framed_pool", "framed_ipv6_pool", "quota_period"))


def cmd_sub_add(a: Admin, args: argparse.Namespace) -> None:
    username = v_username(args.username)
    if args.mac_auth:
        # MAC authentication (RouterOS sends the MAC as User-Name and an empty
        # password): the username must be a MAC, the password empty, and the
        # subscriber is bound to that MAC (see README, "MAC authentication").
        mac = v_mac(username, "username")
        if args.password or args.password_type != "cleartext":
            raise InputError("password: --mac-auth takes an empty password (--password '')")
        if args.mac_binding and v_mac(args.mac_binding) != mac:
            raise InputError("mac_binding: --mac-auth binds the subscriber to its username's MAC")
        password = ""
    else:
        if args.password is None:
            raise InputError("password: required (an empty one only with --mac-auth)")
        password = v_password(args.password, args.password_type, hash_cleartext=True)
        mac = v_mac(args.mac_binding)
    v_choice(args.kind, "kind", KINDS)
    v_choice(args.status, "status", STATUS)
    v_time(args.expires_at, "expires_at")  # the format, before the tenant is looked up
    ip = v_ip(args.framed_ip, "framed_ip", v4_only=True)
    prefix6 = v_ipv6_prefix(args.framed_ipv6_prefix, "framed_ipv6_prefix")
    delegated6 = v_ipv6_prefix(args.delegated_ipv6_prefix, "delegated_ipv6_prefix")
    with a.connect(args.tenant) as conn:
        a.tenant_exists(conn, args.tenant)
        expires = v_time(args.expires_at, "expires_at", tenant_zone(conn, args.tenant))
        plan_id = a.plan_id(conn, args.tenant, args.plan)
        try:
            conn.execute(
                "INSERT INTO subscribers (tenant_id, username, kind, password_type, password, plan_id,"
                " status, expires_at, mac_binding, framed_ip, framed_ipv6_prefix, delegated_ipv6_prefix)"
                " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                (args.tenant, username, args.kind, args.password_type, password, plan_id, args.status,
                 expires, mac, ip, prefix6, delegated6))
        except psycopg.errors.UniqueViolation:
            raise InputError(f"username: {username!r} already exists in tenant {args.tenant}") from None
    print(f"subscriber {username} in tenant {args.tenant}")


def cmd_sub_set(a: Admin, args: argparse.Namespace) -> None:
    changes: dict[str, Any] = {}
    if args.status is not None:
        changes["status"] = v_choice(args.status, "status", STATUS)
    if args.password is not None:
        changes["password_type"] = args.password_type
        changes["password"] = v_password(args.password, args.password_type, hash_cleartext=True)
    if args.expires_at is not None:
        changes["expires_at"] = v_time(args.expires_at, "expires_at")  # the format; the zone below
    if args.mac_binding is not None:
        changes["mac_binding"] = v_mac(args.mac_binding) if args.mac_binding != "none" else None
    if args.kind is not None:
        changes["kind"] = v_choice(args.kind, "kind", KINDS)
    for f in ("framed_ipv6_prefix", "delegated_ipv6_prefix"):
        value = getattr(args, f)
        if value is not None:
            changes[f] = None if value == "none" else v_ipv6_prefix(value, f)
    if not changes and args.plan is None:
        raise InputError("nothing to change: give --status, --password, --plan, --expires-at, "
                         "--mac-binding, --kind, --framed-ipv6-prefix or --delegated-ipv6-prefix")
    with a.connect(args.tenant) as conn:
        if args.expires_at is not None:
            changes["expires_at"] = v_time(args.expires_at, "expires_at",
                                           tenant_zone(conn, args.tenant))
        if args.plan is not None:
            changes["plan_id"] = a.plan_id(conn, args.tenant, args.plan)
        sets = psycopg.sql.SQL(", ").join(
            psycopg.sql.SQL("{} = {}").format(psycopg.sql.Identifier(k), psycopg.sql.Placeholder())
            for k in changes)
        cur = conn.execute(psycopg.sql.SQL("UPDATE subscribers SET {}, updated_at = now() "
                                           "WHERE tenant_id = %s AND username = %s "
                                           "RETURNING status, expires_at").format(sets),
                           (*changes.values(), args.tenant, args.username))
        after = cur.fetchone()
        if cur.rowcount != 1 or after is None:
            raise InputError(f"username: {args.username!r} does not exist in tenant {args.tenant}")
    print(f"subscriber {args.username} updated: {', '.join(sorted(changes))}")
    if after[0] == "active" and after[1] is not None and after[1] <= dt.datetime.now(dt.UTC):
        # Active, yet every login is rejected as expired: say so where it is typed.
        print(f"wificore-admin: note: {args.username} expired at {after[1].isoformat()}: its logins "
              "are rejected (expired) until --expires-at is later (or empty)", file=sys.stderr)
    from . import session_admin
    cut = changes.get("status")
    if cut is None and changes.get("expires_at") is not None and changes["expires_at"] <= dt.datetime.now(dt.UTC):
        cut = "expired"  # an expiry set in the past: expired now, as --status expired
    if cut in ("suspended", "expired"):
        # Its live sessions are cut off (the CoA sidecar sends the Disconnect-Requests).
        if session_admin.queue_job(a, "disconnect", tenant=args.tenant, user=args.username, reason=cut):
            print(f"disconnect of {args.username}'s live sessions queued")
    elif "plan_id" in changes:
        # The new plan's rate for its live sessions (CoA-Request).
        if session_admin.queue_job(a, "coa", tenant=args.tenant, user=args.username, reason="plan_change"):
            print(f"CoA of {args.username}'s live sessions queued")


def cmd_sub_delete(a: Admin, args: argparse.Namespace) -> None:
    with a.connect(args.tenant) as conn:
        cur = conn.execute("DELETE FROM subscribers WHERE tenant_id = %s AND username = %s",
                           (args.tenant, args.username))
        if cur.rowcount != 1:
            raise InputError(f"username: {args.username!r} does not exist in tenant {args.tenant}")
    print(f"subscriber {args.username} deleted")
    # Its live sessions end with it (before, a deleted subscriber stayed online).
    from . import session_admin
    if session_admin.queue_job(a, "disconnect", tenant=args.tenant, user=args.username, reason="deleted"):
        print(f"disconnect of {args.username}'s live sessions queued")


def cmd_sub_list(a: Admin, args: argparse.Namespace) -> None:
    with a.connect(args.tenant, writing=False) as conn:
        rows = conn.execute(
            "SELECT s.username, s.kind, s.password_type, p.name, s.status, s.expires_at,"
            " s.mac_binding, host(s.framed_ip) FROM subscribers s JOIN plans p USING (tenant_id, plan_id)"
            " WHERE s.tenant_id = %s ORDER BY s.username LIMIT %s", (args.tenant, args.limit)).fetchall()
        tz = tenant_zone(conn, args.tenant)
    rows = [(*r[:5], show_instant(r[5], tz), *r[6:]) for r in rows]  # expiry in the tenant's zone
    _print_rows(rows, ("username", "kind", "password_type", "plan", "status", "expires_at",
                       "mac_binding", "framed_ip"))


def cmd_sub_show(a: Admin, args: argparse.Namespace) -> None:
    with a.connect(args.tenant, writing=False) as conn:
        row = conn.execute(
            "SELECT s.subscriber_id, s.username, s.kind, s.password_type, p.name, s.status,"
            " s.expires_at, s.mac_binding::text, host(s.framed_ip), s.updated_at,"
            " s.framed_ipv6_prefix::text, s.delegated_ipv6_prefix::text,"
            " p.quota_period, p.data_quota_bytes, p.time_quota_s"
            " FROM subscribers s JOIN plans p USING (tenant_id, plan_id)"
            " WHERE s.tenant_id = %s AND s.username = %s", (args.tenant, args.username)).fetchone()
        tz = tenant_zone(conn, args.tenant)
        now = time.time()
        periods = {per: quota.period_at(per, now, tz) for per in quota.PERIODS}
        pg_usage = {"none": conn.execute(quota.PG_LIFETIME_SQL, (args.tenant, args.username)).fetchone()}
        for per, span in periods.items():
            if span is not None:
                pg_usage[per] = conn.execute(quota.PG_PERIOD_SQL, (args.tenant, args.username,
                                                                 span.first_date, span.last_date)).fetchone()
    quota_row = row[12:] if row else None
    row = row[:12] if row else None
    stored = None
    if row:
        stored = dict(zip(("subscriber_id", "username", "kind", "password_type", "plan", "status",
                           "expires_at", "mac_binding", "framed_ip", "updated_at", "framed_ipv6_prefix",
                           "delegated_ipv6_prefix"), row, strict=True))
        stored["password"] = "(hidden)"
        stored["expires_at"] = show_instant(stored["expires_at"], tz)  # the tenant's zone
        stored["time_zone"] = tz.key
    cached: Any = None
    live: Any = None
    if a.cache_redis_url and a.state_redis_url:
        import redis
        r = roles.client(a.cache_redis_url, socket_timeout=2)
        state = (r if a.state_redis_url == a.cache_redis_url
                 else roles.client(a.state_redis_url, socket_timeout=2))
        try:
            raw = cast(bytes | None, r.get(a.keys.profile(args.tenant, args.username)))
            ttl = r.ttl(a.keys.profile(args.tenant, args.username))
            if raw == UNKNOWN:
                cached = {"unknown_user": True, "ttl_s": ttl}
            elif raw is not None:
                p = Profile.unpack(raw)
                cached = {"subscriber_id": p.subscriber_id, "status": p.status, "kind": p.kind,
                          "password_type": p.password_type, "plan_id": p.plan_id,
                          "expires_at": show_instant(p.expires_at, tz), "mac_binding": p.mac_binding,
                          "framed_ip": p.framed_ip, "framed_ipv6_prefix": p.framed_ipv6_prefix,
                          "delegated_ipv6_prefix": p.delegated_ipv6_prefix, "ttl_s": ttl}
            snap = livestate.READER.read(state, a.keys, [(args.tenant, args.username)], now=now)[0]
            live = {
                "sessions": snap.sessions,
                "usage": snap.usage,
                "usage_ttl_s": state.ttl(a.keys.subscriber(args.tenant, args.username)),
            }
        except redis.RedisError as exc:
            cached = {"error": f"redis: {exc}"}
        finally:
            r.close()
            state.close()
    if stored is None and cached is None:
        raise InputError(f"username: {args.username!r} does not exist in tenant {args.tenant}")
    usage = _quota_usage(quota_row, periods, pg_usage, live, tz)
    print(json.dumps({"stored": stored, "cached": cached, "live": live, "quota": usage},
                     default=str, indent=2))


def _quota_usage(quota_row: Sequence[Any] | None, periods: dict[str, quota.Period | None],
                 pg_usage: dict[str, Any], live: Any, tz: Any) -> dict[str, Any]:
    """subscriber show's quota part: per period (lifetime, daily, weekly, monthly) the usage
    live.lua counted in Redis and the usage PostgreSQL's accounting rows give, its start
    and next reset in the tenant's zone; for the plan's period, the quotas and what remains."""
    plan_period, data_q, time_q = quota_row if quota_row else (None, None, None)
    hashed = live["usage"] if live else None
    out: dict[str, Any] = {"plan_period": plan_period, "time_zone": tz.key,
                           "data_quota_bytes": data_q, "time_quota_s": time_q, "periods": {}}
    for p, span in periods.items():
        entry: dict[str, Any] = {}
        if span is not None:
            entry["starts"] = show_instant(span.starts_at, tz)
            entry["next_reset"] = show_instant(span.ends_at, tz)
        else:
            entry["next_reset"] = None  # the lifetime: the Redis totals expire 90 days after the last use
        sources: dict[str, tuple[int, int] | None] = {
            "redis": quota.redis_usage(hashed, p, span.start if span else None) if hashed is not None else None,
            "postgresql": (int(pg_usage[p][0]), int(pg_usage[p][1])) if pg_usage.get(p) else None}
        for name, used in sources.items():
            if used is None:
                entry[name] = None
                continue
            entry[name] = {"octets": used[0], "time_s": used[1]}
            if p == plan_period:
                entry[name]["data_remaining_bytes"] = None if data_q is None else max(0, data_q - used[0])
                entry[name]["time_remaining_s"] = None if time_q is None else max(0, time_q - used[1])
        out["periods"]["lifetime" if p == "none" else p] = entry
    return out


def read_csv_rows(path: str) -> Iterable[tuple[int, dict[str, str]]]:
    f = sys.stdin if path == "-" else open(path, newline="", encoding="utf-8")
    with f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "username" not in reader.fieldnames or \
                "password" not in reader.fieldnames:
            raise InputError("header: the first line must name the columns, at least username,password")
        unknown = set(reader.fieldnames) - set(CSV_FIELDS)
        if unknown:
            raise InputError(f"header: unknown column {sorted(unknown)[0]!r}")
        try:
            for row in reader:
                yield reader.line_num, row
        except UnicodeDecodeError as exc:
            raise InputError(f"row {reader.line_num + 1}: not UTF-8 ({exc.reason})") from None


def cmd_sub_import(a: Admin, args: argparse.Namespace) -> None:
    """Validate every row first, then one COPY in one transaction."""
    with a.connect(args.tenant) as conn:
        a.tenant_exists(conn, args.tenant)
        tz = tenant_zone(conn, args.tenant)
        plans: dict[str, int] = dict(conn.execute("SELECT name, plan_id FROM plans WHERE tenant_id = %s",
                                  (args.tenant,)).fetchall())
        rows = []
        seen: dict[str, int] = {}
        for line, raw in read_csv_rows(args.file):
            try:
                username = v_username((raw.get("username") or "").strip())
                if username in seen:
                    raise InputError(f"username: {username!r} repeats row {seen[username]}")
                seen[username] = line
                pwt = (raw.get("password_type") or args.password_type).strip()
                password = v_password(raw.get("password") or "", pwt, hash_cleartext=False)
                kind = v_choice((raw.get("kind") or args.kind).strip(), "kind", KINDS)
                plan_name = (raw.get("plan") or args.plan or "").strip()
                if plan_name not in plans:
                    raise InputError(f"plan: {plan_name!r} does not exist in tenant {args.tenant}")
                status = v_choice((raw.get("status") or "active").strip(), "status", STATUS)
                expires = v_time((raw.get("expires_at") or "").strip(), "expires_at", tz)
                mac = v_mac((raw.get("mac_binding") or "").strip())
                ip = v_ip((raw.get("framed_ip") or "").strip(), "framed_ip", v4_only=True)
                prefix6 = v_ipv6_prefix((raw.get("framed_ipv6_prefix") or "").strip(), "framed_ipv6_prefix")
                delegated6 = v_ipv6_prefix((raw.get("delegated_ipv6_prefix") or "").strip(),
                                           "delegated_ipv6_prefix")
            except InputError as exc:
                raise InputError(f"row {line}: {exc}") from None
            rows.append((args.tenant, username, kind, pwt, password, plans[plan_name], status,
                         expires, mac, ip, prefix6, delegated6))
        if not rows:
            raise InputError("file: no rows")
        existing = conn.execute("SELECT username FROM subscribers WHERE tenant_id = %s AND "
                                "username = ANY(%s) LIMIT 1", (args.tenant, list(seen))).fetchone()
        if existing:
            raise InputError(f"row {seen[existing[0]]}: username: {existing[0]!r} already exists "
                             f"in tenant {args.tenant}")
        started = time.monotonic()
        with conn.cursor().copy(
                "COPY subscribers (tenant_id, username, kind, password_type, password, plan_id,"
                " status, expires_at, mac_binding, framed_ip, framed_ipv6_prefix, delegated_ipv6_prefix)"
                " FROM STDIN") as copy:
            for r in rows:
                copy.write_row(r)
    print(f"imported {len(rows)} subscribers into tenant {args.tenant} "
          f"in {time.monotonic() - started:.1f} s")


# ----------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(prog="wificore-admin", description=__doc__.splitlines()[0])
    p.add_argument("--shard-map", default=env.get("WIFICORE_SHARD_MAP", Settings.shard_map),
                   help="shard map file (env WIFICORE_SHARD_MAP)")
    p.add_argument("--redis-url", default=env.get("WIFICORE_REDIS_URL", Settings.redis_url),
                   help="Redis, for `subscriber show` (env WIFICORE_REDIS_URL)")
    p.add_argument("--cache-redis-url", default=env.get("WIFICORE_CACHE_REDIS_URL") or None,
                   help="the cache Redis if not --redis-url (env WIFICORE_CACHE_REDIS_URL)")
    p.add_argument("--state-redis-url", default=env.get("WIFICORE_STATE_REDIS_URL") or None,
                   help="the state Redis if not --redis-url (env WIFICORE_STATE_REDIS_URL)")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="apply schema migrations to every shard").set_defaults(fn=cmd_migrate)

    t = sub.add_parser("tenant").add_subparsers(dest="action", required=True)
    x = t.add_parser("add")
    x.add_argument("--id", type=int, required=True)
    x.add_argument("--name", required=True)
    x.add_argument("--time-zone", help="IANA name, e.g. Europe/Berlin (new tenants: UTC); dates given to "
                   "the CLI for this tenant are read in it. On an existing id: changed only when given")
    x.set_defaults(fn=cmd_tenant_add)
    t.add_parser("list").set_defaults(fn=cmd_tenant_list)
    x = t.add_parser("move", help="move a tenant to another shard, online (copy, catch up, flip "
                                  "the map, clean up); run it again to resume")
    x.add_argument("--tenant", type=int, required=True)
    x.add_argument("--to", help="the target shard's name in the map")
    x.add_argument("--abort", action="store_true",
                   help="undo a move that has not flipped the map yet (the tenant stays)")
    x.add_argument("--settle-s", type=float, default=None,
                   help="wait after the flip before the source is cleaned up (default: "
                        "longer than radiusd and batch_writer take to follow the map)")
    x.set_defaults(fn=cmd_tenant_move)

    n = sub.add_parser("nas").add_subparsers(dest="action", required=True)
    x = n.add_parser("add")
    x.add_argument("--tenant", type=int, required=True)
    x.add_argument("--name", required=True)
    x.add_argument("--ip", required=True, help="the address the NAS sends from")
    x.add_argument("--secret", required=True)
    x.add_argument("--vendor", default="generic", help=", ".join(VENDORS))
    x.add_argument("--replace", action="store_true",
                   help="update the NAS of this tenant with that ip or name in place (same nas_id)")
    x.add_argument("--require-message-authenticator", default="yes", metavar="yes|no",
                   help="BlastRADIUS: drop its Access-Requests that carry no Message-Authenticator "
                        "(default yes; no for firmware that sends none, e.g. RouterOS before 7.15)")
    x.add_argument("--kind-check", default="strict", metavar="strict|off",
                   help="strict (default): reject a login whose request says it is for the other "
                        "subscriber kind (wrong_service; one that does not say is accepted); off: never")
    x.add_argument("--coa-port", type=int, default=3799,
                   help="the NAS's CoA / Disconnect port (RFC 5176; default 3799)")
    x.set_defaults(fn=cmd_nas_add)
    nas_admin.add_set_parser(n)
    x = n.add_parser("list", help="the tenant's NAS; without --tenant, every tenant's")
    x.add_argument("--tenant", type=int)
    x.set_defaults(fn=cmd_nas_list)

    pl = sub.add_parser("plan").add_subparsers(dest="action", required=True)
    x = pl.add_parser("add", help="add a plan (an existing one: `plan set`)")
    x.add_argument("--tenant", type=int, required=True)
    x.add_argument("--name", required=True)
    for f in ("rate_up_kbps", "rate_down_kbps", "session_timeout_s", "idle_timeout_s",
              "data_quota_bytes", "time_quota_s", "simultaneous_use"):
        x.add_argument("--" + f.replace("_", "-"), dest=f, type=int)
    x.add_argument("--interim-interval-s", dest="interim_interval_s", type=int, default=300)
    x.add_argument("--framed-pool")
    x.add_argument("--framed-ipv6-pool", help="the NAS's IPv6 pool name (Framed-IPv6-Pool)")
    x.add_argument("--quota-period", default=quota.DEFAULT_PERIOD, help=lifecycle.QUOTA_PERIOD_HELP
                   + f" (default {quota.DEFAULT_PERIOD})")
    x.set_defaults(fn=cmd_plan_add)
    x = pl.add_parser("list")
    x.add_argument("--tenant", type=int, required=True)
    x.set_defaults(fn=cmd_plan_list)
    lifecycle.register(t, n, pl)

    s = sub.add_parser("subscriber").add_subparsers(dest="action", required=True)
    x = s.add_parser("add")
    x.add_argument("--tenant", type=int, required=True)
    x.add_argument("--username", required=True)
    x.add_argument("--password", help="cleartext; hashed for nthash and bcrypt (required, "
                   "not empty, unless --mac-auth)")
    x.add_argument("--password-type", default="cleartext", help=", ".join(PW_TYPES))
    x.add_argument("--kind", default="pppoe", help=", ".join(KINDS))
    x.add_argument("--plan", required=True, help="plan name")
    x.add_argument("--status", default="active", help=", ".join(STATUS))
    x.add_argument("--expires-at", help=EXPIRES_HELP)
    x.add_argument("--mac-binding")
    x.add_argument("--framed-ip")
    x.add_argument("--framed-ipv6-prefix", help="Framed-IPv6-Prefix, e.g. 2001:db8:1::/64")
    x.add_argument("--delegated-ipv6-prefix", help="Delegated-IPv6-Prefix (DHCPv6-PD), e.g. 2001:db8:100::/56")
    x.add_argument("--mac-auth", action="store_true",
                   help="MAC authentication: the username is the device's MAC, the password "
                        "empty (RouterOS's default), bound to that MAC")
    x.set_defaults(fn=cmd_sub_add)
    x = s.add_parser("set")
    x.add_argument("--tenant", type=int, required=True)
    x.add_argument("username")
    x.add_argument("--status")
    x.add_argument("--password")
    x.add_argument("--password-type", default="cleartext")
    x.add_argument("--plan")
    x.add_argument("--expires-at", help=EXPIRES_HELP)
    x.add_argument("--mac-binding", help="a MAC, or 'none'")
    x.add_argument("--kind", help=", ".join(KINDS))
    x.add_argument("--framed-ipv6-prefix", help="an IPv6 prefix, or 'none'")
    x.add_argument("--delegated-ipv6-prefix", help="an IPv6 prefix, or 'none'")
    x.set_defaults(fn=cmd_sub_set)
    x = s.add_parser("delete")
    x.add_argument("--tenant", type=int, required=True)
    x.add_argument("username")
    x.set_defaults(fn=cmd_sub_delete)
    x = s.add_parser("list")
    x.add_argument("--tenant", type=int, required=True)
    x.add_argument("--limit", type=int, default=100)
    x.set_defaults(fn=cmd_sub_list)
    x = s.add_parser("show", help="one subscriber as stored and as cached")
    x.add_argument("--tenant", type=int, required=True)
    x.add_argument("username")
    x.set_defaults(fn=cmd_sub_show)
    from . import why
    why.add_parser(s)
    x = s.add_parser("import", help="bulk import from CSV through COPY")
    x.add_argument("--tenant", type=int, required=True)
    x.add_argument("file", help="CSV with a header: " + ",".join(CSV_FIELDS) + " ('-' = stdin)")
    x.add_argument("--plan", help="plan for rows without one")
    x.add_argument("--kind", default="pppoe")
    x.add_argument("--password-type", default="cleartext")
    x.set_defaults(fn=cmd_sub_import)
    from . import deadletter, session_admin
    deadletter.register(sub)
    session_admin.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        admin = Admin(ShardMap.load(args.shard_map), args.redis_url,
                      cache_redis_url=args.cache_redis_url, state_redis_url=args.state_redis_url)
        args.fn(admin, args)
    except (InputError, ConfigError) as exc:
        print(f"wificore-admin: {exc}", file=sys.stderr)
        return 2
    except psycopg.Error as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"wificore-admin: database: {msg}", file=sys.stderr)
        return 1
    except WiFiCoreError as exc:
        print(f"wificore-admin: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
