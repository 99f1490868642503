"""live.lua on its own, against the real Redis, with the clock chosen by the test:
what Simultaneous-Use reads (the subscriber's hash, wificore/livestate.py) and what
Accounting-On/Off ends (the NAS's epoch) as a session's records arrive over time."""

from __future__ import annotations

import json
import struct
import time
import uuid

import msgpack
import pytest

from rlm_wificore.background import _LIVE_LUA, SESSION_TTL_S, USAGE_TTL_S
from rlm_wificore.spool import MAX_RECORD, TAG_SHIFT
from wificore import livestate, wire
from wificore.keys import TAG_ALL, Keys, bucket_of

T0 = 1_900_000_000.0
INTERIM_S = 60
STALE = 2  # interims
DEADLINE_S = INTERIM_S * STALE + 60
HORIZON_S = 4 * DEADLINE_S
REFRESH_S = min(HORIZON_S / 2, SESSION_TTL_S / 4)  # how often a session's expiries are pushed


def record(status: str, key: str = "s1", user: str = "alice", nas_id: int = 7, t: int = 0,
           ev: float | None = None, **extra) -> bytes:
    """A record as radiusd spools it; its event time is T0 + session time unless ``ev``."""
    ev = T0 + t if ev is None else ev
    fields = {"tenant_id": 1, "nas_id": nas_id, "session_key": key, "acct_session_id": key,
              "username": user, "status": status, "event_ts": ev, "arrival_ts": ev,
              "session_time_s": t, "input_octets": 10 * t, "output_octets": 20 * t, "input_packets": 0,
              "output_packets": 0, "calling_station_id": None, "framed_ip": None, "terminate_cause": None,
              "nas_port": None, "interim_s": INTERIM_S, "record_id": uuid.uuid4().hex}
    fields.update(extra)
    if status in ("on", "off"):
        fields.update(session_key="", acct_session_id="", username="")
    payload = wire.pack(wire.KIND_ACCT, fields)
    return struct.pack("<I", len(payload)) + payload


def row_key(key: str = "s1", started: float = T0) -> str:
    """The key live.lua gives a session's generation: its row in PostgreSQL."""
    return f"{key}:{int(started):x}"


class Live:
    def __init__(self, redis) -> None:
        self.r = redis
        self.p = f"t{uuid.uuid4().hex[:8]}"
        self.k = Keys(self.p, 1)  # one bucket: every record's keys in bucket 0
        self.script = redis.register_script(_LIVE_LUA)

    def send(self, now: float, *frames: bytes, roles_split: int = 1, parts: int = 1,
             bucket: int | None = None) -> None:
        """One script call; ``bucket``: a cluster's call (every record of that bucket)."""
        span = b"".join(frames)
        n, consumed, _ended, corrupt = self.script(args=[self.p, parts, now, STALE, SESSION_TTL_S, USAGE_TTL_S,
                                                         MAX_RECORD, span, roles_split,
                                                         "" if bucket is None else bucket])
        assert (n, consumed, corrupt) == (len(frames), len(span), 0)

    def live_count(self, now: float, user: str = "alice") -> int:
        return livestate.sessions(self.r, self.k, 1, user, now=now)

    def rows(self, now: float, user: str = "alice") -> tuple[str, ...]:
        return livestate.read(self.r, self.k, 1, user, rows=True, now=now).rows

    def sub(self, user: str = "alice") -> str:
        return self.k.subscriber(1, user)

    def cleanup(self) -> None:
        keys = list(self.r.scan_iter(match=f"{self.p}:*"))
        if keys:
            self.r.delete(*keys)


@pytest.fixture
def live(redis):
    lv = Live(redis)
    yield lv
    lv.cleanup()


def announcements(pubsub, wait_s: float = 5.0) -> list:
    """The invalidation messages of one burst: waits for the first, stops at the first pause."""
    messages: list = []
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        msg = pubsub.get_message(timeout=0.2)
        if msg:
            messages.append(json.loads(msg["data"]))
        elif messages:
            break
    return messages


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
    # The subscriber's hash outlives the latest deadline.
    assert live.r.expiretime(live.sub()) >= last + DEADLINE_S


def test_expiries_are_pushed_at_refresh_times_and_never_fall_behind(live):
    """Interims refresh the subscriber hash's expiry only when the session's refresh time is
    due, yet over many refresh intervals it never expires before its session's deadline."""
    live_key = live.sub()
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
    # Pushed about once per refresh interval, not at every Interim.
    assert 3 <= pushed <= steps // 3


def test_a_hash_removed_mid_session_is_created_again_with_an_expiry(live):
    """The subscriber's hash removed by hand while a session goes on is created again by
    its next Interim, with an expiry, though its refresh time is not due."""
    live.send(T0, record("start"), record("interim", t=60))
    live.r.delete(live.sub())
    live.send(T0 + 120, record("interim", t=120))
    assert live.live_count(T0 + 120) == 1
    assert live.r.ttl(live.sub()) > 0


def test_sessions_keep_no_per_nas_or_per_session_key(live):
    """One key per subscriber: no per-NAS set, no session hash, no live set; a NAS's epoch
    exists only once it sent an Accounting-On/Off."""
    live.send(T0, record("start"), record("interim", t=60), record("start", key="s2", user="bob"))
    keys = {k.decode() for k in live.r.scan_iter(match=f"{live.p}:*")}
    assert keys == {live.sub(), live.sub("bob"), live.k.stream(0), live.k.nas_skew(0, 1)}


def test_a_session_started_before_the_nas_accounting_on_is_not_counted(live):
    """The NAS's epoch decides: a session whose last record came before the NAS's
    Accounting-On is not live (though its deadline is ahead); one started after is; one
    that goes on after it (its next Interim) is live again."""
    live.send(T0, record("start"), record("start", key="s2", user="bob"))
    live.send(T0 + 10, record("on", ev=T0 + 10))
    assert live.live_count(T0 + 11) == 0 and live.live_count(T0 + 11, "bob") == 0
    assert live.r.hexists(live.k.nas_epoch(0, 1), "7")
    live.send(T0 + 20, record("start", key="s3", user="carol", ev=T0 + 20))
    assert live.live_count(T0 + 21, "carol") == 1
    assert live.rows(T0 + 21, "carol") == (row_key("s3", started=T0 + 20),)
    live.send(T0 + 30, record("interim", t=30))
    assert live.live_count(T0 + 31) == 1 and live.live_count(T0 + 31, "bob") == 0
    # A second Accounting-On in the same second still ends what the first left live.
    live.send(T0 + 30, record("off", ev=T0 + 30))
    assert live.live_count(T0 + 31) == 0 and live.live_count(T0 + 31, "carol") == 0


def test_the_subscriber_hash_is_pruned_of_old_sessions(live):
    """A hotspot subscriber reconnecting all day for days: each session is a field of its
    hash, kept a session TTL after its Stop (replays and late records are recognised),
    then pruned at a later record: the hash stays bounded by the TTL's worth of sessions."""
    every = 600
    n = int(3 * SESSION_TTL_S / every)
    most = 0
    for i in range(n):
        now = T0 + i * every
        live.send(now, record("start", key=f"h{i}", ev=now), record("stop", key=f"h{i}", t=60, ev=now + 60))
        most = max(most, live.r.hlen(live.sub()))
    # One field per session of the last session TTL (and prune interval), plus the usage.
    bound = (SESSION_TTL_S + 21600) / every + 2
    assert SESSION_TTL_S / every < most <= bound, (most, bound)
    # A replay of a recent session's Stop is recognised (not counted again)...
    used = usage(live)
    last = T0 + (n - 1) * every
    live.send(last + 5, record("stop", key=f"h{n - 1}", t=60, ev=last + 60))
    assert usage(live) == used
    # ... and the oldest ones are gone.
    assert not live.r.hexists(live.sub(), "h0")


def test_accounting_on_clears_the_nas_and_a_session_going_on_is_tracked_again(live):
    """Accounting-On empties the users' live sets of that NAS; a session that still sends
    Interims afterwards is in the NAS's set again at once (not at the next refresh)."""
    live.send(T0, record("start"), record("start", key="s2", user="bob"),
              record("start", key="s3", user="carol", nas_id=8))
    assert live.live_count(T0) == 1 and live.live_count(T0, "bob") == 1
    live.send(T0 + 10, record("on", ev=T0 + 10))
    assert live.live_count(T0 + 10) == 0 and live.live_count(T0 + 10, "bob") == 0
    assert live.live_count(T0 + 10, "carol") == 1  # another NAS
    live.send(T0 + 20, record("interim", t=20))
    assert live.live_count(T0 + 20) == 1
    live.send(T0 + 30, record("off", ev=T0 + 30))
    assert live.live_count(T0 + 30) == 0


def test_an_accounting_on_sent_again_keeps_the_sessions_since_live(live):
    """The same Accounting-On once more (the spool sending again what Redis lost or what a
    crash left unsettled, the NAS retransmitting it with its Event-Timestamp): the NAS's
    epoch stays, so the session started after it stays live (before: ended until its next
    Interim); another Accounting-On still ends it."""
    live.send(T0, record("start"))
    live.send(T0 + 10, record("on", ev=T0 + 10))
    live.send(T0 + 20, record("start", key="s2", ev=T0 + 20))
    assert live.live_count(T0 + 21) == 1
    live.send(T0 + 30, record("on", ev=T0 + 10))
    assert live.live_count(T0 + 31) == 1
    assert len([r for r in stream_records(live) if r["status"] == "on"]) == 2  # batch_writer: harmless
    live.send(T0 + 40, record("on", ev=T0 + 40))
    assert live.live_count(T0 + 41) == 0


def prior_session(live, user: str, key: str, started: float = T0, t: int = 60, deadline: float | None = None) -> None:
    """A session kept as the layout before 2026-12-02 kept it (one Redis upgraded mid-session):
    its own hash, its subscriber's live set and the NAS's set of the bucket."""
    k = live.k
    live.r.hset(k.prior_session(1, user, key), mapping={"i": 10 * t, "o": 20 * t, "t": t, "k": row_key(key, started),
                                                         "b": f"{started:.3f}", "g": 0, "v": INTERIM_S,
                                                         "r": int(started + 10_000)})
    live.r.expire(k.prior_session(1, user, key), SESSION_TTL_S)
    live.r.zadd(k.prior_live(1, user), {row_key(key, started): deadline or started + t + DEADLINE_S})
    live.r.zadd(k.prior_nas_live(0, 1, 7), {f"{user}\n{row_key(key, started)}": started + 10_000})


def test_accounting_on_never_recreates_an_expired_session_hash_of_the_layout_before(live):
    """A member of a NAS's set of the layout before 2026-12-02 can outlive its session's
    hash: Accounting-On must not create the hash again, without an expiry (a key that
    never goes)."""
    prior_session(live, "alice", "s1")
    prior_session(live, "alice", "s2")
    gone = live.k.prior_session(1, "alice", "s1")
    live.r.delete(gone)  # expired
    live.send(T0 + 10, record("on", ev=T0 + 10))
    assert not live.r.exists(gone)
    kept = live.k.prior_session(1, "alice", "s2")
    assert live.r.hget(kept, "n") is not None and live.r.ttl(kept) > 0
    assert live.live_count(T0 + 11) == 0 and not live.r.exists(live.k.prior_nas_live(0, 1, 7))


def test_sessions_of_the_layout_before_count_until_they_move_and_accounting_on_ends_them(live):
    """One Redis upgraded with sessions in flight (the layout before 2026-12-02): they count
    for Simultaneous-Use and their usage for the quotas before their next record; that
    record moves the session and the usage into the subscriber's hash (the old keys
    deleted) and counts only its delta; an Accounting-On ends both the moved ones and
    those still in the old keys; a Stop after it is recognised (no double count)."""
    k = live.k
    prior_session(live, "alice", "s1")
    prior_session(live, "alice", "s2")
    live.r.hset(k.prior_usage(1, "alice"), mapping={"octets": 3600 + 5000, "time_s": 120 + 40, "d": 100,
                                                    "do": 77, "dt": 7, "w": 98, "wo": 78, "wt": 8, "m": 90,
                                                    "mo": 79, "mt": 9})
    assert live.live_count(T0 + 70) == 2
    assert set(live.rows(T0 + 70)) == {row_key("s1"), row_key("s2")}
    assert usage(live)[b"octets"] == b"8600" and usage(live)[b"do"] == b"77"
    live.send(T0 + 120, record("interim", t=120))
    assert not live.r.exists(k.prior_session(1, "alice", "s1"), k.prior_usage(1, "alice"))
    assert live.r.zrange(k.prior_live(1, "alice"), 0, -1) == [row_key("s2").encode()]
    assert live.r.zrange(k.prior_nas_live(0, 1, 7), 0, -1) == [f"alice\n{row_key('s2')}".encode()]
    assert live.live_count(T0 + 121) == 2
    u = usage(live)
    assert (u[b"octets"], u[b"time_s"], u[b"d"], u[b"do"], u[b"mt"]) == (b"10400", b"220", b"100", b"77", b"9")
    assert stream_records(live)[-1]["live_session_key"] == row_key()
    assert live.r.expiretime(live.sub()) == T0 + 120 + USAGE_TTL_S
    live.send(T0 + 130, record("on", ev=T0 + 130))
    assert live.live_count(T0 + 131) == 0
    # The one still in the old keys moves at its Stop, counted once.
    live.send(T0 + 140, record("stop", key="s2", t=90))
    assert usage(live)[b"octets"] == str(10400 + 30 * 30).encode()
    assert not live.r.exists(k.prior_session(1, "alice", "s2"), k.prior_live(1, "alice"))
    live.send(T0 + 150, record("stop", key="s2", t=90))
    assert usage(live)[b"octets"] == str(10400 + 30 * 30).encode()


def test_a_stop_is_final(live):
    """After a Stop, a late Interim neither counts the session again nor adds usage."""
    live.send(T0, record("start"), record("interim", t=60), record("stop", t=120))
    assert live.live_count(T0) == 0
    used = livestate.usage(live.r, live.k, 1, "alice")
    live.send(T0 + 5, record("interim", t=600))
    assert live.live_count(T0 + 5) == 0
    assert livestate.usage(live.r, live.k, 1, "alice") == used
    usage = {k.encode(): str(v).encode() for k, v in used.items()}
    assert usage[b"octets"] == b"3600" and usage[b"time_s"] == b"120"


def test_starts_and_stops_of_one_call_are_announced_in_one_message(live):
    """Every radiusd drops its copies of the subscribers whose sessions changed: one message
    per script call, naming each of them; Interims announce nothing."""
    pubsub = live.r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"{live.p}:inval")
    try:
        live.send(T0, record("start"), record("start", key="s2", user="bob"),
                  record("interim", t=60), record("stop", key="s2", user="bob", t=60))
        live.send(T0 + 120, record("interim", t=120))
        messages = announcements(pubsub)
        assert messages == [["L", [[1, "alice"], [1, "bob"], [1, "bob"]]]]
    finally:
        pubsub.close()


def test_accounting_on_announces_that_nas_only(live):
    """An Accounting-On makes radiusd drop the cached copies of the users of that NAS, not
    of the whole tenant: the announcement names the NAS ('N'; each process knows the NASes
    of the live sessions it cached), and no 't' message is sent."""
    live.send(T0, record("start"), record("start", key="s2", user="bob"),
              record("start", key="s3", user="carol", nas_id=8))
    pubsub = live.r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"{live.p}:inval")
    try:
        live.send(T0 + 10, record("on"))
        messages = announcements(pubsub)
        assert messages == [["N", [[1, 7]]]], messages
    finally:
        pubsub.close()


# ---------------------------------------------------------------- issue 14: counters, identity
def stream_records(live) -> list[dict]:
    """What the script put into the stream for batch_writer, decoded."""
    return [wire.unpack(f[b"d"])[1] for _id, f in live.r.xrange(live.k.stream(0))]


def usage(live, user: str = "alice") -> dict[bytes, bytes]:
    """The subscriber's usage as the readers see it (as the usage hash of before held it)."""
    return {k.encode(): str(v).encode() for k, v in livestate.usage(live.r, live.k, 1, user).items()}


def test_implausible_counters_are_refused_and_the_record_kept(live):
    """Gigawords 2^31-1 (input 2^63-ish) and Session-Time 2^32-1 add nothing to usage (before:
    usage -2^63 and +4.29e9 s); the record still reaches the stream, flagged, with the
    session's totals PostgreSQL will store."""
    live.send(T0, record("start"), record("interim", t=60))
    before = usage(live)
    live.send(T0 + 120, record("interim", t=120, input_octets=((2**31 - 1) << 32) | 5))
    live.send(T0 + 180, record("interim", t=2**32 - 1, ev=T0 + 180, input_octets=600, output_octets=2400))
    after = usage(live)
    # Only the output counter of the first bad record moved on (its time and output are plausible).
    assert int(after[b"octets"]) == int(before[b"octets"]) + 20 * 60
    assert int(after[b"time_s"]) == int(before[b"time_s"]) + 60
    recs = stream_records(live)
    assert len(recs) == 4
    bad_octets, bad_time = recs[2], recs[3]
    assert bad_octets["counter_flags"] == 1 and bad_octets["live_input_octets"] == 600
    assert bad_time["counter_flags"] == 1 and bad_time["live_session_time_s"] == 120
    assert recs[1]["counter_flags"] == 0 and recs[1]["live_session_key"] == row_key()


def test_a_counter_going_backwards_is_a_new_base_and_flagged(live):
    """A 32-bit wrap without Gigawords: the lower value counts in full from there on; a
    record late in session time (reordered) adds nothing."""
    live.send(T0, record("start"),
              record("interim", t=60, input_octets=4_000_000_000, output_octets=100),
              record("interim", t=120, input_octets=500, output_octets=200))
    assert int(usage(live)[b"octets"]) == 4_000_000_000 + 500 + 200
    recs = stream_records(live)
    assert recs[2]["counter_flags"] == 2
    assert recs[2]["live_input_octets"] == 4_000_000_500 and recs[2]["live_output_octets"] == 200
    # The first Interim again (a replay, or a late copy from another radiusd): nothing moves.
    live.send(T0 + 200, record("interim", t=60, input_octets=4_000_000_000, output_octets=100))
    assert int(usage(live)[b"octets"]) == 4_000_000_000 + 500 + 200
    assert stream_records(live)[-1]["live_input_octets"] == 4_000_000_500


def test_a_session_id_reused_after_a_stop_is_a_new_session(live):
    """RouterOS reuses ids: Start, Stop, then a Start with the same id is live again and
    counted, under a key of its own (its own row); the first keeps its own."""
    live.send(T0, record("start"), record("stop", t=100))
    assert live.live_count(T0 + 100) == 0
    t1 = T0 + 1000
    live.send(t1, record("start", ev=t1), record("interim", t=60, ev=t1 + 60))
    assert live.live_count(t1 + 60) == 1
    assert int(usage(live)[b"octets"]) == 30 * 100 + 30 * 60
    keys = [r["live_session_key"] for r in stream_records(live)]
    assert keys == [row_key(), row_key(), row_key(started=t1), row_key(started=t1)]
    # A late copy of the first session's Stop goes to the first row and changes nothing live.
    live.send(t1 + 70, record("stop", t=100))
    assert live.live_count(t1 + 70) == 1
    assert stream_records(live)[-1]["live_session_key"] == row_key()


def test_a_session_id_reused_after_accounting_on_is_a_new_session(live):
    """After Accounting-On a Start with an id the NAS used before opens a new session, live
    and counted (before: merged into the closed one)."""
    live.send(T0, record("start"), record("interim", t=60))
    t1 = T0 + 300
    live.send(t1, record("on", ev=t1))
    assert live.live_count(t1) == 0
    live.send(t1 + 30, record("start", ev=t1 + 30), record("interim", t=60, ev=t1 + 90))
    assert live.live_count(t1 + 90) == 1
    assert stream_records(live)[-1]["live_session_key"] == row_key(started=t1 + 30)
    assert int(usage(live)[b"octets"]) == 30 * 60 * 2


def test_a_reused_id_without_stop_or_accounting_on_is_a_new_session(live):
    """RouterOS sends no Accounting-On: a Start long after everything seen of the old
    session opens a new one, and the old one is no longer live."""
    live.send(T0, record("start"), record("interim", t=60))
    t1 = T0 + 3600
    live.send(t1, record("start", ev=t1))
    assert live.live_count(t1) == 1
    assert live.rows(t1) == (row_key(started=t1),)


def test_a_retransmitted_start_and_a_replayed_span_change_nothing(live):
    """The same records twice (a forwarder crash before its checkpoint): no new generation,
    no usage counted twice."""
    span = [record("start"), record("interim", t=60), record("stop", t=120), record("start", ev=T0 + 500)]
    live.send(T0 + 500, *span)
    def state() -> dict:
        # Everything but the live deadline, which the replayed Start pushes (as it should).
        return {f: [v for i, v in enumerate(msgpack.unpackb(raw)) if not (f != b"u" and i == 5)]
                for f, raw in live.r.hgetall(live.sub()).items()}
    before = state()
    live.send(T0 + 501, *span)
    assert state() == before
    keys = {r["live_session_key"] for r in stream_records(live)}
    assert keys == {row_key(), row_key(started=T0 + 500)}


def test_liveness_uses_the_plan_interim_without_the_process_cache(live):
    """The record says 300 s (the radiusd process had no copy of the subscriber); the plan
    (3,600 s, cached in Redis by authorize) decides the deadline (before: 660 s)."""
    from wificore.profile import Plan, Profile
    plan = Plan(42, None, None, None, None, 3600, None, None, 1, None)
    prof = Profile(1, "pppoe", "cleartext", "pw", "active", None, None, None, 42)
    live.r.set(f"{live.p}:{{1}}:u:alice", prof.pack())
    live.r.set(f"{live.p}:{{1}}:plan:42", plan.pack())
    live.send(T0, record("start", interim_s=300))
    assert live.live_count(T0 + 1800) == 1
    assert live.live_count(T0 + 3600 * STALE + 61) == 0
    # A later session of a subscriber not cached anywhere gets the tenant's largest interval.
    live.r.delete(f"{live.p}:{{1}}:u:alice")
    live.send(T0, record("start", key="s9", user="bob", interim_s=300))
    assert live.live_count(T0 + 1800, "bob") == 1
    assert stream_records(live)[-1]["live_interim_s"] == 3600


def auth_record(user: str = "alice", result: str = "accept", interim_s: int | None = 3600) -> bytes:
    payload = wire.pack(wire.KIND_AUTH, {
        "tenant_id": 1, "nas_id": 7, "ts": T0, "event_id": uuid.uuid4().hex, "username": user,
        "calling_station_id": None, "result": result, "reason": "ok", "method": "pap",
        "interim_s": interim_s})
    return struct.pack("<I", len(payload)) + payload


def test_liveness_uses_the_interval_of_the_login_when_the_plan_is_elsewhere(live):
    """Split Redis roles: the state Redis holds no cached profile or plan. The accept's
    auth record carries the plan's 3,600 s; the Start, from a radiusd process that never
    saw the subscriber, says 300 s: the deadline is the plan's (before: 660 s)."""
    live.send(T0 - 1, auth_record(), auth_record("bob", result="reject", interim_s=7200),
              auth_record("carol", interim_s=5))  # implausible: ignored
    assert live.r.get(live.k.interim(1, "alice")) == b"3600"
    assert not live.r.exists(live.k.interim(1, "bob")) and not live.r.exists(live.k.interim(1, "carol"))
    assert 0 < live.r.ttl(live.k.interim(1, "alice")) <= 120
    live.send(T0, record("start", interim_s=300))
    assert not live.r.exists(live.k.interim(1, "alice"))  # taken by the session
    assert live.live_count(T0 + 1800) == 1
    assert live.live_count(T0 + 3600 * STALE + 61) == 0
    assert stream_records(live)[-1]["live_interim_s"] == 3600
    # A login whose record comes after its Start (another process's spool was slower):
    # the tenant's largest interval, which the accepts keep, and never less than the record's.
    live.send(T0, record("start", key="s8", user="dave", interim_s=300))
    assert stream_records(live)[-1]["live_interim_s"] == 3600
    # Auth records of radiusd before 2026-12-01 (9 fields) still go through.
    old = msgpack.packb([wire.VERSION, wire.KIND_AUTH, [1, 7, T0, "e-old", "erin", None, "accept", "ok", "pap"]])
    live.send(T0, struct.pack("<I", len(old)) + old)
    assert not live.r.exists(live.k.interim(1, "erin"))


def test_with_one_redis_an_accept_is_only_its_stream_entry(live):
    """One Redis for both roles (ARGV[9] '0', what the forwarder sends then): an accept's
    interval is not kept (the Start reads the cached plan: the test above), so an accept
    costs Redis one XADD; the record still reaches its stream partition."""
    live.send(T0 - 1, auth_record(), auth_record("bob"), roles_split=0)
    assert not live.r.exists(live.k.interim(1, "alice"), live.k.interim(1, "bob"),
                             live.k.interim_max(0, 1))
    assert [r["username"] for r in stream_records(live)] == ["alice", "bob"]


def test_with_one_redis_an_auth_record_goes_to_its_bucket_as_written(live):
    """One Redis: an auth record in a tagged frame is appended to its bucket's stream as
    it is, not decoded (the tag names the bucket); an untagged one (a frame from before
    the tags) is decoded and its bucket computed, as before."""
    parts = 16
    users = [(1, "u1"), (127, "u127"), (70_000, "u70000")]
    payloads = [wire.pack_values(wire.KIND_AUTH, [tenant, 7, T0, f"e{tenant}", user, None,
                                                  "accept", "ok", "pap", 300])
                for tenant, user in users]
    buckets = [bucket_of(t, u, parts) for t, u in users]
    span = b"".join(struct.pack("<I", len(p) | (b + 1) << TAG_SHIFT) + p
                    for p, b in zip(payloads, buckets, strict=True))
    untagged = wire.pack_values(wire.KIND_AUTH, [5, 7, T0, "e5", "u5", None, "accept", "ok", "pap", 300])
    span += struct.pack("<I", len(untagged)) + untagged
    n, consumed, _ended, corrupt = live.script(args=[live.p, parts, T0, STALE, SESSION_TTL_S, USAGE_TTL_S,
                                                     MAX_RECORD, span, 0])
    assert (n, consumed, corrupt) == (len(payloads) + 1, len(span), 0)
    for payload, b in zip(payloads, buckets, strict=True):
        assert payload in [f[b"d"] for _id, f in live.r.xrange(f"{live.p}:{{b{b}}}:stream")], b
    b5 = bucket_of(5, "u5", parts)
    assert untagged in [f[b"d"] for _id, f in live.r.xrange(f"{live.p}:{{b{b5}}}:stream")]
    assert not any(live.r.exists(f"{live.p}:{{b{b}}}:dead") for b in range(parts))
    # Not decoded: a body cut after its header reaches the stream too (batch_writer
    # dead-letters what it cannot decode, DEAD_DECODE), not live.lua's dead letters.
    cut = payloads[0][:10]
    live.script(args=[live.p, parts, T0, STALE, SESSION_TTL_S, USAGE_TTL_S, MAX_RECORD,
                      struct.pack("<I", len(cut) | (buckets[0] + 1) << TAG_SHIFT) + cut, 0])
    assert cut in [f[b"d"] for _id, f in live.r.xrange(f"{live.p}:{{b{buckets[0]}}}:stream")]
    assert not any(live.r.exists(f"{live.p}:{{b{b}}}:dead") for b in range(parts))


def test_each_nas_clock_skew_is_kept_for_the_noc(live):
    """Event time against arrival, one field per NAS."""
    live.send(T0, record("start", arrival_ts=T0 + 7 * 3600))
    assert live.r.hget(live.k.nas_skew(0, 1), "7") == str(-7 * 3600).encode()


def test_live_script_maxima_match_batch_writer():
    """One counter rule: the same maxima on both sides."""
    from batch_writer import records as br
    assert f"MAX_OCTETS = {br.MAX_OCTETS} " in _LIVE_LUA
    assert f"MAX_SESSION_TIME_S = {br.MAX_SESSION_TIME_S} " in _LIVE_LUA
    # The flags live.lua sets are the ones the writer stores and counts (stats.note_counter_flags).
    assert f"FLAG_REFUSED, FLAG_BACKWARDS = {br.FLAG_REFUSED}, {br.FLAG_BACKWARDS}\n" in _LIVE_LUA
    lo, hi = br.INTERIM_RANGE_S
    assert f"MIN_INTERIM_S, MAX_INTERIM_S = {lo}, {hi} " in _LIVE_LUA


def test_interims_without_session_time_stay_one_session(live):
    """A NAS that sends no Acct-Session-Time in its Interims (0): each Interim is later than
    everything seen, yet the session is one (one key, counted by deltas)."""
    live.send(T0, record("start"))
    for k in range(1, 4):
        live.send(T0 + 300 * k, record("interim", ev=T0 + 300 * k, session_time_s=0,
                                       input_octets=100 * k, output_octets=0))
    assert {r["live_session_key"] for r in stream_records(live)} == {row_key()}
    assert int(usage(live)[b"octets"]) == 300


def test_a_clock_set_mid_session_keeps_one_session(live):
    """The NAS's clock jumps 3 h ahead between two Interims (set by hand, NTP): the session
    time goes on, so it is the same session (one key, counted by deltas)."""
    live.send(T0, record("start"), record("interim", t=60))
    live.send(T0 + 120, record("interim", t=120, ev=T0 + 120 + 3 * 3600))
    assert {r["live_session_key"] for r in stream_records(live)} == {row_key()}
    assert int(usage(live)[b"octets"]) == 30 * 120


def test_an_interim_of_a_new_session_whose_start_was_lost_opens_it(live):
    """RouterOS rebooted without Accounting-On and its new session's Start was lost: an
    Interim whose session time restarted, long after the old one, is the new session."""
    live.send(T0, record("start"), record("interim", t=600))
    t1 = T0 + 7200
    live.send(t1, record("interim", t=60, ev=t1))
    assert stream_records(live)[-1]["live_session_key"] == row_key(started=t1 - 60)
    assert int(usage(live)[b"octets"]) == 30 * 600 + 30 * 60


# ------------------------------------------------------------------ buckets (Redis Cluster layout)
def tagged(frame: bytes, parts: int) -> bytes:
    """The frame as the accounting hook spools it since 2026-12-01: its bucket in the length word."""
    payload = frame[4:]
    _kind, rec = wire.unpack(payload)
    tag = TAG_ALL if rec.get("status") in ("on", "off") else 1 + bucket_of(rec["tenant_id"], rec["username"], parts)
    return struct.pack("<I", len(payload) | tag << TAG_SHIFT) + payload


USERS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "ülla", "李"]


def test_each_record_goes_to_its_buckets_keys_tagged_or_not(live):
    """Eight buckets: a subscriber's live set, usage, session and stream are those of
    bucket_of(tenant, user), whether the frame carries the tag or (spooled before the
    upgrade) live.lua computes it (its crc32 is zlib's)."""
    parts, k = 8, Keys(live.p, 8)
    live.k = k
    frames = [record("start", key=f"s{i}", user=u) for i, u in enumerate(USERS)]
    half = len(frames) // 2
    live.send(T0, *[tagged(f, parts) for f in frames[:half]], *frames[half:], parts=parts)
    assert len({k.bucket(1, u) for u in USERS}) > 3
    for i, u in enumerate(USERS):
        b = k.bucket(1, u)
        assert livestate.sessions(live.r, k, 1, u, now=T0) == 1, u
        assert live.r.hexists(k.subscriber(1, u), f"s{i}") and k.subscriber(1, u).startswith(k.tag(b)), u
        assert any(wire.unpack(f[b"d"])[1]["username"] == u for _id, f in live.r.xrange(k.stream(b))), u
    assert sum(live.r.xlen(k.stream(b)) for b in range(parts)) == len(USERS)


def stored(live, k: Keys, parts: int, status: str) -> list[int]:
    """The buckets whose stream holds a record of ``status`` (one entry per record)."""
    return [b for b in range(parts) for _id, f in live.r.xrange(k.stream(b))
            if wire.unpack(f[b"d"])[1]["status"] == status]


def test_accounting_on_clears_the_nas_in_every_bucket_and_is_stored_once(live):
    """One Redis: one call clears the NAS's sessions of every bucket; a cluster: the
    forwarder sends the record to each bucket's call. Either way one stream gets it."""
    parts, k = 4, Keys(live.p, 4)
    live.k = k
    users = USERS[:8]
    live.send(T0, *[tagged(record("start", key=f"s{i}", user=u), parts) for i, u in enumerate(users)], parts=parts)
    assert len({k.bucket(1, u) for u in users}) >= 3
    live.send(T0 + 10, tagged(record("on", ev=T0 + 10), parts), parts=parts)
    assert all(livestate.sessions(live.r, k, 1, u, now=T0 + 10) == 0 for u in users)
    assert stored(live, k, parts, "on") == [7 % parts]
    # The cluster's way: one call per bucket, each with the record.
    live.send(T0 + 20, *[tagged(record("start", key=f"t{i}", user=u, ev=T0 + 20), parts) for i, u in enumerate(users)],
              parts=parts)
    off = tagged(record("off", ev=T0 + 30), parts)
    for b in range(parts):
        live.send(T0 + 30, off, parts=parts, bucket=b)
    assert all(livestate.sessions(live.r, k, 1, u, now=T0 + 30) == 0 for u in users)
    assert stored(live, k, parts, "off") == [7 % parts]


def test_a_session_of_the_layout_before_moves_to_its_bucket_and_counts_once(live):
    """One Redis upgraded mid-session from before 2026-12-01: the session hash, live set and
    usage under the tenant's tag move at the session's next record (into the subscriber's
    hash, by way of the bucket's keys of before 2026-12-02); its Interim adds only its delta."""
    legacy = live.k.legacy
    live.r.hset(legacy(1, "sess", "s1"), mapping={"i": 600, "o": 1200, "t": 60, "k": row_key(), "b": f"{T0:.3f}",
                                                 "g": 0, "v": INTERIM_S, "r": int(T0 + 10_000)})
    live.r.expire(legacy(1, "sess", "s1"), 3600)
    live.r.zadd(legacy(1, "live", "alice"), {row_key(): T0 + 1000})
    live.r.hset(legacy(1, "use", "alice"), mapping={"octets": 1800 + 5000, "time_s": 60 + 40})
    live.send(T0 + 120, tagged(record("interim", t=120), 1))
    assert not live.r.exists(legacy(1, "sess", "s1"), legacy(1, "live", "alice"), legacy(1, "use", "alice"))
    assert not live.r.exists(live.k.prior_session(1, "alice", "s1"), live.k.prior_live(1, "alice"),
                             live.k.prior_usage(1, "alice"))
    assert usage(live) == {b"octets": str(6800 + 1800).encode(), b"time_s": str(100 + 60).encode()}
    assert live.live_count(T0 + 130) == 1
    assert stream_records(live)[-1]["live_session_key"] == row_key()
    assert live.r.expiretime(live.sub()) == T0 + 120 + USAGE_TTL_S


def test_a_nas_clock_skew_is_kept_once_in_its_home_bucket(live):
    """Sessions of one NAS in several buckets: its skew field is in bucket nas_id % parts only."""
    parts, k = 4, Keys(live.p, 4)
    live.k = k
    live.send(T0, *[tagged(record("start", key=f"s{i}", user=u, nas_id=7, arrival_ts=T0 + 5), parts)
                    for i, u in enumerate(USERS[:8])], parts=parts)
    assert len({k.bucket(1, u) for u in USERS[:8]}) > 1
    assert {b: live.r.hget(k.nas_skew(b, 1), "7") for b in range(parts)} == {
        b: (b"-5" if b == 7 % parts else None) for b in range(parts)}


def test_usage_per_quota_period_reads_back_as_counted(live):
    """The periods' ids and counters as the readers see them, whether stored in full or
    left out where they follow from the day's (live.lua's u_store): a day, the next day of
    the same week and month, a day of the next month (same week), then a record of the
    first day again (the day's and the month's are newer: counted in the week and the
    totals only)."""
    import datetime as dt

    from wificore import quota
    days = [quota.date_day(dt.date(2030, 1, d)) for d in (29, 30)] + [quota.date_day(dt.date(2030, 2, 1))]

    def expect(day: int, d: tuple[int, int], w: tuple[int, int], m: tuple[int, int]) -> dict[str, int]:
        return {"d": day, "do": d[0], "dt": d[1], "w": quota.period_start("weekly", day), "wo": w[0], "wt": w[1],
                "m": quota.period_start("monthly", day), "mo": m[0], "mt": m[1]}

    def periods() -> dict[str, int]:
        return {k: v for k, v in livestate.usage(live.r, live.k, 1, "alice").items() if k not in ("octets", "time_s")}
    live.send(T0, record("start", local_day=days[0]), record("interim", t=60, local_day=days[0]))
    assert periods() == expect(days[0], (1800, 60), (1800, 60), (1800, 60))
    live.send(T0 + 120, record("interim", t=120, local_day=days[1]))
    assert periods() == expect(days[1], (1800, 60), (3600, 120), (3600, 120))
    live.send(T0 + 180, record("interim", t=180, local_day=days[2]))
    assert periods() == expect(days[2], (1800, 60), (5400, 180), (1800, 60))
    live.send(T0 + 240, record("interim", t=240, local_day=days[0]))  # the same ISO week
    assert periods() == expect(days[2], (1800, 60), (7200, 240), (1800, 60))
    assert livestate.usage(live.r, live.k, 1, "alice")["octets"] == 30 * 240


# ------------------------------------------------------------------ replays, odd keys
def test_a_start_after_its_stop_is_not_live_again(live):
    """A Start that arrives after its session's Stop (a retransmission, or another radiusd
    process's spool forwarded later): the Stop was final, the session is not live again
    (a phantom session refusing the subscriber's next login for Simultaneous-Use), no new
    row; the same with the Stop before its Start. A reused id starting after the Stop is
    a new session (test_a_session_id_reused_after_a_stop_is_a_new_session)."""
    live.send(T0 + 120, record("start"), record("interim", t=60), record("stop", t=120))
    used = usage(live)
    live.send(T0 + 130, record("start"))
    assert live.live_count(T0 + 131) == 0
    assert usage(live) == used
    assert {r["live_session_key"] for r in stream_records(live)} == {row_key()}
    # The Stop first, its Start after it.
    live.send(T0 + 300, record("stop", key="s2", user="bob", t=60, ev=T0 + 260))
    live.send(T0 + 301, record("start", key="s2", user="bob", ev=T0 + 200))
    assert live.live_count(T0 + 302, "bob") == 0
    assert int(usage(live, "bob")[b"octets"]) == 30 * 60
    assert [r["live_session_key"] for r in stream_records(live)][-2:] == [row_key("s2", T0 + 200)] * 2


@pytest.mark.parametrize("odd", ["u", "\x00\x01\x02\x03\x04", "\x01u"])
def test_a_session_key_never_shares_a_field_with_another(live, odd):
    """Session keys are radiusd's hex digests, stored as \\0 and their bytes; any other
    key (a record of another producer) is a field of its own: never the usage field 'u',
    never the field of a hex key (01020304 is \\0\\1\\2\\3\\4)."""
    live.send(T0, record("start", key=odd), record("start", key="01020304"))
    live.send(T0 + 60, record("interim", key=odd, t=60), record("interim", key="01020304", t=60))
    live.send(T0 + 120, record("interim", key=odd, t=120), record("interim", key="01020304", t=120))
    assert int(usage(live)[b"octets"]) == 2 * 30 * 120
    assert live.live_count(T0 + 121) == 2
    assert set(live.rows(T0 + 121)) == {row_key(odd), row_key("01020304")}


def hgetalls(r) -> int:
    return int(r.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0))


def test_a_reader_reads_the_live_sessions_only_however_many_are_kept(live):
    """A hotspot subscriber: 1,500 stopped sessions of the session TTL in its hash, one
    live. The readers (Simultaneous-Use at every authorize) read the live list and those
    sessions, not every field (before: HGETALL and an unpack of each, 3.8 ms of Redis CPU
    at 3,000 fields); a session whose deadline passed leaves the list at the next pruning."""
    n = 1500
    for i in range(0, n, 250):
        live.send(T0 + 60, *[f for j in range(i, i + 250)
                              for f in (record("start", key=f"{j:024x}"), record("stop", key=f"{j:024x}", t=60))])
    live.send(T0 + 100, record("start", key="f" * 24, ev=T0 + 100), record("start", key="e" * 24, ev=T0 + 100))
    assert live.r.hlen(live.sub()) == n + 4  # and u, the live list
    before = hgetalls(live.r)
    assert live.live_count(T0 + 101) == 2
    assert hgetalls(live.r) == before
    assert int(usage(live)[b"octets"]) == n * 30 * 60
    # 'e…' goes silent; a record after the prune time drops it from the list.
    later = T0 + 21600 + 200
    live.send(later, record("interim", key="f" * 24, t=21600 + 100, ev=later))
    assert live.live_count(later) == 1
    assert msgpack.unpackb(live.r.hget(live.sub(), "\x02"), raw=True) == [b"\x00" + b"\xff" * 12]


def test_a_hash_written_before_the_live_list_is_read_and_gets_it(live):
    """A subscriber hash live.lua of before the live list wrote (main 75b8957): the readers
    read every field until a record adds a session to a hash of LIST_FROM (8) fields; the
    list then names every session not stopped (the new one's and the others'). A hash of
    fewer fields has none (read whole: as cheap)."""
    import subprocess
    old = subprocess.run(["git", "show", "75b8957:rlm_wificore/live.lua"], capture_output=True, check=True,
                         cwd=__file__.rsplit("/tests/", 1)[0]).stdout.decode()
    script, live.script = live.script, live.r.register_script(old)
    live.send(T0, record("start"), record("start", key="s2", nas_id=8),
              *[f for i in range(6) for f in (record("start", key=f"x{i}"), record("stop", key=f"x{i}", t=30))])
    live.script = script
    assert live.r.hlen(live.sub()) == 9 and not live.r.hexists(live.sub(), "\x02")
    assert live.live_count(T0 + 1) == 2
    live.send(T0 + 60, record("interim", t=60))  # no field added: no list yet
    assert not live.r.hexists(live.sub(), "\x02") and live.live_count(T0 + 61) == 2
    live.send(T0 + 70, record("start", key="s3", ev=T0 + 70))
    assert sorted(msgpack.unpackb(live.r.hget(live.sub(), "\x02"), raw=True)) == [b"s1", b"s2", b"s3"]
    before = hgetalls(live.r)
    assert live.live_count(T0 + 71) == 3
    assert set(live.rows(T0 + 71)) == {row_key(), row_key("s2"), row_key("s3", T0 + 70)}
    assert hgetalls(live.r) == before
    live.send(T0 + 90, record("stop", key="s2", nas_id=8, t=90))
    assert sorted(msgpack.unpackb(live.r.hget(live.sub(), "\x02"), raw=True)) == [b"s1", b"s3"]
    assert live.live_count(T0 + 91) == 2
    live.send(T0, record("start", key="b1", user="bob"), record("stop", key="b1", user="bob", t=5),
              record("start", key="b2", user="bob"))
    assert not live.r.hexists(live.sub("bob"), "\x02") and live.live_count(T0 + 1, "bob") == 1


def test_quota_periods_follow_the_calendar_across_weeks_months_and_years(live):
    """One record a day over a year boundary, a leap day and an ISO week spanning two
    months: after each, the periods' ids and counters read back are those wificore.quota
    computes (the compact encoding leaves the week's and month's out where they follow)."""
    import datetime as dt

    from wificore import quota
    dates = [dt.date(2030, 12, 28) + dt.timedelta(days=i) for i in range(10)]
    dates += [dt.date(2032, 2, 27) + dt.timedelta(days=i) for i in range(5)]
    live.send(T0, record("start", local_day=quota.date_day(dates[0])))
    sums: dict[tuple[str, int], int] = {}
    for i, date in enumerate(dates, start=1):
        day = quota.date_day(date)
        live.send(T0 + 60 * i, record("interim", t=60 * i, local_day=day))
        ids = {p: quota.period_start(name, day) for p, name in (("d", "daily"), ("w", "weekly"), ("m", "monthly"))}
        for p, pid in ids.items():
            sums[(p, pid)] = sums.get((p, pid), 0) + 30 * 60
        got = livestate.usage(live.r, live.k, 1, "alice")
        assert {p: got[p] for p in "dwm"} == ids, date
        assert {p: got[p + "o"] for p in "dwm"} == {p: sums[(p, pid)] for p, pid in ids.items()}, date
        assert {p: got[p + "t"] for p in "dwm"} == {p: sums[(p, pid)] // 30 for p, pid in ids.items()}, date


def test_a_nas_accounting_on_ends_the_subscribers_session_there_only(live):
    """One subscriber, a session on each of two NAS: NAS 7's Accounting-On ends its own;
    the other stays live, and its usage goes on counting once."""
    live.send(T0, record("start"), record("start", key="s2", nas_id=8))
    live.send(T0 + 10, record("on", ev=T0 + 10))
    snap = livestate.read(live.r, live.k, 1, "alice", rows=True, now=T0 + 11)
    assert (snap.sessions, snap.nas, snap.rows) == (1, (8,), (row_key("s2"),))
    live.send(T0 + 60, record("interim", key="s2", nas_id=8, t=60), record("interim", key="s2", nas_id=8, t=60))
    assert live.live_count(T0 + 61) == 1 and int(usage(live)[b"octets"]) == 30 * 60


def test_a_replay_within_the_session_ttl_is_recognised_though_pruning_ran(live):
    """A Stop replayed a day after it (a spool restored from a backup, a NAS's queue): the
    subscriber's hash was pruned in between, the session is within the session TTL: kept,
    not counted again. (Past the TTL it is gone: a replay then counts as a new session.)"""
    live.send(T0 + 60, record("start"), record("stop", t=60))
    for h in range(1, 8):  # another session's records every 6 h: pruning runs at each
        now = T0 + h * 21600 // 2 + 21600
        if now - T0 >= SESSION_TTL_S:
            break
        live.send(now, record("start", key=f"o{h}", ev=now), record("stop", key=f"o{h}", t=10, ev=now + 10))
    assert live.r.hexists(live.sub(), "s1")
    used = usage(live)
    live.send(T0 + SESSION_TTL_S - 60, record("stop", t=60), record("start"))
    assert usage(live) == used and live.live_count(T0 + SESSION_TTL_S - 59) == 0


def test_a_record_from_before_the_accounting_on_applied_after_it_does_not_revive(live):
    """The NAS rebooted: its last Interim of s1 (sent before its Accounting-On) was in a
    slower radiusd process's spool and is applied after the Accounting-On; so is a Start
    from before it. Neither session is live again (a phantom refusing its subscriber's
    reconnect for Simultaneous-Use until its deadline); the usage counts. A record sent
    after the Accounting-On (a session that goes on) is live again, and one whose NAS clock
    is behind but that arrived after the Accounting-On was applied is too."""
    live.send(T0, record("start"))
    live.send(T0 + 100, record("on", ev=T0 + 90))
    live.send(T0 + 101, record("interim", t=60, arrival_ts=T0 + 60),
              record("start", key="s2", user="bob", ev=T0 + 70, arrival_ts=T0 + 70))
    assert live.live_count(T0 + 102) == 0 and live.live_count(T0 + 102, "bob") == 0
    assert int(usage(live)[b"octets"]) == 30 * 60
    live.send(T0 + 130, record("interim", t=120, arrival_ts=T0 + 120))
    assert live.live_count(T0 + 131) == 1
    # Live again by that Interim: a copy from before the Accounting-On applied later keeps it so.
    live.send(T0 + 132, record("interim", t=70, arrival_ts=T0 + 70))
    assert live.live_count(T0 + 133) == 1
    live.send(T0 + 140, record("start", key="s3", user="carol", ev=T0 + 10, arrival_ts=T0 + 139))
    assert live.live_count(T0 + 141, "carol") == 1


def test_state_written_by_the_layout_before_goes_on_through_this_one(live):
    """Upgrade in flight, the state written by live.lua of main 59719e4 (per-session hashes,
    live sets, usage hash, per-NAS sets): Simultaneous-Use sees the sessions before and
    after their next record, counters continue by delta (no double count), a session
    stopped before the upgrade stays stopped under a replay, an Accounting-On during the
    transition ends both the moved session and the one still in the old keys, and a Stop
    after it counts once."""
    import subprocess
    old = subprocess.run(["git", "show", "59719e4:rlm_wificore/live.lua"], capture_output=True, check=True,
                         cwd=__file__.rsplit("/tests/", 1)[0]).stdout.decode()
    script, live.script = live.script, live.r.register_script(old)
    live.send(T0 + 60, record("start"), record("interim", t=60), record("start", key="s2"),
              record("start", key="s3"), record("stop", key="s3", t=30), record("start", key="b1", user="bob"))
    live.script = script
    assert live.live_count(T0 + 61) == 2 and live.live_count(T0 + 61, "bob") == 1
    assert int(usage(live)[b"octets"]) == 30 * 60 + 30 * 30
    live.send(T0 + 120, record("interim", t=120), record("stop", key="s3", t=30))
    assert live.live_count(T0 + 121) == 2
    assert int(usage(live)[b"octets"]) == 30 * 120 + 30 * 30
    live.send(T0 + 130, record("on", ev=T0 + 130))
    assert live.live_count(T0 + 131) == 0 and live.live_count(T0 + 131, "bob") == 0
    live.send(T0 + 140, record("stop", key="s2", t=90), record("stop", key="s2", t=90),
              record("stop", key="b1", user="bob", t=80))
    assert int(usage(live)[b"octets"]) == 30 * 120 + 30 * 30 + 30 * 90
    assert int(usage(live, "bob")[b"octets"]) == 30 * 80
    assert live.live_count(T0 + 141) == 0 and live.live_count(T0 + 141, "bob") == 0
    assert not [k for k in live.r.scan_iter(match=f"{live.p}:*") if b":live:" in k or b":use:" in k]


def test_the_live_list_in_a_cluster_call(live):
    """A Redis Cluster's calls (one bucket each, ARGV[10]): a subscriber of many sessions
    gets its live list in its bucket's hash, read by the readers in that slot."""
    parts, k = 4, Keys(live.p, 4)
    live.k = k
    b = k.bucket(1, "alice")
    frames = [f for i in range(10) for f in (record("start", key=f"{i:024x}"), record("stop", key=f"{i:024x}", t=5))]
    live.send(T0 + 10, *[tagged(f, parts) for f in frames], tagged(record("start", key="f" * 24), parts),
              parts=parts, bucket=b)
    assert live.r.hexists(k.subscriber(1, "alice"), "\x02")
    before = hgetalls(live.r)
    assert livestate.sessions(live.r, k, 1, "alice", now=T0 + 11) == 1
    assert hgetalls(live.r) == before
