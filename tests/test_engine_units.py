"""Engine logic without servers: the cache must never keep what was invalidated meanwhile."""

from __future__ import annotations

from rlm_wificore.engine import Engine
from rlm_wificore.profile import Plan, Profile
from rlm_wificore.settings import Settings
from rlm_wificore.shardmap import ShardMap

MAP = ShardMap.from_dict({"shard": [{"name": "s", "first_tenant": 1, "last_tenant": 9,
                                     "dsn": "postgresql://x@127.0.0.1:1/x"}]})
PROFILE = Profile(1, "pppoe", "cleartext", "pw", "active", None, None, None, 1)
PLAN = Plan(1, None, None, None, None, 60, None, 100, 1, None)


def engine_reading(state_during_read, invalidate_during_read: bool) -> Engine:
    e = Engine(Settings(), MAP)
    e._plan = lambda t, p: PLAN  # plans are not what is tested here

    def fake_call(fn):
        if invalidate_during_read:
            e.invalidate(["l", 1, "bob"])  # a Stop forwarded while this lookup waited on Redis
        return (PROFILE.pack(), *state_during_read)
    e._redis_call = fake_call
    return e


class TestInvalidationRace:
    def test_lookup_not_cached_when_invalidated_while_reading(self):
        """A live state read before an invalidation arrived is used once, not cached."""
        e = engine_reading((0, [b"0", b"0"]), invalidate_during_read=True)
        entry = e._entry(1, "bob")
        assert entry.state.time_s == 0
        assert e.local.peek((1, "bob")) is None

    def test_lookup_cached_when_quiet(self):
        """Without an invalidation in between, the entry is kept in process."""
        e = engine_reading((0, [b"0", b"0"]), invalidate_during_read=False)
        e._entry(1, "bob")
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
        e._plan = lambda t, p: PLAN  # time quota 100 s
        user = f"carol-{uuid.uuid4().hex[:8]}"
        redis.set(e.keys.profile(5, user), PROFILE.pack(), ex=60)
        req = {"WiFiCore-Client": "5:1:generic", "User-Name": user, "User-Password": "pw"}
        thread = threading.Thread(target=background._state_loop, args=(e,), daemon=True)
        e.state_refresher = True
        thread.start()
        try:
            assert e.authorize(dict(req)).rcode == "updated"
            redis.hset(e.keys.usage(5, user), "time_s", 500)  # no invalidation message
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


def test_one_message_drops_the_copies_of_many_subscribers():
    """live.lua's ["L", [[tenant, user], ...]] drops each subscriber it names, and only those."""
    e = engine_reading((0, [b"0", b"0"]), invalidate_during_read=False)
    for user in ("bob", "carol", "dave"):
        e._entry(1, user)
    e.invalidate(["L", [[1, "bob"], [1, "dave"], [2, "carol"]]])
    assert e.local.peek((1, "bob")) is None and e.local.peek((1, "dave")) is None
    assert e.local.peek((1, "carol")) is not None

