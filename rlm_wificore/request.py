"""The request as radiusd and its C modules see it.

rlm_python3 hands a request over as a tuple of ``(name, value)`` string
pairs, repeated attributes as several pairs. radiusd, rlm_pap, rlm_chap and
rlm_mschap use the FIRST of a repeated attribute, so the module does too
(``dict(p)`` would keep the last): :func:`view` builds the first-wins dict in
C (``dict(reversed(p))``) and only looks further when the lengths differ.

Values rlm_python3 cannot hand over as text -- bytes that are not UTF-8, a
NUL inside a string (it is cut there) -- arrive re-encoded by the virtual
server (raddb/policy.d/wificore) as ``WiFiCore-Raw = "Name=<hex>"``, the
original removed. :func:`view` puts them back under their own name in the
:func:`escape_bytes` form, and names them in ``req[ESCAPED]``, so that no
check ever compares such a value with a stored one.

:func:`access_problem` / :func:`accounting_problem` are the checks that
need the whole request: a repeated attribute where two make no sense, two
authentication methods, malformed CHAP / MS-CHAP values. Pure functions, no
I/O.
"""

from __future__ import annotations

#: Keys of the view that are not attributes (no attribute name has a space).
DUPLICATES = "wificore duplicates"  # names sent more than once, comma-separated
ESCAPED = "wificore escaped"        # names whose value came as WiFiCore-Raw, comma-separated
RAW = "WiFiCore-Raw"
DROPPED = "WiFiCore-Dropped"        # a WiFiCore-Raw name: other attributes were dropped

#: One instance at most in an Access-Request: the identity, the credentials and
#: the attributes the policy reads.
SINGLE_ACCESS = frozenset((
    "User-Name", "User-Password", "CHAP-Password", "CHAP-Challenge", "MS-CHAP-Challenge",
    "MS-CHAP-Response", "MS-CHAP2-Response", "Calling-Station-Id", "Service-Type",
))
#: One instance at most in an Accounting-Request: what the record is made of.
SINGLE_ACCOUNTING = frozenset((
    "User-Name", "Acct-Status-Type", "Acct-Session-Id", "Acct-Multi-Session-Id",
    "Acct-Unique-Session-Id", "Framed-IP-Address", "Acct-Session-Time", "Acct-Delay-Time",
    "Acct-Input-Octets", "Acct-Output-Octets", "Acct-Input-Gigawords", "Acct-Output-Gigawords",
    "Acct-Input-Packets", "Acct-Output-Packets", "Acct-Terminate-Cause", "Event-Timestamp",
    "Calling-Station-Id", "NAS-Port",
))
#: Attributes that cannot be right unless they are UTF-8 text without a NUL (what
#: PostgreSQL stores for a username or password): such a request is rejected.
#: Calling-Station-Id is decided by the policy (a MAC binding never matches it).
IDENTITY = ("User-Name", "User-Password")
METHODS = ("User-Password", "CHAP-Password", "MS-CHAP-Response", "MS-CHAP2-Response")



def escape_bytes(raw: bytes) -> str:
    """Bytes -> text, lossless: UTF-8 as it is, except that every byte that is not
    UTF-8 (and every NUL) is written ``\\xNN`` and every backslash ``\\\\``. Only
    used for values that were not UTF-8 text, so ordinary values are unchanged."""
    text = raw.decode("utf-8", "surrogateescape")
    out = []
    for ch in text:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:
            out.append(f"\\x{o - 0xDC00:02x}")
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\0":
            out.append("\\x00")
        else:
            out.append(ch)
    return "".join(out)


def unescape_bytes(text: str) -> bytes:
    """The inverse of :func:`escape_bytes`. A stored field is cut at 253 characters
    (records.MAX_FIELD): an escape cut there is left out."""
    out = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and text[i + 1:i + 2] == "\\":
            out += b"\\"
            i += 2
        elif ch == "\\" and text[i + 1:i + 2] == "x":
            digits = text[i + 2:i + 4]
            if len(digits) < 2:
                break
            out.append(int(digits, 16))
            i += 4
        else:
            out += ch.encode("utf-8")
            i += 1
    return bytes(out)


def view(p) -> dict[str, str]:
    """The request as a dict of the FIRST value of each attribute (as radiusd sees
    it), with ``DUPLICATES`` and ``ESCAPED`` set when there is anything to say."""
    if not p:
        return {}
    req = dict(reversed(p))
    if len(req) == len(p) and RAW not in req:
        return req  # the normal path: each attribute once, all of it UTF-8
    seen: set[str] = set()
    dup: set[str] = set()
    raws = []
    for name, value in p:
        if name == RAW:
            raws.append(value)
        elif name in seen:
            dup.add(name)
        else:
            seen.add(name)
    escaped: set[str] = set()
    for item in raws:
        name, _, hexed = item.partition("=")
        if name == DROPPED:
            escaped.add(DROPPED)
            continue
        try:
            value = escape_bytes(bytes.fromhex(hexed))
        except ValueError:
            value = "\\x?"  # not produced by the policy; never equal to a stored value
        if name in escaped or name in seen:
            dup.add(name)
        if name not in escaped and name not in seen:
            req[name] = value
        escaped.add(name)
    req.pop(RAW, None)
    if dup:
        req[DUPLICATES] = ",".join(sorted(dup))
    if escaped:
        req[ESCAPED] = ",".join(sorted(escaped))
    return req


def _octets(req: dict[str, str], name: str) -> bytes | None:
    """An octets attribute (rlm_python3 prints it as 0x…) as bytes; None if absent."""
    value = req.get(name)
    if value is None:
        return None
    if value[:2] != "0x":
        return b"\0" * 1000  # not octets: malformed whatever its length
    try:
        return bytes.fromhex(value[2:])
    except ValueError:
        return b"\0" * 1000


#: The MS-CHAP responses: (name, its Flags byte, what that means, the challenge's size).
MSCHAP = (("MS-CHAP2-Response", 0, "0", 16), ("MS-CHAP-Response", 1, "1 (NT response)", 8))


def access_problem(req: dict[str, str]) -> tuple[str, str] | None:
    """(reason, detail) when an Access-Request cannot be decided as sent; None if fine.

    Reasons: ``duplicate_attribute`` (an attribute of SINGLE_ACCESS twice),
    ``bad_encoding`` (an identity or credential that is not UTF-8 or holds a NUL
    or a control character), ``two_methods`` (more than one of User-Password,
    CHAP-Password, MS-CHAP-Response, MS-CHAP2-Response), ``malformed_credentials``
    (a CHAP / MS-CHAP value of the wrong size or form)."""
    # Every request passes here: nothing is allocated unless something is wrong.
    dup = req.get(DUPLICATES)
    if dup:
        bad = sorted(SINGLE_ACCESS.intersection(dup.split(",")))
        if bad:
            return "duplicate_attribute", ",".join(bad)
    escaped = req.get(ESCAPED)
    if escaped:
        names = escaped.split(",")
        bad = [n for n in IDENTITY if n in names]
        if bad:
            return "bad_encoding", ",".join(bad)
    if (("User-Password" in req) + ("CHAP-Password" in req) + ("MS-CHAP-Response" in req)
            + ("MS-CHAP2-Response" in req)) > 1:
        return "two_methods", ",".join(m for m in METHODS if m in req)
    if "CHAP-Password" in req:
        chap = _octets(req, "CHAP-Password") or b""
        if len(chap) != 17:
            return "malformed_credentials", "CHAP-Password is not 17 bytes"
        challenge = _octets(req, "CHAP-Challenge")
        if challenge is not None and not 1 <= len(challenge) <= 253:
            return "malformed_credentials", "CHAP-Challenge is empty"
    elif "CHAP-Challenge" in req:
        return "malformed_credentials", "CHAP-Challenge without CHAP-Password"
    for name, flags, meaning, challenge_size in MSCHAP:  # at most one: two_methods above
        if name in req:
            response = _octets(req, name) or b""
            if len(response) != 50:
                return "malformed_credentials", f"{name} is not 50 bytes"
            if response[1] != flags:
                return "malformed_credentials", f"{name} Flags is not {meaning}"
            challenge = _octets(req, "MS-CHAP-Challenge")
            if challenge is None or len(challenge) != challenge_size:
                return "malformed_credentials", f"MS-CHAP-Challenge is not {challenge_size} bytes"
    return None


def accounting_problem(req: dict[str, str]) -> str | None:
    """Why an Accounting-Request cannot be booked as sent (the record is kept as
    invalid, and answered); None if fine."""
    dup = req.get(DUPLICATES)
    if dup:
        bad = sorted(SINGLE_ACCOUNTING.intersection(dup.split(",")))
        if bad:
            return "repeated " + ",".join(bad)
    return None
