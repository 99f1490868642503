"""The DDL against Citus's rules for distributed tables (docs/citus.md).

Citus is not installed here: the rules are checked on the catalog of the real,
migrated schema (the session stack's shards), with the classification of
wificore/citus.py. A probe database on the same server, migrated and given one
table per broken rule, shows that each rule is seen. Known exceptions are
reported as warnings with their reason, never passed over silently.
"""

from __future__ import annotations

import re
import uuid
import warnings
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from wificore import citus
from wificore.migrate import migrate_shard
from wificore.shardmap import Shard

ROOT = Path(__file__).resolve().parent.parent


class CitusKnownException(UserWarning):
    """A Citus rule the schema breaks on purpose (wificore.citus.KNOWN_EXCEPTIONS)."""


@pytest.fixture(scope="module")
def catalogs(stack) -> dict[str, citus.Catalog]:
    out = {}
    for pg in stack.pg:
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            out[pg.name] = citus.read_catalog(conn)
    return out


def test_the_catalog_is_read(catalogs):
    """The reader sees the schema (a check over an empty catalog would pass anything)."""
    cat = catalogs["shard1"]
    assert cat.roots["sessions_p3"] == "sessions" and cat.roots["auth_log_default"] == "auth_log"
    assert ("subscribers", "subscribers_pkey", ["tenant_id", "subscriber_id"]) in cat.unique_indexes
    assert any(t == "subscribers" and f == "plans" and ("plan_id", "plan_id") in pairs
               for t, _n, f, pairs in cat.foreign_keys)
    assert ("nas", "nas_id", "bigint") in cat.identities
    assert ("nas", "nas_inval") in cat.triggers


@pytest.mark.parametrize("shard", ["shard1", "shard2"])
def test_schema_keeps_citus_rules(catalogs, shard):
    """Every table is classified; tenant_id in every distributed table, every primary
    and unique key, every foreign key between distributed tables; only the known
    exceptions, each still real."""
    findings = citus.check(catalogs[shard])
    unknown = [f for f in findings if f.key not in citus.KNOWN_EXCEPTIONS]
    assert unknown == [], "\n".join(f"{f.rule}: {f.table}: {f.detail}" for f in unknown)
    seen = {f.key for f in findings}
    stale = sorted(set(citus.KNOWN_EXCEPTIONS) - seen)
    assert stale == [], f"known exceptions that no longer occur (remove them): {stale}"
    for f in findings:
        warnings.warn(CitusKnownException(
            f"{shard}: {f.rule} {f.table}.{f.object}: {citus.KNOWN_EXCEPTIONS[f.key]}"), stacklevel=1)


def test_classification_is_one_list_each():
    """A table is in one class only, and tenants (the co-location anchor) is distributed first."""
    names = [*citus.DISTRIBUTED, *citus.REFERENCE, *citus.COORDINATOR_ONLY]
    assert len(names) == len(set(names))
    assert citus.DISTRIBUTED[0] == citus.COLOCATE_WITH
    assert {r for r, _t, _o in citus.KNOWN_EXCEPTIONS} <= set(citus.RULES)


def test_distribution_order_follows_the_foreign_keys(catalogs):
    """create_distributed_table runs on a table after every table its foreign keys reference."""
    cat = catalogs["shard1"]
    order = {t: i for i, t in enumerate(citus.DISTRIBUTED)}
    for table, name, target, _pairs in cat.foreign_keys:
        if table in order and target in order and target != table:
            assert order[target] < order[table], f"{name}: {table} before {target}"


def test_docs_show_the_script():
    """docs/citus.md shows what `python -m wificore.citus` prints."""
    doc = [line.strip() for line in (ROOT / "docs/citus.md").read_text().splitlines()]
    want = citus.script().splitlines()
    assert any(doc[i:i + len(want)] == want for i in range(len(doc))), "\n".join(want)


PROBE_DDL = """
-- unclassified
CREATE TABLE probe_unlisted (tenant_id integer NOT NULL, id bigint PRIMARY KEY);
-- unique-key: a primary key and an expression index without tenant_id
CREATE TABLE probe_keys (tenant_id integer NOT NULL, id bigint PRIMARY KEY, name text);
CREATE UNIQUE INDEX probe_keys_name ON probe_keys (lower(name));
-- unique-key on a partitioned table's partition only
CREATE TABLE probe_parts (tenant_id integer NOT NULL, id bigint, PRIMARY KEY (tenant_id, id))
    PARTITION BY HASH (tenant_id);
CREATE TABLE probe_parts_0 PARTITION OF probe_parts FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE probe_parts_1 PARTITION OF probe_parts FOR VALUES WITH (MODULUS 2, REMAINDER 1)
    PARTITION BY RANGE (id);
CREATE TABLE probe_parts_1a PARTITION OF probe_parts_1 FOR VALUES FROM (0) TO (10);
CREATE UNIQUE INDEX probe_parts_0_id ON probe_parts_0 (id);
-- foreign-key: between distributed tables, not on tenant_id = tenant_id
CREATE TABLE probe_child (tenant_id integer NOT NULL, key_id bigint REFERENCES probe_keys (id),
                          PRIMARY KEY (tenant_id, key_id));
-- foreign-key: a reference table to a distributed one
CREATE TABLE probe_ref (code text PRIMARY KEY, tenant_id integer REFERENCES tenants);
-- foreign-key: a distributed table to a coordinator-only one
CREATE TABLE probe_to_local (tenant_id integer NOT NULL, version integer REFERENCES wificore_schema,
                             PRIMARY KEY (tenant_id, version));
-- distribution-column: missing, or of another type than tenants.tenant_id
CREATE TABLE probe_nocol (id bigint PRIMARY KEY);
CREATE TABLE probe_bigtenant (tenant_id bigint NOT NULL, PRIMARY KEY (tenant_id));
-- identity-type
CREATE TABLE probe_ident (tenant_id integer NOT NULL, n integer GENERATED BY DEFAULT AS IDENTITY,
                          PRIMARY KEY (tenant_id, n));
-- trigger on a reference table
CREATE TRIGGER probe_ref_trg AFTER UPDATE ON probe_ref FOR EACH ROW EXECUTE FUNCTION wificore_notify();
"""


@pytest.fixture(scope="module")
def probe(stack):
    """A database of its own on shard1's server: the migrations, then PROBE_DDL."""
    pg = stack.pg[0]
    base = pg.dsn().rsplit("/", 1)[0]
    name = "wc_citus_" + uuid.uuid4().hex[:8]
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = f"{base}/{name}"
    try:
        migrate_shard(Shard(name, 1, 999999, dsn, dsn, dsn, dsn))
        with psycopg.connect(dsn, autocommit=True) as conn:
            before = citus.check(citus.read_catalog(conn))
            conn.execute(PROBE_DDL)
            cat = citus.read_catalog(conn)
        yield before, cat
    finally:
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_each_rule_is_seen(probe):
    """Each broken rule of PROBE_DDL is found, on the table that breaks it, and only those."""
    before, cat = probe
    assert {f.key for f in before} == set(citus.KNOWN_EXCEPTIONS)  # a fresh migrate: the same schema
    dist = (*citus.DISTRIBUTED, "probe_keys", "probe_parts", "probe_child", "probe_to_local",
            "probe_nocol", "probe_bigtenant", "probe_ident")
    found = {(f.rule, f.table, f.object) for f in citus.check(cat, distributed=dist, reference=("probe_ref",))
             if f.key not in citus.KNOWN_EXCEPTIONS}
    assert found == {
        ("unclassified", "probe_unlisted", "probe_unlisted"),
        ("unique-key", "probe_keys", "probe_keys_pkey"),
        ("unique-key", "probe_keys", "probe_keys_name"),
        ("unique-key", "probe_parts", "probe_parts_0_id"),
        ("partition-depth", "probe_parts", "probe_parts_1"),
        ("foreign-key", "probe_child", "probe_child_key_id_fkey"),
        ("foreign-key", "probe_ref", "probe_ref_tenant_id_fkey"),
        ("foreign-key", "probe_to_local", "probe_to_local_version_fkey"),
        ("distribution-column", "probe_nocol", "tenant_id"),
        ("unique-key", "probe_nocol", "probe_nocol_pkey"),
        ("distribution-column", "probe_bigtenant", "tenant_id"),
        ("identity-type", "probe_ident", "n"),
        ("trigger", "probe_ref", "probe_ref_trg"),
    }


def test_a_listed_table_that_is_gone_is_reported(catalogs):
    found = citus.check(catalogs["shard1"], reference=("gone_table",))
    assert ("unclassified", "gone_table", "gone_table") in {f.key for f in found}


def test_the_script_names_every_distributed_and_reference_table():
    text = citus.script()
    for t in citus.DISTRIBUTED:
        assert re.search(rf"create_distributed_table\('{t}', 'tenant_id'", text), t
    for t in citus.REFERENCE:
        assert f"create_reference_table('{t}')" in text
