"""Accounting through a real radiusd: spooled, forwarded to Redis, counted."""

from __future__ import annotations

import time

from rlm_wificore.records import session_key
from tests import state
from tests.conftest import TENANT_A
from wificore import wire
from wificore.keys import Keys

K = Keys("wc")


def wait_until(check, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    return check()


def acct_packet(user, sid, status, *, inp=0, out=0, t=0, gw_in=0, **extra):
    attrs = {"User-Name": user, "Acct-Session-Id": sid, "Acct-Status-Type": status,
             "Acct-Input-Octets": inp, "Acct-Output-Octets": out, "Acct-Session-Time": t,
             "NAS-Port": 1, "Calling-Station-Id": "AA-BB-CC-00-11-22"}
    if gw_in:
        attrs["Acct-Input-Gigawords"] = gw_in
    attrs.update(extra)
    return attrs


def nas_id_of(shard_conn, tenant):
    return shard_conn(tenant[0]).execute("SELECT nas_id FROM nas WHERE tenant_id = %s",
                                         (tenant[0],)).fetchone()[0]


class TestAccountingPath:
    def test_start_interim_stop_updates_live_and_usage(self, acct, subscriber, redis):
        """Start adds a live session, Interim adds usage deltas, Stop ends the session."""
        user = subscriber()
        t = TENANT_A[0]
        assert acct(TENANT_A, acct_packet(user, "81000001", "Start")).code == "Accounting-Response"
        assert wait_until(lambda: state.sessions(redis, K, t, user) == 1)
        assert acct(TENANT_A, acct_packet(user, "81000001", "Interim-Update",
                                          inp=1000, out=5000, t=60)).code == "Accounting-Response"
        assert wait_until(lambda: state.usage_field(redis, K, t, user, "octets") == b"6000")
        # A retransmission of the same interim adds nothing.
        acct(TENANT_A, acct_packet(user, "81000001", "Interim-Update", inp=1000, out=5000, t=60))
        acct(TENANT_A, acct_packet(user, "81000001", "Stop", inp=1500, out=6000, t=90))
        assert wait_until(lambda: state.sessions(redis, K, t, user) == 0)
        assert state.usage_field(redis, K, t, user, "octets") == b"7500"
        assert state.usage_field(redis, K, t, user, "time_s") == b"90"

    def test_gigawords_fold_into_64_bit(self, acct, subscriber, redis):
        """Acct-Input-Gigawords counts 2^32 octets each."""
        user = subscriber()
        acct(TENANT_A, acct_packet(user, "81000002", "Interim-Update", inp=5, gw_in=3, t=10))
        assert wait_until(lambda: state.usage_field(redis, K, TENANT_A[0], user, "octets")
                          == str(3 * 2**32 + 5).encode())

    def test_record_reaches_stream(self, acct, subscriber, redis, shard_conn):
        """The normalised record lands in the tenant's stream partition."""
        user = subscriber()
        acct(TENANT_A, acct_packet(user, "81000003", "Start"))
        key = session_key(TENANT_A[0], nas_id_of(shard_conn, TENANT_A), "81000003", user)

        def found():
            for p in range(4):
                for _id, fields in redis.xrange(K.stream(p), count=100000):
                    kind, rec = wire.unpack(fields[b"d"])
                    if kind == "acct" and rec["session_key"] == key:
                        return rec
            return None
        rec = wait_until(found)
        assert rec and rec["status"] == "start" and rec["username"] == user

    def test_missing_session_id_goes_to_dead_letter(self, acct, redis):
        """A Start without Acct-Session-Id is answered and dead-lettered with a reason (in the
        dead-letter stream of bucket tenant % stream_partitions: it names no subscriber)."""
        dead = K.dead_letter_of(TENANT_A[0] % K.partitions)
        before = redis.xlen(dead)
        ans = acct(TENANT_A, {"User-Name": "x", "Acct-Status-Type": "Start"})
        assert ans.code == "Accounting-Response"
        assert wait_until(lambda: redis.xlen(dead) > before)
        last = redis.xrevrange(dead, count=1)[0][1]
        assert b"Acct-Session-Id" in last[b"reason"]

    def test_accounting_on_clears_live_sessions(self, acct, subscriber, redis):
        """Accounting-On from a NAS ends every live session it had."""
        user = subscriber()
        t = TENANT_A[0]
        acct(TENANT_A, acct_packet(user, "81000004", "Start"))
        assert wait_until(lambda: state.sessions(redis, K, t, user) == 1)
        acct(TENANT_A, {"Acct-Status-Type": "Accounting-On", "Acct-Session-Id": "0"})
        assert wait_until(lambda: state.sessions(redis, K, t, user) == 0)

    def test_accounting_on_drops_the_cached_states_of_that_nas_users_only(self, world, radiusd, acct, auth,
                                                                           subscriber, redis):
        """radiusd's in-process copies after an Accounting-On: the users of that NAS are
        read again (a login refused by Simultaneous-Use is accepted at once), the tenant's
        others keep theirs (issue 13): one whose session is on another NAS stays refused
        by its cached state though its Redis state is gone (deleted by hand, unannounced)."""
        other = (TENANT_A[0], "127.0.44.1", "secret-44", "mikrotik")
        world.admin("nas", "add", "--tenant", str(TENANT_A[0]), "--name", "nas-44", "--ip", other[1],
                    "--secret", other[2], "--vendor", "mikrotik", "--replace")
        assert wait_until(lambda: redis.hexists(K.nas_directory, other[1]), 10)
        here, there = subscriber(), subscriber()
        t = TENANT_A[0]
        login = {"User-Password": "pw-123456"}

        def refused(user: str) -> bool:
            ans = auth(TENANT_A, {**login, "User-Name": user})
            return ans.code == "Access-Reject" and "simultaneous" in (ans.get("Reply-Message") or "")
        assert acct(TENANT_A, acct_packet(here, "81000005", "Start")).code == "Accounting-Response"
        assert acct(other, acct_packet(there, "81000006", "Start")).code == "Accounting-Response"
        assert wait_until(lambda: refused(here) and refused(there), 10)  # both cached as live
        redis.delete(K.subscriber(t, there))
        assert refused(there)  # the cached state answers
        acct(TENANT_A, {"Acct-Status-Type": "Accounting-On", "Acct-Session-Id": "0"})
        assert wait_until(lambda: not refused(here), 10), radiusd.log_tail()
        assert refused(there)


def stream_record(redis, key, status=None):
    """The last record of a session (by its radiusd key) that reached the stream, decoded."""
    found = None
    for p in range(4):
        for _id, fields in redis.xrange(K.stream(p), count=100000):
            kind, rec = wire.unpack(fields[b"d"])
            if kind == "acct" and rec["session_key"] == key and status in (None, rec["status"]):
                found = rec
    return found


class TestNasSemantics:
    """What real NAS families send, normalised (issue 14, points 3-5)."""

    def key(self, shard_conn, user, sid):
        return session_key(TENANT_A[0], nas_id_of(shard_conn, TENANT_A), sid, user)

    def test_gigawords_at_the_top_do_not_wrap_the_usage_counter(self, acct, subscriber, redis, shard_conn):
        """Acct-Input-Gigawords 2^31-1 (before: usage -2^63) and Acct-Session-Time 2^32-1
        (before: +4.29e9 s) are refused; the record is answered and reaches the stream flagged."""
        user = subscriber()
        t = TENANT_A[0]
        assert acct(TENANT_A, acct_packet(user, "82000001", "Start")).code == "Accounting-Response"
        acct(TENANT_A, acct_packet(user, "82000001", "Interim-Update", inp=1000, out=2000, t=60))
        assert wait_until(lambda: state.usage_field(redis, K, t, user, "octets") == b"3000")
        ans = acct(TENANT_A, acct_packet(user, "82000001", "Interim-Update", inp=1000, out=2000, t=120,
                                         gw_in=2**31 - 1))
        assert ans.code == "Accounting-Response"
        ans = acct(TENANT_A, acct_packet(user, "82000001", "Interim-Update", inp=1000, out=2000, t=2**32 - 1))
        assert ans.code == "Accounting-Response"
        key = self.key(shard_conn, user, "82000001")
        assert wait_until(lambda: (stream_record(redis, key) or {}).get("session_time_s") == 2**32 - 1)
        assert state.usage_field(redis, K, t, user, "octets") == b"3000"
        assert state.usage_field(redis, K, t, user, "time_s") == b"120"
        assert stream_record(redis, key)["counter_flags"] == 1

    def test_coovachilli_client_view_point_is_swapped(self, acct, subscriber, redis, shard_conn):
        """ChilliSpot-Acct-View-Point = 2: input is what the client downloaded; stored as the
        NAS's view (input = from the client)."""
        user = subscriber()
        acct(TENANT_A, acct_packet(user, "82000002", "Interim-Update", inp=9000, out=100, t=60,
                                   **{"Vendor-14559-Attr-10": "0x00000002"}))
        key = self.key(shard_conn, user, "82000002")
        rec = wait_until(lambda: stream_record(redis, key))
        assert (rec["input_octets"], rec["output_octets"]) == (100, 9000)

    def test_line_identification_and_addresses(self, acct, subscriber, redis, shard_conn):
        """NAS-Port-Id, Called-Station-Id and NAS-Identifier are kept; Framed-IP 0.0.0.0 is no
        address; Cisco's client-mac-address AVPair is the calling MAC without Calling-Station-Id."""
        user = subscriber()
        pkt = acct_packet(user, "82000003", "Start", **{
            "Framed-IP-Address": "0.0.0.0", "NAS-Port-Id": "GigabitEthernet0/0/1.100:100",
            "Called-Station-Id": "ssid-Cafe", "NAS-Identifier": "bras-7",
            "Cisco-AVPair": "audit-session-id=0A0B0C", "Cisco-AVPair ": "client-mac-address=aabb.cc00.1122"})
        del pkt["Calling-Station-Id"]
        assert acct(TENANT_A, pkt).code == "Accounting-Response"
        key = self.key(shard_conn, user, "82000003")
        rec = wait_until(lambda: stream_record(redis, key))
        assert rec["framed_ip"] is None
        assert (rec["nas_port_id"], rec["called_station_id"], rec["nas_identifier"]) == (
            "GigabitEthernet0/0/1.100:100", "ssid-Cafe", "bras-7")
        assert rec["calling_station_id"] == "aabb.cc00.1122"

    def test_a_session_id_reused_after_a_stop_is_live_again(self, acct, auth, subscriber, redis, shard_conn):
        """RouterOS after a reboot: Start, Stop, then a Start with the same Acct-Session-Id is a
        live session again, counted, and Simultaneous-Use 1 refuses a second login (before:
        merged into the stopped one, invisible)."""
        user = subscriber()
        t = TENANT_A[0]
        acct(TENANT_A, acct_packet(user, "82000004", "Start"))
        acct(TENANT_A, acct_packet(user, "82000004", "Stop", inp=10, out=20, t=30))
        key = self.key(shard_conn, user, "82000004")
        assert wait_until(lambda: stream_record(redis, key, "stop"))
        assert state.sessions(redis, K, t, user) == 0
        acct(TENANT_A, acct_packet(user, "82000004", "Start", **{"Event-Timestamp": int(time.time()) + 120}))
        assert wait_until(lambda: state.sessions(redis, K, t, user) == 1)
        acct(TENANT_A, acct_packet(user, "82000004", "Interim-Update", inp=5, out=5, t=60,
                                   **{"Event-Timestamp": int(time.time()) + 180}))
        assert wait_until(lambda: state.usage_field(redis, K, t, user, "octets") == b"40")
        login = {"User-Name": user, "User-Password": "pw-123456"}
        ans = wait_until(lambda: (lambda a: a if a.code == "Access-Reject" else None)(auth(TENANT_A, login)))
        assert ans is not None and "simultaneous" in ans.get("Reply-Message")
        keys = {r["live_session_key"] for r in [stream_record(redis, key, "stop"),
                                                stream_record(redis, key, "interim")]}
        assert len(keys) == 2

    def test_a_start_retransmitted_after_its_stop_refuses_no_login(self, acct, auth, subscriber, redis, shard_conn):
        """A NAS retransmits a Start (its answer was lost) and the copy is handled after the
        session's Stop: the session stays ended, Simultaneous-Use 1 lets the subscriber in
        (before: live again until its deadline, refusing every login meanwhile), one row."""
        user = subscriber()
        t, now = TENANT_A[0], int(time.time())
        start = acct_packet(user, "82000009", "Start", **{"Event-Timestamp": now - 30})
        acct(TENANT_A, start)
        acct(TENANT_A, acct_packet(user, "82000009", "Stop", inp=10, out=20, t=30, **{"Event-Timestamp": now}))
        key = self.key(shard_conn, user, "82000009")
        assert wait_until(lambda: stream_record(redis, key, "stop"))
        acct(TENANT_A, {**start, "Acct-Delay-Time": 31})
        assert wait_until(lambda: len([1 for p in range(4) for _i, f in redis.xrange(K.stream(p), count=100000)
                                       if wire.unpack(f[b"d"])[1].get("session_key") == key]) == 3)
        assert state.sessions(redis, K, t, user) == 0
        ans = auth(TENANT_A, {"User-Name": user, "User-Password": "pw-123456"})
        assert ans.code == "Access-Accept", ans.get("Reply-Message")
        assert stream_record(redis, key, "start")["live_session_key"] == stream_record(redis, key, "stop")[
            "live_session_key"]
