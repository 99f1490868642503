"""Tenant, plan and NAS lifecycle (issue 16): `tenant suspend/resume/delete`, `plan set`,
`nas list` across tenants, `nas delete`, against a running radiusd (never restarted)."""

from __future__ import annotations

import time
import uuid

from batch_writer.config import load
from batch_writer.worker import Writer
from tests import state
from tests.conftest import TENANT_A, TENANT_B, TENANT_C
from tests.test_accounting import acct_packet, wait_until
from tests.test_batch_writer import drain, new_prefix, push, writer_env
from tests.test_request_view import auth_reasons, records
from wificore.keys import Keys

K = Keys("wc")
#: Tenants of these tests only (shard1), each with its own NAS address.
SUSPENDED = (41, "127.0.41.1", "secret-41", "mikrotik")
DELETED = (42, "127.0.42.1", "secret-42", "generic")
#: Within this, a change reaches a running radiusd (NOTIFY -> relay -> every process).
BOUND_S = 5.0


def make_tenant(world, tenant) -> None:
    tid, ip, secret, vendor = tenant
    world.admin("tenant", "add", "--id", str(tid), "--name", f"tenant {tid}")
    world.admin("nas", "add", "--tenant", str(tid), "--name", f"nas-{tid}", "--ip", ip,
                "--secret", secret, "--vendor", vendor, "--replace")
    world.admin("plan", "add", "--tenant", str(tid), "--name", "basic")


def pap(auth, tenant, user, password="pw-123456"):
    return auth(tenant, {"User-Name": user, "User-Password": password})


class TestTenantSuspend:
    def test_suspend_rejects_logins_keeps_accounting_resume_restores(self, world, radiusd, auth, acct,
                                                                    subscriber, redis):
        """Accepted; after `tenant suspend`, on the same radiusd, rejected with reason
        tenant_suspended while its accounting is still answered and recorded; accepted
        again after `tenant resume`."""
        make_tenant(world, SUSPENDED)
        user = subscriber(tenant=SUSPENDED)
        assert pap(auth, SUSPENDED, user).accepted

        out = world.admin("tenant", "suspend", "--tenant", str(SUSPENDED[0]))
        assert "suspended" in out.stdout
        listed = world.admin("tenant", "list").stdout
        assert any(line.split("\t")[:1] == [str(SUSPENDED[0])] and "\tsuspended\t" in line
                   for line in listed.splitlines()), listed
        ans = wait_until(lambda: (a := pap(auth, SUSPENDED, user)).code == "Access-Reject" and a, BOUND_S)
        assert ans and ans.code == "Access-Reject", ans
        assert ans.get("Reply-Message") == "Service suspended, please contact your provider"
        assert wait_until(lambda: "tenant_suspended" in auth_reasons(redis, user), 5)

        sid = uuid.uuid4().hex[:12]
        for status in ("Start", "Stop"):
            ans = acct(SUSPENDED, acct_packet(user, sid, status, inp=100, out=200, t=5))
            assert ans.code == "Accounting-Response", ans.output
        stored = wait_until(lambda: {r["status"] for r in records(
            redis, "acct", lambda r: r["acct_session_id"] == sid)} >= {"start", "stop"}, 5)
        assert stored, "the suspended tenant's accounting was answered but not recorded"
        # Its NAS stays in the directory: a radiusd that looks the client up again still
        # answers its accounting.
        assert redis.hexists(K.nas_directory, SUSPENDED[1])

        world.admin("tenant", "resume", "--tenant", str(SUSPENDED[0]))
        ans = wait_until(lambda: (a := pap(auth, SUSPENDED, user)).accepted and a, BOUND_S)
        assert ans and ans.accepted, ans

    def test_unknown_tenant_is_named(self, world):
        out = world.admin("tenant", "suspend", "--tenant", "4343", check=False)
        assert out.returncode != 0 and "tenant: 4343 does not exist" in out.stderr


class TestTenantDelete:
    def test_delete_needs_yes_then_removes_rows_and_keys(self, world, radiusd, auth, acct, subscriber,
                                                       shard_conn, redis):
        make_tenant(world, DELETED)
        tid = DELETED[0]
        user = subscriber(tenant=DELETED)
        assert pap(auth, DELETED, user).accepted  # caches its profile, plan and status in Redis
        sid = uuid.uuid4().hex[:12]
        assert acct(DELETED, acct_packet(user, sid, "Start")).code == "Accounting-Response"
        assert wait_until(lambda: redis.keys(f"wc:{{{tid}}}:*"), 5)
        assert wait_until(lambda: redis.exists(K.subscriber(tid, user)), 5)  # its bucket's state keys too
        conn = shard_conn(tid)
        conn.execute("INSERT INTO sessions (tenant_id, session_key, nas_id, username, acct_session_id,"
                     " started_at, updated_at) VALUES (%s, %s, 1, %s, %s, now(), now())",
                     (tid, "k-" + sid, user, sid))

        refused = world.admin("tenant", "delete", "--tenant", str(tid), check=False)
        assert refused.returncode != 0 and "--yes" in refused.stderr, refused.stderr
        assert conn.execute("SELECT count(*) FROM subscribers WHERE tenant_id = %s", (tid,)).fetchone()[0] == 1

        out = world.admin("tenant", "delete", "--tenant", str(tid), "--yes")
        assert "deleted" in out.stdout
        for table in ("tenants", "subscribers", "plans", "nas", "sessions", "auth_log"):
            n = conn.execute(f"SELECT count(*) FROM {table} WHERE tenant_id = %s", (tid,)).fetchone()[0]
            assert n == 0, table
        assert redis.keys(f"wc:{{{tid}}}:*") == []
        assert redis.keys(f"wc:{{b*}}:*:{tid}:*") == [] and redis.keys(f"wc:{{b*}}:*:{tid}") == []
        assert wait_until(lambda: not redis.hexists(K.nas_directory, DELETED[1]), BOUND_S)
        assert redis.hexists(K.nas_directory, TENANT_A[1])  # the other tenants' stay


class TestPlanSet:
    def test_add_refuses_existing_name(self, world):
        tenant = str(TENANT_A[0])
        name = "p-" + uuid.uuid4().hex[:8]
        world.admin("plan", "add", "--tenant", tenant, "--name", name, "--rate-up-kbps", "1000",
                    "--data-quota-bytes", "5000000")
        again = world.admin("plan", "add", "--tenant", tenant, "--name", name, check=False)
        assert again.returncode != 0 and "already exists" in again.stderr and "plan set" in again.stderr
        row = plan_row(world, tenant, name)
        assert (row["rate_up_kbps"], row["data_quota_bytes"]) == ("1000", "5000000")

    def test_set_changes_only_what_it_is_given_on_running_radiusd(self, world, radiusd, auth, subscriber):
        """The new rate reaches a running radiusd (its caches invalidated); the other
        options stay."""
        tenant = str(TENANT_A[0])
        name = "p-" + uuid.uuid4().hex[:8]
        world.admin("plan", "add", "--tenant", tenant, "--name", name, "--rate-up-kbps", "2000",
                    "--rate-down-kbps", "10000", "--session-timeout-s", "3600", "--simultaneous-use", "3",
                    "--interim-interval-s", "120")
        user = subscriber(plan=name)
        ans = pap(auth, TENANT_A, user)
        assert ans.accepted and ans.get("Mikrotik-Rate-Limit") == "2000k/10000k", ans.output
        out = world.admin("plan", "set", "--tenant", tenant, "--name", name, "--rate-down-kbps", "20000")
        assert "rate_down_kbps" in out.stdout
        row = plan_row(world, tenant, name)
        assert (row["rate_up_kbps"], row["rate_down_kbps"], row["session_timeout_s"],
                row["simultaneous_use"], row["interim_interval_s"]) == ("2000", "20000", "3600", "3", "120")
        ans = wait_until(lambda: (a := pap(auth, TENANT_A, user)).get("Mikrotik-Rate-Limit")
                         == "2000k/20000k" and a, BOUND_S)
        assert ans, "radiusd kept the old rate"
        world.admin("plan", "set", "--tenant", tenant, "--name", name, "--clear", "session_timeout_s")
        assert plan_row(world, tenant, name)["session_timeout_s"] == ""

    def test_set_unknown_plan_and_nothing_to_change(self, world):
        out = world.admin("plan", "set", "--tenant", "1", "--name", "no-such-plan", "--rate-up-kbps", "1",
                          check=False)
        assert out.returncode != 0 and "does not exist" in out.stderr
        out = world.admin("plan", "set", "--tenant", "1", "--name", "basic", check=False)
        assert out.returncode != 0 and "nothing to change" in out.stderr


def plan_row(world, tenant: str, name: str) -> dict[str, str]:
    lines = world.admin("plan", "list", "--tenant", tenant).stdout.splitlines()
    header = lines[0].split("\t")
    for line in lines[1:]:
        row = dict(zip(header, line.split("\t"), strict=True))
        if row["name"] == name:
            return row
    raise AssertionError(f"no plan {name}")


class TestNas:
    def test_list_without_tenant_shows_every_tenant_and_shard(self, world):
        lines = world.admin("nas", "list").stdout.splitlines()
        header = lines[0].split("\t")
        assert header[:2] == ["tenant_id", "nas_id"] and "shard" in header
        rows = [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]
        seen = {(r["tenant_id"], r["ip"]) for r in rows}
        for tenant in (TENANT_A, TENANT_B, TENANT_C):
            assert (str(tenant[0]), tenant[1]) in seen, seen
        assert len({r["shard"] for r in rows}) == 2

    def test_delete_closes_its_open_sessions(self, world, radiusd, acct, subscriber, redis, shard_conn):
        """`nas delete` on a NAS with a live session: the NAS is gone from the shard and the
        directory, the session is no longer live (Simultaneous-Use counts it no more), and
        the Accounting-Off it queued closes the session's row (the batch writer's CLOSE_NAS)."""
        tenant = str(TENANT_A[0])
        nas = (TENANT_A[0], "127.0.43.1", "secret-43", "mikrotik")
        world.admin("nas", "add", "--tenant", tenant, "--name", "nas-43", "--ip", nas[1],
                    "--secret", nas[2], "--vendor", "mikrotik", "--replace")
        assert wait_until(lambda: redis.hexists(K.nas_directory, nas[1]), BOUND_S)
        nas_id = shard_conn(TENANT_A[0]).execute("SELECT nas_id FROM nas WHERE tenant_id = %s AND "
                                                 "name = 'nas-43'", (TENANT_A[0],)).fetchone()[0]
        user = subscriber()
        sid = uuid.uuid4().hex[:12]
        assert acct(nas, acct_packet(user, sid, "Start")).code == "Accounting-Response"
        assert wait_until(lambda: state.sessions(redis, K, TENANT_A[0], user, now=time.time()), 5)
        start = wait_until(lambda: records(redis, "acct", lambda r: r["acct_session_id"] == sid), 5)
        assert start

        out = world.admin("nas", "delete", "--tenant", tenant, "--name", "nas-43")
        assert "1 open sessions closed" in out.stdout, out.stdout
        assert "nas-43" not in world.admin("nas", "list", "--tenant", tenant).stdout
        assert wait_until(lambda: not redis.hexists(K.nas_directory, nas[1]), BOUND_S)
        assert state.sessions(redis, K, TENANT_A[0], user, now=time.time()) == 0
        assert not any(redis.exists(K.prior_nas_live(b, TENANT_A[0], nas_id)) for b in range(K.partitions))
        off = records(redis, "acct", lambda r: r["status"] == "off" and r["nas_id"] == nas_id
                      and r["tenant_id"] == TENANT_A[0])
        assert len(off) == 1

        # The writer, on a stream of this test's own (the session's is read by other tests):
        # the Start, then the Off, as radiusd's stream holds them.
        prefix = new_prefix()
        settings, cfg = load(writer_env(world, prefix))
        w = Writer(settings, cfg)
        try:
            push(redis, prefix, [start[0]])
            drain(w)
            push(redis, prefix, off)
            drain(w)
        finally:
            w.close()
            redis.delete(*[Keys(prefix).stream(p) for p in range(4)], *Keys(prefix).dead_letters)
        row = shard_conn(TENANT_A[0]).execute(
            "SELECT stopped_at IS NOT NULL, close_reason FROM sessions WHERE tenant_id = %s AND "
            "acct_session_id = %s", (TENANT_A[0], sid)).fetchone()
        assert row == (True, "nas-restart"), row

    def test_delete_without_sessions(self, world, redis):
        tenant = str(TENANT_A[0])
        world.admin("nas", "add", "--tenant", tenant, "--name", "nas-44", "--ip", "127.0.44.1",
                    "--secret", "secret-44", "--replace")
        world.admin("nas", "delete", "--tenant", tenant, "--name", "nas-44")
        assert "nas-44" not in world.admin("nas", "list", "--tenant", tenant).stdout
        out = world.admin("nas", "delete", "--tenant", tenant, "--name", "nas-44", check=False)
        assert out.returncode != 0 and "no NAS" in out.stderr
