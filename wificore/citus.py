"""A shard entry on a Citus coordinator: what is distributed, and the rules the DDL keeps.

Every table of the schema is named here once: distributed by ``tenant_id`` (all in
one co-location group, anchored on ``tenants``), a reference table (a copy on every
node), or coordinator-only (plain PostgreSQL on the coordinator). :func:`check`
reads a migrated database's catalog and lists what Citus would refuse, or do
differently, for that classification (docs/citus.md cites each rule):

* ``unclassified`` -- a table that is none of the three (or a name here that no
  table has);
* ``distribution-column`` -- a distributed table without ``tenant_id``, or with
  another type than ``tenants.tenant_id`` (tables co-locate by column type);
* ``unique-key`` -- a primary key, unique constraint or unique index of a
  distributed table (its partitions included) without ``tenant_id`` as a column;
* ``foreign-key`` -- a foreign key Citus does not support: from a distributed table
  to anything but a reference table or, on ``tenant_id`` = ``tenant_id``, a
  co-located distributed table; from a reference table to a distributed one; between
  a Citus table and a coordinator-only one (except local -> reference);
* ``partition-depth`` -- a partition that is itself partitioned;
* ``identity-type`` -- an identity column of a distributed table that is not bigint;
* ``trigger`` -- a row trigger on a distributed or reference table.

What the schema breaks today on purpose is in :data:`KNOWN_EXCEPTIONS`, each with
its reason; ``tests/test_citus.py`` fails on any other finding and on an exception
that no longer occurs. ``python -m wificore.citus`` prints the coordinator's script.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

DISTRIBUTION_COLUMN = "tenant_id"
#: The co-location anchor: every distributed table joins its group.
COLOCATE_WITH = "tenants"

#: Distributed by tenant_id, co-located with tenants, in the order they are
#: distributed (a table after every table its foreign keys reference).
DISTRIBUTED: tuple[str, ...] = ("tenants", "plans", "nas", "subscribers", "sessions", "session_days",
                                "auth_log", "coa_attempts", "tenant_moves")

#: Reference tables (one copy on every node). None today: every table belongs to a tenant.
REFERENCE: tuple[str, ...] = ()

#: Plain tables on the coordinator, with why they stay there.
COORDINATOR_ONLY: Mapping[str, str] = {
    "wificore_schema": "the migration ledger of this shard entry; only wificore-admin migrate "
                       "reads it, on the coordinator",
}

_TRIGGER_REASON = (
    "the invalidation NOTIFY (wificore_notify, 0001/0007). Citus distributes a table with "
    "triggers only with citus.enable_unsafe_triggers = on, and the trigger then fires on "
    "the worker holding the shard, so its NOTIFY reaches listeners of that worker, not of "
    "the coordinator: the relay must LISTEN on every worker (docs/citus.md)")

#: (rule, table, object) -> why the schema keeps it.
KNOWN_EXCEPTIONS: Mapping[tuple[str, str, str], str] = {
    ("trigger", "subscribers", "subscribers_inval"): _TRIGGER_REASON,
    ("trigger", "plans", "plans_inval"): _TRIGGER_REASON,
    ("trigger", "nas", "nas_inval"): _TRIGGER_REASON,
    ("trigger", "tenants", "tenants_inval"): _TRIGGER_REASON,
}

RULES = ("unclassified", "distribution-column", "unique-key", "foreign-key", "partition-depth",
         "identity-type", "trigger")


@dataclasses.dataclass(frozen=True, order=True)
class Finding:
    rule: str
    table: str
    object: str
    detail: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.rule, self.table, self.object)


@dataclasses.dataclass
class Catalog:
    """What :func:`check` needs of one database's catalog (schema ``public``)."""

    #: table -> its partition root (itself for a table that is no partition)
    roots: dict[str, str]
    #: partitions that are partitioned themselves
    nested_partitions: list[str]
    #: table -> {column: type}
    columns: dict[str, dict[str, str]]
    #: (table, index, [columns; None for an expression]) of every unique index, PKs included
    unique_indexes: list[tuple[str, str, list[str | None]]]
    #: (table, constraint, referenced table, [(column, referenced column)]), partitions' clones left out
    foreign_keys: list[tuple[str, str, str, list[tuple[str, str]]]]
    #: (table, trigger) of every user trigger
    triggers: list[tuple[str, str]]
    #: (table, column, type) of every identity column
    identities: list[tuple[str, str, str]]


_TABLES_SQL = """
SELECT c.relname, r.relname, c.relkind = 'p' AND c.relispartition
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_class r ON r.oid = COALESCE(pg_partition_root(c.oid), c.oid)
 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'f')
"""
_COLUMNS_SQL = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attidentity
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'f') AND a.attnum > 0 AND NOT a.attisdropped
"""
_UNIQUE_SQL = """
SELECT c.relname, i.relname,
       array(SELECT a.attname FROM unnest(x.indkey[0:x.indnkeyatts - 1]) WITH ORDINALITY k(attnum, pos)
             LEFT JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
             ORDER BY k.pos)
  FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND x.indisunique
"""
_FK_SQL = """
SELECT c.relname, k.conname, f.relname,
       array(SELECT ARRAY[a.attname::text, b.attname::text]
               FROM unnest(k.conkey, k.confkey) WITH ORDINALITY u(src, dst, pos)
               JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.src
               JOIN pg_attribute b ON b.attrelid = k.confrelid AND b.attnum = u.dst
              ORDER BY u.pos)
  FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_class f ON f.oid = k.confrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND k.contype = 'f' AND k.conparentid = 0
"""
_TRIGGERS_SQL = """
SELECT c.relname, t.tgname
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND NOT t.tgisinternal AND t.tgparentid = 0
"""


def read_catalog(conn: Any) -> Catalog:
    """The :class:`Catalog` of a psycopg connection's database."""
    roots: dict[str, str] = {}
    nested: list[str] = []
    for table, root, nested_partition in conn.execute(_TABLES_SQL).fetchall():
        roots[table] = root
        if nested_partition:
            nested.append(table)
    columns: dict[str, dict[str, str]] = {}
    identities = []
    for table, column, typ, identity in conn.execute(_COLUMNS_SQL).fetchall():
        columns.setdefault(table, {})[column] = typ
        if identity:
            identities.append((table, column, typ))
    unique = [(t, i, list(cols)) for t, i, cols in conn.execute(_UNIQUE_SQL).fetchall()]
    fks = [(t, k, f, [(a, b) for a, b in pairs]) for t, k, f, pairs in conn.execute(_FK_SQL).fetchall()]
    triggers = [(t, g) for t, g in conn.execute(_TRIGGERS_SQL).fetchall()]
    return Catalog(roots, nested, columns, unique, fks, triggers, identities)


def check(cat: Catalog, *, distributed: Iterable[str] = DISTRIBUTED,
          reference: Iterable[str] = REFERENCE,
          local: Iterable[str] = tuple(COORDINATOR_ONLY)) -> list[Finding]:
    """Every rule the catalog breaks for that classification (sorted)."""
    dist, ref, loc = set(distributed), set(reference), set(local)
    col = DISTRIBUTION_COLUMN
    out: list[Finding] = []
    root_tables = {r for r in cat.roots.values()}
    for t in sorted(root_tables - dist - ref - loc):
        out.append(Finding("unclassified", t, t, "neither distributed, reference nor coordinator-only"))
    for t in sorted((dist | ref | loc) - root_tables):
        out.append(Finding("unclassified", t, t, "classified, but the database has no such table"))

    def kind(table: str) -> str:
        root = cat.roots.get(table, table)
        return "distributed" if root in dist else "reference" if root in ref else \
            "local" if root in loc else "unclassified"

    anchor_type = cat.columns.get(COLOCATE_WITH, {}).get(col)
    for t in sorted(dist & root_tables):
        typ = cat.columns.get(t, {}).get(col)
        if typ is None:
            out.append(Finding("distribution-column", t, col, f"{t} has no column {col}"))
        elif anchor_type is not None and typ != anchor_type:
            out.append(Finding("distribution-column", t, col,
                               f"{t}.{col} is {typ}, {COLOCATE_WITH}.{col} is {anchor_type}: "
                               "not co-located"))
    for t, index, cols in cat.unique_indexes:
        if kind(t) == "distributed" and col not in cols:
            out.append(Finding("unique-key", cat.roots.get(t, t), index,
                               f"unique index {index} on {t} ({', '.join(c or '<expr>' for c in cols)}) "
                               f"lacks {col}"))
    for t, name, target, pairs in cat.foreign_keys:
        src, dst = kind(t), kind(target)
        ok = (
            (src == "distributed" and dst == "reference")
            or (src == "distributed" and dst == "distributed" and (col, col) in pairs)
            or (src == dst == "reference")
            or (src == dst == "local")
            or (src == "local" and dst == "reference")
        )
        if not ok:
            out.append(Finding("foreign-key", cat.roots.get(t, t), name,
                               f"{t} ({src}) -> {target} ({dst}) on "
                               f"{', '.join(f'{a}={b}' for a, b in pairs)}"))
    for t in sorted(cat.nested_partitions):
        out.append(Finding("partition-depth", cat.roots.get(t, t), t,
                           f"{t} is a partition and partitioned itself"))
    for t, column, typ in cat.identities:
        if kind(t) == "distributed" and typ != "bigint":
            out.append(Finding("identity-type", cat.roots.get(t, t), column,
                               f"identity column {t}.{column} is {typ}, not bigint"))
    for t, trigger in cat.triggers:
        if kind(t) in ("distributed", "reference"):
            out.append(Finding("trigger", cat.roots.get(t, t), trigger, f"row trigger {trigger} on {t}"))
    return sorted(set(out))


def script() -> str:
    """The SQL to run once on a coordinator that holds the migrated schema (docs/citus.md)."""
    lines = ["-- Run on the Citus coordinator, after wificore-admin migrate, before any data.",
             "-- The invalidation triggers (KNOWN_EXCEPTIONS in wificore/citus.py):",
             "SET citus.enable_unsafe_triggers = on;"]
    for t in REFERENCE:
        lines.append(f"SELECT create_reference_table('{t}');")
    for t in DISTRIBUTED:
        if t == COLOCATE_WITH:
            lines.append(f"SELECT create_distributed_table('{t}', '{DISTRIBUTION_COLUMN}');")
        else:
            lines.append(f"SELECT create_distributed_table('{t}', '{DISTRIBUTION_COLUMN}', "
                         f"colocate_with => '{COLOCATE_WITH}');")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(script(), end="")
