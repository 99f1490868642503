"""Two Redis roles: a cache Redis that may evict and a state Redis that must not.

A second redis-server runs with ``maxmemory-policy allkeys-lru``: radiusd refuses to
start with it as the state Redis (or as the one Redis), starts with it as the cache
Redis, and then every key lands in its role's Redis. batch_writer refuses it too.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import msgpack
import pytest
import redis as redis_lib

from stack.servers import RADDB, Radiusd, RedisServer, free_port, venv_bin
from tests import state
from tests.conftest import TENANT_A
from tests.radius import send
from tests.test_accounting import acct_packet
from tests.test_batch_writer import writer_env
from tests.test_spool_disk import raddb_with
from wificore import roles
from wificore.errors import ConfigError
from wificore.keys import Keys
from wificore.settings import Settings


@pytest.fixture(scope="module")
def lru_redis(world):
    """A second Redis that evicts (allkeys-lru), as a cache Redis is run."""
    server = RedisServer(world.state, free_port(), name=f"redis-lru-{uuid.uuid4().hex[:6]}")
    server.start()
    client = redis_lib.Redis.from_url(server.url)
    client.config_set("maxmemory", "64mb")
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        yield server
    finally:
        client.close()
        server.stop()


def radiusd_with(world, name: str, *, redis_url: str | None = None, raddb=RADDB, **env: str) -> Radiusd:
    return Radiusd(world.state / name, auth_port=free_port(), acct_port=free_port(),
                   shard_map=world.shard_map, redis_url=redis_url or world.redis.url,
                   name=name, extra_env=env, raddb=raddb)


class TestSettings:
    def test_each_role_falls_back_to_redis_url(self):
        s = Settings(redis_url="redis://one:1/0")
        assert roles.redis_url(s, roles.CACHE) == roles.redis_url(s, roles.STATE) == "redis://one:1/0"
        s = Settings(redis_url="redis://one:1/0", cache_redis_url="redis://cache:2/0")
        assert roles.redis_url(s, roles.CACHE) == "redis://cache:2/0"
        assert roles.redis_url(s, roles.STATE) == "redis://one:1/0"
        assert Settings.from_mapping({"state_redis_url": ""}).state_redis_url == ""
        with pytest.raises(ConfigError, match="wificore.state_redis_url: invalid scheme 'http'"):
            Settings.from_mapping({"state_redis_url": "http://x/"})

    def test_the_check_names_the_setting(self, lru_redis, redis):
        """noeviction passes; anything else is one line naming the setting that points there."""
        lru = redis_lib.Redis.from_url(lru_redis.url)
        try:
            roles.check_state_redis(redis, Settings())  # the stack's Redis: noeviction
            with pytest.raises(ConfigError) as err:
                roles.check_state_redis(lru, Settings(state_redis_url=lru_redis.url))
            assert str(err.value).startswith("wificore.state_redis_url: the state Redis runs "
                                             "maxmemory-policy allkeys-lru;")
            assert "\n" not in str(err.value)
            with pytest.raises(ConfigError, match="^WIFICORE_REDIS_URL: "):
                roles.check_state_redis(lru, Settings(redis_url=lru_redis.url), source="env")
        finally:
            lru.close()


class TestEngineCheck:
    def _engine(self, settings):
        from rlm_wificore.engine import Engine
        from wificore.shardmap import ShardMap
        return Engine(settings, ShardMap.from_dict({"shard": [{"name": "s", "first_tenant": 1, "last_tenant": 9,
                                                               "dsn": "postgresql://x@127.0.0.1:1/x"}]}))

    def test_at_start_refused_later_logged(self, lru_redis):
        """At start an evicting state Redis is a ConfigError; found later (Redis did not
        answer at start, the forwarder asks once it does) it is logged and counted."""
        e = self._engine(Settings(redis_url=lru_redis.url))
        try:
            with pytest.raises(ConfigError, match="^wificore.redis_url: "):
                e.check_state_redis()
            e.check_state_redis(at_start=False)
            assert e.stats.errors["state_redis_evicts"] == 1 and e.state_redis_checked
        finally:
            e.close()

    def test_unreachable_at_start_is_not_fatal(self):
        e = self._engine(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
        try:
            e.check_state_redis()
            assert not e.state_redis_checked
        finally:
            e.close()


class TestRadiusd:
    @pytest.mark.parametrize("setting", ["state_redis_url", "redis_url"])
    def test_refuses_an_evicting_state_redis(self, world, lru_redis, setting):
        """radiusd does not start with an evicting Redis in the state role; its log says why."""
        env = ({"WIFICORE_STATE_REDIS_URL": lru_redis.url} if setting == "state_redis_url"
               else {"redis_url": lru_redis.url})
        r = radiusd_with(world, f"radiusd-lru-{setting}", **env)
        try:
            with pytest.raises(RuntimeError, match="exited"):
                r.start(timeout_s=60)
        finally:
            r.stop()
        log = r.logfile.read_text(errors="replace")
        assert (f"rlm_wificore: invalid configuration: wificore.{setting}: the state Redis runs "
                "maxmemory-policy allkeys-lru") in log, log[-3000:]

    def test_an_evicting_cache_redis_and_every_key_in_its_role(self, world, lru_redis, subscriber, redis):
        """With the evicting Redis as the cache: radiusd starts, logins and accounting work, and
        profiles, plans and unknown-user entries are in the cache Redis only, while live
        sessions, usage, delta bases, streams and the NAS directory are in the state Redis only."""
        prefix = "rr" + uuid.uuid4().hex[:8]
        name = f"radiusd-roles-{prefix}"
        raddb = raddb_with(world.state / f"raddb-{prefix}", key_prefix=prefix)
        r = radiusd_with(world, name, WIFICORE_CACHE_REDIS_URL=lru_redis.url, raddb=raddb)
        cache = redis_lib.Redis.from_url(lru_redis.url)
        keys = Keys(prefix)
        try:
            r.start(timeout_s=60)
            user = subscriber()
            ans = send(r.auth_port, "auth", TENANT_A[2], {"User-Name": user, "User-Password": "pw-123456"},
                       source=TENANT_A[1])
            assert ans.accepted, f"{ans.output}\n{r.log_tail()}"
            ans = send(r.auth_port, "auth", TENANT_A[2], {"User-Name": f"nobody-{prefix}",
                                                          "User-Password": "x"}, source=TENANT_A[1])
            assert ans.code == "Access-Reject"
            for status, octets in (("Start", 0), ("Interim-Update", 1000)):
                ans = send(r.acct_port, "acct", TENANT_A[2], acct_packet(user, "8c000001", status, inp=octets),
                           source=TENANT_A[1])
                assert ans.code == "Accounting-Response", f"{ans.output}\n{r.log_tail()}"
            deadline = time.monotonic() + 15
            while state.usage_field(redis, keys, TENANT_A[0], user, "octets") != b"1000":
                assert time.monotonic() < deadline, r.log_tail()
                time.sleep(0.1)

            def names(client) -> set[str]:
                return {k.decode() for k in client.scan_iter(match=f"{prefix}:*", count=1000)}
            in_cache, in_state = names(cache), names(redis)
            t = TENANT_A[0]
            cache_kinds = (":u:", ":plan:", ":tenant", ":tz", f"{prefix}:nas:")
            assert {keys.profile(t, user), keys.profile(t, f"nobody-{prefix}")} <= in_cache
            # The NAS directory is bounded state (an evicted one answers no new client).
            assert keys.nas_directory in in_state, in_state
            assert any(":plan:" in k for k in in_cache), in_cache
            assert all(any(kind in k for kind in cache_kinds) for k in in_cache), in_cache
            assert keys.subscriber(t, user) in in_state, in_state
            assert any(k.endswith(":stream") for k in in_state), in_state
            assert not any(any(kind in k for kind in cache_kinds) for k in in_state), in_state

            # A change committed in PostgreSQL deletes the copy in the cache Redis.
            world.admin("subscriber", "set", "--tenant", str(t), user, "--status", "suspended")
            deadline = time.monotonic() + 10
            while cache.exists(keys.profile(t, user)):
                assert time.monotonic() < deadline, f"cached profile not invalidated\n{r.log_tail()}"
                time.sleep(0.1)
        finally:
            cache.close()
            assert r.stop() == 0, r.log_tail()


    def test_liveness_of_a_session_uses_its_plan_with_the_roles_split(self, world, lru_redis, subscriber,
                                                                     redis):
        """A subscriber on a 3,600 s-interim plan logs in through one radiusd process and
        its Start reaches another, which never saw it (it sends the default, 300 s). The
        state Redis has no cached profile or plan to read: the session's liveness is the
        plan's all the same (before: 300 s, closed as stale after ~12 minutes)."""
        prefix = "rr" + uuid.uuid4().hex[:8]
        raddb = raddb_with(world.state / f"raddb-{prefix}", key_prefix=prefix)
        t = TENANT_A[0]
        plan = f"hour-{prefix}"
        world.admin("plan", "add", "--tenant", str(t), "--name", plan, "--interim-interval-s", "3600")
        user = subscriber(plan=plan)
        keys = Keys(prefix)
        procs = [radiusd_with(world, f"radiusd-iv{i}-{prefix}", WIFICORE_CACHE_REDIS_URL=lru_redis.url, raddb=raddb)
                 for i in range(2)]
        try:
            for r in procs:
                r.start(timeout_s=60)
            login, other = procs
            ans = send(login.auth_port, "auth", TENANT_A[2], {"User-Name": user, "User-Password": "pw-123456"},
                       source=TENANT_A[1])
            assert ans.accepted, f"{ans.output}\n{login.log_tail()}"
            assert "Acct-Interim-Interval = 3600" in ans.output, ans.output

            def auth_logged() -> bool:
                return any(user.encode() in f[b"d"] for s in redis.scan_iter(match=f"{prefix}:{{b*}}:stream")
                           for _id, f in redis.xrange(s))
            deadline = time.monotonic() + 15
            while not auth_logged():
                assert time.monotonic() < deadline, login.log_tail()
                time.sleep(0.1)
            ans = send(other.acct_port, "acct", TENANT_A[2], acct_packet(user, "8d000001", "Start"),
                       source=TENANT_A[1])
            assert ans.code == "Accounting-Response", f"{ans.output}\n{other.log_tail()}"
            deadline = time.monotonic() + 15
            while not state.sessions(redis, keys, t, user):
                assert time.monotonic() < deadline, other.log_tail()
                time.sleep(0.1)
            # The session keeps the plan's interval (S_IV) and its deadline (S_DEADLINE):
            # live until two plan interims and the grace have passed, not two default ones.
            (sess,) = [msgpack.unpackb(v) for f, v in redis.hgetall(keys.subscriber(t, user)).items() if f != b"u"]
            assert sess[11] == 3600, sess
            assert sess[5] > time.time() + 3600, sess[5] - time.time()
            assert state.sessions(redis, keys, t, user, now=time.time() + 3600) == 1
        finally:
            for r in procs:
                assert r.stop() == 0, r.log_tail()

class TestBatchWriter:
    def test_refuses_an_evicting_state_redis(self, world, lru_redis):
        """batch_writer exits with status 2 and one line naming the variable."""
        env = {**writer_env(world, "rw" + uuid.uuid4().hex[:8]), "WIFICORE_STATE_REDIS_URL": lru_redis.url}
        out = subprocess.run([venv_bin("wificore-batch-writer")], env={**os.environ, **env},
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, out.stdout + out.stderr
        assert ("wificore-batch-writer: WIFICORE_STATE_REDIS_URL: the state Redis runs maxmemory-policy "
                "allkeys-lru") in out.stderr, out.stderr
