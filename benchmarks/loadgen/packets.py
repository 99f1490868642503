"""Prepare RADIUS request packets for radload from radclient-format files.

Input format (as read by radclient / radperf): one ``Attribute = value``
per line, packets separated by a blank line, ``#`` starts a comment line.
Several attributes may share a line, separated by commas. Values are
bare tokens (numbers, enumeration names, IPv4 addresses, ``0x``-hex) or
double/single quoted strings with ``\\"``, ``\\\\``, ``\\n``, ``\\t`` escapes.

Pseudo-attributes:

* ``Packet-Type = Access-Request | Accounting-Request`` (default
  Access-Request).
* ``User-Password = "clear"`` is encrypted with the packet's Request
  Authenticator (RFC 2865 section 5.2).
* ``CHAP-Password = "clear"``: like radclient, the cleartext is turned into
  a CHAP-Password (RFC 2865 section 5.3) with a random CHAP Ident, over the
  CHAP-Challenge attribute if the packet has one, else over the Request
  Authenticator. A ``0x``-hex value of 17 octets is sent unchanged.
* ``MS-CHAP-Password = "clear"`` becomes MS-CHAP-Challenge (16 random
  octets, unless the packet gives one) and MS-CHAP2-Response (RFC 2759,
  RFC 2548), computed for the packet's User-Name.
* ``Packet-Src-IP-Address``, ``Packet-Dst-IP-Address``,
  ``Packet-Src-Port``, ``Packet-Dst-Port`` and ``Response-Packet-Type``
  are accepted and ignored (radload takes the target and the source
  address from its command line).

Template expansion: ``%{n}`` in a value is replaced by the packet number
n, and ``%{n:SPEC}`` by ``format(n, SPEC)`` (e.g. ``%{n:012x}``). With
``expand=N`` every template yields N packets, n = 0..N-1; the output is
ordered n-major (all templates for n=0, then all for n=1, ...), so a
file that mixes PAP, CHAP and accounting keeps that mix throughout. Every
Access-Request gets its own random Request Authenticator, so all
expanded packets are distinct.

Output is the RLD1 file read by radload.c: the magic ``RLD1``, then per
packet one octet kind (1 = access, 2 = accounting), the packet length as
two octets big endian, and the packet. Packets carry Id 0; radload sets
the Id when sending and re-signs Accounting-Requests. Message-Authenticator
is refused because it covers the Id.

CLI::

    python -m benchmarks.loadgen.packets INPUT.txt -o OUT.rld --secret S [--expand N]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import struct
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pyrad import packet as rpacket
from pyrad.dictionary import Dictionary

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from benchmarks.loadgen import mschap  # noqa: E402
else:
    from . import mschap

__all__ = [
    "DEFAULT_DICTIONARY",
    "KIND_ACCESS",
    "KIND_ACCOUNTING",
    "Template",
    "PacketFileError",
    "load_dictionary",
    "parse_radclient",
    "parse_radclient_file",
    "substitute",
    "encode_template",
    "encode_all",
    "write_rld1",
    "read_rld1",
    "prepare",
    "main",
]

DEFAULT_DICTIONARY = Path(__file__).resolve().parent / "dictionary"
KIND_ACCESS = 1
KIND_ACCOUNTING = 2
MAGIC = b"RLD1"

_PACKET_TYPES = {
    "access-request": KIND_ACCESS,
    "1": KIND_ACCESS,
    "accounting-request": KIND_ACCOUNTING,
    "4": KIND_ACCOUNTING,
}
_IGNORED = {
    "packet-src-ip-address",
    "packet-dst-ip-address",
    "packet-src-port",
    "packet-dst-port",
    "response-packet-type",
}
_SUBST = re.compile(r"%\{n(?::([^}]*))?\}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_OPERATORS = (":=", "+=", "==", "=")


class PacketFileError(ValueError):
    """A radclient-format file cannot be parsed or encoded."""


@dataclass
class Template:
    """One packet of a radclient-format file, values still unsubstituted."""

    kind: int
    attributes: list[tuple[str, str]] = field(default_factory=list)
    line: int = 0

    def get(self, name: str) -> str | None:
        """The first value of attribute name (case-insensitive), or None."""
        low = name.lower()
        for attr, value in self.attributes:
            if attr.lower() == low:
                return value
        return None


# ------------------------------------------------------------------ parsing


def _read_value(text: str, pos: int, lineno: int) -> tuple[str, int]:
    """Read one value starting at pos; returns (value, position after it)."""
    if pos < len(text) and text[pos] in "\"'":
        quote = text[pos]
        out = []
        i = pos + 1
        escapes = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}
        while i < len(text):
            ch = text[i]
            if ch == "\\" and i + 1 < len(text):
                nxt = text[i + 1]
                out.append(escapes.get(nxt, "\\" + nxt))
                i += 2
                continue
            if ch == quote:
                return "".join(out), i + 1
            out.append(ch)
            i += 1
        raise PacketFileError(f"line {lineno}: unterminated quoted value")
    end = pos
    while end < len(text) and text[end] not in ",":
        end += 1
    value = text[pos:end].strip()
    if not value:
        raise PacketFileError(f"line {lineno}: missing value")
    return value, end


def _parse_line(text: str, lineno: int) -> list[tuple[str, str]]:
    """Parse 'A = v [, B = w ...]' into (name, value) pairs."""
    pairs = []
    pos = 0
    while True:
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        m = _NAME.match(text, pos)
        if not m:
            raise PacketFileError(f"line {lineno}: expected an attribute name: {text!r}")
        name = m.group(0)
        pos = m.end()
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        for op in _OPERATORS:
            if text.startswith(op, pos):
                pos += len(op)
                break
        else:
            raise PacketFileError(f"line {lineno}: expected '=' after {name}")
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        value, pos = _read_value(text, pos, lineno)
        pairs.append((name, value))
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos >= len(text):
            return pairs
        if text[pos] != ",":
            raise PacketFileError(f"line {lineno}: unexpected text after value: {text[pos:]!r}")
        pos += 1
        if not text[pos:].strip():
            return pairs


def parse_radclient(text: str) -> list[Template]:
    """Parse radclient-format text into packet templates, in file order."""
    templates: list[Template] = []
    current: Template | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            current = None
            continue
        if line.startswith("#"):
            continue
        if current is None:
            current = Template(kind=KIND_ACCESS, line=lineno)
            templates.append(current)
        for name, value in _parse_line(line, lineno):
            low = name.lower()
            if low == "packet-type":
                kind = _PACKET_TYPES.get(value.lower())
                if kind is None:
                    raise PacketFileError(
                        f"line {lineno}: Packet-Type must be Access-Request or "
                        f"Accounting-Request, not {value!r}")
                current.kind = kind
            elif low in _IGNORED:
                continue
            else:
                current.attributes.append((name, value))
    return templates


def parse_radclient_file(path: str | os.PathLike[str]) -> list[Template]:
    """Parse a radclient-format file into packet templates."""
    return parse_radclient(Path(path).read_text(encoding="utf-8"))


# ----------------------------------------------------------------- encoding


def load_dictionary(path: str | os.PathLike[str] | None = None) -> Dictionary:
    """Load a pyrad dictionary, by default the one shipped beside this module."""
    return Dictionary(str(path or DEFAULT_DICTIONARY))


def substitute(value: str, n: int) -> str:
    """Replace %{n} and %{n:SPEC} in value with the packet number n."""
    if "%{" not in value:
        return value
    return _SUBST.sub(lambda m: format(n, m.group(1) or ""), value)


def _attr_def(dictionary: Dictionary, name: str):
    """The dictionary entry of name, matched case-insensitively."""
    try:
        return dictionary.attributes[name]
    except KeyError:
        pass
    low = name.lower()
    for key, attr in dictionary.attributes.items():
        if key.lower() == low:
            return attr
    raise PacketFileError(f"unknown attribute {name!r} (not in the dictionary)")


def _convert(attr, value: str):
    """Convert a textual value to what pyrad expects for the attribute's type."""
    t = attr.type
    if t == "octets":
        if value[:2].lower() == "0x":
            try:
                return bytes.fromhex(value[2:])
            except ValueError as exc:
                raise PacketFileError(f"{attr.name}: bad hex value {value!r}") from exc
        return value.encode("utf-8")
    if t in ("integer", "signed", "short", "byte", "integer64", "date"):
        if attr.values.HasForward(value):
            return value
        if t == "date" and value.lower() == "now":
            return int(time.time())
        try:
            return int(value, 0)
        except ValueError as exc:
            raise PacketFileError(f"{attr.name}: {value!r} is not a number "
                                  f"or a known value name") from exc
    return value


def _chap_password(ident: int, password: bytes, challenge: bytes) -> bytes:
    return bytes((ident,)) + hashlib.md5(bytes((ident,)) + password + challenge).digest()


def encode_template(template: Template, secret: bytes, dictionary: Dictionary,
                    n: int = 0, rng=os.urandom) -> bytes:
    """Encode one template (with %{n} substituted) into a RADIUS packet with Id 0.

    Access-Request gets a random Request Authenticator from rng(16), with
    User-Password, CHAP-Password and MS-CHAP-Password computed from it;
    Accounting-Request is signed per RFC 2866.
    """
    values = [(name, substitute(value, n)) for name, value in template.attributes]
    if template.kind == KIND_ACCESS:
        pkt = rpacket.AuthPacket(code=rpacket.AccessRequest, id=0, secret=secret,
                                 authenticator=rng(16), dict=dictionary)
    else:
        pkt = rpacket.AcctPacket(code=rpacket.AccountingRequest, id=0, secret=secret,
                                 dict=dictionary)
    lows = {name.lower(): value for name, value in values}
    for name, value in values:
        low = name.lower()
        if low == "message-authenticator":
            raise PacketFileError(
                f"line {template.line}: Message-Authenticator is not supported "
                "(it covers the Id, which radload assigns when sending)")
        if low in ("user-password", "chap-password", "ms-chap-password") \
                and template.kind != KIND_ACCESS:
            raise PacketFileError(f"line {template.line}: {name} in an Accounting-Request")
        if low == "user-password":
            pkt.AddAttribute("User-Password", pkt.PwCrypt(value))
        elif low == "chap-password":
            if value[:2].lower() == "0x" and len(value) == 2 + 34:
                chap = bytes.fromhex(value[2:])
            else:
                challenge_text = lows.get("chap-challenge")
                if challenge_text is None:
                    challenge = pkt.authenticator
                else:
                    challenge = _convert(_attr_def(dictionary, "CHAP-Challenge"), challenge_text)
                chap = _chap_password(rng(1)[0], value.encode("utf-8"), challenge)
            pkt.AddAttribute("CHAP-Password", chap)
        elif low == "ms-chap-password":
            user = lows.get("user-name")
            if user is None:
                raise PacketFileError(f"line {template.line}: MS-CHAP-Password needs a User-Name")
            given = lows.get("ms-chap-challenge")
            if given is None:
                auth_challenge = rng(16)
                pkt.AddAttribute("MS-CHAP-Challenge", auth_challenge)
            else:
                auth_challenge = _convert(_attr_def(dictionary, "MS-CHAP-Challenge"), given)
            peer = rng(16)
            nt = mschap.generate_nt_response(auth_challenge, peer, user, value)
            pkt.AddAttribute("MS-CHAP2-Response", mschap.ms_chap2_response(rng(1)[0], peer, nt))
        else:
            attr = _attr_def(dictionary, name)
            try:
                pkt.AddAttribute(attr.name, _convert(attr, value))
            except (TypeError, ValueError) as exc:
                raise PacketFileError(f"line {template.line}: {name} = {value!r}: {exc}") from exc
    try:
        return pkt.RequestPacket()
    except ValueError as exc:
        raise PacketFileError(f"line {template.line}: {exc}") from exc


def encode_all(templates: list[Template], secret: bytes, dictionary: Dictionary,
               expand: int = 1) -> Iterator[tuple[int, bytes]]:
    """Yield (kind, packet) for every template and n = 0..expand-1, n-major."""
    if expand < 1:
        raise ValueError("expand must be at least 1")
    for n in range(expand):
        for template in templates:
            yield template.kind, encode_template(template, secret, dictionary, n)


# --------------------------------------------------------------------- RLD1


def write_rld1(out: BinaryIO, packets: Iterable[tuple[int, bytes]]) -> int:
    """Write packets in the RLD1 format to a binary stream; returns their number."""
    out.write(MAGIC)
    count = 0
    for kind, data in packets:
        if kind not in (KIND_ACCESS, KIND_ACCOUNTING):
            raise ValueError(f"bad packet kind {kind}")
        if not 20 <= len(data) <= 4096:
            raise ValueError(f"bad packet length {len(data)}")
        out.write(struct.pack("!BH", kind, len(data)))
        out.write(data)
        count += 1
    return count


def read_rld1(path: str | os.PathLike[str]) -> list[tuple[int, bytes]]:
    """Read an RLD1 file back into (kind, packet) pairs."""
    data = Path(path).read_bytes()
    if data[:4] != MAGIC:
        raise ValueError("not an RLD1 file")
    out = []
    pos = 4
    while pos < len(data):
        if pos + 3 > len(data):
            raise ValueError("truncated RLD1 record header")
        kind, length = struct.unpack_from("!BH", data, pos)
        pos += 3
        if pos + length > len(data):
            raise ValueError("truncated RLD1 record")
        out.append((kind, data[pos:pos + length]))
        pos += length
    return out


def prepare(source: str | os.PathLike[str], output: str | os.PathLike[str],
            secret: str | bytes, expand: int = 1,
            dictionary: str | os.PathLike[str] | None = None) -> dict[str, int]:
    """Encode a radclient-format file into an RLD1 file; returns the packet counts."""
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    templates = parse_radclient_file(source)
    if not templates:
        raise PacketFileError(f"{source}: no packets")
    d = load_dictionary(dictionary)
    counts = {"packets": 0, "access": 0, "accounting": 0}

    def counted() -> Iterator[tuple[int, bytes]]:
        for kind, data in encode_all(templates, secret, d, expand):
            counts["access" if kind == KIND_ACCESS else "accounting"] += 1
            yield kind, data

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    with open(tmp, "wb") as fh:
        counts["packets"] = write_rld1(fh, counted())
    os.replace(tmp, output)
    return counts


def main(argv: list[str] | None = None) -> int:
    """CLI: encode a radclient-format file into an RLD1 file."""
    ap = argparse.ArgumentParser(description="Encode radclient-format packets for radload (RLD1).")
    ap.add_argument("input", help="radclient-format packet file")
    ap.add_argument("-o", "--output", required=True, help="RLD1 file to write")
    ap.add_argument("--secret", required=True, help="RADIUS shared secret")
    ap.add_argument("--expand", type=int, default=1,
                    help="packets per template, %%{n} = 0..N-1 (default 1)")
    ap.add_argument("--dictionary", help="pyrad dictionary (default: the shipped one)")
    args = ap.parse_args(argv)
    try:
        counts = prepare(args.input, args.output, args.secret, args.expand, args.dictionary)
    except (PacketFileError, OSError, ValueError) as exc:
        print(f"packets: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {counts['packets']} packets ({counts['access']} access, "
          f"{counts['accounting']} accounting) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
