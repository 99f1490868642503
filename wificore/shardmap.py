"""The shard map: tenant ranges (and single tenants placed elsewhere) to PostgreSQL DSNs.

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
    # optional: a streaming replica that radiusd's lookups use while the
    # primary does not answer (never for writes).
    # replica_dsn = "..."

    # A tenant placed outside its range (written by `wificore-admin tenant move`):
    [[tenant]]
    id = 7
    shard = "shard3"

radiusd and batch_writer follow the file without a restart (:class:`MapFollower`):
each checks its identity (inode, mtime, size) every ``MapFollower.CHECK_S`` and
swaps a changed, valid map in at once (:meth:`ShardMap.replace`); an invalid one
is logged and the map in use is kept.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import re
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError, UnknownTenant

MAX_TENANT = 2**31 - 1
SHARD_KEYS = {"name", "first_tenant", "last_tenant", "dsn", "listen_dsn", "radius_dsn",
              "writer_dsn", "replica_dsn"}


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
    replica_dsn: str = ""

    def holds(self, tenant_id: int) -> bool:
        return self.first_tenant <= tenant_id <= self.last_tenant


@dataclasses.dataclass(frozen=True)
class _View:
    """One consistent state of the map: replaced whole, never changed in place."""

    shards: list[Shard]
    starts: list[int]
    placed: dict[int, Shard]


class ShardMap:
    """Sorted, non-overlapping tenant ranges (lookup is a bisect), and single tenants
    placed on another shard than their range's (a dict, looked at first)."""

    def __init__(self, shards: list[Shard], *, tenants: dict[int, str] | None = None,
                 source: str = "shard map") -> None:
        if not shards:
            raise ConfigError(f"{source}: no [[shard]] entries")
        shards = sorted(shards, key=lambda s: s.first_tenant)
        names: dict[str, Shard] = {}
        for prev, cur in zip(shards, shards[1:], strict=False):  # neighbours
            if cur.first_tenant <= prev.last_tenant:
                raise ConfigError(
                    f"{source}: shard {cur.name!r} overlaps shard {prev.name!r} "
                    f"(tenants {cur.first_tenant}..{prev.last_tenant})")
        for s in shards:
            if s.name in names:
                raise ConfigError(f"{source}: shard name {s.name!r} appears twice")
            names[s.name] = s
        placed = {}
        for tenant_id, name in (tenants or {}).items():
            if name not in names:
                raise ConfigError(f"{source}: tenant {tenant_id} is placed on shard {name!r}, "
                                  f"which is not in the map")
            placed[tenant_id] = names[name]
        self._view = _View(shards, [s.first_tenant for s in shards], placed)
        self.source = source
        #: (inode, mtime_ns, size) of the file it was read from (None: not from a file).
        self.signature: tuple[int, int, int] | None = None

    @property
    def shards(self) -> list[Shard]:
        return self._view.shards

    @property
    def placed(self) -> dict[int, str]:
        """Tenant -> shard name of the tenants placed outside their range."""
        return {t: s.name for t, s in self._view.placed.items()}

    @classmethod
    def load(cls, path: str | Path) -> ShardMap:
        """Read and check a shard map file; errors name the file and the key."""
        path = Path(path)
        try:
            signature = file_signature(path)
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"shard_map: file {str(path)!r} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"shard_map: {path}: {exc}") from None
        m = cls.from_dict(data, source=str(path))
        m.signature = signature
        return m

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "shard map") -> ShardMap:
        entries = data.get("shard")
        if not isinstance(entries, list):
            raise ConfigError(f"{source}: expected [[shard]] tables")
        unknown_top = set(data) - {"shard", "tenant"}
        if unknown_top:
            raise ConfigError(f"{source}: {sorted(unknown_top)[0]}: unknown key")
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
            for key in ("dsn", "replica_dsn"):
                value = str(entry.get(key, dsn))
                if not value.startswith(("postgresql://", "postgres://")) and "=" not in value:
                    raise ConfigError(f"{where}.{key}: not a PostgreSQL connection string")
            unknown = set(entry) - SHARD_KEYS
            if unknown:
                raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown key")
            shards.append(Shard(
                name=str(entry["name"]), first_tenant=first, last_tenant=last, dsn=dsn,
                listen_dsn=str(entry.get("listen_dsn", dsn)),
                radius_dsn=str(entry.get("radius_dsn", dsn)),
                writer_dsn=str(entry.get("writer_dsn", dsn)),
                replica_dsn=str(entry.get("replica_dsn", ""))))
        tenants: dict[int, str] = {}
        placements = data.get("tenant", [])
        if not isinstance(placements, list):
            raise ConfigError(f"{source}: expected [[tenant]] tables")
        for i, entry in enumerate(placements):
            where = f"{source}: tenant[{i}]"
            unknown = set(entry) - {"id", "shard"}
            if unknown:
                raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown key")
            tid, name = entry.get("id"), entry.get("shard")
            if not (isinstance(tid, int) and 1 <= tid <= MAX_TENANT):
                raise ConfigError(f"{where}.id: need a tenant id 1..{MAX_TENANT}")
            if not isinstance(name, str):
                raise ConfigError(f"{where}.shard: missing")
            if tid in tenants:
                raise ConfigError(f"{where}: tenant {tid} is placed twice")
            tenants[tid] = name
        return cls(shards, tenants=tenants, source=source)

    def shard_for(self, tenant_id: int) -> Shard:
        """The shard holding ``tenant_id``; :class:`UnknownTenant` if none does."""
        v = self._view
        placed = v.placed.get(tenant_id)
        if placed is not None:
            return placed
        i = bisect.bisect_right(v.starts, tenant_id) - 1
        if i >= 0 and v.shards[i].holds(tenant_id):
            return v.shards[i]
        raise UnknownTenant(f"tenant {tenant_id} is in no shard of {self.source}")

    def range_shard(self, tenant_id: int) -> Shard | None:
        """The shard whose range holds ``tenant_id`` (placements not looked at)."""
        v = self._view
        i = bisect.bisect_right(v.starts, tenant_id) - 1
        return v.shards[i] if i >= 0 and v.shards[i].holds(tenant_id) else None

    def __iter__(self) -> Iterator[Shard]:
        return iter(self._view.shards)

    def by_name(self, name: str) -> Shard:
        for s in self._view.shards:
            if s.name == name:
                return s
        raise ConfigError(f"{self.source}: no shard named {name!r}")

    def replace(self, other: ShardMap) -> None:
        """Take ``other``'s content (one attribute: a lookup sees the old map or the new)."""
        self._view = other._view
        self.signature = other.signature

    def moved_tenants(self, other: ShardMap) -> set[int] | None:
        """Tenants whose shard differs between this map and ``other``; None: the ranges
        differ (any tenant may have moved)."""
        mine, theirs = self._view, other._view
        if [(s.name, s.first_tenant, s.last_tenant) for s in mine.shards] != \
                [(s.name, s.first_tenant, s.last_tenant) for s in theirs.shards]:
            return None
        a, b = self.placed, other.placed
        return {t for t in a.keys() | b.keys() if a.get(t) != b.get(t)}


def file_signature(path: str | Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class MapFollower:
    """Follows a shard map file: :meth:`check` returns a newly written, valid map (or None).

    ``CHECK_S``: how often the owner calls it. A process therefore uses a new map
    at most ``CHECK_S`` (plus its loop's own tick) after the file was replaced.
    """

    CHECK_S = 0.5

    def __init__(self, path: str | Path, current: ShardMap) -> None:
        self.path = Path(path)
        self.seen = current.signature
        self.error: str | None = None

    def check(self) -> ShardMap | None:
        try:
            sig = file_signature(self.path)
        except OSError as exc:
            self.error = f"shard map {self.path}: {exc.strerror}"
            return None
        if sig == self.seen:
            return None
        self.seen = sig
        try:
            new = ShardMap.load(self.path)
        except ConfigError as exc:
            self.error = str(exc)  # the map in use is kept
            return None
        self.error = None
        return new

    def take(self, log: Any) -> ShardMap | None:
        """:meth:`check`, with a map file that cannot be used logged once (``log``: a
        structlog logger) and the map in use kept."""
        new = self.check()
        if new is None and self.error:
            log.error("shard_map_not_followed", error=self.error, kept="the map in use")
            self.error = None
        return new


_PLACEMENT = (r"(?m)^\[\[tenant\]\][ \t]*\n[ \t]*id[ \t]*=[ \t]*{id}[ \t]*\n"
              r"[ \t]*shard[ \t]*=[ \t]*\"[^\"\n]*\"[ \t]*(?:\n|\Z)")


def write_placement(path: str | Path, tenant_id: int, shard_name: str) -> ShardMap:
    """Place ``tenant_id`` on ``shard_name`` in the map file: its ``[[tenant]]`` entry is
    replaced (or removed, when the tenant's range is on that shard). The file is
    replaced in one rename, checked before; the new map is returned."""
    path = Path(path)
    current = ShardMap.load(path)
    current.by_name(shard_name)
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(_PLACEMENT.format(id=tenant_id))
    text, removed = pattern.subn("", text)
    if tenant_id in current.placed and not removed:
        raise ConfigError(f"{path}: tenant {tenant_id}'s [[tenant]] entry is not in the form "
                          f"`[[tenant]]` / `id = {tenant_id}` / `shard = \"...\"`: edit it by hand")
    home = current.range_shard(tenant_id)
    if home is None or home.name != shard_name:
        if not text.endswith("\n"):
            text += "\n"
        text += f'\n[[tenant]]\nid = {tenant_id}\nshard = "{shard_name}"\n'
    new = ShardMap.from_dict(tomllib.loads(text), source=str(path))
    if new.shard_for(tenant_id).name != shard_name:
        raise ConfigError(f"{path}: tenant {tenant_id} would not be on {shard_name}")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        st = path.stat()
        os.chmod(tmp, st.st_mode & 0o7777)
        if os.geteuid() == 0:
            os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return ShardMap.load(path)
