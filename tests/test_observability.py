"""Auth log records, metrics and logs: reasons everywhere, secrets nowhere."""

from __future__ import annotations

from tests.conftest import TENANT_A
from tests.test_accounting import wait_until
from tests.test_policy import metric
from wificore import wire
from wificore.keys import Keys

K = Keys("wc")


def auth_records(redis, username):
    found = []
    for p in range(4):
        for _id, fields in redis.xrange(K.stream(p), count=1_000_000):
            kind, rec = wire.unpack(fields[b"d"])
            if kind == "auth" and rec["username"] == username:
                found.append((rec, fields[b"d"]))
    return found


class TestAuthLog:
    def test_accept_and_reject_recorded_without_password(self, auth, subscriber, redis):
        """An accept and a reject each become an auth-log record with reason, NAS and MAC; no password."""
        user = subscriber(password="pw-never-logged")
        mac = "AA-BB-CC-DD-EE-77"
        auth(TENANT_A, {"User-Name": user, "User-Password": "pw-never-logged", "Calling-Station-Id": mac})
        auth(TENANT_A, {"User-Name": user, "User-Password": "wrong-pw-never-logged"})
        recs = wait_until(lambda: (lambda r: r if len(r) >= 2 else None)(auth_records(redis, user)))
        assert recs, "no auth-log records"
        by_result = {r["result"]: r for r, _raw in recs}
        assert by_result["accept"]["reason"] == "ok"
        assert by_result["accept"]["calling_station_id"] == mac
        assert by_result["accept"]["tenant_id"] == TENANT_A[0] and by_result["accept"]["nas_id"]
        assert by_result["reject"]["reason"] == "bad_password"
        for _r, raw in recs:
            assert b"never-logged" not in raw

    def test_policy_reject_reason_recorded(self, auth, subscriber, redis):
        """A policy reject is recorded with its reason code."""
        user = subscriber(status="suspended")
        auth(TENANT_A, {"User-Name": user, "User-Password": "pw-123456"})
        recs = wait_until(lambda: auth_records(redis, user))
        assert recs and recs[0][0]["reason"] == "suspended"


class TestMetricsAndLogs:
    def test_metrics_count_hooks_and_tiers(self, auth, subscriber, radiusd):
        """Hook results and cache tiers are counted; no username appears in the metrics."""
        user = subscriber()
        before = metric(radiusd, "wificore_cache_hits_total", tier="process")
        auth(TENANT_A, {"User-Name": user, "User-Password": "pw-123456"})
        auth(TENANT_A, {"User-Name": user, "User-Password": "pw-123456"})
        assert metric(radiusd, "wificore_cache_hits_total", tier="process") >= before + 1
        assert metric(radiusd, "wificore_requests_total", hook="authorize", result="ok") >= 2
        assert metric(radiusd, "wificore_hook_seconds_count") > 0
        import urllib.request
        text = urllib.request.urlopen(
            f"http://127.0.0.1:{radiusd.env['WIFICORE_METRICS_PORT']}/metrics", timeout=5).read().decode()
        assert user not in text

    def test_radiusd_log_has_events_not_secrets(self, auth, subscriber, radiusd):
        """Module events reach radiusd's log; passwords and NAS secrets never do."""
        user = subscriber(password="pw-not-in-log-42")
        auth(TENANT_A, {"User-Name": user, "User-Password": "pw-not-in-log-42"})
        log = radiusd.logfile.read_text(errors="replace")
        assert "rlm_wificore: ready" in log
        assert "client_added" in log
        assert "pw-not-in-log-42" not in log
        assert TENANT_A[2] not in log
