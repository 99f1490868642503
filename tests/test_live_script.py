"""live.lua on its own, against the real Redis, with the clock chosen by the test:
what Simultaneous-Use reads (the live set) and what Accounting-On/Off clears (the
NAS's set) as a session's records arrive over time."""

from __future__ import annotations

import struct
import uuid

import pytest

from rlm_wificore.background import _LIVE_LUA, SESSION_TTL_S, USAGE_TTL_S
from rlm_wificore.spool import MAX_RECORD
from wificore import wire

T0 = 1_900_000_000.0
INTERIM_S = 60
STALE = 2  # interims
DEADLINE_S = INTERIM_S * STALE + 60
HORIZON_S = 4 * DEADLINE_S
REFRESH_S = min(HORIZON_S / 2, SESSION_TTL_S / 4)  # how often a session's expiries are pushed


def record(status: str, key: str = "s1", user: str = "alice", nas_id: int = 7, t: int = 0) -> bytes:
    fields = {"tenant_id": 1, "nas_id": nas_id, "session_key": key, "acct_session_id": key,
              "username": user, "status": status, "event_ts": T0, "arrival_ts": T0,
              "session_time_s": t, "input_octets": 10 * t, "output_octets": 20 * t, "input_packets": 0,
              "output_packets": 0, "calling_station_id": None, "framed_ip": None, "terminate_cause": None,
              "nas_port": None, "interim_s": INTERIM_S, "record_id": uuid.uuid4().hex}
    if status in ("on", "off"):
        fields.update(session_key="", acct_session_id="", username="")
    payload = wire.pack(wire.KIND_ACCT, fields)
    return struct.pack("<I", len(payload)) + payload


class Live:
    def __init__(self, redis) -> None:
        self.r = redis
        self.p = f"t{uuid.uuid4().hex[:8]}"
        self.script = redis.register_script(_LIVE_LUA)

    def send(self, now: float, *frames: bytes) -> None:
        span = b"".join(frames)
        n, consumed, _ended, corrupt = self.script(args=[self.p, 1, now, STALE, SESSION_TTL_S, USAGE_TTL_S,
                                                         MAX_RECORD, span])
        assert (n, consumed, corrupt) == (len(frames), len(span), 0)

    def live_count(self, now: float, user: str = "alice") -> int:
        return self.r.zcount(f"{self.p}:{{1}}:live:{user}", now, "+inf")

    def nas_members(self, nas_id: int = 7) -> dict[bytes, float]:
        return dict(self.r.zrange(f"{self.p}:{{1}}:naslive:{nas_id}", 0, -1, withscores=True))

    def cleanup(self) -> None:
        keys = list(self.r.scan_iter(match=f"{self.p}:*"))
        if keys:
            self.r.delete(*keys)


@pytest.fixture
def live(redis):
    lv = Live(redis)
    yield lv
    lv.cleanup()


def test_a_session_counts_while_interims_come_and_expires_when_they_stop(live):
    """Counted from the Start; each Interim pushes the deadline; silence ends it on its own."""
    live.send(T0, record("start"))
    assert live.live_count(T0) == 1
    for k in range(1, 6):
        live.send(T0 + k * INTERIM_S, record("interim", t=k * INTERIM_S))
        assert live.live_count(T0 + k * INTERIM_S) == 1
    last = T0 + 5 * INTERIM_S
    assert live.live_count(last + DEADLINE_S - 1) == 1
    assert live.live_count(last + DEADLINE_S + 1) == 0
    # The key outlives the latest deadline, by at most one refresh interval.
    ttl_until = live.r.expiretime(f"{live.p}:{{1}}:live:alice")
    assert last + DEADLINE_S <= ttl_until <= last + DEADLINE_S + REFRESH_S


def test_expiries_are_pushed_at_refresh_times_and_never_fall_behind(live):
    """Interims refresh the keys' expiries only when the session's refresh time is due, yet
    over many refresh intervals the live set never expires before its member's deadline,
    and the session hash and usage counters always carry an expiry."""
    live_key = f"{live.p}:{{1}}:live:alice"
    sess_key, use_key = f"{live.p}:{{1}}:sess:s1", f"{live.p}:{{1}}:use:alice"
    live.send(T0, record("start"))
    steps = int(5 * REFRESH_S / INTERIM_S)
    pushed = 0
    for k in range(1, steps + 1):
        now = T0 + k * INTERIM_S
        before = live.r.expiretime(live_key)
        live.send(now, record("interim", t=k * INTERIM_S))
        after = live.r.expiretime(live_key)
        pushed += after != before
        assert after >= now + DEADLINE_S, k
        assert live.r.ttl(sess_key) > 0 and live.r.ttl(use_key) > 0
    # Pushed about once per refresh interval, not at every Interim.
    assert 3 <= pushed <= steps // 3


def test_usage_counters_created_mid_session_get_an_expiry(live):
    """Counters removed by hand while a session goes on are created again by its next
    Interim, with an expiry, though its refresh time is not due."""
    use_key = f"{live.p}:{{1}}:use:alice"
    live.send(T0, record("start"), record("interim", t=60))
    live.r.delete(use_key)
    live.send(T0 + 120, record("interim", t=120))
    assert live.r.hgetall(use_key) == {b"octets": b"1800", b"time_s": b"60"}
    assert live.r.ttl(use_key) > 0


def test_the_nas_set_is_refreshed_once_per_half_horizon(live):
    """The NAS's set is written at the Start, then only when half its horizon has passed."""
    live.send(T0, record("start"))
    member = b"alice\ns1"
    assert live.nas_members() == {member: T0 + HORIZON_S}
    live.send(T0 + INTERIM_S, record("interim", t=INTERIM_S))
    assert live.nas_members() == {member: T0 + HORIZON_S}  # not rewritten
    later = T0 + HORIZON_S / 2 + 1
    live.send(later, record("interim", t=int(later - T0)))
    assert live.nas_members() == {member: later + HORIZON_S}


def test_accounting_on_clears_the_nas_and_a_session_going_on_is_tracked_again(live):
    """Accounting-On empties the users' live sets of that NAS; a session that still sends
    Interims afterwards is in the NAS's set again at once (not at the next refresh)."""
    live.send(T0, record("start"), record("start", key="s2", user="bob"),
              record("start", key="s3", user="carol", nas_id=8))
    assert live.live_count(T0) == 1 and live.live_count(T0, "bob") == 1
    live.send(T0 + 10, record("on"))
    assert live.live_count(T0 + 10) == 0 and live.live_count(T0 + 10, "bob") == 0
    assert live.live_count(T0 + 10, "carol") == 1  # another NAS
    assert live.nas_members() == {}
    live.send(T0 + 20, record("interim", t=20))
    assert live.live_count(T0 + 20) == 1
    assert list(live.nas_members()) == [b"alice\ns1"]
    live.send(T0 + 30, record("off"))
    assert live.live_count(T0 + 30) == 0


def test_a_stop_is_final(live):
    """After a Stop, a late Interim neither counts the session again nor adds usage."""
    live.send(T0, record("start"), record("interim", t=60), record("stop", t=120))
    assert live.live_count(T0) == 0 and live.nas_members() == {}
    usage = live.r.hgetall(f"{live.p}:{{1}}:use:alice")
    live.send(T0 + 5, record("interim", t=600))
    assert live.live_count(T0 + 5) == 0 and live.nas_members() == {}
    assert live.r.hgetall(f"{live.p}:{{1}}:use:alice") == usage
    assert usage[b"octets"] == b"3600" and usage[b"time_s"] == b"120"


def test_starts_and_stops_of_one_call_are_announced_in_one_message(live):
    """Every radiusd drops its copies of the subscribers whose sessions changed: one message
    per script call, naming each of them; Interims announce nothing."""
    import json
    import time as _time

    pubsub = live.r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"{live.p}:inval")
    try:
        live.send(T0, record("start"), record("start", key="s2", user="bob"),
                  record("interim", t=60), record("stop", key="s2", user="bob", t=60))
        live.send(T0 + 120, record("interim", t=120))
        messages, deadline = [], _time.monotonic() + 5
        while _time.monotonic() < deadline:
            msg = pubsub.get_message(timeout=0.2)
            if msg:
                messages.append(json.loads(msg["data"]))
            elif messages:
                break
        assert messages == [["L", [[1, "alice"], [1, "bob"], [1, "bob"]]]]
    finally:
        pubsub.close()


def test_accounting_on_announces_that_nas_users_only(live):
    """An Accounting-On makes radiusd drop the cached copies of the users of that NAS, not
    of the whole tenant: the announcement names them ('L'), and no 't' message is sent."""
    import json
    import time as _time

    live.send(T0, record("start"), record("start", key="s2", user="bob"),
              record("start", key="s3", user="carol", nas_id=8))
    pubsub = live.r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"{live.p}:inval")
    try:
        live.send(T0 + 10, record("on"))
        messages, deadline = [], _time.monotonic() + 5
        while _time.monotonic() < deadline:
            msg = pubsub.get_message(timeout=0.2)
            if msg:
                messages.append(json.loads(msg["data"]))
            elif messages:
                break
        assert len(messages) == 1 and messages[0][0] == "L", messages
        assert sorted(map(tuple, messages[0][1])) == [(1, "alice"), (1, "bob")]
    finally:
        pubsub.close()
