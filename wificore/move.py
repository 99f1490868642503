"""``wificore-admin tenant move --tenant T --to SHARD``: one tenant to another shard, online.

The steps (each recorded in ``tenant_moves`` on both shards; a second run picks up
where the first stopped, see :func:`move`):

1. **fence** the source: under the fence lock (``pg_advisory_xact_lock(871017, T % 32)``,
   which waits for every batch_writer transaction writing T and every admin change of
   T in flight), ``tenants.moving = 'to D'``. From its commit on batch_writer leaves
   T's records pending in its streams (nothing of T changes on the source) and
   wificore-admin refuses changes to T. Logins go on from the source.
2. **copy** every tenant-scoped table (tenants, plans, subscribers, NAS, sessions, auth
   log, and any other table with a ``tenant_id``), with COPY, source snapshot to one
   target transaction (a partial copy of an earlier run is deleted first), the target's
   tenant row fenced ``'from S'``; the row counts are compared before the commit.
3. **flip** the map: a ``[[tenant]]`` entry placing T on D, the file replaced in one
   rename. radiusd and batch_writer take it within ``MapFollower.CHECK_S``.
4. **open** the target (``moving = NULL``): the writers write T's pending records there
   (the merge rules make each land once, whatever their order).
5. **settle**: wait ``settle_s`` (longer than every process takes to follow the map).
6. **clean up** the source: T's rows deleted (their NOTIFYs invalidate every cached
   copy through the relay), a tombstone left in its ``tenant_moves`` (a writer still on
   an old map defers instead of dead-lettering), and ``["t", T]`` announced.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from .errors import InputError
from .shardmap import MapFollower, Shard, ShardMap, write_placement

FENCE_KEY = 871017
FENCE_BUCKETS = 32  # batch_writer/merge.py FENCE_LOCK: one lock per bucket of tenants
#: Longer than a process takes to follow a new map: its check every CHECK_S, batch_writer's
#: read that blocks at most batch_max_age_ms (200 ms by default), a margin.
SETTLE_S = 4 * MapFollower.CHECK_S + 1.0
LOCK_TIMEOUT = "30s"

#: Tenant-scoped tables in an order the foreign keys allow (parents first): every
#: table of the schema with a tenant_id column but the move's own journal.
TABLES_SQL = """
SELECT c.oid, c.relname FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND c.relname <> 'tenant_moves'
  AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id'
              AND NOT a.attisdropped)
"""
FKS_SQL = "SELECT conrelid, confrelid FROM pg_constraint WHERE contype = 'f'"
COLUMNS_SQL = """
SELECT attname, attidentity <> '' FROM pg_attribute
WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
ORDER BY attnum
"""

Say = Callable[[str], None]


def tenant_tables(conn: psycopg.Connection) -> list[tuple[str, list[str], list[str]]]:
    """(table, columns, identity columns) of every tenant-scoped table, parents first."""
    tables: dict[int, str] = dict(conn.execute(TABLES_SQL).fetchall())
    deps: dict[int, set[int]] = {oid: set() for oid in tables}
    for child, parent in conn.execute(FKS_SQL).fetchall():
        if child in deps and parent in deps and child != parent:
            deps[child].add(parent)
    order: list[int] = []
    while deps:
        ready = sorted((oid for oid, parents in deps.items() if not parents), key=lambda o: tables[o])
        if not ready:
            raise InputError("tenant-scoped tables reference each other in a circle")
        for oid in ready:
            order.append(oid)
            del deps[oid]
        for parents in deps.values():
            parents.difference_update(ready)
    out = []
    for oid in order:
        cols = conn.execute(COLUMNS_SQL, (oid,)).fetchall()
        out.append((tables[oid], [c for c, _ in cols], [c for c, ident in cols if ident]))
    return out


def _journal(conn: psycopg.Connection, tenant_id: int) -> tuple[str, str, str] | None:
    row = conn.execute("SELECT role, peer, step FROM tenant_moves WHERE tenant_id = %s",
                       (tenant_id,)).fetchone()
    return None if row is None else (row[0], row[1], row[2])


def _record(conn: psycopg.Connection, tenant_id: int, role: str, peer: str, step: str) -> None:
    conn.execute(
        "INSERT INTO tenant_moves (tenant_id, role, peer, step) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (tenant_id) DO UPDATE SET role = EXCLUDED.role, peer = EXCLUDED.peer, "
        "step = EXCLUDED.step, updated_at = now(), started_at = CASE WHEN tenant_moves.role = "
        "EXCLUDED.role AND tenant_moves.peer = EXCLUDED.peer THEN tenant_moves.started_at ELSE now() END",
        (tenant_id, role, peer, step))


def _fence_lock(conn: psycopg.Connection, tenant_id: int) -> None:
    conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (FENCE_KEY, tenant_id % FENCE_BUCKETS))


def fence(source: Shard, target: Shard, tenant_id: int) -> None:
    with psycopg.connect(source.dsn) as conn:
        _fence_lock(conn, tenant_id)
        row = conn.execute("SELECT moving FROM tenants WHERE tenant_id = %s FOR UPDATE",
                           (tenant_id,)).fetchone()
        if row is None:
            raise InputError(f"tenant: {tenant_id} does not exist on {source.name}")
        if row[0] is not None and row[0] != f"to {target.name}":
            raise InputError(f"tenant: {tenant_id} is already moving ({row[0]} on {source.name})")
        conn.execute("UPDATE tenants SET moving = %s WHERE tenant_id = %s",
                     (f"to {target.name}", tenant_id))
        _record(conn, tenant_id, "source", target.name, "fenced")


def _counts(conn: psycopg.Connection, tables: list[tuple[str, list[str], list[str]]],
            tenant_id: int) -> dict[str, int]:
    return {t: conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE tenant_id = %s").format(
        sql.Identifier(t)), (tenant_id,)).fetchone()[0] for t, _, _ in tables}  # type: ignore[index]


def copy(source: Shard, target: Shard, tenant_id: int, say: Say) -> dict[str, int]:
    """Every tenant-scoped row of the tenant, source -> target, in one target transaction;
    the row counts per table (checked equal on both sides before the commit)."""
    with psycopg.connect(source.dsn) as src, psycopg.connect(target.dsn) as dst:
        src.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        tables = tenant_tables(src)
        dst_tables = {t for t, _, _ in tenant_tables(dst)}
        missing = [t for t, _, _ in tables if t not in dst_tables]
        if missing:
            raise InputError(f"to: {target.name} has no table {missing[0]!r} (wificore-admin migrate)")
        dst.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        row = dst.execute("SELECT moving FROM tenants WHERE tenant_id = %s", (tenant_id,)).fetchone()
        journal = _journal(dst, tenant_id)
        if row is not None and not (row[0] == f"from {source.name}" and journal is not None
                                    and journal[0] == "target"):
            raise InputError(f"to: tenant {tenant_id} already exists on {target.name}")
        # Triggers off (their NOTIFYs would announce every row; the cleanup's announce the
        # move) where the role may; foreign keys hold anyway: the rows come consistent.
        try:
            with dst.transaction():
                dst.execute("SET LOCAL session_replication_role = replica")
        except psycopg.errors.InsufficientPrivilege:
            pass
        for table, _, _ in reversed(tables):  # an earlier run's partial copy
            dst.execute(sql.SQL("DELETE FROM {} WHERE tenant_id = %s").format(sql.Identifier(table)),
                        (tenant_id,))
        days = src.execute("SELECT min(logged_at AT TIME ZONE 'UTC')::date, "
                           "max(logged_at AT TIME ZONE 'UTC')::date FROM auth_log WHERE tenant_id = %s",
                           (tenant_id,)).fetchone()
        if days is not None and days[0] is not None:
            dst.execute("SELECT wificore_auth_log_ensure(%s, %s)", (days[0], days[1]))
        for table, cols, identity in tables:
            names = sql.SQL(", ").join(map(sql.Identifier, cols))
            out = sql.SQL("COPY (SELECT {} FROM {} WHERE tenant_id = {}) TO STDOUT").format(
                names, sql.Identifier(table), sql.Literal(tenant_id))
            into = sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(table), names)
            with src.cursor().copy(out) as reader, dst.cursor().copy(into) as writer:
                for block in reader:
                    writer.write(block)
            for col in identity:  # the target's own ids must not meet the copied ones
                dst.execute(sql.SQL(
                    "SELECT setval(pg_get_serial_sequence({t}, {c}), m) FROM (SELECT max({ci}) AS m "
                    "FROM {ti}) x WHERE m IS NOT NULL AND m >= (SELECT CASE WHEN is_called THEN "
                    "last_value + 1 ELSE last_value END FROM {seq})").format(
                        t=sql.Literal(table), c=sql.Literal(col), ci=sql.Identifier(col),
                        ti=sql.Identifier(table),
                        seq=sql.SQL(dst.execute("SELECT pg_get_serial_sequence(%s, %s)",
                                                (table, col)).fetchone()[0])))  # type: ignore[index]
        dst.execute("UPDATE tenants SET moving = %s WHERE tenant_id = %s",
                    (f"from {source.name}", tenant_id))
        _record(dst, tenant_id, "target", source.name, "copied")
        theirs, ours = _counts(src, tables, tenant_id), _counts(dst, tables, tenant_id)
        if theirs != ours:
            raise InputError(f"copy: the row counts differ ({source.name} {theirs}, "
                             f"{target.name} {ours}); nothing committed, run it again")
        say(f"copied tenant {tenant_id} {source.name} -> {target.name}: "
            + ", ".join(f"{t} {n}" for t, n in ours.items()))
    with psycopg.connect(source.dsn) as conn:
        _record(conn, tenant_id, "source", target.name, "copied")
    return ours


def open_target(target: Shard, tenant_id: int) -> None:
    with psycopg.connect(target.dsn) as conn:
        conn.execute("UPDATE tenants SET moving = NULL WHERE tenant_id = %s AND moving IS NOT NULL",
                     (tenant_id,))
        _record(conn, tenant_id, "target", _journal(conn, tenant_id)[1], "opened")  # type: ignore[index]


def clean_source(source: Shard, target: Shard, tenant_id: int) -> dict[str, int]:
    """The tenant's rows deleted from the source; its journal row stays (the tombstone).
    No lock: the tenant stays fenced until its row goes, in the same transaction as the
    tombstone's update, so a writer on an old map defers at every moment. The rows
    deleted per table."""
    with psycopg.connect(source.dsn) as conn:
        conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        deleted = {}
        for table, _, _ in reversed(tenant_tables(conn)):
            deleted[table] = conn.execute(sql.SQL("DELETE FROM {} WHERE tenant_id = %s").format(
                sql.Identifier(table)), (tenant_id,)).rowcount
        _record(conn, tenant_id, "source", target.name, "cleaned")
    with psycopg.connect(target.dsn) as conn:
        _record(conn, tenant_id, "target", source.name, "done")
    return deleted


def announce(admin: Any, tenant_id: int) -> None:
    """Drop the tenant's cached status everywhere (the cleanup's NOTIFYs did the rest)."""
    if not admin.redis_url:
        return
    import json

    import redis
    r = redis.Redis.from_url(admin.state_redis_url, socket_timeout=5)
    cache = redis.Redis.from_url(admin.cache_redis_url, socket_timeout=5)
    try:
        from wificore.announce import announce as publish
        publish(r, admin.keys, [json.dumps(["t", tenant_id])], doomed=[admin.keys.tenant(tenant_id)],
                cache=cache)
    finally:
        r.close()
        cache.close()


def abort(map_path: str | Path, tenant_id: int, *, say: Say = print) -> None:
    """Undo a move that has not flipped the map: the target's copy deleted, the source
    writable again (its waiting records are then written there). After the flip a move
    is finished (or moved back), not aborted."""
    shard_map = ShardMap.load(map_path)
    source = shard_map.shard_for(tenant_id)
    with psycopg.connect(source.dsn) as conn:
        journal = _journal(conn, tenant_id)
    if journal is not None and journal[0] == "target" and journal[2] != "done":
        raise InputError(f"tenant: the map names {source.name} already: finish the move "
                         f"(tenant move --tenant {tenant_id} --to {source.name})")
    if journal is None or journal[0] != "source" or journal[2] == "cleaned":
        raise InputError(f"tenant: no move of {tenant_id} to abort on {source.name}")
    target = shard_map.by_name(journal[1])
    with psycopg.connect(target.dsn) as conn:
        row = conn.execute("SELECT moving FROM tenants WHERE tenant_id = %s", (tenant_id,)).fetchone()
        theirs = _journal(conn, tenant_id)
        if row is not None and row[0] == f"from {source.name}" and theirs is not None \
                and theirs[0] == "target":
            for table, _, _ in reversed(tenant_tables(conn)):
                conn.execute(sql.SQL("DELETE FROM {} WHERE tenant_id = %s").format(sql.Identifier(table)),
                             (tenant_id,))
        if theirs is not None and theirs[0] == "target":
            conn.execute("DELETE FROM tenant_moves WHERE tenant_id = %s", (tenant_id,))
    with psycopg.connect(source.dsn) as conn:
        conn.execute("UPDATE tenants SET moving = NULL WHERE tenant_id = %s", (tenant_id,))
        conn.execute("DELETE FROM tenant_moves WHERE tenant_id = %s", (tenant_id,))
    say(f"move of tenant {tenant_id} to {target.name} aborted; it stays on {source.name}")


def move(admin: Any, map_path: str | Path, tenant_id: int, to: str, *, settle_s: float = SETTLE_S,
         say: Say = print) -> None:
    """Move ``tenant_id`` to the shard named ``to`` (see the module); idempotent.

    After a crash: before the fence's commit nothing changed; after it (T's records
    pending, logins from the source) a run copies again; after the copy's commit a run
    copies again (the target's copy is replaced: nothing writes it while fenced); after
    the flip (the map names the target) a run opens the target, settles and cleans up;
    after the cleanup it says the tenant is there."""
    shard_map = ShardMap.load(map_path)
    target = shard_map.by_name(to)
    current = shard_map.shard_for(tenant_id)
    if current.name != target.name:
        source = current
        fence(source, target, tenant_id)
        say(f"fenced tenant {tenant_id} on {source.name}: its records wait in the streams")
        copy(source, target, tenant_id, say)
        write_placement(map_path, tenant_id, target.name)
        with psycopg.connect(source.dsn) as conn:
            _record(conn, tenant_id, "source", target.name, "flipped")
        say(f"shard map: tenant {tenant_id} on {target.name}")
    else:
        with psycopg.connect(target.dsn) as conn:
            journal = _journal(conn, tenant_id)
        if journal is None or journal[0] != "target" or journal[2] == "done":
            say(f"tenant {tenant_id} is on {target.name}")
            return
        source = shard_map.by_name(journal[1])
    open_target(target, tenant_id)
    say(f"tenant {tenant_id} writable on {target.name}; waiting {settle_s:.1f} s for every "
        f"process to follow the map")
    time.sleep(settle_s)
    deleted = clean_source(source, target, tenant_id)
    announce(admin, tenant_id)
    say(f"cleaned up {source.name}: " + ", ".join(f"{t} {n}" for t, n in deleted.items()))
    say(f"tenant {tenant_id} moved to {target.name}")
