"""Policy, replies and invalidation through a real radiusd, Redis and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from tests import metrics
from tests.conftest import TENANT_A, TENANT_B
from tests.test_accounting import acct_packet, wait_until


def metric(radiusd, name: str, **labels: str) -> float:
    return metrics.total(metrics.scrape(radiusd.env["WIFICORE_METRICS_PORT"]), name, **labels)


@pytest.fixture(scope="module")
def quota_plan(world):
    world.admin("plan", "add", "--tenant", str(TENANT_A[0]), "--name", "quota", "--data-quota-bytes",
                "1000", "--time-quota-s", "100", "--simultaneous-use", "5", "--session-timeout-s", "7200")
    return "quota"


def pap(auth, tenant, user, password="pw-123456", **extra):
    return auth(tenant, {"User-Name": user, "User-Password": password, **extra})


class TestRejectReasons:
    def test_suspended(self, auth, subscriber):
        """A suspended subscriber is rejected with a message a login page can show."""
        user = subscriber(status="suspended")
        ans = pap(auth, TENANT_A, user)
        assert ans.code == "Access-Reject"
        assert "suspended" in ans.get("Reply-Message")

    def test_expired_by_date(self, auth, subscriber):
        """A subscriber past its expiry date is rejected as expired."""
        user = subscriber(expires_at="2020-01-01T00:00:00+00:00")
        ans = pap(auth, TENANT_A, user)
        assert ans.code == "Access-Reject" and "expired" in ans.get("Reply-Message")

    def test_mac_binding(self, auth, subscriber):
        """A hotspot user bound to a MAC is accepted from it and rejected from another."""
        user = subscriber(kind="hotspot", mac_binding="aa:bb:cc:dd:ee:01")
        assert pap(auth, TENANT_A, user, **{"Calling-Station-Id": "AA-BB-CC-DD-EE-01"}).accepted
        ans = pap(auth, TENANT_A, user, **{"Calling-Station-Id": "AA-BB-CC-DD-EE-02"})
        assert ans.code == "Access-Reject" and "another device" in ans.get("Reply-Message")

    def test_session_limit(self, auth, acct, subscriber):
        """With one live session and Simultaneous-Use 1, a second login is rejected."""
        user = subscriber()
        assert pap(auth, TENANT_A, user).accepted
        acct(TENANT_A, acct_packet(user, "82000001", "Start"))
        ans = wait_until(lambda: (lambda a: a if a.code == "Access-Reject" else None)(pap(auth, TENANT_A, user)))
        assert ans is not None and "simultaneous" in ans.get("Reply-Message")
        acct(TENANT_A, acct_packet(user, "82000001", "Stop", t=5))
        assert wait_until(lambda: pap(auth, TENANT_A, user).accepted)

    def test_data_quota(self, auth, acct, subscriber, quota_plan):
        """A subscriber whose usage reached the data quota is rejected."""
        user = subscriber(plan=quota_plan)
        assert pap(auth, TENANT_A, user).accepted
        acct(TENANT_A, acct_packet(user, "82000002", "Start"))
        acct(TENANT_A, acct_packet(user, "82000002", "Stop", inp=600, out=600, t=5))
        ans = wait_until(lambda: (lambda a: a if a.code == "Access-Reject" else None)(pap(auth, TENANT_A, user)))
        assert ans is not None and "data quota" in ans.get("Reply-Message")

    def test_time_quota(self, auth, acct, subscriber, quota_plan):
        """A subscriber whose online time reached the time quota is rejected."""
        user = subscriber(plan=quota_plan)
        acct(TENANT_A, acct_packet(user, "82000003", "Start"))
        acct(TENANT_A, acct_packet(user, "82000003", "Stop", t=150))
        ans = wait_until(lambda: (lambda a: a if a.code == "Access-Reject" else None)(pap(auth, TENANT_A, user)))
        assert ans is not None and "time quota" in ans.get("Reply-Message")


class TestReply:
    def test_mikrotik_rate_limit(self, auth, subscriber):
        """A MikroTik NAS gets Mikrotik-Rate-Limit and the plan's timers."""
        user = subscriber()
        ans = pap(auth, TENANT_A, user)
        assert ans.accepted
        assert ans.get("Mikrotik-Rate-Limit") == "2000k/10000k"
        assert ans.get("Session-Timeout") == "3600"
        assert ans.get("Idle-Timeout") == "600"
        assert ans.get("Acct-Interim-Interval") == "60"

    def test_wispr_bandwidth(self, auth, subscriber):
        """A WISPr NAS gets WISPr-Bandwidth-Max-Up/Down in bit/s."""
        user = subscriber(tenant=TENANT_B)
        ans = pap(auth, TENANT_B, user)
        assert ans.accepted
        assert ans.get("WISPr-Bandwidth-Max-Up") == "2000000"
        assert ans.get("WISPr-Bandwidth-Max-Down") == "10000000"

    def test_session_timeout_is_least_of_limits(self, auth, subscriber):
        """Session-Timeout is the time to expiry when that is sooner than the plan's limit."""
        soon = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=600)).isoformat()
        user = subscriber(expires_at=soon)
        ans = pap(auth, TENANT_A, user)
        assert ans.accepted
        assert 500 <= int(ans.get("Session-Timeout")) <= 600


class TestInvalidation:
    @pytest.mark.parametrize("change,message", [
        (("--status", "suspended"), "suspended"),
        (("--password", "new-password"), "Invalid username or password"),
    ])
    def test_change_takes_effect_within_2s(self, auth, world, subscriber, change, message):
        """A committed change reaches the running radiusd within 2 seconds, not at TTL expiry."""
        user = subscriber()
        assert pap(auth, TENANT_A, user).accepted  # now cached in process and in Redis
        world.admin("subscriber", "set", "--tenant", str(TENANT_A[0]), user, *change)
        start = time.monotonic()
        ans = wait_until(lambda: (lambda a: a if a.code == "Access-Reject" else None)(pap(auth, TENANT_A, user)),
                         timeout_s=2.0)
        assert ans is not None, "change not seen within 2 s"
        assert message in ans.get("Reply-Message")
        assert time.monotonic() - start <= 2.5

    def test_deletion_and_creation(self, auth, world, subscriber):
        """A deleted user is rejected within 2 s; a user created after a miss is accepted."""
        user = subscriber()
        assert pap(auth, TENANT_A, user).accepted
        world.admin("subscriber", "delete", "--tenant", str(TENANT_A[0]), user)
        assert wait_until(lambda: pap(auth, TENANT_A, user).code == "Access-Reject", timeout_s=2.0)
        world.admin("subscriber", "add", "--tenant", str(TENANT_A[0]), "--username", user,
                    "--password", "pw-123456", "--plan", "basic")
        assert wait_until(lambda: pap(auth, TENANT_A, user).accepted, timeout_s=2.0)


class TestCredentialCache:
    @pytest.mark.parametrize("password_type,password,wrong", [("bcrypt", "bc-pass-9", "bc-pass-8"),
                                                              ("nthash", "nt-pap-5", "nt-pap-4")])
    def test_hashed_pap_reauth_hits_verified_cache(self, auth, subscriber, radiusd, password_type,
                                                   password, wrong):
        """The second PAP login of a bcrypt or NT-hash user is answered from the
        verified-credential cache; a wrong password never matches it."""
        user = subscriber(password=password, password_type=password_type)
        before = metric(radiusd, "wificore_credential_cache_hits_total")
        assert pap(auth, TENANT_A, user, password=password).accepted
        assert pap(auth, TENANT_A, user, password=password).accepted
        assert metric(radiusd, "wificore_credential_cache_hits_total") == before + 1
        assert pap(auth, TENANT_A, user, password=wrong).code == "Access-Reject"

    def test_bcrypt_with_chap_is_rejected(self, auth, subscriber):
        """CHAP cannot be checked against bcrypt: a reject, same message as a bad password."""
        user = subscriber(password="bc-pass-7", password_type="bcrypt")
        ans = auth(TENANT_A, {"User-Name": user, "CHAP-Password": "bc-pass-7"})
        assert ans.code == "Access-Reject"
        assert ans.get("Reply-Message") == "Invalid username or password"
