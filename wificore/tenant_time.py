"""A tenant's time zone: how wificore-admin reads and prints its dates.

Each tenant has a time zone (``tenants.time_zone``, migration 0008, an IANA name
checked against :mod:`zoneinfo`; ``UTC`` by default). Dates an operator types are
read in it:

* a bare date (``2026-12-31``) means "valid through that day": the instant is the
  end of that day, i.e. the next day's midnight in the tenant's zone
  (2027-01-01 00:00 local);
* a date and time without an offset (``2026-12-31T18:00``) is that wall-clock time
  in the tenant's zone;
* a date and time with an offset (``…+01:00``, ``…Z``) is that instant as given.

What is printed back (``subscriber show``, ``subscriber why``) is in the tenant's
zone, with its offset.
"""

from __future__ import annotations

import datetime as dt
import functools
import zoneinfo

import psycopg

from .errors import InputError

DEFAULT_ZONE = "UTC"


@functools.lru_cache(maxsize=1)
def _known() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def v_zone(name: str, field: str = "time_zone") -> str:
    """An IANA time zone name that zoneinfo knows (``Europe/Berlin``, ``UTC``)."""
    if name not in _known() and name != DEFAULT_ZONE:
        raise InputError(f"{field}: {name!r} is not an IANA time zone (e.g. Europe/Berlin, UTC)")
    return name


def zone(name: str | None) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name or DEFAULT_ZONE)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):  # a row written by another tool
        return zoneinfo.ZoneInfo(DEFAULT_ZONE)


def tenant_zone(conn: psycopg.Connection, tenant_id: int) -> zoneinfo.ZoneInfo:
    """The tenant's zone (UTC when the tenant does not exist: the caller checks that)."""
    row = conn.execute("SELECT time_zone FROM tenants WHERE tenant_id = %s", (tenant_id,)).fetchone()
    return zone(row[0] if row else None)


def parse_instant(value: str | None, field: str, tz: dt.tzinfo) -> dt.datetime | None:
    """An operator's date or date-time, read in ``tz`` (see the module's docstring)."""
    if not value:
        return None
    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        day = None
    try:
        if day is not None:  # through that day: the next local midnight
            at = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=tz)
        else:
            try:
                parsed = dt.datetime.fromisoformat(value)
            except ValueError:
                raise InputError(f"{field}: {value!r} is not an ISO 8601 date or time") from None
            at = parsed if parsed.tzinfo else parsed.replace(tzinfo=tz)
        at.astimezone(dt.UTC).timestamp()  # an instant PostgreSQL and Python both hold
    except OverflowError:  # 9999-12-31: "through that day" is past the calendar's end
        raise InputError(f"{field}: {value!r} is outside the dates this can hold (0001-01-02 to "
                         "9999-12-30); leave it out for no expiry") from None
    return at


def show_instant(value: dt.datetime | float | None, tz: dt.tzinfo) -> str | None:
    """An instant (or epoch seconds) as ISO 8601 in ``tz``, with its offset."""
    if value is None:
        return None
    if not isinstance(value, dt.datetime):
        value = dt.datetime.fromtimestamp(value, dt.UTC)
    return value.astimezone(tz).isoformat()
