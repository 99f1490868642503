"""`wificore-admin deadletter` and the dead-letter stream's bound, against real Redis and shards."""

from __future__ import annotations

import time

from benchmarks.writer_bench import acct
from tests.test_batch_writer import (  # noqa: F401  (fixtures)
    PARTITIONS,
    T1,
    dead_letters,
    drain,
    make_writer,
    new_key,
    new_prefix,
    push,
    row,
    writer_tenants,
)
from wificore.keys import Keys

T_LATE = 377  # in shard1's range; created only after its records were dead-lettered


def admin(stack, prefix: str, *args: str):
    return stack.admin("deadletter", *args, "--key-prefix", prefix, "--partitions", str(PARTITIONS),
                       check=False)


def test_list_show_count_and_replay_once_the_tenant_exists(make_writer, redis, shard_conn,  # noqa: F811
                                                           writer_tenants):  # noqa: F811
    """Records of a tenant that did not exist yet are dead-lettered; once it is created,
    `deadletter replay` stores each once and empties the dead-letter stream."""
    stack = writer_tenants
    prefix, now = new_prefix(), time.time()
    key = new_key()
    crafted = "evil\r\nreason: forged line\x1b[2J"
    records = [acct(T_LATE, key, "start", now - 120, username=crafted),
               acct(T_LATE, key, "interim", now - 60, session_time_s=60, in_octets=500, username=crafted),
               acct(T_LATE, key, "stop", now - 30, session_time_s=90, in_octets=700, username=crafted,
                    terminate_cause="User-Request")]
    push(redis, prefix, records)
    w = make_writer(prefix)
    drain(w)
    assert len(dead_letters(redis, prefix)) == 3

    out = admin(stack, prefix, "count")
    assert out.returncode == 0 and out.stdout.strip() == "3", out.stderr
    out = admin(stack, prefix, "list", "--limit", "2")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 3 and "does not exist" in lines[1]          # header + 2
    first_id = lines[1].split("\t")[0]
    out = admin(stack, prefix, "show", first_id)
    assert out.returncode == 0, out.stderr
    assert "\r" not in out.stdout and "\x1b" not in out.stdout
    assert "evil\\r\\nreason: forged line\\u001b[2J" in out.stdout   # escaped, one line
    assert "reason: forged line" not in [ln.strip() for ln in out.stdout.splitlines()]
    assert f"replays to: {Keys(prefix).stream(T_LATE % PARTITIONS)}" in out.stdout
    assert admin(stack, prefix, "show", "1-1").returncode == 2

    stack.admin("tenant", "add", "--id", str(T_LATE), "--name", "created late")
    out = admin(stack, prefix, "replay", first_id)
    assert out.returncode == 0 and "replayed 1, skipped 0, left 2" in out.stdout, out.stdout + out.stderr
    out = admin(stack, prefix, "replay", "--all")
    assert out.returncode == 0 and "replayed 2, skipped 0, left 0" in out.stdout, out.stdout + out.stderr
    # A crash between XADD and XDEL leaves a record in both places: replaying it again is harmless.
    push(redis, prefix, [records[1]])
    drain(w)
    r = row(shard_conn, T_LATE, key)
    assert r is not None and r["input_octets"] == 700 and r["session_time_s"] == 90
    assert r["close_reason"] == "stop" and r["terminate_cause"] == "User-Request"
    assert r["username"] == crafted
    assert shard_conn(T_LATE).execute("SELECT count(*) FROM sessions WHERE tenant_id = %s AND session_key = %s",
                                      (T_LATE, key)).fetchone()[0] == 1
    assert dead_letters(redis, prefix) == []
    assert admin(stack, prefix, "replay").returncode == 2  # neither ids nor --all


def test_the_dead_letter_stream_is_never_trimmed_its_bound_is_an_alarm(make_writer, redis):  # noqa: F811
    """Past WIFICORE_WRITER_DEAD_MAXLEN nothing is dropped: the length is kept and the alarm is raised."""
    prefix = new_prefix()
    push(redis, prefix, [(T1, b"\xc1 not msgpack %d" % i) for i in range(260)])
    w = make_writer(prefix, dead_maxlen=100)
    drain(w)
    assert sum(redis.xlen(name) for name in Keys(prefix, PARTITIONS).dead_letters) == 260
    w._next_measure = 0.0  # measure now
    w._housekeeping()
    assert w.stats.dead_letter_length == 260 and w.stats.dead_letter_over_bound
