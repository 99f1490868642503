"""The NAS directory: which tenant and NAS a source address or a client shortname is.

radiusd asks :meth:`Directory.client` for an unknown source address (its dynamic
client lookup, which 3.2 runs in the thread that reads the socket, under the
module's mutex): the answer comes from ONE place, never from the shards.

* **The directory** is one Redis hash (:meth:`Keys.nas_directory`): source
  address -> msgpack NAS, plus a marker field once it is built. The relay (see
  invalidation.py and background.py) builds it from every shard when it takes
  over and keeps it up to date from the shards' NOTIFYs (a NAS or tenant
  change); the shard map must assign a row's tenant to the shard holding it,
  and an address claimed by two tenants is left out (ambiguous).
* **Unknown addresses cost no I/O**: every process holds the set of known
  addresses (:class:`KnownAddresses`, about 4 bytes per IPv4 NAS), loaded from
  the directory by a module thread and kept current by the announcements; an
  address not in it is answered "unknown" at once. Until that set is loaded,
  a miss in the directory is cached negatively in process for
  :data:`NEGATIVE_TTL_S`; the directory hash is the negative cache in Redis
  (an address without a field is unknown).
* **Their log lines are rate-limited**: one line per :data:`LOG_EVERY_S`, then
  "N unknown clients suppressed" (written by a module thread, see
  :meth:`Directory.flush_unknown_log`).

Each later request names its client by the shortname radiusd set from that
answer (``<tenant>:<nas>:<vendor>``, and ``:kind-off`` after it for a NAS whose
subscriber-kind check is off, ``nas set --kind-check off``), which
:meth:`Directory.lookup` turns into numbers, once per client.
"""

from __future__ import annotations

import bisect
import socket
import threading
import time
from array import array
from collections.abc import Callable, Iterable
from typing import Any, cast

import redis

from wificore.errors import DecodeError, StoreUnavailable, UnknownTenant
from wificore.keys import Keys
from wificore.log import Throttle, get_logger
from wificore.profile import KIND_OFF, NAS_SQL, Nas
from wificore.shardmap import Shard, ShardMap

from .result import Result, radius_text
from .store import RedisStore, Shards

log = get_logger("rlm_wificore")

#: The directory hash's marker field: present once the relay has built it.
BUILT = "\x00built"
#: A miss in the directory, while the set of known addresses is not loaded yet.
NEGATIVE_TTL_S = 30.0
NEGATIVE_MAX = 100_000
#: At most one "unknown client" line per this many seconds per process.
LOG_EVERY_S = 10.0

#: Every NAS of every tenant of a shard (the relay's rebuild). A suspended tenant's
#: NAS are in it: its accounting is answered, its logins rejected (engine.py).
NAS_ALL_SQL = """
SELECT n.tenant_id, n.nas_id, host(n.ip), n.secret, n.vendor, n.require_message_authenticator,
       n.kind_check, n.coa_port
  FROM nas n JOIN tenants t USING (tenant_id)
"""
#: The addresses of a tenant's NAS, whatever its status (a tenant change).
TENANT_NAS_SQL = "SELECT host(ip) FROM nas WHERE tenant_id = %s"

#: ``query(shard, sql, params)`` -> rows: the relay's direct reads of a shard.
Query = Callable[[Shard, str, tuple[Any, ...]], list[tuple[Any, ...]]]


#: (tenant, NAS, vendor, kind check on) of a client shortname.
Client = tuple[int, int, str, bool]


def parse_client(shortname: str) -> Client:
    """'<tenant>:<nas>:<vendor>[:kind-off]' (set by the dynamic client lookup, see
    :attr:`wificore.profile.Nas.shortname`) -> parts; the last is False when the
    NAS's subscriber-kind check is off."""
    tenant, nas, rest = shortname.split(":", 2)
    vendor, _, option = rest.partition(":")
    return int(tenant), int(nas), vendor, option != KIND_OFF


def _v4(ip: str) -> int | None:
    try:
        return int.from_bytes(socket.inet_aton(ip), "big") if ip.count(".") == 3 else None
    except OSError:
        return None


class KnownAddresses:
    """The source addresses the directory holds: a sorted array of IPv4 numbers (4 B each)
    and a set of the others. Replaced, never changed in place, while hooks read it."""

    __slots__ = ("v4", "other")

    def __init__(self, ips: Iterable[str] = ()) -> None:
        v4: set[int] = set()
        self.other: frozenset[str] = frozenset()
        other = set()
        for ip in ips:
            n = _v4(ip)
            if n is None:
                other.add(ip)
            else:
                v4.add(n)
        self.v4 = array("I", sorted(v4))
        self.other = frozenset(other)

    def __contains__(self, ip: str) -> bool:
        n = _v4(ip)
        if n is None:
            return ip in self.other
        v4 = self.v4
        i = bisect.bisect_left(v4, n)
        return i < len(v4) and v4[i] == n

    def __len__(self) -> int:
        return len(self.v4) + len(self.other)

    def with_address(self, ip: str, present: bool) -> KnownAddresses:
        """A copy with ``ip`` added (``present``) or removed."""
        new = KnownAddresses()
        new.v4, new.other = array("I", self.v4), self.other
        n = _v4(ip)
        if n is None:
            new.other = self.other | {ip} if present else self.other - {ip}
            return new
        i = bisect.bisect_left(new.v4, n)
        found = i < len(new.v4) and new.v4[i] == n
        if present and not found:
            new.v4.insert(i, n)
        elif not present and found:
            del new.v4[i]
        return new


class Directory:
    """NAS by source address (for radiusd's dynamic clients) and by client shortname."""

    def __init__(self, shard_map: ShardMap, shards: Shards, redis: RedisStore, keys: Keys) -> None:
        self.shard_map = shard_map
        self.shards = shards
        self.redis = redis
        self.keys = keys
        self.clients: dict[str, Client] = {}
        #: What this process told radiusd each address is (the shortname), and the
        #: shortnames whose NAS left that address since (deleted, moved): radiusd keeps a
        #: dynamic client for its lifetime, so their requests are refused here meanwhile.
        self.issued: dict[str, str] = {}
        self.revoked: dict[str, str] = {}  # shortname -> the address it was issued for
        #: Tenants the shard map moved since the relay last read their NAS again (None in
        #: it: the ranges changed, every address is read again); see note_moved.
        self._moved: set[int | None] = set()
        self._moved_lock = threading.Lock()  # the map thread adds, the relay takes
        #: Every address in the directory (None: not loaded yet; see load_known).
        self.known: KnownAddresses | None = None
        self.negative: dict[str, float] = {}  # address -> until (time.monotonic())
        self.unknown_seen = 0  # unknown lookups, for the metrics
        self._unknown_log = Throttle(LOG_EVERY_S)
        # The relay's rebuild: addresses changed while it read the shards.
        self._rebuilding = False
        self._dirty: set[str] = set()

    # ------------------------------------------------------------ the hook's side
    def client(self, ip: str) -> Result:
        """The NAS at source address ``ip``, as FreeRADIUS-Client-* control pairs."""
        known = self.known
        if known is not None and ip not in known:
            return self._unknown(ip)
        until = self.negative.get(ip)
        if until is not None and until > time.monotonic():
            return self._unknown(ip)
        key = self.keys.nas_directory
        try:
            raw, built = self.redis.call(lambda r: r.hmget(key, ip, BUILT))
            nas = Nas.unpack(cast(bytes, raw)) if raw else None
        except (StoreUnavailable, DecodeError) as exc:
            log.warning("nas_lookup_failed", ip=ip, error=str(exc))
            return Result("fail", reason="backend_unavailable")
        if nas is None:
            if built is None:  # no relay has built it yet: not an answer
                log.warning("nas_directory_not_built", ip=ip)
                return Result("fail", reason="backend_unavailable")
            if len(self.negative) >= NEGATIVE_MAX:
                self.negative = {}
            self.negative[ip] = time.monotonic() + NEGATIVE_TTL_S
            return self._unknown(ip)
        log.info("client_added", ip=ip, tenant=nas.tenant_id, nas=nas.nas_id, vendor=nas.vendor)
        if len(self.issued) >= NEGATIVE_MAX:
            self.issued = {}
        self.issued[ip] = nas.shortname
        self.revoked.pop(nas.shortname, None)
        return Result("ok", config=(
            ("FreeRADIUS-Client-IP-Address", ip),
            ("FreeRADIUS-Client-Secret", radius_text(nas.secret)),
            ("FreeRADIUS-Client-Shortname", nas.shortname),
            ("FreeRADIUS-Client-NAS-Type", nas.vendor),
            ("FreeRADIUS-Client-Require-MA", "yes" if nas.require_message_authenticator else "no"),
        ))

    def _unknown(self, ip: str) -> Result:
        self.unknown_seen += 1
        left_out = self._unknown_log.admit(None, ip)
        if left_out is not None:
            log.warning("unknown_client", ip=ip, left_out=left_out)
        return Result("notfound", reason="unknown_client")

    def flush_unknown_log(self) -> None:
        """The summary of the unknown-client lines held back (a module thread calls it)."""
        for _key, count, last_ip in self._unknown_log.due():
            log.warning(f"{count} unknown clients suppressed", suppressed=count, last_ip=last_ip)

    def lookup(self, req: dict[str, str]) -> Client | None:
        """(tenant, NAS, vendor, kind check on) of the RADIUS client that sent ``req``;
        None if unknown."""
        client = req.get("WiFiCore-Client")
        if not client:
            return None
        parsed = self.clients.get(client)
        if parsed is None:
            if client in self.revoked:  # its NAS is gone from the address radiusd knows it by
                return None
            try:
                parsed = parse_client(client)
            except ValueError:
                return None
            self.clients[client] = parsed
        return parsed

    def owns(self, tenant_id: int) -> bool:
        """A row only counts on the shard the map assigns its tenant to."""
        try:
            self.shard_map.shard_for(tenant_id)
            return True
        except UnknownTenant:
            return False

    # ----------------------------------------- every process's module thread
    def load_known(self, r: redis.Redis) -> None:
        """Load the set of known addresses from the directory (None while it is not built)."""
        fields = r.hkeys(self.keys.nas_directory)
        names = [f.decode("utf-8", "replace") if isinstance(f, bytes) else f for f in fields]
        if BUILT not in names:
            self.known = None
            return
        self.known = KnownAddresses(n for n in names if n != BUILT)
        self.negative = {}
        known = self.known
        for ip in list(self.issued):  # one copy (a hook thread may add to it meanwhile)
            if ip not in known:
                self._revoke(ip, None)

    def address_changed(self, r: redis.Redis, ip: str) -> None:
        """The relay announced a change of the NAS at ``ip``: follow the directory. A client
        this process gave radiusd for that address whose NAS is no longer there (deleted,
        moved to another address, the address given to another NAS) is refused from now
        on, not for the rest of radiusd's client lifetime."""
        self.negative.pop(ip, None)
        raw = r.hget(self.keys.nas_directory, ip)
        known = self.known
        if known is not None:
            self.known = known.with_address(ip, raw is not None)
        try:
            now = Nas.unpack(cast(bytes, raw)) if raw else None
        except DecodeError:
            now = None
        if ip in self.issued:
            self._revoke(ip, now)
        elif now is not None and self.revoked.get(now.shortname) == ip:
            # The same NAS is back at the address its client was issued for (a removal
            # undone, a tenant move's directory read again): its client serves again.
            self.revoked.pop(now.shortname, None)  # (a hook may have dropped it meanwhile)
            self.issued[ip] = now.shortname
            log.info("client_restored", ip=ip, client=now.shortname)

    def _revoke(self, ip: str, now: Nas | None) -> None:
        """Refuse the shortname issued for ``ip`` unless ``now`` is the same NAS there (a
        changed vendor or option keeps the old client working until radiusd drops it)."""
        issued = self.issued.get(ip)
        if issued is None:
            return
        old = parse_client(issued)
        if now is not None and (now.tenant_id, now.nas_id) == old[:2]:
            return
        self.issued.pop(ip, None)  # (a hook may have replaced the dict meanwhile)
        if len(self.revoked) >= NEGATIVE_MAX:
            self.revoked = {}
        self.revoked[issued] = ip
        self.clients.pop(issued, None)
        log.info("client_revoked", ip=ip, client=issued)

    # ------------------------------------------------------------ the relay's side
    def rebuild(self, query: Query, r: redis.Redis) -> int:
        """Build the directory from every shard (the relay, when it takes over); the
        number of NAS in it. Replaced in one RENAME; changes announced meanwhile are
        applied again afterwards."""
        self._rebuilding, self._dirty = True, set()
        try:
            by_ip: dict[str, list[Nas]] = {}
            unowned: set[str] = set()  # addresses with rows only on shards not given their tenant
            for shard in self.shard_map:
                for row in query(shard, NAS_ALL_SQL, ()):
                    nas = Nas(*row)
                    if self._owned_here(nas.tenant_id, shard):
                        by_ip.setdefault(nas.ip, []).append(nas)
                    else:
                        unowned.add(nas.ip)
            # A move whose flip this relay has not taken yet (see refresh_address): the
            # directory's field for such an address is kept as it is.
            only_unowned = sorted(unowned - by_ip.keys())
            kept: dict[Any, Any] = {ip: raw for ip, raw in zip(
                only_unowned, r.hmget(self.keys.nas_directory, only_unowned) if only_unowned else [],
                strict=True) if raw is not None}
            tmp = self.keys.nas_directory + ":building"
            pipe = r.pipeline(transaction=False)
            pipe.delete(tmp)
            items = list(by_ip.items())
            for i in range(0, len(items), 1000):
                mapping: dict[Any, Any] = {}
                for ip, found in items[i:i + 1000]:
                    if len(found) == 1:
                        mapping[ip] = found[0].pack()
                    else:
                        log.warning("ambiguous_client", ip=ip, matches=len(found))
                if mapping:
                    pipe.hset(tmp, mapping=mapping)
            if kept:
                log.info("nas_directory_move_in_flight", kept=len(kept))
                pipe.hset(tmp, mapping=kept)
            pipe.hset(tmp, BUILT, str(int(time.time())))
            pipe.execute()
            # On its own: a Redis Cluster's pipeline refuses RENAME (both keys share the
            # {nasdir} tag: one slot).
            r.rename(tmp, self.keys.nas_directory)
            dirty = self._dirty
        finally:
            self._rebuilding = False
        for ip in dirty:
            self.refresh_address(query, r, ip)
        count = sum(1 for found in by_ip.values() if len(found) == 1)
        log.info("nas_directory_built", nas=count)
        return count

    def refresh_address(self, query: Query, r: redis.Redis, ip: str) -> None:
        """A NAS at ``ip`` changed (a shard's NOTIFY): read it again from the shards (off
        the hook path: the relay's thread) and update its field."""
        if self._rebuilding:
            self._dirty.add(ip)
        while True:
            # Read and written again when the map changed meanwhile: a field written from
            # the old map (a moved tenant's NAS owned by no shard) must not be the last word.
            signature = self.shard_map.signature
            rows = [(shard, row) for shard in self.shard_map for row in query(shard, NAS_SQL, (ip,))]
            found = [Nas(*row) for shard, row in rows if self._owned_here(row[0], shard)]
            if len(found) == 1:
                r.hset(self.keys.nas_directory, ip, found[0].pack())
            elif not found and rows:
                # Only on shards this map does not give their tenant: a move whose flip this
                # relay has not taken yet (its cleanup deleted the source's rows). The field
                # stays as it is; taking the new map reads the tenant again (note_moved).
                log.info("nas_directory_move_in_flight", ip=ip,
                         tenants=sorted({row[0] for _, row in rows}))
            else:
                if found:
                    log.warning("ambiguous_client", ip=ip, matches=len(found))
                r.hdel(self.keys.nas_directory, ip)
            if self.shard_map.signature == signature:
                return

    def note_moved(self, tenants: set[int] | None) -> None:
        """The shard map moved ``tenants`` (None: its ranges changed): their NAS are read
        again by the relay (:meth:`take_moved`). A relay that took the map after a move's
        cleanup had dropped the moved tenant's addresses (no shard held them for the map
        it had), and nothing else would have written them again before the next rebuild."""
        with self._moved_lock:
            self._moved |= {None} if tenants is None else tenants

    def take_moved(self) -> set[int | None]:
        with self._moved_lock:
            moved, self._moved = self._moved, set()
        return moved

    def put_back_moved(self, moved: set[int | None]) -> None:
        """What :meth:`take_moved` gave, not read after all (a shard error): kept for next time."""
        with self._moved_lock:
            self._moved |= moved

    def refresh_tenant(self, query: Query, r: redis.Redis, shard: Shard, tenant_id: int) -> list[str]:
        """A tenant changed (its status): every NAS address of it read again; the addresses."""
        ips = [row[0] for row in query(shard, TENANT_NAS_SQL, (tenant_id,))]
        for ip in ips:
            self.refresh_address(query, r, ip)
        return ips

    def _owned_here(self, tenant_id: int, shard: Shard) -> bool:
        try:
            return self.shard_map.shard_for(tenant_id).name == shard.name
        except UnknownTenant:
            return False
