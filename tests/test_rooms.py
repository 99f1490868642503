"""Each room of the engine on its own, without servers (pure logic; stores are stand-ins)."""

from __future__ import annotations

import collections
import dataclasses
import struct
import time

import msgpack
import pytest
import redis as redis_lib

from rlm_wificore import policy
from rlm_wificore.cache import Entry, LiveState
from rlm_wificore.credentials import VerifiedCredentials
from rlm_wificore.directory import Directory, parse_client
from rlm_wificore.invalidation import Generation, Invalidation
from rlm_wificore.live import STATE_RETRY_S, LiveStates
from rlm_wificore.profiles import Profiles
from rlm_wificore.sink import Sink
from rlm_wificore.spool import Spool
from rlm_wificore.stats import Stats
from rlm_wificore.store import RedisStore
from wificore import wire
from wificore.errors import StoreUnavailable
from wificore.keys import Keys
from wificore.profile import Nas, Plan, Profile
from wificore.settings import Settings
from wificore.shardmap import ShardMap

MAP = ShardMap.from_dict({"shard": [{"name": "s", "first_tenant": 1, "last_tenant": 9,
                                     "dsn": "postgresql://x@127.0.0.1:1/x"}]})
BCRYPT = Profile(1, "pppoe", "bcrypt", "$2y$10$abcdefghijklmnopqrstuv", "active", None, None, None, 1)
CLEAR = Profile(2, "pppoe", "cleartext", "pw", "active", None, None, None, 1)
PLAN = Plan(1, None, None, None, None, 60, None, None, 1, None)


class DownClient:
    """A Redis client whose every call fails as a dead server's would."""

    def __getattr__(self, name):
        def fail(*_a, **_k):
            raise redis_lib.ConnectionError("connection refused")
        return fail

    def pipeline(self, **_k):
        return self


def entry(profile=CLEAR, plan=PLAN) -> Entry:
    now = time.monotonic()
    return Entry(now + 60, profile, plan, LiveState(), now + 60)


class TestRedisStore:
    def test_a_failure_opens_the_breaker_and_is_counted(self):
        """A connection error becomes StoreUnavailable, counts as a redis error, and the next
        call fails fast without touching the client."""
        errors: collections.Counter = collections.Counter()
        store = RedisStore(DownClient(), errors)
        with pytest.raises(StoreUnavailable, match="redis: connection refused"):
            store.call(lambda r: r.get("k"))
        touched = []
        with pytest.raises(StoreUnavailable, match="redis is down"):
            store.call(lambda r: touched.append(1))
        assert errors["redis"] == 1 and not touched and store.breaker.is_open

    def test_a_success_closes_the_breaker(self):
        """After the retry interval one call probes again; its success closes the breaker."""
        store = RedisStore(DownClient(), collections.Counter())
        store.breaker.fail()
        store.breaker.open_until = 0.0  # the retry interval has passed
        assert store.call(lambda r: "pong") == "pong" and not store.breaker.is_open


class TestDirectory:
    def directory(self) -> Directory:
        return Directory(MAP, shards=None, redis=None, keys=Keys("t"))

    def test_client_shortname_is_parsed_once(self):
        """'<tenant>:<nas>:<vendor>' becomes numbers, kept per shortname; the kind check is
        on unless the shortname ends in ':kind-off'."""
        d = self.directory()
        assert d.lookup({"WiFiCore-Client": "7:3:mikrotik"}) == (7, 3, "mikrotik", True)
        assert d.lookup({"WiFiCore-Client": "7:4:cisco:kind-off"}) == (7, 4, "cisco", False)
        assert d.clients == {"7:3:mikrotik": (7, 3, "mikrotik", True),
                             "7:4:cisco:kind-off": (7, 4, "cisco", False)}

    def test_a_nas_shortname_says_when_its_kind_check_is_off(self):
        """Nas.shortname round-trips through parse_client; a strict NAS's directory entry
        keeps the six fields an older module reads."""
        strict = Nas(7, 3, "10.0.0.1", "s", "mikrotik", True)
        off = dataclasses.replace(strict, kind_check="off")
        assert parse_client(strict.shortname) == (7, 3, "mikrotik", True)
        assert parse_client(off.shortname) == (7, 3, "mikrotik", False)
        assert len(msgpack.unpackb(strict.pack())) == 6 and Nas.unpack(strict.pack()) == strict
        assert Nas.unpack(off.pack()) == off

    def test_unknown_or_malformed_client_is_none(self):
        """No WiFiCore-Client, or one that is not a shortname radiusd set, names no NAS."""
        d = self.directory()
        assert d.lookup({}) is None and d.lookup({"WiFiCore-Client": "x:y"}) is None
        assert d.clients == {}

    def test_only_mapped_tenants_are_owned(self):
        """A NAS row counts only for a tenant the shard map places."""
        d = self.directory()
        assert d.owns(5) and not d.owns(10)


#: What NAS send with a login (benchmarks/compare.py _common for MikroTik; CoovaChilli,
#: Cisco): the kind each request is for, None where it does not say.
SERVICE_REQUESTS = [
    ({"NAS-Port-Type": "Ethernet", "Service-Type": "Framed-User", "Framed-Protocol": "PPP"}, "pppoe"),
    ({"NAS-Port-Type": "Virtual", "Service-Type": "Framed-User", "Framed-Protocol": "PPP"}, "pppoe"),
    ({"NAS-Port-Type": "PPPoEoVLAN", "Service-Type": "Framed-User"}, "pppoe"),
    ({"NAS-Port-Type": "Wireless-802.11"}, "hotspot"),
    ({"NAS-Port-Type": "Wireless-802.11", "Service-Type": "Login-User"}, "hotspot"),
    ({"NAS-Port-Type": "Ethernet", "Service-Type": "Login-User"}, "hotspot"),
    ({"NAS-Port-Type": "Wireless-Other", "Service-Type": "Framed-User"}, "hotspot"),
    ({"NAS-Port-Type": "Wireless-802.11", "Framed-Protocol": "PPP"}, "pppoe"),
    ({}, None),
    ({"NAS-Port-Type": "Ethernet"}, None),
    ({"NAS-Port-Type": "Ethernet", "Service-Type": "Framed-User"}, None),
]


class TestServiceKind:
    @pytest.mark.parametrize("attrs,kind", SERVICE_REQUESTS)
    def test_the_kind_a_request_is_for(self, attrs, kind):
        assert policy.service_kind(attrs) == kind

    def test_the_other_kind_is_wrong_service_and_none_passes(self):
        hotspot = dataclasses.replace(CLEAR, kind="hotspot")
        check = lambda p, s: policy.check(p, PLAN, None, now=0.0, calling_station_id=None, service=s)  # noqa: E731
        assert check(CLEAR, "hotspot") == "wrong_service" and check(hotspot, "pppoe") == "wrong_service"
        assert check(CLEAR, "pppoe") is None and check(hotspot, "hotspot") is None
        assert check(CLEAR, None) is None and check(hotspot, None) is None


class TestCachedForms:
    def test_profiles_and_plans_cached_before_ipv6_still_read(self):
        """A cached profile of 9 fields and a plan of 10 (before the IPv6 ones were appended)
        read with those unset; a profile without IPv6 is still packed as 9."""
        assert len(msgpack.unpackb(CLEAR.pack())) == 9 and Profile.unpack(CLEAR.pack()) == CLEAR
        v6 = dataclasses.replace(CLEAR, framed_ipv6_prefix="2001:db8::/64")
        assert Profile.unpack(v6.pack()) == v6 and msgpack.unpackb(v6.pack())[8] == CLEAR.plan_id
        old_plan = msgpack.packb(list(dataclasses.astuple(PLAN))[:10])
        assert Plan.unpack(old_plan) == PLAN and PLAN.framed_ipv6_pool is None


class TestVerifiedCredentials:
    def test_an_accepted_hashed_credential_is_remembered(self):
        """After remember(), the same tenant, user, password and stored hash are verified."""
        c = VerifiedCredentials(Settings())
        c.remember(1, "bob", "secret", BCRYPT)
        assert c.is_verified(1, "bob", "secret", BCRYPT.password)
        assert not c.is_verified(1, "bob", "other", BCRYPT.password)
        assert not c.is_verified(2, "bob", "secret", BCRYPT.password)
        assert not c.is_verified(1, "bob", "secret", "$2y$10$a-new-password-hash")

    def test_cleartext_profiles_and_a_zero_ttl_keep_nothing(self):
        """Cleartext passwords are compared in authorize; ttl 0 turns the cache off."""
        c = VerifiedCredentials(Settings())
        c.remember(1, "bob", "pw", CLEAR)
        c.remember(1, "bob", "pw", None)
        assert len(c) == 0
        off = VerifiedCredentials(Settings(credential_cache_ttl_s=0))
        off.remember(1, "bob", "secret", BCRYPT)
        assert len(off) == 0 and not off.is_verified(1, "bob", "secret", BCRYPT.password)

    def test_an_expired_credential_is_forgotten(self):
        """Past its expiry an entry no longer verifies and is removed."""
        c = VerifiedCredentials(Settings())
        c.remember(1, "bob", "secret", BCRYPT)
        for digest in c._verified:
            c._verified[digest] = time.monotonic() - 1
        assert not c.is_verified(1, "bob", "secret", BCRYPT.password) and len(c) == 0


class TestLiveStates:
    def live(self, client=None) -> LiveStates:
        stats = Stats()
        client = client or DownClient()
        return LiveStates(Settings(), Keys("t"), RedisStore(client, stats.errors), client, stats,
                          Generation())

    def test_due_states_are_queued_while_the_state_thread_runs(self):
        """With the refresher started, a due state is queued (not read) and not queued again
        before STATE_RETRY_S."""
        live = self.live()
        live.refresher_started()
        e = entry()
        before = time.monotonic()
        live.due(1, "bob", e)
        assert e.state_expires >= before + STATE_RETRY_S and e.state is not None
        assert live.next_batch(500) == [(1, "bob", e)] and live.next_batch(500) == []

    def test_without_the_thread_the_hook_reads_it_and_fails_open(self):
        """Without the refresher the hook re-reads the state; with Redis down it becomes
        unknown (policy fails open) and is asked again after STATE_RETRY_S."""
        live = self.live()
        e = entry()
        live.due(1, "bob", e)
        assert e.state is None and e.state_expires > time.monotonic()
        assert live.stats.errors["redis_state"] == 1 and live.next_batch(500) == []


class TestProfiles:
    def test_state_redis_down_does_not_send_a_cached_profile_to_the_shard(self):
        """Two Redis roles (cache and state): the state Redis down, the cache Redis up.
        The profile comes from the cache Redis with its live state unknown (fail open,
        due again soon); the shard is not asked (no stampede while the state Redis is out)."""
        class CacheClient:
            def get(self, _key):
                return CLEAR.pack()

            def ping(self):
                return True

        class NoShard:
            asked = 0

            def fetchone(self, *_a):
                NoShard.asked += 1
                raise AssertionError("the shard was asked for a profile the cache Redis holds")

        stats, generation = Stats(), Generation()
        live = LiveStates(Settings(), Keys("t"), RedisStore(DownClient(), stats.errors),
                          DownClient(), stats, generation)
        profiles = Profiles(Settings(), Keys("t"), RedisStore(CacheClient(), stats.errors,
                                                                name="redis-cache"),
                            NoShard(), stats, generation, live)
        profiles.plan = lambda _t, _p: PLAN
        e = profiles.entry(1, "bob")
        assert e.profile == CLEAR and e.plan is PLAN and e.state is None
        assert e.state_expires <= time.monotonic() + 1.0
        assert NoShard.asked == 0 and stats.tiers["redis"] == 1 and stats.errors["redis"] == 1
        assert profiles.local.peek((1, "bob")) is e


class TestInvalidation:
    def rooms(self):
        stats = Stats()
        generation = Generation()
        store = RedisStore(DownClient(), stats.errors)
        live = LiveStates(Settings(), Keys("t"), store, DownClient(), stats, generation)
        profiles = Profiles(Settings(), Keys("t"), store, None, stats, generation, live)
        for key, profile in (((1, "bob"), CLEAR), ((1, "carol"), BCRYPT), ((2, "dave"), CLEAR)):
            profiles.local.put(key, entry(profile))
        profiles.plans[(1, 1)] = (time.monotonic() + 60, PLAN)
        return generation, profiles, Invalidation(generation, profiles, Keys("t"), DownClient())

    def test_each_message_drops_what_it_names(self):
        """'s' drops one subscriber, 'p' a plan and its subscribers of that tenant, 't' a
        tenant; each message bumps the generation."""
        generation, profiles, inval = self.rooms()
        inval.apply(["s", 1, "bob"])
        assert profiles.local.peek((1, "bob")) is None and len(profiles.local) == 2
        inval.apply(["p", 1, 1])
        assert profiles.local.peek((1, "carol")) is None and (1, 1) not in profiles.plans
        assert profiles.local.peek((2, "dave")) is not None
        inval.apply(["t", 2])
        assert profiles.local.peek((2, "dave")) is None and generation.value == 3
        # carol's entry is dead but held until evicted (a plan drop is O(1), no scan).
        assert len(profiles.local) == 1

    def test_channel_messages_are_json_and_bad_ones_raise(self):
        """A channel message is JSON (bytes or str); a bad one raises ValueError."""
        _g, profiles, inval = self.rooms()
        inval.apply_channel_message(b'["s", 1, "bob"]')
        assert profiles.local.peek((1, "bob")) is None
        with pytest.raises(ValueError):
            inval.apply_channel_message(b"not json")

    def test_resets(self):
        """reset_all forgets subscribers and plans; reset_subscribers keeps the plans."""
        generation, profiles, inval = self.rooms()
        inval.reset_subscribers()
        assert len(profiles.local) == 0 and profiles.plans and generation.value == 1
        inval.reset_all()
        assert not profiles.plans and generation.value == 2

    def test_a_shard_notification_is_applied_even_if_redis_is_down(self):
        """A NOTIFY drops the in-process copy even when it cannot be announced."""
        _g, profiles, inval = self.rooms()
        inval.apply_db_notification('["s", 1, "bob"]')
        assert profiles.local.peek((1, "bob")) is None


class TestSink:
    def test_without_a_spool(self):
        """No spool: an auth-log record is counted as dropped; accounting is refused."""
        sink = Sink(Stats())
        sink.log_auth({}, 1, 2, "bob", accepted=True, reason="ok")
        assert sink.stats.errors["authlog_no_spool"] == 1
        with pytest.raises(StoreUnavailable):
            sink.accounting({"Acct-Status-Type": "Start"}, 1, 2, 300)

    def test_a_bad_accounting_request_is_kept_as_invalid(self, tmp_path):
        """A request that cannot be normalised is still spooled (kind 'invalid'), without
        any password attribute."""
        sink = Sink(Stats())
        sink.spool = Spool(tmp_path)
        try:
            kind = sink.accounting({"Acct-Status-Type": "Bogus", "User-Password": "x"}, 1, 2, 300)
            data = sink.spool.read_span(4096).data
        finally:
            sink.spool.close()
        (n,) = struct.unpack_from("<I", data)
        _kind, fields = wire.unpack(data[4:4 + n])
        assert kind == "invalid" and fields["invalid"] and "User-Password" not in fields["raw"]
