"""A sick backend costs its own tenants only; every wait is bounded (issue 13).

Real servers: the stack's shards behind their PgBouncers, Redis, radiusd with the
module. Shard2 (TENANT_C) is made sick: hung (SIGSTOP of its PgBouncer or of its
PostgreSQL processes), slow (queries succeed in ~0.3 s, below the radius role's 400 ms
statement_timeout), locked (LOCK TABLE in
another session) or stopped; TENANT_A (shard1) keeps logging in meanwhile.
Stopped processes are resumed in teardown whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import threading
import time
import urllib.request
import uuid

import psycopg
import pytest

from rlm_wificore.store import Shards
from stack.servers import cluster_pids
from tests.conftest import TENANT_A, TENANT_C
from tests.radius import send_pyrad
from tests.test_accounting import wait_until
from wificore.errors import StoreUnavailable
from wificore.shardmap import ShardMap

#: Slack for a shared, loaded test machine: nothing here asserts tight timings.
SLOW_S = 0.4  # a sick tenant's answer that took this long held the process (db_timeout_ms 500)


def pap(radiusd, tenant, user, password="pw-123456", timeout_s=3.0):
    start = time.monotonic()
    ans = send_pyrad(radiusd.auth_port, tenant[2], [("User-Name", user), ("User-Password", password)],
                     source=tenant[1], timeout_s=timeout_s)
    return ans, time.monotonic() - start


@contextlib.contextmanager
def stopped(pids):
    """SIGSTOP the processes (a hung peer: sockets open, no answer); SIGCONT at the end."""
    pids = [p for p in pids if p]
    assert pids
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def locked(stack):
    conn = psycopg.connect(stack.pg[1].dsn())
    try:
        conn.execute("LOCK TABLE subscribers IN ACCESS EXCLUSIVE MODE")
        yield
    finally:
        conn.rollback()
        conn.close()


@contextlib.contextmanager
def slow(stack):
    """Every read of a subscriber on shard2 by the radius role takes ~0.3 s and succeeds
    (a row-level security policy that sleeps: the query plan stays the one of production)."""
    with psycopg.connect(stack.pg[1].dsn(), autocommit=True) as conn:
        conn.execute("ALTER TABLE subscribers ENABLE ROW LEVEL SECURITY")
        conn.execute("CREATE POLICY test_slow ON subscribers FOR SELECT TO wificore_radius "
                     "USING ((SELECT true FROM pg_sleep(0.3)))")
        conn.execute("CREATE POLICY test_slow_others ON subscribers TO wificore_writer USING (true)")
    try:
        yield
    finally:
        with psycopg.connect(stack.pg[1].dsn(), autocommit=True) as conn:
            conn.execute("DROP POLICY IF EXISTS test_slow ON subscribers")
            conn.execute("DROP POLICY IF EXISTS test_slow_others ON subscribers")
            conn.execute("ALTER TABLE subscribers DISABLE ROW LEVEL SECURITY")


@contextlib.contextmanager
def pg_stopped(stack):
    # The test clusters run with synchronous_commit=off: an immediate stop loses the
    # commits of the last moments (the subscribers the test just added). Flushed first:
    # a stopped shard is what this is about, not a lost commit.
    with psycopg.connect(stack.pg[1].dsn(), autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    stack.pg[1].kill()
    try:
        yield
    finally:
        stack.pg[1].start()


def sickness(stack, variant):
    if variant == "hung_pgbouncer":
        return stopped(stack.bouncers[1].server_pids())
    if variant == "hung_postgres":
        return stopped(cluster_pids(stack.pg[1].pid))
    if variant == "locked":
        return locked(stack)
    if variant == "slow":
        return slow(stack)
    if variant == "stopped":
        return pg_stopped(stack)
    raise AssertionError(variant)


class TestDeadlinesThroughPgBouncer:
    """The module's own shard access (rlm_wificore.store.Shards), in this process."""

    @pytest.fixture
    def shards(self, world):
        s = Shards(ShardMap.load(world.shard_map), timeout_ms=500, pool_max=2, wait_ms=200)
        yield s
        s.close()

    def test_the_radius_role_has_server_side_timeouts_through_pgbouncer(self, world, shards):
        """Behind PgBouncer (transaction pooling) the startup option is dropped; the role's
        own settings hold: statement_timeout and lock_timeout are non-zero."""
        shard = shards.map.by_name("shard2")
        assert f":{world.ports.bouncer2}/" in shard.radius_dsn, "radiusd must go through PgBouncer"
        got = shards.execute(shard, lambda c: c.execute(
            "SELECT current_setting('statement_timeout'), current_setting('lock_timeout')").fetchone())
        assert got == ("400ms", "200ms")
        start = time.monotonic()
        with pytest.raises(StoreUnavailable, match="statement timeout"):
            shards.execute(shard, lambda c: c.execute("SELECT pg_sleep(3)").fetchone())
        assert time.monotonic() - start < 2.0

    def test_a_lock_gives_up_within_the_deadline(self, stack, world, shards):
        shard = shards.map.by_name("shard2")
        with locked(stack):
            start = time.monotonic()
            with pytest.raises(StoreUnavailable):
                shards.execute(shard, lambda c: c.execute("SELECT count(*) FROM subscribers").fetchone())
            assert time.monotonic() - start < 2.0

    @pytest.mark.parametrize("what", ["pgbouncer", "postgres"])
    def test_a_hung_peer_gives_up_within_the_deadline(self, stack, world, shards, what):
        """SIGSTOP: the socket stays open and nothing answers; the client-side deadline
        (500 ms) holds, the connection is discarded, the next call works again."""
        shard = shards.map.by_name("shard2")
        assert shards.execute(shard, lambda c: c.execute("SELECT 1").fetchone()) == (1,)
        pids = stack.bouncers[1].server_pids() if what == "pgbouncer" else cluster_pids(stack.pg[1].pid)
        with stopped(pids):
            start = time.monotonic()
            with pytest.raises(StoreUnavailable):
                shards.execute(shard, lambda c: c.execute("SELECT 1").fetchone())
            took = time.monotonic() - start
        assert took < 2.0, f"a hung {what} held the call {took:.2f} s"
        assert wait_until(lambda: _answers(shards, shard), timeout_s=10)

    def test_a_sick_shard_is_waited_on_again_only_after_a_streak_of_fast_answers(self, shards):
        """A shard judged sick is waited on again only after Lane.RECOVER_STREAK fast
        answers in a row: one fast answer (a probe, a cheap query among slow ones) must
        not bring back a db_wait_ms stall of the whole process per flap (issue 13).
        Counts the lane's events, not times."""
        lane = shards.lanes["shard2"]
        assert lane.fetchone("SELECT %s::int", (0,)) == (0,)  # healthy: waited, answered
        assert lane.counts["waited"] == 1
        # Slower than the healthy wait (200 ms): the hook gives up, the shard is sick.
        with pytest.raises(StoreUnavailable):
            lane.fetchone("SELECT 1 FROM pg_sleep(%s)", (0.3,))
        fast0 = lane.counts["fast"]  # the slow query is still running: no probe yet
        assert lane.counts["gave_up"] == 1 and lane.counts["waited"] == 2
        assert not lane.waitable
        with contextlib.suppress(StoreUnavailable):  # not waited for: the shard is sick
            lane.fetchone("SELECT %s::int", (1,))
        assert lane.counts["not_waited"] >= 1
        assert wait_until(lambda: lane.waitable, timeout_s=20)
        assert lane.counts["fast"] - fast0 >= 3  # RECOVER_STREAK, as documented
        assert lane.fetchone("SELECT %s::int", (99,)) == (99,)
        assert lane.counts["waited"] == 3

    def test_a_shard_slower_than_the_healthy_wait_stays_sick_while_lookups_come(self, shards):
        """Answers of 120 ms: above the healthy wait of a shard that answered in
        milliseconds (50 ms floor), below db_wait_ms (200 ms). Such answers are slow: with
        cold lookups arriving, hooks wait on the shard once, not again every
        RECOVER_STREAK answers (before: each hook wait a stall of the whole process)."""
        lane = shards.lanes["shard2"]
        for i in range(lane.WAIT_HISTORY_MIN + 2):  # a healthy history: milliseconds
            assert lane.fetchone("SELECT %s::int", (i,)) == (i,)
        # The premise: 120 ms is above the healthy wait (the 50 ms floor on a quiet
        # machine; a loaded one answers in tens of ms and raises it, still below 120).
        assert lane.WAIT_FLOOR_S <= lane.healthy_wait_s() < 0.12, lane.healthy_wait_s()
        waited0 = lane.counts["waited"]
        for i in range(30):  # ~10 cold lookups a second, each answered in 120 ms
            with contextlib.suppress(StoreUnavailable):
                lane.fetchone("SELECT %s::int FROM pg_sleep(0.12)", (1000 + i,))
            time.sleep(0.1)
        waits = lane.counts["waited"] - waited0
        assert waits <= 2, f"hooks waited on the slow shard {waits} times of 30 ({dict(lane.counts)})"

    def test_the_healthy_wait_follows_the_shards_own_answers(self, shards):
        """db_wait_ms until the lane knows a few answers; then 4x their 90th percentile,
        never below the floor nor above db_wait_ms (pure logic on the lane's history)."""
        lane = shards.lanes["shard2"]
        assert lane.healthy_wait_s() == pytest.approx(0.2)
        lane._fast_took.extend([0.002] * 63 + [0.150])  # one outlier does not count
        assert lane.healthy_wait_s() == pytest.approx(lane.WAIT_FLOOR_S)
        lane._fast_took.extend([0.030] * 64)
        assert lane.healthy_wait_s() == pytest.approx(0.12)
        lane._fast_took.extend([0.100] * 64)
        assert lane.healthy_wait_s() == pytest.approx(0.2)


def _answers(shards, shard) -> bool:
    try:
        return shards.execute(shard, lambda c: c.execute("SELECT 1").fetchone()) == (1,)
    except StoreUnavailable:
        return False


class TestSickShard:
    @pytest.mark.parametrize("variant", ["hung_pgbouncer", "hung_postgres", "slow", "locked", "stopped"])
    def test_sick_shard_costs_its_own_tenant_only(self, stack, radiusd, subscriber, variant):
        """While shard2 is sick, TENANT_A's warm logins are all answered, each within a
        generous bound; TENANT_C's cold logins get fast answers (at most one of them may
        wait the healthy wait, none holds the process for the deadline again and again);
        afterwards TENANT_C is served again."""
        warm = subscriber(tenant=TENANT_A)
        assert pap(radiusd, TENANT_A, warm)[0].accepted
        recovery = subscriber(tenant=TENANT_C)
        # TENANT_C's NAS is known to radiusd before its shard falls sick (the NAS
        # directory is not what this test is about).
        assert pap(radiusd, TENANT_C, f"nas-warmup-{uuid.uuid4().hex[:6]}")[0].code == "Access-Reject"
        other_lat: list[float] = []
        other_bad: list[str] = []
        done = threading.Event()

        def other_tenant() -> None:
            while not done.is_set() and len(other_lat) < 2000:
                ans, took = pap(radiusd, TENANT_A, warm)
                other_lat.append(took)
                if not ans.accepted:
                    other_bad.append(ans.output)
                time.sleep(0.01)
        sick_lat: list[float] = []
        with sickness(stack, variant):
            t = threading.Thread(target=other_tenant, daemon=True)
            t.start()
            try:
                for i in range(12):
                    ans, took = pap(radiusd, TENANT_C, f"cold-{variant}-{i}-{uuid.uuid4().hex[:6]}")
                    assert ans.code == "Access-Reject", ans.output
                    sick_lat.append(took)
                    time.sleep(0.25)
            finally:
                done.set()
                t.join(timeout=10)
        assert not other_bad, other_bad[:3]
        assert len(other_lat) >= 20
        assert max(other_lat) < 1.5, f"other tenant waited {max(other_lat):.2f} s"
        assert statistics.median(other_lat) < 0.2, statistics.median(other_lat)
        held = [round(x, 3) for x in sick_lat if x >= SLOW_S]
        assert len(held) <= 1, f"sick tenant's lookups held the process: {held} of {sick_lat}"
        # Recovered: the shard's lane sees it answer again, TENANT_C is served.
        last: list = []

        def served() -> bool:
            last[:] = [pap(radiusd, TENANT_C, recovery)[0]]
            return last[0].accepted
        assert wait_until(served, timeout_s=15), f"{last[0].output}\n{radiusd.log_tail(10)}"


def db_fallbacks(radiusd) -> float:
    port = radiusd.env["WIFICORE_METRICS_PORT"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("wificore_db_fallbacks_total"))


class TestRedisTrouble:
    USERS = 15

    def test_redis_outage_sends_no_warm_login_to_the_shards(self, stack, radiusd, subscriber):
        """Redis killed for ~6 s while 15 warm subscribers log in every 0.5 s (and then
        again after it is back): every login is answered and database-tier lookups stay
        within the stated bound of 2 (none is needed: they are all in process)."""
        users = [subscriber(tenant=TENANT_A) for _ in range(self.USERS)]
        for u in users:
            assert pap(radiusd, TENANT_A, u)[0].accepted
        before = db_fallbacks(radiusd)
        stack.redis.stop(sig=signal.SIGKILL)
        try:
            deadline = time.monotonic() + 6
            rounds = 0
            while time.monotonic() < deadline:
                for u in users:
                    ans, _ = pap(radiusd, TENANT_A, u)
                    assert ans.accepted, ans.output
                rounds += 1
                time.sleep(0.5)
        finally:
            stack.redis.start()
        time.sleep(3)  # reconnected: the channel is back
        for u in users:
            assert pap(radiusd, TENANT_A, u)[0].accepted
        assert rounds >= 3
        queries = db_fallbacks(radiusd) - before
        assert queries <= 2, f"{queries:.0f} of {(rounds + 1) * self.USERS} warm logins went to the shards"

    def test_hung_redis_costs_one_deadline(self, stack, radiusd, subscriber):
        """Redis SIGSTOPped: cold subscribers (not in process) fall back to the shard; at most
        one lookup waits the Redis socket timeout (250 ms), then the breaker answers at once
        (its probe runs in a thread, not in a hook)."""
        users = [subscriber(tenant=TENANT_A) for _ in range(10)]
        lat = []
        with stopped([stack.redis.pid]):
            for u in users:
                ans, took = pap(radiusd, TENANT_A, u)
                assert ans.accepted, ans.output
                lat.append(took)
                time.sleep(0.3)
        held = [round(x, 3) for x in lat if x >= 0.24]
        assert len(held) <= 1, f"hung Redis held lookups: {held} of {lat}"


def test_a_probe_that_raises_does_not_end_the_lane(world, monkeypatch):
    """An exception other than StoreUnavailable in a probe (a bug, an error psycopg does not
    class as operational) is logged and counted as a failed probe: the lane's threads live
    on and answer. Before, it ended the lane's thread silently (a lane never starts its
    threads again), and a lane with no thread left never answered its shard's lookups."""
    shards = Shards(ShardMap.load(world.shard_map), timeout_ms=500, pool_max=2, wait_ms=200)
    try:
        lane = shards.lanes["shard2"]
        real, raised = shards.execute, []

        def execute(shard, fn):
            if len(raised) < 2 and shard.name == "shard2":  # once per lane thread
                raised.append(shard.name)
                raise RuntimeError("a bug in a probe")
            return real(shard, fn)
        monkeypatch.setattr(shards, "execute", execute)
        lane.breaker.fail()
        lane.ensure_prober()
        assert wait_until(lambda: len(raised) == 2, timeout_s=10)
        # Closed, then RECOVER_STREAK fast probes before a hook waits on the shard again.
        assert wait_until(lambda: lane.waitable, timeout_s=10)
        assert all(t.is_alive() for t in lane._threads)
        assert lane.fetchone("SELECT %s::int", (7,)) == (7,)
    finally:
        shards.close()


def test_the_relays_direct_read_of_a_hung_shard_gives_up(stack, world, monkeypatch):
    """The relay's directory reads (rlm_wificore.background.DirectReads, shared by the
    listeners of every shard) have a client-side deadline: a SIGSTOPped shard (socket
    open, no answer) raises within it, and the next read works again. Before, the read
    waited for good, and every later NAS change of every shard waited behind it."""
    from rlm_wificore.background import DirectReads
    monkeypatch.setattr(DirectReads, "TIMEOUT_S", 1.0, raising=False)
    shard = ShardMap.load(world.shard_map).by_name("shard2")
    reads = DirectReads()
    try:
        assert reads(shard, "SELECT 1", ()) == [(1,)]
        result: list[object] = []

        def read() -> None:
            try:
                result.append(reads(shard, "SELECT 2", ()))
            except psycopg.OperationalError as exc:
                result.append(exc)
        with stopped(cluster_pids(stack.pg[1].pid)):
            t = threading.Thread(target=read, daemon=True)
            start = time.monotonic()
            t.start()
            t.join(timeout=10)
            took = time.monotonic() - start
            assert not t.is_alive(), "the read of a hung shard never gave up"
        assert isinstance(result[0], psycopg.OperationalError), result
        assert took < 8, f"{took:.1f} s"
        assert wait_until(lambda: _direct_answers(reads, shard), timeout_s=10)
    finally:
        reads.close()


def _direct_answers(reads, shard) -> bool:
    try:
        return reads(shard, "SELECT 1", ()) == [(1,)]
    except psycopg.OperationalError:
        return False


def test_a_change_during_a_redis_outage_is_announced_when_redis_is_back(stack, radiusd, subscriber):
    """A password changed while Redis is down (killed: the relay can neither delete the
    Redis copy nor announce the change) is served within a few seconds of Redis's return.
    Before, the change was dropped: the relay that took its slot again alone announced
    ``R``, and the processes refilled from the Redis copy (AOF kept it), the old password,
    until profile_ttl_s."""
    user = subscriber(tenant=TENANT_A, password="pw-1")
    assert pap(radiusd, TENANT_A, user, password="pw-1")[0].accepted  # in process and in Redis
    time.sleep(1.5)  # the Redis copy is in the append-only file (appendfsync everysec)
    stack.redis.stop(sig=signal.SIGKILL)
    try:
        with psycopg.connect(stack.pg[0].dsn(), autocommit=True) as conn:
            conn.execute("UPDATE subscribers SET password = 'pw-2' WHERE tenant_id = %s"
                         " AND username = %s", (TENANT_A[0], user))
        time.sleep(2)  # the relay heard the NOTIFY and could not announce it
    finally:
        stack.redis.start()
    assert wait_until(lambda: pap(radiusd, TENANT_A, user, password="pw-2")[0].accepted,
                      timeout_s=15), radiusd.log_tail()
