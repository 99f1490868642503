"""``wificore-admin subscriber why``: a subscriber's last logins, for the NOC.

Newest first, from the auth log (table ``auth_log`` of the tenant's shard, written
by batch_writer), each with its time in the tenant's time zone, result, reason
code (README, "Why a subscriber was rejected"), NAS (name and address, from the
``nas`` table by the recorded nas_id), method (pap, chap, mschap, other: what the
request carried) and Calling-Station-Id.

Records radiusd has passed on but batch_writer has not stored yet are read from
the tail of the tenant's stream partition in the state Redis (the last
``--stream-scan`` entries) and shown with source ``pending``; a record that is
in both (stored, not yet trimmed from the stream) is shown once, as stored.
Records still in a radiusd host's spool (Redis unreachable from there) are not
visible to the CLI.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import sys
from typing import TYPE_CHECKING, Any, cast

from . import roles, tenant_time, wire
from .errors import DecodeError, InputError
from .keys import Keys
from .settings import Settings
from .text import printable

if TYPE_CHECKING:
    from .admin import Admin

HEADER = ("time", "result", "reason", "nas", "nas_ip", "method", "calling_station_id", "source")
#: Stream entries read from the tail of the tenant's partition for records not yet stored.
STREAM_SCAN = 10_000


def add_parser(subscriber: Any) -> None:
    x = subscriber.add_parser("why", help="the last logins of a subscriber: result, reason, NAS, method")
    x.add_argument("--tenant", type=int, required=True)
    x.add_argument("username")
    x.add_argument("--limit", type=int, default=20, help="how many logins (default 20)")
    x.add_argument("--stream-scan", type=int, default=STREAM_SCAN,
                   help="stream entries read for records not yet stored (0: none; default %(default)s)")
    x.set_defaults(fn=cmd_why)


def stored(conn: Any, tenant_id: int, username: str, limit: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT l.logged_at, l.result, l.reason, l.nas_id, n.name, host(n.ip), l.auth_method,"
        " l.calling_station_id, l.event_id FROM auth_log l"
        " LEFT JOIN nas n ON n.tenant_id = l.tenant_id AND n.nas_id = l.nas_id"
        " WHERE l.tenant_id = %s AND l.username = %s ORDER BY l.logged_at DESC, l.event_id DESC LIMIT %s",
        (tenant_id, username, limit)).fetchall()
    return [{"at": r[0], "result": r[1], "reason": r[2], "nas_id": r[3], "nas": r[4], "nas_ip": r[5],
             "method": r[6], "calling_station_id": r[7], "event_id": r[8], "source": "stored"}
            for r in rows]


def pending(a: Admin, tenant_id: int, username: str, scan: int) -> list[dict[str, Any]]:
    """Auth records of the subscriber among the last ``scan`` entries of its stream partition."""
    if scan <= 0 or not a.state_redis_url:
        return []
    import redis
    env = os.environ
    try:
        partitions = int(env.get("WIFICORE_STREAM_PARTITIONS") or Settings.stream_partitions)
    except ValueError:
        raise InputError("WIFICORE_STREAM_PARTITIONS: expected an integer") from None
    if partitions < 1:
        raise InputError("WIFICORE_STREAM_PARTITIONS: must be at least 1")
    keys = Keys(env.get("WIFICORE_KEY_PREFIX") or a.keys.p, partitions)
    r = roles.client(a.state_redis_url, socket_timeout=2)
    try:
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]],
                       r.xrevrange(keys.stream(keys.bucket(tenant_id, username)), count=scan))
    except redis.RedisError as exc:
        print(f"# records not yet stored: not read (redis: {exc})", file=sys.stderr)
        return []
    finally:
        r.close()
    out = []
    for _id, fields in entries:
        try:
            kind, rec = wire.unpack(fields.get(b"d") or b"")
        except DecodeError:
            continue
        if kind != wire.KIND_AUTH or rec.get("tenant_id") != tenant_id or rec.get("username") != username:
            continue
        try:
            at = dt.datetime.fromtimestamp(float(rec["ts"]), dt.UTC)
        except (TypeError, ValueError, KeyError, OverflowError):
            continue
        out.append({"at": at, "result": rec.get("result"), "reason": rec.get("reason"),
                    "nas_id": rec.get("nas_id"), "nas": None, "nas_ip": None, "method": rec.get("method"),
                    "calling_station_id": rec.get("calling_station_id"),
                    "event_id": str(rec.get("event_id")), "source": "pending"})
    return out


def cmd_why(a: Admin, args: argparse.Namespace) -> None:
    if args.limit <= 0:
        raise InputError("limit: must be greater than 0")
    with a.connect(args.tenant, writing=False) as conn:
        a.tenant_exists(conn, args.tenant)
        tz = tenant_time.tenant_zone(conn, args.tenant)
        rows = stored(conn, args.tenant, args.username, args.limit)
        seen = {r["event_id"] for r in rows}
        extra = [r for r in pending(a, args.tenant, args.username, args.stream_scan)
                 if r["event_id"] not in seen]
        if extra:  # the writer may have stored them since: ask once more, by event id
            done = {e for (e,) in conn.execute(
                "SELECT event_id FROM auth_log WHERE tenant_id = %s AND username = %s AND event_id = ANY(%s)",
                (args.tenant, args.username, [r["event_id"] for r in extra])).fetchall()}
            extra = [r for r in extra if r["event_id"] not in done]
            names = dict((nid, (name, ip)) for nid, name, ip in conn.execute(
                "SELECT nas_id, name, host(ip) FROM nas WHERE tenant_id = %s AND nas_id = ANY(%s)",
                (args.tenant, sorted({r["nas_id"] for r in extra if isinstance(r["nas_id"], int)}))))
            for r in extra:
                r["nas"], r["nas_ip"] = names.get(r["nas_id"], (None, None))
    rows = sorted(rows + extra, key=lambda r: r["at"], reverse=True)[:args.limit]
    print(f"# {args.username} in tenant {args.tenant}: last {len(rows)} logins, newest first; "
          f"times in {tz.key} (the tenant's time zone)")
    w = csv.writer(sys.stdout, delimiter="\t", lineterminator="\n")
    w.writerow(HEADER)
    for r in rows:
        nas = r["nas"] if r["nas"] is not None else (f"nas_id {r['nas_id']}" if r["nas_id"] is not None else "")
        values = (tenant_time.show_instant(r["at"], tz), r["result"], r["reason"], nas, r["nas_ip"], r["method"],
                  r["calling_station_id"], r["source"])
        w.writerow(["" if v is None else printable(str(v)) for v in values])
