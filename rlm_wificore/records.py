"""Accounting-Request -> record: a pure function, no I/O.

Normalises what NAS vendors really send (see FREERADIUS-FACTS.md): 64-bit
counters from the Gigawords attributes, event time from Event-Timestamp or
arrival minus Acct-Delay-Time (a clock years off is ignored), a stable
session key from the trusted NAS identity plus Acct-Session-Id and User-Name.
Vendor semantics (docs/batch-writer.md, "Accounting per NAS family"):
CoovaChilli's client view point (ChilliSpot-Acct-View-Point = 2) is turned into
the NAS's view (input and output swapped back); a Framed-IP-Address of 0.0.0.0
(Huawei BRAS Starts) is no address; Cisco's ``client-mac-address`` AVPair
(WiFiCore-Client-Mac, set in preacct) is the calling MAC when
Calling-Station-Id is absent. Counters are passed on as the NAS sent them:
live.lua and batch_writer apply the counter rules (implausible values refused,
counters going backwards) the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from wificore import wire
from wificore.errors import InputError

STATUS = {
    "Start": "start", "Stop": "stop", "Interim-Update": "interim", "Alive": "interim",
    "Accounting-On": "on", "Accounting-Off": "off",
}
U32 = 1 << 32
#: An Event-Timestamp further than this from arrival is a NAS with no clock.
MAX_CLOCK_SKEW_S = 86400
MAX_FIELD = 253

#: The order in which acct_record() lists the values; wire.ACCT_FIELDS says where each goes.
_VALUES = ("tenant_id", "nas_id", "session_key", "acct_session_id", "username", "status", "event_ts",
           "arrival_ts", "session_time_s", "input_octets", "output_octets", "input_packets",
           "output_packets", "calling_station_id", "framed_ip", "terminate_cause", "nas_port",
           "interim_s", "record_id", "nas_port_id", "called_station_id", "nas_identifier",
           "framed_ipv6_prefix", "delegated_ipv6_prefix", "framed_interface_id", "local_day")
_to_wire = wire.arranger(wire.KIND_ACCT, _VALUES)


def session_key(tenant_id: int, nas_id: int, acct_session_id: str, username: str) -> str:
    """Same session, same key; never from NAS-IP-Address (the sender controls it)."""
    raw = f"{tenant_id}\0{nas_id}\0{acct_session_id}\0{username}".encode("utf-8", "surrogateescape")
    return hashlib.blake2b(raw, digest_size=12).hexdigest()


def _u32(req: dict[str, str], name: str) -> int:
    raw = req.get(name)
    if raw is None or raw == "":
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise InputError(f"{name}: {raw[:40]!r} is not an integer") from None
    if not 0 <= value < U32:
        raise InputError(f"{name}: {value} is out of range")
    return value


def _text(req: dict[str, str], name: str) -> str | None:
    value = req.get(name)
    if value is None:
        return None
    return value[:MAX_FIELD]


#: ChilliSpot-Acct-View-Point (vendor 14559, attribute 10; raddb/dictionary): 2 = the
#: client's view, input = what the client downloaded. By name or number.
CLIENT_VIEW_POINT = ("ChilliSpot-Client-View-Point", "2")
#: Addresses that mean "none yet" (Huawei BRAS Starts, IOS-XR's NAS-IPv6-Address = ::).
NO_ADDRESS = ("0.0.0.0", "::")


def acct_record(req: dict[str, str], *, tenant_id: int, nas_id: int, interim_s: int,
                arrival_ts: float, record_id: str,
                day_of: Callable[[float], int] | None = None) -> tuple[str, tuple[Any, ...]]:
    """The status and the wire values (``wire.ACCT_FIELDS`` order) of one
    Accounting-Request; InputError names the bad field. ``day_of``: the tenant's local
    day of an instant (quota periods, :meth:`wificore.quota.ZoneClock.day`); None: the
    zone is not known, the record carries no local day."""
    status_raw = req.get("Acct-Status-Type")
    status = STATUS.get(status_raw or "")
    if status is None:
        raise InputError(f"Acct-Status-Type: {str(status_raw)[:40]!r} is not handled")
    delay = _u32(req, "Acct-Delay-Time")
    event_ts = arrival_ts - delay
    stamped = req.get("WiFiCore-Event-Time")  # %{integer:Event-Timestamp}, set in preacct
    if stamped:
        try:
            ts = float(stamped)
        except ValueError:
            ts = None
        if ts is not None and abs(ts - arrival_ts) <= MAX_CLOCK_SKEW_S:
            event_ts = ts
    acct_session_id = req.get("Acct-Session-Id") or ""
    username = req.get("User-Name") or ""
    if status in ("start", "interim", "stop"):
        if not acct_session_id:
            raise InputError("Acct-Session-Id: missing")
        if len(acct_session_id) > MAX_FIELD or len(username) > MAX_FIELD:
            raise InputError("Acct-Session-Id or User-Name: longer than 253")
        key = session_key(tenant_id, nas_id, acct_session_id, username)
    else:
        acct_session_id, username, key = "", "", ""
    inp = (_u32(req, "Acct-Input-Gigawords") << 32) | _u32(req, "Acct-Input-Octets")
    out = (_u32(req, "Acct-Output-Gigawords") << 32) | _u32(req, "Acct-Output-Octets")
    inp_pk, out_pk = _u32(req, "Acct-Input-Packets"), _u32(req, "Acct-Output-Packets")
    if req.get("ChilliSpot-Acct-View-Point") in CLIENT_VIEW_POINT:
        inp, out, inp_pk, out_pk = out, inp, out_pk, inp_pk
    framed_ip = req.get("Framed-IP-Address")
    if framed_ip in NO_ADDRESS:
        framed_ip = None
    return status, _to_wire((  # in _VALUES order
        tenant_id, nas_id, key, acct_session_id, username, status, event_ts, arrival_ts,
        _u32(req, "Acct-Session-Time"), inp, out, inp_pk, out_pk,
        _text(req, "Calling-Station-Id") or _text(req, "WiFiCore-Client-Mac"), framed_ip,
        _text(req, "Acct-Terminate-Cause"), _text(req, "NAS-Port"), interim_s, record_id,
        _text(req, "NAS-Port-Id"), _text(req, "Called-Station-Id"), _text(req, "NAS-Identifier"),
        # As radiusd prints them ('2001:db8::/64', '0011:22ff:fe33:4455'); the writer checks.
        _text(req, "Framed-IPv6-Prefix"), _text(req, "Delegated-IPv6-Prefix"),
        # The local day of the usage: its arrival less Acct-Delay-Time (which the NAS counts
        # without its clock), never the NAS's Event-Timestamp: a clock ahead counted it in a
        # period not begun (today's later records then counted in none), one behind in the
        # period before.
        _text(req, "Framed-Interface-Id"),
        day_of(arrival_ts - min(delay, MAX_CLOCK_SKEW_S)) if day_of is not None else None,
    ))
