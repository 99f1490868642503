"""Accounting through a real radiusd: spooled, forwarded to Redis, counted."""

from __future__ import annotations

import time

from rlm_wificore.records import session_key
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
        assert wait_until(lambda: redis.zcard(K.live(t, user)) == 1)
        assert acct(TENANT_A, acct_packet(user, "81000001", "Interim-Update",
                                          inp=1000, out=5000, t=60)).code == "Accounting-Response"
        assert wait_until(lambda: redis.hget(K.usage(t, user), "octets") == b"6000")
        # A retransmission of the same interim adds nothing.
        acct(TENANT_A, acct_packet(user, "81000001", "Interim-Update", inp=1000, out=5000, t=60))
        acct(TENANT_A, acct_packet(user, "81000001", "Stop", inp=1500, out=6000, t=90))
        assert wait_until(lambda: redis.zcard(K.live(t, user)) == 0)
        assert redis.hget(K.usage(t, user), "octets") == b"7500"
        assert redis.hget(K.usage(t, user), "time_s") == b"90"

    def test_gigawords_fold_into_64_bit(self, acct, subscriber, redis):
        """Acct-Input-Gigawords counts 2^32 octets each."""
        user = subscriber()
        acct(TENANT_A, acct_packet(user, "81000002", "Interim-Update", inp=5, gw_in=3, t=10))
        assert wait_until(lambda: redis.hget(K.usage(TENANT_A[0], user), "octets")
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
        """A Start without Acct-Session-Id is answered and dead-lettered with a reason."""
        before = redis.xlen(K.dead_letter)
        ans = acct(TENANT_A, {"User-Name": "x", "Acct-Status-Type": "Start"})
        assert ans.code == "Accounting-Response"
        assert wait_until(lambda: redis.xlen(K.dead_letter) > before)
        last = redis.xrevrange(K.dead_letter, count=1)[0][1]
        assert b"Acct-Session-Id" in last[b"reason"]

    def test_accounting_on_clears_live_sessions(self, acct, subscriber, redis):
        """Accounting-On from a NAS ends every live session it had."""
        user = subscriber()
        t = TENANT_A[0]
        acct(TENANT_A, acct_packet(user, "81000004", "Start"))
        assert wait_until(lambda: redis.zcard(K.live(t, user)) == 1)
        acct(TENANT_A, {"Acct-Status-Type": "Accounting-On", "Acct-Session-Id": "0"})
        assert wait_until(lambda: redis.zcard(K.live(t, user)) == 0)
