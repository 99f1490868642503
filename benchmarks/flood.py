"""noisy_neighbour["flood"]: a valid NAS's logins while junk arrives from unknown addresses.

A valid NAS (one sender tenant's bench NAS) sends warm PAP logins at a fixed rate
(``rate``, 2,000/s by default) for ``duration_s``: first alone (the baseline), then
while a separate process sends ``junk_rate`` Access-Requests per second (20,000 by
default) from random unknown loopback addresses: a pool of sockets, each bound to
its own random 127.x.y.z address, a tenth of them bound anew every second. radiusd
sends every junk packet to its dynamic-client lookup (in the thread that reads the
socket), so each costs a call into the module.

Returns ``{"answered_ratio", "p99_ratio", ...}``: the flooded run's answered rate and
p99 divided by the baseline's, same run, same server. Target: answered_ratio >= 0.95.
Called from benchmarks/compare.py (``Bench.noisy_flood``); on its own::

    .venv/bin/python -m benchmarks.flood --help
"""

from __future__ import annotations

import multiprocessing
import os
import random
import socket
import struct
import time
from typing import Any

JUNK_SOCKETS = 1000
#: Sockets bound to a new random address per second (a tenth of the pool).
REBIND_PER_S = 100
BURST_S = 0.005


def _junk_address() -> str:
    # 127.10.0.0 and up: clear of the bench NAS addresses (127.0.x.y, 127.1.x.y).
    return f"127.{random.randrange(10, 255)}.{random.randrange(256)}.{random.randrange(1, 255)}"


def _bound() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((_junk_address(), 0))
    s.setblocking(False)
    return s


def junk_packet() -> bytes:
    user = b"junk-user"
    attrs = bytes([1, 2 + len(user)]) + user
    return struct.pack("!BBH", 1, 0, 20 + len(attrs)) + os.urandom(16) + attrs


def send_junk(port: int, rate: float, duration_s: float, sent: Any) -> None:
    """``rate`` junk Access-Requests per second to 127.0.0.1:``port`` for ``duration_s``."""
    pkt = bytearray(junk_packet())
    socks = [_bound() for _ in range(JUNK_SOCKETS)]
    per_burst = max(1, int(rate * BURST_S))
    rebind_per_burst = max(1, int(REBIND_PER_S * BURST_S)) if REBIND_PER_S else 0
    dest = ("127.0.0.1", port)
    n, i = 0, 0
    t0 = time.monotonic()
    next_burst = t0
    try:
        while time.monotonic() - t0 < duration_s:
            for _ in range(per_burst):
                pkt[1] = n & 0xFF
                try:
                    socks[i].sendto(pkt, dest)
                    n += 1
                except (BlockingIOError, OSError):
                    pass
                i = (i + 1) % len(socks)
            for _ in range(rebind_per_burst):
                k = random.randrange(len(socks))
                socks[k].close()
                socks[k] = _bound()
            next_burst += BURST_S
            delay = next_burst - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    finally:
        for s in socks:
            s.close()
        sent.value = n


def measure(blast_valid: Any, port: int, *, junk_rate: float = 20_000.0,
            duration_s: float = 10.0) -> dict[str, Any]:
    """``blast_valid(duration_s)`` runs the valid NAS's fixed-rate logins (a merged radload
    result); once alone, once beside the junk sender. The noisy_neighbour["flood"] dict."""
    blast_valid(min(3.0, duration_s))  # warm: every login cached in process
    base = blast_valid(duration_s)
    sent = multiprocessing.Value("q", 0)
    junk = multiprocessing.Process(target=send_junk, args=(port, junk_rate, duration_s + 1.0, sent),
                                   daemon=True)
    junk.start()
    try:
        time.sleep(0.5)  # the flood is on before the measured logins start
        flooded = blast_valid(duration_s)
    finally:
        junk.join(timeout=duration_s + 30)
        if junk.is_alive():
            junk.terminate()
            junk.join(5)

    def rate(r: dict[str, Any]) -> float:
        return r.get("received", 0) / max(r.get("duration_s") or duration_s, 1e-9)
    answered = rate(flooded) / rate(base) if rate(base) else None
    p99 = (flooded["p99_ms"] / base["p99_ms"]
           if flooded.get("p99_ms") and base.get("p99_ms") else None)
    return {
        "answered_ratio": round(answered, 3) if answered is not None else None,
        "p99_ratio": round(p99, 2) if p99 is not None else None,
        "baseline": {k: base.get(k) for k in ("rps", "p50_ms", "p99_ms", "sent", "received", "lost")},
        "flooded": {k: flooded.get(k) for k in ("rps", "p50_ms", "p99_ms", "sent", "received",
                                                "lost")},
        "junk_sent_per_s": round(sent.value / (duration_s + 1.0)),
        "target_rate": None,
    }
