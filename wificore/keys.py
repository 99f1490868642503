"""The Redis key layout: one prefix, the tenant in a hash tag.

``{prefix}:{<tenant>}:…`` keeps a tenant's keys in one Redis Cluster slot.
Every key that can grow has a TTL or a bound (see docs/redis-keys.md).
"""

from __future__ import annotations


class Keys:
    """Builds every key name from the configured prefix."""

    __slots__ = ("p",)

    def __init__(self, prefix: str) -> None:
        self.p = prefix

    def profile(self, tenant_id: int, username: str) -> str:
        """msgpack subscriber profile, or the 1-byte 'unknown' marker; TTL."""
        return f"{self.p}:{{{tenant_id}}}:u:{username}"

    def plan(self, tenant_id: int, plan_id: int) -> str:
        """msgpack plan; TTL."""
        return f"{self.p}:{{{tenant_id}}}:plan:{plan_id}"

    def tenant(self, tenant_id: int) -> str:
        """The tenant's status ('active', 'suspended'; 'unknown': no such tenant); TTL."""
        return f"{self.p}:{{{tenant_id}}}:tenant"

    def tenant_zone(self, tenant_id: int) -> str:
        """The tenant's time zone (an IANA name: quota periods); TTL, with the status."""
        return f"{self.p}:{{{tenant_id}}}:tz"

    def live(self, tenant_id: int, username: str) -> str:
        """ZSET of the subscriber's live sessions, score = expiry (epoch s)."""
        return f"{self.p}:{{{tenant_id}}}:live:{username}"

    def usage(self, tenant_id: int, username: str) -> str:
        """HASH of usage counters: octets, time_s (lifetime), and per quota period (wificore/
        quota.py) its id and counters: d do dt, w wo wt, m mo mt; 90-day TTL."""
        return f"{self.p}:{{{tenant_id}}}:use:{username}"

    def session(self, tenant_id: int, session_key: str) -> str:
        """HASH of the last counters seen for one session (delta base); TTL."""
        return f"{self.p}:{{{tenant_id}}}:sess:{session_key}"

    def interim(self, tenant_id: int, username: str) -> str:
        """The interim interval of the subscriber's last accepted login (its plan's), kept by
        live.lua from the auth record for the session about to start; TTL."""
        return f"{self.p}:{{{tenant_id}}}:iv:{username}"

    def interim_max(self, tenant_id: int) -> str:
        """The largest plan interim interval live.lua has seen for the tenant (liveness of a
        session whose plan it cannot find); TTL."""
        return f"{self.p}:{{{tenant_id}}}:ivmax"

    def nas_skew(self, tenant_id: int) -> str:
        """HASH nas_id -> the NAS's clock skew (event time - arrival, s), for the NOC; TTL."""
        return f"{self.p}:{{{tenant_id}}}:nasskew"

    def nas_live(self, tenant_id: int, nas_id: int) -> str:
        """ZSET of the NAS's live sessions ("user\\nsession_key"), for Accounting-On/Off."""
        return f"{self.p}:{{{tenant_id}}}:naslive:{nas_id}"

    def nas(self, ip: str) -> str:
        """msgpack NAS entry by source address (dynamic clients); TTL."""
        return f"{self.p}:nas:{ip}"

    @property
    def nas_directory(self) -> str:
        """HASH source address -> msgpack NAS, every NAS of every shard; kept by the relay
        (see rlm_wificore/directory.py). Bounded by the NAS rows."""
        return f"{self.p}:nasdir"

    def relay(self, slot: int) -> str:
        """The invalidation relay's lock, one per relay slot: holder id, PX TTL."""
        return f"{self.p}:relay:{slot}"

    def stream(self, partition: int) -> str:
        """Accounting and auth-log records, one stream per partition."""
        return f"{self.p}:stream:{{{partition}}}"

    @property
    def dead_letter(self) -> str:
        return f"{self.p}:dead"

    @property
    def invalidation_channel(self) -> str:
        return f"{self.p}:inval"

    @property
    def invalidation_log(self) -> str:
        """Stream of the shards' change announcements, as published on the channel, for a
        listener that was away to replay (wificore/announce.py); ``MAXLEN ~ 10000``."""
        return f"{self.p}:inval:log"

    @property
    def coa_jobs(self) -> str:
        """Stream of CoA / Disconnect jobs (wificore/coa_jobs.py) for the CoA sidecar's
        consumer group; bounded (``MAXLEN ~``), finished jobs deleted."""
        return f"{self.p}:coa:jobs"

    def coa_done(self, tenant_id: int, session_key: str) -> str:
        """A Disconnect of this session is in flight or was acknowledged: no second one
        (the CoA sidecar's dedupe); TTL."""
        return f"{self.p}:{{{tenant_id}}}:coadis:{session_key}"

    @property
    def writer_heartbeat(self) -> str:
        return f"{self.p}:writer:heartbeat"
