"""A tenant- or plan-wide CoA job finds every live session however many open rows the
tenant has: open rows whose Stop never came (sessions the live state no longer holds)
used to fill the one page of MAX_SESSIONS rows read, and the live sessions after them
were never sent a Disconnect. Real shard and Redis; pages of 10 rows here."""

from __future__ import annotations

import os
import time

import psycopg

from tests import state
from tests.conftest import TENANT_A
from wificore import coa_jobs
from wificore.keys import Keys

K = Keys("wc")


def test_live_sessions_after_a_page_of_stale_rows_are_found(stack, world, shard_conn, redis):
    t = TENANT_A[0]
    conn = shard_conn(t)
    (nas_id,) = conn.execute("SELECT nas_id FROM nas WHERE tenant_id = %s LIMIT 1", (t,)).fetchone()
    tag = f"pg{os.getpid()}"
    users = [f"{tag}-{i:02d}" for i in range(30)]
    live = users[-5:]  # sorted last: after three pages of rows whose sessions are over
    with conn.transaction():
        for u in users:
            conn.execute("INSERT INTO sessions (tenant_id, session_key, nas_id, username, acct_session_id,"
                         " started_at, updated_at) VALUES (%s, %s, %s, %s, %s, now(), now())",
                         (t, f"{u}:k", nas_id, u, f"{u}-sid"))
    now = time.time()
    for u in live:
        state.put_session(redis, K, t, u, f"{u}:k", now + 600)
    try:
        def read(fn):
            with psycopg.connect(stack.pg[0].dsn(), autocommit=True) as c:
                return fn(c)
        mine = lambda ss: sorted(s.username for s in ss if s.username.startswith(tag))  # noqa: E731
        found, complete = coa_jobs.live_pages(read, redis, K, t, page=10)
        assert complete and mine(found) == live
        cut, complete = coa_jobs.live_pages(read, redis, K, t, page=10, max_pages=2)
        assert not complete and mine(cut) == []  # the bound is said, not silent
    finally:
        conn.execute("DELETE FROM sessions WHERE tenant_id = %s AND username LIKE %s", (t, f"{tag}-%"))
        for u in live:
            redis.delete(K.subscriber(t, u))
