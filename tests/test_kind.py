"""A subscriber's kind (pppoe / hotspot) against what the NAS says a login is for
(issue 16), through a real radiusd, Redis and PostgreSQL: rejected as wrong_service
from a request for the other kind, accepted from its own kind and from a request that
does not say; never checked on a NAS with `--kind-check off`."""

from __future__ import annotations

import pytest

from rlm_wificore.policy import MESSAGES
from tests.conftest import TENANT_A
from tests.test_accounting import wait_until
from tests.test_policy import metric, pap
from wificore.keys import Keys
from wificore.profile import Nas

K = Keys("wc")

#: What a MikroTik sends with a PPPoE login (benchmarks/compare.py _common).
PPPOE = {"NAS-Port-Type": "Ethernet", "Service-Type": "Framed-User", "Framed-Protocol": "PPP",
         "Called-Station-Id": "pppoe-service"}
#: A MikroTik hotspot login (hotspot profile nas-port-type wireless-802.11, its default).
MIKROTIK_HOTSPOT = {"NAS-Port-Type": "Wireless-802.11", "Called-Station-Id": "hotspot1"}
#: A CoovaChilli (or Cisco WLC web-auth) login on a wired port.
CHILLI_HOTSPOT = {"NAS-Port-Type": "Ethernet", "Service-Type": "Login-User"}

#: A NAS of tenant A that never checks the kind (nas add --kind-check off), and one
#: switched off later with nas set.
NAS_OFF = (TENANT_A[0], "127.0.16.1", "secret-kind-off", "mikrotik")
NAS_SET = (TENANT_A[0], "127.0.16.2", "secret-kind-set", "mikrotik")


def wrong_service(radiusd) -> float:
    return metric(radiusd, "wificore_requests_total", hook="authorize", result="wrong_service")


def rejected_as_wrong_service(radiusd, ans, before: float) -> bool:
    return (ans.code == "Access-Reject" and ans.get("Reply-Message") == MESSAGES["wrong_service"]
            and wrong_service(radiusd) == before + 1)


class TestStrictByDefault:
    @pytest.mark.parametrize("hotspot", [MIKROTIK_HOTSPOT, CHILLI_HOTSPOT], ids=["mikrotik", "chilli"])
    @pytest.mark.parametrize("kind", ["hotspot", "pppoe"])
    def test_a_subscriber_on_the_other_kind_of_port(self, auth, subscriber, radiusd, hotspot, kind):
        """A hotspot subscriber is rejected (wrong_service) from a PPPoE login and accepted
        from a hotspot one; a PPPoE subscriber the other way round."""
        user = subscriber(kind=kind)
        own, other = (hotspot, PPPOE) if kind == "hotspot" else (PPPOE, hotspot)
        before = wrong_service(radiusd)
        assert rejected_as_wrong_service(radiusd, pap(auth, TENANT_A, user, **other), before)
        assert pap(auth, TENANT_A, user, **own).accepted

    def test_a_request_that_does_not_say_is_accepted(self, auth, subscriber):
        """No NAS-Port-Type, Service-Type or Framed-Protocol (or only Ethernet): either kind is
        accepted, as before the check existed."""
        for kind in ("pppoe", "hotspot"):
            user = subscriber(kind=kind)
            assert pap(auth, TENANT_A, user).accepted
            assert pap(auth, TENANT_A, user, **{"NAS-Port-Type": "Ethernet"}).accepted

    def test_subscriber_set_kind_applies_at_once(self, auth, world, subscriber):
        """`subscriber set --kind` changes which logins it is accepted from."""
        user = subscriber(kind="pppoe")
        assert pap(auth, TENANT_A, user, **PPPOE).accepted
        world.admin("subscriber", "set", "--tenant", str(TENANT_A[0]), user, "--kind", "hotspot")
        assert wait_until(lambda: pap(auth, TENANT_A, user, **PPPOE).code == "Access-Reject", 3.0)
        assert pap(auth, TENANT_A, user, **MIKROTIK_HOTSPOT).accepted


class TestKindCheckOff:
    def test_nas_add_kind_check_off_accepts_both(self, auth, world, subscriber, redis):
        """On a NAS added with --kind-check off, each kind is accepted from either login."""
        world.admin("nas", "add", "--tenant", str(TENANT_A[0]), "--name", "kind-off", "--ip", NAS_OFF[1],
                    "--secret", NAS_OFF[2], "--vendor", "mikrotik", "--kind-check", "off", "--replace")
        assert wait_until(lambda: redis.hexists(K.nas_directory, NAS_OFF[1]), 5.0)
        listed = world.admin("nas", "list", "--tenant", str(TENANT_A[0])).stdout
        assert any(line.split("\t")[1:5:3] == ["kind-off", "off"] for line in listed.splitlines()), listed
        hotspot, pppoe = subscriber(kind="hotspot"), subscriber(kind="pppoe")
        for user in (hotspot, pppoe):
            for attrs in (PPPOE, MIKROTIK_HOTSPOT, CHILLI_HOTSPOT):
                assert wait_until(lambda u=user, a=attrs: pap(auth, NAS_OFF, u, **a).accepted, 3.0), (user, attrs)

    def test_nas_set_kind_check(self, auth, world, subscriber, redis):
        """`nas set --kind-check off` on a NAS radiusd has not seen yet: its logins are not
        checked; a wrong value is refused with the field's name."""
        tenant = str(TENANT_A[0])
        world.admin("nas", "add", "--tenant", tenant, "--name", "kind-set", "--ip", NAS_SET[1],
                    "--secret", NAS_SET[2], "--vendor", "mikrotik", "--replace")
        world.admin("nas", "set", "--tenant", tenant, "--name", "kind-set", "--kind-check", "off")
        # The relay has the change before radiusd first asks for the client (it keeps a
        # client for its lifetime: a later change reaches it with the next lookup).
        assert wait_until(lambda: (raw := redis.hget(K.nas_directory, NAS_SET[1])) is not None
                          and Nas.unpack(raw).kind_check == "off", 5.0)
        user = subscriber(kind="hotspot")
        assert wait_until(lambda: pap(auth, NAS_SET, user, **PPPOE).accepted, 3.0)
        bad = world.admin("nas", "set", "--tenant", tenant, "--name", "kind-set", "--kind-check", "loose",
                          check=False)
        assert bad.returncode != 0 and "kind_check" in bad.stderr
