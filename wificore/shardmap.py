"""The shard map: tenant ranges to PostgreSQL connection strings.

One TOML file, read the same way by the module, batch_writer and
wificore-admin::

    [[shard]]
    name = "shard1"
    first_tenant = 1
    last_tenant = 499
    dsn = "postgresql://wificore@127.0.0.1:15432/wificore"
    # optional: a direct DSN for LISTEN when `dsn` goes through PgBouncer
    # (transaction pooling cannot LISTEN), and per-role DSNs.
    # listen_dsn = "..."; radius_dsn = "..."; writer_dsn = "..."
"""

from __future__ import annotations

import bisect
import dataclasses
import tomllib
from collections.abc import Iterator
from pathlib import Path

from .errors import ConfigError, UnknownTenant

MAX_TENANT = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Shard:
    """One database (or a Citus coordinator) and the tenants it holds."""

    name: str
    first_tenant: int
    last_tenant: int
    dsn: str
    listen_dsn: str
    radius_dsn: str
    writer_dsn: str

    def holds(self, tenant_id: int) -> bool:
        return self.first_tenant <= tenant_id <= self.last_tenant


class ShardMap:
    """Sorted, non-overlapping tenant ranges; lookup is a bisect."""

    def __init__(self, shards: list[Shard], *, source: str = "shard map") -> None:
        if not shards:
            raise ConfigError(f"{source}: no [[shard]] entries")
        shards = sorted(shards, key=lambda s: s.first_tenant)
        names = set()
        for prev, cur in zip(shards, shards[1:], strict=False):  # neighbours
            if cur.first_tenant <= prev.last_tenant:
                raise ConfigError(
                    f"{source}: shard {cur.name!r} overlaps shard {prev.name!r} "
                    f"(tenants {cur.first_tenant}..{prev.last_tenant})")
        for s in shards:
            if s.name in names:
                raise ConfigError(f"{source}: shard name {s.name!r} appears twice")
            names.add(s.name)
        self.shards = shards
        self._starts = [s.first_tenant for s in shards]
        self.source = source

    @classmethod
    def load(cls, path: str | Path) -> ShardMap:
        """Read and check a shard map file; errors name the file and the key."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"shard_map: file {str(path)!r} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"shard_map: {path}: {exc}") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "shard map") -> ShardMap:
        entries = data.get("shard")
        if not isinstance(entries, list):
            raise ConfigError(f"{source}: expected [[shard]] tables")
        shards = []
        for i, entry in enumerate(entries):
            where = f"{source}: shard[{i}]"
            for key in ("name", "first_tenant", "last_tenant", "dsn"):
                if key not in entry:
                    raise ConfigError(f"{where}.{key}: missing")
            first, last = entry["first_tenant"], entry["last_tenant"]
            if not (isinstance(first, int) and isinstance(last, int) and 1 <= first <= last <= MAX_TENANT):
                raise ConfigError(f"{where}: need 1 <= first_tenant <= last_tenant <= {MAX_TENANT}")
            dsn = str(entry["dsn"])
            if not dsn.startswith(("postgresql://", "postgres://")) and "=" not in dsn:
                raise ConfigError(f"{where}.dsn: not a PostgreSQL connection string")
            unknown = set(entry) - {"name", "first_tenant", "last_tenant", "dsn",
                                    "listen_dsn", "radius_dsn", "writer_dsn"}
            if unknown:
                raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown key")
            shards.append(Shard(
                name=str(entry["name"]), first_tenant=first, last_tenant=last, dsn=dsn,
                listen_dsn=str(entry.get("listen_dsn", dsn)),
                radius_dsn=str(entry.get("radius_dsn", dsn)),
                writer_dsn=str(entry.get("writer_dsn", dsn))))
        return cls(shards, source=source)

    def shard_for(self, tenant_id: int) -> Shard:
        """The shard holding ``tenant_id``; :class:`UnknownTenant` if none does."""
        i = bisect.bisect_right(self._starts, tenant_id) - 1
        if i >= 0 and self.shards[i].holds(tenant_id):
            return self.shards[i]
        raise UnknownTenant(f"tenant {tenant_id} is in no shard of {self.source}")

    def __iter__(self) -> Iterator[Shard]:
        return iter(self.shards)

    def by_name(self, name: str) -> Shard:
        for s in self.shards:
            if s.name == name:
                return s
        raise ConfigError(f"{self.source}: no shard named {name!r}")
