"""A hung shard (SIGSTOP: a query on it never returns) does not stop the writer.

Nor does a shard whose stale close waits (a lock held on its sessions table):
the writer goes on with the other shards at once, without waiting for the
close's deadline, and collects the close once it has returned.

In-process writer on a stack of its own. With a connection to shard2 open, the
whole shard2 cluster is frozen; records for both shards keep coming. shard1's
must be stored while shard2 is frozen (the writer cuts its round trip at
``shard_deadline_s`` and goes on), and after SIGCONT shard2's too, with no dead
letter. The writer loop runs in a thread, so that a writer without a deadline
makes this test fail (shard1 never stored) rather than hang.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import psycopg
import pytest

from batch_writer.config import load
from batch_writer.worker import Writer
from tests.test_batch_writer import (
    T1,
    T3,
    acct,
    dead_letters,
    new_key,
    new_prefix,
    own_stack,
    pending,
    push,
    writer_env,
)


@pytest.fixture(scope="module")
def stack():
    with own_stack() as s:
        yield s


def _cluster(pg) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pg.pid)], capture_output=True, text=True)
    return [pg.pid] + [int(p) for p in out.stdout.split()]


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _stored(pg, key: str) -> bool:
    with psycopg.connect(pg.dsn(), autocommit=True, connect_timeout=5) as conn:
        return conn.execute("SELECT count(*) FROM sessions WHERE session_key = %s", (key,)).fetchone()[0] == 1


def _writer_on_both_shards(stack, redis, prefix: str, now: float, **env) -> Writer:
    """An in-process writer that has stored one record on each shard (both reached)."""
    settings, cfg = load(writer_env(stack, prefix, **env))
    w = Writer(settings, cfg)
    warm1, warm3 = new_key(), new_key()
    push(redis, prefix, [acct(T1, warm1, "start", now - 60), acct(T3, warm3, "start", now - 60)])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (_stored(stack.pg[0], warm1) and _stored(stack.pg[1], warm3)):
        w.run_once()
        w.flush()
    assert _stored(stack.pg[0], warm1) and _stored(stack.pg[1], warm3), "a shard not reached before the test"
    return w


def test_a_frozen_shard_is_cut_at_its_deadline_and_the_others_flow(stack, redis):
    prefix, now = new_prefix(), time.time()
    w = _writer_on_both_shards(stack, redis, prefix, now, shard_deadline_s=2, backoff_max_s=1)

    stop = threading.Event()
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            while not stop.is_set():
                w.run_once()
        except BaseException as exc:
            errors.append(exc)

    frozen = _cluster(stack.pg[1])
    k1, k3 = new_key(), new_key()
    thread = threading.Thread(target=loop, name="writer-loop", daemon=True)
    try:
        _signal(frozen, signal.SIGSTOP)
        push(redis, prefix, [acct(T3, k3, "start", now - 30), acct(T1, k1, "start", now - 30)])
        thread.start()
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not _stored(stack.pg[0], k1):
            time.sleep(0.2)
        # k1 commits while the batch still waits for shard2; k1b needs the writer to
        # have got past that batch (shard2 cut at its deadline) and on to the next.
        k1b = new_key()
        push(redis, prefix, [acct(T1, k1b, "start", now - 20)])
        while time.monotonic() < deadline and not _stored(stack.pg[0], k1b):
            time.sleep(0.2)
        shard1_while_frozen = _stored(stack.pg[0], k1) and _stored(stack.pg[0], k1b)
        aborted = getattr(w.shards["shard2"], "aborted", 0)
    finally:
        _signal(list(reversed(frozen)), signal.SIGCONT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _stored(stack.pg[1], k3):
            time.sleep(0.2)
        assert _stored(stack.pg[1], k3), "shard2's record not stored after SIGCONT"
    finally:
        stop.set()
        thread.join(timeout=60)
        w.close()
    assert shard1_while_frozen, "shard1's record was not stored while shard2 was frozen"
    assert aborted >= 1, "the frozen shard's round trip was not cut"
    assert not errors, errors
    assert dead_letters(redis, prefix) == []


def test_a_stale_close_that_waits_on_a_lock_does_not_hold_up_the_other_shards(stack, redis):
    prefix, now = new_prefix(), time.time()
    # A deadline far longer than the test waits: a writer that waits for the close
    # fails the checks below (it returns only once the close is cut at the deadline,
    # or fails at the role's lock_timeout: 5 s on this stack).
    w = _writer_on_both_shards(stack, redis, prefix, now, shard_deadline_s=120, statement_timeout_ms=300_000,
                               stale_interval_s=3600)
    w.run_once()  # nothing new: caught up, so the stale close runs
    w.flush()
    holder = psycopg.connect(stack.pg[1].dsn(), connect_timeout=5)
    try:
        holder.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")  # held until the rollback
        w._next_stale = 0.0
        w.run_once()  # housekeeping starts the stale closes: shard2's waits on the lock
        assert w._busy("shard2"), "shard2's stale close did not wait on the lock"
        assert w.shards["shard2"].aborted == 0, "the loop waited for shard2's close until its deadline"
        k1, k3 = new_key(), new_key()
        push(redis, prefix, [acct(T3, k3, "start", now - 30), acct(T1, k1, "start", now - 30)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _stored(stack.pg[0], k1):
            w.run_once()
        w.flush()
        assert _stored(stack.pg[0], k1), "shard1's record was not stored while shard2's close waited"
        assert pending(redis, prefix) == 1, "only shard2's record may wait"
    finally:
        holder.rollback()
        holder.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (_stored(stack.pg[1], k3) and pending(redis, prefix) == 0):
        w.run_once()
        w.flush()
    try:
        assert _stored(stack.pg[1], k3), "shard2's record not stored after the lock was released"
        assert pending(redis, prefix) == 0
        assert not w._stale, "the finished stale close was not collected"
        assert w.shards["shard2"].aborted == 0
        assert dead_letters(redis, prefix) == []
    finally:
        w.close()
