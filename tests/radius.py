"""Send RADIUS packets with FreeRADIUS's own radclient and read the answers."""

from __future__ import annotations

import dataclasses
import re
import subprocess

_RECEIVED = re.compile(r"^Received (\S+) Id \d+ from", re.M)
_PAIR = re.compile(r"^\s+([A-Za-z0-9-]+) = (.*)$")


@dataclasses.dataclass
class Answer:
    code: str | None  # Access-Accept, Access-Reject, Accounting-Response, None (no answer)
    pairs: dict[str, list[str]]
    output: str

    def get(self, name: str) -> str | None:
        values = self.pairs.get(name)
        return values[0] if values else None

    @property
    def accepted(self) -> bool:
        return self.code == "Access-Accept"


def _quote(value: str) -> str:
    if value.startswith("0x") or re.fullmatch(r"-?\d+", value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_packet(attrs: dict[str, str | int]) -> str:
    return "\n".join(f"{k} = {_quote(str(v))}" for k, v in attrs.items()) + "\n"


def send(port: int, command: str, secret: str, attrs: dict[str, str | int], *,
         source: str = "127.0.0.1", timeout_s: float = 2.0, retries: int = 1) -> Answer:
    """One packet from ``source`` to 127.0.0.1:``port``; the parsed answer."""
    packet = dict(attrs)
    packet.setdefault("Packet-Src-IP-Address", source)
    if command == "auth":  # signed, as current NAS firmware does (BlastRADIUS); radclient computes it
        packet.setdefault("Message-Authenticator", "0x00")
    proc = subprocess.run(
        ["radclient", "-x", "-r", str(retries), "-t", str(timeout_s), f"127.0.0.1:{port}", command, secret],
        input=format_packet(packet), capture_output=True, text=True, timeout=30)
    out = proc.stdout + proc.stderr
    received = list(_RECEIVED.finditer(out))
    m = received[-1] if received else None  # the last answer (after any retransmissions)
    if m is None:
        return Answer(None, {}, out)
    pairs: dict[str, list[str]] = {}
    for line in out[m.end():].splitlines()[1:]:
        pm = _PAIR.match(line)
        if not pm:
            break
        pairs.setdefault(pm.group(1), []).append(pm.group(2).strip('"'))
    return Answer(m.group(1), pairs, out)


PYRAD_DICTIONARY = (__import__("pathlib").Path(__file__).resolve().parent.parent
                    / "benchmarks" / "loadgen" / "dictionary")


def send_pyrad(port: int, secret: str, attrs: list[tuple[str, object]], *, source: str = "127.0.0.1",
               timeout_s: float = 2.0) -> Answer:
    """An Access-Request built by pyrad, for values radclient cannot express (raw bytes)."""
    from pyrad import packet
    from pyrad.client import Client, Timeout
    from pyrad.dictionary import Dictionary

    client = Client(server="127.0.0.1", authport=port, secret=secret.encode(),
                    dict=Dictionary(str(PYRAD_DICTIONARY)))
    client.bind((source, 0))
    client.timeout = timeout_s
    client.retries = 1
    req = client.CreateAuthPacket(code=packet.AccessRequest)
    req.add_message_authenticator()  # as current NAS firmware does (BlastRADIUS)
    for name, value in attrs:
        if name == "User-Password":
            value = req.PwCrypt(value)
        req.AddAttribute(name, value)
    try:
        reply = client.SendPacket(req)
    except Timeout:
        return Answer(None, {}, "timeout")
    finally:
        client._CloseSocket()
    code = {packet.AccessAccept: "Access-Accept", packet.AccessReject: "Access-Reject"}.get(reply.code)
    pairs = {}
    for key in reply.keys():
        name = key if isinstance(key, str) else str(key)
        pairs[name] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in reply[key]]
    return Answer(code, pairs, repr(pairs))
