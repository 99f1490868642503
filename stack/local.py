"""The whole stack on loopback: Redis, PostgreSQL shards (two, or WIFICORE_SHARDS for
``bin/stack``) each behind PgBouncer, radiusd, batch_writer, the CoA sidecar.

Used by ``bin/stack`` (fixed ports, state in ``.state/``) and by the test
suite (free ports, a temporary state folder).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from wificore.shardmap import ShardMap

from .rcluster import RedisCluster
from .servers import (
    ROOT,
    BatchWriter,
    CoaSidecar,
    PgBouncer,
    PostgresServer,
    Radiusd,
    RedisServer,
    StackError,
    free_port,
    postgres_home,
)

# Server-side limits per login role: they hold behind PgBouncer (which drops the
# startup `options`); the client-side deadline holds against a hung server. The
# radius role's statement_timeout is below the module's db_timeout_ms, so that a
# slow query is cancelled by the server and its connection kept.
LOGIN_ROLES_SQL = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'wificore_radiusd') THEN
        CREATE ROLE wificore_radiusd LOGIN IN ROLE wificore_radius;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'wificore_batch') THEN
        CREATE ROLE wificore_batch LOGIN IN ROLE wificore_writer;
    END IF;
END $$;
ALTER ROLE wificore_radiusd SET statement_timeout = '400ms';
ALTER ROLE wificore_radiusd SET lock_timeout = '200ms';
ALTER ROLE wificore_radiusd SET idle_in_transaction_session_timeout = '5s';
ALTER ROLE wificore_batch SET statement_timeout = '30s';
ALTER ROLE wificore_batch SET lock_timeout = '5s';
ALTER ROLE wificore_batch SET idle_in_transaction_session_timeout = '60s';
"""


@dataclasses.dataclass
class Ports:
    """The stack's ports; shards past the second (WIFICORE_SHARDS) in ``more_shards`` and
    ``more_bouncers`` (fixed ports: the next ones after shard2's and bouncer2's)."""

    redis: int = 16379
    shard1: int = 15432
    shard2: int = 15433
    auth: int = 1812
    acct: int = 1813
    metrics: int = 9812
    writer_metrics: int = 9813
    bouncer1: int = 16432
    bouncer2: int = 16433
    #: The nodes of a Redis Cluster (stack.rcluster), when the stack runs one instead of
    #: the single Redis; each node's cluster bus is on its port + 10000.
    redis_cluster: tuple[int, ...] = ()
    coa_metrics: int = 9814
    more_shards: list[int] = dataclasses.field(default_factory=list)
    more_bouncers: list[int] = dataclasses.field(default_factory=list)

    @classmethod
    def free(cls, shards: int = 2) -> Ports:
        names = ("redis", "shard1", "shard2", "auth", "acct", "metrics", "writer_metrics",
                 "bouncer1", "bouncer2", "coa_metrics")
        extra = max(0, shards - 2)
        return cls(**{n: free_port() for n in names},
                   more_shards=[free_port() for _ in range(extra)],
                   more_bouncers=[free_port() for _ in range(extra)])

    def for_shards(self, n: int) -> Ports:
        """These ports with room for ``n`` shards (fixed ones counted on from shard2's)."""
        extra = max(0, n - 2)
        while len(self.more_shards) < extra:
            self.more_shards.append(self.shard2 + 1 + len(self.more_shards))
        while len(self.more_bouncers) < extra:
            self.more_bouncers.append(self.bouncer2 + 1 + len(self.more_bouncers))
        return self

    def shard(self, i: int) -> int:
        """The port of shard i + 1."""
        return (self.shard1, self.shard2, *self.more_shards)[i]

    def bouncer(self, i: int) -> int:
        return (self.bouncer1, self.bouncer2, *self.more_bouncers)[i]

    def with_cluster(self, fixed: bool) -> Ports:
        """These ports and six for a Redis Cluster (17001-17006, or free ones)."""
        if self.redis_cluster:
            return self
        nodes = tuple(range(17001, 17007)) if fixed else tuple(RedisCluster.free_ports())
        return dataclasses.replace(self, redis_cluster=nodes)


class Stack:
    """``procs`` radiusd processes share the RADIUS ports (contrib/reuseport/): the
    first keeps its state in ``state``, process i in ``state/radiusd-<i>``, with
    metrics on ``ports.metrics + 10 * i``. What runs as the postgres user (the shards,
    PgBouncer) keeps its files in ``self.postgres_home``: ``state`` when that user can
    reach it, else a folder of its own under /var/lib/wificore-stack/
    (:func:`stack.servers.postgres_home`)."""

    def __init__(self, state: Path, ports: Ports, *, fast: bool = False, split_at: int = 500,
                 procs: int = 1, radiusd_env: dict[str, str] | None = None,
                 also_on: tuple[str, ...] = (), networks: tuple[str, ...] = (),
                 shards: int = 2, statements: bool = False) -> None:
        if not 1 <= shards <= 16:
            raise StackError(f"shards: {shards}: from 1 to 16")
        self.state = state
        self.ports = ports.for_shards(shards)
        self.split_at = split_at
        self.fast = fast
        fresh = not state.exists() or not any(state.iterdir())
        state.mkdir(parents=True, exist_ok=True)
        state.chmod(0o755)
        self.postgres_home = home = postgres_home(state, fresh=fresh)
        # A Redis Cluster (3 masters, 1 replica each) when the ports name its nodes;
        # ``also_on``/``networks``: the RADIUS tier's link (stack/cluster.py), besides loopback.
        self.redis: RedisServer | RedisCluster = (
            RedisCluster(state, list(ports.redis_cluster)) if ports.redis_cluster
            else RedisServer(state, ports.redis, also_on=also_on))
        self.pg = [PostgresServer(state, self.ports.shard(i), f"shard{i + 1}", fast=fast, home=home,
                                  also_on=also_on, networks=networks, statements=statements)
                   for i in range(shards)]
        # radiusd and batch_writer reach each shard through its PgBouncer; the admin
        # CLI, migrations and LISTEN connect directly.
        self.bouncers = [PgBouncer(state, self.ports.bouncer(i), pg, also_on=also_on)
                         for i, pg in enumerate(self.pg)]
        #: Streaming replicas by shard name (start_replica), named in the map as replica_dsn.
        self.replicas: dict[str, PostgresServer] = {}
        self.shard_map = state / "shards.toml"
        self.radiusds = [
            Radiusd(state if i == 0 else state / f"radiusd-{i}", auth_port=ports.auth,
                    acct_port=ports.acct, shard_map=self.shard_map, redis_url=self.redis.url,
                    metrics_port=ports.metrics + 10 * i if ports.metrics else 0,
                    name="radiusd" if i == 0 else f"radiusd-{i}", reuseport=procs > 1,
                    extra_env=radiusd_env)
            for i in range(procs)]
        self.radiusd = self.radiusds[0]
        self.writer = BatchWriter(state, self.writer_env())
        self.coa = CoaSidecar(state, {**self.writer_env(), "WIFICORE_COA_CONSUMER": "coa-1",
                                      "WIFICORE_COA_METRICS_PORT": str(ports.coa_metrics)})

    def writer_env(self) -> dict[str, str]:
        return {"WIFICORE_SHARD_MAP": str(self.shard_map), "WIFICORE_REDIS_URL": self.redis.url,
                "WIFICORE_WRITER_METRICS_PORT": str(self.ports.writer_metrics),
                "WIFICORE_WRITER_CONSUMER": "writer-1"}

    def admin_env(self) -> dict[str, str]:
        return {**os.environ, "WIFICORE_SHARD_MAP": str(self.shard_map),
                "WIFICORE_REDIS_URL": self.redis.url}

    def ranges(self) -> list[tuple[int, int]]:
        """Shard i holds split_at * i .. split_at * (i + 1) - 1 (the first from 1, the last
        up to 999999): with two shards 1-499 and 500-999999."""
        n = len(self.pg)
        return [(1 if i == 0 else self.split_at * i,
                 999999 if i == n - 1 else self.split_at * (i + 1) - 1) for i in range(n)]

    def write_shard_map(self) -> None:
        """The map of these shards; tenants placed by `tenant move` in the file stay placed."""
        placed: dict[int, str] = {}
        with contextlib.suppress(Exception):
            placed = ShardMap.load(self.shard_map).placed
        lines = ["# Written by the stack; see raddb/mods-config/wificore/shards.toml."]
        for pg, bouncer, (first, last) in zip(self.pg, self.bouncers, self.ranges(), strict=True):
            lines += ["", "[[shard]]", f'name = "{pg.name}"', f"first_tenant = {first}",
                      f"last_tenant = {last}", f'dsn = "{pg.dsn()}"',
                      f'listen_dsn = "{pg.dsn("wificore_radiusd")}"',
                      f'radius_dsn = "{bouncer.dsn("wificore_radiusd")}"',
                      f'writer_dsn = "{bouncer.dsn("wificore_batch")}"']
            replica = self.replicas.get(pg.name)
            if replica is not None:
                lines.append(f'replica_dsn = "{replica.dsn("wificore_radiusd")}"')
        for tenant_id, name in sorted(placed.items()):
            lines += ["", "[[tenant]]", f"id = {tenant_id}", f'shard = "{name}"']
        tmp = self.shard_map.with_suffix(".toml.tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.shard_map)

    def start_replica(self, shard: str, port: int) -> PostgresServer:
        """A streaming replica of ``shard`` (pg_basebackup -R from its primary), started and
        named in the shard map as the shard's replica_dsn."""
        primary = next(pg for pg in self.pg if pg.name == shard)
        replica = PostgresServer(self.state, port, f"{shard}-replica", fast=self.fast,
                                 home=self.postgres_home, standby_of=primary)
        replica.start()
        self.replicas[shard] = replica
        self.write_shard_map()
        return replica

    def admin(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "wificore.admin", *args], cwd=ROOT,
                              env=self.admin_env(), capture_output=True, text=True, check=check,
                              input=input)

    def start_data(self) -> None:
        """Redis and both shards, migrated, with the login roles."""
        for pg in self.pg:
            pg.check_reachable()  # before anything starts
        self.redis.start()
        for pg in self.pg:
            pg.start()
        self.write_shard_map()
        self.admin("migrate")
        for pg in self.pg:
            subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", pg.dsn(), "-c", LOGIN_ROLES_SQL],
                           check=True, capture_output=True)
        for bouncer in self.bouncers:
            bouncer.start()

    def stop_all(self) -> None:
        for proc in (self.coa, self.writer, *self.radiusds, *self.bouncers):
            proc.stop()
        for pg in (*self.replicas.values(), *self.pg):
            pg.stop()
        self.redis.stop()


@contextlib.contextmanager
def temporary_stack(prefix: str = "wificore-", *, keep: bool = False,
                    shards: int = 2, procs: int = 1, statements: bool = False) -> Iterator[Stack]:
    """Redis and ``shards`` migrated shards on free loopback ports in a new folder under /tmp
    (readable by the postgres user); stopped by PID and removed at the end. ``statements``:
    the shards count each role's statements (PostgresServer.statements_of)."""
    state = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    s = Stack(state, Ports.free(shards), fast=True, shards=shards, procs=procs,
              statements=statements)
    try:
        s.start_data()
        yield s
    finally:
        s.stop_all()
        if not keep:
            shutil.rmtree(state, ignore_errors=True)
            if s.postgres_home != state:
                shutil.rmtree(s.postgres_home, ignore_errors=True)
