"""The wificore-batch-writer process: SIGKILL, SIGTERM, two writers, --check.

Writers run as real processes (stack.servers.BatchWriter), each stopped by its
PID in a ``finally``. The workload is benchmarks.writer_bench.workload: every
session's final counters are known by construction, so "exactly once" is
checked row by row (writer_bench.verify).

These tests push tens of thousands of records: they run on a stack of their
own (``own_stack``), so the session stack's Redis, whose restart other
tests time, does not have to reload them.

WIFICORE_TEST_KILL_RECORDS sets the size of the SIGKILL run (default 50,000
records plus 5% auth-log records; the issue's full size is 200,000).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
import uuid
from typing import Any

import psycopg
import pytest

from benchmarks.writer_bench import push as push_workload
from benchmarks.writer_bench import verify, workload
from stack.servers import BatchWriter, venv_bin
from tests.test_batch_writer import (
    PARTITIONS,
    T1,
    T2,
    T3,
    T4,
    new_prefix,
    own_stack,
    writer_env,
)
from wificore.keys import Keys
from wificore.shardmap import ShardMap

KILL_RECORDS = int(os.environ.get("WIFICORE_TEST_KILL_RECORDS", "50000"))
TENANTS = [T1, T2, T3, T4]


def remaining(redis, prefix: str) -> int:
    """Entries not yet acknowledged by the group: never delivered (lag) plus pending."""
    keys = Keys(prefix, PARTITIONS)
    total = 0
    for name in [keys.stream(p) for p in range(PARTITIONS)] + [keys.legacy_stream(p) for p in range(PARTITIONS)]:
        groups = redis.xinfo_groups(name) if redis.exists(name) else []
        group = next((g for g in groups if g["name"] == b"writers"), None)
        if group is None:
            total += redis.xlen(name)
            continue
        lag = group.get("lag")
        if lag is None:  # Redis cannot tell: count what follows the last delivered entry
            lag = len(redis.xrange(name, b"(" + group["last-delivered-id"], "+"))
        total += int(lag) + int(group["pending"])
    return total


def wait_until(check, timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval_s)
    raise AssertionError(f"{what} did not happen within {timeout_s:.0f} s")


def start_writer(stack, prefix: str, name: str, **knobs: Any) -> BatchWriter:
    env = writer_env(stack, prefix, consumer=name, **knobs)
    w = BatchWriter(stack.state, env, name=f"bw-{prefix}-{name}")
    w.start()
    return w


def auth_rows(stack, run_id: str) -> int:
    total = 0
    for pg in stack.pg:
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            total += conn.execute("SELECT count(*) FROM auth_log WHERE event_id LIKE %s",
                                  (run_id + "-%",)).fetchone()[0]
    return total


def acked_by(writer: BatchWriter) -> int:
    """The 'acked' count of the writer's final log line (writer_stopped)."""
    for line in reversed(writer.logfile.read_text(errors="replace").splitlines()):
        if '"writer_stopped"' in line:
            return int(json.loads(line)["acked"])
    raise AssertionError(f"no writer_stopped line in {writer.logfile}:\n{writer.log_tail()}")


@pytest.fixture(scope="module")
def stack():
    """This module's own stack (overrides the session one here, conftest's `redis` included)."""
    with own_stack() as s:
        yield s


class TestWriterProcess:
    def test_sigkill_five_times_loses_and_doubles_nothing(self, stack, redis):
        """Killed with SIGKILL 5 times mid-run, the writer ends with every session once, counters exact."""
        prefix, run_id = new_prefix(), "kill" + uuid.uuid4().hex[:8]
        records, expected = workload(TENANTS, KILL_RECORDS // 10, run_id=run_id, base_ts=time.time() - 3600,
                                     auth_every=20)
        n_auth = len(records) - KILL_RECORDS
        push_workload(redis, prefix, records, PARTITIONS)
        rng = random.Random(5)
        kills_with_work_left = 0
        writer = None
        try:
            for k in range(1, 6):
                # Kills spread over the run: the k-th once about k/7 of it is done, give or take.
                target = len(records) * (1 - k / 7) + rng.uniform(-1000, 1000)
                writer = start_writer(stack, prefix, "killme", batch_max_rows=1000)
                wait_until(lambda t=target: remaining(redis, prefix) < t, 60, "progress", 0.01)
                left = remaining(redis, prefix)
                writer.stop(signal.SIGKILL)
                writer = None
                kills_with_work_left += left > 0
                print(f"SIGKILL with {left} of {len(records)} entries left")
            assert kills_with_work_left == 5, "the run was too small to kill the writer mid-way"
            writer = start_writer(stack, prefix, "killme", batch_max_rows=1000)
            wait_until(lambda: remaining(redis, prefix) == 0, 120, "draining after the kills", 0.2)
            assert writer.stop(signal.SIGTERM) == 0, writer.log_tail()
            writer = None
        finally:
            if writer is not None:
                writer.stop(signal.SIGKILL)
        ok, detail = verify(ShardMap.load(stack.shard_map), run_id, expected)
        assert ok, detail
        assert auth_rows(stack, run_id) == n_auth
        assert sum(redis.xlen(d) for d in Keys(prefix).dead_letters) == 0

    def test_sigterm_exits_zero_and_loses_nothing(self, stack, redis):
        """SIGTERM mid-run: the writer finishes and acks its batch, exits 0; the rest waits for the next."""
        prefix, run_id = new_prefix(), "term" + uuid.uuid4().hex[:8]
        records, expected = workload(TENANTS, 2000, run_id=run_id, base_ts=time.time() - 3600)
        push_workload(redis, prefix, records, PARTITIONS)
        writer = start_writer(stack, prefix, "term", batch_max_rows=500)
        try:
            wait_until(lambda: remaining(redis, prefix) < len(records), 60, "progress")
            code = writer.stop(signal.SIGTERM)
        finally:
            writer.stop(signal.SIGKILL)
        assert code == 0, writer.log_tail()
        stream_pending = [redis.xpending_range(Keys(prefix).stream(p), "writers", "-", "+", 10, "term")
                          for p in range(PARTITIONS)]
        assert stream_pending == [[]] * PARTITIONS  # everything it took, it acknowledged
        assert not redis.exists(f"{Keys(prefix).writer_heartbeat}:term")
        left = remaining(redis, prefix)
        # A second writer in burst mode takes the rest and exits 0 when done.
        env = {**os.environ, **writer_env(stack, prefix, consumer="burst")}
        out = subprocess.run([venv_bin("wificore-batch-writer"), "--burst"], env=env, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert remaining(redis, prefix) == 0
        ok, detail = verify(ShardMap.load(stack.shard_map), run_id, expected)
        assert ok, detail
        assert left > 0, "SIGTERM came after the end of the run: make the run bigger"

    def test_two_writers_share_the_streams_without_duplicates(self, stack, redis):
        """Two writers in one group drain everything; each session and auth event is written once."""
        prefix, run_id = new_prefix(), "two" + uuid.uuid4().hex[:8]
        records, expected = workload(TENANTS, 3000, run_id=run_id, base_ts=time.time() - 3600, auth_every=10)
        n_auth = len(records) - 30000
        writers = [start_writer(stack, prefix, name, batch_max_rows=500) for name in ("w1", "w2")]
        try:
            time.sleep(0.5)
            push_workload(redis, prefix, records, PARTITIONS, chunk=500)
            wait_until(lambda: remaining(redis, prefix) == 0, 120, "draining with two writers", 0.2)
            codes = [w.stop(signal.SIGTERM) for w in writers]
        finally:
            for w in writers:
                w.stop(signal.SIGKILL)
        assert codes == [0, 0]
        ok, detail = verify(ShardMap.load(stack.shard_map), run_id, expected)
        assert ok, detail
        assert auth_rows(stack, run_id) == n_auth
        shares = [acked_by(w) for w in writers]
        assert sum(shares) >= len(records) and min(shares) > 0, shares

    def test_check_follows_the_heartbeat(self, stack):
        """--check exits 0 while a writer runs (named, or any of this host) and 1 once it stopped."""
        prefix = new_prefix()
        env = {**os.environ, **writer_env(stack, prefix, consumer="")}  # default name: <host>-<pid>
        env.pop("WIFICORE_WRITER_CONSUMER")

        def check(*args: str) -> int:
            return subprocess.run([venv_bin("wificore-batch-writer"), "--check", *args], env=env,
                                  capture_output=True, timeout=30).returncode
        assert check() == 1
        writer = BatchWriter(stack.state, env, name=f"bw-{prefix}")
        writer.start()
        try:
            name = f"{os.uname().nodename}-{writer.pid}"
            wait_until(lambda: check() == 0, 30, "a heartbeat")
            assert check("--consumer", name) == 0
            assert check("--consumer", "someone-else") == 1
            assert writer.stop(signal.SIGTERM) == 0
        finally:
            writer.stop(signal.SIGKILL)
        assert check() == 1

    def test_a_bad_setting_exits_2_naming_the_variable(self, stack):
        """A bad value stops the writer at start with status 2 and the variable's name."""
        env = {**os.environ, **writer_env(stack, new_prefix(), batch_max_rows="lots")}
        out = subprocess.run([venv_bin("wificore-batch-writer")], env=env, capture_output=True, text=True,
                             timeout=30)
        assert out.returncode == 2 and "WIFICORE_WRITER_BATCH_MAX_ROWS" in out.stderr


@pytest.fixture(autouse=True)
def _report_kill_size(request):
    """Name the SIGKILL run's size in the test report."""
    if "sigkill" in request.node.name:
        request.node.user_properties.append(("kill_records", KILL_RECORDS))
    yield
