"""batch_writer against real Redis and two PostgreSQL shards (the session `stack`).

The writer runs in this process (``Writer.run_once()``, as the service loops on
it); every test has its own stream prefix, so its streams hold only its own
entries, and its own session keys and NAS ids, so its rows are its own.
Process-level behaviour (signals, SIGKILL, two writers) is in
test_batch_writer_process.py.
"""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis as redis_lib

from batch_writer import worker
from batch_writer.config import load
from batch_writer.worker import Writer
from benchmarks.writer_bench import acct, partition_of
from stack.local import Stack, temporary_stack
from stack.servers import free_port
from tests import state
from wificore import wire
from wificore.keys import Keys

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 4
# Tenants of these tests: created once in the `writer_tenants` fixture.
T1, T2 = 311, 312          # shard1
T3, T4 = 811, 812          # shard2
T_MISSING = 399            # in shard1's range, never created
T_NO_SHARD = 2_000_000     # in no shard's range


@pytest.fixture(scope="session")
def writer_tenants(stack):
    """Tenants on both shards for the writer's tests."""
    for t in (T1, T2, T3, T4):
        stack.admin("tenant", "add", "--id", str(t), "--name", f"writer test {t}")
    return stack


@contextlib.contextmanager
def own_stack() -> Iterator[Stack]:
    """A stack of its own (Redis, two shards, tenants T1..T4), stopped by PID at the end.

    For tests that stop a shard or push tens of thousands of records: the session
    stack is shared, and stopping its shard2 leaves broken pooled connections in
    the session's radiusd, while a full Redis slows the restart other tests time.
    """
    with temporary_stack("wificore-writer-") as s:
        for t in (T1, T2, T3, T4):
            s.admin("tenant", "add", "--id", str(t), "--name", f"writer test {t}")
        yield s


@pytest.fixture(scope="module")
def private_stack():
    """A stack of its own for this module's shard-stopping test (see own_stack)."""
    with own_stack() as s:
        yield s


def new_prefix() -> str:
    """A fresh key prefix: the test's own streams, dead letters and heartbeats."""
    return "t" + uuid.uuid4().hex[:12]


def new_key(tag: str = "s") -> str:
    return f"{tag}-{uuid.uuid4().hex[:16]}"


def writer_env(stack, prefix: str, **knobs: Any) -> dict[str, str]:
    """The stack's writer environment, with this test's prefix and knobs (WIFICORE_WRITER_<KNOB>)."""
    # PYTHONPATH: this tree's code (the venv's entry point imports the checkout it was installed from).
    env = {**stack.writer_env(), "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
           "WIFICORE_KEY_PREFIX": prefix, "WIFICORE_WRITER_CONSUMER": f"c-{prefix}",
           "WIFICORE_WRITER_METRICS_PORT": "0", "WIFICORE_WRITER_BATCH_MAX_AGE_MS": "20",
           "WIFICORE_STREAM_PARTITIONS": str(PARTITIONS)}
    for k, v in knobs.items():
        env["WIFICORE_WRITER_" + k.upper()] = str(v)
    return env


@pytest.fixture
def make_writer(writer_tenants):
    """Factory: an in-process Writer on a prefix; closed at teardown, its keys deleted."""
    made: list[Writer] = []

    def make(prefix: str, **knobs: Any) -> Writer:
        settings, cfg = load(writer_env(writer_tenants, prefix, **knobs))
        w = Writer(settings, cfg)
        made.append(w)
        return w
    yield make
    for w in made:
        w.close()
    # The session stack's Redis is shared: leave it as small as we found it.
    client = redis_lib.Redis.from_url(writer_tenants.redis.url)
    for w in made:
        keys = Keys(w.settings.key_prefix)
        client.delete(*[keys.stream(p) for p in range(PARTITIONS)], *keys.dead_letters)
    client.close()


def push(redis, prefix: str, records: list[Any], kind: str = wire.KIND_ACCT) -> list[bytes]:
    """XADD records (field dicts, or raw payload bytes with a tenant) to their partitions."""
    keys = Keys(prefix)
    pipe = redis.pipeline(transaction=False)
    for r in records:
        if isinstance(r, tuple):  # (tenant, raw payload or fields)
            tenant, body = r
            fields = body if isinstance(body, dict) else {"d": body}
        else:
            tenant, fields = r["tenant_id"], {"d": wire.pack(kind, r)}
        pipe.xadd(keys.stream(partition_of(tenant, PARTITIONS)), fields)
    return pipe.execute()


def drain(w: Writer, max_steps: int = 200, timeout_s: float = 30.0) -> None:
    """run_once() until the writer has nothing left (bounded in steps and time)."""
    deadline = time.monotonic() + timeout_s
    for _ in range(max_steps):
        w.run_once()
        if w.idle() or time.monotonic() > deadline:
            break
    w.flush()
    assert w.idle(), "the writer did not drain"


def pending(redis, prefix: str, group: str = "writers") -> int:
    """Entries delivered and not acknowledged, over all partitions."""
    keys = Keys(prefix)
    total = 0
    for p in range(PARTITIONS):
        try:
            total += int(redis.xpending(keys.stream(p), group)["pending"])
        except Exception:  # no stream or group yet
            pass
    return total


def row(shard_conn, tenant: int, key: str) -> dict[str, Any] | None:
    conn = shard_conn(tenant)
    cur = conn.execute(
        "SELECT nas_id, username, started_at, updated_at, stopped_at, close_reason, terminate_cause,"
        " session_time_s, input_octets, output_octets, input_packets, output_packets, framed_ip, stale_at,"
        " extract(epoch FROM started_at)::float8 AS started,"
        " extract(epoch FROM stopped_at)::float8 AS stopped"
        " FROM sessions WHERE tenant_id = %s AND session_key = %s", (tenant, key))
    names = [d.name for d in cur.description]
    r = cur.fetchone()
    return dict(zip(names, r, strict=True)) if r else None


def dead_letters(redis, prefix: str) -> list[dict[str, bytes]]:
    return [fields for name in Keys(prefix, PARTITIONS).dead_letters for _id, fields in redis.xrange(name)]


def session_records(tenant: int, key: str, t0: float, *, nas_id: int = 1, steps: int = 3,
                    giga: int = 0) -> list[dict]:
    """Start, `steps` Interims and a Stop, 60 s apart; counters grow by a fixed step."""
    out = [acct(tenant, key, "start", t0, nas_id=nas_id)]
    for k in range(1, steps + 2):
        status = "stop" if k == steps + 1 else "interim"
        out.append(acct(tenant, key, status, t0 + 60 * k, session_time_s=60 * k,
                        in_octets=giga + 1000 * k, out_octets=3000 * k, nas_id=nas_id,
                        terminate_cause="User-Request" if status == "stop" else None))
    return out


# --------------------------------------------------------------------- merge
class TestMerge:
    @pytest.mark.parametrize("batch_rows", [1, 1000])
    def test_duplicates_and_reordering_give_the_final_counters(self, make_writer, redis, shard_conn,
                                                               batch_rows):
        """Any order, with retransmissions, one batch or one record per batch, ends at the Stop's values."""
        prefix, t0 = new_prefix(), time.time() - 1800
        keys = {T1: new_key(), T3: new_key()}
        records = []
        for tenant, key in keys.items():
            seq = session_records(tenant, key, t0, steps=3)
            records += seq + [seq[1], seq[-1], seq[2]]  # duplicates (a NAS retransmits)
        random.Random(batch_rows).shuffle(records)
        push(redis, prefix, records)
        drain(make_writer(prefix, batch_max_rows=batch_rows))
        for tenant, key in keys.items():
            r = row(shard_conn, tenant, key)
            assert (r["input_octets"], r["output_octets"], r["session_time_s"]) == (4000, 12000, 240)
            assert r["close_reason"] == "stop" and r["terminate_cause"] == "User-Request"
            assert r["started"] == pytest.approx(t0, abs=1e-3)
            assert r["stopped"] == pytest.approx(t0 + 240, abs=1e-3)
        assert pending(redis, prefix) == 0 and dead_letters(redis, prefix) == []

    def test_a_lost_start_creates_the_session(self, make_writer, redis, shard_conn):
        """An Interim whose Start never came creates the session, started = event time - session time."""
        prefix, key, ts = new_prefix(), new_key(), time.time() - 100
        push(redis, prefix, [acct(T2, key, "interim", ts, session_time_s=600, in_octets=77, out_octets=88)])
        drain(make_writer(prefix))
        r = row(shard_conn, T2, key)
        assert r["started"] == pytest.approx(ts - 600, abs=1e-3)
        assert r["stopped_at"] is None and r["close_reason"] is None
        assert (r["input_octets"], r["output_octets"], r["session_time_s"]) == (77, 88, 600)

    def test_a_stop_without_start_creates_a_closed_session(self, make_writer, redis, shard_conn):
        """A lone Stop is enough for a complete, closed row."""
        prefix, key, ts = new_prefix(), new_key(), time.time() - 100
        push(redis, prefix, [acct(T4, key, "stop", ts, session_time_s=30, in_octets=5, out_octets=6,
                                  terminate_cause="Idle-Timeout")])
        drain(make_writer(prefix))
        r = row(shard_conn, T4, key)
        assert r["close_reason"] == "stop" and r["stopped"] == pytest.approx(ts, abs=1e-3)
        assert r["started"] == pytest.approx(ts - 30, abs=1e-3) and r["terminate_cause"] == "Idle-Timeout"

    def test_an_interim_after_the_stop_does_not_reopen(self, make_writer, redis, shard_conn):
        """A late Interim (earlier event, smaller counters) leaves a stopped session stopped and unchanged."""
        prefix, key, t0 = new_prefix(), new_key(), time.time() - 1800
        seq = session_records(T1, key, t0, steps=2)
        w = make_writer(prefix)
        push(redis, prefix, [seq[0], seq[-1]])
        drain(w)
        before = row(shard_conn, T1, key)
        push(redis, prefix, [seq[1], seq[2]])
        drain(w)
        after = row(shard_conn, T1, key)
        assert before["close_reason"] == "stop" and after == before

    def test_gigaword_counters_are_exact(self, make_writer, redis, shard_conn):
        """64-bit counters past 4 GiB (Gigawords folded in) are stored to the byte, up to the
        plausible maximum of the counter rules (2^50)."""
        prefix, key, ts = new_prefix(), new_key(), time.time() - 60
        big_in, big_out = 7 * 2**32 + 123, 2**50 - 3
        push(redis, prefix, [acct(T3, key, "interim", ts, session_time_s=60, in_octets=big_in,
                                  out_octets=big_out)])
        drain(make_writer(prefix))
        r = row(shard_conn, T3, key)
        assert (r["input_octets"], r["output_octets"]) == (big_in, big_out)

    def test_replaying_a_batch_changes_nothing(self, make_writer, redis, shard_conn):
        """The same records written again (a crash between commit and XACK) leave every column as it was."""
        prefix, t0 = new_prefix(), time.time() - 1800
        keys = [new_key() for _ in range(3)]
        records = [r for k in keys for r in session_records(T2, k, t0, steps=1)[:-1]]  # open sessions
        w = make_writer(prefix)
        push(redis, prefix, records)
        drain(w)
        before = [row(shard_conn, T2, k) for k in keys]
        push(redis, prefix, list(reversed(records)))
        drain(w)
        assert [row(shard_conn, T2, k) for k in keys] == before

    def test_accounting_on_closes_the_nas_sessions(self, make_writer, redis, shard_conn):
        """Accounting-On closes, in LIMIT-ed rounds, the NAS's sessions that started before it; no others."""
        prefix, now = new_prefix(), time.time()
        nas, other_nas = random.randrange(10**9, 10**12), random.randrange(10**12, 10**13)
        on_ts = now - 300
        before = [new_key("b") for _ in range(5)]
        records = [acct(T3, k, "interim", now - 400, session_time_s=100, nas_id=nas) for k in before]
        other = new_key("o")
        after = new_key("a")
        records += [acct(T3, other, "start", now - 900, nas_id=other_nas),
                    acct(T3, after, "start", now - 200, nas_id=nas)]
        w = make_writer(prefix, close_batch_rows=2)
        push(redis, prefix, records)
        drain(w)
        on = acct(T3, "", "on", on_ts, nas_id=nas)
        on.update(session_key="", acct_session_id="", username="")
        push(redis, prefix, [on])
        drain(w)
        for k in before:
            r = row(shard_conn, T3, k)
            assert r["close_reason"] == "nas-restart" and r["stopped"] == pytest.approx(on_ts, abs=1e-3)
        assert row(shard_conn, T3, other)["stopped_at"] is None
        assert row(shard_conn, T3, after)["stopped_at"] is None
        assert w.stats.sessions_closed["nas-restart"] == 5
        # A late Interim of a closed session does not reopen it.
        push(redis, prefix, [acct(T3, before[0], "interim", now - 350, session_time_s=150, nas_id=nas)])
        drain(w)
        assert row(shard_conn, T3, before[0])["close_reason"] == "nas-restart"

    def test_stale_sessions_are_closed_and_reopened_by_late_interims(self, make_writer, redis, shard_conn):
        """Silent for 2 interims + grace: closed as stale; a later event reopens it; a Stop ends it."""
        prefix, now = new_prefix(), time.time()
        silent, fresh = new_key("silent"), new_key("fresh")
        push(redis, prefix, [acct(T1, silent, "interim", now - 3600, session_time_s=60, interim_s=60),
                             acct(T1, fresh, "interim", now - 10, session_time_s=60, interim_s=60)])
        w = make_writer(prefix, stale_grace_s=60, close_batch_rows=1)
        drain(w)
        assert w.close_stale() >= 1
        r = row(shard_conn, T1, silent)
        assert r["close_reason"] == "stale" and r["stopped_at"] == r["updated_at"]
        assert row(shard_conn, T1, fresh)["stopped_at"] is None
        push(redis, prefix, [acct(T1, silent, "interim", now - 30, session_time_s=3630, interim_s=60)])
        drain(w)
        r = row(shard_conn, T1, silent)
        assert r["stopped_at"] is None and r["close_reason"] is None and r["session_time_s"] == 3630
        push(redis, prefix, [acct(T1, silent, "stop", now - 5, session_time_s=3655, interim_s=60)])
        drain(w)
        assert row(shard_conn, T1, silent)["close_reason"] == "stop"

    def test_auth_log_rows_are_written_once(self, make_writer, redis, shard_conn):
        """Auth-log records land once, even replayed, and a missing day partition is created."""
        prefix, now = new_prefix(), time.time()
        old_ts = now - 12 * 86400  # outside the partitions the migration made
        base = {"nas_id": 1, "calling_station_id": "AA-BB", "result": "accept", "reason": "ok",
                "method": "pap"}
        events = [{**base, "tenant_id": t, "ts": ts, "event_id": uuid.uuid4().hex, "username": f"u{i}"}
                  for i, (t, ts) in enumerate([(T1, now - 5), (T3, now - 4), (T1, old_ts)])]
        events[1]["result"], events[1]["reason"] = "reject", "bad_password"
        w = make_writer(prefix)
        push(redis, prefix, events, kind=wire.KIND_AUTH)
        drain(w)
        push(redis, prefix, events, kind=wire.KIND_AUTH)
        drain(w)
        for e in events:
            n = shard_conn(e["tenant_id"]).execute(
                "SELECT count(*) FROM auth_log WHERE tenant_id = %s AND event_id = %s",
                (e["tenant_id"], e["event_id"])).fetchone()[0]
            assert n == 1
        day = time.strftime("%Y%m%d", time.gmtime(old_ts))
        made = shard_conn(T1).execute("SELECT to_regclass(%s) IS NOT NULL", (f"auth_log_{day}",))
        assert made.fetchone()[0]
        assert w.stats.records["auth"] == 6
        # The NAS-to-row metric: each written record's age at commit, from its ts.
        ages = sorted(w.stats.recent_record_ages)
        assert w.stats.record_age_seconds.count == 6 and len(ages) == 6
        assert 4 <= ages[0] < 60 and ages[-1] >= 12 * 86400


# -------------------------------------------------------------- dead letters
class TestDeadLetters:
    def test_bad_entries_go_to_the_dead_letter_stream_at_once(self, make_writer, redis, shard_conn):
        """Undecodable, malformed, absurd or unroutable entries are dead-lettered and acked at once."""
        prefix, now = new_prefix(), time.time()
        good = new_key("good")

        def bad(**change: Any) -> dict:
            return {**acct(T1, new_key("bad"), "interim", now - 60), **change}
        no_key = bad()
        del no_key["session_key"]
        entries: list[Any] = [
            (T1, b"\xc1\xc1 not msgpack"),
            (T1, wire.msgpack.packb([9, "acct", {}])),
            (T1, {"x": b"no d field"}),
            no_key,
            bad(event_ts=100.0),
            bad(event_ts=now + 30 * 86400),
            bad(username="nul\x00"),
            bad(tenant_id=T_NO_SHARD),
            bad(tenant_id=T_MISSING),
            acct(T1, good, "interim", now - 60, session_time_s=60, in_octets=1),
        ]
        push(redis, prefix, [e if isinstance(e, tuple) else (e["tenant_id"], wire.pack("acct", e))
                             for e in entries])
        w = make_writer(prefix)
        drain(w)
        dead = dead_letters(redis, prefix)
        assert len(dead) == len(entries) - 1
        reasons = [d[b"reason"].decode() for d in dead]
        for words in ("undecodable", "version", "'d' field", "session_key",
                      "event_ts", "future", "NUL", "in no shard", f"tenant {T_MISSING} does not exist"):
            assert any(words in r for r in reasons), (words, reasons)
        streams = {Keys(prefix, PARTITIONS).stream(b).encode() for b in range(PARTITIONS)}
        assert all(d[b"source"].rsplit(b"/", 1)[0] in streams for d in dead)
        undecodable = [d for d in dead if d[b"reason"].startswith(b"undecodable")]
        assert undecodable[0][b"d"].startswith(b"\xc1\xc1")  # the payload as received
        assert pending(redis, prefix) == 0
        assert row(shard_conn, T1, good)["input_octets"] == 1
        assert w.stats.dead_letters == {"decode": 2, "invalid": 5, "unknown_tenant": 2}

    def test_implausible_counters_are_stored_refused_not_dead_lettered(self, make_writer, redis,
                                                                       shard_conn):
        """The counter rule: a record with a counter above its plausible maximum (Gigawords
        2^31-1, Session-Time 2^32-1, a negative value) is stored with that counter refused
        and flagged, the row keeping what it had (before: stored 2^63-1, or dead-lettered)."""
        prefix, now = new_prefix(), time.time()
        key = new_key()
        push(redis, prefix, [acct(T1, key, "interim", now - 120, session_time_s=60, in_octets=1000,
                                  out_octets=2000)])
        drain(make_writer(prefix))
        push(redis, prefix, [acct(T1, key, "interim", now - 60, session_time_s=2**32 - 1,
                                  in_octets=((2**31 - 1) << 32) | 7, out_octets=3000)])
        w = make_writer(prefix)
        drain(w)
        assert dead_letters(redis, prefix) == []
        r = shard_conn(T1).execute("SELECT input_octets, output_octets, session_time_s, counter_flags "
                                   "FROM sessions WHERE tenant_id = %s AND session_key = %s",
                                   (T1, key)).fetchone()
        assert r == (1000, 3000, 60, 1)
        assert w.stats.counter_flags == {"refused": 1}

    def test_new_columns_nas_restart_cause_and_no_address(self, make_writer, redis, shard_conn):
        """NAS-Port-Id, Called-Station-Id, NAS-Identifier are kept; 0.0.0.0 from a Start gives
        way to the Interim's address; a session closed by Accounting-On gets 'NAS-Reboot'."""
        prefix, now = new_prefix(), time.time()
        key, nas = new_key(), random.randint(10**6, 10**9)
        line = {"nas_port_id": "eth 0/1/0:100.200", "called_station_id": "aa-bb-cc-dd-ee-ff:Cafe",
                "nas_identifier": "bras-1"}
        push(redis, prefix, [acct(T1, key, "start", now - 120, nas_id=nas, framed_ip="0.0.0.0", **line)])
        drain(make_writer(prefix))
        push(redis, prefix, [acct(T1, key, "interim", now - 60, nas_id=nas, session_time_s=60,
                                  framed_ip="10.9.8.7")])
        drain(make_writer(prefix))
        push(redis, prefix, [{**acct(T1, "", "on", now - 30, nas_id=nas), "session_key": "",
                              "acct_session_id": "", "username": ""}])
        drain(make_writer(prefix))
        r = shard_conn(T1).execute(
            "SELECT host(framed_ip), nas_port_id, called_station_id, nas_identifier, close_reason, "
            "terminate_cause FROM sessions WHERE tenant_id = %s AND session_key = %s", (T1, key)).fetchone()
        assert r == ("10.9.8.7", *line.values(), "nas-restart", "NAS-Reboot")

    def test_an_entry_delivered_many_times_is_written_not_dead_lettered(self, make_writer, redis, shard_conn):
        """Deliveries (restarts, re-reads, claims) never count against a record: one handed out
        far more than max_attempts times is written once its shard takes it, never dead-lettered."""
        prefix, key = new_prefix(), new_key()
        push(redis, prefix, [acct(T2, key, "interim", time.time() - 60)])
        w = make_writer(prefix, max_attempts=2)
        w.streams.ensure_groups()
        stream = Keys(prefix).stream(partition_of(T2, PARTITIONS))
        consumer = w.cfg.consumer
        redis.xreadgroup("writers", consumer, {stream: ">"})   # delivery 1 ... then "crashes"
        for _ in range(6):
            redis.xreadgroup("writers", consumer, {stream: "0"})   # re-reads after restarts
        drain(w)                                              # and this start's re-read
        assert dead_letters(redis, prefix) == []
        assert row(shard_conn, T2, key) is not None and pending(redis, prefix) == 0

    def test_a_record_the_shard_refuses_is_isolated(self, make_writer, redis, shard_conn, stack):
        """When the shard rejects one row (data error), that record alone is dead-lettered; the rest pass."""
        prefix, now = new_prefix(), time.time()
        poison = new_key("poison")
        keys = [new_key() for _ in range(9)]
        records = [acct(T1, k, "interim", now - 60, in_octets=i) for i, k in enumerate(keys)]
        records.insert(4, acct(T1, poison, "interim", now - 60))
        admin = psycopg.connect(stack.pg[0].dsn(), autocommit=True)
        try:
            admin.execute(psycopg.sql.SQL("ALTER TABLE sessions ADD CONSTRAINT {} CHECK (session_key <> {})")
                          .format(psycopg.sql.Identifier("test_poison"), psycopg.sql.Literal(poison)))
            push(redis, prefix, records)
            drain(make_writer(prefix))
        finally:
            admin.execute("ALTER TABLE sessions DROP CONSTRAINT IF EXISTS test_poison")
            admin.close()
        dead = dead_letters(redis, prefix)
        assert len(dead) == 1 and b"test_poison" in dead[0][b"reason"]
        assert [row(shard_conn, T1, k)["input_octets"] for k in keys] == list(range(9))
        assert row(shard_conn, T1, poison) is None and pending(redis, prefix) == 0


    def test_many_refused_records_are_held_not_dead_lettered(self, make_writer, redis, shard_conn, stack):
        """A constraint that refuses many records of a batch holds them pending; fixed, they are written."""
        prefix, now = new_prefix(), time.time()
        tag = "mass" + uuid.uuid4().hex[:8]
        keys = [f"{tag}-{i}" for i in range(30)]
        w = make_writer(prefix, backoff_max_s=1)
        admin = psycopg.connect(stack.pg[0].dsn(), autocommit=True)
        try:
            check = psycopg.sql.SQL("ALTER TABLE sessions ADD CONSTRAINT {} CHECK (session_key NOT LIKE {})")
            admin.execute(check.format(psycopg.sql.Identifier("test_mass"), psycopg.sql.Literal(tag + "%")))
            push(redis, prefix, [acct(T2, k, "interim", now - 60) for k in keys])
            for _ in range(3):
                w.run_once()
            w.flush()
            assert dead_letters(redis, prefix) == [] and pending(redis, prefix) == 30
            assert w.stats.shard_errors["shard1"] >= 1
        finally:
            admin.execute("ALTER TABLE sessions DROP CONSTRAINT IF EXISTS test_mass")
            admin.close()
        time.sleep(1.1)  # the shard's backoff
        drain(w)
        assert pending(redis, prefix) == 0 and all(row(shard_conn, T2, k) for k in keys)


# ------------------------------------------------------------------ recovery
class TestRecovery:
    def test_a_stopped_shard_does_not_block_the_other(self, private_stack):
        """With shard2 down, shard1 keeps flowing; shard2's records stay pending and drain on recovery."""
        stack, prefix, t0 = private_stack, new_prefix(), time.time() - 1800
        k1, k3, k1b = new_key(), new_key(), new_key()
        settings, cfg = load(writer_env(stack, prefix, backoff_max_s=1, connect_timeout_s=2,
                                        batch_max_rows=4))  # four a batch: the sweep takes pages
        w = Writer(settings, cfg)
        r = redis_lib.Redis.from_url(stack.redis.url)
        shard1 = psycopg.connect(stack.pg[0].dsn(), autocommit=True)
        try:
            try:
                stack.pg[1].stop()
                push(r, prefix, session_records(T1, k1, t0) + session_records(T3, k3, t0))
                for _ in range(10):
                    w.run_once()
                w.flush()
                assert row(lambda _t: shard1, T1, k1)["close_reason"] == "stop"
                assert pending(r, prefix) == 5  # shard2's five records, not acknowledged
                assert w.stats.shards_down["shard2"] and w.stats.shard_errors["shard2"] >= 1
                # Still down, and its backoff over (a retry probes it): shard1 keeps flowing.
                time.sleep(1.1)
                push(r, prefix, session_records(T1, k1b, t0))
                for _ in range(10):
                    w.run_once()
                w.flush()
                assert row(lambda _t: shard1, T1, k1b)["close_reason"] == "stop"
                assert pending(r, prefix) == 5
            finally:
                stack.pg[1].start()
            deadline = time.monotonic() + 30
            while pending(r, prefix) and time.monotonic() < deadline:
                w.run_once()
                time.sleep(0.05)
            w.flush()
            with psycopg.connect(stack.pg[1].dsn(), autocommit=True) as shard2:
                got = row(lambda _t: shard2, T3, k3)
            assert got["close_reason"] == "stop"
            assert (got["input_octets"], got["output_octets"]) == (4000, 12000)
            assert pending(r, prefix) == 0 and dead_letters(r, prefix) == []
            assert not w.stats.shards_down["shard2"]
        finally:
            w.close()
            shard1.close()
            r.close()

    def test_entries_of_a_dead_writer_are_claimed(self, make_writer, redis, shard_conn):
        """Entries held by a consumer without a heartbeat are claimed after the idle time and written."""
        prefix, key = new_prefix(), new_key()
        push(redis, prefix, session_records(T4, key, time.time() - 1800))
        w = make_writer(prefix, claim_min_idle_ms=100, claim_interval_s=1)
        w.streams.ensure_groups()
        stream = Keys(prefix).stream(partition_of(T4, PARTITIONS))
        assert len(redis.xreadgroup("writers", "ghost", {stream: ">"})[0][1]) == 5
        time.sleep(1.1)  # past the idle time and the claim interval
        drain(w)
        assert w.stats.claimed == 5
        assert row(shard_conn, T4, key)["close_reason"] == "stop" and pending(redis, prefix) == 0
        time.sleep(1.1)  # the next pass removes the empty, dead consumer
        drain(w)
        assert "ghost" not in [c["name"].decode() for c in redis.xinfo_consumers(stream, "writers")]

    def test_a_live_writers_entries_are_left_alone(self, make_writer, redis, shard_conn):
        """Entries held by a writer whose heartbeat is fresh (e.g. waiting for its shard) are not claimed."""
        prefix, key = new_prefix(), new_key()
        push(redis, prefix, session_records(T1, key, time.time() - 1800))
        w = make_writer(prefix, claim_min_idle_ms=100, claim_interval_s=1)
        w.streams.ensure_groups()
        stream = Keys(prefix).stream(partition_of(T1, PARTITIONS))
        redis.xreadgroup("writers", "busy", {stream: ">"})
        redis.set(w.streams.heartbeat_key("busy"), "{}", ex=30)
        time.sleep(1.1)
        drain(w)
        assert w.stats.claimed == 0 and pending(redis, prefix) == 5 and row(shard_conn, T1, key) is None
        info = redis.xpending_range(stream, "writers", "-", "+", 10)
        assert {p["consumer"] for p in info} == {b"busy"} and {p["times_delivered"] for p in info} == {1}

    def test_a_restarted_writer_takes_its_own_entries_back(self, make_writer, redis, shard_conn):
        """Entries a consumer held when it died are re-read by the next writer of that name at once."""
        prefix, key = new_prefix(), new_key()
        push(redis, prefix, session_records(T3, key, time.time() - 1800))
        w = make_writer(prefix)
        w.streams.ensure_groups()
        stream = Keys(prefix).stream(partition_of(T3, PARTITIONS))
        redis.xreadgroup("writers", w.cfg.consumer, {stream: ">"})  # read, then "killed"
        drain(w)
        assert row(shard_conn, T3, key)["close_reason"] == "stop" and pending(redis, prefix) == 0
        assert dead_letters(redis, prefix) == []


    def test_an_entry_delivered_to_a_running_writer_without_reaching_it_is_written(
            self, make_writer, redis, shard_conn, monkeypatch):
        """An XREADGROUP whose entries never reached the writer (a cluster master killed
        after it ran, a timed-out reply that redis-py asked again) leaves them in the
        writer's own pending list, where `>` never gives them again: with no shard down,
        an own entry pending past LOST_IDLE_MS is swept and written."""
        monkeypatch.setattr(worker, "LOST_IDLE_MS", 200, raising=False)
        prefix, key = new_prefix(), new_key()
        w = make_writer(prefix, claim_interval_s=1)
        drain(w)  # running: its start-up re-read of its own entries is done
        push(redis, prefix, session_records(T2, key, time.time() - 1800))
        stream = Keys(prefix).stream(partition_of(T2, PARTITIONS))
        redis.xreadgroup("writers", w.cfg.consumer, {stream: ">"})  # the reply "lost"
        time.sleep(1.1)  # past the idle time and the claim interval
        drain(w)
        assert row(shard_conn, T2, key)["close_reason"] == "stop" and pending(redis, prefix) == 0


# ---------------------------------------------------------------- operations
class TestOperations:
    def test_metrics_are_served_on_loopback(self, make_writer, redis):
        """The exporter on its own loopback port shows records by kind, lag, pending and shard state."""
        prefix, port = new_prefix(), free_port()
        w = make_writer(prefix, metrics_port=port)
        push(redis, prefix, session_records(T1, new_key(), time.time() - 1800) + [(T1, b"junk")])
        drain(w)
        w._next_measure = 0  # refresh the gauges now rather than in 5 s
        w.run_once()
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        for line in ('wificore_writer_records_total{kind="start"} 1.0',
                     'wificore_writer_records_total{kind="interim"} 3.0',
                     'wificore_writer_dead_letters_total{reason="decode"} 1.0',
                     'wificore_writer_stream_pending{partition="0"} 0.0',
                     'wificore_writer_shard_up{shard="shard2"} 1.0',
                     'wificore_writer_dead_letter_length 1.0'):
            assert line in body, line
        assert "wificore_writer_batch_seconds_bucket" in body and "wificore_writer_stream_lag" in body

    def test_the_heartbeat_has_a_ttl_and_goes_on_close(self, make_writer, redis):
        """The heartbeat key lives heartbeat_ttl_s, is refreshed by the loop and deleted on a clean stop."""
        prefix = new_prefix()
        w = make_writer(prefix, heartbeat_ttl_s=7)
        w.run_once()
        key = w.streams.heartbeat_key()
        assert 0 < redis.ttl(key) <= 7
        assert json.loads(redis.get(key))["pid"] > 0
        w.close()
        assert not redis.exists(key)

    def test_a_deleted_stream_and_group_are_recreated(self, make_writer, redis, shard_conn):
        """If someone deletes the streams, the loop recreates stream and group and reads what comes next."""
        prefix, key = new_prefix(), new_key()
        w = make_writer(prefix)
        w.run_once()
        redis.delete(*[Keys(prefix).stream(p) for p in range(PARTITIONS)])
        push(redis, prefix, [acct(T2, key, "interim", time.time() - 60, in_octets=42)])
        w.burst = True
        w._next_measure = 0  # the gauges' pass meets the missing group first
        guard = threading.Timer(20, w.stop)  # bounded even if recovery never comes
        guard.start()
        try:
            assert w.run() == 0
        finally:
            guard.cancel()
        assert row(shard_conn, T2, key)["input_octets"] == 42 and w.stats.redis_errors >= 1

    def test_acknowledged_entries_are_trimmed(self, make_writer, redis):
        """Streams do not grow without bound: entries older than the oldest pending one are trimmed."""
        prefix = new_prefix()
        records = [acct(T1, new_key(), "interim", time.time() - 60) for _ in range(3000)]
        push(redis, prefix, records)
        w = make_writer(prefix)
        drain(w)
        w._next_measure = 0
        w.run_once()
        stream = Keys(prefix).stream(partition_of(T1, PARTITIONS))
        assert redis.xlen(stream) < 3000  # MINID ~ drops whole nodes (100 entries each by default)


def test_benchmark_smoke(writer_tenants):
    """benchmarks/writer_bench.py --smoke runs, verifies its own result and prints JSON."""
    s = writer_tenants
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "writer_bench.py"), "--smoke",
                          "--redis", s.redis.url, "--shard-map", str(s.shard_map)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["verified"] and result["acked"] == result["records"] == 2000
    assert result["records_per_s"] > 0 and result["dead_letters"] == 0


class TestThroughLiveScript:
    """Records through live.lua (real Redis) then the writer (real shards): Redis usage and
    PostgreSQL agree under the counter rules, and a reused session id gets its own row."""

    @staticmethod
    def through_live(redis, prefix: str, now: float, records: list[dict]) -> None:
        import struct as _struct

        from rlm_wificore.background import _LIVE_LUA, SESSION_TTL_S, USAGE_TTL_S
        from rlm_wificore.spool import MAX_RECORD
        span = b"".join(_struct.pack("<I", len(p)) + p for p in (wire.pack(wire.KIND_ACCT, r) for r in records))
        n, _consumed, _ended, corrupt = redis.register_script(_LIVE_LUA)(
            args=[prefix, PARTITIONS, now, 2, SESSION_TTL_S, USAGE_TTL_S, MAX_RECORD, span])
        assert (n, corrupt) == (len(records), 0)

    @staticmethod
    def rows(shard_conn, key_prefix: str) -> list[tuple]:
        return shard_conn(T1).execute(
            "SELECT session_key, input_octets, output_octets, session_time_s, close_reason, counter_flags "
            "FROM sessions WHERE tenant_id = %s AND session_key LIKE %s ORDER BY started_at",
            (T1, key_prefix + ":%")).fetchall()

    def test_redis_usage_and_rows_agree_and_a_reused_id_is_a_new_row(self, make_writer, redis, shard_conn):
        prefix, now = new_prefix(), time.time()
        key, user = new_key(), "agree-" + uuid.uuid4().hex[:6]
        t0 = now - 3000

        def rec(status, ev, t, i, o):
            return acct(T1, key, status, ev, session_time_s=t, in_octets=i, out_octets=o, username=user,
                        arrival_ts=ev)
        # Session 1: a 32-bit wrap without Gigawords, an implausible Gigawords, a late copy, a Stop.
        self.through_live(redis, prefix, t0 + 180, [
            rec("start", t0, 0, 0, 0), rec("interim", t0 + 60, 60, 4_000_000_000, 1000),
            rec("interim", t0 + 120, 120, 500, 2000),
            rec("interim", t0 + 150, 150, ((2**31 - 1) << 32) | 1, 2500),
            rec("interim", t0 + 60, 60, 4_000_000_000, 1000),
            rec("stop", t0 + 180, 180, 900, 3000)])
        # Session 2: the NAS reuses the id after the Stop.
        t1 = t0 + 1000
        self.through_live(redis, prefix, t1 + 60, [rec("start", t1, 0, 0, 0), rec("interim", t1 + 60, 60, 70, 30)])
        drain(make_writer(prefix))
        rows = self.rows(shard_conn, key)
        assert rows == [
            (f"{key}:{int(t0):x}", 4_000_000_900, 3000, 180, "stop", 3),
            (f"{key}:{int(t1):x}", 70, 30, 60, None, 0),
        ]
        used = state.usage_field(redis, Keys(prefix, PARTITIONS), T1, user, "octets")
        assert int(used) == sum(r[1] + r[2] for r in rows)
        redis.delete(*redis.keys(f"{prefix}:*"))


class TestStreamsBeforeTheBuckets:
    def test_entries_of_the_old_partitions_are_drained(self, make_writer, redis, shard_conn):
        """One Redis upgraded with records in the partitions of before 2026-12-01
        (``{prefix}:stream:{N}``): the writer reads them beside the buckets' streams, and one
        that a radiusd not yet upgraded creates later is found at the next measurement."""
        prefix, now = new_prefix(), time.time()
        keys = Keys(prefix, PARTITIONS)
        k1, k2 = new_key(), new_key()
        try:
            redis.xadd(keys.legacy_stream(partition_of(T1, PARTITIONS)),
                       {"d": wire.pack("acct", acct(T1, k1, "interim", now - 60, session_time_s=60, in_octets=5))})
            w = make_writer(prefix)
            drain(w)
            r1 = row(shard_conn, T1, k1)
            assert r1 is not None and r1["input_octets"] == 5
            redis.xadd(keys.legacy_stream(partition_of(T2, PARTITIONS)),
                       {"d": wire.pack("acct", acct(T2, k2, "interim", now - 30, session_time_s=30, in_octets=7))})
            w._next_measure = 0.0  # measure now: the new old stream is found
            w._housekeeping()
            drain(w)
            r2 = row(shard_conn, T2, k2)
            assert r2 is not None and r2["input_octets"] == 7
            assert all(int(redis.xpending(keys.legacy_stream(p), "writers")["pending"]) == 0
                       for p in {partition_of(T1, PARTITIONS), partition_of(T2, PARTITIONS)})
        finally:
            redis.delete(*[keys.legacy_stream(p) for p in range(PARTITIONS)])
