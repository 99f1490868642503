"""Access to Redis and the PostgreSQL shards, with short timeouts and breakers.

Inside radiusd every call runs under rlm_python3's mutex, so a wait here is
a wait for every request. Each backend therefore has a :class:`wificore.backoff.Breaker`: after
a failure the backend is skipped (fail fast) until ``retry_s`` has passed,
then one call probes it again. Reconnection is automatic.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
import redis
from psycopg_pool import ConnectionPool, PoolTimeout

from wificore import roles
from wificore.backoff import Breaker, redis_retry
from wificore.errors import StoreUnavailable
from wificore.settings import Settings
from wificore.shardmap import Shard, ShardMap

T = TypeVar("T")


class RedisStore:
    """One Redis client behind a :class:`Breaker`: while it is open, calls fail fast.

    The hooks' reads and fills go through :meth:`call`; the module's threads use
    their own client (``redis_bg``), which nothing under the mutex waits on."""

    def __init__(self, client: redis.Redis, errors: Counter[str], *, name: str = "redis") -> None:
        self.client = client
        self.breaker = Breaker(name)
        self._errors = errors  # the engine's Stats.errors: a failure is counted as "redis"

    def call(self, fn: Callable[[redis.Redis], T]) -> T:
        """Run ``fn(client)`` unless the breaker is open; StoreUnavailable on failure."""
        if not self.breaker.allow():
            raise StoreUnavailable("redis is down (retrying in <1 s)")
        try:
            result = fn(self.client)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self.breaker.fail()
            self._errors["redis"] += 1
            raise StoreUnavailable(f"redis: {exc}") from exc
        self.breaker.ok()
        return result


def connect_redis(settings: Settings, *, timeout_s: float | None = None,
                  role: str = roles.STATE) -> redis.Redis:
    """A Redis client of ``role`` (see roles.py) with the configured timeouts (no I/O
    until first use).

    Hooks use ``redis_timeout_ms``; the module's own threads, which nothing
    waits on, pass a longer ``timeout_s``."""
    timeout = settings.redis_timeout_ms / 1000 if timeout_s is None else timeout_s
    # One immediate retry on a connection error: a pooled connection that
    # Redis closed (a restart) must not look like an outage. Timeouts are not
    # retried: the caller is waiting under the mutex.
    return redis.Redis.from_url(
        roles.redis_url(settings, role), socket_timeout=timeout, socket_connect_timeout=timeout,
        retry=redis_retry(), retry_on_error=[redis.ConnectionError],
        retry_on_timeout=False, health_check_interval=0)


def conninfo(dsn: str, timeout_ms: int, application_name: str) -> str:
    """The shard DSN plus timeouts; no server-side prepared statements are used."""
    connect_s = max(2, -(-timeout_ms // 1000))  # libpq's floor is 2 s
    return psycopg.conninfo.make_conninfo(
        dsn, connect_timeout=connect_s, application_name=application_name,
        options=f"-c statement_timeout={timeout_ms}")


class Shards:
    """One small connection pool per shard, opened on demand."""

    def __init__(self, shard_map: ShardMap, *, timeout_ms: int, pool_max: int,
                 role: str = "radius", application_name: str = "rlm_wificore") -> None:
        self.map = shard_map
        self.timeout_s = timeout_ms / 1000
        self.timeout_ms = timeout_ms
        self.pool_max = pool_max
        self.role = role
        self.application_name = application_name
        self._pools: dict[str, ConnectionPool] = {}
        self.breakers = {s.name: Breaker(s.name) for s in shard_map}
        self._lock = threading.Lock()

    def _dsn(self, shard: Shard) -> str:
        return {"radius": shard.radius_dsn, "writer": shard.writer_dsn}.get(self.role, shard.dsn)

    def pool(self, shard: Shard) -> ConnectionPool:
        pool = self._pools.get(shard.name)
        if pool is None:
            with self._lock:
                pool = self._pools.get(shard.name)
                if pool is None:
                    pool = ConnectionPool(
                        conninfo(self._dsn(shard), self.timeout_ms, self.application_name),
                        min_size=1, max_size=self.pool_max, name=f"wificore-{shard.name}",
                        kwargs={"autocommit": True, "prepare_threshold": None},
                        reconnect_timeout=0, open=True)
                    self._pools[shard.name] = pool
        return pool

    def run(self, shard: Shard, fn: Callable[[psycopg.Connection], T]) -> T:
        """``fn(conn)`` on a pooled connection, or :class:`StoreUnavailable` within the timeout.

        A connection the server closed (a restart) is dropped by the pool and
        the call is tried once more on a fresh one; any other failure opens
        the shard's breaker."""
        breaker = self.breakers[shard.name]
        if not breaker.allow():
            raise StoreUnavailable(f"shard {shard.name!r} is down (retrying in <1 s)")
        pool = self.pool(shard)
        for attempt in (1, 2):
            conn = None
            try:
                with pool.connection(timeout=self.timeout_s) as conn:
                    result = fn(conn)
            except psycopg.OperationalError as exc:
                if attempt == 1 and conn is not None and conn.broken:
                    continue
                breaker.fail()
                raise StoreUnavailable(f"shard {shard.name!r}: {str(exc).strip()}") from exc
            except PoolTimeout as exc:
                breaker.fail()
                raise StoreUnavailable(f"shard {shard.name!r}: {exc}") from exc
            breaker.ok()
            return result
        raise AssertionError("unreachable")

    def fetchone(self, tenant_id: int, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        return self.run(self.map.shard_for(tenant_id), lambda c: c.execute(sql, params).fetchone())

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
        for pool in self._pools.values():
            pool.close(timeout=1.0)
        self._pools.clear()
