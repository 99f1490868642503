"""The benchmark dataset: tenants, NAS, plans and subscribers, loaded with COPY.

Full size (the defaults): 1,000 tenants, each with 1,000 NAS, 1,500 PPPoE
and 1,500 hotspot subscribers: 3 million subscribers. Every part is
generated from its position, so the load generator can rebuild any
subscriber's username and password without reading the database back.

What is loaded, and where:

* rlm_wificore's schema, on every shard of the shard map (``dsn``, an
  owner or superuser role): tenants, NAS, plans, subscribers. Tenants are
  spread round-robin over the shards. One COPY per table and shard, all
  shards at once; with a superuser, ``session_replication_role = replica``
  skips the per-row foreign-key checks and invalidation NOTIFYs (the
  generated rows are consistent by construction and nothing is cached yet).
* The same subscribers in FreeRADIUS's own rlm_sql schema (radcheck,
  radusergroup, radgroupreply; one group per tenant plan), in a database of
  its own (``--stock-dsn``, e.g. ``radius`` on the first shard's server). The
  schema is read at run time from Debian's
  ``/etc/freeradius/3.0/mods-config/sql/main/postgresql/schema.sql``.
* The same subscribers as a ``users`` file for the stock ``files`` baseline.

Usernames are unique across the deployment (``ppp-<tenant>-<n>``,
``hs-<tenant>-<n>``): stock FreeRADIUS has one flat user table. Passwords:
60 % cleartext (unique per subscriber), 30 % NT hash, 10 % bcrypt.
Hashing is the one thing that cannot scale to 3 million rows: a bcrypt of
cost 10 takes ~50 ms, and MD4 has no C implementation in Python on OpenSSL 3
(~30 µs each in pure Python). So the bcrypt subscribers share
:data:`BCRYPT_POOL` passwords, each hashed ONCE per load and reused, and the
NT-hash subscribers share :data:`NT_POOL` passwords, hashed once. The
credential cache and crypt(3) see the same hashes many times over; that
changes nothing for a lookup, which is keyed by username.

NAS addresses are unique across the deployment: tenant k's NAS j is
``10.0.0.0 + k * nas_per_tenant + j + 1``. On top of those, every tenant has
one ``bench`` NAS at a loopback address (:func:`bench_nas_ip`: 127.0.0.2,
127.0.0.3, …) with its own secret: radiusd picks the tenant by the packet's
source address, and the load generator binds that address.

CLI (prints the counts and the time of each phase as JSON)::

    # a local stack of its own (Redis + two shards) in a temporary folder:
    python benchmarks/dataset.py --local [--tenants 20 ...]
    # an existing deployment:
    python benchmarks/dataset.py --shard-map shards.toml \\
        --stock-dsn postgresql://postgres@127.0.0.1:15432/radius --users-file users
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import ipaddress
import json
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from wificore.md4 import nt_hash  # noqa: E402
from wificore.shardmap import Shard, ShardMap  # noqa: E402

STOCK_SCHEMA = Path("/etc/freeradius/3.0/mods-config/sql/main/postgresql/schema.sql")
STOCK_PACKAGE_HINT = "apt-get install -y freeradius-postgresql"

#: Distinct bcrypt passwords; each is hashed once per load (cost 10, as Laravel).
BCRYPT_POOL = 8
BCRYPT_COST = 10
#: Distinct NT-hash passwords; each is hashed once per load.
NT_POOL = 4096
#: Hotspot vouchers expire this long after the load.
HOTSPOT_VALIDITY = dt.timedelta(days=30)
#: Rows per COPY write.
CHUNK_ROWS = 20_000


class DatasetError(Exception):
    """The dataset cannot be generated or loaded as asked."""


# ------------------------------------------------------------------ the spec
@dataclasses.dataclass(frozen=True)
class PlanSpec:
    plan_id: int
    name: str
    kind: str
    rate_up_kbps: int
    rate_down_kbps: int
    session_timeout_s: int | None
    idle_timeout_s: int | None
    interim_interval_s: int
    simultaneous_use: int
    framed_pool: str | None


#: The plans of every tenant (plan ids are per tenant: the key is (tenant_id, plan_id)).
PLANS = (
    PlanSpec(1, "pppoe-20m", "pppoe", 5_000, 20_000, None, None, 300, 1, "pppoe-pool"),
    PlanSpec(2, "pppoe-100m", "pppoe", 20_000, 100_000, None, None, 300, 2, "pppoe-pool"),
    PlanSpec(3, "hotspot-1h", "hotspot", 2_000, 5_000, 3_600, 600, 300, 1, None),
    PlanSpec(4, "hotspot-day", "hotspot", 5_000, 10_000, 86_400, 900, 300, 2, None),
)


@dataclasses.dataclass(frozen=True)
class Spec:
    """How big the dataset is; the defaults are the full 3-million-subscriber size."""

    tenants: int = 1000
    nas_per_tenant: int = 1000
    pppoe_per_tenant: int = 1500
    hotspot_per_tenant: int = 1500

    def __post_init__(self) -> None:
        for name in ("tenants", "nas_per_tenant", "pppoe_per_tenant", "hotspot_per_tenant"):
            if getattr(self, name) < (1 if name == "tenants" else 0):
                raise DatasetError(f"{name}: must be at least {1 if name == 'tenants' else 0}")
        if self.tenants * self.nas_per_tenant >= 2**24 - 2:
            raise DatasetError("tenants * nas_per_tenant: must fit in 10.0.0.0/8")
        if self.tenants > 250 * 250:
            raise DatasetError("tenants: at most 62,500 (one loopback bench NAS each)")

    @property
    def subscribers_per_tenant(self) -> int:
        return self.pppoe_per_tenant + self.hotspot_per_tenant

    @property
    def subscribers(self) -> int:
        return self.tenants * self.subscribers_per_tenant


@dataclasses.dataclass(frozen=True)
class Tenant:
    """A tenant of the dataset: its position, id, shard and benchmark NAS."""

    index: int
    tenant_id: int
    shard: str

    @property
    def bench_ip(self) -> str:
        return bench_nas_ip(self.index)

    @property
    def bench_secret(self) -> str:
        return f"bench-secret-{self.tenant_id}"


@dataclasses.dataclass(frozen=True, slots=True)
class Subscriber:
    tenant_id: int
    username: str
    kind: str
    password_type: str
    password: str  # as stored: cleartext, 32 hex digits or a bcrypt hash
    cleartext: str  # what the user types
    plan_id: int


def place_tenants(spec: Spec, shard_map: ShardMap) -> list[Tenant]:
    """Tenant ids round-robin over the shards, from each shard's first tenant up."""
    ranges = [(s.name, iter(range(s.first_tenant, s.last_tenant + 1))) for s in shard_map]
    tenants: list[Tenant] = []
    while len(tenants) < spec.tenants and ranges:
        for entry in list(ranges):
            name, ids = entry
            tid = next(ids, None)
            if tid is None:
                ranges.remove(entry)
                continue
            tenants.append(Tenant(len(tenants), tid, name))
            if len(tenants) == spec.tenants:
                break
    if len(tenants) < spec.tenants:
        raise DatasetError(f"tenants: the shard map holds only {len(tenants)} tenant ids")
    return tenants


def bench_nas_ip(index: int) -> str:
    """The loopback address the benchmark sends from for the tenant at ``index``.

    127.0.0.1 is left out: it is the stock baselines' static client.
    """
    return f"127.0.{index // 250}.{index % 250 + 2}"


def nas_ip(spec: Spec, tenant_index: int, j: int) -> str:
    """The unique 10.x.y.z address of NAS ``j`` of the tenant at ``tenant_index``."""
    return str(ipaddress.IPv4Address(0x0A000000 + tenant_index * spec.nas_per_tenant + j + 1))


def nas_vendor(j: int) -> str:
    return ("cisco", "wispr", "generic")[j % 10 - 7] if j % 10 >= 7 else "mikrotik"


@dataclasses.dataclass
class Hashes:
    """The few password hashes computed once per load."""

    nt: list[str]
    bcrypt: list[str]

    @classmethod
    def compute(cls) -> Hashes:
        import bcrypt
        nt = [nt_hash(nt_password(k)) for k in range(NT_POOL)]
        bc = [bcrypt.hashpw(bcrypt_password(k).encode(), bcrypt.gensalt(BCRYPT_COST)).decode()
              for k in range(BCRYPT_POOL)]
        return cls(nt, bc)


def nt_password(k: int) -> str:
    return f"nt-pool-{k}"


def bcrypt_password(k: int) -> str:
    return f"bcrypt-pool-{k}"


def password_type(n: int) -> str:
    """60 % cleartext, 30 % NT hash, 10 % bcrypt, by position."""
    r = n % 10
    return "bcrypt" if r == 9 else "nthash" if r >= 6 else "cleartext"


def subscriber(tenant_id: int, kind: str, n: int, hashes: Hashes | None) -> Subscriber:
    """Subscriber ``n`` of a kind in a tenant; ``hashes`` None leaves hashes out."""
    prefix = "ppp" if kind == "pppoe" else "hs"
    username = f"{prefix}-{tenant_id}-{n}"
    pwt = password_type(n)
    if pwt == "cleartext":
        clear = stored = "pw-" + username
    elif pwt == "nthash":
        k = (tenant_id * 7919 + n) % NT_POOL
        clear, stored = nt_password(k), hashes.nt[k] if hashes else ""
    else:
        k = (tenant_id + n) % BCRYPT_POOL
        clear, stored = bcrypt_password(k), hashes.bcrypt[k] if hashes else ""
    if kind == "pppoe":
        plan = 2 if n % 3 == 2 else 1
    else:
        plan = 4 if n % 2 else 3
    return Subscriber(tenant_id, username, kind, pwt, stored, clear, plan)


def subscribers(spec: Spec, tenant_id: int, hashes: Hashes | None = None,
                kinds: tuple[str, ...] = ("pppoe", "hotspot")) -> Iterator[Subscriber]:
    """Every subscriber of one tenant, PPPoE first."""
    for kind in kinds:
        count = spec.pppoe_per_tenant if kind == "pppoe" else spec.hotspot_per_tenant
        for n in range(count):
            yield subscriber(tenant_id, kind, n, hashes)


def plan_reply(plan: PlanSpec) -> list[tuple[str, str]]:
    """The plan's reply attributes as rlm_wificore renders them for a MikroTik NAS."""
    reply = []
    if plan.session_timeout_s:
        reply.append(("Session-Timeout", str(plan.session_timeout_s)))
    if plan.idle_timeout_s:
        reply.append(("Idle-Timeout", str(plan.idle_timeout_s)))
    reply.append(("Acct-Interim-Interval", str(plan.interim_interval_s)))
    if plan.framed_pool:
        reply.append(("Framed-Pool", plan.framed_pool))
    reply.append(("Mikrotik-Rate-Limit", f"{plan.rate_up_kbps}k/{plan.rate_down_kbps}k"))
    return reply


def stock_group(tenant_id: int, plan: PlanSpec) -> str:
    return f"t{tenant_id}-{plan.name}"


STOCK_PASSWORD_ATTR = {"cleartext": "Cleartext-Password", "nthash": "NT-Password",
                       "bcrypt": "Crypt-Password"}


# ------------------------------------------------------------------ COPY text
def _copy_chunks(lines: Iterator[str]) -> Iterator[str]:
    buf: list[str] = []
    for line in lines:
        buf.append(line)
        if len(buf) >= CHUNK_ROWS:
            yield "".join(buf)
            buf.clear()
    if buf:
        yield "".join(buf)


def _copy(cur: psycopg.Cursor, statement: sql.Composable, lines: Iterator[str]) -> int:
    rows = 0
    with cur.copy(statement) as copy:
        for chunk in _copy_chunks(lines):
            copy.write(chunk)
            rows += chunk.count("\n")
    return rows


def _wificore_rows(spec: Spec, tenants: list[Tenant], hashes: Hashes, expires: str):
    def tenant_lines() -> Iterator[str]:
        for t in tenants:
            yield f"{t.tenant_id}\tTenant {t.tenant_id}\tactive\n"

    def nas_lines() -> Iterator[str]:
        for t in tenants:
            tid = t.tenant_id
            for j in range(spec.nas_per_tenant):
                yield (f"{tid}\t{j + 1}\tnas-{j}\t{nas_ip(spec, t.index, j)}\tnas-secret-{tid}-{j}"
                       f"\t{nas_vendor(j)}\n")
            yield (f"{tid}\t{spec.nas_per_tenant + 1}\tbench\t{t.bench_ip}\t{t.bench_secret}"
                   f"\tmikrotik\n")

    def plan_lines() -> Iterator[str]:
        n = r"\N"
        for t in tenants:
            for p in PLANS:
                yield "\t".join(str(n if v is None else v) for v in (
                    t.tenant_id, p.plan_id, p.name, p.rate_up_kbps, p.rate_down_kbps,
                    p.session_timeout_s, p.idle_timeout_s, p.interim_interval_s,
                    p.simultaneous_use, p.framed_pool)) + "\n"

    def subscriber_lines() -> Iterator[str]:
        for t in tenants:
            sid = 0
            for s in subscribers(spec, t.tenant_id, hashes):
                sid += 1
                exp = expires if s.kind == "hotspot" else r"\N"
                yield (f"{s.tenant_id}\t{sid}\t{s.username}\t{s.kind}\t{s.password_type}"
                       f"\t{s.password}\t{s.plan_id}\tactive\t{exp}\n")

    return [
        ("tenants", ("tenant_id", "name", "status"), tenant_lines),
        ("nas", ("tenant_id", "nas_id", "name", "ip", "secret", "vendor"), nas_lines),
        ("plans", ("tenant_id", "plan_id", "name", "rate_up_kbps", "rate_down_kbps",
                   "session_timeout_s", "idle_timeout_s", "interim_interval_s",
                   "simultaneous_use", "framed_pool"), plan_lines),
        ("subscribers", ("tenant_id", "subscriber_id", "username", "kind", "password_type",
                         "password", "plan_id", "status", "expires_at"), subscriber_lines),
    ]


def load_shard(shard: Shard, spec: Spec, tenants: list[Tenant], hashes: Hashes, *,
               replace: bool, expires: str) -> dict[str, int]:
    """COPY the tenants of one shard into it, in one transaction; row counts."""
    counts: dict[str, int] = {}
    ids = [t.tenant_id for t in tenants]
    with psycopg.connect(shard.dsn) as conn:
        cur = conn.cursor()
        existing = cur.execute("SELECT tenant_id FROM tenants WHERE tenant_id = ANY(%s) "
                               "ORDER BY 1 LIMIT 1", (ids,)).fetchone()
        if existing and not replace:
            raise DatasetError(f"tenant {existing[0]} already exists on shard {shard.name!r} "
                               "(--replace deletes the dataset's tenants first)")
        if existing:
            cur.execute("DELETE FROM tenants WHERE tenant_id = ANY(%s)", (ids,))
        try:
            # Superuser only: no per-row FK trigger or NOTIFY during the bulk load.
            cur.execute("SAVEPOINT replica")
            cur.execute("SET LOCAL session_replication_role = replica")
            cur.execute("RELEASE SAVEPOINT replica")
        except psycopg.errors.InsufficientPrivilege:
            cur.execute("ROLLBACK TO SAVEPOINT replica")
        for table, columns, lines in _wificore_rows(spec, tenants, hashes, expires):
            stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(
                sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns)))
            counts[table] = _copy(cur, stmt, lines())
        # Ids were given explicitly: move the identity sequences past them.
        for table, column in (("nas", "nas_id"), ("plans", "plan_id"),
                              ("subscribers", "subscriber_id")):
            cur.execute(sql.SQL("SELECT setval(pg_get_serial_sequence({}, {}), "
                                "greatest((SELECT max({}) FROM {}), 1))").format(
                sql.Literal(table), sql.Literal(column), sql.Identifier(column),
                sql.Identifier(table)))
    with psycopg.connect(shard.dsn, autocommit=True) as conn:
        conn.execute("ANALYZE tenants, nas, plans, subscribers")
    return counts


# ------------------------------------------------------------- stock schema
def stock_schema_text() -> str:
    try:
        return STOCK_SCHEMA.read_text()
    except FileNotFoundError:
        raise DatasetError(f"{STOCK_SCHEMA} is missing: {STOCK_PACKAGE_HINT}") from None


def ensure_stock_db(stock_dsn: str, *, replace: bool) -> None:
    """Create the stock database with FreeRADIUS's schema, empty (``replace``: anew)."""
    params = psycopg.conninfo.conninfo_to_dict(stock_dsn)
    dbname = params.get("dbname")
    if not dbname:
        raise DatasetError("stock_dsn: names no database")
    admin = psycopg.conninfo.make_conninfo(stock_dsn, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if exists and replace:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(dbname)))
            exists = None
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    with psycopg.connect(stock_dsn, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('radcheck')").fetchone()[0] is None:
            conn.execute(stock_schema_text())
        elif conn.execute("SELECT 1 FROM radcheck LIMIT 1").fetchone():
            raise DatasetError(f"the stock database {dbname!r} already holds users "
                               "(--replace makes it anew)")


def load_stock(stock_dsn: str, spec: Spec, tenants: list[Tenant], hashes: Hashes, *,
               replace: bool) -> dict[str, int]:
    """The same subscribers in FreeRADIUS's rlm_sql schema; row counts."""
    ensure_stock_db(stock_dsn, replace=replace)

    def check_lines() -> Iterator[str]:
        for t in tenants:
            for s in subscribers(spec, t.tenant_id, hashes):
                yield f"{s.username}\t{STOCK_PASSWORD_ATTR[s.password_type]}\t:=\t{s.password}\n"

    def group_lines() -> Iterator[str]:
        plans = {p.plan_id: p for p in PLANS}
        for t in tenants:
            for s in subscribers(spec, t.tenant_id, None):
                yield f"{s.username}\t{stock_group(t.tenant_id, plans[s.plan_id])}\t1\n"

    def group_reply_lines() -> Iterator[str]:
        for t in tenants:
            for p in PLANS:
                for attr, value in plan_reply(p):
                    yield f"{stock_group(t.tenant_id, p)}\t{attr}\t:=\t{value}\n"

    counts = {}
    with psycopg.connect(stock_dsn) as conn:
        cur = conn.cursor()
        for table, columns, lines in (
                ("radcheck", ("username", "attribute", "op", "value"), check_lines),
                ("radusergroup", ("username", "groupname", "priority"), group_lines),
                ("radgroupreply", ("groupname", "attribute", "op", "value"), group_reply_lines)):
            stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(
                sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns)))
            counts[table] = _copy(cur, stmt, lines())
    with psycopg.connect(stock_dsn, autocommit=True) as conn:
        conn.execute("ANALYZE radcheck, radusergroup, radgroupreply")
    return counts


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_users_file(path: Path, spec: Spec, tenants: list[Tenant], hashes: Hashes) -> int:
    """The same subscribers for rlm_files: password check item, the plan's reply items."""
    plans = {p.plan_id: p for p in PLANS}
    replies = {p.plan_id: ",\n".join(f"\t{a} := {_quote(v) if not v.isdigit() else v}"
                                     for a, v in plan_reply(p)) for p in PLANS}
    n = 0
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", buffering=1 << 20) as f:
        f.write("# Written by benchmarks/dataset.py: the benchmark's subscribers for rlm_files.\n")
        for t in tenants:
            for s in subscribers(spec, t.tenant_id, hashes):
                if s.password_type == "nthash":
                    check = f"NT-Password := 0x{s.password}"
                else:
                    check = f"{STOCK_PASSWORD_ATTR[s.password_type]} := {_quote(s.password)}"
                f.write(f"{s.username}\t{check}\n{replies[plans[s.plan_id].plan_id]}\n\n")
                n += 1
    tmp.replace(path)
    return n


# -------------------------------------------------------------------- load
def load(spec: Spec, shard_map: ShardMap, *, stock_dsn: str | None = None,
         users_file: Path | None = None, replace: bool = False,
         log: Callable[[str], None] = lambda line: None) -> dict:
    """Load the dataset everywhere at once (one thread per sink); counts and seconds."""
    started = time.monotonic()
    tenants = place_tenants(spec, shard_map)
    hashes = Hashes.compute()
    hashed_s = time.monotonic() - started
    log(f"dataset: {spec.tenants} tenants, {spec.subscribers:,} subscribers; "
        f"{NT_POOL} NT and {BCRYPT_POOL} bcrypt hashes in {hashed_s:.1f} s")
    expires = (dt.datetime.now(dt.UTC) + HOTSPOT_VALIDITY).isoformat()
    by_shard: dict[str, list[Tenant]] = {}
    for t in tenants:
        by_shard.setdefault(t.shard, []).append(t)

    jobs: dict[str, Callable[[], dict[str, int] | int]] = {}
    for shard in shard_map:
        if shard.name in by_shard:
            jobs[f"wificore:{shard.name}"] = (
                lambda shard=shard: load_shard(shard, spec, by_shard[shard.name], hashes,
                                               replace=replace, expires=expires))
    if stock_dsn:
        jobs["stock_sql"] = lambda: load_stock(stock_dsn, spec, tenants, hashes, replace=replace)
    if users_file:
        jobs["users_file"] = lambda: write_users_file(Path(users_file), spec, tenants, hashes)

    results: dict[str, object] = {}
    seconds: dict[str, float] = {}
    errors: list[BaseException] = []

    def run(name: str, job: Callable[[], object]) -> None:
        t0 = time.monotonic()
        try:
            results[name] = job()
        except BaseException as exc:  # reported in the caller's thread
            errors.append(exc)
        seconds[name] = round(time.monotonic() - t0, 2)
        log(f"dataset: {name} done in {seconds[name]:.1f} s")

    threads = [threading.Thread(target=run, args=item, name=item[0]) for item in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return {
        "spec": dataclasses.asdict(spec),
        "tenants": len(tenants),
        "subscribers": spec.subscribers,
        "nas": spec.tenants * (spec.nas_per_tenant + 1),
        "rows": results,
        "seconds": {"hashes": round(hashed_s, 2), **seconds,
                    "total": round(time.monotonic() - started, 2)},
    }


def spec_from_args(args: argparse.Namespace) -> Spec:
    pppoe, hotspot = args.pppoe_per_tenant, args.hotspot_per_tenant
    if args.subscribers_per_tenant is not None:
        pppoe = args.subscribers_per_tenant // 2
        hotspot = args.subscribers_per_tenant - pppoe
    return Spec(tenants=args.tenants, nas_per_tenant=args.nas_per_tenant,
                pppoe_per_tenant=pppoe, hotspot_per_tenant=hotspot)


def add_spec_arguments(p: argparse.ArgumentParser) -> None:
    d = Spec()
    p.add_argument("--tenants", type=int, default=d.tenants, help=f"tenants (default {d.tenants})")
    p.add_argument("--nas-per-tenant", type=int, default=d.nas_per_tenant,
                   help=f"NAS per tenant, besides the bench NAS (default {d.nas_per_tenant})")
    p.add_argument("--pppoe-per-tenant", type=int, default=d.pppoe_per_tenant,
                   help=f"PPPoE subscribers per tenant (default {d.pppoe_per_tenant})")
    p.add_argument("--hotspot-per-tenant", type=int, default=d.hotspot_per_tenant,
                   help=f"hotspot subscribers per tenant (default {d.hotspot_per_tenant})")
    p.add_argument("--subscribers-per-tenant", type=int,
                   help="shorthand: half PPPoE, half hotspot")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_spec_arguments(p)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--local", nargs="?", const="", metavar="DIR",
                       help="start Redis and two shards of our own (in DIR, default a temporary "
                            "folder), load, report, stop them")
    where.add_argument("--shard-map", help="load into the shards of this shard map (their `dsn`)")
    p.add_argument("--stock-dsn", help="database for FreeRADIUS's rlm_sql schema "
                                       "(--local: radius on shard1's server)")
    p.add_argument("--users-file", type=Path, help="write the rlm_files users file here")
    p.add_argument("--no-stock", action="store_true", help="--local: skip the stock copies")
    p.add_argument("--replace", action="store_true",
                   help="delete the dataset's tenants (and the stock database) first")
    args = p.parse_args(argv)
    try:
        spec = spec_from_args(args)
    except DatasetError as exc:
        print(f"dataset: {exc}", file=sys.stderr)
        return 2

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    stack = None
    state: Path | None = None
    try:
        if args.local is not None:
            from stack.local import Ports, Stack
            state = Path(args.local) if args.local else Path(
                tempfile.mkdtemp(prefix="wificore-dataset-", dir="/tmp"))
            stack = Stack(state, Ports.free(), fast=True)
            t0 = time.monotonic()
            stack.start_data()
            log(f"dataset: local stack up in {time.monotonic() - t0:.1f} s ({state})")
            shard_map = ShardMap.load(stack.shard_map)
            stock_dsn = args.stock_dsn
            users_file = args.users_file
            if not args.no_stock:
                stock_dsn = stock_dsn or stack.pg[0].dsn().rsplit("/", 1)[0] + "/radius"
                users_file = users_file or state / "users"
        else:
            shard_map = ShardMap.load(args.shard_map)
            stock_dsn, users_file = args.stock_dsn, args.users_file
        result = load(spec, shard_map, stock_dsn=stock_dsn, users_file=users_file,
                      replace=args.replace, log=log)
        print(json.dumps(result, indent=2))
    except (DatasetError, psycopg.Error) as exc:
        print(f"dataset: {exc}", file=sys.stderr)
        return 1
    finally:
        if stack is not None:
            stack.stop_all()
            if not args.local and state is not None:
                shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
