"""Quota periods: the period arithmetic of wificore/quota.py (pure, against zoneinfo and
hand-checked calendar facts), and live.lua's copy of the week and month rules, run by a
real Redis and compared with it."""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from pathlib import Path

import pytest

from rlm_wificore.cache import LiveState
from rlm_wificore.live import USAGE_FIELDS, LiveStates
from rlm_wificore.policy import check, render_reply
from wificore import quota
from wificore.profile import Plan, Profile

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
NEW_YORK = zoneinfo.ZoneInfo("America/New_York")
SANTIAGO = zoneinfo.ZoneInfo("America/Santiago")  # its clocks jump over midnight
H = 3600


def at(zone: dt.tzinfo, *parts: int) -> float:
    return dt.datetime(*parts, tzinfo=zone).timestamp()


class TestPeriods:
    def test_a_week_over_the_autumn_change_is_169_hours(self):
        """ISO week of 2026-10-25 (Berlin leaves summer time that Sunday): Monday 19th 00:00
        CEST to Monday 26th 00:00 CET."""
        p = quota.period_at("weekly", at(BERLIN, 2026, 10, 25, 12), BERLIN)
        assert (p.first_date, p.last_date) == (dt.date(2026, 10, 19), dt.date(2026, 10, 25))
        assert p.starts_at == at(BERLIN, 2026, 10, 19) and p.ends_at == at(BERLIN, 2026, 10, 26)
        assert p.ends_at - p.starts_at == 7 * 24 * H + H

    def test_a_month_over_the_spring_change_is_an_hour_short(self):
        p = quota.period_at("monthly", at(NEW_YORK, 2026, 3, 8, 12), NEW_YORK)
        assert (p.first_date, p.last_date) == (dt.date(2026, 3, 1), dt.date(2026, 3, 31))
        assert p.ends_at - p.starts_at == 31 * 24 * H - H
        assert dt.datetime.fromtimestamp(p.ends_at, NEW_YORK).isoformat() == "2026-04-01T00:00:00-04:00"

    def test_the_spring_day_is_23_hours_and_the_boundary_is_exact(self):
        start = at(BERLIN, 2026, 3, 29)
        p = quota.period_at("daily", start, BERLIN)
        assert (p.starts_at, p.ends_at - p.starts_at) == (start, 23 * H)
        assert quota.period_at("daily", start - 1, BERLIN).first_date == dt.date(2026, 3, 28)
        assert quota.period_at("daily", p.ends_at - 1, BERLIN).first_date == dt.date(2026, 3, 29)
        assert quota.period_at("daily", p.ends_at, BERLIN).first_date == dt.date(2026, 3, 30)

    def test_a_day_without_a_midnight_starts_at_its_first_instant(self):
        """Santiago springs forward at 24:00 on 2026-09-05: 2026-09-06 begins at 01:00 -03."""
        p = quota.period_at("daily", at(SANTIAGO, 2026, 9, 6, 12), SANTIAGO)
        assert dt.datetime.fromtimestamp(p.starts_at, SANTIAGO).isoformat() == "2026-09-06T01:00:00-03:00"
        assert quota.period_at("daily", p.starts_at - 1, SANTIAGO).first_date == dt.date(2026, 9, 5)

    @pytest.mark.parametrize("day,monday,first", [
        (dt.date(2026, 12, 1), dt.date(2026, 11, 30), dt.date(2026, 12, 1)),   # a Tuesday
        (dt.date(2027, 1, 3), dt.date(2026, 12, 28), dt.date(2027, 1, 1)),     # ISO week 53 of 2026
        (dt.date(2028, 2, 29), dt.date(2028, 2, 28), dt.date(2028, 2, 1)),     # leap day
        (dt.date(1970, 1, 1), dt.date(1969, 12, 29), dt.date(1970, 1, 1)),
    ])
    def test_week_and_month_starts(self, day, monday, first):
        d = quota.date_day(day)
        assert quota.day_date(quota.period_start("weekly", d)) == monday
        assert quota.day_date(quota.period_start("monthly", d)) == first
        assert quota.period_start("none", d) is None
        assert quota.day_date(quota.next_start("monthly", quota.date_day(dt.date(2026, 12, 1)))) \
            == dt.date(2027, 1, 1)

    @pytest.mark.parametrize("name", ["Europe/Berlin", "America/Santiago", "Australia/Lord_Howe",
                                      "America/St_Johns", "UTC"])
    def test_the_cached_offset_gives_the_local_date_at_every_instant(self, name):
        """ZoneClock caches the offset up to the next transition: its local day is the date
        zoneinfo gives, every 20 minutes over two years (each transition crossed), and one
        second either side of each transition."""
        zone, clock = zoneinfo.ZoneInfo(name), quota.ZoneClock(name)
        t, end = at(dt.UTC, 2026, 1, 1), at(dt.UTC, 2028, 1, 1)
        changes = []
        last = None
        while t < end:
            off = dt.datetime.fromtimestamp(t, zone).utcoffset()
            if last is not None and off != last:
                changes.append(t)
            last = off
            assert quota.day_date(clock.day(t)) == dt.datetime.fromtimestamp(t, zone).date(), (name, t)
            t += 1200
        for c in changes:  # the transition lies in (c - 1200, c]: find it exactly
            lo, hi = int(c) - 1200, int(c)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if dt.datetime.fromtimestamp(mid, zone).utcoffset() == \
                        dt.datetime.fromtimestamp(lo, zone).utcoffset():
                    lo = mid
                else:
                    hi = mid
            for x in (hi - 1, hi, hi + 1):
                assert quota.day_date(clock.day(x)) == dt.datetime.fromtimestamp(x, zone).date()
        if name != "UTC":
            assert changes

    def test_a_zone_clock_serves_its_period_end_from_the_cache(self):
        clock = quota.ZoneClock("Europe/Berlin")
        now = at(BERLIN, 2026, 12, 1, 20)
        start, starts_at, ends_at = clock.current("daily", now)
        assert quota.day_date(start) == dt.date(2026, 12, 1) and ends_at == at(BERLIN, 2026, 12, 2)
        assert clock.current("daily", now + 60)[2] == ends_at
        assert clock.current("none", now) is None
        assert quota.ZoneClock("Mars/Olympus").name == "UTC"
        assert quota.clock("Europe/Berlin") is quota.clock("Europe/Berlin")  # one per zone


class TestReader:
    """The live state a radiusd reads: the usage of the plan's period current now."""

    PLAN = Plan(1, None, None, None, None, 60, 1000, 100, 5, None, None, "daily")
    NOW = at(BERLIN, 2026, 12, 1, 20)
    TODAY = quota.date_day(dt.date(2026, 12, 1))

    def usage(self, **fields):
        return [fields.get(f) for f in USAGE_FIELDS]

    def test_the_current_periods_counters_count(self):
        clock = quota.ZoneClock("Europe/Berlin")
        s = LiveStates.state(1, self.usage(octets=b"9000", time_s=b"500", d=str(self.TODAY).encode(),
                                           do=b"700", dt=b"40"), self.PLAN, clock, self.NOW)
        assert (s.sessions, s.octets, s.time_s) == (1, 700, 40)
        assert s.resets_at == at(BERLIN, 2026, 12, 2)
        assert s.used(s.resets_at) == (0, 0)

    def test_another_days_counters_do_not(self):
        clock = quota.ZoneClock("Europe/Berlin")
        s = LiveStates.state(0, self.usage(octets=b"9000", d=str(self.TODAY - 1).encode(), do=b"5000"),
                             self.PLAN, clock, self.NOW)
        assert s.used(self.NOW) == (0, 0) and s.resets_at == at(BERLIN, 2026, 12, 2)
        lifetime = dataclass_replace(self.PLAN, quota_period="none")
        assert LiveStates.state(0, self.usage(octets=b"9000"), lifetime, clock, self.NOW).octets == 9000


def dataclass_replace(plan: Plan, **changes):
    import dataclasses
    return dataclasses.replace(plan, **changes)


class TestPolicy:
    PROFILE = Profile(1, "pppoe", "cleartext", "pw", "active", None, None, None, 1)

    def test_session_timeout_is_the_time_left_and_never_past_the_reset(self):
        plan = Plan(1, None, None, None, None, 60, None, 3600, 5, None, None, "daily")
        now = 1_000_000.0
        far = LiveState(0, 0, 600, now + 10 * H)    # the quota runs out before the reset
        near = LiveState(0, 0, 600, now + 120)      # the reset comes first
        assert dict(render_reply(self.PROFILE, plan, far, "generic", now=now))["Session-Timeout"] == "3000"
        assert dict(render_reply(self.PROFILE, plan, near, "generic", now=now))["Session-Timeout"] == "120"
        used_up = LiveState(0, 0, 3600, now + 120)
        assert check(self.PROFILE, plan, used_up, now=now, calling_station_id=None) == "time_quota"
        assert check(self.PROFILE, plan, used_up, now=now + 120, calling_station_id=None) is None


def test_live_lua_weeks_and_months_are_quota_pys(redis):
    """live.lua's month_start and its week rule, run by Redis for every day of 1999..2101
    (every third day, and each month's first and last), against wificore/quota.py."""
    lua = (Path(__file__).resolve().parent.parent / "rlm_wificore" / "live.lua").read_text()
    fn = re.search(r"local function month_start\(z\)\n.*?\nend\n", lua, re.S)
    assert fn
    script = fn.group(0) + """
local out = {}
for i = 1, #ARGV do
  local day = tonumber(ARGV[i])
  out[#out + 1] = month_start(day)
  out[#out + 1] = day - (day + 3) % 7
end
return out
"""
    firsts = {quota.date_day(dt.date(y, m, 1)) for y in range(1999, 2101) for m in range(1, 13)}
    days = sorted({*range(min(firsts), max(firsts), 3), *firsts, *(f - 1 for f in firsts)})
    for i in range(0, len(days), 2000):
        chunk = days[i:i + 2000]
        got = redis.eval(script, 0, *chunk)
        want = [x for d in chunk for x in (quota.period_start("monthly", d), quota.period_start("weekly", d))]
        assert got == want


def test_the_writers_day_rows_are_the_greatest_totals_per_session_and_day():
    """batch_writer's session_days rows of a batch: per (session row, local day) the
    greatest totals, in any order and with duplicates (a replay changes nothing);
    records live.lua named no day for (late ones) make none."""
    import random

    from batch_writer.records import Acct, usage_days

    def rec(day, octets, t, key="k:1"):
        return Acct(7, 1, "interim", 1.9e9, key, "s", "bob", t, octets, 10, live_day=day)
    recs = [rec(20787, 1000, 300), rec(20788, 5000, 1200), rec(20788, 9000, 3000),
            rec(None, 9500, 100), rec(20788, 50, 30, key="k:2")]
    want = [(7, "k:1", 20787, "bob", 1010, 300), (7, "k:1", 20788, "bob", 9010, 3000),
            (7, "k:2", 20788, "bob", 60, 30)]
    assert usage_days(recs) == want
    for seed in range(5):
        assert usage_days(random.Random(seed).sample(recs + recs[:2], len(recs) + 2)) == want
