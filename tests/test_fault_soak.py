"""A short, bounded fault soak of the accounting path, through radiusd.

benchmarks/fault_soak.py in small (its own stack: Redis, two shards, radiusd,
batch_writer, on free loopback ports, every process stopped by its PID): NAS
senders (raw UDP, retransmitting like a NAS) send Start, 8 Interims and Stop
for 1,000 sessions over 30 s at a steady rate. Meanwhile shard2 is frozen
(SIGSTOP of its postmaster and every backend: a hung shard, the harder case,
since a query on it never returns) for 20 s, and the writer process is killed
6 times during the freeze, SIGKILL and SIGTERM in turn. After SIGCONT and the
drain:

* every answered record's session is present exactly once, with the last
  answered counters and the Stop's time and cause (sessions_exact == sessions_expected,
  lost == doubled == 0), Redis usage equal to PostgreSQL for every subscriber;
* no dead letter: an outage or a restart never counts against a record;
* every SIGTERM exited 0 (a hung shard does not block a stop);
* shard1 kept taking records while shard2 was frozen (shard isolation).

On the writer of 2026-11-30 this fails: the entries held for the frozen shard
are re-read at every restart, their delivery count passes max_attempts and
they are dead-lettered; and the writer waits for the frozen shard for ever
(SIGTERM cannot finish, shard1 stops too).

About 50-70 s. WIFICORE_TEST_SOAK_SESSIONS changes the size.
"""

from __future__ import annotations

import argparse
import os

from benchmarks import fault_soak

SESSIONS = int(os.environ.get("WIFICORE_TEST_SOAK_SESSIONS", "1000"))


def test_shard_hung_while_the_writer_restarts_loses_and_dead_letters_nothing():
    args = argparse.Namespace(sessions=SESSIONS, interims=8, duration=30.0, outage_at=3.0, outage=20.0,
                              outage_mode="freeze", restarts=6, redis_outage=0.0, drain_timeout=90.0)
    result = fault_soak.run(args)
    f, details = result["fault_soak"], result["details"]
    print(result)
    assert f["answered"] == details["records"] == SESSIONS * 10, details
    assert f["sessions_expected"] == SESSIONS
    assert f["dead_letters"] == 0, result
    assert (f["lost"], f["doubled"], f["redis_mismatches"]) == (0, 0, 0), result
    assert f["sessions_exact"] == f["sessions_expected"], result
    assert sum("writer SIG" in e for e in details["events"]) == 6, details["events"]
    assert details["writer_sigterm_exit_codes"] == [0] * 4, details   # 3 during the freeze + the last
    progress = details["session_time_written"]
    assert progress["shard1_at_outage_end"] > progress["shard1_at_outage_start"], (
        f"shard1 took nothing while shard2 was frozen: {progress}")
