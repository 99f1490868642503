"""The PostgreSQL side: one :class:`ShardWriter` per shard.

A batch for a shard is one transaction: check the tenants, ``COPY`` the
collapsed session rows and the auth-log rows into temporary staging tables
(``ON COMMIT DROP``), merge them into ``sessions`` and ``auth_log``, commit.
The caller acknowledges the entries only after the commit, so a crash in between
replays the batch; the merge rules make a replay change nothing:

* ``sessions``: times and counters only move forward (GREATEST; started_at LEAST),
  a Stop is final, an Interim after a Stop does not reopen the session, a row
  that does not exist yet is created whatever the record (a lost Start);
* ``auth_log``: ``ON CONFLICT DO NOTHING`` on a key that holds the event id.

No server-side prepared statements and only transaction-local settings
(``set_config(..., true)``), so PgBouncer in transaction pooling mode is fine.

Errors: a data or integrity error is about a record, so the batch is split in
halves until the one record is found and rejected (dead letter) -- unless more
than MAX_DB_REJECTS of one batch are refused, which says "schema", not
"poison". Every other error (connection lost, timeout, deadlock, permissions,
a missing table) is about the shard, so nothing is rejected: the entries stay
pending and the shard is retried after a backoff.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg import sql

from wificore.backoff import Backoff
from wificore.shardmap import Shard

from .config import WriterConfig
from .records import DAY_COLUMNS, NAS_STATUSES, SESSION_COLUMNS, Acct, Auth, NasEvent, Record, collapse, usage_days
from .stats import DEAD_ATTEMPTS, DEAD_REJECTED_BY_DB, DEAD_UNKNOWN_TENANT

APPLICATION_NAME = "wificore-batch-writer"
DEADLOCK_RETRIES = 3
MAX_DB_REJECTS = 10  # per batch; past it the shard, not the records, is at fault
MAX_TRACKED_FAILURES = 10_000  # bound of the per-record failure counts kept in memory
# Conflicts with another writer's transaction: running ours again is all it takes.
RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure,
             psycopg.errors.TransactionRollback)

STAGE_SESSIONS = sql.Identifier("wc_stage_sessions")
STAGE_AUTH = sql.Identifier("wc_stage_auth")
STAGE_DAYS = sql.Identifier("wc_stage_days")
AUTH_COLUMNS = (
    ("tenant_id", "integer"), ("logged", "float8"), ("event_id", "text"), ("username", "text"),
    ("nas_id", "bigint"), ("calling_station_id", "text"), ("result", "text"), ("reason", "text"),
    ("auth_method", "text"),
)


def _create_stage(name: sql.Identifier, columns: Sequence[tuple[str, str]]) -> sql.Composed:
    # Column types come from the fixed tuples above, never from input.
    cols = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in columns)
    return sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(name, cols)


def _copy(name: sql.Identifier, columns: Sequence[tuple[str, str]]) -> sql.Composed:
    cols = sql.SQL(", ").join(sql.Identifier(c) for c, _ in columns)
    return sql.SQL("COPY {} ({}) FROM STDIN").format(name, cols)


SET_LOCAL = "SELECT set_config('statement_timeout', %s, true), set_config('TimeZone', 'UTC', true)"

#: The shared form of the fence lock of each tenant written (wificore/migrations/0014):
#: a tenant move's fence waits for this transaction, and the statement after it sees
#: a fence committed while it waited. One lock per bucket of tenants (tenant % 32), not
#: per tenant: a batch of thousands of tenants must not fill the shared lock table.
FENCE_KEY = 871017
FENCE_BUCKETS = 32
FENCE_LOCK = ("SELECT count(pg_advisory_xact_lock_shared(871017, b)) FROM "
              "(SELECT DISTINCT t %% 32 AS b FROM unnest(%s::integer[]) AS t ORDER BY 1) x")
KNOWN_TENANTS = "SELECT tenant_id, moving IS NOT NULL FROM tenants WHERE tenant_id = ANY(%s::integer[])"
#: Tenants moved away from this shard (the tombstone of a move): a writer on the old map.
MOVED_AWAY = "SELECT tenant_id FROM tenant_moves WHERE tenant_id = ANY(%s::integer[]) AND role = 'source'"
#: A fenced tenant's records are tried again after this (the move is copying it),
#: doubled while the fence stays (a move left unfinished) up to FENCE_RETRY_MAX_S: a
#: sweep re-reads every pending entry of ours.
FENCE_RETRY_S = 0.25
FENCE_RETRY_MAX_S = 5.0

# The merge. EXCLUDED is the collapsed batch row; s the stored row.
# close_reason 'stop' in EXCLUDED means "the batch holds a Stop".
MERGE_SESSIONS = sql.SQL("""
INSERT INTO sessions AS s (
    tenant_id, session_key, nas_id, username, acct_session_id, calling_station_id, framed_ip,
    started_at, updated_at, stale_at, stopped_at, session_time_s, input_octets, output_octets,
    input_packets, output_packets, terminate_cause, close_reason,
    received_at, nas_port_id, called_station_id, nas_identifier, counter_flags,
    framed_ipv6_prefix, delegated_ipv6_prefix, framed_interface_id)
SELECT tenant_id, session_key, nas_id, username, acct_session_id, calling_station_id, framed_ip,
       to_timestamp(started), to_timestamp(updated), to_timestamp(stale), to_timestamp(stopped),
       session_time_s, input_octets, output_octets, input_packets, output_packets, terminate_cause,
       CASE WHEN stopped IS NOT NULL THEN 'stop' END,
       to_timestamp(received), nas_port_id, called_station_id, nas_identifier, counter_flags,
       framed_ipv6_prefix, delegated_ipv6_prefix, framed_interface_id
FROM {stage}
ORDER BY tenant_id, session_key
ON CONFLICT (tenant_id, session_key) DO UPDATE SET
    username           = CASE WHEN s.username = '' THEN EXCLUDED.username ELSE s.username END,
    acct_session_id    = CASE WHEN s.acct_session_id = '' THEN EXCLUDED.acct_session_id
                              ELSE s.acct_session_id END,
    calling_station_id = COALESCE(s.calling_station_id, EXCLUDED.calling_station_id),
    -- 0.0.0.0 (a Huawei Start) is no address: the first real one is kept.
    framed_ip          = COALESCE(NULLIF(s.framed_ip, '0.0.0.0'::inet), EXCLUDED.framed_ip),
    nas_port_id        = COALESCE(s.nas_port_id, EXCLUDED.nas_port_id),
    called_station_id  = COALESCE(s.called_station_id, EXCLUDED.called_station_id),
    nas_identifier     = COALESCE(s.nas_identifier, EXCLUDED.nas_identifier),
    framed_ipv6_prefix = COALESCE(s.framed_ipv6_prefix, EXCLUDED.framed_ipv6_prefix),
    delegated_ipv6_prefix = COALESCE(s.delegated_ipv6_prefix, EXCLUDED.delegated_ipv6_prefix),
    framed_interface_id = COALESCE(s.framed_interface_id, EXCLUDED.framed_interface_id),
    received_at        = GREATEST(s.received_at, EXCLUDED.received_at),
    counter_flags      = s.counter_flags | EXCLUDED.counter_flags,
    started_at         = LEAST(s.started_at, EXCLUDED.started_at),
    updated_at         = GREATEST(s.updated_at, EXCLUDED.updated_at),
    stale_at           = GREATEST(s.stale_at, EXCLUDED.stale_at),
    session_time_s     = GREATEST(s.session_time_s, EXCLUDED.session_time_s),
    input_octets       = GREATEST(s.input_octets, EXCLUDED.input_octets),
    output_octets      = GREATEST(s.output_octets, EXCLUDED.output_octets),
    input_packets      = GREATEST(s.input_packets, EXCLUDED.input_packets),
    output_packets     = GREATEST(s.output_packets, EXCLUDED.output_packets),
    -- A Stop is final and beats the writer's own guesses ('stale', 'nas-restart');
    -- between two Stops the later one wins. A session closed as stale that shows
    -- life again (a later event: its interims were only late) is reopened.
    terminate_cause    = CASE
        WHEN EXCLUDED.close_reason = 'stop'
             AND (s.close_reason IS DISTINCT FROM 'stop' OR EXCLUDED.stopped_at >= s.stopped_at)
        THEN COALESCE(EXCLUDED.terminate_cause, s.terminate_cause)
        ELSE s.terminate_cause END,
    stopped_at         = CASE
        WHEN EXCLUDED.close_reason = 'stop' AND s.close_reason = 'stop'
        THEN GREATEST(s.stopped_at, EXCLUDED.stopped_at)
        WHEN EXCLUDED.close_reason = 'stop' THEN EXCLUDED.stopped_at
        WHEN s.close_reason = 'stale' AND EXCLUDED.updated_at > s.stopped_at THEN NULL
        ELSE s.stopped_at END,
    close_reason       = CASE
        WHEN EXCLUDED.close_reason = 'stop' THEN 'stop'
        WHEN s.close_reason = 'stale' AND EXCLUDED.updated_at > s.stopped_at THEN NULL
        ELSE s.close_reason END
""")

# A session's totals per local day (quota periods, migration 0012): only forward.
MERGE_DAYS = sql.SQL("""
INSERT INTO session_days AS d (tenant_id, session_key, day, username, octets, time_s)
SELECT tenant_id, session_key, date '1970-01-01' + day, username, octets, time_s
FROM {stage}
ORDER BY tenant_id, session_key, day
ON CONFLICT (tenant_id, session_key, day) DO UPDATE SET
    octets = GREATEST(d.octets, EXCLUDED.octets),
    time_s = GREATEST(d.time_s, EXCLUDED.time_s)
""")

INSERT_AUTH = sql.SQL("""
INSERT INTO auth_log (tenant_id, logged_at, event_id, username, nas_id, calling_station_id,
                      result, reason, auth_method)
SELECT tenant_id, to_timestamp(logged), event_id, username, nas_id, calling_station_id,
       result, reason, auth_method
FROM {stage}
ON CONFLICT DO NOTHING
""")

ENSURE_AUTH_DAYS = "SELECT wificore_auth_log_ensure(%s, %s)"

# Closing in rounds of LIMIT rows, each its own short transaction: never one
# UPDATE that locks a NAS's (or a shard's) whole set of open sessions.
CLOSE_NAS = """
UPDATE sessions s SET stopped_at = to_timestamp(%(ts)s), close_reason = 'nas-restart',
       terminate_cause = COALESCE(s.terminate_cause, 'NAS-Reboot')
FROM (SELECT tenant_id, session_key FROM sessions
      WHERE tenant_id = %(tenant)s AND nas_id = %(nas)s AND stopped_at IS NULL
        AND started_at < to_timestamp(%(ts)s)
      LIMIT %(limit)s FOR UPDATE) v
WHERE s.tenant_id = v.tenant_id AND s.session_key = v.session_key
"""

# SKIP LOCKED: a row locked right now is being merged, i.e. it is not silent.
CLOSE_STALE = """
UPDATE sessions s SET stopped_at = s.updated_at, close_reason = 'stale'
FROM (SELECT tenant_id, session_key FROM sessions
      WHERE stopped_at IS NULL AND stale_at < now() - make_interval(secs => %(grace)s)
        AND tenant_id NOT IN (SELECT tenant_id FROM tenants WHERE moving IS NOT NULL)
      LIMIT %(limit)s FOR UPDATE SKIP LOCKED) v
WHERE s.tenant_id = v.tenant_id AND s.session_key = v.session_key
"""


class ShardUnavailable(psycopg.OperationalError):
    """The shard could not take the batch (connection, timeout, or any non-data error)."""


@dataclasses.dataclass(slots=True)
class Item:
    """One stream entry with its decoded record; ``ref`` is the caller's handle."""

    ref: Any
    record: Record


@dataclasses.dataclass
class Outcome:
    """What became of one shard's part of a batch."""

    done: list[Item] = dataclasses.field(default_factory=list)       # committed: acknowledge
    rejected: list[tuple[Item, str, str]] = dataclasses.field(default_factory=list)  # dead letter
    deferred: list[Item] = dataclasses.field(default_factory=list)   # stays pending
    error: str | None = None
    auth_error: str | None = None  # the auth-log part failed (accounting went on); it stays pending
    attempted: bool = False  # False: the shard's backoff was not over, nothing was tried
    fenced: int = 0  # of deferred: a tenant being moved (or moved away): not the shard's fault
    merged_rows: int = 0
    auth_rows: int = 0
    closed: int = 0
    seconds: float = 0.0


def _utc_day(ts: float) -> dt.date:
    return dt.datetime.fromtimestamp(ts, dt.UTC).date()


class ShardWriter:
    """Writes batches to one shard over one connection; a backoff guards retries."""

    def __init__(self, shard: Shard, cfg: WriterConfig) -> None:
        self.shard = shard
        self.cfg = cfg
        self.backoff = Backoff(first_s=0.2, max_s=float(cfg.backoff_max_s))
        self.auth_backoff = Backoff(first_s=0.2, max_s=float(cfg.backoff_max_s))
        self._conn: psycopg.Connection | None = None
        self._auth_days: set[dt.date] = set()
        self.last_error: str | None = None
        # Client-side deadline: when the current round trip started (None: no I/O).
        # psycopg has no query timeout of its own, and a server that is stopped
        # (SIGSTOP) or cut off holds a query until TCP gives up; abort() cuts it.
        self._io_since: float | None = None
        self._io_lock = threading.Lock()
        self.aborted = 0
        # Failures of one record written alone that are neither a data error nor
        # the shard's (see _write_split); keyed by the entry's source.
        self._record_failures: dict[Any, int] = {}
        #: A sweep for this shard waits while this is not ready: a tenant of it is fenced.
        self.fence_backoff = Backoff(first_s=FENCE_RETRY_S, max_s=FENCE_RETRY_MAX_S)
        self.fenced_tenants: set[int] = set()

    @property
    def name(self) -> str:
        """The shard's name in the map (a metric label)."""
        return self.shard.name

    @property
    def down(self) -> bool:
        """True from a failure until the next success."""
        return self.backoff.failures > 0

    # ---------------------------------------------------------- connection
    def _connection(self) -> psycopg.Connection:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            self._drop()
            try:
                conn = psycopg.connect(self.shard.writer_dsn, autocommit=True, prepare_threshold=None,
                                       connect_timeout=self.cfg.connect_timeout_s,
                                       application_name=APPLICATION_NAME)
            except psycopg.Error as exc:
                raise ShardUnavailable(f"shard {self.name!r}: cannot connect: {exc}") from exc
            self._conn = conn
        return conn

    def _drop(self) -> None:
        with self._io_lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # closing a broken connection must not hide the first error
                pass

    def close(self) -> None:
        """Close the connection (the next write opens a new one)."""
        self._drop()

    @contextlib.contextmanager
    def _io(self) -> Iterator[None]:
        """Mark a round trip with the shard, for :meth:`abort_if_overdue`."""
        self._io_since = time.monotonic()
        try:
            yield
        finally:
            self._io_since = None

    def io_seconds(self) -> float:
        """How long the current round trip with the shard has been going on (0: none)."""
        since = self._io_since
        return 0.0 if since is None else time.monotonic() - since

    def abort(self) -> bool:
        """Cut the connection under a thread that waits on it (called from another thread).

        ``shutdown()`` of the socket makes the blocked libpq call fail at once with a
        connection error; that thread then drops the connection and backs off.
        True if there was a connection to cut.
        """
        with self._io_lock:
            conn = self._conn
            if conn is None or conn.closed:
                return False
            try:
                fd = conn.pgconn.socket
            except Exception:  # already gone
                return False
            try:
                sock = socket.socket(fileno=os.dup(fd))
            except OSError:
                return False
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            finally:
                sock.close()
            self.aborted += 1
            return True

    def abort_if_overdue(self, deadline_s: float) -> bool:
        """:meth:`abort` when the current round trip is older than ``deadline_s``."""
        if self.io_seconds() > deadline_s:
            return self.abort()
        return False

    def _begin(self, conn: psycopg.Connection) -> None:
        conn.execute(SET_LOCAL, (str(self.cfg.statement_timeout_ms),))

    # --------------------------------------------------------------- write
    def write(self, items: list[Item]) -> Outcome:
        """Write one shard's part of a batch. Never raises for the shard's own errors."""
        started = time.perf_counter()
        out = Outcome()
        if not self.backoff.ready():
            out.deferred = list(items)
            out.error = self.last_error
            return out
        out.attempted = True
        # Accounting first, in transactions of its own; the auth log after it, in
        # others, with a backoff of its own: an auth-log problem (a partition, a
        # permission, a bad row) never holds accounting.
        acct = [it for it in items if not isinstance(it.record, Auth)]
        auth = [it for it in items if isinstance(it.record, Auth)]
        try:
            self._write_split(acct, out)
            self._close_nas(acct, out)
        except (psycopg.Error, ShardUnavailable) as exc:
            # Nothing of this batch counts as done: entries already committed are
            # replayed later, and the merge makes that harmless.
            if isinstance(exc, psycopg.OperationalError) or (
                    self._conn is not None and (self._conn.broken or self._conn.closed)):
                self._drop()  # possibly cut by abort(): never reuse it
            self.backoff.failed()
            self.last_error = f"{type(exc).__name__}: {exc}".strip()[:500]
            out.deferred = list(items)
            out.done, out.rejected = [], []
            out.error = self.last_error
            out.seconds = time.perf_counter() - started
            return out
        self.backoff.succeeded()
        self.last_error = None
        if auth:
            self._write_auth(auth, out)
        out.seconds = time.perf_counter() - started
        return out

    def retry_ready(self) -> bool:
        """True when neither the shard's nor the auth log's backoff is waiting (nor a fence)."""
        return self.backoff.ready() and self.auth_backoff.ready() and self.fence_backoff.ready()

    def _write_auth(self, items: list[Item], out: Outcome) -> None:
        """The auth-log part, after accounting committed; on failure its entries stay pending."""
        if not self.auth_backoff.ready():
            out.deferred += items
            return
        done, rejected = len(out.done), len(out.rejected)
        try:
            self._ensure_auth_days(items)
            self._write_split(items, out)
        except (psycopg.Error, ShardUnavailable) as exc:
            if isinstance(exc, psycopg.OperationalError) or (
                    self._conn is not None and (self._conn.broken or self._conn.closed)):
                self._drop()
            self.auth_backoff.failed()
            del out.done[done:], out.rejected[rejected:]  # replayed later: ON CONFLICT DO NOTHING
            out.deferred += items
            out.auth_error = f"{type(exc).__name__}: {exc}".strip()[:500]
            return
        self.auth_backoff.succeeded()

    def _write_split(self, items: list[Item], out: Outcome) -> None:
        """One transaction; on a record error, halves until the bad record is alone."""
        stack = [items]
        while stack:
            part = stack.pop()
            try:
                self._write_once(part, out)
            except (psycopg.DataError, psycopg.IntegrityError) as exc:
                if len(part) == 1:
                    out.rejected.append((part[0], DEAD_REJECTED_BY_DB, f"shard {self.name!r}: {exc}"[:500]))
                    if len(out.rejected) > MAX_DB_REJECTS:
                        # Records passed our checks and the shard still refuses many:
                        # a schema change or a constraint, not poison. Hold, do not drain.
                        raise ShardUnavailable(f"shard {self.name!r} refuses more than {MAX_DB_REJECTS} "
                                               f"records of one batch (last: {exc}); holding them") from exc
                else:
                    mid = len(part) // 2
                    stack += [part[mid:], part[:mid]]
            except psycopg.Error:
                raise  # about the shard: the caller holds the batch and backs off
            except Exception as exc:
                # Neither a data error nor the shard's: a record our own code cannot
                # handle (a bug, or input nobody foresaw). Found by halving like a
                # data error; alone, it counts one attempt against that record only,
                # and max_attempts of them dead-letter it. Until then the batch is held.
                if len(part) > 1:
                    mid = len(part) // 2
                    stack += [part[mid:], part[:mid]]
                    continue
                key = getattr(part[0].ref, "source", id(part[0].ref))
                failures = self._record_failures.get(key, 0) + 1
                if failures >= self.cfg.max_attempts:
                    self._record_failures.pop(key, None)
                    out.rejected.append((part[0], DEAD_ATTEMPTS,
                                         f"failed {failures} times when written alone to shard {self.name!r} "
                                         f"(max_attempts {self.cfg.max_attempts}): "
                                         f"{type(exc).__name__}: {exc}"[:500]))
                    continue
                if len(self._record_failures) >= MAX_TRACKED_FAILURES:
                    self._record_failures.clear()
                self._record_failures[key] = failures
                raise ShardUnavailable(f"shard {self.name!r}: a record failed when written alone "
                                       f"({failures} of {self.cfg.max_attempts}): {type(exc).__name__}: "
                                       f"{exc}; holding the batch") from exc

    def _write_once(self, items: list[Item], out: Outcome) -> None:
        retry = Backoff(first_s=0.01, max_s=0.04)
        for attempt in range(DEADLOCK_RETRIES + 1):
            try:
                self._transaction(items, out)
                return
            except RETRYABLE:
                # Deadlock or serialization failure with another writer: its
                # transaction went through, ours may simply run again.
                if attempt == DEADLOCK_RETRIES:
                    raise
                retry.failed()
                retry.wait()

    def _transaction(self, items: list[Item], out: Outcome) -> None:
        conn = self._connection()
        tenants = sorted({it.record.tenant_id for it in items})
        with self._io(), conn.transaction():
            self._begin(conn)
            conn.execute(FENCE_LOCK, (tenants,))
            known: dict[int, bool] = dict(conn.execute(KNOWN_TENANTS, (tenants,)).fetchall())
            fenced = {t for t, moving in known.items() if moving}
            missing = [t for t in tenants if t not in known]
            if missing:
                fenced |= {row[0] for row in conn.execute(MOVED_AWAY, (missing,))}
            acct: list[Acct] = []
            auth: list[Auth] = []
            good: list[Item] = []
            unknown: list[tuple[Item, str, str]] = []
            held: list[Item] = []
            for it in items:
                rec = it.record
                if rec.tenant_id in fenced:
                    held.append(it)  # pending until the map names a shard that takes it
                    continue
                if rec.tenant_id not in known:
                    unknown.append((it, DEAD_UNKNOWN_TENANT,
                                    f"tenant {rec.tenant_id} does not exist on shard {self.name!r}"))
                    continue
                good.append(it)
                if isinstance(rec, Acct):
                    acct.append(rec)
                else:
                    auth.append(rec)
            rows, _events = collapse(acct)  # NAS events are applied after the commit
            with conn.cursor() as cur:
                if rows:
                    cur.execute(_create_stage(STAGE_SESSIONS, SESSION_COLUMNS))
                    with cur.copy(_copy(STAGE_SESSIONS, SESSION_COLUMNS)) as cp:
                        for row in rows:
                            cp.write_row(row)
                    cur.execute(MERGE_SESSIONS.format(stage=STAGE_SESSIONS))
                    days = usage_days(acct)
                    if days:
                        cur.execute(_create_stage(STAGE_DAYS, DAY_COLUMNS))
                        with cur.copy(_copy(STAGE_DAYS, DAY_COLUMNS)) as cp:
                            for day in days:
                                cp.write_row(day)
                        cur.execute(MERGE_DAYS.format(stage=STAGE_DAYS))
                if auth:
                    cur.execute(_create_stage(STAGE_AUTH, AUTH_COLUMNS))
                    with cur.copy(_copy(STAGE_AUTH, AUTH_COLUMNS)) as cp:
                        for a in auth:
                            cp.write_row((a.tenant_id, a.ts, a.event_id, a.username, a.nas_id,
                                          a.calling_station_id, a.result, a.reason, a.method))
                    cur.execute(INSERT_AUTH.format(stage=STAGE_AUTH))
                    out.auth_rows += max(cur.rowcount, 0)
        # Committed.
        out.done += good
        out.rejected += unknown
        if held:
            out.deferred += held
            out.fenced += len(held)
            self.fence_backoff.failed()
            self.fenced_tenants |= fenced
        elif self.fenced_tenants:
            self.fenced_tenants -= set(tenants)  # written now: no longer fenced
            if not self.fenced_tenants:
                self.fence_backoff.succeeded()
        out.merged_rows += len(rows)

    def _ensure_auth_days(self, items: list[Item]) -> None:
        """Create the auth log's day partitions the batch needs (UTC days; cached)."""
        days = {_utc_day(it.record.ts) for it in items if isinstance(it.record, Auth)}
        missing = days - self._auth_days
        if not missing:
            return
        conn = self._connection()
        with self._io(), conn.transaction():
            self._begin(conn)
            conn.execute(ENSURE_AUTH_DAYS, (min(missing), max(missing)))
        self._auth_days |= missing

    # --------------------------------------------------------------- close
    def _close_nas(self, items: list[Item], out: Outcome) -> None:
        """Accounting-On/Off: close the NAS's open sessions that started before it, in rounds."""
        events = sorted({NasEvent(r.event_ts, r.tenant_id, r.nas_id) for r in (it.record for it in out.done)
                         if isinstance(r, Acct) and r.status in NAS_STATUSES})
        # In time order: a session is closed by the first restart after it started.
        for ev in events:
            out.closed += self._close_rounds(CLOSE_NAS, {"ts": ev.event_ts, "tenant": ev.tenant_id,
                                                         "nas": ev.nas_id}, what=_nas_what(ev))

    def close_stale(self, grace_s: int) -> int:
        """Close silent sessions as 'stale', in rounds; the number closed. Raises on shard errors."""
        if not self.backoff.ready():
            return 0
        try:
            n = self._close_rounds(CLOSE_STALE, {"grace": grace_s}, what="stale sessions")
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError) or (
                    self._conn is not None and (self._conn.broken or self._conn.closed)):
                self._drop()
            self.backoff.failed()
            self.last_error = f"{type(exc).__name__}: {exc}".strip()[:500]
            raise
        return n

    def _close_rounds(self, query: str, params: dict[str, Any], *, what: str) -> int:
        total = 0
        limit = self.cfg.close_batch_rows
        for _ in range(self.cfg.close_max_loops):
            conn = self._connection()
            with self._io(), conn.transaction():
                self._begin(conn)
                n = conn.execute(query, {**params, "limit": limit}).rowcount
            total += n
            if n < limit:
                return total
        # The bound is hit: the rest is done next time (entries stay pending / next pass).
        raise ShardUnavailable(f"shard {self.name!r}: closing {what} needs more than "
                               f"{self.cfg.close_max_loops} rounds of {limit}; continuing later")


def _nas_what(ev: NasEvent) -> str:
    return f"the sessions of NAS {ev.nas_id} of tenant {ev.tenant_id}"
