"""Quota periods: THE period arithmetic, used by rlm_wificore, wificore-admin and the tests.

A plan's data and time quotas count over its ``quota_period`` (migration 0012):

* ``none``: the subscriber's lifetime (the usage hash's totals, which expire 90 days
  after the last counted use, ``USAGE_TTL_S``);
* ``daily``: from local midnight to the next;
* ``weekly``: ISO weeks, from Monday 00:00 local;
* ``monthly``: from the 1st 00:00 local.

"Local" is the tenant's time zone (``tenants.time_zone``). A period is named by its
first **local day**: the number of days from 1970-01-01 to that date on the local
calendar (``day = floor((t + utc_offset(t)) / 86400)``). live.lua counts each
record's usage into the day, week and month of the record's local day, which the
accounting hook computes (the ``local_day`` field of the record, wificore/wire.py);
live.lua derives the week and the month from it with the same rules as
:func:`period_start` (a Monday: ``day - (day + 3) % 7``; the 1st: the day minus its
day of the month). A period ends at the next period's first local midnight, as an
instant in the zone (DST-correct: a local day is 23 or 25 hours long on a change).

:class:`ZoneClock` caches a zone's offset until its next transition, so the hooks do
no time-zone database work per request.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import zoneinfo

PERIODS = ("none", "daily", "weekly", "monthly")
DEFAULT_PERIOD = "none"
#: The usage hash's field of each period's id (its first local day); the counters are
#: the field's name + 'o' (octets) and + 't' (seconds). See docs/redis-keys.md.
FIELDS = {"daily": "d", "weekly": "w", "monthly": "m"}
#: The lifetime totals' expiry (live.lua's ARGV[6]): 90 days after the last counted use.
USAGE_TTL_S = 90 * 86400

_EPOCH = dt.date(1970, 1, 1)
_EPOCH_ORD = _EPOCH.toordinal()
_DAY = 86400
#: How far ahead a zone's next transition is looked for (a zone with none: checked again then).
_HORIZON_DAYS = 400


def local_day(ts: float, offset_s: int) -> int:
    """The local day (days since 1970-01-01 on the local calendar) of instant ``ts``."""
    return int((ts + offset_s) // _DAY)


def day_date(day: int) -> dt.date:
    return dt.date.fromordinal(_EPOCH_ORD + day)


def date_day(date: dt.date) -> int:
    return date.toordinal() - _EPOCH_ORD


def period_start(period: str, day: int) -> int | None:
    """The first local day of the ``period`` holding local day ``day`` (None: ``none``)."""
    if period == "daily":
        return day
    if period == "weekly":
        return day - (day + 3) % 7  # 1970-01-01 was a Thursday: day + 3 counts from a Monday
    if period == "monthly":
        return day - (day_date(day).day - 1)
    return None


def next_start(period: str, start: int) -> int:
    """The first local day of the period after the one starting on local day ``start``."""
    if period == "daily":
        return start + 1
    if period == "weekly":
        return start + 7
    if period == "monthly":
        d = day_date(start)
        return date_day(dt.date(d.year + d.month // 12, d.month % 12 + 1, 1))
    raise ValueError(f"no next period for {period!r}")


def day_start(day: int, zone: dt.tzinfo) -> float:
    """The instant (epoch s) local day ``day`` begins in ``zone``: its 00:00, or, where the
    clocks jump over midnight, the first instant of that date (PEP 495: fold=0 reads a
    time in the gap with the offset before it)."""
    d = day_date(day)
    return dt.datetime(d.year, d.month, d.day, tzinfo=zone).timestamp()


@dataclasses.dataclass(frozen=True, slots=True)
class Period:
    """One period of a plan: ``start`` local day, its first instant and the next period's."""

    period: str
    start: int          # local day
    starts_at: float    # epoch s
    ends_at: float      # epoch s: the next reset

    @property
    def first_date(self) -> dt.date:
        return day_date(self.start)

    @property
    def last_date(self) -> dt.date:
        return day_date(next_start(self.period, self.start) - 1)


def period_at(period: str, ts: float, zone: dt.tzinfo) -> Period | None:
    """The ``period`` (daily, weekly, monthly) holding instant ``ts`` in ``zone``; None for
    ``none``. Not cached: for the admin CLI and the tests (the module uses ZoneClock)."""
    if period not in FIELDS:
        return None
    offset = _offset(zone, ts)
    start = period_start(period, local_day(ts, offset))
    assert start is not None
    return Period(period, start, day_start(start, zone), day_start(next_start(period, start), zone))


def _offset(zone: dt.tzinfo, ts: float) -> int:
    off = dt.datetime.fromtimestamp(ts, zone).utcoffset()
    return int(off.total_seconds()) if off is not None else 0


class ZoneClock:
    """A tenant's zone: its UTC offset cached over the span of instants that share it (up to
    the next transition), and the end of each period asked for. Not locked: a hook and the
    state thread may both refill it, each with a correct value."""

    __slots__ = ("_ends", "_span", "name", "zone")

    def __init__(self, name: str) -> None:
        self.name = name
        try:
            self.zone: dt.tzinfo = zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):  # a row written by another tool
            self.name, self.zone = "UTC", zoneinfo.ZoneInfo("UTC")
        self._span = (0.0, 0.0, 0)  # lo, hi, offset: instants lo <= t < hi have that offset
        self._ends: dict[tuple[str, int], tuple[float, float]] = {}

    def offset(self, ts: float) -> int:
        lo, hi, off = self._span
        if lo <= ts < hi:
            return off
        off = _offset(self.zone, ts)
        # The next transition: day steps to the first day with another offset, then bisection.
        a, b = int(ts), None
        for step in range(1, _HORIZON_DAYS + 1):
            t = int(ts) + step * _DAY
            if _offset(self.zone, t) != off:
                b = t
                break
            a = t
        if b is None:
            hi = float(a)
        else:
            while b - a > 1:
                mid = (a + b) // 2
                if _offset(self.zone, mid) == off:
                    a = mid
                else:
                    b = mid
            hi = float(b)
        # And back: the instants since the last transition within two days share it too
        # (records' event times lag arrival by up to a day: rlm_wificore.records).
        lo_t = int(ts) - 2 * _DAY
        if _offset(self.zone, lo_t) == off:
            lo = float(lo_t)
        else:
            x, y = lo_t, int(ts)  # offset differs at x, equals at y
            while y - x > 1:
                mid = (x + y) // 2
                if _offset(self.zone, mid) == off:
                    y = mid
                else:
                    x = mid
            lo = float(y)
        self._span = (lo, hi, off)
        return off

    def day(self, ts: float) -> int:
        """The local day of ``ts`` (what the accounting hook puts in the record)."""
        return int((ts + self.offset(ts)) // _DAY)

    def current(self, period: str, ts: float) -> tuple[int, float, float] | None:
        """(first local day, starts_at, ends_at) of the ``period`` holding ``ts``; None for
        ``none``. The instants are computed once per period."""
        if period not in FIELDS:
            return None
        start = period_start(period, self.day(ts))
        assert start is not None
        key = (period, start)
        span = self._ends.get(key)
        if span is None:
            if len(self._ends) > 16:  # old periods
                self._ends.clear()
            span = self._ends[key] = (day_start(start, self.zone),
                                      day_start(next_start(period, start), self.zone))
        return start, span[0], span[1]


def redis_usage(usage: dict[str, int], period: str, start: int | None) -> tuple[int, int]:
    """(octets, seconds) of the usage hash (``{p}:{T}:use:{user}``, decoded) over the
    ``period`` starting on local day ``start`` (lifetime: ``none``); what live.lua counted.
    A stored period id other than ``start``: nothing counted in that period yet."""
    if period not in FIELDS:
        return usage.get("octets", 0), usage.get("time_s", 0)
    f = FIELDS[period]
    if usage.get(f) != start:
        return 0, 0
    return usage.get(f + "o", 0), usage.get(f + "t", 0)


#: PostgreSQL's side (migration 0012): the lifetime from the session rows, a period from
#: session_days through wificore_usage(tenant, username, first local date, last).
PG_LIFETIME_SQL = ("SELECT COALESCE(sum(input_octets + output_octets), 0)::bigint, "
                   "COALESCE(sum(session_time_s), 0)::bigint FROM sessions "
                   "WHERE tenant_id = %s AND username = %s")
PG_PERIOD_SQL = "SELECT octets, time_s FROM wificore_usage(%s, %s, %s, %s)"


_CLOCKS: dict[str, ZoneClock] = {}


def clock(name: str) -> ZoneClock:
    """The one ZoneClock of zone ``name`` in this process (tenants of a zone share its
    cached offset: a transition is looked for once per zone, ~0.4 ms)."""
    c = _CLOCKS.get(name)
    if c is None:
        if len(_CLOCKS) > 1000:  # not IANA names (a row written by another tool): bounded
            _CLOCKS.clear()
        c = _CLOCKS[name] = ZoneClock(name)
    return c
