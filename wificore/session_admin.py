"""wificore-admin's live sessions: `session list` (who is online) and `session
disconnect` (a Disconnect-Request through the CoA sidecar), and the CoA / Disconnect
jobs other commands queue (subscriber suspended, tenant suspended, plan changed).

Nothing here waits for a NAS: a job is one XADD to the state Redis (2 s socket
timeout); the sidecar sends it and records every attempt in the tenant's shard
(``coa_attempts``, shown by ``session attempts``).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from . import coa_jobs
from .errors import InputError

if TYPE_CHECKING:
    from .admin import Admin

REDIS_TIMEOUT_S = 2.0


def _state(a: Admin) -> Any:
    if not a.state_redis_url:
        raise InputError("redis: no state Redis (--redis-url / --state-redis-url)")
    import redis
    return redis.Redis.from_url(a.state_redis_url, socket_timeout=REDIS_TIMEOUT_S,
                                socket_connect_timeout=REDIS_TIMEOUT_S)


def queue_job(a: Admin, op: str, **fields: Any) -> str | None:
    """Queue a job for the CoA sidecar; None (and a line on stderr) if the state Redis
    cannot take it: the change that asked for it is committed all the same."""
    import redis
    try:
        r = _state(a)
    except InputError as exc:
        print(f"wificore-admin: coa: not queued ({exc})", file=sys.stderr)
        return None
    try:
        return coa_jobs.queue(r, a.keys, op, **fields)
    except redis.RedisError as exc:
        print(f"wificore-admin: coa: not queued (redis: {exc}); run `session disconnect` "
              "once Redis answers", file=sys.stderr)
        return None
    finally:
        r.close()


def cmd_session_list(a: Admin, args: argparse.Namespace) -> None:
    """Who is online: the tenant's open sessions that the live state still holds."""
    import redis

    from .admin import _print_rows
    with a.connect(args.tenant) as conn:
        a.tenant_exists(conn, args.tenant)
        rows = coa_jobs.open_sessions(conn, args.tenant, username=args.username, limit=args.limit)
    r = _state(a)
    try:
        live = coa_jobs.live_only(r, a.keys, args.tenant, rows)
    except redis.RedisError as exc:
        raise InputError(f"redis: the live state cannot be read ({exc})") from None
    finally:
        r.close()
    _print_rows([(s.username, s.acct_session_id, s.framed_ip, s.nas_id, s.nas_ip, s.started_at,
                  s.calling_station_id) for s in live],
                ("username", "acct_session_id", "framed_ip", "nas_id", "nas_ip", "started_at",
                 "calling_station_id"))


def cmd_session_disconnect(a: Admin, args: argparse.Namespace) -> None:
    """Queue a Disconnect-Request of the subscriber's live sessions (or of one)."""
    with a.connect(args.tenant) as conn:
        a.tenant_exists(conn, args.tenant)
        if not conn.execute("SELECT 1 FROM subscribers WHERE tenant_id = %s AND username = %s",
                            (args.tenant, args.username)).fetchone():
            raise InputError(f"username: {args.username!r} does not exist in tenant {args.tenant}")
        rows = coa_jobs.open_sessions(conn, args.tenant, username=args.username, acct_session_id=args.session)
    import redis
    r = _state(a)
    try:
        seen = len(coa_jobs.live_only(r, a.keys, args.tenant, rows))
        job = coa_jobs.queue(r, a.keys, "disconnect", tenant=args.tenant, user=args.username,
                             session=args.session, reason="operator")
    except redis.RedisError as exc:
        raise InputError(f"redis: the Disconnect could not be queued ({exc})") from None
    finally:
        r.close()
    print(f"disconnect of {args.username} queued (job {job}; {seen} live session(s) seen now); the CoA "
          f"sidecar sends it, `session attempts --tenant {args.tenant} {args.username}` shows the NAS's answers")


def cmd_session_attempts(a: Admin, args: argparse.Namespace) -> None:
    """The subscriber's last CoA / Disconnect attempts and their outcome."""
    from .admin import _print_rows
    with a.connect(args.tenant) as conn:
        rows = conn.execute(
            "SELECT attempted_at, kind, reason, acct_session_id, nas_id, attempt, outcome, error_cause, detail "
            "FROM coa_attempts WHERE tenant_id = %s AND username = %s "
            "ORDER BY attempted_at DESC LIMIT %s", (args.tenant, args.username, args.limit)).fetchall()
    _print_rows(rows, ("attempted_at", "kind", "reason", "acct_session_id", "nas_id", "attempt", "outcome",
                       "error_cause", "detail"))


def register(sub: argparse._SubParsersAction) -> None:
    """`wificore-admin session …` (wired into admin.py's parser)."""
    s = sub.add_parser("session", help="live sessions: list, disconnect (RFC 5176), attempts")
    a = s.add_subparsers(dest="action", required=True)
    x = a.add_parser("list", help="who is online (from the live state)")
    x.add_argument("--tenant", type=int, required=True)
    x.add_argument("username", nargs="?")
    x.add_argument("--limit", type=int, default=1000)
    x.set_defaults(fn=cmd_session_list)
    x = a.add_parser("disconnect", help="queue a Disconnect-Request of the subscriber's live sessions")
    x.add_argument("--tenant", type=int, required=True)
    x.add_argument("username")
    x.add_argument("--session", help="this Acct-Session-Id only")
    x.set_defaults(fn=cmd_session_disconnect)
    x = a.add_parser("attempts", help="the subscriber's CoA / Disconnect attempts and outcomes")
    x.add_argument("--tenant", type=int, required=True)
    x.add_argument("username")
    x.add_argument("--limit", type=int, default=20)
    x.set_defaults(fn=cmd_session_attempts)
