"""Access to Redis and the PostgreSQL shards: deadlines that hold, breakers per backend.

Inside radiusd every call runs under rlm_python3's mutex, so a wait here is
a wait for every request. Three rules follow (docs/decisions.md, 2026-12-01):

* **Every shard query has a client-side deadline** (:class:`Watchdog`): psycopg
  has none, and a hung server (SIGSTOP, a frozen VM) keeps the socket open and
  never answers. At the deadline the watchdog shuts the connection's socket
  down, the blocked wait returns at once, the connection is discarded. The
  roles also carry ``statement_timeout``/``lock_timeout`` (``ALTER ROLE``),
  which survive PgBouncer; the startup option is kept for direct connections.
* **No hook waits on a sick shard.** A hook's shard query goes to the shard's
  :class:`Lane`: bounded queue, deduplicated by query, run by the lane's own
  threads (outside the mutex). The hook waits for it at most ``db_wait_ms``
  while the shard is healthy, not at all while its breaker is open; a result
  that comes too late is kept a few seconds for the retransmit.
* **Breakers** (:class:`wificore.backoff.Breaker`) **open on errors and on slowness, and a thread closes them**: the
  lane's threads (shards) or a probe thread (Redis) find out that the backend
  is back, never a hook, so a hung backend costs at most one wait per process.
"""

from __future__ import annotations

import collections
import itertools
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
import redis
from psycopg_pool import ConnectionPool, PoolTimeout
from redis.cluster import RedisCluster

from wificore import roles
from wificore.backoff import REDIS_DOWN, Breaker, redis_retry
from wificore.errors import StoreUnavailable
from wificore.log import get_logger
from wificore.settings import Settings
from wificore.shardmap import Shard, ShardMap

T = TypeVar("T")

log = get_logger("rlm_wificore")


class RedisStore:
    """One Redis client behind a :class:`Breaker`: while it is open, calls fail fast.

    The hooks' reads and fills go through :meth:`call`; the module's threads use
    their own client (``redis_bg``), which nothing under the mutex waits on. A
    failed call opens the breaker; a probe thread (PING, same timeouts) closes
    it again, so a hung Redis costs the hooks one socket timeout per process,
    not one per ``retry_s``."""

    def __init__(self, client: redis.Redis, errors: Counter[str], *, name: str = "redis",
                 probe: bool = True) -> None:
        self.client = client
        self.breaker = Breaker(name, probe=_probe_of(client) if probe else None)
        self._errors = errors  # the engine's Stats.errors: a failure is counted as "redis"

    def call(self, fn: Callable[[redis.Redis], T]) -> T:
        """Run ``fn(client)`` unless the breaker is open; StoreUnavailable on failure."""
        if not self.breaker.allow():
            raise StoreUnavailable("redis is down (retrying in <1 s)")
        try:
            result = fn(self.client)
        except REDIS_DOWN as exc:
            self.breaker.fail()
            self._errors["redis"] += 1
            raise StoreUnavailable(f"redis: {exc}") from exc
        self.breaker.ok()
        return result


def _probe_of(client: Any) -> Callable[[], Any]:
    """The breaker's probe (its own thread, never a hook): PING; for a Redis Cluster, read
    the slot map first and PING every master, so that a master replaced by its replica
    is found (redis-py would keep asking the dead one) before the breaker closes."""
    if not isinstance(client, RedisCluster):
        return client.ping

    def probe() -> Any:
        client.nodes_manager.initialize()
        return client.ping(target_nodes=RedisCluster.PRIMARIES)
    return probe


def connect_redis(settings: Settings, *, timeout_s: float | None = None,
                  role: str = roles.STATE) -> redis.Redis:
    """A Redis client of ``role`` (see roles.py) with the configured timeouts (no I/O
    until first use).

    Hooks use ``redis_timeout_ms``; the module's own threads, which nothing
    waits on, pass a longer ``timeout_s``. Connect and every read are bounded
    by it (a hung server accepts the connection and never answers: the read
    times out); redis-py's pool never waits for a free connection, it opens one."""
    timeout = settings.redis_timeout_ms / 1000 if timeout_s is None else timeout_s
    # One immediate retry on a connection error: a pooled connection that
    # Redis closed (a restart) must not look like an outage. Timeouts are not
    # retried: the caller is waiting under the mutex.
    # A cluster URL (roles.client): a RedisCluster with the same timeouts on every node's
    # connection; a hung node costs one timeout, and a failed master's slots are looked
    # up again on the next call (its replica, once promoted).
    return roles.client(
        roles.redis_url(settings, role), socket_timeout=timeout, socket_connect_timeout=timeout,
        retry=redis_retry(), retry_on_error=[redis.ConnectionError],
        retry_on_timeout=False, health_check_interval=0)


def conninfo(dsn: str, timeout_ms: int, application_name: str) -> str:
    """The shard DSN plus timeouts; no server-side prepared statements are used.

    The ``options`` startup parameter reaches PostgreSQL on a direct connection
    only (PgBouncer 1.18 drops it): the roles' own ``statement_timeout`` and
    ``lock_timeout`` (``ALTER ROLE``) are what holds behind PgBouncer, and
    :class:`Watchdog` is what holds against a server that never answers."""
    connect_s = max(2, -(-timeout_ms // 1000))  # libpq's floor is 2 s
    return psycopg.conninfo.make_conninfo(
        dsn, connect_timeout=connect_s, application_name=application_name,
        options=f"-c statement_timeout={timeout_ms}")


class DeadlineExceeded(psycopg.OperationalError):
    """A shard query outlived its client-side deadline; its connection was shut down."""


class Watchdog:
    """Client-side deadlines for blocking psycopg calls, one thread for all of them.

    :meth:`arm` registers a connection with a deadline; if it is not disarmed
    in time the thread shuts the connection's socket down (``shutdown(2)`` on a
    duplicate of its descriptor), which wakes the waiting call with an error at
    once, whatever the server does. A cancel request would not help: a hung
    server does not read it either. The thread looks every ``TICK_S`` (a deadline
    holds to within that); arming and disarming are two dict operations, no lock
    and no wake-up (a thread woken per query cost radiusd a third of its cold-login
    rate, measured with the noisy_neighbour benchmark)."""

    TICK_S = 0.05

    def __init__(self) -> None:
        self._armed: dict[int, tuple[float, psycopg.Connection]] = {}
        self._fired: set[int] = set()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._start_lock = threading.Lock()

    def start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="wificore-deadlines",
                                                daemon=True)
                self._thread.start()

    def arm(self, conn: psycopg.Connection, timeout_s: float) -> int:
        if self._thread is None:
            self.start()
        token = next(self._seq)
        self._armed[token] = (time.monotonic() + timeout_s, conn)
        return token

    def disarm(self, token: int) -> bool:
        """Forget the deadline; True if it had already fired (the connection is gone)."""
        if self._armed.pop(token, None) is not None:
            return False
        self._fired.discard(token)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.TICK_S):
            if not self._armed:
                continue
            now = time.monotonic()
            for token, (deadline, conn) in list(self._armed.items()):
                if deadline <= now and self._armed.pop(token, None) is not None:
                    self._fired.add(token)
                    _shut_down(conn)

    def stop(self) -> None:
        self._stop.set()


def _shut_down(conn: psycopg.Connection) -> None:
    try:
        fd = conn.pgconn.socket
        with socket.socket(fileno=socket.dup(fd)) as s:
            s.shutdown(socket.SHUT_RDWR)
    except Exception:  # already closed: nothing is waiting on it
        pass


def _fetchone(sql: str, params: tuple[Any, ...]) -> Callable[[psycopg.Connection], tuple[Any, ...] | None]:
    return lambda c: c.execute(sql, params).fetchone()


class _Job:
    __slots__ = ("sql", "params", "done", "row", "error", "finished")

    def __init__(self, sql: str, params: tuple[Any, ...]) -> None:
        self.sql = sql
        self.params = params
        self.done = threading.Event()
        self.row: tuple[Any, ...] | None = None
        self.error: StoreUnavailable | None = None
        self.finished = 0.0


class Lane:
    """The queries of one shard, run by its own threads (outside rlm_python3's mutex).

    A hook asks with :meth:`fetchone`: the query is queued (once per distinct
    query: the retransmits and the other processes' threads of the same login
    wait on one job), and the hook waits for it at most ``wait_s`` while the
    shard's breaker is closed, not at all while it is open. A query that took
    longer than a hook would have waited for it (:meth:`healthy_wait_s`: slow),
    failed or outlived its deadline opens the breaker; one that was fast closes
    it, and hooks wait on the shard again after
    RECOVER_STREAK fast answers in a row (a wait is at most ``wait_s``, shorter once
    the shard's answer times are known: :meth:`healthy_wait_s`). While the breaker is open and
    nothing is queued, a thread probes with ``SELECT 1`` every ``retry_s``.
    A result nobody was waiting for any more is kept ``keep_s`` for the
    retransmit of the same request."""

    QUEUE_MAX = 256
    KEEP_MAX = 4096
    #: Fast answers in a row (lookups or probes) before hooks wait on a shard that was
    #: sick again. One fast answer (a probe, a cheap read among slow ones) is not enough:
    #: each hook wait is a wait of the whole process (rlm_python3's mutex, and in
    #: ``-t`` radiusd's one event loop), and a flapping shard cost every tenant a
    #: ``wait_s`` stall per flap (noisy_neighbour, issue 13).
    RECOVER_STREAK = 3
    #: A hook's wait on a healthy shard: ``WAIT_FACTOR`` times the 90th percentile of the
    #: lane's last ``WAIT_HISTORY`` fast answers, at least ``WAIT_FLOOR_S``, at most ``wait_s``
    #: (``db_wait_ms``; also until ``WAIT_HISTORY_MIN`` answers are known). The first
    #: hook that meets a shard falling sick holds its whole process for that long: at
    #: 200 ms that alone cost a neighbour tenant on the same process its p99 (issue 13).
    WAIT_FACTOR = 4.0
    WAIT_FLOOR_S = 0.05
    WAIT_HISTORY = 64
    WAIT_HISTORY_MIN = 8

    def __init__(self, shards: Shards, shard: Shard, *, wait_s: float, threads: int,
                 keep_s: float = 10.0) -> None:
        self.shards = shards
        self.shard = shard
        self.breaker = shards.breakers[shard.name]
        self.wait_s = wait_s
        self.keep_s = keep_s
        self.nthreads = threads
        self._queue: collections.deque[tuple[Any, _Job]] = collections.deque()
        self._pending: dict[Any, _Job] = {}
        self._kept: dict[Any, _Job] = {}
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._stopped = False
        # Fast answers in a row since the shard was last judged sick; hooks wait on
        # the shard only while its breaker is closed and this is >= RECOVER_STREAK.
        self._streak = self.RECOVER_STREAK
        self._fast_took: collections.deque[float] = collections.deque(maxlen=self.WAIT_HISTORY)
        self.counts: Counter[str] = Counter()

    def healthy_wait_s(self) -> float:
        """How long a hook waits for this shard while it is healthy (see WAIT_FACTOR)."""
        took = sorted(self._fast_took)
        if len(took) < self.WAIT_HISTORY_MIN:
            return self.wait_s
        p90 = took[int(len(took) * 0.9)]
        return min(self.wait_s, max(self.WAIT_FLOOR_S, self.WAIT_FACTOR * p90))

    @property
    def waitable(self) -> bool:
        """True if a hook may wait (up to ``wait_s``) for this shard's answer."""
        return self.breaker.open_until == 0.0 and self._streak >= self.RECOVER_STREAK

    def fetchone(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        key = (sql, params)
        with self._cond:
            job = self._kept.pop(key, None)
            if job is not None and job.finished + self.keep_s >= time.monotonic() and job.error is None:
                self.counts["kept"] += 1
                return job.row
            job = self._pending.get(key)
            if job is None:
                if len(self._queue) >= self.QUEUE_MAX:
                    self.counts["queue_full"] += 1
                    raise StoreUnavailable(f"shard {self.shard.name!r}: too many queries queued")
                job = _Job(sql, params)
                self._pending[key] = job
                self._queue.append((key, job))
                self._start_threads()
                self._cond.notify()
        healthy = self.waitable
        if healthy:
            self.counts["waited"] += 1  # hook calls that may block the process
        if not job.done.wait(self.healthy_wait_s() if healthy else 0.0):
            if healthy:
                # The shard did not answer within the healthy wait: sick until a
                # lane thread sees RECOVER_STREAK fast answers in a row again.
                self._streak = 0
                self.breaker.fail()
                self.counts["slow_wait"] += 1
            self.counts["not_waited" if not healthy else "gave_up"] += 1
            raise StoreUnavailable(f"shard {self.shard.name!r} is slow or down (answering later)")
        with self._cond:
            self._kept.pop(key, None)
        if job.error is not None:
            raise job.error
        return job.row

    def _start_threads(self) -> None:
        if self._threads or self._stopped:
            return
        for i in range(self.nthreads):
            t = threading.Thread(target=self._run, name=f"wificore-shard-{self.shard.name}-{i}",
                                 daemon=True)
            t.start()
            self._threads.append(t)

    def ensure_prober(self) -> None:
        """Start the lane's threads so that an open breaker is probed (used by run())."""
        with self._cond:
            self._start_threads()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopped:
                    if self.breaker.open_until != 0.0 and time.monotonic() >= self.breaker.open_until:
                        break
                    if self.breaker.open_until == 0.0 and self._streak < self.RECOVER_STREAK:
                        break  # recovering and idle: probe again at once
                    self._cond.wait(self.breaker.retry_s if self.breaker.open_until else None)
                if self._stopped:
                    return
                item = self._queue.popleft() if self._queue else None
            if item is None:
                self._probe()
                continue
            key, job = item
            # An answer counts as fast only within what a hook would wait for it now. Judged
            # against db_wait_ms instead, a shard answering between the two (150 ms, say)
            # was healthy again after every RECOVER_STREAK answers, and the next hook held
            # its whole process for the healthy wait: a stall per few lookups (issue 13).
            limit = self.healthy_wait_s()
            started = time.monotonic()
            try:
                job.row = self.shards.lookup(self.shard, _fetchone(job.sql, job.params))
            except StoreUnavailable as exc:
                job.error = exc
            except Exception as exc:  # a bug must not kill the lane
                job.error = StoreUnavailable(f"shard {self.shard.name!r}: {exc!r}")
            took = time.monotonic() - started
            fast = job.error is None and took <= limit
            if fast:
                self._fast_took.append(took)
            self._judge(fast)
            job.finished = time.monotonic()
            with self._cond:
                self._pending.pop(key, None)
                if job.error is None:
                    if len(self._kept) >= self.KEEP_MAX:
                        self._kept.pop(next(iter(self._kept)))
                    self._kept[key] = job
            job.done.set()

    def _probe(self) -> None:
        # Any answer within the deadline closes the breaker: a probe may have to
        # open a fresh connection (the shard restarted), which is not slowness.
        # An idle lane probes RECOVER_STREAK times in a row before hooks wait again
        # (a restarted shard serves the next login); a slow lookup resets the streak.
        try:
            self.shards.lookup(self.shard, lambda c: c.execute("SELECT 1").fetchone())
            ok = True
        except StoreUnavailable:
            ok = False
        except Exception as exc:  # a bug must not end the lane: nothing would answer its queue
            log.error("shard_probe_error", shard=self.shard.name, error=repr(exc))
            ok = False
        self._judge(ok)

    def _judge(self, fast: bool) -> None:
        if fast:
            if self._streak < self.RECOVER_STREAK:
                self._streak += 1
                if self._streak == self.RECOVER_STREAK:
                    log.info("shard_healthy", shard=self.shard.name)
            self.breaker.ok()
        else:
            if self._streak >= self.RECOVER_STREAK:
                log.warning("shard_sick", shard=self.shard.name)
            self._streak = 0
            self.breaker.fail()
        self.counts["fast" if fast else "slow_or_failed"] += 1

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=1.0)
        self._threads = []


class Shards:
    """One small connection pool and one :class:`Lane` per shard, opened on demand.

    A shard with a ``replica_dsn`` (a streaming replica) answers the lookups from it
    while its primary does not: the first lookup that fails on the primary marks it
    unreachable, the lookups go to the replica from then on (its own pool), and a
    thread tries the primary every ``PRIMARY_PROBE_S``; once it answers, lookups go
    back to it. What the replica answers is as old as its replay lag."""

    PRIMARY_PROBE_S = 1.0

    def __init__(self, shard_map: ShardMap, *, timeout_ms: int, pool_max: int,
                 role: str = "radius", application_name: str = "rlm_wificore",
                 wait_ms: int | None = None) -> None:
        self.map = shard_map
        self.timeout_s = timeout_ms / 1000
        self.timeout_ms = timeout_ms
        self.pool_max = pool_max
        self.role = role
        self.application_name = application_name
        self.wait_s = (min(200, timeout_ms) if wait_ms is None else wait_ms) / 1000
        self._pools: dict[str, ConnectionPool] = {}
        self.breakers = {s.name: Breaker(s.name, probe=False) for s in shard_map}
        self.lanes = {s.name: Lane(self, s, wait_s=self.wait_s, threads=max(1, min(2, pool_max)))
                      for s in shard_map}
        self.watchdog = Watchdog()
        self._lock = threading.Lock()
        #: Shard name -> when its primary is tried next (present: lookups go to the replica).
        self.primary_down: dict[str, float] = {}
        self.replica_lookups: Counter[str] = Counter()

    def _dsn(self, shard: Shard) -> str:
        return {"radius": shard.radius_dsn, "writer": shard.writer_dsn}.get(self.role, shard.dsn)

    def pool(self, shard: Shard, *, replica: bool = False) -> ConnectionPool:
        key = f"{shard.name}/replica" if replica else shard.name
        pool = self._pools.get(key)
        if pool is None:
            with self._lock:
                pool = self._pools.get(key)
                if pool is None:
                    pool = ConnectionPool(
                        conninfo(shard.replica_dsn if replica else self._dsn(shard), self.timeout_ms,
                                 self.application_name),
                        min_size=1, max_size=self.pool_max, name=f"wificore-{key}",
                        kwargs={"autocommit": True, "prepare_threshold": None},
                        reconnect_timeout=0, open=True)
                    self._pools[key] = pool
        return pool

    def lookup(self, shard: Shard, fn: Callable[[psycopg.Connection], T]) -> T:
        """:meth:`execute` on the shard's primary, or on its replica while the primary
        does not answer (see the class); the lanes' threads call it."""
        if not shard.replica_dsn:
            return self.execute(shard, fn)
        name = shard.name
        next_try = self.primary_down.get(name)
        if next_try is None:
            try:
                return self.execute(shard, fn)
            except StoreUnavailable as exc:
                self.primary_down[name] = time.monotonic() + self.PRIMARY_PROBE_S
                log.warning("shard_primary_unreachable", shard=name, error=str(exc),
                            lookups_to="replica")
        elif time.monotonic() >= next_try:
            self._probe_primary(shard)
        self.replica_lookups[name] += 1
        return self.execute(shard, fn, replica=True)

    def _probe_primary(self, shard: Shard) -> None:
        self.primary_down[shard.name] = time.monotonic() + 3600.0  # one probe at a time

        def probe() -> None:
            try:
                self.execute(shard, lambda c: c.execute("SELECT 1").fetchone())
            except StoreUnavailable:
                self.primary_down[shard.name] = time.monotonic() + self.PRIMARY_PROBE_S
                return
            except Exception:  # a bug must not leave the primary unprobed
                self.primary_down[shard.name] = time.monotonic() + self.PRIMARY_PROBE_S
                raise
            self.primary_down.pop(shard.name, None)
            log.info("shard_primary_back", shard=shard.name)
        threading.Thread(target=probe, name=f"wificore-primary-{shard.name}", daemon=True).start()

    def set_map(self, new: ShardMap) -> None:
        """Take a new shard map (the map thread): a lane, breaker and pools for each shard
        new to it or whose DSNs changed (the old ones closed), then the map itself (one
        attribute: a hook sees the old map or the new one)."""
        retired: list[tuple[Lane, list[ConnectionPool]]] = []
        for shard in new:
            lane = self.lanes.get(shard.name)
            if lane is not None and (lane.shard.radius_dsn, lane.shard.dsn, lane.shard.replica_dsn) == \
                    (shard.radius_dsn, shard.dsn, shard.replica_dsn):
                lane.shard = shard
                continue
            with self._lock:
                pools = [p for p in (self._pools.pop(shard.name, None),
                                     self._pools.pop(f"{shard.name}/replica", None)) if p is not None]
            self.breakers[shard.name] = Breaker(shard.name, probe=False)
            self.primary_down.pop(shard.name, None)
            self.lanes[shard.name] = Lane(self, shard, wait_s=self.wait_s,
                                          threads=max(1, min(2, self.pool_max)))
            if lane is not None:
                retired.append((lane, pools))
        self.map.replace(new)
        for lane, pools in retired:
            lane.stop()
            for pool in pools:
                pool.close(timeout=1.0)

    def execute(self, shard: Shard, fn: Callable[[psycopg.Connection], T], *,
                replica: bool = False) -> T:
        """``fn(conn)`` on a pooled connection within ``timeout_ms`` (pool wait and
        query, each), or :class:`StoreUnavailable`; the breaker is not consulted.

        A connection the server closed (a restart) is dropped by the pool and
        the call is tried once more on a fresh one. ``replica``: on the shard's replica."""
        pool = self.pool(shard, replica=replica)
        for attempt in (1, 2):
            conn = None
            try:
                with pool.connection(timeout=self.timeout_s) as conn:
                    token = self.watchdog.arm(conn, self.timeout_s)
                    try:
                        result = fn(conn)
                    finally:
                        if self.watchdog.disarm(token):
                            raise DeadlineExceeded(f"no answer within {self.timeout_ms} ms")
            except DeadlineExceeded as exc:
                raise StoreUnavailable(f"shard {shard.name!r}{' replica' if replica else ''}: "
                                       f"{exc}") from exc
            except psycopg.OperationalError as exc:
                if attempt == 1 and conn is not None and conn.broken:
                    continue
                raise StoreUnavailable(f"shard {shard.name!r}: {str(exc).strip()}") from exc
            except PoolTimeout as exc:
                raise StoreUnavailable(f"shard {shard.name!r}: {exc}") from exc
            return result
        raise AssertionError("unreachable")

    def run(self, shard: Shard, fn: Callable[[psycopg.Connection], T]) -> T:
        """``fn(conn)`` in the caller's thread, behind the shard's breaker; a failure or
        an answer slower than ``wait_s`` opens it, and the shard's lane probes it."""
        breaker = self.breakers[shard.name]
        if breaker.open_until != 0.0:
            self.lanes[shard.name].ensure_prober()
            raise StoreUnavailable(f"shard {shard.name!r} is down (retrying in <1 s)")
        started = time.monotonic()
        try:
            result = self.execute(shard, fn)
        except StoreUnavailable:
            breaker.fail()
            self.lanes[shard.name].ensure_prober()
            raise
        if time.monotonic() - started > self.wait_s:
            breaker.fail()
            self.lanes[shard.name].ensure_prober()
        return result

    def open(self) -> None:
        """Open every shard's pool now (in the background: psycopg-pool's own threads),
        so that the first miss of a process does not wait for a connection."""
        self.watchdog.start()
        for shard in self.map:
            self.pool(shard)

    def fetchone(self, tenant_id: int, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """One row from the tenant's shard, through its :class:`Lane` (see there)."""
        return self.lanes[self.map.shard_for(tenant_id).name].fetchone(sql, params)

    def fetch_all_shards(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """Run a query on every shard that answers; the rows of all of them."""
        rows: list[tuple[Any, ...]] = []
        errors = []
        for shard in self.map:
            try:
                rows.extend(self.run(shard, lambda c: c.execute(sql, params).fetchall()))
            except StoreUnavailable as exc:
                errors.append(exc)
        if errors and not rows:
            raise errors[0]
        return rows

    def close(self) -> None:
        for lane in self.lanes.values():
            lane.stop()
        self.watchdog.stop()
        for pool in self._pools.values():
            pool.close(timeout=1.0)
        self._pools.clear()
