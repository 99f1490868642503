"""The NAS directory: which tenant and NAS a source address or a client shortname is.

radiusd asks :meth:`Directory.client` for an unknown source address (its dynamic
client lookup): Redis first, else every shard, and the tenant must be one the
shard map assigns to the shard that holds the row. Each later request names its
client by the shortname radiusd set from that answer (``<tenant>:<nas>:<vendor>``),
which :meth:`Directory.lookup` turns into numbers, once per client.
"""

from __future__ import annotations

from typing import cast

from wificore.errors import DecodeError, StoreUnavailable, UnknownTenant
from wificore.keys import Keys
from wificore.log import get_logger
from wificore.profile import NAS_SQL, Nas
from wificore.shardmap import ShardMap

from .result import Result
from .store import RedisStore, Shards

log = get_logger("rlm_wificore")

NAS_TTL_S = 60


def parse_client(shortname: str) -> tuple[int, int, str]:
    """'<tenant>:<nas>:<vendor>' (set by the dynamic client lookup) -> parts."""
    tenant, nas, vendor = shortname.split(":", 2)
    return int(tenant), int(nas), vendor


class Directory:
    """NAS by source address (for radiusd's dynamic clients) and by client shortname."""

    def __init__(self, shard_map: ShardMap, shards: Shards, redis: RedisStore, keys: Keys) -> None:
        self.shard_map = shard_map
        self.shards = shards
        self.redis = redis
        self.keys = keys
        self.clients: dict[str, tuple[int, int, str]] = {}

    def client(self, ip: str) -> Result:
        """The NAS at source address ``ip``, as FreeRADIUS-Client-* control pairs."""
        nas = None
        key = self.keys.nas(ip)
        try:
            raw = self.redis.call(lambda r: r.get(key))
            if raw:
                nas = Nas.unpack(cast(bytes, raw))
        except (StoreUnavailable, DecodeError):
            pass
        if nas is None:
            try:
                rows = self.shards.fetch_all_shards(NAS_SQL, (ip,))
            except StoreUnavailable as exc:
                log.warning("nas_lookup_failed", ip=ip, error=str(exc))
                return Result("fail", reason="backend_unavailable")
            rows = [r for r in rows if self.owns(r[0])]
            if len(rows) != 1:
                log.warning("unknown_client" if not rows else "ambiguous_client", ip=ip, matches=len(rows))
                return Result("notfound", reason="unknown_client")
            nas = Nas(*rows[0])
            try:
                self.redis.call(lambda r: r.set(key, nas.pack(), ex=NAS_TTL_S))
            except StoreUnavailable:
                pass
        log.info("client_added", ip=ip, tenant=nas.tenant_id, nas=nas.nas_id, vendor=nas.vendor)
        return Result("ok", config=(
            ("FreeRADIUS-Client-IP-Address", ip),
            ("FreeRADIUS-Client-Secret", nas.secret),
            ("FreeRADIUS-Client-Shortname", nas.shortname),
            ("FreeRADIUS-Client-NAS-Type", nas.vendor),
            ("FreeRADIUS-Client-Require-MA", "yes" if nas.require_message_authenticator else "no"),
        ))

    def lookup(self, req: dict[str, str]) -> tuple[int, int, str] | None:
        """(tenant, NAS, vendor) of the RADIUS client that sent ``req``; None if unknown."""
        client = req.get("WiFiCore-Client")
        if not client:
            return None
        parsed = self.clients.get(client)
        if parsed is None:
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
