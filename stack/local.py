"""The whole stack on loopback: Redis, two PostgreSQL shards, radiusd, batch_writer, the
CoA sidecar.

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

from .servers import (
    ROOT,
    BatchWriter,
    CoaSidecar,
    PgBouncer,
    PostgresServer,
    Radiusd,
    RedisServer,
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
    redis: int = 16379
    shard1: int = 15432
    shard2: int = 15433
    auth: int = 1812
    acct: int = 1813
    metrics: int = 9812
    writer_metrics: int = 9813
    bouncer1: int = 16432
    bouncer2: int = 16433
    coa_metrics: int = 9814

    @classmethod
    def free(cls) -> Ports:
        return cls(*(free_port() for _ in dataclasses.fields(cls)))


class Stack:
    """``procs`` radiusd processes share the RADIUS ports (contrib/reuseport/): the
    first keeps its state in ``state``, process i in ``state/radiusd-<i>``, with
    metrics on ``ports.metrics + 10 * i``. What runs as the postgres user (the shards,
    PgBouncer) keeps its files in ``self.postgres_home``: ``state`` when that user can
    reach it, else a folder of its own under /var/lib/wificore-stack/
    (:func:`stack.servers.postgres_home`)."""

    def __init__(self, state: Path, ports: Ports, *, fast: bool = False, split_at: int = 500,
                 procs: int = 1, also_on: tuple[str, ...] = (), networks: tuple[str, ...] = ()) -> None:
        self.state = state
        self.ports = ports
        self.split_at = split_at
        fresh = not state.exists() or not any(state.iterdir())
        state.mkdir(parents=True, exist_ok=True)
        state.chmod(0o755)
        self.postgres_home = home = postgres_home(state, fresh=fresh)
        # ``also_on``/``networks``: the RADIUS tier's link (stack/cluster.py), besides loopback.
        self.redis = RedisServer(state, ports.redis, also_on=also_on)
        self.pg = [PostgresServer(state, ports.shard1, "shard1", fast=fast, home=home, also_on=also_on,
                                  networks=networks),
                   PostgresServer(state, ports.shard2, "shard2", fast=fast, home=home, also_on=also_on,
                                  networks=networks)]
        # radiusd and batch_writer reach each shard through its PgBouncer; the admin
        # CLI, migrations and LISTEN connect directly.
        self.bouncers = [PgBouncer(state, ports.bouncer1, self.pg[0], also_on=also_on),
                         PgBouncer(state, ports.bouncer2, self.pg[1], also_on=also_on)]
        self.shard_map = state / "shards.toml"
        self.radiusds = [
            Radiusd(state if i == 0 else state / f"radiusd-{i}", auth_port=ports.auth,
                    acct_port=ports.acct, shard_map=self.shard_map, redis_url=self.redis.url,
                    metrics_port=ports.metrics + 10 * i if ports.metrics else 0,
                    name="radiusd" if i == 0 else f"radiusd-{i}", reuseport=procs > 1)
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

    def write_shard_map(self) -> None:
        p1, p2 = self.pg
        lines = ["# Written by the stack; see raddb/mods-config/wificore/shards.toml."]
        b1, b2 = self.bouncers
        for pg, bouncer, first, last in ((p1, b1, 1, self.split_at - 1),
                                         (p2, b2, self.split_at, 999999)):
            lines += ["", "[[shard]]", f'name = "{pg.name}"', f"first_tenant = {first}",
                      f"last_tenant = {last}", f'dsn = "{pg.dsn()}"',
                      f'listen_dsn = "{pg.dsn("wificore_radiusd")}"',
                      f'radius_dsn = "{bouncer.dsn("wificore_radiusd")}"',
                      f'writer_dsn = "{bouncer.dsn("wificore_batch")}"']
        self.shard_map.write_text("\n".join(lines) + "\n")

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
        for pg in self.pg:
            pg.stop()
        self.redis.stop()


@contextlib.contextmanager
def temporary_stack(prefix: str = "wificore-", *, keep: bool = False) -> Iterator[Stack]:
    """Redis and two migrated shards on free loopback ports in a new folder under /tmp
    (readable by the postgres user); stopped by PID and removed at the end."""
    state = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    s = Stack(state, Ports.free(), fast=True)
    try:
        s.start_data()
        yield s
    finally:
        s.stop_all()
        if not keep:
            shutil.rmtree(state, ignore_errors=True)
            if s.postgres_home != state:
                shutil.rmtree(s.postgres_home, ignore_errors=True)
