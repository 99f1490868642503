"""The writer's trim of the accounting streams keeps what another group (the CoA
sidecar's quota watcher, ``coa-quota``) has not read yet, up to a bound. Before, the
writer trimmed to its own floor: records the sidecar had not read (it was down, or
behind) were gone, and no mid-session quota check saw them. Real Redis."""

from __future__ import annotations

import uuid

import pytest
import redis as redis_lib

from batch_writer import streams as st
from wificore.keys import Keys

N = 2000  # twenty stream nodes of 100 entries (MINID ~ trims whole nodes only)


@pytest.fixture
def writer_client(stack):
    r = redis_lib.Redis.from_url(stack.redis.url)  # Streams sets its own reply callbacks
    yield r
    r.close()


def setup(redis, writer_client) -> tuple[st.Streams, str]:
    keys = Keys(f"trim{uuid.uuid4().hex[:8]}")
    s = st.Streams(writer_client, keys, partitions=1, group="writers", consumer="w1", dead_maxlen=1000)
    s.ensure_groups()
    name = s.names[0]
    redis.xgroup_create(name, "coa-quota", id="0")
    pipe = redis.pipeline(transaction=False)
    for i in range(N):
        pipe.xadd(name, {"d": str(i)})
    pipe.execute()
    for group, count in (("writers", N), ("coa-quota", 10)):  # the writers are done, the sidecar is not
        got = redis.xreadgroup(group, "c1", {name: ">"}, count=count)
        ids = [entry_id for entry_id, _ in got[0][1]]
        redis.xack(name, group, *ids)
    return s, name


def test_the_trim_keeps_what_the_quota_watcher_has_not_read(redis, writer_client):
    s, name = setup(redis, writer_client)
    s.measure_and_trim()
    assert redis.xlen(name) >= N - 10
    rest = redis.xreadgroup("coa-quota", "c1", {name: ">"}, count=N)
    assert len(rest[0][1]) == N - 10  # every record the sidecar had not read is still there
    redis.delete(name)


def test_a_group_far_behind_does_not_fill_redis(redis, writer_client, monkeypatch):
    monkeypatch.setattr(st, "OTHER_GROUPS_KEEP", 500)
    s, name = setup(redis, writer_client)
    s.measure_and_trim()
    assert redis.xlen(name) <= 200  # trimmed to the writers' floor (whole nodes)
    redis.delete(name)
