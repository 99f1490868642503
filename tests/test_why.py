"""`subscriber why` and the tenant's time zone (issue 16), against real servers:
radiusd with the module, Redis, the shards and batch_writer."""

from __future__ import annotations

import datetime as dt
import json
import time
import zoneinfo

import pytest

from tests.conftest import TENANT_A
from tests.radius import send

#: Tenants of this file: (tenant_id, NAS source address, secret, time zone).
KIRITIMATI = (160, "127.0.160.1", "secret-kiritimati", "Pacific/Kiritimati")  # UTC+14
LOS_ANGELES = (161, "127.0.161.1", "secret-la", "America/Los_Angeles")       # UTC-8 in December


def run(stack, *args, input=None):
    return stack.admin(*args, check=False, input=input)


@pytest.fixture(scope="module")
def writer(world, radiusd):
    """batch_writer, started for this file unless already running; stopped by its PID."""
    started = not world.writer.running()
    if started:
        world.writer.start()
    yield world.writer
    if started:
        world.writer.stop()


@pytest.fixture(scope="module")
def zoned(world):
    for tenant, ip, secret, zone in (KIRITIMATI, LOS_ANGELES):
        out = run(world, "tenant", "add", "--id", str(tenant), "--name", f"zone {zone}", "--time-zone", zone)
        assert out.returncode == 0, out.stderr
        world.admin("nas", "add", "--tenant", str(tenant), "--name", f"nas-{tenant}", "--ip", ip,
                    "--secret", secret, "--vendor", "generic")
        world.admin("plan", "add", "--tenant", str(tenant), "--name", "basic", "--simultaneous-use", "1")
    return world


def why(stack, tenant: int, user: str, *extra: str) -> tuple[str, list[dict[str, str]]]:
    out = run(stack, "subscriber", "why", "--tenant", str(tenant), user, *extra)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    header = lines[1].split("\t")
    return lines[0], [dict(zip(header, line.split("\t"), strict=True)) for line in lines[2:]]


def wait_why(stack, tenant: int, user: str, want: int, source: str = "stored",
             timeout_s: float = 30.0) -> tuple[str, list[dict[str, str]]]:
    deadline = time.monotonic() + timeout_s
    while True:
        title, rows = why(stack, tenant, user)
        if sum(r["source"] == source for r in rows) >= want or time.monotonic() > deadline:
            return title, rows
        time.sleep(0.3)


class TestWhy:
    def test_three_logins_newest_first_with_reason_nas_and_method(self, world, writer, subscriber, auth):
        """A wrong password (PAP), the right one (CHAP), then another device (MS-CHAP): once the
        writer stored them, `subscriber why` shows all three, newest first, with the reasons,
        the NAS's name and address, the method and the Calling-Station-Id."""
        mac = "AA-BB-CC-16-00-01"
        user = subscriber(password="right-pw", mac_binding=mac)
        assert not auth(TENANT_A, {"User-Name": user, "User-Password": "wrong-pw",
                                   "Calling-Station-Id": mac}).accepted
        assert auth(TENANT_A, {"User-Name": user, "CHAP-Password": "right-pw",
                               "Calling-Station-Id": mac}).accepted
        assert not auth(TENANT_A, {"User-Name": user, "MS-CHAP-Password": "right-pw",
                                   "Calling-Station-Id": "AA-BB-CC-16-00-02"}).accepted
        title, rows = wait_why(world, TENANT_A[0], user, 3)
        assert "times in UTC" in title, title
        assert [(r["result"], r["reason"], r["method"], r["calling_station_id"], r["source"]) for r in rows] == [
            ("reject", "mac_mismatch", "mschap", "AA-BB-CC-16-00-02", "stored"),
            ("accept", "ok", "chap", mac, "stored"),
            ("reject", "bad_password", "pap", mac, "stored"),
        ], rows
        assert {(r["nas"], r["nas_ip"]) for r in rows} == {(f"nas-{TENANT_A[0]}", TENANT_A[1])}
        times = [dt.datetime.fromisoformat(r["time"]) for r in rows]
        assert times == sorted(times, reverse=True) and all(t.utcoffset() == dt.timedelta(0) for t in times)
        assert abs(times[0] - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=2)
        _title, last = why(world, TENANT_A[0], user, "--limit", "1")
        assert [r["reason"] for r in last] == ["mac_mismatch"]

    def test_records_not_yet_stored_are_shown_as_pending(self, world, writer, subscriber, auth):
        """With the writer stopped, a reject waits in the stream: shown as pending, then as
        stored once the writer is back."""
        user = subscriber(password="pw-pending")
        writer.stop()
        try:
            assert not auth(TENANT_A, {"User-Name": user, "User-Password": "nope"}).accepted
            _t, rows = wait_why(world, TENANT_A[0], user, 1, source="pending")
            assert [(r["reason"], r["source"], r["nas"]) for r in rows] == [
                ("bad_password", "pending", f"nas-{TENANT_A[0]}")], rows
        finally:
            writer.start()
        _t, rows = wait_why(world, TENANT_A[0], user, 1)
        assert [(r["reason"], r["source"]) for r in rows] == [("bad_password", "stored")], rows

    def test_times_in_the_tenants_zone(self, zoned, writer, subscriber):
        """A tenant in Pacific/Kiritimati: the times are printed at +14:00, and the title says so."""
        tenant, ip, secret, zone = KIRITIMATI
        user = subscriber(tenant=KIRITIMATI, password="kiri-pw")
        port = zoned.radiusd.auth_port
        assert not send(port, "auth", secret, {"User-Name": user, "User-Password": "bad"}, source=ip).accepted
        title, rows = wait_why(zoned, tenant, user, 1)
        assert f"times in {zone}" in title
        assert rows and rows[0]["time"].endswith("+14:00"), rows

    def test_unknown_tenant_and_bad_limit(self, world):
        out = run(world, "subscriber", "why", "--tenant", "4242", "nobody")
        assert out.returncode != 0 and "tenant: 4242 does not exist" in out.stderr
        out = run(world, "subscriber", "why", "--tenant", "1", "nobody", "--limit", "0")
        assert out.returncode != 0 and "limit:" in out.stderr


class TestTimeZone:
    def test_tenant_time_zone_checked_and_kept(self, zoned, shard_conn):
        """An unknown zone is refused; `tenant add` on an existing id changes the zone only when given."""
        tenant = KIRITIMATI[0]
        out = run(zoned, "tenant", "add", "--id", str(tenant), "--name", "x", "--time-zone", "Mars/Olympus")
        assert out.returncode != 0 and "time_zone:" in out.stderr
        out = run(zoned, "tenant", "add", "--id", str(tenant), "--name", "renamed")
        assert out.returncode == 0 and "time zone Pacific/Kiritimati" in out.stdout, out
        assert shard_conn(tenant).execute("SELECT name, time_zone FROM tenants WHERE tenant_id = %s",
                                          (tenant,)).fetchone() == ("renamed", "Pacific/Kiritimati")
        with pytest.raises(Exception, match="check"):
            shard_conn(tenant).execute("UPDATE tenants SET time_zone = 'no zone; at all' WHERE tenant_id = %s",
                                       (tenant,))

    def test_dates_are_read_in_the_tenants_zone(self, zoned, subscriber, shard_conn, tmp_path):
        """--expires-at 2026-12-31 in Kiritimati (+14): valid through that local day, i.e. until
        2027-01-01 00:00 +14:00 = 2026-12-31 10:00 UTC; `subscriber show` prints it at +14:00.
        A date-time without offset is local; one with an offset is as given. add, set, import."""
        tenant = KIRITIMATI[0]
        conn = shard_conn(tenant)

        def stored(user):
            return conn.execute("SELECT expires_at FROM subscribers WHERE tenant_id = %s AND username = %s",
                                (tenant, user)).fetchone()[0]
        user = subscriber(tenant=KIRITIMATI, expires_at="2026-12-31")
        assert stored(user) == dt.datetime(2026, 12, 31, 10, tzinfo=dt.UTC)
        shown = json.loads(run(zoned, "subscriber", "show", "--tenant", str(tenant), user).stdout)
        assert shown["stored"]["expires_at"] == "2027-01-01T00:00:00+14:00"
        assert shown["stored"]["time_zone"] == "Pacific/Kiritimati"
        listed = run(zoned, "subscriber", "list", "--tenant", str(tenant)).stdout
        assert f"{user}\t" in listed and "2027-01-01T00:00:00+14:00" in listed, listed
        assert run(zoned, "subscriber", "set", "--tenant", str(tenant), user,
                   "--expires-at", "2027-03-01T08:00").returncode == 0
        assert stored(user) == dt.datetime(2027, 2, 28, 18, tzinfo=dt.UTC)
        assert run(zoned, "subscriber", "set", "--tenant", str(tenant), user,
                   "--expires-at", "2027-03-01T08:00Z").returncode == 0
        assert stored(user) == dt.datetime(2027, 3, 1, 8, tzinfo=dt.UTC)
        path = tmp_path / "zoned.csv"
        path.write_text(f"username,password,plan,expires_at\nimported-{user},pw,basic,2026-12-31\n")
        out = run(zoned, "subscriber", "import", "--tenant", str(tenant), str(path))
        assert out.returncode == 0, out.stderr
        assert stored(f"imported-{user}") == dt.datetime(2026, 12, 31, 10, tzinfo=dt.UTC)

    def test_login_before_and_after_local_expiry(self, zoned, writer, subscriber):
        """A tenant in America/Los_Angeles (-08:00): a subscriber expiring today (local date) logs
        in, one that expired yesterday does not (`expired`); one expiring a few seconds from now
        (a local date-time without offset, which read as UTC would be 8 hours ago) is accepted,
        then rejected as `expired` once that time has passed."""
        tenant, ip, secret, zone = LOS_ANGELES
        tz = zoneinfo.ZoneInfo(zone)
        port = zoned.radiusd.auth_port
        today = dt.datetime.now(tz).date()

        def login(user):
            return send(port, "auth", secret, {"User-Name": user, "User-Password": "la-pw"}, source=ip)
        valid = subscriber(tenant=LOS_ANGELES, password="la-pw", expires_at=today.isoformat())
        gone = subscriber(tenant=LOS_ANGELES, password="la-pw",
                          expires_at=(today - dt.timedelta(days=1)).isoformat())
        assert login(valid).accepted
        ans = login(gone)
        assert not ans.accepted and ans.get("Reply-Message") == "Your account has expired", ans.output
        soon = dt.datetime.now(tz).replace(microsecond=0, tzinfo=None) + dt.timedelta(seconds=4)
        user = subscriber(tenant=LOS_ANGELES, password="la-pw", expires_at=soon.isoformat())
        assert login(user).accepted
        time.sleep(max(0.0, soon.replace(tzinfo=tz).timestamp() - time.time()) + 1.2)
        ans = login(user)
        assert not ans.accepted and ans.get("Reply-Message") == "Your account has expired", ans.output
        _title, rows = wait_why(zoned, tenant, user, 2)
        assert [(r["result"], r["reason"]) for r in rows] == [("reject", "expired"), ("accept", "ok")], rows


def test_every_auth_log_partition_has_the_user_index(world, shard_conn):
    """auth_log_by_user (migration 0008) is on every day partition, including one built aside
    and attached by wificore_auth_log_ensure (a day whose rows were in the default partition)."""
    conn = shard_conn(1)
    day = dt.date(2031, 1, 2)
    conn.execute("INSERT INTO auth_log (tenant_id, logged_at, event_id, username, result, reason) "
                 "VALUES (1, %s, 'why-index-probe', 'probe', 'reject', 'bad_password')",
                 (dt.datetime.combine(day, dt.time(12), tzinfo=dt.UTC),))
    try:
        conn.execute("SELECT wificore_auth_log_ensure(%s, %s)", (day, day))
        parts = [r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'auth_log'::regclass")]
        assert "auth_log_20310102" in parts
        for part in parts:
            defs = [r[0] for r in conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = %s", (part,))]
            assert any("(tenant_id, username, logged_at)" in d for d in defs), (part, defs)
    finally:
        conn.execute("DELETE FROM auth_log WHERE event_id = 'why-index-probe'")
        conn.execute("DROP TABLE IF EXISTS auth_log_20310102")
