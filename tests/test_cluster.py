"""The RADIUS tier (stack/cluster.py, docs/cluster.md): three RADIUS hosts, each a network
namespace with its own radiusd and spool, behind the FreeRADIUS balancer, sharing one
Redis and the shards. NAS packets go to the balancer on 127.0.0.1 from the NAS's own
loopback address, as on a single host. One tier for the whole module (~10 s to start).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
import redis as redis_lib

from benchmarks.cluster import Load, failover_gap
from stack import cluster as tier
from stack.local import Ports
from tests import rawradius as raw
from tests import state
from tests.radius import send
from tests.test_accounting import acct_packet, wait_until
from wificore.keys import Keys

K = Keys("wc")
PASSWORD = "pw-123456"
#: Two tenants on the two shards: (tenant id, NAS address, secret, vendor).
TENANT_A = (11, "127.0.41.1", "tier-secret-a", "mikrotik")
TENANT_B = (611, "127.0.41.2", "tier-secret-b", "generic")
USERS = 24  # of tenant A, spread over the hosts by the balancer


@pytest.fixture(scope="module")
def tier_up():
    why = tier.netns_available()
    if why:
        pytest.skip(why)
    state = Path(tempfile.mkdtemp(prefix="wificore-tier-", dir="/tmp"))
    c = tier.Cluster(state, Ports.free(), hosts=3, fast=True)

    def seed(st):
        for tenant, ip, secret, vendor in (TENANT_A, TENANT_B):
            st.admin("tenant", "add", "--id", str(tenant), "--name", f"tier {tenant}")
            st.admin("nas", "add", "--tenant", str(tenant), "--name", f"nas-{tenant}", "--ip", ip,
                     "--secret", secret, "--vendor", vendor)
            st.admin("plan", "add", "--tenant", str(tenant), "--name", "one", "--simultaneous-use", "1")
        for tenant, names in ((TENANT_A, [f"t{i}" for i in range(USERS)]), (TENANT_B, ["b0", "b1"])):
            st.admin("subscriber", "import", "--tenant", str(tenant[0]), "-",
                     input="username,password,plan\n" + "".join(f"{n},{PASSWORD},one\n" for n in names))
    try:
        c.up(after_data=seed)
        # The balancer learns each NAS on its first packet (the NAS directory in Redis).
        assert wait_until(lambda: login(c, TENANT_A, "t0").code is not None, timeout_s=20), \
            c.balancer.log_tail()
        yield c
    finally:
        c.down()
        if not os.environ.get("WIFICORE_TEST_KEEP"):
            shutil.rmtree(state, ignore_errors=True)
            if c.stack.postgres_home != state:
                shutil.rmtree(c.stack.postgres_home, ignore_errors=True)


def login(c, tenant, user, password=PASSWORD, **extra):
    return send(c.stack.ports.auth, "auth", tenant[2], {"User-Name": user, "User-Password": password,
                                                         **extra}, source=tenant[1])


def acct(c, tenant, attrs):
    return send(c.stack.ports.acct, "acct", tenant[2], attrs, source=tenant[1], retries=3)


_AUTHZ = re.compile(r'^wificore_requests_total\{hook="authorize",result="[^"]*"\} (\S+)$', re.M)


def authorize_counts(c) -> list[float]:
    """Per host: the module's authorize calls so far."""
    return [sum(float(v) for v in _AUTHZ.findall(h.scrape())) for h in c.hosts]


def host_of(c, tenant, user) -> int:
    """The index of the host that answers ``user``'s logins."""
    before = authorize_counts(c)
    assert login(c, tenant, user).code is not None
    grown = [i for i, (a, b) in enumerate(zip(before, authorize_counts(c), strict=True)) if b > a]
    assert len(grown) == 1, grown
    return grown[0]


@pytest.fixture(scope="module")
def placement(tier_up):
    """Tenant A's users by the host that serves them."""
    return {f"t{i}": host_of(tier_up, TENANT_A, f"t{i}") for i in range(USERS)}


def shortname(c, tenant) -> str:
    with psycopg.connect(c.stack.pg[0 if tenant[0] < c.stack.split_at else 1].dsn()) as conn:
        nas_id = conn.execute("SELECT nas_id FROM nas WHERE tenant_id = %s", (tenant[0],)).fetchone()[0]
    return f"{tenant[0]}:{nas_id}:{tenant[3]}"


def proxy_client(value: str) -> tuple[int, bytes]:
    return (raw.VENDOR_SPECIFIC, raw.vsa(64999, 1, value.encode()))


class TestTier:
    def test_logins_of_two_tenants_through_the_balancer(self, tier_up):
        c = tier_up
        assert login(c, TENANT_A, "t1").accepted
        assert login(c, TENANT_B, "b0").accepted
        assert login(c, TENANT_B, "b0", "wrong").code == "Access-Reject"
        # Each tenant is its NAS: a user of B from A's NAS is unknown there.
        assert login(c, TENANT_A, "b0").code == "Access-Reject"
        # An address that is no NAS gets no answer from the balancer (and costs the hosts nothing).
        assert send(c.stack.ports.auth, "auth", "x", {"User-Name": "t1", "User-Password": PASSWORD},
                    source="127.0.41.99", timeout_s=0.5).code is None

    def test_a_subscriber_stays_on_one_host(self, tier_up, placement):
        c = tier_up
        assert len(set(placement.values())) >= 2, f"keyed-balance put every user on one host: {placement}"
        for user in ("t2", "t3", "t4"):
            before = authorize_counts(c)
            for _ in range(4):
                assert login(c, TENANT_A, user).accepted
            grown = [b - a for a, b in zip(before, authorize_counts(c), strict=True)]
            assert grown[placement[user]] == 4 and sum(grown) == 4, (user, grown, placement[user])

    def test_simultaneous_use_across_hosts(self, tier_up, placement):
        """A session opened on one host counts on the others (shared Redis): the second
        login of a one-session plan, answered by another host, is rejected."""
        c = tier_up
        user = "t5"
        home = placement[user]
        assert acct(c, TENANT_A, acct_packet(user, "c1000001", "Start")).code == "Accounting-Response"
        r = redis_lib.Redis.from_url(c.stack.redis.url)
        try:
            assert wait_until(lambda: state.sessions(r, K, TENANT_A[0], user) == 1)
        finally:
            r.close()
        other = c.hosts[(home + 1) % len(c.hosts)]
        name = shortname(c, TENANT_A)

        def as_balancer(u: str):
            return raw.send(1812, raw.ACCESS_REQUEST, c.secret,
                            [(raw.USER_NAME, u.encode()), (raw.USER_PASSWORD, PASSWORD.encode()),
                             proxy_client(name)], source=c.net.balancer_addr, server=other.addr)
        code, attrs = as_balancer(user)
        assert code == "Access-Reject", (code, attrs)
        assert raw.values(attrs, raw.REPLY_MESSAGE) == [b"Maximum number of simultaneous sessions reached"]
        free = next(u for u, h in placement.items() if h == home and u != user)
        assert as_balancer(free)[0] == "Access-Accept"  # the same way, a user without a session
        assert acct(c, TENANT_A, acct_packet(user, "c1000001", "Stop", t=5)).code == "Accounting-Response"

    def test_a_forged_identity_is_refused(self, tier_up):
        """A NAS naming another NAS in WiFiCore-Proxy-Client: its Access-Request is rejected
        by the balancer; in accounting the attribute is replaced by the NAS's own name."""
        c = tier_up
        forged = shortname(c, TENANT_B)
        for name in (forged, shortname(c, TENANT_A)):  # another NAS's name, or even its own
            attrs = [(raw.USER_NAME, b"t7"), (raw.USER_PASSWORD, PASSWORD.encode()), proxy_client(name)]
            code, _ = raw.send(c.stack.ports.auth, raw.ACCESS_REQUEST, TENANT_A[2], attrs,
                               source=TENANT_A[1])
            assert code == "Access-Reject", name
        assert login(c, TENANT_A, "t7").accepted  # the same request without it
        # Accounting: booked under the sender (tenant A), not under B.
        start = [(raw.USER_NAME, b"t6"), (raw.ACCT_STATUS_TYPE, raw.u32(1)),
                 (raw.ACCT_SESSION_ID, b"c1000002"), proxy_client(forged)]
        code, _ = raw.send(c.stack.ports.acct, raw.ACCOUNTING_REQUEST, TENANT_A[2], start,
                           source=TENANT_A[1])
        assert code == "Accounting-Response"
        r = redis_lib.Redis.from_url(c.stack.redis.url)
        try:
            assert wait_until(lambda: state.sessions(r, K, TENANT_A[0], "t6") == 1)
            assert state.sessions(r, K, TENANT_B[0], "t6") == 0
        finally:
            r.close()
        # Straight to a host from an address that is not the balancer: not its client.
        code, _ = raw.send(1812, raw.ACCESS_REQUEST, c.secret,
                           [(raw.USER_NAME, b"b1"), (raw.USER_PASSWORD, PASSWORD.encode()),
                            proxy_client(forged)], source=c.net.data_addr, server=c.hosts[0].addr,
                           timeout_s=0.5, tries=1)
        assert code is None

    def test_host_killed_under_load(self, tier_up, placement):
        """Accounting answered by a host that cannot reach Redis stays in its spool; the host
        is killed (SIGKILL) under a login load: its subscribers are answered by the others
        within the detection time, the others are not disturbed, and once radiusd is
        started again on the dead host's state folder its spool reaches PostgreSQL: every
        answered session once."""
        c = tier_up
        victim = max(set(placement.values()), key=lambda h: sum(1 for v in placement.values() if v == h))
        host = c.hosts[victim]
        theirs = sorted(u for u, h in placement.items() if h == victim)
        assert len(theirs) >= 2, placement
        # 1. Accounting answered from the spool only: the host cannot reach Redis.
        c.net.cut_data(host.i, True)
        answered = []
        try:
            for n, user in enumerate(theirs):
                sid = f"c2{n:06d}"
                ok = all(acct(c, TENANT_A, acct_packet(user, sid, status, inp=inp, t=t)).code
                         == "Accounting-Response"
                         for status, inp, t in (("Start", 0, 0), ("Stop", 1000 + n, 30)))
                assert ok, f"{user}: accounting not answered\n{host.radiusd.log_tail()}"
                answered.append((user, sid, 1000 + n))
            pending = float(re.search(r"^wificore_spool_pending_bytes (\S+)$", host.scrape(), re.M).group(1))
            assert pending > 0, "the records went to Redis: the test would prove nothing"
            # 2. A bounded login load over every user; the host dies in the middle of it.
            load = Load(("127.0.0.1", c.stack.ports.auth), TENANT_A, sorted(placement), rate=150,
                        duration_s=tier.DETECTION_S + 5.5, password=PASSWORD)
            load.start()
            time.sleep(2.0)
            t_kill = time.monotonic()
            host.kill()
        finally:
            c.net.cut_data(host.i, False)
        # Accounting of the dead host's subscribers across the gap, sent as a NAS does
        # (a new packet after each unanswered one): answered only by a live host.
        for n, user in enumerate(theirs[:4]):
            sid = f"c3{n:06d}"
            for status, inp, t in (("Start", 0, 0), ("Stop", 2000 + n, 30)):
                packet = acct_packet(user, sid, status, inp=inp, t=t)
                ok = any(send(c.stack.ports.acct, "acct", TENANT_A[2], packet, source=TENANT_A[1],
                              timeout_s=1.0, retries=1).code == "Accounting-Response" for _ in range(6))
                assert ok, f"{user} {status}: never answered after the kill"
            answered.append((user, sid, 2000 + n))
        load.join()
        mine = [r for r in load.results if r[1] in theirs]
        others = [r for r in load.results if r[1] not in theirs]
        before = [r for r in mine if r[0] < t_kill - 0.5]
        assert before and all(r[2] for r in before), "the victim's users were not served before the kill"
        gap = failover_gap(load.results, set(theirs), t_kill)
        print(f"failover: the victim's share moved after {gap:.2f} s (detection bound {tier.DETECTION_S} s)")
        assert gap <= tier.DETECTION_S, f"the share moved after {gap:.1f} s"
        late = [r for r in mine if r[0] > t_kill + gap + 0.1]
        assert late and all(r[2] for r in late), "the victim's users not answered after the move"
        answered_others = sum(1 for r in others if r[2]) / max(1, len(others))
        assert answered_others >= 0.99, f"other hosts' users answered {answered_others:.1%}"
        # 3. The drain: radiusd again on the dead host's state folder forwards its spool.
        host.start()
        dsn = c.stack.pg[0].dsn()

        def booked():
            with psycopg.connect(dsn) as conn:
                rows = conn.execute(
                    "SELECT acct_session_id, count(*), max(input_octets), bool_and(stopped_at IS NOT NULL), "
                    "max(nas_id) FROM sessions WHERE tenant_id = %s AND acct_session_id = ANY(%s) GROUP BY 1",
                    (TENANT_A[0], [sid for _u, sid, _o in answered])).fetchall()
            return {sid: (n, octets, stopped, nas) for sid, n, octets, stopped, nas in rows}
        nas_a = int(shortname(c, TENANT_A).split(":")[1])  # the NAS it came from, as on one host
        want = {sid: (1, octets, True, nas_a) for _u, sid, octets in answered}
        assert wait_until(lambda: booked() == want, timeout_s=30), (booked(), want, host.radiusd.log_tail())
        r = redis_lib.Redis.from_url(c.stack.redis.url)
        try:
            per_user: dict[str, int] = {}
            for user, _sid, octets in answered:
                per_user[user] = per_user.get(user, 0) + octets
            for user, octets in per_user.items():  # counted once, not twice
                assert state.usage_field(r, K, TENANT_A[0], user, "octets") == str(octets).encode(), user
        finally:
            r.close()



def test_results_keep_every_other_key(tmp_path):
    """benchmarks/cluster.py writes ``cluster`` only: the other keys of latest.json, and the
    Redis master's failover gap measured elsewhere, stay as they are."""
    from benchmarks.cluster import write
    (tmp_path / "latest.json").write_text(json.dumps({
        "configurations": [1, 2], "cluster": {"failover_s": {"redis_master": 4.2}, "old": 1}}))
    write(tmp_path, {"rps_by_hosts": {"1": 1.0, "2": 2.0, "3": 3.0}, "balancer_cpu_us_per_request": 50.0,
                     "failover_s": {"host": 1.5}})
    doc = json.loads((tmp_path / "latest.json").read_text())
    assert doc["configurations"] == [1, 2]
    assert doc["cluster"]["failover_s"] == {"redis_master": 4.2, "host": 1.5}
    assert doc["cluster"]["rps_by_hosts"] == {"1": 1.0, "2": 2.0, "3": 3.0}
