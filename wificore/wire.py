"""The wire format of stream records, shared by rlm_wificore and batch_writer.

A record is a msgpack array ``[version, kind, body]`` stored in the ``d``
field of a stream entry. Version 2 (written since 2026-11-27): ``body`` is
the array of the kind's field values in the order of ``ACCT_FIELDS`` /
``AUTH_FIELDS`` below -- no field names on the wire, so packing, Redis's
script and the writer each skip a score of map keys per record. Version 1:
``body`` is a ``{field: value}`` map; still read (records spooled or queued
before an upgrade), and still written for records that do not have exactly
the fields of their kind (an Accounting-Request that could not be
normalised: ``invalid`` and ``raw``). Decoding never trusts the payload:
anything malformed raises :class:`DecodeError` from the cause.

Streams (see keys.py): ``{prefix}:stream:{N}``, N = tenant_id %
stream_partitions (so one session's records stay in order in one partition),
for accounting and auth-log records alike. Each entry
has one field ``d`` = the packed record. Bad entries go to the dead-letter
stream ``{prefix}:dead`` with fields ``d`` (the payload as received),
``reason``, ``source`` and ``ts``.

``acct`` fields (all present; None where the NAS sent nothing):
  tenant_id int, nas_id int, session_key str (stable: same session -> same
  key), acct_session_id str, username str,
  status str: 'start' | 'interim' | 'stop' | 'on' | 'off' (on/off: NAS-wide,
  session_key/acct_session_id/username are '' then),
  event_ts float (epoch s; Event-Timestamp, else arrival - Acct-Delay-Time),
  arrival_ts float, session_time_s int, input_octets int, output_octets int
  (64-bit, Gigawords folded in), input_packets int, output_packets int,
  calling_station_id str|None, framed_ip str|None, terminate_cause str|None,
  nas_port str|None, interim_s int (the interval the NAS was told),
  record_id str (unique per Accounting-Request received; a retransmission
  gets a new one: idempotence comes from the merge rules, not from it),
  then (added 2026-12-01 at the end, see below) nas_port_id str|None,
  called_station_id str|None, nas_identifier str|None, then (added later on
  2026-12-01) framed_ipv6_prefix str|None, delegated_ipv6_prefix str|None,
  framed_interface_id str|None (as radiusd prints them), then (added with the
  quota periods) local_day int|None (the record's event time as a day of the
  tenant's calendar, wificore/quota.py; None: the zone was not known).

  Fields live.lua appends on the way into the stream (``LIVE_FIELDS``; absent
  in records that entered the stream before 2026-12-01, and in the spool):
  live_session_key str (the session's row: the generation of the
  Acct-Session-Id, see docs/batch-writer.md), live_session_time_s,
  live_input_octets, live_output_octets int (the session's totals after the
  counter rules), counter_flags int (1: a counter was implausible and refused,
  2: a counter went backwards), live_interim_s int (the interval liveness uses),
  live_day int|None (the local day live.lua counted the record's usage in: its
  local_day, None for a late record or one that counted nothing; batch_writer
  keeps the session's totals per such day, ``session_days``).

Adding fields: version 2 bodies grow at the end only. A reader takes a body of
``V2_BASE`` .. any length: missing trailing fields are None, unknown trailing
ones are dropped, so records spooled or queued by an older (or newer) radiusd
stay readable by position. In the stream live.lua pads radiusd's part to
``len(ACCT_FIELDS)`` before it appends ``LIVE_FIELDS``, so growing ACCT_FIELDS
moves the live fields: a stream body of exactly 22 + 6 values (live.lua before the
three IPv6 fields) or 25 + 6 (before local_day and live_day) is read with its live
fields moved to their place (:func:`unpack_body`); live.lua never writes those
lengths now. Upgrade batch_writer before radiusd:
an older writer reads the new positions as live fields.

``auth`` fields:
  tenant_id int, nas_id int, ts float, event_id str (unique; the auth log's
  key, so a replay inserts nothing twice), username str,
  calling_station_id str|None, result 'accept'|'reject', reason str,
  method 'pap'|'chap'|'mschap'|'other', then (added 2026-12-01) interim_s
  int|None (an accept: the plan's interim interval, which live.lua keeps for the
  session about to start -- the state Redis cannot read the cached plan when the
  two Redis roles are split).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from .errors import DecodeError

VERSION = 2        # written
MAP_VERSION = 1    # read, and written for records outside the fixed fields
KIND_ACCT = "acct"
KIND_AUTH = "auth"
KINDS = (KIND_ACCT, KIND_AUTH)

#: Field order of version 2 bodies: THE one definition. Python code that builds or reads
#: bodies by position gets its positions from here (:func:`arranger`, :func:`picker`);
#: live.lua reads some by position, checked against these by tests/test_live_script.py.
#: Any change to them is a new version: writers must read what older radiusd processes spooled.
ACCT_FIELDS = ("tenant_id", "nas_id", "session_key", "acct_session_id", "username", "status",
               "event_ts", "arrival_ts", "session_time_s", "input_octets", "output_octets",
               "input_packets", "output_packets", "calling_station_id", "framed_ip", "terminate_cause",
               "nas_port", "interim_s", "record_id",
               # 2026-12-01: appended (older records have only the 19 above)
               "nas_port_id", "called_station_id", "nas_identifier",
               # 2026-12-01, IPv6: appended (older records have only the 22 above)
               "framed_ipv6_prefix", "delegated_ipv6_prefix", "framed_interface_id",
               # 2026-12-01, quota periods: appended (older records have only the 25 above)
               "local_day")
#: Stream bodies live.lua wrote before: length -> radiusd's part (then 6 live fields):
#: 22 + 6 before the IPv6 fields, 25 + 6 before local_day and live_day.
_OLD_STREAM_BODIES = {22 + 6: 22, 25 + 6: 25}
#: Appended by live.lua to records it puts into the stream (never in the spool).
LIVE_FIELDS = ("live_session_key", "live_session_time_s", "live_input_octets", "live_output_octets",
               "counter_flags", "live_interim_s",
               # 2026-12-01, quota periods
               "live_day")
#: Every field a reader of the stream may find, in order.
STREAM_ACCT_FIELDS = ACCT_FIELDS + LIVE_FIELDS
#: The fields of the first version 2 bodies (2026-11-27): the shortest body read.
V2_BASE = {"acct": 19, "auth": 9}
AUTH_FIELDS = ("tenant_id", "nas_id", "ts", "event_id", "username", "calling_station_id", "result",
               "reason", "method",
               # 2026-12-01: appended (older records have only the 9 above)
               "interim_s")
FIELDS = {KIND_ACCT: ACCT_FIELDS, KIND_AUTH: AUTH_FIELDS}
#: What a reader pads a version 2 body to.
READ_FIELDS = {KIND_ACCT: STREAM_ACCT_FIELDS, KIND_AUTH: AUTH_FIELDS}
_NAMES = {kind: frozenset(names) for kind, names in FIELDS.items()}


def arranger(kind: str, names: Sequence[str]) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """For code that builds a version 2 body with the values in an order of its own,
    ``names``: a function (``operator.itemgetter``, C speed) from such values to the body in
    ``FIELDS[kind]`` order. ``names`` must be the kind's fields, each once (else ValueError,
    at import time of the caller)."""
    fields = FIELDS[kind]
    if len(names) != len(fields) or set(names) != _NAMES[kind]:
        missing, extra = _NAMES[kind] - set(names), set(names) - _NAMES[kind]
        raise ValueError(f"{kind} fields: missing {sorted(missing)}, unknown {sorted(extra)}, "
                         f"or one named twice")
    return operator.itemgetter(*(list(names).index(f) for f in fields))


def picker(kind: str, names: Sequence[str]) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """For code that reads a version 2 body by position (as :func:`unpack_body` returns it):
    a function from the body to the values of ``names`` (fields of ``kind``, live.lua's
    included, in the order given) as a tuple."""
    fields = READ_FIELDS[kind]
    unknown = [n for n in names if n not in fields]
    if unknown or len(names) < 2:
        raise ValueError(f"{kind} fields: unknown {unknown}, or fewer than two named")
    return operator.itemgetter(*(fields.index(n) for n in names))


#: One packer for every record: packb() builds a new one per call. Packer.pack
#: runs in C without releasing the GIL, so sharing it between threads is safe.
_packer = msgpack.Packer(use_bin_type=True)


def pack_values(kind: str, values: Sequence[Any]) -> bytes:
    """Encode one version 2 record from its values in ``FIELDS[kind]`` order: the hooks'
    form (no dict, no name lookups), so nothing is checked but the count."""
    if len(values) != len(FIELDS[kind]):
        raise ValueError(f"{kind} record of {len(values)} values, not {len(FIELDS[kind])}")
    return _packer.pack((VERSION, kind, values))


def pack(kind: str, fields: dict[str, Any]) -> bytes:
    """Encode one record from a dict: version 2 when ``fields`` has only fields of
    ``kind`` (missing ones are sent as None), else a version 1 map that keeps them all."""
    names = FIELDS.get(kind)
    if names is None:
        raise ValueError(f"unknown record kind {kind!r}")
    if fields.keys() <= _NAMES[kind]:
        get = fields.get
        return _packer.pack((VERSION, kind, [get(n) for n in names]))
    return _packer.pack((MAP_VERSION, kind, fields))


def unpack_body(payload: bytes) -> tuple[str, list[Any] | dict[str, Any]]:
    """Decode one record into (kind, body): the value list of version 2 (padded with None,
    or cut, to ``READ_FIELDS[kind]``), or the map of version 1. For readers with a
    positional fast path."""
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise DecodeError(f"undecodable record: {exc}") from exc
    if not (isinstance(obj, list) and len(obj) == 3):
        raise DecodeError("record is not [version, kind, body]")
    version, kind, body = obj
    if kind not in KINDS:
        raise DecodeError(f"unknown record kind {kind!r}")
    if version == VERSION:
        want = len(READ_FIELDS[kind])
        if not isinstance(body, list) or len(body) < V2_BASE[kind]:
            raise DecodeError(f"record body is not the {V2_BASE[kind]}..{want} {kind} fields")
        if len(body) != want:
            old = _OLD_STREAM_BODIES.get(len(body)) if kind == KIND_ACCT else None
            if old is not None:  # an older live.lua's live fields, after its radiusd part
                body = body[:old] + [None] * (len(ACCT_FIELDS) - old) + body[old:]
            body = (body + [None] * (want - len(body)))[:want]
    elif version == MAP_VERSION:
        if not isinstance(body, dict):
            raise DecodeError("record fields are not a map")
    else:
        raise DecodeError(f"unsupported record version {version!r}")
    return kind, body


def unpack(payload: bytes) -> tuple[str, dict[str, Any]]:
    """Decode one record into (kind, fields), whatever its version."""
    kind, body = unpack_body(payload)
    if isinstance(body, list):
        return kind, dict(zip(READ_FIELDS[kind], body, strict=True))
    return kind, body


def stream_id(value: str) -> tuple[int, int]:
    """A Redis stream entry id ``"<ms>-<seq>"`` as a comparable pair."""
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)
