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
* updated_at = greatest event_ts; stale_at = greatest (event_ts + 2 x interim);
* counters = greatest value seen (they only move forward);
* a Stop is final: stopped_at = greatest Stop event_ts, close_reason 'stop'.
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
MIN_EVENT_TS = 946_684_800.0     # 2000-01-01: anything earlier is a NAS without a clock
MAX_TEXT = 253                   # the longest RADIUS string attribute
MAX_SESSION_KEY = 256
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
    arrival_ts: float = 0.0  # when radiusd received it (0: unknown); for the latency metric


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
        raise Rejected(f"{name}: {value} is not a counter (0..2^63-1)")
    return value


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
    if not value or type(value) is not str or len(value) > 45:
        return None
    # inet_pton (C) rather than the ipaddress module: same strictness, 20x cheaper.
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, value)
            return value
        except OSError:
            continue
    return None  # a garbled address is no reason to lose the session's counters


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
    return _fast_acct_values([f.get(n) for n in wire.ACCT_FIELDS], limits)


#: What the fast path reads of a version 2 body, in the order it unpacks them; the
#: positions come from wire.ACCT_FIELDS.
_pick_fast = wire.picker(wire.KIND_ACCT, (
    "tenant_id", "nas_id", "session_key", "acct_session_id", "username", "status", "event_ts",
    "arrival_ts", "session_time_s", "input_octets", "output_octets", "input_packets",
    "output_packets", "calling_station_id", "framed_ip", "terminate_cause", "interim_s"))


def _fast_acct_values(v: list[Any], limits: Limits) -> Acct | None:
    """The common case in one pass, from a version 2 body (wire.ACCT_FIELDS order): a
    well-formed session record, or None (then the field-by-field checks run and name what
    is wrong). Same rules, a third of the cost."""
    (tenant_id, nas_id, key, asid, user, status, ev, arrival, st, io, oo, ip, op, csid, framed_ip,
     cause, interim) = _pick_fast(v)
    if not (type(tenant_id) is int and 0 < tenant_id <= MAX_TENANT
            and type(nas_id) is int and 0 <= nas_id <= MAX_COUNTER
            and type(ev) is float and limits.now - limits.max_age_s <= ev <= limits.now + limits.max_ahead_s
            and type(st) is int and 0 <= st and ev - st >= MIN_EVENT_TS
            and type(io) is int and 0 <= io <= MAX_COUNTER and type(oo) is int and 0 <= oo <= MAX_COUNTER
            and type(ip) is int and 0 <= ip <= MAX_COUNTER and type(op) is int and 0 <= op <= MAX_COUNTER
            and type(key) is str and 0 < len(key) <= MAX_SESSION_KEY and "\x00" not in key
            and _str_ok(asid, MAX_TEXT) and _str_ok(user, MAX_TEXT)
            and (csid is None or _str_ok(csid, MAX_TEXT)) and (cause is None or _str_ok(cause, 64))
            and status in SESSION_STATUSES):
        return None
    return Acct(tenant_id, nas_id, status, ev, key, asid, user, st, io, oo, ip, op, csid, _ip(framed_ip),
                cause, _interim_value(interim, limits.default_interim_s), _arrival_value(arrival))


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
    session_time_s = _counter(fields, "session_time_s")
    if event_ts - session_time_s < MIN_EVENT_TS:
        raise Rejected(f"session_time_s: {session_time_s} puts the session start before 2000")
    return Acct(
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
    )


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
        fields = dict(zip(wire.FIELDS[kind], body, strict=True))  # the checks below name the bad field
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
)


class _Row:
    """The running fold of one session's records inside a batch."""

    __slots__ = ("nas_id", "username", "acct_session_id", "calling_station_id", "framed_ip", "started",
                 "updated", "stale", "stopped", "session_time_s", "input_octets", "output_octets",
                 "input_packets", "output_packets", "terminate_cause")

    def __init__(self, r: Acct) -> None:
        self.nas_id = r.nas_id
        self.username = r.username
        self.acct_session_id = r.acct_session_id
        self.calling_station_id = r.calling_station_id
        self.framed_ip = r.framed_ip
        self.started = r.event_ts - r.session_time_s
        self.updated = r.event_ts
        self.stale = r.event_ts + 2 * r.interim_s
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
        self.stale = max(self.stale, r.event_ts + 2 * r.interim_s)
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
            r.framed_ip, r.event_ts - r.session_time_s, r.event_ts, r.event_ts + 2 * r.interim_s,
            r.event_ts if stop else None, r.session_time_s, r.input_octets, r.output_octets,
            r.input_packets, r.output_packets, r.terminate_cause if stop else None)


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
                    w.input_octets, w.output_octets, w.input_packets, w.output_packets, w.terminate_cause))
    return out, sorted(events)
