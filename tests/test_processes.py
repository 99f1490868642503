"""Several radiusd processes on one pair of ports (contrib/reuseport/): each with
its own Python interpreter, spool and metrics, all answering the same NAS."""

from __future__ import annotations

import pytest

from stack.servers import Radiusd, RadiusdGroup, free_port
from tests import metrics, state
from tests.conftest import TENANT_A
from tests.radius import send
from tests.test_accounting import acct_packet, wait_until
from wificore.keys import Keys

K = Keys("wc")


def authorized(metrics_port: str) -> float:
    return metrics.total(metrics.scrape(metrics_port), "wificore_requests_total", hook="authorize")


@pytest.fixture(scope="module")
def group(world):
    auth_port, acct_port = free_port(), free_port()
    g = RadiusdGroup([
        Radiusd(world.state / f"group-{i}", auth_port=auth_port, acct_port=acct_port,
                shard_map=world.shard_map, redis_url=world.redis.url, metrics_port=free_port(),
                name=f"group-{i}", reuseport=True)
        for i in range(2)])
    g.start()
    yield g
    assert g.stop() == 0, g.log_tail()


class TestSharedPorts:
    def test_each_process_runs_one_event_loop(self, group):
        """Every radiusd with the module is started with -t (no thread pool: one event
        loop per process, see docs/decisions.md), as bin/stack and the benchmarks run it."""
        for pid in group.pids:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
            assert args[0].endswith(b"freeradius") and b"-t" in args, args

    def test_both_processes_answer(self, group, subscriber):
        """Requests from many source ports are all answered, and each process answers some
        (the kernel spreads them by source port; 40 all on one socket: ~1 in 10^12)."""
        user = subscriber()
        for _ in range(40):  # radclient binds a new source port each time
            ans = send(group.auth_port, "auth", TENANT_A[2],
                       {"User-Name": user, "User-Password": "pw-123456"}, source=TENANT_A[1])
            assert ans.accepted, f"{ans.output}\n{group.log_tail()}"
        counts = [authorized(m.env["WIFICORE_METRICS_PORT"]) for m in group.members]
        assert all(c > 0 for c in counts), counts

    def test_accounting_from_both_reaches_redis(self, group, subscriber, redis):
        """Each process spools and forwards its own records: usage adds up in Redis."""
        user = subscriber()
        for i in range(20):
            sid = f"8a{i:06x}"
            for status, octets in (("Start", 0), ("Stop", 1000)):
                ans = send(group.acct_port, "acct", TENANT_A[2],
                           acct_packet(user, sid, status, inp=octets, out=0, t=10 if octets else 0),
                           source=TENANT_A[1])
                assert ans.code == "Accounting-Response", f"{ans.output}\n{group.log_tail()}"
        def used() -> bytes | None:
            return state.usage_field(redis, K, TENANT_A[0], user, "octets")
        assert wait_until(lambda: used() == b"20000", timeout_s=10), f"{used()}\n{group.log_tail()}"

    def test_one_process_stopped_the_other_serves(self, world, subscriber):
        """With one process gone the kernel sends everything to the ones left."""
        auth_port, acct_port = free_port(), free_port()
        g = RadiusdGroup([
            Radiusd(world.state / f"pair-{i}", auth_port=auth_port, acct_port=acct_port,
                    shard_map=world.shard_map, redis_url=world.redis.url, metrics_port=0,
                    name=f"pair-{i}", reuseport=True)
            for i in range(2)])
        g.start()
        try:
            user = subscriber()
            assert g.members[1].stop() == 0
            for _ in range(10):
                ans = send(auth_port, "auth", TENANT_A[2],
                           {"User-Name": user, "User-Password": "pw-123456"}, source=TENANT_A[1])
                assert ans.accepted, f"{ans.output}\n{g.log_tail()}"
        finally:
            g.stop()
