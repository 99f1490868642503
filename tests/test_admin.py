"""wificore-admin against the real shards."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import TENANT_A, TENANT_C


def run(stack, *args, input=None):
    return stack.admin(*args, check=False, input=input)


class TestMigrate:
    def test_migrate_again_is_noop(self, world):
        """Applying the migrations a second time changes nothing."""
        out = run(world, "migrate")
        assert out.returncode == 0
        assert out.stdout.count("up to date") == 2

    def test_keys_begin_with_tenant_id(self, shard_conn):
        """Every primary and unique key of a tenant table begins with tenant_id."""
        rows = shard_conn(1).execute("""
            SELECT c.conrelid::regclass::text, c.conname, a.attname
              FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid
              JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
             WHERE c.contype IN ('p', 'u') AND r.relnamespace = 'public'::regnamespace
               AND r.relname <> 'wificore_schema' AND NOT r.relispartition""").fetchall()
        assert rows
        assert all(att == "tenant_id" for _t, _c, att in rows), rows


class TestSubscribers:
    def test_bulk_import_100k(self, world, tmp_path):
        """100,000 subscribers import through COPY in seconds."""
        lines = ["username,password,password_type,kind,plan"]
        lines += [f"bulk{i},pw{i},cleartext,{'hotspot' if i % 2 else 'pppoe'},basic" for i in range(100_000)]
        path = tmp_path / "subs.csv"
        path.write_text("\n".join(lines) + "\n")
        start = time.monotonic()
        out = run(world, "subscriber", "import", "--tenant", str(TENANT_C[0]), str(path))
        elapsed = time.monotonic() - start
        assert out.returncode == 0, out.stderr
        assert "imported 100000" in out.stdout
        assert elapsed < 30

    @pytest.mark.parametrize("row,field", [
        ("bad1,pw,cleartext,pppoe,no-such-plan", "plan"),
        ("bad2,pw,sha1,pppoe,basic", "password_type"),
        ("bad3,xyz,nthash,pppoe,basic", "password"),
        ("bad4,pw,cleartext,cable,basic", "kind"),
        (",pw,cleartext,pppoe,basic", "username"),
    ])
    def test_bad_row_names_field_and_row(self, world, tmp_path, shard_conn, row, field):
        """A bad row: one-line error naming row and field, exit != 0, nothing written."""
        path = tmp_path / "bad.csv"
        path.write_text("username,password,password_type,kind,plan\n"
                        "good-before-bad,pw,cleartext,pppoe,basic\n" + row + "\n")
        out = run(world, "subscriber", "import", "--tenant", str(TENANT_A[0]), str(path))
        assert out.returncode != 0
        err = out.stderr.strip()
        assert len(err.splitlines()) == 1, err
        assert "row 3" in err and f"{field}:" in err, err
        assert shard_conn(1).execute("SELECT count(*) FROM subscribers WHERE tenant_id = 1 AND "
                                     "username = 'good-before-bad'").fetchone()[0] == 0

    def test_add_duplicate_is_clear_error(self, world, subscriber):
        """Adding an existing username fails with a one-line error naming the field."""
        user = subscriber()
        out = run(world, "subscriber", "add", "--tenant", "1", "--username", user, "--password", "x",
                  "--plan", "basic")
        assert out.returncode != 0 and out.stderr.startswith("wificore-admin: username:")

    def test_unknown_tenant(self, world):
        """A tenant that does not exist is named in the error."""
        out = run(world, "plan", "add", "--tenant", "4242", "--name", "x")
        assert out.returncode != 0 and "tenant: 4242 does not exist" in out.stderr

    def test_nas_address_unique_across_shards(self, world):
        """A NAS address already used by a tenant on another shard is refused."""
        out = run(world, "nas", "add", "--tenant", str(TENANT_C[0]), "--name", "dup", "--ip",
                  TENANT_A[1], "--secret", "s")
        assert out.returncode != 0 and "ip:" in out.stderr

    def test_show_stored_and_cached(self, world, subscriber, auth):
        """`subscriber show` prints the stored row and, after a login, the cached profile; never the password."""
        user = subscriber(password="show-me-not")
        auth(TENANT_A, {"User-Name": user, "User-Password": "show-me-not"})
        out = run(world, "subscriber", "show", "--tenant", "1", user)
        assert out.returncode == 0, out.stderr
        shown = json.loads(out.stdout)
        assert shown["stored"]["username"] == user
        assert shown["cached"]["status"] == "active"
        assert "show-me-not" not in out.stdout


class TestNasIdentity:
    """A NAS keeps its nas_id (part of its session keys) across edits (issue 14, point 4)."""

    @staticmethod
    def nas_row(shard_conn, tenant, name):
        return shard_conn(tenant).execute("SELECT nas_id, host(ip), secret, vendor FROM nas "
                                          "WHERE tenant_id = %s AND name = %s", (tenant, name)).fetchone()

    def test_add_replace_and_set_keep_the_nas_id(self, world, shard_conn):
        tenant = 3
        assert run(world, "tenant", "add", "--id", str(tenant), "--name", "nas edits").returncode == 0
        base = ["nas", "add", "--tenant", str(tenant), "--name", "edge", "--ip", "10.3.0.1"]
        assert run(world, *base, "--secret", "one", "--vendor", "mikrotik").returncode == 0
        nas_id = self.nas_row(shard_conn, tenant, "edge")[0]
        # What bin/stack up runs on every start: same NAS, same id (before: a new one each time).
        out = run(world, *base, "--secret", "two", "--vendor", "cisco", "--replace")
        assert out.returncode == 0, out.stderr
        assert self.nas_row(shard_conn, tenant, "edge") == (nas_id, "10.3.0.1", "two", "cisco")
        out = run(world, "nas", "set", "--tenant", str(tenant), "--ip", "10.3.0.1", "--secret", "three",
                  "--vendor", "generic")
        assert out.returncode == 0, out.stderr
        assert self.nas_row(shard_conn, tenant, "edge") == (nas_id, "10.3.0.1", "three", "generic")
        out = run(world, "nas", "set", "--tenant", str(tenant), "--name", "edge", "--new-ip", "10.3.0.2")
        assert out.returncode == 0, out.stderr
        assert self.nas_row(shard_conn, tenant, "edge") == (nas_id, "10.3.0.2", "three", "generic")

    def test_set_refuses_what_it_cannot_do(self, world):
        """An unknown NAS, an address of another tenant's NAS, nothing to change: one-line errors."""
        out = run(world, "nas", "set", "--tenant", "1", "--name", "no-such-nas", "--secret", "x")
        assert out.returncode != 0 and "no NAS" in out.stderr
        out = run(world, "nas", "set", "--tenant", "1", "--name", "nas-1", "--new-ip", "127.0.0.2")
        assert out.returncode != 0 and "already belongs" in out.stderr
        out = run(world, "nas", "set", "--tenant", "1", "--name", "nas-1")
        assert out.returncode != 0 and "nothing to change" in out.stderr
