"""Versioned migrations, applied to every shard of the map.

Files ``migrations/NNNN_name.sql`` are applied in order, each in its own
transaction, under an advisory lock; applied versions are recorded in
``wificore_schema``. Applying them again is a no-op.
"""

from __future__ import annotations

import re
from pathlib import Path

import psycopg

from .shardmap import Shard, ShardMap

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_LOCK_ID = 0x57494649  # 'WIFI'


def migrations() -> list[tuple[int, str, Path]]:
    found = []
    for path in sorted(MIGRATIONS.glob("*.sql")):
        m = re.match(r"^(\d{4})_(\w+)\.sql$", path.name)
        if m:
            found.append((int(m.group(1)), m.group(2), path))
    return found


def migrate_shard(shard: Shard) -> list[int]:
    """Apply the missing migrations to one shard; the versions applied."""
    applied: list[int] = []
    with psycopg.connect(shard.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS wificore_schema ("
                     " version integer PRIMARY KEY, name text NOT NULL,"
                     " applied_at timestamptz NOT NULL DEFAULT now())")
        for version, name, path in migrations():
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
                done = conn.execute("SELECT 1 FROM wificore_schema WHERE version = %s",
                                    (version,)).fetchone()
                if done:
                    continue
                conn.execute(path.read_text())
                conn.execute("INSERT INTO wificore_schema (version, name) VALUES (%s, %s)",
                             (version, name))
                applied.append(version)
    return applied


def migrate_all(shard_map: ShardMap) -> dict[str, list[int]]:
    return {shard.name: migrate_shard(shard) for shard in shard_map}
