"""IPv6 (issue 16) through a real radiusd, Redis, PostgreSQL and batch writer: the
subscriber's Framed-IPv6-Prefix and Delegated-IPv6-Prefix, or the plan's
Framed-IPv6-Pool, in the Access-Accept; the prefixes and Framed-Interface-Id of an
Accounting-Request on the session's row."""

from __future__ import annotations

import pytest

from tests.conftest import TENANT_A
from tests.test_policy import pap


@pytest.fixture(scope="module")
def v6_plan(world):
    world.admin("plan", "add", "--tenant", str(TENANT_A[0]), "--name", "v6", "--simultaneous-use", "5",
                "--framed-ipv6-pool", "v6-pool", "--framed-pool", "v4-pool")
    return "v6"


class TestAccept:
    def test_the_subscribers_prefixes(self, auth, world, subscriber, v6_plan):
        """A subscriber's own prefixes go out (as given, normalised); its own Framed-IPv6-Prefix
        wins over the plan's pool."""
        user = subscriber(plan=v6_plan, framed_ipv6_prefix="2001:DB8:1:0::/64",
                          delegated_ipv6_prefix="2001:db8:100::/56")
        ans = pap(auth, TENANT_A, user)
        assert ans.accepted, ans.output
        assert ans.get("Framed-IPv6-Prefix") == "2001:db8:1::/64"
        assert ans.get("Delegated-IPv6-Prefix") == "2001:db8:100::/56"
        assert ans.get("Framed-IPv6-Pool") is None
        assert ans.get("Framed-Pool") == "v4-pool"
        import json
        shown = json.loads(world.admin("subscriber", "show", "--tenant", str(TENANT_A[0]), user).stdout)
        assert shown["stored"]["framed_ipv6_prefix"] == "2001:db8:1::/64"
        assert shown["cached"]["delegated_ipv6_prefix"] == "2001:db8:100::/56"

    def test_the_plans_pool(self, auth, subscriber, v6_plan):
        """Without a prefix of its own, the subscriber gets the plan's Framed-IPv6-Pool."""
        user = subscriber(plan=v6_plan)
        ans = pap(auth, TENANT_A, user)
        assert ans.accepted, ans.output
        assert ans.get("Framed-IPv6-Pool") == "v6-pool"
        assert ans.get("Framed-IPv6-Prefix") is None and ans.get("Delegated-IPv6-Prefix") is None

    def test_set_and_clear(self, auth, world, subscriber):
        """`subscriber set` gives or removes a prefix; `plan set` the pool."""
        user = subscriber()
        assert pap(auth, TENANT_A, user).get("Delegated-IPv6-Prefix") is None
        world.admin("subscriber", "set", "--tenant", str(TENANT_A[0]), user,
                    "--delegated-ipv6-prefix", "2001:db8:200::/48")
        from tests.test_accounting import wait_until
        assert wait_until(lambda: pap(auth, TENANT_A, user).get("Delegated-IPv6-Prefix")
                          == "2001:db8:200::/48", 3.0)
        world.admin("subscriber", "set", "--tenant", str(TENANT_A[0]), user, "--delegated-ipv6-prefix", "none")
        assert wait_until(lambda: pap(auth, TENANT_A, user).get("Delegated-IPv6-Prefix") is None, 3.0)

    def test_import(self, auth, world):
        """`subscriber import` takes the prefixes as columns; a bad one names its row."""
        tenant = str(TENANT_A[0])
        csv = ("username,password,plan,framed_ipv6_prefix,delegated_ipv6_prefix\n"
               "v6-imported,pw-123456,basic,2001:db8:9::/64,2001:db8:900::/56\n")
        world.admin("subscriber", "import", "--tenant", tenant, "-", input=csv)
        ans = pap(auth, TENANT_A, "v6-imported")
        assert ans.accepted and ans.get("Framed-IPv6-Prefix") == "2001:db8:9::/64"
        assert ans.get("Delegated-IPv6-Prefix") == "2001:db8:900::/56"
        bad = world.admin("subscriber", "import", "--tenant", tenant, "-", check=False,
                          input="username,password,plan,delegated_ipv6_prefix\nv6-x,pw-123456,basic,2001:db8::1/56\n")
        assert bad.returncode == 2 and "row 2: delegated_ipv6_prefix" in bad.stderr, bad.stderr

    @pytest.mark.parametrize("value", ["2001:db8::1/64", "10.0.0.0/8", "2001:db8::", "pool"])
    def test_a_bad_prefix_is_refused(self, world, value):
        """Host bits, IPv4, no length, not an address: refused with the field's name."""
        out = world.admin("subscriber", "add", "--tenant", str(TENANT_A[0]), "--username", "v6-bad",
                          "--password", "pw-123456", "--plan", "basic", "--framed-ipv6-prefix", value,
                          check=False)
        assert out.returncode == 2 and "framed_ipv6_prefix" in out.stderr, out.stderr


@pytest.fixture(scope="module")
def writer(world):
    """The stack's batch writer, for this module's accounting."""
    world.writer.start()
    yield world.writer
    world.writer.stop()


class TestAccounting:
    def test_prefixes_and_interface_id_reach_the_session_row(self, radiusd, writer, acct, subscriber,
                                                             shard_conn):
        """Framed-IPv6-Prefix, Delegated-IPv6-Prefix and Framed-Interface-Id of a real
        Accounting-Request, through the spool, Redis and the writer, on the session's row."""
        from tests.test_accounting import acct_packet, wait_until

        user = subscriber()
        sid = "6a000001"
        v6 = {"Framed-IPv6-Prefix": "2001:db8:5::/64", "Delegated-IPv6-Prefix": "2001:db8:500::/56",
              "Framed-Interface-Id": "0011:22ff:fe33:4455"}
        assert acct(TENANT_A, acct_packet(user, sid, "Start", **v6)).code == "Accounting-Response"
        assert acct(TENANT_A, acct_packet(user, sid, "Interim-Update", inp=10, out=20, t=60)).code \
            == "Accounting-Response"
        conn = shard_conn(TENANT_A[0])

        def row():
            return conn.execute("SELECT host(framed_ipv6_prefix), masklen(framed_ipv6_prefix), "
                                "delegated_ipv6_prefix::text, framed_interface_id, input_octets "
                                "FROM sessions WHERE tenant_id = %s AND username = %s AND "
                                "acct_session_id = %s", (TENANT_A[0], user, sid)).fetchone()
        got = wait_until(lambda: (r := row()) is not None and r[4] == 10 and r, 20.0)
        assert got, (row(), writer.log_tail())
        assert got[:3] == ("2001:db8:5::", 64, "2001:db8:500::/56")
        assert [int(g, 16) for g in got[3].split(":")] == [0x11, 0x22ff, 0xfe33, 0x4455], got[3]
