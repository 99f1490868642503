"""The NAS directory against real servers: junk from unknown addresses is cheap, a NAS
change takes effect within a stated bound, and the invalidation relay fans out once per
relay (not once per process) and survives the death of its holder.

Bounds stated in docs/decisions.md ("The NAS directory and the invalidation relay"):
a NAS added, changed or removed is in the directory within ~1 s of its commit; radiusd
uses a dynamic client it already holds for its ``lifetime``, so a change reaches the
NAS's requests within lifetime + 2 s.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import struct
import time
import urllib.request

import pytest
import redis as redis_lib

from stack.servers import Radiusd, RadiusdGroup, free_port
from tests.conftest import TENANT_A
from tests.radius import send
from tests.test_accounting import wait_until

SETTLE_S = 2.0  # a change reaches every radiusd within this (invalidation, directory)


def junk_packet() -> bytes:
    user = b"junk"
    attrs = bytes([1, 2 + len(user)]) + user
    return struct.pack("!BBH", 1, random.randrange(256), 20 + len(attrs)) + os.urandom(16) + attrs


def send_junk(port: int, count: int) -> set[str]:
    """``count`` Access-Requests, each from its own random 127.x.y.z address."""
    sources = set()
    pkt = junk_packet()
    while len(sources) < count:
        ip = f"127.{random.randrange(10, 250)}.{random.randrange(256)}.{random.randrange(1, 255)}"
        if ip in sources:
            continue
        sources.add(ip)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((ip, 0))
            s.sendto(pkt, ("127.0.0.1", port))
    return sources


def redis_reads(r: redis_lib.Redis) -> int:
    stats = r.info("commandstats")
    return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("get", "hget", "hmget", "hexists"))


def radiusd_queries(stack) -> tuple[int, list[int]]:
    """Statements radiusd's role (wificore_radiusd: its lookups through PgBouncer, its relay's
    direct reads) ran on the shards so far, and each shard's pg_stat_statements evictions.
    Not pg_stat_database's xact_commit: that counts every backend's transactions, an
    autovacuum worker's too (~30 in one go on a shard the tests wrote to, reported as the
    worker exits), and a backend reports its counts up to a second late, an idle one only
    at its next transaction or exit (a pooled writer's burst, minutes later)."""
    counts = [pg.statements_of("wificore_radiusd") for pg in stack.pg]
    return sum(c for c, _ in counts), [e for _, e in counts]


def log_since(proc, mark: int) -> str:
    with open(proc.logfile, "rb") as f:
        f.seek(mark)
        return f.read().decode(errors="replace")


class TestUnknownSources:
    def test_junk_costs_no_query_no_redis_read_and_few_log_lines(self, radiusd, world, redis, auth,
                                                                 subscriber):
        """300 Access-Requests from 300 unknown addresses: no shard query (radiusd's
        statements, counted by the shards) and no Redis read for them (the in-process set
        of known addresses answers), one 'unknown_client' line and then an 'N unknown
        clients suppressed' summary; the valid NAS still logs in."""
        user = subscriber()
        assert auth(TENANT_A, {"User-Name": user, "User-Password": "pw-123456"}).accepted
        time.sleep(1.5)  # the first login's records settle (the forwarder's script reads Redis)
        mark = radiusd.logfile.stat().st_size
        reads, (queries, evicted) = redis_reads(redis), radiusd_queries(world)
        send_junk(radiusd.auth_port, 300)
        ans = auth(TENANT_A, {"User-Name": user, "User-Password": "pw-123456"})
        assert ans.accepted, ans.output
        time.sleep(1.5)
        # None for the junk (the cached login needs none either); a few if the relay's
        # periodic directory rebuild (one read per shard) falls in here; without the
        # directory, 600.
        now, evicted_now = radiusd_queries(world)
        assert evicted_now == evicted, "pg_stat_statements evicted entries: counts not comparable"
        assert now - queries < 10
        assert redis_reads(redis) - reads < 20
        summary = wait_until(lambda: "unknown clients suppressed" in log_since(radiusd, mark), 15)
        text = log_since(radiusd, mark)
        assert summary, text[-3000:]
        assert text.count("event='unknown_client'") <= 3, text[-3000:]


def metrics_count(port: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('wificore_requests_total{hook="authorize"'))


@pytest.fixture
def own_radiusd(world):
    """A radiusd of its own with a short dynamic-client lifetime (5 s) and key prefix."""
    r = Radiusd(world.state / "short-lifetime", auth_port=free_port(), acct_port=free_port(),
                shard_map=world.shard_map, redis_url=world.redis.url, client_lifetime_s=5,
                name="short-lifetime", extra_env={"WIFICORE_KEY_PREFIX": "sl"})
    r.start()
    yield r
    assert r.stop() == 0, r.log_tail()


class TestNasChanges:
    def test_added_changed_and_removed_nas_within_the_bound(self, own_radiusd, world, subscriber,
                                                            shard_conn):
        """A NAS added after start is served within 2 s; a new secret within lifetime + 2 s
        (the old one then fails); a removed NAS is unknown within lifetime + 2 s."""
        ip = "127.0.0.77"
        user = subscriber()
        world.admin("nas", "add", "--tenant", str(TENANT_A[0]), "--name", "nas-added", "--ip", ip,
                    "--secret", "first-secret", "--vendor", "mikrotik")
        conn = shard_conn(TENANT_A[0])
        try:
            login = {"User-Name": user, "User-Password": "pw-123456"}

            def accepted(secret: str) -> bool:
                return send(own_radiusd.auth_port, "auth", secret, login, source=ip,
                            timeout_s=1.0).accepted
            assert wait_until(lambda: accepted("first-secret"), SETTLE_S + 1), own_radiusd.log_tail()
            conn.execute("UPDATE nas SET secret = 'second-secret' WHERE tenant_id = %s AND ip = %s",
                         (TENANT_A[0], ip))
            bound = 5 + SETTLE_S
            assert wait_until(lambda: accepted("second-secret"), bound + 1), own_radiusd.log_tail()
            assert not accepted("first-secret")
            conn.execute("DELETE FROM nas WHERE tenant_id = %s AND ip = %s", (TENANT_A[0], ip))
            assert wait_until(lambda: not accepted("second-secret"), bound + 1)
        finally:
            conn.execute("DELETE FROM nas WHERE tenant_id = %s AND ip = %s", (TENANT_A[0], ip))


def pid_of_slot(r: redis_lib.Redis, prefix: str, slot: int) -> int | None:
    holder = r.get(f"{prefix}:relay:{slot}")
    return int(holder.split(b":")[1]) if holder else None


class TestRelay:
    def test_one_announcement_per_relay_and_failover(self, world, subscriber, shard_conn, redis):
        """Three radiusd processes (beside the suite's own, if it runs: same key prefix): two
        processes hold the relay slots, the others only subscribe; a change is announced twice
        (once per relay), not once per process; every process serves the new value within
        2 s; after a kill -9 of a relay holder, a change still reaches the others within 2 s,
        and the free slot is taken again by another process."""
        prefix = "wc"
        auth_port, acct_port = free_port(), free_port()
        members = [Radiusd(world.state / f"relay-{i}", auth_port=auth_port, acct_port=acct_port,
                           shard_map=world.shard_map, redis_url=world.redis.url,
                           metrics_port=free_port(), name=f"relay-{i}", reuseport=True)
                   for i in range(3)]
        group = RadiusdGroup(members)
        group.start()
        killed: int | None = None
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            assert wait_until(lambda: all(pid_of_slot(redis, prefix, s) for s in (0, 1)), 10)
            # The group's processes start one after another: at least one of them holds a slot.
            assert wait_until(lambda: {pid_of_slot(redis, prefix, s) for s in (0, 1)}
                              & set(group.pids), 10)
            holders = [pid_of_slot(redis, prefix, s) for s in (0, 1)]
            assert len(set(holders)) == 2
            user = subscriber(password="pw-1")
            conn = shard_conn(TENANT_A[0])

            def all_accept(password: str) -> bool:
                # New source ports each time: the kernel spreads them over the processes.
                return all(send(auth_port, "auth", TENANT_A[2],
                                {"User-Name": user, "User-Password": password},
                                source=TENANT_A[1]).accepted for _ in range(24))
            assert all_accept("pw-1"), group.log_tail()  # cached in every process now
            counts = [metrics_count(m.env["WIFICORE_METRICS_PORT"]) for m in members]
            assert all(c > 0 for c in counts), counts

            pubsub.subscribe(f"{prefix}:inval")
            conn.execute("UPDATE subscribers SET password = 'pw-2' WHERE tenant_id = %s"
                         " AND username = %s", (TENANT_A[0], user))
            time.sleep(SETTLE_S)
            assert all_accept("pw-2"), group.log_tail()
            seen, until = [], time.monotonic() + 1.0
            while time.monotonic() < until:
                msg = pubsub.get_message(timeout=0.1)
                if msg is not None:
                    seen.append(msg["data"])
            mine = [m for m in seen if user.encode() in m]
            assert len(mine) == 2, seen  # one per relay; before: one per process

            slot = next(s for s in (0, 1) if pid_of_slot(redis, prefix, s) in group.pids)
            killed = pid_of_slot(redis, prefix, slot)
            assert killed is not None
            os.kill(killed, signal.SIGKILL)
            conn.execute("UPDATE subscribers SET password = 'pw-3' WHERE tenant_id = %s"
                         " AND username = %s", (TENANT_A[0], user))
            time.sleep(SETTLE_S)
            assert all_accept("pw-3"), group.log_tail()
            # The dead holder's slot is taken again by the process that held none.
            assert wait_until(lambda: (pid_of_slot(redis, prefix, slot) not in (None, killed)), 10)
        finally:
            pubsub.close()
            codes = [m.stop() for m in members if m.pid != killed]
            for m in members:
                if m.pid == killed:
                    m.stop()
        assert all(c == 0 for c in codes), group.log_tail()

    def test_a_relay_keeps_its_slot_while_a_shard_is_down(self, stack, radiusd, redis):
        """Shard2 stopped, then the relay slots freed (as if they had expired): a process
        takes slot 0 again and keeps it, although shard2 neither LISTENs nor answers the
        directory's rebuild. Before, the slot was renewed only between those waits (5 s for
        a shard that does not answer, more than the 3 s TTL): it was lost every ~6 s, and
        in between nobody LISTENed on the healthy shards (their changes went unannounced)."""
        import psycopg
        prefix = "wc"
        with psycopg.connect(stack.pg[1].dsn(), autocommit=True) as conn:
            conn.execute("CHECKPOINT")  # synchronous_commit=off: keep the suite's rows
        stack.pg[1].kill()
        try:
            redis.delete(f"{prefix}:relay:0", f"{prefix}:relay:1")
            holder = wait_until(lambda: redis.get(f"{prefix}:relay:0"), 20)
            assert holder, radiusd.log_tail()
            until = time.monotonic() + 10.0
            while time.monotonic() < until:
                assert redis.get(f"{prefix}:relay:0") == holder, radiusd.log_tail()
                time.sleep(0.1)
        finally:
            stack.pg[1].start()

    def test_a_bad_notification_does_not_end_the_relay(self, radiusd, subscriber, shard_conn):
        """A NOTIFY whose payload is JSON but not a message (an object: KeyError) is logged;
        the shard's listener goes on and the next change still reaches the process. Before,
        the exception ended the listener thread while its relay kept the slot: none of that
        shard's changes was announced again for the rest of the tenure."""
        user = subscriber(password="pw-1")
        conn = shard_conn(TENANT_A[0])

        def accepted(password: str) -> bool:
            return send(radiusd.auth_port, "auth", TENANT_A[2],
                        {"User-Name": user, "User-Password": password},
                        source=TENANT_A[1], timeout_s=1.0).accepted
        assert accepted("pw-1"), radiusd.log_tail()  # cached in process now
        conn.execute("SELECT pg_notify('wificore_inval', '{}')")
        time.sleep(0.5)
        conn.execute("UPDATE subscribers SET password = 'pw-2' WHERE tenant_id = %s"
                     " AND username = %s", (TENANT_A[0], user))
        assert wait_until(lambda: accepted("pw-2"), SETTLE_S + 1), radiusd.log_tail()


def test_a_rebuild_on_a_map_behind_a_move_keeps_the_moved_nas(redis):
    """A relay whose map has not taken a move's flip rebuilds the directory (its periodic
    rebuild, a slot taken over) after the cleanup: the moved tenant's NAS is only on a
    shard that map does not give it. Its field is kept as it was, not dropped (every
    process would revoke its client until the relay took the map). Real Redis; the
    shards' rows are given by the query function."""
    import uuid

    from rlm_wificore.directory import BUILT, Directory
    from wificore.keys import Keys
    from wificore.profile import Nas
    from wificore.shardmap import ShardMap

    old_map = ShardMap.from_dict({"shard": [
        {"name": "s1", "first_tenant": 1, "last_tenant": 99, "dsn": "postgresql://x@127.0.0.1:1/x"},
        {"name": "s2", "first_tenant": 100, "last_tenant": 199, "dsn": "postgresql://x@127.0.0.1:1/y"}]})
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    moved = Nas(5, 1, "10.9.0.1", "s3cret", "generic")      # tenant 5, now on s2 (the flip not taken)
    stays = Nas(6, 2, "10.9.0.2", "s3cret", "generic")      # tenant 6, on s1
    rows = {"s1": [stays], "s2": [moved]}
    d = Directory(old_map, None, None, keys)  # type: ignore[arg-type]
    redis.hset(keys.nas_directory, mapping={moved.ip: moved.pack(), stays.ip: stays.pack(), BUILT: "1"})

    def query(shard, sql, params):
        return [(n.tenant_id, n.nas_id, n.ip, n.secret, n.vendor, n.require_message_authenticator,
                 n.kind_check, n.coa_port) for n in rows[shard.name]]
    try:
        assert d.rebuild(query, redis) == 1
        assert redis.hget(keys.nas_directory, moved.ip) == moved.pack()
        assert redis.hget(keys.nas_directory, stays.ip) == stays.pack()
        rows["s2"] = []  # the NAS deleted for good: gone at the next rebuild
        d.rebuild(query, redis)
        assert redis.hget(keys.nas_directory, moved.ip) is None
    finally:
        redis.delete(keys.nas_directory)
