"""A short, bounded fault soak of the accounting path behind radiusd.

Accounting records arrive at a steady rate into the stream partitions (what
radiusd's accounting hook does before it answers: every record pushed here
counts as answered). Meanwhile shard2 is frozen (SIGSTOP of its postmaster and
every backend: a hung shard, the harder case, since a query on it never
returns) for about 25 s, and the writer process is killed 6 times during the
outage, SIGKILL and SIGTERM in turn. After SIGCONT and the drain:

* every session is present exactly once, with its last counters and stop time
  (benchmarks.writer_bench.verify),
* no dead letter (an outage or a restart never counts against a record),
* every SIGTERM exited 0 in bounded time (a hung shard does not block a stop),
* shard1 kept taking records while shard2 was frozen (shard isolation).

On the writer of 2026-11-30 this fails: entries held for the frozen shard are
re-read at every restart, their delivery count passes max_attempts and they
are dead-lettered; and the writer waits for the frozen shard for ever.

Bounded: ~30,000 records, the feeder stops after FEED_S, the drain has a
deadline; every process is stopped by its PID in a ``finally``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid

import psycopg
import pytest

from benchmarks.writer_bench import partition_of, verify, workload
from rlm_wificore.keys import Keys
from rlm_wificore.shardmap import ShardMap
from tests.test_batch_writer import PARTITIONS, T1, T2, T3, T4, new_prefix, own_stack
from tests.test_batch_writer_process import remaining, start_writer, wait_until

TENANTS = [T1, T2, T3, T4]
SESSIONS = int(os.environ.get("WIFICORE_TEST_SOAK_SESSIONS", "3000"))  # x 10 records
FEED_S = 30.0         # the records arrive over this long, at a steady rate
OUTAGE_AT_S = 3.0     # shard2 is frozen this long after the start ...
OUTAGE_S = 25.0       # ... for this long
RESTARTS = 6          # writer kills during the outage: SIGKILL, SIGTERM, SIGKILL, ...
DRAIN_TIMEOUT_S = 90.0


@pytest.fixture(scope="module")
def stack():
    with own_stack() as s:
        yield s


def _cluster_pids(pg) -> list[int]:
    """The postmaster first, then its children (backends, background workers)."""
    master = pg.pid
    assert master, "shard2 is not running"
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(master)], capture_output=True, text=True)
    return [master] + [int(p) for p in out.stdout.split()]


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _progress_on(pg, run_id: str) -> int:
    with psycopg.connect(pg.dsn(), autocommit=True, connect_timeout=5) as conn:
        return conn.execute("SELECT coalesce(sum(session_time_s), 0) FROM sessions WHERE session_key LIKE %s",
                            (run_id + "-%",)).fetchone()[0]


def test_shard_hung_while_the_writer_restarts_loses_and_dead_letters_nothing(stack, redis):
    prefix, run_id = new_prefix(), "soak" + uuid.uuid4().hex[:8]
    records, expected = workload(TENANTS, SESSIONS, run_id=run_id, base_ts=time.time() - 3600)
    keys = Keys(prefix)
    knobs = {"batch_max_rows": 1000, "shard_deadline_s": 5, "backoff_max_s": 2}

    # The feeder: a steady rate over FEED_S (a radiusd answering its NAS).
    fed = [0]
    feed_error: list[BaseException] = []

    def feed() -> None:
        try:
            chunk = max(1, len(records) // int(FEED_S * 10))
            t0 = time.monotonic()
            for i in range(0, len(records), chunk):
                pipe = redis.pipeline(transaction=False)
                for tenant, payload in records[i:i + chunk]:
                    pipe.xadd(keys.stream(partition_of(tenant, PARTITIONS)), {"d": payload})
                pipe.execute()
                fed[0] = i + chunk
                time.sleep(max(0.0, t0 + (i // chunk + 1) * 0.1 - time.monotonic()))
        except BaseException as exc:  # reported by the test, not lost in the thread
            feed_error.append(exc)

    shard2 = stack.pg[1]
    frozen: list[int] = []
    writer = None
    term_codes: list[int | None] = []
    feeder = threading.Thread(target=feed, name="soak-feeder", daemon=True)
    try:
        writer = start_writer(stack, prefix, "soak", **knobs)
        feeder.start()
        time.sleep(OUTAGE_AT_S)
        frozen = _cluster_pids(shard2)
        _signal_all(frozen, signal.SIGSTOP)
        outage_started = time.monotonic()
        shard1_before = _progress_on(stack.pg[0], run_id)
        for k in range(RESTARTS):
            time.sleep(OUTAGE_S / (RESTARTS + 1))
            sig = signal.SIGKILL if k % 2 == 0 else signal.SIGTERM
            code = writer.stop(sig, timeout_s=30)
            if sig == signal.SIGTERM:
                term_codes.append(code)
            writer = start_writer(stack, prefix, "soak", **knobs)
        time.sleep(max(0.0, outage_started + OUTAGE_S - time.monotonic()))
        shard1_during = _progress_on(stack.pg[0], run_id)
        _signal_all(list(reversed(frozen)), signal.SIGCONT)
        frozen = []
        feeder.join(timeout=FEED_S + 30)
        assert not feeder.is_alive() and not feed_error, feed_error
        assert fed[0] >= len(records)
        wait_until(lambda: remaining(redis, prefix) == 0, DRAIN_TIMEOUT_S, "draining after the outage", 0.2)
        code = writer.stop(signal.SIGTERM, timeout_s=30)
        writer = None
        term_codes.append(code)
    finally:
        if frozen:
            _signal_all(list(reversed(frozen)), signal.SIGCONT)
        if writer is not None:
            writer.stop(signal.SIGKILL)
    dead = redis.xrange(keys.dead_letter, count=5)
    assert redis.xlen(keys.dead_letter) == 0, (redis.xlen(keys.dead_letter), dead)
    ok, detail = verify(ShardMap.load(stack.shard_map), run_id, expected)
    assert ok, detail
    assert term_codes == [0] * len(term_codes), term_codes
    assert shard1_during > shard1_before, (
        f"shard1 took nothing while shard2 was hung (session time {shard1_before} -> {shard1_during})")
