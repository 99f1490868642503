"""Shards (issue 17 item 3): a tenant moved online between shards under load, and
lookups from a shard's streaming replica while its primary is down.

One stack for the module: Redis, three shards each behind PgBouncer (tenant move
--to shard3), a replica of shard2 (pg_basebackup -R), two radiusd processes sharing
the RADIUS ports (SO_REUSEPORT, as bin/stack runs them), one batch_writer.
Logins and accounting go through radiusd (raw UDP packets from the NAS addresses).
"""

from __future__ import annotations

import os
import threading
import time

import psycopg
import pytest

from stack.local import temporary_stack
from stack.servers import free_port
from tests import rawradius as R
from wificore import move
from wificore.keys import Keys
from wificore.shardmap import ShardMap

MOVED = (10, "127.0.18.1", "secret-moved")      # shard1 -> shard3
STAYS = (11, "127.0.18.2", "secret-stays")      # shard1, untouched
REPLICATED = (600, "127.0.18.3", "secret-rep")  # shard2, which has a replica
LAGGED = (12, "127.0.18.4", "secret-lagged")    # shard1 -> shard3, its cleanup before the flip
PASSWORD = b"pw-shards-1"
#: The longest a moved tenant's logins may go unanswered (README: tenant move). The
#: move itself fails no login (the source answers until every process follows the
#: map, MapFollower.CHECK_S); what a login may meet is a cache miss read again.
LOGIN_GAP_BOUND_S = 2.0


@pytest.fixture(scope="module")
def shards():
    with temporary_stack("wificore-shards-", keep=bool(os.environ.get("WIFICORE_TEST_KEEP")),
                         shards=3, procs=2) as s:
        for tenant, ip, secret in (MOVED, STAYS, REPLICATED, LAGGED):
            t = str(tenant)
            s.admin("tenant", "add", "--id", t, "--name", f"tenant {tenant}")
            s.admin("nas", "add", "--tenant", t, "--name", f"nas-{t}", "--ip", ip, "--secret", secret,
                    "--vendor", "generic")
            s.admin("plan", "add", "--tenant", t, "--name", "basic", "--rate-up-kbps", "1000",
                    "--rate-down-kbps", "1000", "--simultaneous-use", "5", "--interim-interval-s", "60")
        csv = "username,password,plan\n" + "".join(
            f"{kind}{i},{PASSWORD.decode()},basic\n" for kind in ("login", "acct", "cold")
            for i in range(20))
        for tenant, _, _ in (MOVED, STAYS, REPLICATED, LAGGED):
            s.admin("subscriber", "import", "--tenant", str(tenant), "-", input=csv)
        for r in s.radiusds:
            r.start()
        s.writer.start()
        # The replica, and its replica_dsn in the map, come while radiusd runs: the
        # changed shard entry is followed without a restart (a lane and pools for it).
        s.start_replica("shard2", free_port())
        wait_until(lambda: all("shard_map_followed" in r.logfile.read_text() for r in s.radiusds), 10,
                   "radiusd following the map with the replica")
        try:
            yield s
        finally:
            s.writer.stop()
            codes = [r.stop() for r in s.radiusds]
            assert codes == [0, 0], [r.log_tail() for r in s.radiusds]


def login(s, tenant, user: str) -> str | None:
    code, reply = R.send(s.radiusd.auth_port, R.ACCESS_REQUEST, tenant[2],
                         [(R.USER_NAME, user.encode()), (R.USER_PASSWORD, PASSWORD)],
                         source=tenant[1], timeout_s=1.0, tries=1)
    if code == "Access-Reject":
        return "reject:" + b"".join(R.values(reply, R.REPLY_MESSAGE)).decode(errors="replace")
    return code


def accounting(s, tenant, user: str, sid: str, status: int, octets: int) -> bool:
    code, _ = R.send(s.radiusd.acct_port, R.ACCOUNTING_REQUEST, tenant[2], [
        (R.USER_NAME, user.encode()), (R.ACCT_SESSION_ID, sid.encode()),
        (R.ACCT_STATUS_TYPE, R.u32(status)), (42, R.u32(octets)), (43, R.u32(2 * octets)),
        (46, R.u32(octets // 1000))], source=tenant[1], timeout_s=1.0, tries=3)  # a NAS retransmits
    return code == "Accounting-Response"


def rows(pg, sql: str, *params) -> list[tuple]:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def metric(port: int, name: str) -> float:
    """The sum of a metric's samples from a /metrics page."""
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def wait_until(check, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout_s} s")
        time.sleep(0.2)


class Load:
    """Logins of the moved tenant as fast as radiusd answers them, and accounting
    sessions of the moved tenant and of its neighbour (Start, an Interim per round,
    Stop at the end); bounded in count and time."""

    MAX_LOGINS = 50_000
    MAX_S = 60.0

    def __init__(self, s) -> None:
        self.s = s
        self.stop = threading.Event()
        self.logins: list[tuple[float, str | None]] = []
        # (tenant, sid) -> the octets of the last answered record; None: nothing answered
        self.sessions: dict[tuple[int, str], int | None] = {}
        self.unanswered = 0
        self.threads = [threading.Thread(target=self._logins, daemon=True),
                        threading.Thread(target=self._accounting, daemon=True)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=self.MAX_S)

    def _logins(self) -> None:
        started = time.monotonic()
        i = 0
        while not self.stop.is_set() and i < self.MAX_LOGINS and time.monotonic() - started < self.MAX_S:
            self.logins.append((time.monotonic(), login(self.s, MOVED, f"login{i % 20}")))
            i += 1

    def _send(self, tenant, user, sid, status, octets) -> None:
        if accounting(self.s, tenant, user, sid, status, octets):
            self.sessions[(tenant[0], sid)] = octets
        else:
            self.unanswered += 1
            self.sessions.setdefault((tenant[0], sid), None)

    def _accounting(self) -> None:
        started = time.monotonic()
        sessions = [(t, f"acct{i}", f"{t[0]}-{i}-{os.getpid()}") for t, n in ((MOVED, 10), (STAYS, 4))
                    for i in range(n)]
        for t, user, sid in sessions:
            self._send(t, user, sid, 1, 0)
        rnd = 0
        while not self.stop.is_set() and time.monotonic() - started < self.MAX_S:
            rnd += 1
            for t, user, sid in sessions:
                self._send(t, user, sid, 3, 1000 * rnd)
            time.sleep(0.05)
        for t, user, sid in sessions:
            self._send(t, user, sid, 2, 1000 * rnd + 1)

    def longest_gap(self) -> float:
        ok = [t for t, code in self.logins if code == "Access-Accept"]
        return max(b - a for a, b in zip(ok, ok[1:], strict=False)) if len(ok) > 1 else float("inf")


def test_tenant_moves_online_under_load(shards):
    s = shards
    shard1, _shard2, shard3 = s.pg
    pids = [p.pid for p in (*s.radiusds, s.writer)]
    followed = [p.logfile.read_text().count("shard_map_followed") for p in (*s.radiusds, s.writer)]
    before_stays = rows(shard1, "SELECT count(*) FROM subscribers WHERE tenant_id = %s", STAYS[0])
    with Load(s) as load:
        time.sleep(2.0)
        moved_at = time.monotonic()
        out = s.admin("tenant", "move", "--tenant", str(MOVED[0]), "--to", "shard3", check=False)
        move_s = time.monotonic() - moved_at
        assert out.returncode == 0, out.stdout + out.stderr
        time.sleep(3.0)  # the load goes on against the new shard
    assert "moved to shard3" in out.stdout, out.stdout
    assert load.unanswered == 0, f"{load.unanswered} accounting requests unanswered"
    # A login may be refused only as "try again" (backend_unavailable), never as unknown.
    refused = {code for _, code in load.logins if code != "Access-Accept"}
    assert refused <= {None, "reject:Service temporarily unavailable, please try again"}, refused
    gap = load.longest_gap()
    print(f"move {move_s:.2f} s, longest login gap {gap:.3f} s, {len(load.logins)} logins")
    assert gap <= LOGIN_GAP_BOUND_S, f"logins of the moved tenant stopped for {gap:.2f} s (move {move_s:.1f} s)"
    accepted = sum(1 for _, c in load.logins if c == "Access-Accept")
    assert accepted > 100, f"only {accepted} logins answered"

    # Every answered accounting record is on shard3, once; nothing of the tenant on shard1.
    moved = {sid: octets for (t, sid), octets in load.sessions.items() if t == MOVED[0]}
    def landed():
        got = dict(rows(shard3, "SELECT acct_session_id, input_octets FROM sessions WHERE tenant_id = %s "
                                "AND stopped_at IS NOT NULL", MOVED[0]))
        return got if all(got.get(sid) == octets for sid, octets in moved.items()) else None
    wait_until(landed, 30, "the moved tenant's accounting on shard3")
    dup = rows(shard3, "SELECT acct_session_id, count(*) FROM sessions WHERE tenant_id = %s "
                       "GROUP BY 1 HAVING count(*) > 1", MOVED[0])
    assert not dup, dup
    answered_logins = sum(1 for _, c in load.logins if c is not None)
    auth_rows = wait_until(lambda: (n := rows(shard3, "SELECT count(*) FROM auth_log WHERE tenant_id = %s",
                                              MOVED[0])[0][0]) >= answered_logins and n,
                           30, "the moved tenant's auth log on shard3")
    assert auth_rows == answered_logins, (auth_rows, answered_logins)
    for table in ("tenants", "subscribers", "plans", "nas", "sessions", "auth_log"):
        left = rows(shard1, f"SELECT count(*) FROM {table} WHERE tenant_id = %s", MOVED[0])[0][0]
        assert left == 0, f"{left} rows of the moved tenant left in shard1's {table}"
    assert rows(shard1, "SELECT role, peer, step FROM tenant_moves WHERE tenant_id = %s", MOVED[0]) == \
        [("source", "shard3", "cleaned")]
    assert rows(shard3, "SELECT moving FROM tenants WHERE tenant_id = %s", MOVED[0]) == [(None,)]

    # The neighbour on the source shard: untouched, its accounting all there.
    stays = {sid: octets for (t, sid), octets in load.sessions.items() if t == STAYS[0]}
    got = dict(rows(shard1, "SELECT acct_session_id, input_octets FROM sessions WHERE tenant_id = %s",
                    STAYS[0]))
    assert got == stays
    assert rows(shard1, "SELECT count(*) FROM subscribers WHERE tenant_id = %s", STAYS[0]) == before_stays

    # Followed without a restart; a cold login and a new subscriber are served from shard3.
    assert metric(s.ports.writer_metrics, "wificore_writer_fenced_records_total") > 0
    assert [p.pid for p in (*s.radiusds, s.writer)] == pids
    assert all(p.running() for p in (*s.radiusds, s.writer))
    now = [p.logfile.read_text().count("shard_map_followed") for p in (*s.radiusds, s.writer)]
    assert all(b > a for a, b in zip(followed, now, strict=True)), "each radiusd and the writer took the new map"
    assert login(s, MOVED, "cold7") == "Access-Accept"
    s.admin("subscriber", "add", "--tenant", str(MOVED[0]), "--username", "after-move", "--password",
            PASSWORD.decode(), "--plan", "basic")
    assert rows(shard3, "SELECT count(*) FROM subscribers WHERE username = 'after-move'") == [(1,)]
    assert login(s, MOVED, "after-move") == "Access-Accept"
    # The NAS directory still knows the moved tenant's NAS (read again from shard3).
    import redis as redis_lib
    r = redis_lib.Redis.from_url(s.redis.url)
    try:
        assert r.hexists(Keys("wc").nas_directory, MOVED[1])
    finally:
        r.close()
    # A second run has nothing to do.
    again = s.admin("tenant", "move", "--tenant", str(MOVED[0]), "--to", "shard3")
    assert "is on shard3" in again.stdout


def test_an_interrupted_move_is_resumed(shards):
    """A move stopped after its fence and copy (a crash): the tenant's accounting is
    answered and waits in the streams, its admin changes are refused, its logins go on
    from the source; the same command finishes the move and the records land once."""
    s = shards
    shard1, shard2 = s.pg[0], s.pg[1]
    sessions_before = rows(shard1, "SELECT count(*) FROM sessions WHERE tenant_id = %s", STAYS[0])[0][0]
    smap = ShardMap.load(s.shard_map)
    source, target = smap.by_name("shard1"), smap.by_name("shard2")
    move.fence(source, target, STAYS[0])
    sid = f"resume-{os.getpid()}"
    assert accounting(s, STAYS, "acct0", sid, 1, 0)
    assert accounting(s, STAYS, "acct0", sid, 3, 777)
    refused = s.admin("subscriber", "add", "--tenant", str(STAYS[0]), "--username", "during-move",
                      "--password", "x", "--plan", "basic", check=False)
    assert refused.returncode == 2 and "is being moved" in refused.stderr, refused.stderr
    move.copy(source, target, STAYS[0], say=lambda _m: None)
    assert login(s, STAYS, "cold3") == "Access-Accept"
    time.sleep(1.5)  # the writer had time: the records wait, on no shard
    for pg in (shard1, shard2):
        assert rows(pg, "SELECT count(*) FROM sessions WHERE acct_session_id = %s", sid) == [(0,)]
    out = s.admin("tenant", "move", "--tenant", str(STAYS[0]), "--to", "shard2", "--settle-s", "1.5")
    assert "moved to shard2" in out.stdout, out.stdout
    wait_until(lambda: rows(shard2, "SELECT input_octets FROM sessions WHERE acct_session_id = %s", sid)
               == [(777,)], 30, "the waiting record on shard2")
    assert rows(shard1, "SELECT count(*) FROM sessions WHERE tenant_id = %s", STAYS[0]) == [(0,)]
    assert rows(shard2, "SELECT count(*) FROM sessions WHERE tenant_id = %s", STAYS[0]) == \
        [(sessions_before + 1,)]
    assert login(s, STAYS, "cold4") == "Access-Accept"


def test_a_relay_still_on_the_old_map_at_the_cleanup_does_not_lose_the_nas(shards):
    """The cleanup's NOTIFYs heard by a relay that has not taken the new map yet (played
    here by cleaning the source before the flip): for the map it has, the moved tenant's
    NAS is on no shard that owns it. Its directory field stays (before, it was dropped,
    every process revoked the client radiusd holds for it, and the tenant's logins were
    refused as unknown clients until the directory's next rebuild, 10 minutes on). A
    process on the old map meets a source without the tenant: its logins get "try again"
    (before, "unknown user", cached in Redis for every process for negative_ttl_s). Once
    the processes take the new map, the relays read the tenant's NAS again from its new
    shard, and its logins are answered from there within the map check and a relay tick."""
    s = shards
    tenant = LAGGED[0]
    assert login(s, LAGGED, "cold1") == "Access-Accept"  # radiusd holds a client for the NAS
    marks = [r.logfile.stat().st_size for r in s.radiusds]
    smap = ShardMap.load(s.shard_map)
    source, target = smap.by_name("shard1"), smap.by_name("shard3")
    move.fence(source, target, tenant)
    move.copy(source, target, tenant, say=lambda _m: None)
    move.open_target(target, tenant)
    # A change on the target before the relays take the flip: for their map the source's row
    # (unchanged) is the NAS, and that is what they write. Taking the map, they read the
    # moved tenant's NAS again from the target: the change is in the directory then.
    with psycopg.connect(s.pg[2].dsn(), autocommit=True) as conn:
        conn.execute("UPDATE nas SET coa_port = 3800 WHERE tenant_id = %s", (tenant,))
    move.clean_source(source, target, tenant)
    import redis as redis_lib

    from wificore.profile import Nas
    r = redis_lib.Redis.from_url(s.redis.url)
    try:
        def heard() -> bool:
            return any("nas_directory_move_in_flight" in log_since(p, m)
                       for p, m in zip(s.radiusds, marks, strict=True))
        wait_until(heard, 10, "a relay hearing the cleanup of the NAS on the old map")
        time.sleep(0.5)  # every relay heard it, every process heard what they announced
        assert r.hexists(Keys("wc").nas_directory, LAGGED[1]), "the NAS's field dropped"
        # A process behind the move reads the source after its cleanup: "try again", never
        # an "unknown user" cached in Redis for every process.
        assert {login(s, LAGGED, f"cold{i}") for i in range(4, 12)} == \
            {"reject:Service temporarily unavailable, please try again"}
        from wificore.shardmap import write_placement
        write_placement(s.shard_map, tenant, "shard3")
        bound_s = 2 * 0.5 + 1.0 + 1.0  # the map check (CHECK_S, twice), a relay tick, the announcement
        flipped = time.monotonic()
        wait_until(lambda: all(login(s, LAGGED, f"cold{i}") == "Access-Accept" for i in range(4, 12)),
                   bound_s + 3, "the moved tenant's logins answered from shard3")
        print(f"answered again {time.monotonic() - flipped:.2f} s after the flip")
        wait_until(lambda: Nas.unpack(r.hget(Keys("wc").nas_directory, LAGGED[1])).coa_port == 3800,
                   bound_s, "the target's change of the NAS in the directory")
        for p, m in zip(s.radiusds, marks, strict=True):
            assert "client_revoked" not in log_since(p, m)
    finally:
        r.close()


def log_since(proc, mark: int) -> str:
    with open(proc.logfile, "rb") as f:
        f.seek(mark)
        return f.read().decode(errors="replace")


def test_a_move_before_its_flip_is_aborted(shards):
    """--abort after the fence and copy: the target's copy is gone, the source writable
    again, and the record that waited meanwhile is written there."""
    s = shards
    shard2, shard3 = s.pg[1], s.pg[2]
    smap = ShardMap.load(s.shard_map)
    move.fence(smap.by_name("shard2"), smap.by_name("shard3"), REPLICATED[0])
    sid = f"abort-{os.getpid()}"
    assert accounting(s, REPLICATED, "acct2", sid, 3, 4242)
    move.copy(smap.by_name("shard2"), smap.by_name("shard3"), REPLICATED[0], say=lambda _m: None)
    out = s.admin("tenant", "move", "--tenant", str(REPLICATED[0]), "--abort")
    assert "aborted" in out.stdout, out.stdout
    for table in ("tenants", "subscribers", "tenant_moves"):
        assert rows(shard3, f"SELECT count(*) FROM {table} WHERE tenant_id = %s", REPLICATED[0]) == [(0,)]
    assert rows(shard2, "SELECT moving FROM tenants WHERE tenant_id = %s", REPLICATED[0]) == [(None,)]
    wait_until(lambda: rows(shard2, "SELECT input_octets FROM sessions WHERE acct_session_id = %s", sid)
               == [(4242,)], 30, "the waiting record on shard2")
    again = s.admin("tenant", "move", "--tenant", str(REPLICATED[0]), "--abort", check=False)
    assert again.returncode == 2 and "no move" in again.stderr


def test_lookups_from_the_replica_while_the_primary_is_down(shards):
    s = shards
    primary, replica = s.pg[1], s.replicas["shard2"]
    tenant = REPLICATED
    wait_until(lambda: rows(replica, "SELECT count(*) FROM subscribers WHERE tenant_id = %s",
                            tenant[0])[0][0] >= 60, 20, "the replica's copy")
    assert login(s, tenant, "login0") == "Access-Accept"  # the NAS is known, the shard warm
    primary.stop()
    try:
        # Cold logins (never looked up): answered from the replica once the primary is
        # found unreachable (its first lookup waits db_timeout_ms).
        started = time.monotonic()
        answered = {}
        for i in range(10):
            while f"cold{i}" not in answered and time.monotonic() - started < 15:
                if login(s, tenant, f"cold{i}") == "Access-Accept":
                    answered[f"cold{i}"] = time.monotonic() - started
                else:
                    time.sleep(0.1)
        assert len(answered) == 10, f"cold logins answered from the replica: {sorted(answered)}"
        first = min(answered.values())
        print(f"primary down: first cold login answered after {first:.2f} s, all 10 after "
              f"{max(answered.values()):.2f} s")
        assert first < 5.0, f"the first cold login took {first:.1f} s to be answered"
        assert any("shard_primary_unreachable" in r.logfile.read_text() for r in s.radiusds)
        ports = [int(r.env["WIFICORE_METRICS_PORT"]) for r in s.radiusds]
        assert sum(metric(p, "wificore_shard_replica_lookups_total") for p in ports) >= 10
        # Accounting meanwhile: answered (the spool), written once the primary is back.
        sid = f"rep-{os.getpid()}"
        assert accounting(s, tenant, "acct1", sid, 1, 0)
        assert accounting(s, tenant, "acct1", sid, 3, 5000)
        time.sleep(1.0)
    finally:
        primary.start()
    got = wait_until(lambda: rows(primary, "SELECT input_octets FROM sessions WHERE tenant_id = %s AND "
                                           "acct_session_id = %s", tenant[0], sid), 30,
                     "the accounting written after the primary came back")
    assert got == [(5000,)]
    # The primary is used again for lookups once it answers (a lookup starts the probe:
    # each try a subscriber never looked up, as one served once is answered from Redis).
    fresh = iter([f"cold{i}" for i in range(10, 20)] + [f"login{i}" for i in range(1, 20)])

    def back():
        login(s, tenant, next(fresh, "login19"))
        return any("shard_primary_back" in r.logfile.read_text() for r in s.radiusds)
    wait_until(back, 20, "lookups back on the primary")
