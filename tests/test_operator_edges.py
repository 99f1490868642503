"""Odd but valid operator input, end to end through radiusd (issue 16): what the admin
CLI accepts must work on the wire as typed.

* radiusd reads every string rlm_python3 hands it as a double-quoted string (backslash
  escapes: ``\\\\``, ``\\n``, ``\\"``, octal ``\\101``): a NAS secret, a cleartext password
  (CHAP, MS-CHAP) or a pool name with a backslash was altered on its way in.
* Session-Timeout is a 32-bit integer: a time left beyond 2^32 - 1 s (a huge time quota,
  an expiry far ahead) wrapped around in radiusd to an arbitrary, possibly tiny value.
"""

from __future__ import annotations

import hashlib
import time

import pytest

from tests import rawradius as rr
from tests.test_lifecycle import make_tenant

#: Tenants of these tests only (shard1), each with its own NAS address.
BASE = 60
BACKSLASHES = ('x\\"y', "a\\\\b", "a\\nb", "o\\101", "end\\")


def tenant(n: int, secret: str = "edge-secret", vendor: str = "mikrotik"):
    return (BASE + n, f"127.0.{BASE + n}.1", secret, vendor)


def pap_raw(radiusd, t, user: str, password: str):
    return rr.send(radiusd.auth_port, rr.ACCESS_REQUEST, t[2],
                   [(rr.USER_NAME, user.encode()), (rr.USER_PASSWORD, password.encode())], source=t[1])


def chap_raw(radiusd, t, user: str, password: str):
    def attrs(ident: int, authenticator: bytes):
        digest = hashlib.md5(bytes([ident]) + password.encode() + authenticator).digest()
        return [(rr.USER_NAME, user.encode()), (rr.CHAP_PASSWORD, bytes([ident]) + digest)]
    return rr.send(radiusd.auth_port, rr.ACCESS_REQUEST, t[2], attrs, source=t[1])


@pytest.fixture(scope="module")
def edge(world):
    """One tenant with a plain secret for the password and reply cases."""
    t = tenant(0)
    make_tenant(world, t)
    return t


class TestBackslashes:
    @pytest.mark.parametrize("i", range(len(BACKSLASHES)))
    def test_a_nas_secret_with_backslashes_works(self, world, radiusd, subscriber, i):
        """A NAS whose secret holds a backslash escape gets answers (it got none: radiusd
        keyed the client with the un-escaped secret and dropped every packet)."""
        t = tenant(1 + i, secret=BACKSLASHES[i])
        make_tenant(world, t)
        user = subscriber(tenant=t)
        code, _ = pap_raw(radiusd, t, user, "pw-123456")
        assert code == "Access-Accept"

    @pytest.mark.parametrize("password", BACKSLASHES)
    def test_chap_with_a_backslash_in_the_password(self, radiusd, edge, subscriber, password):
        """CHAP (rlm_chap against the Cleartext-Password the module hands over) accepts the
        right password with a backslash and rejects a wrong one; PAP agrees."""
        user = subscriber(tenant=edge, password=password)
        assert chap_raw(radiusd, edge, user, password)[0] == "Access-Accept"
        assert pap_raw(radiusd, edge, user, password)[0] == "Access-Accept"
        assert chap_raw(radiusd, edge, user, password + "x")[0] == "Access-Reject"

    def test_a_pool_name_with_a_backslash_is_sent_as_typed(self, world, radiusd, edge, subscriber):
        world.admin("plan", "add", "--tenant", str(edge[0]), "--name", "pool-bs",
                    "--framed-pool", "pool\\nx", "--framed-ipv6-pool", "v6\\\\pool")
        user = subscriber(tenant=edge, plan="pool-bs")
        code, reply = pap_raw(radiusd, edge, user, "pw-123456")
        assert code == "Access-Accept"
        assert rr.values(reply, 88) == [b"pool\\nx"]          # Framed-Pool
        assert rr.values(reply, 100) == [b"v6\\\\pool"]       # Framed-IPv6-Pool


class TestSessionTimeout32Bits:
    def test_a_huge_time_quota_is_capped_not_wrapped(self, world, radiusd, edge, subscriber):
        """A time quota of 5e9 s (bigint in the plan) left Session-Timeout = 5e9 mod 2^32."""
        world.admin("plan", "add", "--tenant", str(edge[0]), "--name", "tq-huge", "--time-quota-s",
                    "5000000000")
        user = subscriber(tenant=edge, plan="tq-huge")
        code, reply = pap_raw(radiusd, edge, user, "pw-123456")
        assert code == "Access-Accept"
        (raw,) = rr.values(reply, rr.SESSION_TIMEOUT)
        assert int.from_bytes(raw, "big") == 2**32 - 1

    def test_an_expiry_far_ahead_is_capped_not_wrapped(self, world, radiusd, edge, subscriber):
        user = subscriber(tenant=edge, expires_at="2200-01-01")
        code, reply = pap_raw(radiusd, edge, user, "pw-123456")
        assert code == "Access-Accept"
        (raw,) = rr.values(reply, rr.SESSION_TIMEOUT)
        assert int.from_bytes(raw, "big") == 2**32 - 1


class TestDatesAtTheCalendarsEnd:
    @pytest.mark.parametrize("value", ["9999-12-31", "9999-12-31T23:00-05:00", "0001-01-01T00:00+05:00"])
    def test_a_date_past_the_calendar_is_one_sentence(self, world, edge, value):
        """`--expires-at 9999-12-31` (an operator's "never") ended in an OverflowError
        traceback; an instant past year 9999 in UTC would be stored and then fail every
        read of the subscriber."""
        out = world.admin("subscriber", "add", "--tenant", str(edge[0]), "--username", "never-" + value[:4],
                          "--password", "pw-123456", "--kind", "pppoe", "--plan", "basic",
                          "--expires-at", value, check=False)
        assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
        assert "expires_at:" in out.stderr and "leave it out for no expiry" in out.stderr


class TestAddresses:
    def test_an_ipv4_mapped_nas_address_is_its_ipv4_address(self, world, radiusd, edge, subscriber):
        """`nas set --new-ip ::ffff:127.0.66.9` stored the IPv6 form: the NAS's packets (from
        127.0.66.9) were never matched to it, and another tenant could claim 127.0.66.9."""
        t = tenant(6)
        make_tenant(world, t)
        world.admin("nas", "set", "--tenant", str(t[0]), "--name", f"nas-{t[0]}", "--new-ip", "::ffff:127.0.66.9")
        listed = world.admin("nas", "list", "--tenant", str(t[0])).stdout
        assert "\t127.0.66.9\t" in listed and "::ffff:" not in listed, listed
        moved = (t[0], "127.0.66.9", t[2], t[3])
        user = subscriber(tenant=moved)
        assert pap_raw(radiusd, moved, user, "pw-123456")[0] == "Access-Accept"
        other = world.admin("nas", "add", "--tenant", str(edge[0]), "--name", "claim", "--ip",
                            "::ffff:127.0.66.9", "--secret", "x", check=False)
        assert other.returncode != 0 and "already belongs to a NAS of tenant" in other.stderr

    def test_an_ipv6_framed_ip_is_refused_and_never_sent_as_0_0_0_0(self, world, radiusd, edge, subscriber,
                                                                    shard_conn):
        out = world.admin("subscriber", "add", "--tenant", str(edge[0]), "--username", "v6-framed",
                          "--password", "pw-123456", "--kind", "pppoe", "--plan", "basic",
                          "--framed-ip", "2001:db8::5", check=False)
        assert out.returncode != 0 and "framed-ipv6-prefix" in out.stderr, out.stderr
        # One stored by another tool: no Framed-IP-Address at all (radiusd sent 0.0.0.0).
        user = subscriber(tenant=edge)
        shard_conn(edge[0]).execute("UPDATE subscribers SET framed_ip = '2001:db8::5' WHERE tenant_id = %s "
                                    "AND username = %s", (edge[0], user))
        import time
        deadline = time.monotonic() + 5
        while True:
            code, reply = pap_raw(radiusd, edge, user, "pw-123456")
            assert code == "Access-Accept"
            if not rr.values(reply, 8) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert rr.values(reply, 8) == []


class TestOneSentence:
    @pytest.mark.parametrize("args,expected", [
        (["plan", "set", "--name", "basic", "--rate-up-kbps", "99999999999"], "rate_up_kbps: must be at most"),
        (["plan", "add", "--name", "big", "--session-timeout-s", "5000000000"], "session_timeout_s: must be at most"),
        (["nas", "set", "--name", "second", "--new-name", "nas-60"], "new_name: 'nas-60' already names NAS"),
    ])
    def test_out_of_range_and_taken_names(self, world, edge, args, expected):
        """Before: `database: integer out of range` / `duplicate key value violates unique
        constraint` from PostgreSQL."""
        world.admin("nas", "add", "--tenant", str(edge[0]), "--name", "second", "--ip", "127.0.60.2",
                    "--secret", "x", "--replace")
        out = world.admin(args[0], args[1], "--tenant", str(edge[0]), *args[2:], check=False)
        assert out.returncode != 0 and expected in out.stderr, out.stderr


class TestNasGoneFromItsAddress:
    def test_a_deleted_or_moved_nas_is_refused_at_once_not_after_the_client_lifetime(
            self, world, radiusd, edge, subscriber, redis):
        """radiusd keeps a dynamic client for its lifetime (300 s here): before, a deleted
        NAS's logins were still accepted and its accounting stored (under a nas_id that no
        longer exists) until then, and so were a moved NAS's from its old address. Now its
        requests are refused within the announcement bound; a NAS whose vendor changed keeps
        working (its old client stays valid until radiusd looks it up again)."""
        from tests.test_accounting import acct_packet, wait_until
        t = tenant(7)
        make_tenant(world, t)
        user = subscriber(tenant=t)
        assert pap_raw(radiusd, t, user, "pw-123456")[0] == "Access-Accept"  # radiusd knows the client now
        world.admin("nas", "set", "--tenant", str(t[0]), "--name", f"nas-{t[0]}", "--vendor", "wispr")
        time.sleep(1.5)
        assert pap_raw(radiusd, t, user, "pw-123456")[0] == "Access-Accept"

        world.admin("nas", "set", "--tenant", str(t[0]), "--name", f"nas-{t[0]}", "--new-ip", "127.0.67.2")
        assert wait_until(lambda: pap_raw(radiusd, t, user, "pw-123456")[0] == "Access-Reject", 5)
        moved = (t[0], "127.0.67.2", t[2], t[3])
        assert pap_raw(radiusd, moved, user, "pw-123456")[0] == "Access-Accept"

        world.admin("nas", "delete", "--tenant", str(t[0]), "--name", f"nas-{t[0]}")
        assert wait_until(lambda: pap_raw(radiusd, moved, user, "pw-123456")[0] == "Access-Reject", 5)
        from tests.radius import send
        ans = send(radiusd.acct_port, "acct", moved[2], acct_packet(user, "gone-1", "Start"), source=moved[1],
                   timeout_s=0.5, retries=0)
        assert ans.code is None  # no NAS to book it under: not answered (as an unknown client)


def test_active_with_an_expiry_past_says_logins_are_still_rejected(world, radiusd, edge, subscriber):
    """`subscriber set --status active` on a subscriber whose expiry is past printed only
    "updated", while every login stayed rejected as expired."""
    user = subscriber(tenant=edge, expires_at="2020-01-01")
    out = world.admin("subscriber", "set", "--tenant", str(edge[0]), user, "--status", "active")
    assert "expired at" in out.stderr and "--expires-at" in out.stderr, out.stderr
    assert pap_raw(radiusd, edge, user, "pw-123456")[0] == "Access-Reject"
    out = world.admin("subscriber", "set", "--tenant", str(edge[0]), user, "--expires-at", "")
    assert "expired at" not in out.stderr
    from tests.test_accounting import wait_until
    assert wait_until(lambda: pap_raw(radiusd, edge, user, "pw-123456")[0] == "Access-Accept", 5)
