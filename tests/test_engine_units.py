"""Engine logic without servers: the cache must never keep what was invalidated meanwhile."""

from __future__ import annotations

from rlm_wificore.engine import Engine
from tests import state
from wificore.profile import Plan, Profile
from wificore.settings import Settings
from wificore.shardmap import ShardMap

MAP = ShardMap.from_dict({"shard": [{"name": "s", "first_tenant": 1, "last_tenant": 9,
                                     "dsn": "postgresql://x@127.0.0.1:1/x"}]})
PROFILE = Profile(1, "pppoe", "cleartext", "pw", "active", None, None, None, 1)
PLAN = Plan(1, None, None, None, None, 60, None, 100, 1, None)


def engine_reading(state_during_read, invalidate_during_read: bool) -> Engine:
    e = Engine(Settings(), MAP)
    e.profiles.plan = lambda t, p: PLAN  # plans are not what is tested here
    e._tenant_status = lambda t: "active"  # nor the tenant's status (its own Redis read)

    def fake_call(fn):
        if invalidate_during_read:
            e.invalidate(["l", 1, "bob"])  # a Stop forwarded while this lookup waited on Redis
        count, usage = state_during_read[:2]  # the readers' script's reply: count, usage, NASes, rows
        return (PROFILE.pack(), [[count, usage, list(state_during_read[2:3] and state_during_read[2]), []]])
    e.redis_store.call = fake_call
    return e


class TestInvalidationRace:
    def test_lookup_not_cached_when_invalidated_while_reading(self):
        """A live state read before an invalidation arrived is used once, not cached."""
        e = engine_reading((0, [b"0", b"0"]), invalidate_during_read=True)
        entry = e.profiles.entry(1, "bob")
        assert entry.state.time_s == 0
        assert e.local.peek((1, "bob")) is None

    def test_lookup_cached_when_quiet(self):
        """Without an invalidation in between, the entry is kept in process."""
        e = engine_reading((0, [b"0", b"0"]), invalidate_during_read=False)
        e.profiles.entry(1, "bob")
        assert e.local.peek((1, "bob")) is not None


class TestStateRefreshOffTheHook:
    def test_due_state_is_reread_by_the_state_thread(self, stack, redis):
        """A due live state is answered from what is cached and re-read by the module's
        thread; usage that grew without an invalidation (interims) then counts."""
        import threading
        import time
        import uuid

        from rlm_wificore import background

        e = Engine(Settings(redis_url=stack.redis.url, live_state_ttl_s=1), MAP)
        e.profiles.plan = lambda t, p: PLAN  # time quota 100 s
        user = f"carol-{uuid.uuid4().hex[:8]}"
        redis.set(e.keys.profile(5, user), PROFILE.pack(), ex=60)
        req = {"WiFiCore-Client": "5:1:generic", "User-Name": user, "User-Password": "pw"}
        thread = threading.Thread(target=background._state_loop, args=(e,), daemon=True)
        e.live.refresher_started()
        thread.start()
        try:
            assert e.authorize(dict(req)).rcode == "updated"
            state.put_usage(redis, e.keys, 5, user, time_s=500)  # no invalidation message
            time.sleep(1.1)
            assert e.authorize(dict(req)).rcode == "updated"  # answered from the cached state
            deadline = time.monotonic() + 3
            while e.authorize(dict(req)).reason != "time_quota":
                assert time.monotonic() < deadline, "the state thread never re-read the usage"
                time.sleep(0.05)
            assert e.stats.tiers["redis_state"] >= 1
        finally:
            e.close()
            thread.join(2)


    def test_one_batch_over_several_tenants_reads_each_state(self, stack, redis):
        """The state thread's batch: one script call per tenant (its keys share the
        tenant's slot); each entry gets its own sessions and usage, an absent one none."""
        import time
        import uuid

        from rlm_wificore.cache import NO_STATE

        e = Engine(Settings(redis_url=stack.redis.url), MAP)
        try:
            tag = uuid.uuid4().hex[:8]
            batch = []
            for tenant in (5, 6, 5):
                batch.append((tenant, f"u{len(batch)}-{tag}", _entry_for_test()))
            now = time.time()
            for row, deadline in (("s1:a", now + 60), ("s2:a", now + 60), ("old:a", now - 5)):
                state.put_session(redis, e.keys, 5, batch[0][1], row, deadline)
            state.put_usage(redis, e.keys, 5, batch[0][1], octets=1234, time_s=56)
            state.put_usage(redis, e.keys, 6, batch[1][1], time_s=7)
            e.live.refresh(batch)
            states = [b[2].state for b in batch]
            assert (states[0].sessions, states[0].octets, states[0].time_s) == (2, 1234, 56)
            assert (states[1].sessions, states[1].octets, states[1].time_s) == (0, 0, 7)
            assert states[2] is NO_STATE
            assert all(b[2].state_expires > time.monotonic() for b in batch)
        finally:
            e.close()


def _entry_for_test():
    import time

    from rlm_wificore.cache import Entry
    return Entry(time.monotonic() + 60, PROFILE, PLAN, None)


def test_one_message_drops_the_copies_of_many_subscribers():
    """live.lua's ["L", [[tenant, user], ...]] drops each subscriber it names, and only those."""
    e = engine_reading((0, [b"0", b"0"]), invalidate_during_read=False)
    for user in ("bob", "carol", "dave"):
        e.profiles.entry(1, user)
    e.invalidate(["L", [[1, "bob"], [1, "dave"], [2, "carol"]]])
    assert e.local.peek((1, "bob")) is None and e.local.peek((1, "dave")) is None
    assert e.local.peek((1, "carol")) is not None


def test_an_accounting_on_drops_the_copies_of_that_nas_users_only():
    """live.lua's ["N", [[tenant, nas_id]]] (an Accounting-On/Off) ends the cached live
    states of the tenant's subscribers with a session on that NAS, and only those: each is
    read again at its next use (a miss), the others answer from the process."""
    on7 = engine_reading((1, [b"0", b"0"], [7]), invalidate_during_read=False)
    on7.profiles.entry(1, "bob")
    on7.profiles.entry(2, "bob")  # another tenant's NAS 7
    on8 = engine_reading((1, [b"0", b"0"], [8]), invalidate_during_read=False)
    on7.redis_store.call = on8.redis_store.call
    on7.profiles.entry(1, "carol")
    assert on7.local.peek((1, "carol")).state.nas == (8,)
    on7.invalidate(["N", [[1, 7]]])
    tiers = on7.stats.tiers
    for key, read_again in (((1, "carol"), False), ((2, "bob"), False), ((1, "bob"), True)):
        hits = tiers["process"]
        on7.profiles.entry(*key)
        assert (tiers["process"] == hits) is read_again, key
    # Read again after the Accounting-On: that state is current.
    hits = tiers["process"]
    on7.profiles.entry(1, "bob")
    assert tiers["process"] == hits + 1



def test_an_accounting_on_heard_while_a_state_was_read_ends_that_state():
    """The NAS's ["N", ...] arrives while the subscriber's state (a session on that NAS,
    read before the Accounting-On was applied) is on its way back: that state answers the
    lookup it was read for, and the next lookup reads again, not answered from it."""
    e = engine_reading((1, [b"0", b"0"], [7]), invalidate_during_read=False)
    read = e.redis_store.call

    def racing(fn):
        reply = read(fn)
        e.invalidate(["N", [[1, 7]]])  # heard after the read began, before it returned
        return reply
    e.redis_store.call = racing
    assert e.profiles.entry(1, "bob").state.nas == (7,)
    e.redis_store.call = read
    hits = e.stats.tiers["process"]
    e.profiles.entry(1, "bob")
    assert e.stats.tiers["process"] == hits


def test_the_kept_reply_follows_vendor_live_state_and_plan():
    """The reply rendered last is kept on the entry: reused for the same vendor, rendered
    again for another vendor or a new live state; a static one is shared by a plan's
    subscribers (one object)."""
    from rlm_wificore.cache import LiveState

    e = engine_reading((0, [b"0", b"0"]), invalidate_during_read=False)
    rated = Plan(1, 1000, 2000, None, None, 60, None, 100, 1, None)  # time quota 100 s
    e.profiles.plan = lambda t, p: rated

    def reply(user, vendor):
        r = e.authorize({"WiFiCore-Client": f"5:1:{vendor}", "User-Name": user, "User-Password": "pw"})
        assert r.rcode == "updated", r
        return dict(r.reply)
    first = reply("bob", "mikrotik")
    assert first["Mikrotik-Rate-Limit"] == "1000k/2000k" and first["Session-Timeout"] == "100"
    assert reply("bob", "mikrotik") == first
    wispr = reply("bob", "wispr")
    assert "Mikrotik-Rate-Limit" not in wispr and wispr["WISPr-Bandwidth-Max-Up"] == "1000000"
    e.local.peek((5, "bob")).state = LiveState(0, 0, 40)  # the state thread read new usage
    assert reply("bob", "wispr")["Session-Timeout"] == "60"
    assert reply("bob", "mikrotik")["Session-Timeout"] == "60"

    e.profiles.plan = lambda t, p: PLAN.__class__(2, 1000, 2000, 3600, None, 60, None, None, 1, None)
    a = e.authorize({"WiFiCore-Client": "5:1:mikrotik", "User-Name": "ann", "User-Password": "pw"})
    b = e.authorize({"WiFiCore-Client": "5:1:mikrotik", "User-Name": "ben", "User-Password": "pw"})
    assert a.reply == b.reply and dict(a.reply)["Session-Timeout"] == "3600"
    assert e.local.peek((5, "ann")).reply is e.local.peek((5, "ben")).reply


def test_hook_records_go_on_the_wire_in_field_order(tmp_path):
    """The hooks build records as value lists; read back by name, every value is where
    wire.ACCT_FIELDS / AUTH_FIELDS say it is."""
    import struct

    from rlm_wificore import records
    from rlm_wificore.spool import Spool
    from wificore import wire

    req = {"Acct-Status-Type": "Interim-Update", "Acct-Session-Id": "abc", "User-Name": "bob",
           "Acct-Session-Time": "60", "Acct-Input-Octets": "5", "Acct-Input-Gigawords": "1",
           "Acct-Output-Octets": "7", "Acct-Input-Packets": "3", "Acct-Output-Packets": "4",
           "Calling-Station-Id": "AA-BB", "Framed-IP-Address": "10.0.0.9", "NAS-Port": "12"}
    status, values = records.acct_record(req, tenant_id=7, nas_id=3, interim_s=300, arrival_ts=1.9e9,
                                         record_id="r1")
    kind, f = wire.unpack(wire.pack_values(wire.KIND_ACCT, values))
    assert status == f["status"] == "interim" and kind == wire.KIND_ACCT
    assert (f["tenant_id"], f["nas_id"], f["username"], f["acct_session_id"]) == (7, 3, "bob", "abc")
    assert (f["session_time_s"], f["input_octets"], f["output_octets"]) == (60, 2**32 + 5, 7)
    assert (f["input_packets"], f["output_packets"], f["calling_station_id"]) == (3, 4, "AA-BB")
    assert (f["framed_ip"], f["nas_port"], f["interim_s"], f["record_id"]) == ("10.0.0.9", "12", 300, "r1")
    assert f["arrival_ts"] == f["event_ts"] == 1.9e9 and f["session_key"]

    e = Engine(Settings(), MAP)
    e.spool = Spool(tmp_path)
    try:
        e.sink.log_auth({"User-Password": "x", "Calling-Station-Id": "CC-DD"}, 7, 3, "bob",
                    accepted=False, reason="bad_password")
        data = e.spool.read_span(4096).data
        (n,) = struct.unpack_from("<I", data)
        kind, f = wire.unpack(data[4:4 + n])
    finally:
        e.spool.close()
    assert kind == wire.KIND_AUTH and "x" not in f.values()
    assert (f["tenant_id"], f["nas_id"], f["username"], f["calling_station_id"]) == (7, 3, "bob", "CC-DD")
    assert (f["result"], f["reason"], f["method"]) == ("reject", "bad_password", "pap")
    assert f["event_id"] and f["ts"] > 1.7e9


def test_an_accounting_record_carries_the_tenants_local_day(tmp_path):
    """The accounting hook puts the local day of the record's event time in the tenant's
    zone in the record (quota periods); a tenant it has not seen is looked up once (its
    status and zone), and a record whose zone cannot be had carries none."""
    import datetime as dt
    import struct
    import zoneinfo

    from rlm_wificore.spool import LEN_MASK, Spool
    from wificore import quota, wire

    e = Engine(Settings(), MAP)
    looked_up = []

    def tenant_status(t):
        looked_up.append(t)
        if t == 5:
            e.profiles.zones[t] = quota.clock("Pacific/Kiritimati")
        return "active"
    e.profiles.tenant_status = tenant_status
    e.spool = Spool(tmp_path)
    import time
    ev = int(time.time()) - 3600  # an hour ago (within the skew a NAS's clock may have)
    req = {"Acct-Status-Type": "Interim-Update", "Acct-Session-Id": "abc", "User-Name": "bob",
           "Acct-Session-Time": "60", "Event-Timestamp": str(ev), "WiFiCore-Event-Time": str(ev)}
    try:
        for client in ("5:1:generic", "5:1:generic", "6:1:generic"):
            assert e.accounting({**req, "WiFiCore-Client": client}).rcode == "ok"
        data, days = e.spool.read_span(1 << 16).data, []
        while data:
            (n,) = struct.unpack_from("<I", data)
            n &= LEN_MASK  # the bits above are the frame's bucket tag
            days.append(wire.unpack(data[4:4 + n])[1]["local_day"])
            data = data[4 + n:]
    finally:
        e.spool.close()
    want = quota.date_day(dt.datetime.fromtimestamp(ev, zoneinfo.ZoneInfo("Pacific/Kiritimati")).date())
    assert want == quota.date_day(dt.datetime.fromtimestamp(ev + 14 * 3600, dt.UTC).date())  # UTC+14
    assert days == [want, want, None]
    assert looked_up == [5, 6]  # once for tenant 5: its zone is kept


def test_config_check_is_read_from_radiusd_command_line():
    """`freeradius -C` (alone or grouped) means a configuration check; -t (no threads,
    as bin/stack runs radiusd) takes no value, and a value such as a folder named -C
    is not the option."""
    from wificore.settings import is_config_check

    def check(line: str) -> bool:
        return is_config_check([w.encode() for w in ["freeradius", *line.split()]])

    assert check("-C -d raddb") and check("-XC -d raddb") and check("-t -C -d raddb")
    assert check("-tfC") and check("-d raddb -xxC")
    assert not check("-t -f -d raddb -l stdout") and not check("-f -d raddb")
    assert not check("-d -C -f") and not check("-fd -C") and not check("-d/etc/raddbC -f")
    assert not check("-l -Cfile -f")


def test_a_shard_without_the_tenant_is_no_answer_and_nothing_is_cached(world, redis):
    """A process whose map is behind a tenant move reads the source after the move's
    cleanup: the tenant is not there. Its login gets "try again" and nothing is cached
    in Redis for the other processes (before: "unknown user" for negative_ttl_s, and the
    tenant's status with UTC for its time zone for profile_ttl_s). Real Redis and shards;
    tenant 7 is in shard1's range and exists nowhere."""
    import uuid

    from wificore.errors import StoreUnavailable

    prefix = f"t{uuid.uuid4().hex[:8]}"
    e = Engine(Settings(redis_url=world.redis.url, shard_map=world.shard_map, key_prefix=prefix),
               ShardMap.load(world.shard_map))
    try:
        tenant, user = 7, "nobody-here"
        assert e.profiles.tenant_status(tenant) == "unknown"
        assert redis.get(e.keys.tenant(tenant)) is None and redis.get(e.keys.tenant_zone(tenant)) is None
        try:
            e.profiles.entry(tenant, user)
        except StoreUnavailable as exc:
            assert "not on the shard" in str(exc)
        else:
            raise AssertionError("an answer from a shard that does not hold the tenant")
        assert redis.get(e.keys.profile(tenant, user)) is None
        req = {"WiFiCore-Client": f"{tenant}:1:generic", "User-Name": user, "User-Password": "pw"}
        got = e.authorize(req)
        assert (got.rcode, got.reason) == ("reject", "backend_unavailable")
        # A known tenant's unknown user is still an unknown user, cached.
        gone = f"gone-{uuid.uuid4().hex[:8]}"
        assert e.profiles.entry(1, gone).profile is None
        assert redis.get(e.keys.profile(1, gone)) is not None
    finally:
        e.close()
