"""auth_log partitions on a shard whose time zone is not UTC (Asia/Jakarta, +07).

A database of its own on the session stack's shard1 server, with
``ALTER DATABASE ... SET timezone = 'Asia/Jakarta'``; migrations 0001-0003 are
applied as they were before 0004 (in that time zone), then ``migrate`` brings
0004. Checked: day partitions bounded at UTC midnights, rows dated across the
old gap (07:00 UTC of day D+7 .. D+8) stored by the writer, a DEFAULT partition
catching a day nobody ensured (moved out when that day is ensured), and an
auth-log failure (INSERT revoked) that does not hold accounting.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid

import psycopg
import pytest
from psycopg import sql

from batch_writer.config import load
from batch_writer.worker import Writer
from benchmarks.writer_bench import acct
from tests.test_batch_writer import PARTITIONS, dead_letters, new_key, new_prefix, push
from wificore import wire
from wificore.keys import Keys
from wificore.migrate import migrate_shard, migrations
from wificore.shardmap import ShardMap

TENANT = 41
DAY_S = 86_400


@pytest.fixture(scope="module")
def jakarta(stack, tmp_path_factory):
    """(admin dsn, shard map path) of a fresh database in Asia/Jakarta migrated up to 0003."""
    pg = stack.pg[0]
    name = "wc_tz_" + uuid.uuid4().hex[:8]
    with psycopg.connect(pg.dsn().rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("ALTER DATABASE {} SET timezone = 'Asia/Jakarta'").format(sql.Identifier(name)))
    base = pg.dsn().rsplit("/", 1)[0]
    dsn = f"{base}/{name}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SHOW timezone").fetchone()[0] == "Asia/Jakarta"
        conn.execute("CREATE TABLE wificore_schema (version integer PRIMARY KEY, name text NOT NULL,"
                     " applied_at timestamptz NOT NULL DEFAULT now())")
        for version, mname, path in migrations():
            if version > 3:
                break
            with conn.transaction():
                conn.execute(path.read_text())
                conn.execute("INSERT INTO wificore_schema (version, name) VALUES (%s, %s)", (version, mname))
        conn.execute("INSERT INTO tenants (tenant_id, name) VALUES (%s, 'jakarta')", (TENANT,))
        # A row stored before 0004, in a partition bounded in local time.
        conn.execute("INSERT INTO auth_log (tenant_id, logged_at, event_id, username, result, reason)"
                     " VALUES (%s, now(), 'before-0004', 'u', 'accept', 'ok')", (TENANT,))
    path = tmp_path_factory.mktemp("tz") / "shards.toml"
    path.write_text(f'[[shard]]\nname = "jakarta"\nfirst_tenant = 1\nlast_tenant = 999999\n'
                    f'dsn = "{dsn}"\nradius_dsn = "{base.replace("postgres@", "wificore_radiusd@")}/{name}"\n'
                    f'writer_dsn = "{base.replace("postgres@", "wificore_batch@")}/{name}"\n')
    yield dsn, path
    with psycopg.connect(pg.dsn().rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _auth(ts: float, event_id: str) -> tuple[int, bytes]:
    return (TENANT, wire.pack(wire.KIND_AUTH, {
        "tenant_id": TENANT, "nas_id": 1, "ts": ts, "event_id": event_id, "username": "u",
        "calling_station_id": None, "result": "accept", "reason": "ok", "method": "pap"}))


def _writer(stack, path, prefix: str, **knobs) -> Writer:
    env = {"WIFICORE_SHARD_MAP": str(path), "WIFICORE_REDIS_URL": stack.redis.url,
           "WIFICORE_KEY_PREFIX": prefix, "WIFICORE_WRITER_CONSUMER": f"c-{prefix}",
           "WIFICORE_STREAM_PARTITIONS": str(PARTITIONS), "WIFICORE_WRITER_BATCH_MAX_AGE_MS": "20",
           "WIFICORE_WRITER_MAX_EVENT_AHEAD_S": str(40 * DAY_S)}
    env.update({"WIFICORE_WRITER_" + k.upper(): str(v) for k, v in knobs.items()})
    settings, cfg = load(env)
    return Writer(settings, cfg, shard_map=ShardMap.load(path))


def _run(w: Writer, until, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        w.run_once()
        w.flush()
        if until():
            return
    raise AssertionError("the writer did not get there in time")


def _utc_midnight(days_ahead: int) -> float:
    today = dt.datetime.now(dt.UTC).date()
    return dt.datetime.combine(today + dt.timedelta(days=days_ahead), dt.time(), dt.UTC).timestamp()


def test_partitions_in_utc_and_rows_across_the_old_gap_are_stored(stack, redis, jakarta):
    dsn, path = jakarta
    shard = next(iter(ShardMap.load(path)))
    assert migrate_shard(shard) == [v for v, _n, _p in migrations() if v > 3]
    with psycopg.connect(dsn, autocommit=True) as conn:
        bounds = conn.execute("""
            SELECT c.relname, substring(pg_get_expr(c.relpartbound, c.oid) FROM $$FROM \\('([^']+)'\\)$$)::timestamptz
              FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'auth_log'::regclass AND c.relname ~ '^auth_log_[0-9]{8}$'""").fetchall()
        assert len(bounds) >= 9
        for relname, lower in bounds:
            day = dt.datetime.strptime(relname[9:], "%Y%m%d").replace(tzinfo=dt.UTC)
            assert lower == day, (relname, lower)
        assert conn.execute("SELECT count(*) FROM auth_log WHERE event_id = 'before-0004'").fetchone()[0] == 1
        assert conn.execute("SELECT to_regclass('auth_log_default')").fetchone()[0] is not None

    prefix, key, now = new_prefix(), new_key(), time.time()
    gap = _utc_midnight(7) + 18 * 3600      # in the old gap: 01:00 of D+8 in Jakarta
    after = _utc_midnight(8) + 3600         # the first day the writer itself created
    records = [acct(TENANT, key, "start", now - 60), _auth(gap, "gap"), _auth(after, "after"),
               acct(TENANT, key, "stop", now - 1, session_time_s=59, in_octets=10)]
    push(redis, prefix, [r if isinstance(r, tuple) else (TENANT, wire.pack(wire.KIND_ACCT, r)) for r in records])
    w = _writer(stack, path, prefix)
    try:
        def stored() -> bool:
            with psycopg.connect(dsn, autocommit=True) as conn:
                n = conn.execute("SELECT count(*) FROM auth_log WHERE event_id IN ('gap', 'after')").fetchone()[0]
                s = conn.execute("SELECT count(*) FROM sessions WHERE session_key = %s AND close_reason = 'stop'",
                                 (key,)).fetchone()[0]
            return n == 2 and s == 1
        _run(w, stored)
    finally:
        w.close()
    assert dead_letters(redis, prefix) == []
    redis.delete(*[Keys(prefix).stream(p) for p in range(PARTITIONS)])

    # A day nobody ensured lands in the default partition, and moves out once ensured.
    far = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=30)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO auth_log (tenant_id, logged_at, event_id, username, result, reason)"
                     " VALUES (%s, %s, 'far', 'u', 'accept', 'ok')",
                     (TENANT, dt.datetime.combine(far, dt.time(12), dt.UTC)))
        assert conn.execute("SELECT count(*) FROM auth_log_default").fetchone()[0] == 1
        conn.execute("SELECT wificore_auth_log_ensure(%s, %s)", (far, far))
        assert conn.execute("SELECT count(*) FROM auth_log_default").fetchone()[0] == 0
        part = "auth_log_" + far.strftime("%Y%m%d")
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(part))).fetchone()[0] == 1


def test_an_auth_log_failure_does_not_hold_accounting(stack, redis, jakarta):
    dsn, path = jakarta
    shard = next(iter(ShardMap.load(path)))
    migrate_shard(shard)
    prefix, key, now = new_prefix(), new_key(), time.time()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("REVOKE INSERT ON auth_log FROM wificore_writer")
    w = _writer(stack, path, prefix, backoff_max_s=1)
    try:
        push(redis, prefix, [(TENANT, wire.pack(wire.KIND_ACCT, acct(TENANT, key, "start", now - 60))),
                             _auth(now - 30, "held-" + key),
                             (TENANT, wire.pack(wire.KIND_ACCT, acct(TENANT, key, "stop", now - 1,
                                                                     session_time_s=59, in_octets=10)))])

        def session_stopped() -> bool:
            with psycopg.connect(dsn, autocommit=True) as conn:
                return conn.execute("SELECT count(*) FROM sessions WHERE session_key = %s AND close_reason = 'stop'",
                                    (key,)).fetchone()[0] == 1
        _run(w, session_stopped)
        assert w.stats.auth_log_errors["jakarta"] >= 1
        with psycopg.connect(dsn, autocommit=True) as conn:
            held = conn.execute("SELECT count(*) FROM auth_log WHERE event_id = %s", ("held-" + key,))
            assert held.fetchone()[0] == 0
            conn.execute("GRANT INSERT ON auth_log TO wificore_writer")

        def auth_stored() -> bool:
            with psycopg.connect(dsn, autocommit=True) as conn:
                return conn.execute("SELECT count(*) FROM auth_log WHERE event_id = %s",
                                    ("held-" + key,)).fetchone()[0] == 1
        _run(w, auth_stored)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("GRANT INSERT ON auth_log TO wificore_writer")
        w.close()
    assert dead_letters(redis, prefix) == []
    redis.delete(*[Keys(prefix).stream(p) for p in range(PARTITIONS)])
