"""Quota periods (issue 16) through a real radiusd, Redis, PostgreSQL and batch writer.

One tenant of this module's own, whose time zone the tests set: the calendar a period
follows is the tenant's, so moving the tenant from UTC-11 (Pacific/Pago_Pago) to UTC+14
(Pacific/Kiritimati) moves "today" to a later local date, as midnight would, without
waiting for it. The week and month boundaries in zones that change their clocks are
tests/test_quota_units.py's."""

from __future__ import annotations

import datetime as dt
import json
import time
import zoneinfo

import pytest

from tests import state
from tests.test_accounting import acct_packet, wait_until
from tests.test_policy import pap
from wificore import quota
from wificore.keys import Keys

T = 180
NAS_IP = "127.0.18.1"
SECRET = "secret-quota"
TENANT = (T, NAS_IP, SECRET, "generic")
K = Keys("wc")
BEHIND, AHEAD = "Pacific/Pago_Pago", "Pacific/Kiritimati"  # UTC-11, UTC+14: never the same date


@pytest.fixture(scope="module")
def zoned(world):
    world.admin("tenant", "add", "--id", str(T), "--name", "quota periods", "--time-zone", BEHIND)
    world.admin("nas", "add", "--tenant", str(T), "--name", "nas-quota", "--ip", NAS_IP,
                "--secret", SECRET, "--vendor", "generic")
    for name, period, opts in (
            ("daily-data", "daily", ("--data-quota-bytes", "1000")),
            ("daily-time", "daily", ("--time-quota-s", "200000")),
            ("daily-short", "daily", ("--time-quota-s", "600")),
            ("monthly", "monthly", ("--data-quota-bytes", "10000000"))):
        world.admin("plan", "add", "--tenant", str(T), "--name", name, "--quota-period", period,
                    "--simultaneous-use", "5", *opts)
    return world


def set_zone(world, auth, redis, zone: str) -> None:
    """The tenant's zone, and radiusd's copy of it: the Redis copy is written again by the
    first lookup after the change reached radiusd."""
    world.admin("tenant", "add", "--id", str(T), "--name", "quota periods", "--time-zone", zone)
    ok = wait_until(lambda: (pap(auth, TENANT, "nobody-here"), redis.get(K.tenant_zone(T)))[1]
                    == zone.encode(), 10.0)
    assert ok, redis.get(K.tenant_zone(T))


def rejected(auth, user):
    ans = pap(auth, TENANT, user)
    return ans if ans.code == "Access-Reject" else None


def seconds_to_local_midnight(zone: str, now: float) -> float:
    z = zoneinfo.ZoneInfo(zone)
    today = dt.datetime.fromtimestamp(now, z).date()
    return dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), tzinfo=z).timestamp() - now


def show(world, user) -> dict:
    return json.loads(world.admin("subscriber", "show", "--tenant", str(T), user).stdout)


class TestThroughRadiusd:
    def test_a_used_up_daily_quota_is_rejected_today_and_accepted_once_the_day_changes(
            self, zoned, auth, acct, subscriber, redis):
        set_zone(zoned, auth, redis, BEHIND)
        user = subscriber(tenant=TENANT, plan="daily-data")
        assert pap(auth, TENANT, user).accepted
        acct(TENANT, acct_packet(user, "q1000001", "Start"))
        acct(TENANT, acct_packet(user, "q1000001", "Stop", inp=700, out=700, t=5))
        ans = wait_until(lambda: rejected(auth, user))
        assert ans is not None and "data quota" in ans.get("Reply-Message"), ans
        today = dt.datetime.now(zoneinfo.ZoneInfo(BEHIND)).date()
        assert int(state.usage_field(redis, K, T, user, "d")) == quota.date_day(today)
        # The tenant's calendar is a day (or two) ahead: a new day, a new quota.
        set_zone(zoned, auth, redis, AHEAD)
        assert wait_until(lambda: pap(auth, TENANT, user).accepted, 10.0), rejected(auth, user)
        # Back to the first calendar: that day's usage counts again.
        set_zone(zoned, auth, redis, BEHIND)
        ans = wait_until(lambda: rejected(auth, user), 10.0)
        assert ans is not None and "data quota" in ans.get("Reply-Message")

    def test_session_timeout_stops_at_the_periods_end(self, zoned, auth, acct, subscriber, redis):
        """A time quota larger than the day: Session-Timeout is the time to the tenant's next
        local midnight. A smaller one: the time left of it (or the midnight, if sooner)."""
        set_zone(zoned, auth, redis, BEHIND)
        user = subscriber(tenant=TENANT, plan="daily-time")
        now = time.time()
        ans = pap(auth, TENANT, user)
        assert ans.accepted, ans.output
        assert abs(int(ans.get("Session-Timeout")) - seconds_to_local_midnight(BEHIND, now)) <= 5, \
            (ans.get("Session-Timeout"), seconds_to_local_midnight(BEHIND, now))
        short = subscriber(tenant=TENANT, plan="daily-short")
        acct(TENANT, acct_packet(short, "q1000002", "Start"))
        acct(TENANT, acct_packet(short, "q1000002", "Stop", t=100))
        want = min(500, seconds_to_local_midnight(BEHIND, time.time()))
        got = wait_until(lambda: (a := pap(auth, TENANT, short)).accepted
                         and abs(int(a.get("Session-Timeout")) - want) <= 5 and a)
        assert got, pap(auth, TENANT, short).output


@pytest.fixture(scope="module")
def writer(world):
    world.writer.start()
    yield world.writer
    world.writer.stop()


def test_redis_and_postgresql_agree_on_every_period(zoned, auth, acct, subscriber, redis, writer):
    """One session over the tenant's midnight, through radiusd, live.lua and the batch
    writer: `subscriber show` gives the same usage from Redis and from PostgreSQL for the
    day, the week, the month and the lifetime, and the day's is the usage after midnight."""
    # A zone where it is not near midnight now: the session starts 15 minutes before
    # the last local midnight; its records are sent now, each with its Acct-Delay-Time.
    zone = next(z for z in (BEHIND, "Europe/Berlin", "Asia/Tokyo", "America/New_York")
                if 1 <= dt.datetime.now(zoneinfo.ZoneInfo(z)).hour < 22)
    set_zone(zoned, auth, redis, zone)
    user = subscriber(tenant=TENANT, plan="monthly")
    z = zoneinfo.ZoneInfo(zone)
    now = int(time.time())
    midnight = int(dt.datetime.combine(dt.datetime.fromtimestamp(now, z).date(), dt.time(), tzinfo=z).timestamp())
    start = midnight - 900
    sid = "q2000001"
    steps = [("Start", start, 0, 0, 0), ("Interim-Update", start + 300, 300, 1000, 0),
             ("Interim-Update", midnight + 300, 1200, 5000, 0),
             ("Interim-Update", now, now - start, 9000, 1000)]
    for status, ev, t, inp, out in steps:  # sent late: Acct-Delay-Time says how late
        assert acct(TENANT, acct_packet(user, sid, status, inp=inp, out=out, t=t,
                                        **{"Event-Timestamp": ev, "Acct-Delay-Time": int(time.time()) - ev})
                    ).code == "Accounting-Response"
    # A second session, all today.
    acct(TENANT, acct_packet(user, "q2000002", "Start"))
    acct(TENANT, acct_packet(user, "q2000002", "Stop", inp=50, out=50, t=30))

    def shown():
        s = show(zoned, user)["quota"]["periods"]
        daily = s["daily"]
        return s if daily["postgresql"] and daily["postgresql"]["octets"] == daily["redis"]["octets"] \
            and s["lifetime"]["postgresql"]["octets"] == 10100 else None
    periods = wait_until(shown, 20.0)
    assert periods, (json.dumps(show(zoned, user)["quota"]), writer.log_tail())
    assert periods["daily"]["redis"]["octets"] == 9000 + 100
    assert periods["daily"]["redis"]["time_s"] == (now - start - 300) + 30
    today, yesterday = quota.date_day(dt.datetime.now(z).date()), quota.date_day(dt.datetime.now(z).date()) - 1
    for name in ("daily", "weekly", "monthly", "lifetime"):
        p = periods[name]
        assert p["redis"]["octets"] == p["postgresql"]["octets"], (name, p)
        assert p["redis"]["time_s"] == p["postgresql"]["time_s"], (name, p)
        if name in ("weekly", "monthly"):
            same = quota.period_start(name, today) == quota.period_start(name, yesterday)
            assert p["redis"]["octets"] == (10100 if same else 9100), (name, p)
    assert periods["lifetime"]["redis"] == {"octets": 10100, "time_s": now - start + 30}
    # The plan's period: its quota, what remains, the next reset in the tenant's zone.
    shown_all = show(zoned, user)["quota"]
    assert shown_all["plan_period"] == "monthly" and shown_all["time_zone"] == zone
    monthly = shown_all["periods"]["monthly"]
    assert monthly["postgresql"]["data_remaining_bytes"] == 10000000 - monthly["postgresql"]["octets"]
    nxt = dt.datetime.fromisoformat(monthly["next_reset"])
    assert (nxt.day, nxt.hour, nxt.minute) == (1, 0, 0) and nxt.utcoffset() == nxt.astimezone(z).utcoffset()


def test_the_admin_commands(zoned):
    """plan list shows the period, plan set changes it alone, a bad one names the field;
    tenant list shows each tenant's zone."""
    out = zoned.admin("plan", "list", "--tenant", str(T)).stdout.splitlines()
    header = out[0].split("\t")
    rows = {r.split("\t")[1]: dict(zip(header, r.split("\t"), strict=True)) for r in out[1:]}
    assert rows["daily-data"]["quota_period"] == "daily" and rows["monthly"]["quota_period"] == "monthly"
    zoned.admin("plan", "add", "--tenant", str(T), "--name", "plain")
    zoned.admin("plan", "set", "--tenant", str(T), "--name", "plain", "--quota-period", "weekly")
    out = zoned.admin("plan", "list", "--tenant", str(T)).stdout
    assert any(r.startswith(tuple("0123456789")) and "\tplain\t" in r and r.endswith("\tweekly")
               for r in out.splitlines()), out
    bad = zoned.admin("plan", "set", "--tenant", str(T), "--name", "plain", "--quota-period", "yearly",
                      check=False)
    assert bad.returncode == 2 and "quota_period" in bad.stderr, bad.stderr
    tenants = zoned.admin("tenant", "list").stdout.splitlines()
    assert tenants[0].split("\t") == ["tenant_id", "name", "status", "time_zone", "shard"]
    assert any(line.split("\t")[0] == str(T) and line.split("\t")[3] in (BEHIND, AHEAD, "Europe/Berlin",
                                                                         "Asia/Tokyo", "America/New_York")
               for line in tenants[1:])


@pytest.mark.parametrize("clock", ["ahead", "behind"])
def test_a_nas_clock_off_does_not_move_usage_into_another_period(zoned, auth, acct, subscriber, redis,
                                                                 clock):
    """A NAS whose Event-Timestamp is ahead of (behind) the server's clock, within the
    day's skew accepted, past the tenant's midnight: its usage is today's, not tomorrow's
    (yesterday's), and the usage of the subscriber's other sessions today still counts
    against today's quota. The day is taken from the arrival less Acct-Delay-Time, which
    a NAS counts without its clock."""
    zone = next(z for z in (BEHIND, "Europe/Berlin", "Asia/Tokyo", "America/New_York")
                if 1 <= dt.datetime.now(zoneinfo.ZoneInfo(z)).hour < 22)
    set_zone(zoned, auth, redis, zone)
    user = subscriber(tenant=TENANT, plan="daily-data")  # 1000 bytes a day
    now = int(time.time())
    local = dt.datetime.now(zoneinfo.ZoneInfo(zone))
    since_midnight = local.hour * 3600 + local.minute * 60 + local.second
    stamp = (now + int(seconds_to_local_midnight(zone, now)) + 600 if clock == "ahead"  # tomorrow
             else now - since_midnight - 600)  # yesterday, by the NAS's clock
    for status, inp in (("Start", 0), ("Interim-Update", 10)):
        assert acct(TENANT, acct_packet(user, f"q3{clock[:2]}0001", status, inp=inp, t=60 if inp else 0,
                                        **{"Event-Timestamp": stamp})).code == "Accounting-Response"
    acct(TENANT, acct_packet(user, f"q3{clock[:2]}0002", "Start"))
    acct(TENANT, acct_packet(user, f"q3{clock[:2]}0002", "Interim-Update", inp=2000, t=60))
    # Today's 2010 bytes are over the quota: the next login is refused. (Counted in Redis
    # first: a login before the Interim is there would keep the older state in process
    # for live_state_ttl_s.)
    assert wait_until(lambda: state.usage_field(redis, K, T, user, "do") == b"2010", 10.0), \
        state.usage_all(redis, K, T, user)
    assert wait_until(lambda: rejected(auth, user), 10.0), state.usage_all(redis, K, T, user)
    today = quota.date_day(dt.datetime.now(zoneinfo.ZoneInfo(zone)).date())
    usage = {k.decode(): int(v) for k, v in state.usage_all(redis, K, T, user).items()}
    assert quota.redis_usage(usage, "daily", today) == (2010, 120), usage


def test_a_zone_moved_westwards_still_counts_today(zoned, auth, acct, subscriber, redis):
    """The tenant's zone moved from UTC+14 to UTC-11 (its local date one earlier): before,
    live.lua counted no record of the new today into the daily period (the stored id was
    the old zone's later date), so 3000 bytes against a 1000-byte daily quota were still
    accepted. Now `tenant add --time-zone` moves the stored ids to the new zone's dates,
    keeping what was counted, and the quota holds."""
    import uuid
    set_zone(zoned, auth, redis, AHEAD)
    user = subscriber(tenant=TENANT, plan="daily-data")
    sid = uuid.uuid4().hex[:10]
    assert acct(TENANT, acct_packet(user, sid, "Start")).code == "Accounting-Response"
    assert acct(TENANT, acct_packet(user, sid, "Interim-Update", inp=100, out=100, t=60)).code \
        == "Accounting-Response"
    assert wait_until(lambda: state.usage_field(redis, K, T, user, "do") == b"200", 5)
    set_zone(zoned, auth, redis, BEHIND)
    today = quota.ZoneClock(BEHIND).day(time.time())
    assert int(state.usage_field(redis, K, T, user, "d")) == today
    assert not rejected(auth, user)  # 200 of 1000
    assert acct(TENANT, acct_packet(user, sid, "Stop", inp=1500, out=1500, t=120)).code == "Accounting-Response"
    assert wait_until(lambda: rejected(auth, user), 10.0), state.usage_all(redis, K, T, user)
    assert state.usage_field(redis, K, T, user, "do") == b"3000"
