"""Stream payload -> checked record, and the collapse of a batch. Pure: no I/O.

Decoding never trusts the payload (see wificore/wire.py for the format).
A record that cannot be written as it is raises :class:`Rejected` with a reason
that names the field; the worker sends it to the dead-letter stream at once,
because retrying a malformed record can never succeed.

The collapse folds every record of one session inside a batch into one row with
the same rules the SQL merge applies between batches (see merge.py), so that
``INSERT ... ON CONFLICT`` touches each row once and the result does not depend
on how records were split into batches or in which order they came:

* started_at = least of (event_ts - session_time_s): a lost Start is recreated;
* updated_at = greatest event_ts; received_at = greatest arrival_ts; stale_at =
  greatest (arrival_ts + 2 x interim): liveness runs on the receiving clock, never
  on the NAS's (event_ts stays data);
* counters = greatest value seen (they only move forward);
* a Stop is final: stopped_at = greatest Stop event_ts, close_reason 'stop'.

Counter rules (the same as live.lua's, docs/batch-writer.md "Counter rules"): a
record that went through live.lua carries the session's totals after the rules
(``live_*`` fields) and the generation's key; those are stored. A record without
them (queued before 2026-12-01) gets the first rule here: a counter above its
plausible maximum (MAX_OCTETS, MAX_SESSION_TIME_S) is refused (taken as 0, i.e.
not reported: GREATEST keeps the stored value) and flagged; the record is stored.
"""

from __future__ import annotations

import dataclasses
import math
import socket
from collections.abc import Iterable
from typing import Any, cast

from wificore import wire
from wificore.errors import InputError
from wificore.shardmap import MAX_TENANT

MAX_COUNTER = 2**63 - 1          # bigint columns
#: The counter rules' plausible maxima (live.lua has the same; a test checks they match).
MAX_OCTETS = 2**50               # per session and direction: 10 Gbit/s at line rate for ~10 days
MAX_SESSION_TIME_S = 157680000   # 5 x 365 days
FLAG_REFUSED = 1                 # counter_flags: a counter was implausible and refused
FLAG_BACKWARDS = 2               # counter_flags: a counter went backwards (live.lua)
MIN_EVENT_TS = 946_684_800.0     # 2000-01-01: anything earlier is a NAS without a clock
MAX_TEXT = 253                   # the longest RADIUS string attribute
MAX_SESSION_KEY = 256
MIN_DAY, MAX_DAY = 10_957, 2_932_896  # local days: 2000-01-01 .. 9999-12-31 (PostgreSQL dates)
#: "No address yet" (Huawei BRAS Starts): never stored, so the Interim's real address is.
NO_ADDRESS = ("0.0.0.0", "::")
INTERIM_RANGE_S = (10, 7 * 86_400)
SESSION_STATUSES = ("start", "interim", "stop")
NAS_STATUSES = ("on", "off")
AUTH_RESULTS = ("accept", "reject")
AUTH_METHODS = ("pap", "chap", "mschap", "other")


class Rejected(InputError):
    """A record that can never be written; the message names the field."""


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """What counts as an absurd event time, relative to the writer's clock ``now``."""

    now: float
    max_age_s: float
    max_ahead_s: float
    default_interim_s: int


# Not frozen: a frozen dataclass costs a microsecond more per record to build,
# and records are built 50,000 times a second. Nothing writes to them.
@dataclasses.dataclass(slots=True)
class Acct:
    """One accounting record, checked. ``status`` on/off is NAS-wide (no session)."""

    tenant_id: int
    nas_id: int
    status: str
    event_ts: float
    session_key: str = ""
    acct_session_id: str = ""
    username: str = ""
    session_time_s: int = 0
    input_octets: int = 0
    output_octets: int = 0
    input_packets: int = 0
    output_packets: int = 0
    calling_station_id: str | None = None
    framed_ip: str | None = None
    terminate_cause: str | None = None
    interim_s: int = 300
    arrival_ts: float = 0.0  # when radiusd received it (0: unknown); liveness and latency
    nas_port_id: str | None = None
    called_station_id: str | None = None
    nas_identifier: str | None = None
    counter_flags: int = 0
    framed_ipv6_prefix: str | None = None
    delegated_ipv6_prefix: str | None = None
    framed_interface_id: str | None = None
    #: The local day live.lua counted the record's usage in (quota periods; None: none).
    live_day: int | None = None


@dataclasses.dataclass(slots=True)
class Auth:
    """One auth-log record, checked."""

    tenant_id: int
    nas_id: int | None
    ts: float
    event_id: str
    username: str
    calling_station_id: str | None
    result: str
    reason: str
    method: str | None


Record = Acct | Auth


# ------------------------------------------------------------------ field checks
def _int(fields: dict[str, Any], name: str) -> Any:
    value = fields.get(name)
    # bool is an int subclass in Python; a NAS never means True by a counter.
    if isinstance(value, bool) or not isinstance(value, int):
        raise Rejected(f"{name}: expected an integer, got {type(value).__name__}")
    return value


def _tenant(fields: dict[str, Any]) -> int:
    value = _int(fields, "tenant_id")
    if not 1 <= value <= MAX_TENANT:
        raise Rejected(f"tenant_id: {value} is out of range 1..{MAX_TENANT}")
    return value


def _nas(fields: dict[str, Any]) -> int:
    value = _int(fields, "nas_id")
    if not 0 <= value <= MAX_COUNTER:
        raise Rejected(f"nas_id: {value} is out of range")
    return value


def _counter(fields: dict[str, Any], name: str) -> int:
    value = fields.get(name)
    if type(value) is int and 0 <= value <= MAX_COUNTER:  # the fast path (exact type: no bool)
        return value
    if value is None:
        return 0
    value = _int(fields, name)
    if not 0 <= value <= MAX_COUNTER:
        return -1  # refused by _plausible (a counter rule, not a reason to lose the record)
    return value


def _plausible(value: int, most: int) -> tuple[int, int]:
    """(value, 0), or (0, FLAG_REFUSED) for a counter above its plausible maximum."""
    return (value, 0) if 0 <= value <= most else (0, FLAG_REFUSED)


def _text(fields: dict[str, Any], name: str, *, max_len: int = MAX_TEXT, required: bool = False,
          optional: bool = False) -> Any:
    value = fields.get(name)
    if type(value) is str and 0 < len(value) <= max_len and "\x00" not in value:  # the fast path
        return value
    if value is None:
        if required:
            raise Rejected(f"{name}: missing")
        return None if optional else ""
    if not isinstance(value, str):
        raise Rejected(f"{name}: expected a string, got {type(value).__name__}")
    if required and not value:
        raise Rejected(f"{name}: empty")
    if len(value) > max_len:
        raise Rejected(f"{name}: longer than {max_len} characters")
    if "\x00" in value:  # PostgreSQL text cannot hold NUL: the whole COPY would fail
        raise Rejected(f"{name}: contains a NUL character")
    return value


def _time(fields: dict[str, Any], name: str, limits: Limits) -> float:
    value = fields.get(name)
    if type(value) is float and limits.now - limits.max_age_s <= value <= limits.now + limits.max_ahead_s \
            and value >= MIN_EVENT_TS:  # the fast path (NaN fails every comparison)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Rejected(f"{name}: expected a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < MIN_EVENT_TS:
        raise Rejected(f"{name}: {value!r} is not a plausible time")
    if value < limits.now - limits.max_age_s:
        raise Rejected(f"{name}: {value:.0f} is more than {limits.max_age_s:.0f} s in the past")
    if value > limits.now + limits.max_ahead_s:
        raise Rejected(f"{name}: {value:.0f} is more than {limits.max_ahead_s:.0f} s in the future")
    return value


def _framed_ip(fields: dict[str, Any]) -> str | None:
    return _ip(fields.get("framed_ip"))


def _ip(value: Any) -> str | None:
    if not value or type(value) is not str or len(value) > 45 or value in NO_ADDRESS:
        return None
    # inet_pton (C) rather than the ipaddress module: same strictness, 20x cheaper.
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, value)
            return value
        except OSError:
            continue
    return None  # a garbled address is no reason to lose the session's counters


def _prefix6(value: Any) -> str | None:
    """An IPv6 prefix as radiusd prints one ('2001:db8::/64'), else None (a garbled one
    is no reason to lose the session's counters). Host bits are kept (inet column)."""
    if value is None or type(value) is not str or len(value) > 49:
        return None
    addr, slash, length = value.partition("/")
    if not slash or not length.isdigit() or int(length) > 128:
        return None
    try:
        socket.inet_pton(socket.AF_INET6, addr)
    except OSError:
        return None
    return value


def _interface_id(value: Any) -> str | None:
    """Framed-Interface-Id as radiusd prints it (four groups of hex digits), else None."""
    if value is None or type(value) is not str or len(value) > 19:
        return None
    groups = value.split(":")
    if len(groups) != 4 or not all(1 <= len(g) <= 4 and all(c in "0123456789abcdefABCDEF" for c in g)
                                   for g in groups):
        return None
    return value


def _interim(fields: dict[str, Any], default_s: int) -> int:
    return _interim_value(fields.get("interim_s"), default_s)


def _interim_value(value: Any, default_s: int) -> int:
    lo, hi = INTERIM_RANGE_S
    return value if type(value) is int and lo <= value <= hi else default_s


# ------------------------------------------------------------------- decoding
def _str_ok(value: Any, max_len: int) -> bool:
    return type(value) is str and len(value) <= max_len and "\x00" not in value


def _arrival(f: dict[str, Any]) -> float:
    return _arrival_value(f.get("arrival_ts"))


def _arrival_value(v: Any) -> float:
    """``arrival_ts`` if it is a plausible epoch time, else 0.0 (only a metric reads it)."""
    return float(v) if type(v) in (int, float) and v > 0 else 0.0


def _fast_acct(f: dict[str, Any], limits: Limits) -> Acct | None:
    """The common case of a version 1 map (see :func:`_fast_acct_values`)."""
    return _fast_acct_values([f.get(n) for n in wire.STREAM_ACCT_FIELDS], limits)


def _live(r: Acct, lkey: Any, lt: Any, li: Any, lo: Any, flags: Any, liv: Any, default_s: int) -> Acct:
    """Apply what live.lua worked out (wire.LIVE_FIELDS) to a checked record; without it (a
    record queued before 2026-12-01) the refusal rule is applied here."""
    if type(lkey) is str and 0 < len(lkey) <= MAX_SESSION_KEY and "\x00" not in lkey:
        r.session_key = lkey
        if type(lt) is int and 0 <= lt <= MAX_SESSION_TIME_S:
            r.session_time_s = lt
        if type(li) is int and 0 <= li <= MAX_COUNTER:
            r.input_octets = li
        if type(lo) is int and 0 <= lo <= MAX_COUNTER:
            r.output_octets = lo
        r.counter_flags = flags if type(flags) is int and 0 <= flags <= 3 else 0
        r.interim_s = _interim_value(liv, r.interim_s)
    # Refused here too: a late record of an earlier generation carries no totals.
    r.input_octets, f1 = _plausible(r.input_octets, MAX_OCTETS)
    r.output_octets, f2 = _plausible(r.output_octets, MAX_OCTETS)
    r.session_time_s, f3 = _plausible(r.session_time_s, MAX_SESSION_TIME_S)
    r.counter_flags |= f1 | f2 | f3
    if r.input_packets < 0 or r.output_packets < 0:
        r.input_packets, r.output_packets = max(r.input_packets, 0), max(r.output_packets, 0)
    return r


#: What the fast path reads of a version 2 body, in the order it unpacks them; the
#: positions come from wire.ACCT_FIELDS.
_pick_fast = wire.picker(wire.KIND_ACCT, (
    "tenant_id", "nas_id", "session_key", "acct_session_id", "username", "status", "event_ts",
    "arrival_ts", "session_time_s", "input_octets", "output_octets", "input_packets",
    "output_packets", "calling_station_id", "framed_ip", "terminate_cause", "interim_s",
    "nas_port_id", "called_station_id", "nas_identifier", *wire.LIVE_FIELDS,
    "framed_ipv6_prefix", "delegated_ipv6_prefix", "framed_interface_id"))


def _fast_acct_values(v: list[Any], limits: Limits) -> Acct | None:
    """The common case in one pass, from a version 2 body (wire.ACCT_FIELDS order): a
    well-formed session record, or None (then the field-by-field checks run and name what
    is wrong). Same rules, a third of the cost."""
    (tenant_id, nas_id, key, asid, user, status, ev, arrival, st, io, oo, ip, op, csid, framed_ip,
     cause, interim, port_id, called, nas_ident, lkey, lt, li, lo, flags, liv, lday, pfx6, dpfx6,
     ifid) = _pick_fast(v)
    if type(lt) is int and 0 <= lt <= MAX_SESSION_TIME_S:
        st = lt  # the session time after the counter rules (a refused one is not checked)
    if not (type(tenant_id) is int and 0 < tenant_id <= MAX_TENANT
            and type(nas_id) is int and 0 <= nas_id <= MAX_COUNTER
            and type(ev) is float and limits.now - limits.max_age_s <= ev <= limits.now + limits.max_ahead_s
            and type(st) is int and 0 <= st <= MAX_SESSION_TIME_S and ev - st >= MIN_EVENT_TS
            and type(io) is int and 0 <= io <= MAX_COUNTER and type(oo) is int and 0 <= oo <= MAX_COUNTER
            and type(ip) is int and 0 <= ip <= MAX_COUNTER and type(op) is int and 0 <= op <= MAX_COUNTER
            and type(key) is str and 0 < len(key) <= MAX_SESSION_KEY and "\x00" not in key
            and _str_ok(asid, MAX_TEXT) and _str_ok(user, MAX_TEXT)
            and (csid is None or _str_ok(csid, MAX_TEXT)) and (cause is None or _str_ok(cause, 64))
            and (port_id is None or _str_ok(port_id, MAX_TEXT)) and (called is None or _str_ok(called, MAX_TEXT))
            and (nas_ident is None or _str_ok(nas_ident, MAX_TEXT))
            and status in SESSION_STATUSES):
        return None
    interim = _interim_value(interim, limits.default_interim_s)
    fl = 0
    if type(lkey) is str and 0 < len(lkey) <= MAX_SESSION_KEY and "\x00" not in lkey:
        # What live.lua worked out (the common case; see _live for the rest).
        key = lkey
        if type(li) is int and 0 <= li <= MAX_COUNTER:
            io = li
        if type(lo) is int and 0 <= lo <= MAX_COUNTER:
            oo = lo
        if type(flags) is int and 0 <= flags <= 3:
            fl = flags
        interim = _interim_value(liv, interim)
    if io > MAX_OCTETS or oo > MAX_OCTETS:  # st was checked against MAX_SESSION_TIME_S above
        io, f1 = _plausible(io, MAX_OCTETS)
        oo, f2 = _plausible(oo, MAX_OCTETS)
        fl |= f1 | f2
    r = Acct(tenant_id, nas_id, status, ev, key, asid, user, st, io, oo, ip, op, csid, _ip(framed_ip),
             cause, interim, _arrival_value(arrival), port_id, called, nas_ident, fl)
    if pfx6 is not None or dpfx6 is not None or ifid is not None:  # IPv6: most records carry none
        r.framed_ipv6_prefix, r.delegated_ipv6_prefix = _prefix6(pfx6), _prefix6(dpfx6)
        r.framed_interface_id = _interface_id(ifid)
    if lday is not None and key is lkey:
        r.live_day = _day(lday)
    return r


def _day(value: Any) -> int | None:
    """A local day (days since 1970-01-01) as live.lua wrote it, or None."""
    return value if type(value) is int and MIN_DAY <= value <= MAX_DAY else None


def parse_acct(fields: dict[str, Any], limits: Limits) -> Acct:
    """Check an ``acct`` record's fields; :class:`Rejected` names the first bad one."""
    fast = _fast_acct(fields, limits)
    if fast is not None:
        return fast
    tenant_id = _tenant(fields)
    status = fields.get("status")
    if status in NAS_STATUSES:
        return Acct(tenant_id=tenant_id, nas_id=_nas(fields), status=status,
                    event_ts=_time(fields, "event_ts", limits))
    if status not in SESSION_STATUSES:
        raise Rejected(f"status: {status!r} is not one of {', '.join(SESSION_STATUSES + NAS_STATUSES)}")
    event_ts = _time(fields, "event_ts", limits)
    session_time_s = fields.get("live_session_time_s")
    if not (type(session_time_s) is int and 0 <= session_time_s <= MAX_SESSION_TIME_S):
        session_time_s = _counter(fields, "session_time_s")
    if 0 <= session_time_s <= MAX_SESSION_TIME_S and event_ts - session_time_s < MIN_EVENT_TS:
        raise Rejected(f"session_time_s: {session_time_s} puts the session start before 2000")
    r = _live(Acct(
        tenant_id=tenant_id,
        nas_id=_nas(fields),
        status=status,
        event_ts=event_ts,
        session_key=_text(fields, "session_key", max_len=MAX_SESSION_KEY, required=True),
        acct_session_id=_text(fields, "acct_session_id"),
        username=_text(fields, "username"),
        session_time_s=session_time_s,
        input_octets=_counter(fields, "input_octets"),
        output_octets=_counter(fields, "output_octets"),
        input_packets=_counter(fields, "input_packets"),
        output_packets=_counter(fields, "output_packets"),
        calling_station_id=_text(fields, "calling_station_id", optional=True),
        framed_ip=_framed_ip(fields),
        terminate_cause=_text(fields, "terminate_cause", max_len=64, optional=True),
        interim_s=_interim(fields, limits.default_interim_s),
        arrival_ts=_arrival(fields),
        nas_port_id=_text(fields, "nas_port_id", optional=True),
        called_station_id=_text(fields, "called_station_id", optional=True),
        nas_identifier=_text(fields, "nas_identifier", optional=True),
        framed_ipv6_prefix=_prefix6(fields.get("framed_ipv6_prefix")),
        delegated_ipv6_prefix=_prefix6(fields.get("delegated_ipv6_prefix")),
        framed_interface_id=_interface_id(fields.get("framed_interface_id")),
    ), fields.get("live_session_key"), fields.get("live_session_time_s"), fields.get("live_input_octets"),
        fields.get("live_output_octets"), fields.get("counter_flags"), fields.get("live_interim_s"),
        limits.default_interim_s)
    if r.session_key == fields.get("live_session_key"):
        r.live_day = _day(fields.get("live_day"))
    return r


def parse_auth(fields: dict[str, Any], limits: Limits) -> Auth:
    """Check an ``auth`` record's fields."""
    result = fields.get("result")
    if result not in AUTH_RESULTS:
        raise Rejected(f"result: {result!r} is not accept or reject")
    method = fields.get("method")
    if method is not None and method not in AUTH_METHODS:
        method = "other"
    return Auth(
        tenant_id=_tenant(fields),
        nas_id=None if fields.get("nas_id") is None else _nas(fields),
        ts=_time(fields, "ts", limits),
        event_id=_text(fields, "event_id", max_len=128, required=True),
        username=_text(fields, "username"),
        calling_station_id=_text(fields, "calling_station_id", optional=True),
        result=result,
        reason=_text(fields, "reason", max_len=MAX_TEXT),
        method=method,
    )


def decode(payload: bytes | None, limits: Limits) -> Record:
    """One stream payload -> a checked record.

    Raises :class:`wificore.errors.DecodeError` (not a record) or
    :class:`Rejected` (a record that can never be written).
    """
    if payload is None:
        raise Rejected("d: the entry has no 'd' field")
    kind, body = wire.unpack_body(payload)
    if type(body) is list:
        if kind == wire.KIND_ACCT:
            fast = _fast_acct_values(body, limits)
            if fast is not None:
                return fast
        fields = dict(zip(wire.READ_FIELDS[kind], body, strict=True))  # the checks below name the bad field
    else:
        fields = cast(dict[str, Any], body)
    if kind == wire.KIND_ACCT:
        return parse_acct(fields, limits)
    return parse_auth(fields, limits)


# ------------------------------------------------------------------- collapse
# Column order of the sessions staging table (merge.py builds it from this).
SESSION_COLUMNS = (
    ("tenant_id", "integer"), ("session_key", "text"), ("nas_id", "bigint"), ("username", "text"),
    ("acct_session_id", "text"), ("calling_station_id", "text"), ("framed_ip", "inet"),
    ("started", "float8"), ("updated", "float8"), ("stale", "float8"), ("stopped", "float8"),
    ("session_time_s", "bigint"), ("input_octets", "bigint"), ("output_octets", "bigint"),
    ("input_packets", "bigint"), ("output_packets", "bigint"), ("terminate_cause", "text"),
    # 2026-12-01 (migration 0005)
    ("received", "float8"), ("nas_port_id", "text"), ("called_station_id", "text"),
    ("nas_identifier", "text"), ("counter_flags", "integer"),
    # 2026-12-01 (migration 0011)
    ("framed_ipv6_prefix", "inet"), ("delegated_ipv6_prefix", "inet"), ("framed_interface_id", "text"),
)


def _alive_at(r: Acct) -> float:
    """The receiving clock's time of a record (the NAS's event time if it is unknown)."""
    return r.arrival_ts or r.event_ts


class _Row:
    """The running fold of one session's records inside a batch."""

    __slots__ = ("nas_id", "username", "acct_session_id", "calling_station_id", "framed_ip", "started",
                 "updated", "stale", "stopped", "session_time_s", "input_octets", "output_octets",
                 "input_packets", "output_packets", "terminate_cause", "received", "nas_port_id",
                 "called_station_id", "nas_identifier", "counter_flags", "framed_ipv6_prefix",
                 "delegated_ipv6_prefix", "framed_interface_id")

    def __init__(self, r: Acct) -> None:
        self.nas_id = r.nas_id
        self.username = r.username
        self.acct_session_id = r.acct_session_id
        self.calling_station_id = r.calling_station_id
        self.framed_ip = r.framed_ip
        self.started = r.event_ts - r.session_time_s
        self.updated = r.event_ts
        self.stale = _alive_at(r) + 2 * r.interim_s
        self.received = _alive_at(r)
        self.nas_port_id = r.nas_port_id
        self.called_station_id = r.called_station_id
        self.nas_identifier = r.nas_identifier
        self.counter_flags = r.counter_flags
        self.framed_ipv6_prefix = r.framed_ipv6_prefix
        self.delegated_ipv6_prefix = r.delegated_ipv6_prefix
        self.framed_interface_id = r.framed_interface_id
        self.stopped = r.event_ts if r.status == "stop" else None
        self.session_time_s = r.session_time_s
        self.input_octets = r.input_octets
        self.output_octets = r.output_octets
        self.input_packets = r.input_packets
        self.output_packets = r.output_packets
        self.terminate_cause = r.terminate_cause if r.status == "stop" else None

    def fold(self, r: Acct) -> None:
        # Each rule is commutative, associative and idempotent, so duplicates and
        # reordering inside the batch give the same row.
        self.username = self.username or r.username
        self.acct_session_id = self.acct_session_id or r.acct_session_id
        self.calling_station_id = self.calling_station_id or r.calling_station_id
        self.framed_ip = self.framed_ip or r.framed_ip
        self.started = min(self.started, r.event_ts - r.session_time_s)
        self.updated = max(self.updated, r.event_ts)
        self.stale = max(self.stale, _alive_at(r) + 2 * r.interim_s)
        self.received = max(self.received, _alive_at(r))
        self.nas_port_id = self.nas_port_id or r.nas_port_id
        self.called_station_id = self.called_station_id or r.called_station_id
        self.nas_identifier = self.nas_identifier or r.nas_identifier
        self.counter_flags |= r.counter_flags
        self.framed_ipv6_prefix = self.framed_ipv6_prefix or r.framed_ipv6_prefix
        self.delegated_ipv6_prefix = self.delegated_ipv6_prefix or r.delegated_ipv6_prefix
        self.framed_interface_id = self.framed_interface_id or r.framed_interface_id
        if r.status == "stop" and (self.stopped is None or r.event_ts >= self.stopped):
            self.stopped = r.event_ts
            self.terminate_cause = r.terminate_cause or self.terminate_cause
        self.session_time_s = max(self.session_time_s, r.session_time_s)
        self.input_octets = max(self.input_octets, r.input_octets)
        self.output_octets = max(self.output_octets, r.output_octets)
        self.input_packets = max(self.input_packets, r.input_packets)
        self.output_packets = max(self.output_packets, r.output_packets)


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class NasEvent:
    """An Accounting-On/Off: close the NAS's sessions that started before ``event_ts``."""

    event_ts: float
    tenant_id: int
    nas_id: int


def _single(r: Acct) -> tuple[Any, ...]:
    """The row of a session that has one record in the batch (the common case): no fold."""
    stop = r.status == "stop"
    return (r.tenant_id, r.session_key, r.nas_id, r.username, r.acct_session_id, r.calling_station_id,
            r.framed_ip, r.event_ts - r.session_time_s, r.event_ts, _alive_at(r) + 2 * r.interim_s,
            r.event_ts if stop else None, r.session_time_s, r.input_octets, r.output_octets,
            r.input_packets, r.output_packets, r.terminate_cause if stop else None,
            _alive_at(r), r.nas_port_id, r.called_station_id, r.nas_identifier, r.counter_flags,
            r.framed_ipv6_prefix, r.delegated_ipv6_prefix, r.framed_interface_id)


#: The staging columns of session_days rows (migration 0012): (tenant, session row,
#: local day, username, octets in + out, session time) after the day's last record.
DAY_COLUMNS = (
    ("tenant_id", "integer"), ("session_key", "text"), ("day", "integer"), ("username", "text"),
    ("octets", "bigint"), ("time_s", "bigint"),
)


def usage_days(records: Iterable[Acct]) -> list[tuple[Any, ...]]:
    """The session_days rows of a batch: per (session row, local day live.lua counted in)
    the greatest totals (commutative, idempotent: a replay changes nothing), key order."""
    days: dict[tuple[int, str, int], list[Any]] = {}
    for r in records:
        if r.live_day is None:
            continue
        key = (r.tenant_id, r.session_key, r.live_day)
        octets = r.input_octets + r.output_octets
        row = days.get(key)
        if row is None:
            days[key] = [r.username, octets, r.session_time_s]
        else:
            row[0] = row[0] or r.username
            row[1], row[2] = max(row[1], octets), max(row[2], r.session_time_s)
    return [(t, k, d, *row) for (t, k, d), row in sorted(days.items())]


def collapse(records: Iterable[Acct]) -> tuple[list[tuple[Any, ...]], list[NasEvent]]:
    """Session rows (one per session, in key order: fewer lock waits) and NAS events (in time order)."""
    # A session's first record is kept as it is; a _Row is built only for a second one.
    rows: dict[tuple[int, str], Acct | _Row] = {}
    events: set[NasEvent] = set()
    for r in records:
        if r.status in NAS_STATUSES:
            events.add(NasEvent(r.event_ts, r.tenant_id, r.nas_id))
            continue
        key = (r.tenant_id, r.session_key)
        seen = rows.get(key)
        if seen is None:
            rows[key] = r
        elif type(seen) is _Row:
            seen.fold(r)
        else:
            row = _Row(cast(Acct, seen))
            row.fold(r)
            rows[key] = row
    out = []
    for (tenant_id, session_key), w in sorted(rows.items()):  # keys are unique: values never compared
        if type(w) is not _Row:
            out.append(_single(cast(Acct, w)))
            continue
        out.append((tenant_id, session_key, w.nas_id, w.username, w.acct_session_id, w.calling_station_id,
                    w.framed_ip, w.started, w.updated, w.stale, w.stopped, w.session_time_s,
                    w.input_octets, w.output_octets, w.input_packets, w.output_packets, w.terminate_cause,
                    w.received, w.nas_port_id, w.called_station_id, w.nas_identifier, w.counter_flags,
                    w.framed_ipv6_prefix, w.delegated_ipv6_prefix, w.framed_interface_id))
    return out, sorted(events)
