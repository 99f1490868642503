"""A bounded random Accounting-Request fuzz from a known NAS (issue 14 point 2).

Well-formed Accounting-Requests with random values: bytes that are not UTF-8
and NULs in any string attribute (listed ones, vendor ones the module never
reads), repeated attributes, random counters and status types. Must hold:
every one answered (an unanswered one is retransmitted by the NAS for ever);
and while the bytes that are not UTF-8 are in the attributes the site looks
at on every request (raddb/policy.d/wificore, wificore_view: User-Name,
Calling-/Called-Station-Id, NAS-Identifier, Acct-Session-Id,
WISPr-Location-Name), rlm_python3 never fails to hand one over (no
"mod_populate_vps failed" in radiusd's log). Elsewhere (any other string
attribute of any vendor) the call fails once, logged, and the site's
fallback re-encodes: still answered.
"""

from __future__ import annotations

import os
import random
import time

import pytest

from tests import rawradius as R
from tests.conftest import TENANT_A

PER_SEED = 150
SEEDS = ([int(s) for s in os.environ["WIFICORE_FUZZ_SEEDS"].split(",")]
         if os.environ.get("WIFICORE_FUZZ_SEEDS")
         else [20261201, random.randrange(1 << 30), random.randrange(1 << 30)])
WATCHED = [R.USER_NAME, R.CALLED_STATION_ID, R.CALLING_STATION_ID, R.NAS_IDENTIFIER]
OTHER = [77, 87, 50, R.REPLY_MESSAGE]  # Connect-Info, NAS-Port-Id, Acct-Multi-Session-Id
WATCHED_VSAS = [(R.WISPR, R.WISPR_LOCATION_NAME)]
OTHER_VSAS = [(R.WISPR, 1), (R.MIKROTIK, 8), (R.MIKROTIK, 9), (9, 1), (2011, 26), (4874, 1)]
COUNTERS = [42, 43, 46, 47, 48, 52, 53, 41, 49, 5]  # octets, packets, session time, delay, ...


def text(rng: random.Random) -> bytes:
    return "".join(rng.choice("abcé中-:_ ") for _ in range(rng.randrange(1, 30))).encode()


def junk(rng: random.Random, lo: int = 1) -> bytes:
    n = rng.randrange(lo, 30)
    r = rng.random()
    if r < 0.35:
        return bytes(rng.randrange(256) for _ in range(n))
    if r < 0.5:
        return b"Caf\xe9" * max(1, n // 4)
    if r < 0.65:
        return bytes(rng.randrange(1, 128) for _ in range(n // 2)) + b"\0" + bytes(
            rng.randrange(128, 256) for _ in range(n // 2))
    return "".join(rng.choice("abcé中-:_ ") for _ in range(n)).encode()


def build(rng: random.Random, anywhere: bool) -> list[tuple[int, bytes]]:
    """Junk bytes in the watched attributes; with ``anywhere`` in any string attribute."""
    sid = os.urandom(4).hex().encode() if rng.random() < 0.8 else junk(rng)
    attrs = [(R.ACCT_STATUS_TYPE, R.u32(rng.choice([1, 2, 3, 3, 3, 7, 8, 15, 99]))),
             (R.ACCT_SESSION_ID, sid)]
    if rng.random() < 0.9:
        attrs.insert(0, (R.USER_NAME, f"fuzz-acct-{rng.randrange(50)}".encode()
                         if rng.random() < 0.6 else junk(rng)))
    if rng.random() < 0.1:
        attrs.append(rng.choice(attrs[:2]))  # a repeated attribute (watched: the first only)
    for _ in range(rng.randrange(0, 5)):
        attrs.append((rng.choice(COUNTERS), R.u32(rng.randrange(1 << 32))))
    present = {t for t, _ in attrs}
    for _ in range(rng.randrange(0, 7)):
        r = rng.random()
        if r < 0.4:
            atype = rng.choice(WATCHED)
            if atype not in present:  # a second instance is not looked at (first only)
                attrs.append((atype, junk(rng)))
                present.add(atype)
        elif r < 0.6:
            if "wispr" not in present:
                attrs.append((R.VENDOR_SPECIFIC, R.vsa(*WATCHED_VSAS[0], junk(rng))))
                present.add("wispr")
        elif r < 0.8:
            attrs.append((rng.choice(OTHER), junk(rng) if anywhere else text(rng)))
        else:
            vendor, vtype = rng.choice(OTHER_VSAS)
            attrs.append((R.VENDOR_SPECIFIC, R.vsa(vendor, vtype, junk(rng) if anywhere else text(rng))))
    if rng.random() < 0.5:
        attrs.append((R.EVENT_TIMESTAMP, R.u32(int(time.time()) - rng.randrange(0, 10 ** 6))))
    rng.shuffle(attrs)
    return attrs


def populate_failures(radiusd) -> int:
    return sum(m.logfile.read_text(errors="replace").count("mod_populate_vps failed")
               for m in getattr(radiusd, "members", [radiusd]))


def send_all(radiusd, rng, seed, n, anywhere):
    started = time.monotonic()
    unanswered = []
    for i in range(n):
        attrs = build(rng, anywhere)
        code, _ = R.send(radiusd.acct_port, R.ACCOUNTING_REQUEST, TENANT_A[2], attrs,
                         source=TENANT_A[1], timeout_s=2.0)
        if code != "Accounting-Response":
            unanswered.append((i, attrs))
        assert time.monotonic() - started < 40, f"seed {seed}: too slow, stopped at {i}"
    assert not unanswered, f"seed {seed}: {len(unanswered)} unanswered, first {unanswered[0]}"


@pytest.mark.parametrize("seed", SEEDS)
def test_accounting_fuzz(seed, radiusd):
    rng = random.Random(seed)
    before = populate_failures(radiusd)
    send_all(radiusd, rng, seed, PER_SEED, anywhere=False)
    assert populate_failures(radiusd) == before, f"seed {seed}: mod_populate_vps failed in the log"
    send_all(radiusd, rng, seed, PER_SEED // 3, anywhere=True)
