"""CoA / Disconnect jobs (RFC 5176): what wificore-admin queues, what the CoA sidecar
(coa_sender/) takes, and how both find a subscriber's live sessions.

A job is one entry of the stream :attr:`Keys.coa_jobs` in the state Redis (fields
below, all text). The admin CLI and the sidecar's quota watcher only queue (one
``XADD``, bounded wait); the sidecar's consumer group sends the requests, so a job
queued while the sidecar is down, or delivered and not finished when it stopped, is
sent when it runs again.

``op``:

* ``disconnect``: ``tenant``, ``user``, optional ``session`` (an Acct-Session-Id:
  that session only), ``reason`` (``operator``, ``suspended``, ``data_quota``,
  ``time_quota``, ...).
* ``disconnect_tenant``: every live session of ``tenant`` (``reason``
  ``tenant_suspended``).
* ``coa``: a CoA-Request with the plan's current rate to every live session of
  ``user``, or of every subscriber of ``plan`` (a plan id), ``reason`` ``plan_change``.

Live sessions are the open rows of the tenant's shard (``sessions``, where the NAS's
Acct-Session-Id, Framed-IP-Address and NAS are) that the live state in Redis still
holds (wificore/livestate.py: a session of the subscriber's hash with that row key, live): a row the
writer has not closed yet but whose session live.lua ended (a Stop, an
Accounting-Off, missed interims) is not live.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from . import livestate
from .keys import Keys

#: The stream's bound (``XADD MAXLEN ~``): a backlog past it loses its oldest jobs.
JOBS_MAXLEN = 100_000
OPS = ("disconnect", "disconnect_tenant", "coa")
#: Most sessions one listing or one job resolves.
MAX_SESSIONS = 10_000

_SESSIONS_SQL = """
SELECT s.session_key, s.username, s.acct_session_id, host(s.framed_ip), s.nas_id, host(n.ip),
       n.secret, n.coa_port, n.vendor, s.started_at, s.calling_station_id
  FROM sessions s JOIN nas n USING (tenant_id, nas_id)
 WHERE s.tenant_id = %s AND s.stopped_at IS NULL {where}
 ORDER BY s.username, s.started_at, s.session_key
 LIMIT %s
"""
#: Most pages of MAX_SESSIONS rows one tenant- or plan-wide job reads (live_pages).
MAX_PAGES = 100


@dataclasses.dataclass(frozen=True)
class LiveSession:
    """One live session, with what a Disconnect- or CoA-Request to its NAS needs."""

    session_key: str
    username: str
    acct_session_id: str
    framed_ip: str | None
    nas_id: int
    nas_ip: str
    secret: str
    coa_port: int
    vendor: str
    started_at: Any
    calling_station_id: str | None


def queue(r: Any, keys: Keys, op: str, **fields: Any) -> str:
    """Queue one job (one XADD; ``r``'s socket timeout bounds the wait); its id."""
    if op not in OPS:
        raise ValueError(f"op: {op!r}")
    entry = {"op": op, "ts": f"{time.time():.3f}"}
    entry.update({k: str(v) for k, v in fields.items() if v is not None})
    job_id = r.xadd(keys.coa_jobs, entry, maxlen=JOBS_MAXLEN, approximate=True)
    return job_id.decode() if isinstance(job_id, bytes) else str(job_id)


def open_sessions(conn: Any, tenant_id: int, *, username: str | None = None,
                  acct_session_id: str | None = None, plan_id: int | None = None,
                  limit: int = MAX_SESSIONS, after: LiveSession | None = None) -> list[LiveSession]:
    """The tenant's open session rows (optionally of one subscriber, one Acct-Session-Id,
    or the subscribers of one plan), with their NAS; ``after``: the page that follows
    that row (keyset order: username, start, row key)."""
    where = ""
    params: list[Any] = [tenant_id]
    if after is not None:
        where += " AND (s.username, s.started_at, s.session_key) > (%s, %s, %s)"
        params += [after.username, after.started_at, after.session_key]
    if username is not None:
        where += " AND s.username = %s"
        params.append(username)
    if acct_session_id is not None:
        where += " AND s.acct_session_id = %s"
        params.append(acct_session_id)
    if plan_id is not None:
        where += " AND s.username IN (SELECT username FROM subscribers WHERE tenant_id = %s AND plan_id = %s)"
        params += [tenant_id, plan_id]
    rows = conn.execute(_SESSIONS_SQL.format(where=where), (*params, limit)).fetchall()
    return [LiveSession(*row) for row in rows]


def live_pages(read: Any, r: Any, keys: Keys, tenant_id: int, *, plan_id: int | None = None,
               page: int = MAX_SESSIONS, max_pages: int = MAX_PAGES) -> tuple[list[LiveSession], bool]:
    """The live sessions of the tenant (or of one plan's subscribers), page by page: a
    tenant's open rows include sessions whose Stop never came, which the live state no
    longer holds, so one page could hold none of the live ones. ``read(fn)`` runs
    ``fn(conn)`` on the tenant's shard (one bounded call per page). (sessions, complete):
    complete is False when max_pages pages did not reach the end."""
    live: list[LiveSession] = []
    after: LiveSession | None = None
    for _ in range(max_pages):
        rows = read(lambda c, after=after: open_sessions(c, tenant_id, plan_id=plan_id, limit=page, after=after))
        live += live_only(r, keys, tenant_id, rows)
        if len(rows) < page:
            return live, True
        after = rows[-1]
    return live, False


def live_only(r: Any, keys: Keys, tenant_id: int, sessions: list[LiveSession],
              now: float | None = None) -> list[LiveSession]:
    """The sessions the live state still holds (one read per bucket of their subscribers)."""
    if not sessions:
        return []
    users = sorted({s.username for s in sessions})
    snaps = livestate.READER.read(r, keys, [(tenant_id, u) for u in users], rows=True, now=now)
    live = {(u, row) for u, snap in zip(users, snaps, strict=True) for row in snap.rows}
    return [s for s in sessions if (s.username, s.session_key) in live]


def live_keys(r: Any, keys: Keys, tenant_id: int, username: str, now: float | None = None) -> list[str]:
    """Row keys of the subscriber's live sessions in the live state."""
    return list(livestate.READER.read(r, keys, [(tenant_id, username)], rows=True, now=now)[0].rows)
