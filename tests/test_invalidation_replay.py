"""A change announced while a process's channel connection is down is not lost.

Three radiusd processes share the RADIUS ports (SO_REUSEPORT); two of them hold the
relay slots (they hear the shards' NOTIFYs), the third learns of a change only from
the invalidation channel. Its channel connection is killed again and again (``CLIENT
KILL TYPE pubsub``; each reconnect waits its backoff), so an announcement is likely
published while it has no subscription. It replays the announcement log after each
new SUBSCRIBE (wificore/announce.py); before, it served the old password from its
in-process copy until profile_ttl_s.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

import psycopg
import pytest
import redis

from stack.local import temporary_stack
from tests import rawradius as R

TENANT = (70, "127.0.19.1", "secret-replay")
USERS = [f"replay{i}" for i in range(10)]


@pytest.fixture(scope="module")
def three():
    with temporary_stack("wificore-replay-", keep=bool(os.environ.get("WIFICORE_TEST_KEEP")),
                         shards=1, procs=3) as s:
        t = str(TENANT[0])
        s.admin("tenant", "add", "--id", t, "--name", "replay")
        s.admin("nas", "add", "--tenant", t, "--name", "nas-replay", "--ip", TENANT[1],
                "--secret", TENANT[2], "--vendor", "generic")
        s.admin("plan", "add", "--tenant", t, "--name", "basic")
        s.admin("subscriber", "import", "--tenant", t, "-",
                input="username,password,plan\n" + "".join(f"{u},pw-1,basic\n" for u in USERS))
        for r in s.radiusds:
            r.start()
        try:
            yield s
        finally:
            codes = [r.stop() for r in s.radiusds]
            assert codes == [0, 0, 0], [r.log_tail() for r in s.radiusds]


def login(s, user: str, password: bytes) -> str | None:
    code, _ = R.send(s.radiusd.auth_port, R.ACCESS_REQUEST, TENANT[2],
                     [(R.USER_NAME, user.encode()), (R.USER_PASSWORD, password)],
                     source=TENANT[1], timeout_s=1.0, tries=1)
    return code


def served_everywhere(s, user: str, password: bytes, timeout_s: float) -> bool:
    """20 answers in a row accept ``password`` (each from a new source port, so from any of
    the three processes: the chance that one never answers is (2/3)^20 < 0.1 %)."""
    deadline = time.monotonic() + timeout_s
    streak = 0
    while time.monotonic() < deadline:
        streak = streak + 1 if login(s, user, password) == "Access-Accept" else 0
        if streak >= 20:
            return True
        if not streak:
            time.sleep(0.1)
    return False


def test_an_announcement_missed_by_a_reconnecting_listener_is_replayed(three):
    s = three
    for u in USERS:  # cached in every process
        assert served_everywhere(s, u, b"pw-1", 10), u
    r = redis.Redis.from_url(s.redis.url, socket_timeout=1)
    done = threading.Event()

    def kill_subscribers() -> None:
        while not done.wait(0.005):
            with contextlib.suppress(redis.RedisError):
                r.client_kill_filter(_type="pubsub")

    killer = threading.Thread(target=kill_subscribers, daemon=True)
    killer.start()
    try:
        with psycopg.connect(s.pg[0].dsn(), autocommit=True) as conn:
            for u in USERS:
                time.sleep(0.1)
                conn.execute("UPDATE subscribers SET password = 'pw-2' WHERE tenant_id = %s"
                             " AND username = %s", (TENANT[0], u))
        time.sleep(0.5)
    finally:
        done.set()
        killer.join(timeout=5)
        r.close()
    stale = [u for u in USERS if not served_everywhere(s, u, b"pw-2", 8)]
    assert not stale, f"old passwords still served for {stale}"
    assert any("invalidation_replayed" in p.logfile.read_text() for p in s.radiusds)
