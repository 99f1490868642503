"""CoA / Disconnect (RFC 5176, issue 16): the CoA sidecar (coa_sender) against a real
CoA listener (a UDP server in this file that checks each request's authenticator and
Message-Authenticator with the NAS's secret and answers ACK, NAK with an Error-Cause,
or nothing), with live sessions from real accounting sent through the real radiusd
and written by the real batch writer.

One listener, one sidecar (short deadlines: 300 ms per attempt, 3 attempts) for the
whole module; each test has its own subscribers and tells the listener how to answer
for them.
"""

from __future__ import annotations

import hashlib
import hmac
import selectors
import socket
import struct
import threading
import time
import uuid

import psycopg
import pytest

from stack.servers import CoaSidecar, free_port
from tests import metrics
from tests.test_accounting import acct_packet, wait_until
from wificore import coa_jobs
from wificore.keys import Keys
from wificore.profile import Nas

K = Keys("wc")
#: Tenants of this file (shard1), each with a NAS whose CoA port is the listener's.
COA_T = (45, "127.0.45.1", "secret-45", "mikrotik")
COA_T2 = (46, "127.0.46.1", "secret-46", "mikrotik")
ATTEMPT_MS, ATTEMPTS = 300, 3


# ------------------------------------------------------------------ the CoA listener
class Listener:
    """A NAS's CoA server: one UDP socket per NAS address, one thread. Answers per
    User-Name: ("ack",), ("nak", error_cause) or ("silent",); default ack."""

    def __init__(self, addrs: dict[str, str], port: int) -> None:
        self.secrets = addrs  # address -> secret
        self.port = port
        self.modes: dict[str, tuple] = {}
        self.received: list[dict] = []
        self.lock = threading.Lock()
        self.sel = selectors.DefaultSelector()
        self.socks = []
        for ip in addrs:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((ip, port))
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ, ip)
            self.socks.append(s)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopping.is_set():
            for key, _ in self.sel.select(timeout=0.1):
                try:
                    data, src = key.fileobj.recvfrom(4096)
                except OSError:
                    continue
                self.handle(key.fileobj, key.data, data, src)

    def handle(self, sock, ip: str, data: bytes, src) -> None:
        secret = self.secrets[ip].encode()
        code, ident, length = struct.unpack("!BBH", data[:4])
        attrs, i = [], 20
        while i + 2 <= length:
            t, n = data[i], data[i + 1]
            attrs.append((t, data[i + 2:i + n], i))
            i += n
        # RFC 5176 §2.3: the Request Authenticator as an Accounting-Request's.
        auth_ok = hashlib.md5(data[:4] + b"\0" * 16 + data[20:length] + secret).digest() == data[4:20]
        ma = [(v, off) for t, v, off in attrs if t == 80]
        ma_ok = False
        if len(ma) == 1:
            v, off = ma[0]
            zeroed = data[:4] + b"\0" * 16 + data[20:off + 2] + b"\0" * 16 + data[off + 18:length]
            ma_ok = hmac.new(secret, zeroed, hashlib.md5).digest() == v
        by_type: dict[int, list[bytes]] = {}
        for t, v, _off in attrs:
            by_type.setdefault(t, []).append(v)
        user = by_type.get(1, [b""])[0].decode()
        with self.lock:
            self.received.append({"code": code, "ident": ident, "attrs": by_type, "auth_ok": auth_ok,
                                  "ma_ok": ma_ok, "ma_first": bool(attrs) and attrs[0][0] == 80,
                                  "to": ip, "user": user, "at": time.monotonic()})
            mode = self.modes.get(user, ("ack",))
        if mode[0] == "silent":
            return
        if mode[0] == "wrong-secret":  # a NAS configured with another secret: an ACK that never verifies
            secret, mode = b"not-" + secret, ("ack",)
        reply_attrs = b""
        if mode[0] == "ack":
            rcode = code + 1  # 41 Disconnect-ACK, 44 CoA-ACK
        else:
            rcode = code + 2  # 42 Disconnect-NAK, 45 CoA-NAK
            reply_attrs += struct.pack("!BBI", 101, 6, mode[1])
        # A Message-Authenticator in the answer too, computed over the request's authenticator.
        body = struct.pack("!BB", 80, 18) + b"\0" * 16 + reply_attrs
        header = struct.pack("!BBH", rcode, ident, 20 + len(body))
        mac = hmac.new(secret, header + data[4:20] + body, hashlib.md5).digest()
        body = body[:2] + mac + body[18:]
        rauth = hashlib.md5(header + data[4:20] + body + secret).digest()
        sock.sendto(header + rauth + body, src)

    def of(self, user: str) -> list[dict]:
        with self.lock:
            return [r for r in self.received if r["user"] == user]

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        for s in self.socks:
            s.close()


# ------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def writer(world, radiusd):
    """batch_writer, started for this file unless already running; stopped by its PID."""
    started = not world.writer.running()
    if started:
        world.writer.start()
    yield world.writer
    if started:
        world.writer.stop()


@pytest.fixture(scope="module")
def listener():
    port = free_port()
    lst = Listener({COA_T[1]: COA_T[2], COA_T2[1]: COA_T2[2]}, port)
    yield lst
    lst.close()


@pytest.fixture(scope="module")
def coa_world(world, radiusd, listener):
    for tid, ip, secret, vendor in (COA_T, COA_T2):
        world.admin("tenant", "add", "--id", str(tid), "--name", f"coa {tid}")
        world.admin("nas", "add", "--tenant", str(tid), "--name", f"coa-nas-{tid}", "--ip", ip, "--secret",
                    secret, "--vendor", vendor, "--coa-port", str(listener.port), "--replace")
        world.admin("plan", "add", "--tenant", str(tid), "--name", "basic", "--rate-up-kbps", "1000",
                    "--rate-down-kbps", "5000", "--simultaneous-use", "3", check=False)
    world.admin("plan", "add", "--tenant", str(COA_T[0]), "--name", "quota", "--data-quota-bytes", "10000",
                "--simultaneous-use", "3", check=False)
    return world


@pytest.fixture(scope="module")
def sidecar(coa_world, writer):
    metrics_port = free_port()
    env = {"WIFICORE_SHARD_MAP": str(coa_world.shard_map), "WIFICORE_REDIS_URL": coa_world.redis.url,
           "WIFICORE_COA_CONSUMER": "coa-test", "WIFICORE_COA_TIMEOUT_MS": str(ATTEMPT_MS),
           "WIFICORE_COA_MAX_ATTEMPTS": str(ATTEMPTS), "WIFICORE_COA_METRICS_PORT": str(metrics_port),
           "WIFICORE_COA_BLOCK_MS": "100", "WIFICORE_COA_CLAIM_MIN_IDLE_MS": "1000"}
    sc = CoaSidecar(coa_world.state, env, name="coa-test")
    sc.metrics_port = metrics_port
    sc.start()
    assert wait_until(lambda: _scrape(metrics_port), 20), sc.log_tail()
    # The quota group starts at the streams' end: wait until it exists before any accounting.
    assert wait_until(lambda: _has_group(coa_world), 10), sc.log_tail()
    yield sc
    if sc.running():  # a failed test may have left it killed
        assert sc.stop() == 0, sc.log_tail()
    import redis as redis_lib
    r = redis_lib.Redis.from_url(coa_world.redis.url)
    for p in range(4):  # the session's streams are read by other files: leave them as found
        try:
            r.xgroup_destroy(K.stream(p), "coa-quota")
        except redis_lib.ResponseError:
            pass
    r.close()


def _scrape(port):
    try:
        return "wificore_coa_requests_total" in metrics.scrape(port)
    except OSError:
        return False


def _has_group(world):
    import redis as redis_lib
    r = redis_lib.Redis.from_url(world.redis.url)
    try:
        return all(any(g["name"] == b"coa-quota" for g in r.xinfo_groups(K.stream(p))) for p in range(4))
    except redis_lib.ResponseError:
        return False
    finally:
        r.close()


_n = [0]


def new_user(world, tenant=COA_T, plan="basic") -> str:
    _n[0] += 1
    user = f"coa{_n[0]}-{uuid.uuid4().hex[:6]}"
    world.admin("subscriber", "add", "--tenant", str(tenant[0]), "--username", user, "--password", "pw-123456",
                "--plan", plan)
    return user


def online(acct, shard_conn, tenant, user, framed_ip="10.45.0.7") -> str:
    """A live session from a real Accounting-Request Start, its row written; its Acct-Session-Id."""
    sid = "c" + uuid.uuid4().hex[:11]
    ans = acct(tenant, acct_packet(user, sid, "Start", **{"Framed-IP-Address": framed_ip}))
    assert ans.code == "Accounting-Response", ans.output
    conn = shard_conn(tenant[0])
    assert wait_until(lambda: conn.execute("SELECT 1 FROM sessions WHERE tenant_id = %s AND acct_session_id = %s",
                                           (tenant[0], sid)).fetchone(), 15), "the writer did not write the Start"
    return sid


def attempts(shard_conn, tenant, user) -> list[tuple]:
    return shard_conn(tenant[0]).execute(
        "SELECT kind, reason, attempt, outcome, error_cause, acct_session_id, job_id FROM coa_attempts "
        "WHERE tenant_id = %s AND username = %s ORDER BY attempted_at, attempt", (tenant[0], user)).fetchall()


def text_attr(req: dict, t: int) -> str | None:
    v = req["attrs"].get(t)
    return v[0].decode() if v else None


def vsas(req: dict) -> dict[tuple[int, int], bytes]:
    out = {}
    for v in req["attrs"].get(26, []):
        vendor, vt, vl = struct.unpack("!IBB", v[:6])
        out[(vendor, vt)] = v[6:6 + vl - 2]
    return out


# --------------------------------------------------------------------------- tests
class TestNasCoaPort:
    def test_port_set_listed_and_in_the_directory(self, coa_world, listener, redis):
        """`nas add --coa-port` is stored, listed (per tenant and across tenants) and carried
        in the NAS directory entry; `nas set --coa-port` changes it; 0 is refused."""
        tid, ip = str(COA_T[0]), COA_T[1]
        listed = coa_world.admin("nas", "list", "--tenant", tid).stdout.splitlines()
        rows = [dict(zip(listed[0].split("\t"), line.split("\t"), strict=True)) for line in listed[1:]]
        assert [r["coa_port"] for r in rows if r["ip"] == ip] == [str(listener.port)]
        everywhere = coa_world.admin("nas", "list").stdout.splitlines()
        rows = [dict(zip(everywhere[0].split("\t"), line.split("\t"), strict=True)) for line in everywhere[1:]]
        assert [r["coa_port"] for r in rows if r["ip"] == ip] == [str(listener.port)]
        assert wait_until(lambda: (raw := redis.hget(K.nas_directory, ip)) and Nas.unpack(raw).coa_port
                          == listener.port, 5)
        coa_world.admin("nas", "add", "--tenant", tid, "--name", "coa-default", "--ip", "127.0.45.9",
                        "--secret", "s-9", "--replace")
        assert wait_until(lambda: (raw := redis.hget(K.nas_directory, "127.0.45.9")) and Nas.unpack(raw).coa_port
                          == 3799, 5)
        coa_world.admin("nas", "set", "--tenant", tid, "--name", "coa-default", "--coa-port", "1700")
        assert wait_until(lambda: Nas.unpack(redis.hget(K.nas_directory, "127.0.45.9")).coa_port == 1700, 5)
        out = coa_world.admin("nas", "set", "--tenant", tid, "--name", "coa-default", "--coa-port", "0",
                              check=False)
        assert out.returncode == 2 and "coa_port" in out.stderr
        coa_world.admin("nas", "delete", "--tenant", tid, "--name", "coa-default")


class TestOperator:
    def test_list_and_disconnect(self, coa_world, sidecar, listener, acct, shard_conn):
        """`session list` shows the live session; `session disconnect` makes the sidecar send
        a Disconnect-Request to the NAS's CoA port with User-Name, Acct-Session-Id,
        Framed-IP-Address and NAS-IP-Address, signed with the NAS's secret (Request
        Authenticator and a Message-Authenticator, first); the ACK is recorded as attempt 1."""
        user = new_user(coa_world)
        sid = online(acct, shard_conn, COA_T, user, "10.45.0.8")
        out = coa_world.admin("session", "list", "--tenant", str(COA_T[0]), user).stdout.splitlines()
        assert out[0].startswith("username\tacct_session_id\tframed_ip")
        assert len(out) == 2 and out[1].split("\t")[:5] == [user, sid, "10.45.0.8", out[1].split("\t")[3], COA_T[1]]
        assert user in coa_world.admin("session", "list", "--tenant", str(COA_T[0])).stdout

        started = time.monotonic()
        out = coa_world.admin("session", "disconnect", "--tenant", str(COA_T[0]), user)
        assert "queued" in out.stdout
        assert time.monotonic() - started < 15  # bounded: the CLI queues and returns (loaded CI: generous)
        assert wait_until(lambda: attempts(shard_conn, COA_T, user), 10), sidecar.log_tail()
        [req] = listener.of(user)
        assert req["code"] == 40 and req["to"] == COA_T[1]
        assert req["auth_ok"] and req["ma_ok"] and req["ma_first"]
        assert text_attr(req, 44) == sid
        assert socket.inet_ntoa(req["attrs"][8][0]) == "10.45.0.8"
        assert socket.inet_ntoa(req["attrs"][4][0]) == COA_T[1]
        assert 55 in req["attrs"]  # Event-Timestamp
        [row] = attempts(shard_conn, COA_T, user)
        assert row[:6] == ("disconnect", "operator", 1, "ack", None, sid)
        shown = coa_world.admin("session", "attempts", "--tenant", str(COA_T[0]), user).stdout
        assert "\tack\t" in shown

    def test_nak_with_error_cause_is_recorded_once(self, coa_world, sidecar, listener, acct, shard_conn):
        """A Disconnect-NAK is final: one attempt, outcome nak, its Error-Cause (503)."""
        user = new_user(coa_world)
        listener.modes[user] = ("nak", 503)
        sid = online(acct, shard_conn, COA_T, user)
        coa_world.admin("session", "disconnect", "--tenant", str(COA_T[0]), user, "--session", sid)
        assert wait_until(lambda: attempts(shard_conn, COA_T, user), 10), sidecar.log_tail()
        time.sleep(ATTEMPT_MS * 2 / 1000)  # no retry after a NAK
        assert [r[:6] for r in attempts(shard_conn, COA_T, user)] == [
            ("disconnect", "operator", 1, "nak", 503, sid)]
        assert len(listener.of(user)) == 1

    def test_an_answer_with_a_wrong_authenticator_is_named(self, coa_world, sidecar, listener, acct, shard_conn):
        """A NAS that answers with another secret: its ACKs are ignored (each attempt ends
        as a timeout), and each attempt's detail says the NAS answered but did not verify
        (before: a bare timeout, as if the NAS were unreachable)."""
        user = new_user(coa_world)
        listener.modes[user] = ("wrong-secret",)
        online(acct, shard_conn, COA_T, user, "10.45.0.31")
        coa_world.admin("session", "disconnect", "--tenant", str(COA_T[0]), user)
        assert wait_until(lambda: len(attempts(shard_conn, COA_T, user)) == ATTEMPTS, 10), sidecar.log_tail()
        assert {a[3] for a in attempts(shard_conn, COA_T, user)} == {"timeout"}
        details = shard_conn(COA_T[0]).execute("SELECT detail FROM coa_attempts WHERE tenant_id = %s AND "
                                               "username = %s", (COA_T[0], user)).fetchall()
        assert all(d[0] and "wrong authenticator" in d[0] for d in details), details

    def test_silent_nas_bounded_retries_and_others_go_on(self, coa_world, sidecar, listener, acct, shard_conn,
                                                         redis):
        """A NAS that never answers: the same request 3 times, 3 timeouts recorded within
        about 3 x 300 ms; a Disconnect for another subscriber queued after it is answered
        meanwhile (the sidecar is not stuck)."""
        silent, other = new_user(coa_world), new_user(coa_world)
        listener.modes[silent] = ("silent",)
        online(acct, shard_conn, COA_T, silent)
        online(acct, shard_conn, COA_T, other)
        before = metrics.total(metrics.scrape(sidecar.metrics_port), "wificore_coa_requests_total",
                               kind="disconnect", outcome="timeout")
        started = time.monotonic()
        # Queued as `session disconnect` queues them, back to back: the silent one first.
        coa_jobs.queue(redis, K, "disconnect", tenant=COA_T[0], user=silent, reason="operator")
        coa_jobs.queue(redis, K, "disconnect", tenant=COA_T[0], user=other, reason="operator")
        assert wait_until(lambda: attempts(shard_conn, COA_T, other), 5)
        assert wait_until(lambda: len(attempts(shard_conn, COA_T, silent)) == ATTEMPTS, 10), sidecar.log_tail()
        assert time.monotonic() - started < 10
        rows = attempts(shard_conn, COA_T, silent)
        assert [(r[2], r[3]) for r in rows] == [(1, "timeout"), (2, "timeout"), (3, "timeout")]
        sent = listener.of(silent)
        assert len(sent) == ATTEMPTS and len({r["ident"] for r in sent}) == 1  # retransmissions
        # Answered while the silent NAS was still being waited for.
        assert listener.of(other)[0]["at"] < sent[-1]["at"]
        time.sleep(ATTEMPT_MS * 2 / 1000)
        assert len(attempts(shard_conn, COA_T, silent)) == ATTEMPTS  # bounded: no 4th
        after = metrics.total(metrics.scrape(sidecar.metrics_port), "wificore_coa_requests_total",
                              kind="disconnect", outcome="timeout")
        assert after == before + 1


    def test_a_silent_nas_of_one_tenant_does_not_hold_back_another_tenants_request(
            self, coa_world, sidecar, listener, acct, shard_conn, redis):
        """Tenant A's Disconnect of 40 sessions behind a NAS that never answers, then
        tenant B's of one: B's request goes out at once. A job has at most workers/4
        requests in flight and the sending threads suffice for every running job's, so
        A's sessions wait for A's turn only (before: B's request queued behind A's in
        one pool of 16 threads, 2 x 3 x 300 ms)."""
        a_user, b_user = new_user(coa_world), new_user(coa_world, tenant=COA_T2)
        listener.modes[a_user] = ("silent",)
        sids = ["c" + uuid.uuid4().hex[:11] for _ in range(40)]
        for sid in sids:
            ans = acct(COA_T, acct_packet(a_user, sid, "Start"))
            assert ans.code == "Accounting-Response", ans.output
        online(acct, shard_conn, COA_T2, b_user)
        conn = shard_conn(COA_T[0])
        assert wait_until(lambda: conn.execute(
            "SELECT count(*) FROM sessions WHERE tenant_id = %s AND username = %s",
            (COA_T[0], a_user)).fetchone()[0] == len(sids), 15)
        coa_jobs.queue(redis, K, "disconnect", tenant=COA_T[0], user=a_user, reason="operator")
        assert wait_until(lambda: listener.of(a_user), 5), sidecar.log_tail()
        queued = time.monotonic()
        coa_jobs.queue(redis, K, "disconnect", tenant=COA_T2[0], user=b_user, reason="operator")
        assert wait_until(lambda: listener.of(b_user), 5), sidecar.log_tail()
        waited = listener.of(b_user)[0]["at"] - queued
        assert waited < 1.0, f"tenant B's request went out {waited:.2f} s after it was queued"
        assert len(listener.of(a_user)) < len(sids) * ATTEMPTS  # A's still going on
        listener.modes[a_user] = ("ack",)  # A's NAS answers again: its job ends
        assert wait_until(lambda: redis.xpending(K.coa_jobs, "coa")["pending"] == 0, 15)


class TestDurability:
    def test_queued_while_stopped_and_in_flight_at_kill_are_sent_after_restart(
            self, coa_world, sidecar, listener, acct, shard_conn, redis):
        """A job queued while the sidecar is stopped is sent once it runs; a job it had
        taken and not finished when it was killed (-9) is taken again by the restarted
        sidecar (same consumer) and finished; one of those that still waits for a silent
        NAS does not hold back the new job."""
        queued, inflight, stuck = new_user(coa_world), new_user(coa_world), new_user(coa_world)
        for user in (queued, inflight, stuck):
            online(acct, shard_conn, COA_T, user)

        # In flight at a kill -9: the NAS silent, killed while it is waited for.
        listener.modes[inflight] = listener.modes[stuck] = ("silent",)
        for user in (inflight, stuck):  # as `session disconnect` queues them
            coa_jobs.queue(redis, K, "disconnect", tenant=COA_T[0], user=user, reason="operator")
        # Killed while their first attempts wait for the NAS (the listener has the requests).
        assert wait_until(lambda: listener.of(inflight) and listener.of(stuck), 5), sidecar.log_tail()
        sidecar.stop(sig=9)
        killed_rows = len(attempts(shard_conn, COA_T, inflight))
        assert killed_rows < ATTEMPTS
        listener.modes[inflight] = ("ack",)

        # Queued while stopped.
        coa_world.admin("session", "disconnect", "--tenant", str(COA_T[0]), queued)
        assert redis.xlen(K.coa_jobs) >= 1
        time.sleep(0.3)
        assert not listener.of(queued)

        sidecar.start()
        assert wait_until(lambda: any(r[3] == "ack" for r in attempts(shard_conn, COA_T, queued)), 15), \
            sidecar.log_tail()
        assert wait_until(lambda: any(r[3] == "ack" for r in attempts(shard_conn, COA_T, inflight)), 15), \
            sidecar.log_tail()
        jobs = {r[6] for r in attempts(shard_conn, COA_T, inflight)}
        assert len(jobs) == 1  # the same job, taken again
        assert wait_until(lambda: len(attempts(shard_conn, COA_T, stuck)) >= ATTEMPTS, 10)
        assert listener.of(queued)[0]["at"] < listener.of(stuck)[-1]["at"]  # not held back
        assert wait_until(lambda: _scrape(sidecar.metrics_port), 10)
        # Finished jobs leave the stream and the group's pending list.
        assert wait_until(lambda: redis.xpending(K.coa_jobs, "coa")["pending"] == 0, 5)


class TestTriggers:
    def test_plan_change_sends_coa_with_the_new_rate(self, coa_world, sidecar, listener, acct, shard_conn):
        """`plan set --rate-down-kbps` on a plan with a live session: a CoA-Request (43)
        with the session's identification and the new rate in the NAS's dialect
        (MikroTik: Mikrotik-Rate-Limit "<up>k/<down>k"), ACKed and recorded."""
        plan = "rated-" + uuid.uuid4().hex[:6]
        coa_world.admin("plan", "add", "--tenant", str(COA_T[0]), "--name", plan, "--rate-up-kbps", "1000",
                        "--rate-down-kbps", "5000", "--simultaneous-use", "2")
        user = new_user(coa_world, plan=plan)
        sid = online(acct, shard_conn, COA_T, user)
        out = coa_world.admin("plan", "set", "--tenant", str(COA_T[0]), "--name", plan, "--rate-down-kbps", "20000")
        assert "CoA" in out.stdout
        assert wait_until(lambda: attempts(shard_conn, COA_T, user), 10), sidecar.log_tail()
        [req] = listener.of(user)
        assert req["code"] == 43 and req["auth_ok"] and req["ma_ok"]
        assert text_attr(req, 44) == sid
        assert vsas(req)[(14988, 8)] == b"1000k/20000k"
        assert attempts(shard_conn, COA_T, user)[0][:4] == ("coa", "plan_change", 1, "ack")

        # Moved to another plan: its live session gets that plan's rate.
        coa_world.admin("subscriber", "set", "--tenant", str(COA_T[0]), user, "--plan", "basic")
        assert wait_until(lambda: len(listener.of(user)) == 2, 10), sidecar.log_tail()
        moved = listener.of(user)[1]
        assert moved["code"] == 43 and vsas(moved)[(14988, 8)] == b"1000k/5000k"

    def test_subscriber_and_tenant_suspended_are_disconnected(self, coa_world, sidecar, listener, acct,
                                                              shard_conn):
        """`subscriber set --status suspended` disconnects that subscriber's live sessions;
        `tenant suspend` every live session of the tenant (reason tenant_suspended)."""
        user = new_user(coa_world)
        sid = online(acct, shard_conn, COA_T, user)
        coa_world.admin("subscriber", "set", "--tenant", str(COA_T[0]), user, "--status", "suspended")
        assert wait_until(lambda: attempts(shard_conn, COA_T, user), 10), sidecar.log_tail()
        assert attempts(shard_conn, COA_T, user)[0][:6] == ("disconnect", "suspended", 1, "ack", None, sid)

        a, b = new_user(coa_world, COA_T2), new_user(coa_world, COA_T2)
        sids = {online(acct, shard_conn, COA_T2, a, "10.46.0.1"), online(acct, shard_conn, COA_T2, b, "10.46.0.2")}
        try:
            coa_world.admin("tenant", "suspend", "--tenant", str(COA_T2[0]))
            assert wait_until(lambda: attempts(shard_conn, COA_T2, a) and attempts(shard_conn, COA_T2, b), 10), \
                sidecar.log_tail()
        finally:
            coa_world.admin("tenant", "resume", "--tenant", str(COA_T2[0]))
        got = {text_attr(r, 44) for u in (a, b) for r in listener.of(u)}
        assert got == sids
        assert all(r["to"] == COA_T2[1] and r["auth_ok"] and r["ma_ok"] for u in (a, b) for r in listener.of(u))
        assert {attempts(shard_conn, COA_T2, u)[0][1] for u in (a, b)} == {"tenant_suspended"}

    def test_a_deleted_subscriber_and_an_expiry_set_in_the_past_are_disconnected(
            self, coa_world, sidecar, listener, acct, shard_conn):
        """`subscriber delete` and `subscriber set --expires-at <past>` end the subscriber's
        live sessions, as `--status expired` does (before, both stayed online: nothing
        was queued)."""
        gone, late = new_user(coa_world), new_user(coa_world)
        sid_gone = online(acct, shard_conn, COA_T, gone, "10.45.0.21")
        sid_late = online(acct, shard_conn, COA_T, late, "10.45.0.22")
        out = coa_world.admin("subscriber", "delete", "--tenant", str(COA_T[0]), gone)
        assert "disconnect" in out.stdout
        out = coa_world.admin("subscriber", "set", "--tenant", str(COA_T[0]), late, "--expires-at", "2020-01-01")
        assert "disconnect" in out.stdout
        assert wait_until(lambda: attempts(shard_conn, COA_T, gone) and attempts(shard_conn, COA_T, late), 10), \
            sidecar.log_tail()
        assert attempts(shard_conn, COA_T, gone)[0][:6] == ("disconnect", "deleted", 1, "ack", None, sid_gone)
        assert attempts(shard_conn, COA_T, late)[0][:6] == ("disconnect", "expired", 1, "ack", None, sid_late)
        # An expiry ahead changes nothing online.
        ahead = new_user(coa_world)
        coa_world.admin("subscriber", "set", "--tenant", str(COA_T[0]), ahead, "--expires-at", "2099-01-01")
        assert not listener.of(ahead)

    def test_a_session_in_the_writers_lag_is_disconnected_with_its_tenant(self, coa_world, sidecar, listener,
                                                                           acct, shard_conn, writer):
        """A session that started just before `tenant suspend`, its row not yet in the
        shard (the writer stopped here, started again a second later): found by the job's
        second look, resolve_wait_ms after it was queued, and disconnected. Before, a
        tenant-wide job read the rows once and never sent it a Disconnect."""
        user = new_user(coa_world, COA_T2)
        sid = "c" + uuid.uuid4().hex[:11]
        writer.stop()
        try:
            assert acct(COA_T2, acct_packet(user, sid, "Start", **{"Framed-IP-Address": "10.46.0.9"})
                        ).code == "Accounting-Response"
            coa_world.admin("tenant", "suspend", "--tenant", str(COA_T2[0]))
            time.sleep(1.0)
        finally:
            writer.start()
        try:
            assert wait_until(lambda: attempts(shard_conn, COA_T2, user), 15), sidecar.log_tail()
        finally:
            coa_world.admin("tenant", "resume", "--tenant", str(COA_T2[0]))
        assert attempts(shard_conn, COA_T2, user)[0][:6] == ("disconnect", "tenant_suspended", 1, "ack", None, sid)
        assert [text_attr(r, 44) for r in listener.of(user)] == [sid]

    def test_quota_used_up_mid_session_disconnects_once(self, coa_world, sidecar, listener, acct, shard_conn):
        """An Interim that takes the usage past the plan's data quota (10,000 bytes): one
        Disconnect (reason data_quota); a further Interim over the quota sends no second
        one (deduped)."""
        user = new_user(coa_world, plan="quota")
        sid = online(acct, shard_conn, COA_T, user)
        ans = acct(COA_T, acct_packet(user, sid, "Interim-Update", inp=3000, out=3000, t=60))
        assert ans.code == "Accounting-Response"
        time.sleep(1.0)
        assert not listener.of(user)  # under the quota: nothing
        ans = acct(COA_T, acct_packet(user, sid, "Interim-Update", inp=6000, out=6000, t=120))
        assert ans.code == "Accounting-Response"
        assert wait_until(lambda: attempts(shard_conn, COA_T, user), 10), sidecar.log_tail()
        assert attempts(shard_conn, COA_T, user)[0][:6] == ("disconnect", "data_quota", 1, "ack", None, sid)
        ans = acct(COA_T, acct_packet(user, sid, "Interim-Update", inp=9000, out=9000, t=180))
        assert ans.code == "Accounting-Response"
        time.sleep(1.5)
        assert len(listener.of(user)) == 1
        assert len(attempts(shard_conn, COA_T, user)) == 1


    def test_time_quota_used_up_mid_session(self, coa_world, sidecar, listener, acct, shard_conn):
        """An Interim whose session time reaches the plan's time quota (100 s): a Disconnect
        with reason time_quota."""
        plan = "tq-" + uuid.uuid4().hex[:6]
        coa_world.admin("plan", "add", "--tenant", str(COA_T[0]), "--name", plan, "--time-quota-s", "100",
                        "--simultaneous-use", "2")
        user = new_user(coa_world, plan=plan)
        sid = online(acct, shard_conn, COA_T, user)
        ans = acct(COA_T, acct_packet(user, sid, "Interim-Update", inp=10, out=10, t=120))
        assert ans.code == "Accounting-Response"
        assert wait_until(lambda: attempts(shard_conn, COA_T, user), 10), sidecar.log_tail()
        assert attempts(shard_conn, COA_T, user)[0][:6] == ("disconnect", "time_quota", 1, "ack", None, sid)


class TestUnits:
    def test_encoding_matches_pyrad(self):
        """The sidecar's packet (authenticator, Message-Authenticator) verifies with pyrad."""
        from pyrad import packet as pp
        from pyrad.dictionary import Dictionary

        from coa_sender import radius
        secret = b"s3cret"
        raw = radius.encode_request(40, 7, secret, radius.identification("u", "sid-1", "10.0.0.1", "10.0.0.2", 1))
        pkt = pp.CoAPacket(secret=secret, dict=Dictionary(), packet=raw)
        assert pkt.code == 40 and pkt.id == 7
        assert pkt.VerifyCoARequest()
        assert pkt.verify_message_authenticator()

    def test_directory_entry_carries_the_coa_port(self):
        """A NAS on another CoA port is packed with it; one on 3799 keeps the short entry an
        older module reads (6 fields strict, 7 with the kind check off)."""
        import dataclasses

        import msgpack
        strict = Nas(7, 3, "10.0.0.1", "s", "mikrotik", True)
        moved = dataclasses.replace(strict, coa_port=1700)
        off = dataclasses.replace(strict, kind_check="off")
        assert len(msgpack.unpackb(strict.pack())) == 6 and len(msgpack.unpackb(off.pack())) == 7
        assert len(msgpack.unpackb(moved.pack())) == 8
        for nas in (strict, moved, off, dataclasses.replace(off, coa_port=1)):
            assert Nas.unpack(nas.pack()) == nas

    def test_rate_attributes_as_freeradius_defines_them(self):
        """Every attribute a dialect renders has, in coa_sender.radius, the vendor, number
        and type of FreeRADIUS's own dictionaries (the ones radiusd sends the Accept with)."""
        import re
        from pathlib import Path

        from coa_sender import radius
        from rlm_wificore.policy import rate_pairs
        from wificore.vendors import VENDORS

        defined: dict[str, tuple[int, int, str]] = {}
        for path in sorted(Path("/usr/share/freeradius").glob("dictionary.*")):
            vendor = 0
            for line in path.read_text(errors="replace").splitlines():
                m = re.match(r"^VENDOR\s+\S+\s+(\d+)", line)
                if m:
                    vendor = int(m.group(1))
                m = re.match(r"^ATTRIBUTE\s+(\S+)\s+(\d+)\s+(\w+)(.*)$", line)
                if m and m.group(1) in radius.ATTRIBUTES and m.group(1) not in defined:
                    kind = "tagged" if "has_tag" in m.group(4) else m.group(3)
                    defined[m.group(1)] = (vendor, int(m.group(2)), kind)
        assert defined == radius.ATTRIBUTES
        for vendor in VENDORS:
            pairs = rate_pairs(vendor, 2000, 10000)
            attrs = radius.rendered(pairs)
            assert len(attrs) == len(pairs), vendor
            assert (vendor == "generic") == (not attrs), vendor

    def test_no_rate_is_never_a_zero_rate(self):
        """A plan whose rates were both cleared (`plan set --clear`): the CoA carries no
        service at 0 bit/s (Juniper rendered wificore-rate-up(0), which throttles the
        session to nothing); MikroTik's 0k/0k is its "unlimited"."""
        from rlm_wificore.policy import rate_pairs
        from wificore.vendors import VENDORS
        for vendor in VENDORS:
            for pair in rate_pairs(vendor, 0, 0):
                assert vendor in ("mikrotik", "accel-ppp"), (vendor, pair)
        assert rate_pairs("juniper", 0, 0) == []
        assert rate_pairs("juniper", 0, 3000) == [("ERX-Service-Activate:1", "wificore-rate-down(3000000)")]

    def test_a_bad_answer_is_ignored(self):
        from coa_sender import radius
        secret = b"s"
        req = radius.encode_request(40, 9, secret, [])
        good = struct.pack("!BBH", 41, 9, 20)
        good += hashlib.md5(good + req[4:20] + secret).digest()
        assert radius.check_response(good, req, secret) == (41, [])
        assert radius.check_response(good, req, b"other") is None
        assert radius.check_response(good[:1] + b"\x08" + good[2:], req, secret) is None  # another id


    def test_one_tenants_jobs_take_their_turn(self):
        """Ten long jobs of one tenant, then one of another: with 4 workers a tenant runs
        at most one job at a time (workers / 4), so the other tenant's job starts at once
        instead of behind the ten (the job threads are not one first-in-first-out queue)."""
        import collections
        import concurrent.futures
        import types

        from coa_sender.service import Sidecar
        from coa_sender.stats import CoaStats

        started: dict[str, float] = {}
        sc = object.__new__(Sidecar)
        sc.cfg = types.SimpleNamespace(workers=4)
        sc.share = 1
        sc.jobs = concurrent.futures.ThreadPoolExecutor(4)
        sc.lock, sc.stopping, sc.stats, sc.keys = threading.Lock(), threading.Event(), CoaStats(), K
        sc.inflight, sc.waiting, sc.turns = set(), {}, collections.deque()
        sc.running, sc.running_total = collections.Counter(), 0
        sc.redis = types.SimpleNamespace(xack=lambda *a: None, xdel=lambda *a: None)

        def handle(job_id, job):
            started[job_id] = time.monotonic()
            if job["tenant"] == "1":
                time.sleep(0.3)
        sc.handle = handle
        t0 = time.monotonic()
        for i in range(10):
            sc.dispatch(f"1-{i}", {b"op": b"disconnect", b"tenant": b"1", b"user": b"u"})
        sc.dispatch("2-0", {b"op": b"disconnect", b"tenant": b"2", b"user": b"v"})
        assert wait_until(lambda: len(started) == 11 and sc.running_total == 0, 10), started
        sc.jobs.shutdown(wait=True)
        assert started["2-0"] - t0 < 0.2, started["2-0"] - t0
        firsts = sorted(started[f"1-{i}"] - t0 for i in range(10))
        assert all(b - a >= 0.25 for a, b in zip(firsts, firsts[1:], strict=False))  # one at a time
        assert sc.running_total == 0 and not sc.waiting and not sc.inflight

    def test_a_hung_shard_costs_the_quota_watcher_one_deadline(self):
        """The quota watcher's plan reads of a tenant whose shard accepts connections and
        never answers: one deadline for all its subscribers in a read, and none again
        right after (one thread checks every tenant: it must not stall per subscriber)."""
        import types

        from coa_sender.quota import QuotaWatcher
        from coa_sender.service import Shards
        from coa_sender.stats import CoaStats
        from wificore.shardmap import Shard, ShardMap

        silent = socket.socket()  # the kernel completes the handshakes; nothing is said
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        try:
            dsn = f"host=127.0.0.1 port={silent.getsockname()[1]} dbname=x user=x"
            sidecar = types.SimpleNamespace(
                shards=Shards(ShardMap([Shard("hung", 1, 1000, dsn, dsn, dsn, dsn)]), 1000),
                stats=CoaStats(), keys=K, settings=types.SimpleNamespace(stream_partitions=1),
                redis=None, cfg=None)
            watcher = QuotaWatcher(sidecar)  # type: ignore[arg-type]
            subs = [(7, f"u{i}") for i in range(4)]
            t0 = time.monotonic()
            watcher.check(subs)
            first = time.monotonic() - t0
            t0 = time.monotonic()
            watcher.check(subs)
            again = time.monotonic() - t0
        finally:
            silent.close()
        assert first < 3.5, first  # one connect deadline (2 s), not one per subscriber
        assert again < 0.5, again
        assert sidecar.stats.errors["quota"] == 1

    def test_the_sidecar_follows_a_new_shard_map(self, tmp_path):
        """A tenant move writes a new shard map: the sidecar reads the moved tenant's
        sessions and plans, and records its attempts, on the new shard without a restart."""
        from coa_sender.config import load
        from coa_sender.service import Sidecar
        from wificore.shardmap import write_placement

        path = tmp_path / "shards.toml"
        path.write_text('[[shard]]\nname = "shard1"\nfirst_tenant = 1\nlast_tenant = 499\n'
                        'dsn = "postgresql://a@127.0.0.1:1/w"\n\n[[shard]]\nname = "shard2"\n'
                        'first_tenant = 500\nlast_tenant = 999\ndsn = "postgresql://a@127.0.0.1:2/w"\n')
        settings, cfg = load({"WIFICORE_SHARD_MAP": str(path), "WIFICORE_REDIS_URL": "redis://127.0.0.1:1/0",
                              "WIFICORE_COA_QUOTA_CHECK": "0"})
        sc = Sidecar(settings, cfg)
        loop = threading.Thread(target=sc.run)  # its Redis does not answer: the loop goes on
        loop.start()
        try:
            assert sc.shards.map.shard_for(7).name == "shard1"
            write_placement(path, 7, "shard2")
            assert wait_until(lambda: sc.shards.map.shard_for(7).name == "shard2", 5)
        finally:
            sc.stop()
            loop.join(10)

def test_the_sidecar_role_reads_plans_not_passwords(coa_world):
    """The writer's role (the sidecar's DSN) may insert attempt rows, read plans and a
    subscriber's plan id, and no password."""
    dsn = coa_world.pg[0].dsn("wificore_batch")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT count(*) FROM coa_attempts").fetchone()
        conn.execute("SELECT count(*) FROM plans").fetchone()
        conn.execute("SELECT tenant_id, username, plan_id FROM subscribers LIMIT 1").fetchall()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT password FROM subscribers LIMIT 1")
