"""Attempts count only failures of the record itself, against real Redis and shards.

A record our own code cannot handle (injected here: ``collapse`` raises for one
session key, as a writer bug or unforeseen input would) is found by halving the
batch; written alone, each failure counts one attempt against that record only,
and at ``max_attempts`` it is dead-lettered while the rest of the batch commits.
"""

from __future__ import annotations

import time

import pytest

import batch_writer.merge as merge
from tests.test_batch_writer import (  # noqa: F401  (fixtures)
    T1,
    acct,
    dead_letters,
    make_writer,
    new_key,
    new_prefix,
    pending,
    push,
    row,
    writer_tenants,
)


def test_a_record_failing_alone_is_dead_lettered_after_max_attempts(make_writer, redis, shard_conn,  # noqa: F811
                                                                       monkeypatch: pytest.MonkeyPatch):
    prefix, now = new_prefix(), time.time()
    poison, good = new_key("poison"), [new_key() for _ in range(7)]
    real_collapse = merge.collapse

    def collapse(records):
        if any(r.session_key == poison for r in records):
            raise ValueError("cannot fold this one")
        return real_collapse(records)
    monkeypatch.setattr(merge, "collapse", collapse)
    push(redis, prefix, [acct(T1, k, "interim", now - 60, in_octets=5) for k in good[:4]]
         + [acct(T1, poison, "interim", now - 60)]
         + [acct(T1, k, "interim", now - 60, in_octets=5) for k in good[4:]])
    w = make_writer(prefix, max_attempts=3, backoff_max_s=1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (pending(redis, prefix) or not dead_letters(redis, prefix)):
        w.run_once()
        w.flush()
        time.sleep(0.05)
    dead = dead_letters(redis, prefix)
    assert len(dead) == 1, dead
    assert b"failed 3 times when written alone" in dead[0][b"reason"] and b"ValueError" in dead[0][b"reason"]
    assert w.stats.dead_letters == {"attempts": 1}
    assert all(row(shard_conn, T1, k)["input_octets"] == 5 for k in good)
    assert row(shard_conn, T1, poison) is None and pending(redis, prefix) == 0
