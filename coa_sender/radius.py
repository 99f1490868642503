"""RFC 5176 packets: Disconnect-Request (40) and CoA-Request (43) out, their ACK / NAK
back. Pure functions, no I/O.

A request's authenticator is computed as an Accounting-Request's (RFC 5176 §2.3:
MD5 over the packet with 16 zero octets in its place, then the shared secret); its
Message-Authenticator (RFC 3579 §3.2, RFC 5176 §3.3) is the HMAC-MD5 of the packet
with both the authenticator and the Message-Authenticator's value zeroed, computed
first. A response is checked against the request's authenticator (MD5 of code, id,
length, request authenticator, attributes, secret) and, when it carries one, its own
Message-Authenticator: a reply that fails either is ignored, as if never sent.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
from collections.abc import Sequence

DISCONNECT_REQUEST, DISCONNECT_ACK, DISCONNECT_NAK = 40, 41, 42
COA_REQUEST, COA_ACK, COA_NAK = 43, 44, 45
ANSWERS = {DISCONNECT_REQUEST: (DISCONNECT_ACK, DISCONNECT_NAK), COA_REQUEST: (COA_ACK, COA_NAK)}
REQUEST_CODES = {"disconnect": DISCONNECT_REQUEST, "coa": COA_REQUEST}

USER_NAME, NAS_IP_ADDRESS, FRAMED_IP_ADDRESS, FILTER_ID = 1, 4, 8, 11
VENDOR_SPECIFIC, SESSION_TIMEOUT, CALLING_STATION_ID = 26, 27, 31
ACCT_SESSION_ID, EVENT_TIMESTAMP, MESSAGE_AUTHENTICATOR = 44, 55, 80
NAS_IPV6_ADDRESS, ERROR_CAUSE = 95, 101

#: The reply attributes rlm_wificore.policy.rate_pairs renders, as FreeRADIUS's
#: dictionaries define them: name -> (vendor or 0, type, "string" | "integer" | "tagged").
ATTRIBUTES: dict[str, tuple[int, int, str]] = {
    "Filter-Id": (0, FILTER_ID, "string"),
    "Session-Timeout": (0, SESSION_TIMEOUT, "integer"),
    "Mikrotik-Rate-Limit": (14988, 8, "string"),
    "WISPr-Bandwidth-Max-Up": (14122, 7, "integer"),
    "WISPr-Bandwidth-Max-Down": (14122, 8, "integer"),
    "Cisco-AVPair": (9, 1, "string"),
    "Huawei-Input-Average-Rate": (2011, 2, "integer"),
    "Huawei-Input-Peak-Rate": (2011, 3, "integer"),
    "Huawei-Output-Average-Rate": (2011, 5, "integer"),
    "Huawei-Output-Peak-Rate": (2011, 6, "integer"),
    "ERX-Service-Activate": (4874, 65, "tagged"),
}

#: RFC 5176 §3.5 Error-Cause values, for the logs and the attempt rows.
ERROR_CAUSES = {
    201: "Residual-Session-Context-Removed", 202: "Invalid-EAP-Packet",
    401: "Unsupported-Attribute", 402: "Missing-Attribute", 403: "NAS-Identification-Mismatch",
    404: "Invalid-Request", 405: "Unsupported-Service", 406: "Unsupported-Extension",
    407: "Invalid-Attribute-Value", 501: "Administratively-Prohibited", 502: "Request-Not-Routable",
    503: "Session-Context-Not-Found", 504: "Session-Context-Not-Removable",
    505: "Other-Proxy-Processing-Error", 506: "Resources-Unavailable", 507: "Request-Initiated",
    508: "Multiple-Session-Selection-Unsupported",
}

Attr = tuple[int, bytes]


def attr(atype: int, value: bytes) -> Attr:
    if len(value) > 253:
        raise ValueError(f"attribute {atype}: {len(value)} octets (at most 253)")
    return atype, value


def u32(n: int) -> bytes:
    return struct.pack("!I", n)


def identification(username: str, acct_session_id: str, framed_ip: str | None, nas_ip: str,
                   event_ts: int) -> list[Attr]:
    """RFC 5176 §3: the NAS (NAS-IP-Address / NAS-IPv6-Address) and the session
    (User-Name, Acct-Session-Id, Framed-IP-Address when known), and Event-Timestamp
    (§3.2: against replays)."""
    attrs = [attr(USER_NAME, username.encode("utf-8", "surrogateescape")),
             attr(ACCT_SESSION_ID, acct_session_id.encode("utf-8", "surrogateescape"))]
    if framed_ip:
        ip = ipaddress.ip_address(framed_ip)
        if ip.version == 4:
            attrs.append(attr(FRAMED_IP_ADDRESS, ip.packed))
    nas = ipaddress.ip_address(nas_ip)
    attrs.append(attr(NAS_IP_ADDRESS if nas.version == 4 else NAS_IPV6_ADDRESS, nas.packed))
    attrs.append(attr(EVENT_TIMESTAMP, u32(event_ts)))
    return attrs


def rendered(pairs: Sequence[tuple[str, ...]]) -> list[Attr]:
    """Reply pairs as policy.rate_pairs renders them ((name, value) or (name, "+=",
    value); a tagged name as ``Name:tag``) -> attributes."""
    out: list[Attr] = []
    for pair in pairs:
        name, value = pair[0], pair[-1]
        tag = 0
        if ":" in name:
            name, raw_tag = name.split(":", 1)
            tag = int(raw_tag)
        vendor, atype, kind = ATTRIBUTES[name]
        if kind == "integer":
            data = u32(int(value))
        elif kind == "tagged":
            data = bytes([tag or 1]) + value.encode()
        else:
            data = value.encode()
        if vendor:
            out.append(attr(VENDOR_SPECIFIC, struct.pack("!IBB", vendor, atype, len(data) + 2) + data))
        else:
            out.append(attr(atype, data))
    return out


def _body(attrs: Sequence[Attr]) -> bytes:
    return b"".join(struct.pack("!BB", t, len(v) + 2) + v for t, v in attrs)


def encode_request(code: int, ident: int, secret: bytes, attrs: Sequence[Attr]) -> bytes:
    """A Disconnect- or CoA-Request with a Message-Authenticator (first) and its
    Request Authenticator."""
    body = _body([(MESSAGE_AUTHENTICATOR, b"\0" * 16), *attrs])
    length = 20 + len(body)
    header = struct.pack("!BBH", code, ident, length)
    mac = hmac.new(secret, header + b"\0" * 16 + body, hashlib.md5).digest()
    body = body[:2] + mac + body[18:]
    authenticator = hashlib.md5(header + b"\0" * 16 + body + secret).digest()
    return header + authenticator + body


def decode_attrs(data: bytes) -> list[Attr]:
    out, i = [], 0
    while i + 2 <= len(data):
        t, n = data[i], data[i + 1]
        if n < 2 or i + n > len(data):
            raise ValueError("malformed attribute")
        out.append((t, data[i + 2:i + n]))
        i += n
    return out


def check_response(packet: bytes, request: bytes, secret: bytes) -> tuple[int, list[Attr]] | None:
    """(code, attributes) of a valid answer to ``request``; None for anything else
    (another id, a wrong authenticator or Message-Authenticator, a malformed packet)."""
    if len(packet) < 20:
        return None
    code, ident, length = struct.unpack("!BBH", packet[:4])
    if ident != request[1] or length < 20 or length > len(packet) or code not in ANSWERS.get(request[0], ()):
        return None
    packet = packet[:length]
    req_auth = request[4:20]
    expected = hashlib.md5(packet[:4] + req_auth + packet[20:] + secret).digest()
    if not hmac.compare_digest(expected, packet[4:20]):
        return None
    try:
        attrs = decode_attrs(packet[20:])
    except ValueError:
        return None
    offset = 20
    for t, v in attrs:
        if t == MESSAGE_AUTHENTICATOR:
            if len(v) != 16:
                return None
            zeroed = packet[:4] + req_auth + packet[20:offset + 2] + b"\0" * 16 + packet[offset + 18:]
            if not hmac.compare_digest(hmac.new(secret, zeroed, hashlib.md5).digest(), v):
                return None
        offset += len(v) + 2
    return code, attrs


def error_cause(attrs: Sequence[Attr]) -> int | None:
    for t, v in attrs:
        if t == ERROR_CAUSE and len(v) == 4:
            return int(struct.unpack("!I", v)[0])
    return None
