"""A radiusd stopped with SIGTERM answers what NAS devices already sent it (issue 14).

radiusd runs with -t: the requests waiting for it are in its socket's receive queue,
and stock radiusd exits at once on SIGTERM, dropping them (each costs the NAS a
retransmission timeout). With contrib/reuseport/ preloaded, a SIGTERM first takes the
process out of the port's balancing (new packets go to the other processes), radiusd
answers what is queued, then stops (WIFICORE_DRAIN_S bounds it).

Two processes share the ports. Process A is SIGSTOPped while accounting arrives from
many source ports, so that its queue fills; then it gets SIGTERM and SIGCONT. Every
request the kernel accepted (sent minus the sockets' receive-buffer drops, from
/proc/net/udp) must be answered, by A before it exits or by B.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import time
import uuid

import pytest

from stack.servers import Radiusd, RadiusdGroup, free_port, pid_alive
from tests import rawradius as rr
from tests.conftest import TENANT_A

SOCKETS = 64
REQUESTS = 2400


def udp_port_stats(port: int) -> tuple[int, int]:
    """(receive queue bytes, drops) summed over the UDP sockets bound to ``port``."""
    queued = drops = 0
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = open(name).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port:
                queued += int(f[4].split(":")[1], 16)
                drops += int(f[12])
    return queued, drops


def interim(user: str, sid: str, t: int) -> list[tuple[int, bytes]]:
    return [(rr.USER_NAME, user.encode()), (rr.ACCT_STATUS_TYPE, rr.u32(3)),
            (rr.ACCT_SESSION_ID, sid.encode()), (46, rr.u32(t)), (42, rr.u32(100 * t)),
            (rr.NAS_PORT, rr.u32(1))]


@pytest.fixture
def pair(world):
    def make(**env: str) -> RadiusdGroup:
        auth_port, acct_port = free_port(), free_port()
        tag = uuid.uuid4().hex[:6]
        return RadiusdGroup([
            Radiusd(world.state / f"drain-{tag}-{i}", auth_port=auth_port, acct_port=acct_port,
                    shard_map=world.shard_map, redis_url=world.redis.url, metrics_port=0,
                    name=f"drain-{tag}-{i}", reuseport=True, extra_env=env)
            for i in range(2)])
    made: list[RadiusdGroup] = []

    def factory(**env: str) -> RadiusdGroup:
        g = make(**env)
        made.append(g)
        g.start()
        return g
    yield factory
    for g in made:
        for m in g.members:
            if m.pid is not None and pid_alive(m.pid):
                os.kill(m.pid, signal.SIGCONT)
        g.stop()


def run_stop_under_load(group: RadiusdGroup) -> dict[str, int | float]:
    a = group.members[0]
    secret = TENANT_A[2].encode()
    socks = []
    for _ in range(SOCKETS):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((TENANT_A[1], 0))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.setblocking(False)
        socks.append(s)
    user = f"drain-{uuid.uuid4().hex[:8]}"
    sent: set[tuple[int, int]] = set()
    answered: set[tuple[int, int]] = set()

    def collect(wait_s: float, quiet_s: float = 3.0) -> None:
        """Answers until all are in, ``wait_s`` has passed or none came for ``quiet_s``."""
        now = time.monotonic()
        deadline, last = now + wait_s, now
        while time.monotonic() < deadline and time.monotonic() - last < quiet_s:
            ready, _, _ = select.select(socks, [], [], 0.2)
            if not ready and len(answered) == len(sent):
                return
            if ready:
                last = time.monotonic()
            for s in ready:
                while True:
                    try:
                        data = s.recv(4096)
                    except BlockingIOError:
                        break
                    if len(data) >= 20 and data[0] == rr.ACCOUNTING_RESPONSE:
                        answered.add((socks.index(s), data[1]))
    try:
        # Both processes answer before the test begins.
        for i, s in enumerate(socks):
            s.sendto(rr.encode(rr.ACCOUNTING_REQUEST, 0, secret, interim(user, f"w{i}", 1)),
                     ("127.0.0.1", group.acct_port))
            sent.add((i, 0))
        collect(10)
        assert answered == sent, f"warm-up: {len(answered)} of {len(sent)} answered\n{group.log_tail()}"
        os.kill(a.pid, signal.SIGSTOP)
        try:
            base_drops = udp_port_stats(group.acct_port)[1]
            for n in range(REQUESTS):
                i, ident = n % SOCKETS, 1 + n // SOCKETS
                pkt = rr.encode(rr.ACCOUNTING_REQUEST, ident, secret, interim(user, f"s{i}", 10 + ident))
                socks[i].sendto(pkt, ("127.0.0.1", group.acct_port))
                sent.add((i, ident))
                if n % 200 == 199:
                    collect(0.05)  # B answers its share meanwhile
            time.sleep(0.5)
            queued, drops = udp_port_stats(group.acct_port)
            drops -= base_drops
            t_term = time.monotonic()
            os.kill(a.pid, signal.SIGTERM)
        finally:
            os.kill(a.pid, signal.SIGCONT)
        collect(15)
        code = a.stop(timeout_s=15)
        return {"sent": len(sent), "answered": len(answered), "drops": drops, "queued_bytes": queued,
                "exit": code if code is not None else -1, "stop_s": time.monotonic() - t_term}
    finally:
        for s in socks:
            s.close()


class TestGracefulStop:
    def test_sigterm_answers_what_was_queued(self, pair):
        r = run_stop_under_load(pair())
        assert r["queued_bytes"] > 0, f"nothing was queued at the SIGTERM: the test proves nothing {r}"
        assert r["exit"] == 0, r
        assert r["answered"] == r["sent"] - r["drops"], r

    def test_without_the_drain_the_queue_is_lost(self, pair):
        """The same run with WIFICORE_DRAIN_S=0 (stock radiusd's stop): what A had queued
        goes unanswered -- the run above measures something."""
        r = run_stop_under_load(pair(WIFICORE_DRAIN_S="0"))
        assert r["queued_bytes"] > 0, r
        assert r["answered"] < r["sent"] - r["drops"], r
