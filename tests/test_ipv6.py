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
    def test_the_subscribers_prefixes(self, auth, subscriber, v6_plan):
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

    @pytest.mark.parametrize("value", ["2001:db8::1/64", "10.0.0.0/8", "2001:db8::", "pool"])
    def test_a_bad_prefix_is_refused(self, world, value):
        """Host bits, IPv4, no length, not an address: refused with the field's name."""
        out = world.admin("subscriber", "add", "--tenant", str(TENANT_A[0]), "--username", "v6-bad",
                          "--password", "pw-123456", "--plan", "basic", "--framed-ipv6-prefix", value,
                          check=False)
        assert out.returncode == 2 and "framed_ipv6_prefix" in out.stderr, out.stderr
