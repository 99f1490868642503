"""RADIUS packets from raw attribute bytes, for what radclient and pyrad cannot
encode: any byte value, NULs, empty or repeated attributes, hundreds of them.

Attributes are ``(type, value_bytes)``; a vendor attribute is
``(26, vsa(vendor, type, value))``. ``send`` returns (code name or None, the
reply's attributes as ``(type, bytes)``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct

ACCESS_REQUEST, ACCESS_ACCEPT, ACCESS_REJECT, ACCOUNTING_REQUEST, ACCOUNTING_RESPONSE = 1, 2, 3, 4, 5
CODES = {2: "Access-Accept", 3: "Access-Reject", 5: "Accounting-Response", 11: "Access-Challenge"}

USER_NAME, USER_PASSWORD, CHAP_PASSWORD, NAS_IP_ADDRESS, NAS_PORT = 1, 2, 3, 4, 5
REPLY_MESSAGE, CALLED_STATION_ID, CALLING_STATION_ID, NAS_IDENTIFIER = 18, 30, 31, 32
PROXY_STATE, ACCT_STATUS_TYPE, ACCT_SESSION_ID, CHAP_CHALLENGE = 33, 40, 44, 60
MESSAGE_AUTHENTICATOR, VENDOR_SPECIFIC, EVENT_TIMESTAMP = 80, 26, 55
SESSION_TIMEOUT, IDLE_TIMEOUT, ACCT_INTERIM_INTERVAL = 27, 28, 85
MICROSOFT, WISPR, MIKROTIK = 311, 14122, 14988
MS_CHAP_CHALLENGE, MS_CHAP2_RESPONSE, MS_CHAP_RESPONSE = 11, 25, 1
WISPR_LOCATION_NAME = 2


def vsa(vendor: int, vtype: int, value: bytes) -> bytes:
    return struct.pack("!IBB", vendor, vtype, len(value) + 2) + value


def u32(n: int) -> bytes:
    return struct.pack("!I", n)


def encrypt_password(password: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """RFC 2865 5.2 (password padded with NULs to a multiple of 16; empty -> 16)."""
    padded = password + b"\0" * (-len(password) % 16 or (16 if not password else 0))
    out, last = b"", authenticator
    for i in range(0, len(padded), 16):
        block = bytes(a ^ b for a, b in zip(padded[i:i + 16], hashlib.md5(secret + last).digest(), strict=True))
        out += block
        last = block
    return out


def encode(code: int, ident: int, secret: bytes, attrs, *,
           message_authenticator: bool = False, authenticator: bytes | None = None) -> bytes:
    """``attrs``: a list, or a function (ident, request authenticator) -> list (CHAP)."""
    if authenticator is None:
        authenticator = os.urandom(16) if code == ACCESS_REQUEST else b"\0" * 16
    if callable(attrs):
        attrs = attrs(ident, authenticator)
    body = b""
    for atype, value in attrs:
        if atype == USER_PASSWORD and code == ACCESS_REQUEST:
            value = encrypt_password(value, secret, authenticator)
        body += struct.pack("!BB", atype, len(value) + 2) + value
    if message_authenticator:
        body += struct.pack("!BB", MESSAGE_AUTHENTICATOR, 18) + b"\0" * 16
    length = 20 + len(body)
    packet = struct.pack("!BBH", code, ident, length) + authenticator + body
    if message_authenticator:
        mac = hmac.new(secret, packet, hashlib.md5).digest()
        packet = packet[:-16] + mac
    if code == ACCOUNTING_REQUEST:
        authenticator = hashlib.md5(packet + secret).digest()
        packet = packet[:4] + authenticator + packet[20:]
    return packet


def decode_attrs(data: bytes) -> list[tuple[int, bytes]]:
    attrs, i = [], 20
    while i + 2 <= len(data):
        atype, alen = data[i], data[i + 1]
        if alen < 2:
            break
        attrs.append((atype, data[i + 2:i + alen]))
        i += alen
    return attrs


def send(port: int, code: int, secret: str, attrs: list[tuple[int, bytes]], *,
         source: str = "127.0.0.1", timeout_s: float = 2.0, tries: int = 2,
         message_authenticator: bool | None = None,
         server: str = "127.0.0.1") -> tuple[str | None, list[tuple[int, bytes]]]:
    """One request to ``server:port`` (retransmitted once, same packet, after
    ``timeout_s``); the answer. An Access-Request carries a Message-Authenticator
    unless told otherwise (NAS require one by default: BlastRADIUS)."""
    if message_authenticator is None:
        message_authenticator = code == ACCESS_REQUEST
    ident = os.urandom(1)[0]
    packet = encode(code, ident, secret.encode(), attrs, message_authenticator=message_authenticator)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(timeout_s)
        for _ in range(tries):
            s.sendto(packet, (server, port))
            try:
                while True:
                    data, _addr = s.recvfrom(65535)
                    if len(data) >= 20 and data[1] == ident:
                        return CODES.get(data[0], str(data[0])), decode_attrs(data)
            except TimeoutError:
                continue
    return None, []


def values(reply: list[tuple[int, bytes]], atype: int) -> list[bytes]:
    return [v for t, v in reply if t == atype]
