"""Fixtures: real Redis, two PostgreSQL shards and radiusd with the module.

Servers are local processes on loopback ports chosen at random, with state
in a temporary folder; every process is stopped by its PID at the end.
Set WIFICORE_TEST_KEEP=1 to keep the state folder for inspection.

Where a Docker engine is available one could start the same servers with
testcontainers; the local processes are what CI (no Docker) uses, and they
are what every test here runs against.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psycopg
import pytest
import redis as redis_lib

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stack.local import temporary_stack  # noqa: E402
from tests.radius import send  # noqa: E402

# Tenants of the test world: (tenant_id, NAS source address, secret, vendor).
TENANT_A = (1, "127.0.0.1", "secret-a", "mikrotik")     # shard1
TENANT_B = (2, "127.0.0.2", "secret-b", "wispr")        # shard1
TENANT_C = (600, "127.0.0.3", "secret-c", "generic")    # shard2


@pytest.fixture(scope="session")
def stack():
    with temporary_stack("wificore-test-", keep=bool(os.environ.get("WIFICORE_TEST_KEEP")),
                         statements=True) as s:
        yield s


@pytest.fixture(scope="session")
def world(stack):
    """Three tenants on two shards, each with a NAS and a plan."""
    for tenant, ip, secret, vendor in (TENANT_A, TENANT_B, TENANT_C):
        stack.admin("tenant", "add", "--id", str(tenant), "--name", f"tenant {tenant}")
        stack.admin("nas", "add", "--tenant", str(tenant), "--name", f"nas-{tenant}", "--ip", ip,
                    "--secret", secret, "--vendor", vendor)
        stack.admin("plan", "add", "--tenant", str(tenant), "--name", "basic", "--rate-up-kbps", "2000",
                    "--rate-down-kbps", "10000", "--simultaneous-use", "1", "--session-timeout-s", "3600",
                    "--idle-timeout-s", "600", "--interim-interval-s", "60")
    return stack


@pytest.fixture(scope="session")
def radiusd(world):
    world.radiusd.start()
    yield world.radiusd
    code = world.radiusd.stop()
    assert code == 0, f"radiusd exited with {code} on SIGTERM:\n{world.radiusd.log_tail()}"


@pytest.fixture
def redis(stack):
    r = redis_lib.Redis.from_url(stack.redis.url)
    yield r
    r.close()


@pytest.fixture
def shard_conn(stack):
    conns = []

    def connect(tenant_id: int) -> psycopg.Connection:
        pg = stack.pg[0] if tenant_id < stack.split_at else stack.pg[1]
        conn = psycopg.connect(pg.dsn(), autocommit=True)
        conns.append(conn)
        return conn
    yield connect
    for c in conns:
        c.close()


_counter = [0]


@pytest.fixture
def subscriber(world):
    """Factory: a fresh subscriber in a tenant; returns its username."""
    def make(tenant=TENANT_A, password="pw-123456", password_type="cleartext", kind="pppoe",
             plan="basic", **extra: str) -> str:
        _counter[0] += 1
        username = f"user{_counter[0]}-{os.getpid()}"
        args = ["subscriber", "add", "--tenant", str(tenant[0]), "--username", username,
                "--password", password, "--password-type", password_type, "--kind", kind,
                "--plan", plan]
        for k, v in extra.items():
            args += ["--" + k.replace("_", "-"), v]
        world.admin(*args)
        return username
    return make


@pytest.fixture
def auth(radiusd):
    """Send an Access-Request from a tenant's NAS: auth(tenant, attrs) -> Answer."""
    def go(tenant, attrs, secret=None):
        return send(radiusd.auth_port, "auth", secret or tenant[2], attrs, source=tenant[1])
    return go


@pytest.fixture
def acct(radiusd):
    def go(tenant, attrs, secret=None):
        return send(radiusd.acct_port, "acct", secret or tenant[2], attrs, source=tenant[1])
    return go


def pytest_report_header(config):
    """Which FreeRADIUS build this pass runs on (WIFICORE_FREERADIUS, stack/freeradius.py)."""
    from stack.freeradius import build, version_of
    b = build()
    return f"FreeRADIUS {b.version}: {b.binary} ({version_of(b)})"
