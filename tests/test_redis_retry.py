"""The hooks' Redis client (rlm_wificore.store.connect_redis, retry policy
wificore.backoff.redis_retry) against a real Redis of its own: one immediate
reconnect when Redis closed the connection, and no second attempt after a timeout
(a hook waits under rlm_python3's mutex: one deadline, then the breaker).

Counted, not timed: Redis's own count of the connections it accepted."""

from __future__ import annotations

import dataclasses
import os
import signal
import time

import pytest
import redis as redis_lib

from rlm_wificore.store import connect_redis
from stack.servers import RedisServer, free_port
from wificore.settings import Settings


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path, free_port(), name="retry-redis")
    server.start()
    try:
        yield server
    finally:
        os.kill(server.pid, signal.SIGCONT)
        server.stop()


def _accepted(admin: redis_lib.Redis) -> int:
    return int(admin.info("stats")["total_connections_received"])


def test_a_closed_connection_is_reconnected_once(own_redis):
    admin = redis_lib.Redis.from_url(own_redis.url)
    r = connect_redis(dataclasses.replace(Settings(), redis_url=own_redis.url, redis_timeout_ms=2000))
    r.set("k", "v")
    admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    assert r.get("k") == b"v"  # the pooled connection was dead: one reconnect, no error
    r.close()
    admin.close()


def test_a_timeout_is_not_attempted_twice(own_redis):
    admin = redis_lib.Redis.from_url(own_redis.url)
    r = connect_redis(dataclasses.replace(Settings(), redis_url=own_redis.url, redis_timeout_ms=300))
    r.ping()
    before = _accepted(admin)
    os.kill(own_redis.pid, signal.SIGSTOP)  # hung: the kernel still completes new connections
    try:
        with pytest.raises(redis_lib.TimeoutError):
            r.get("k")
    finally:
        os.kill(own_redis.pid, signal.SIGCONT)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # let Redis accept whatever waits in its backlog
        admin.ping()
        time.sleep(0.2)
    assert _accepted(admin) - before == 0, "the client connected again after a timeout"
    r.close()
    admin.close()
