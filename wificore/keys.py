"""The Redis key layout: one prefix; state keys tagged by the subscriber's bucket.

Cache keys (profile, plan, tenant status) are ``{prefix}:{<tenant>}:…``: each is read
and written on its own. Every state key of a subscriber (its hash of sessions and usage,
the accept's interval) and the stream its records go to carry the tag
``{b<bucket>}``, ``bucket = crc32("<tenant>:<username>") % stream_partitions``
(:func:`bucket_of`): one script call or multi-key read touches one Redis Cluster slot,
and a big tenant's subscribers spread over every bucket. The NAS epochs and the
tenant-wide values live.lua uses are kept per bucket. Every key that can grow has a TTL
or a bound (see docs/redis-keys.md).
"""

from __future__ import annotations

import zlib

#: The spool frame's tag (rlm_wificore/spool.py) of a record for every bucket (a NAS's
#: Accounting-On/Off: its sessions are in every bucket); others carry bucket + 1, 0 = none.
TAG_ALL = 0x7FF


def bucket_of(tenant_id: int, username: str, partitions: int) -> int:
    """The subscriber's bucket: the tag of its state keys and its stream partition."""
    raw = f"{tenant_id}:{username}".encode("utf-8", "surrogateescape")
    return zlib.crc32(raw) % partitions


class Keys:
    """Builds every key name from the configured prefix and number of buckets
    (``stream_partitions``)."""

    __slots__ = ("p", "partitions")

    def __init__(self, prefix: str, partitions: int = 4) -> None:
        self.p = prefix
        self.partitions = partitions

    def bucket(self, tenant_id: int, username: str) -> int:
        return bucket_of(tenant_id, username, self.partitions)

    def tag(self, bucket: int) -> str:
        """``{prefix}:{b<bucket>}:``, the start of every key of the bucket's slot."""
        return f"{self.p}:{{b{bucket}}}:"

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

    def subscriber(self, tenant_id: int, username: str) -> str:
        """HASH of the subscriber's state (live.lua): field ``u`` its usage, one field per
        session (its session key), msgpack arrays (wificore/livestate.py reads them); TTL."""
        return self.subscriber_state(tenant_id, username)[0]

    def subscriber_state(self, tenant_id: int, username: str) -> tuple[str, str, str, str]:
        """The keys of one subscriber that wificore/livestate.py reads, in its order:
        :meth:`subscriber`, its bucket's :meth:`nas_epoch`, :meth:`prior_live` and
        :meth:`prior_usage` (the one place their names are built: one bucket computed once)."""
        tag = self.tag(self.bucket(tenant_id, username))
        return (f"{tag}s:{tenant_id}:{username}", f"{tag}nasep:{tenant_id}",
                f"{tag}live:{tenant_id}:{username}", f"{tag}use:{tenant_id}:{username}")

    def subscriber_pattern(self, tenant_id: int) -> str:
        """SCAN pattern of every subscriber hash of the tenant, in every bucket."""
        return f"{self.p}:{{b*}}:s:{tenant_id}:*"

    def nas_epoch(self, bucket: int, tenant_id: int) -> str:
        """HASH nas_id -> ``"<epoch> <event time>"`` of the NAS's last Accounting-On/Off in
        the bucket: a session is live only if it saw the current epoch; TTL."""
        return f"{self.tag(bucket)}nasep:{tenant_id}"  # as in subscriber_state

    # The bucket layout before 2026-12-02 (read until live.lua moved each session).
    def prior_live(self, tenant_id: int, username: str) -> str:
        """ZSET of the subscriber's live sessions, score = deadline (before 2026-12-02)."""
        return self.subscriber_state(tenant_id, username)[2]

    def prior_usage(self, tenant_id: int, username: str) -> str:
        """HASH of usage counters (before 2026-12-02): octets, time_s, d do dt, w wo wt, m mo mt."""
        return self.subscriber_state(tenant_id, username)[3]

    def prior_usage_pattern(self, tenant_id: int) -> str:
        """SCAN pattern of every usage hash of the tenant (before 2026-12-02)."""
        return f"{self.p}:{{b*}}:use:{tenant_id}:*"

    def prior_session(self, tenant_id: int, username: str, session_key: str) -> str:
        """HASH of one session's state (before 2026-12-02)."""
        return f"{self.tag(self.bucket(tenant_id, username))}sess:{session_key}"

    def prior_nas_live(self, bucket: int, tenant_id: int, nas_id: int) -> str:
        """ZSET of the NAS's sessions of the bucket (before 2026-12-02)."""
        return f"{self.tag(bucket)}naslive:{tenant_id}:{nas_id}"

    def interim(self, tenant_id: int, username: str) -> str:
        """The interim interval of the subscriber's last accepted login (its plan's), kept by
        live.lua from the auth record for the session about to start; TTL."""
        return f"{self.tag(self.bucket(tenant_id, username))}iv:{tenant_id}:{username}"

    def interim_max(self, bucket: int, tenant_id: int) -> str:
        """The largest plan interim interval live.lua has seen for the tenant in the bucket
        (liveness of a session whose plan it cannot find); TTL."""
        return f"{self.tag(bucket)}ivmax:{tenant_id}"

    def nas_skew(self, bucket: int, tenant_id: int) -> str:
        """HASH nas_id -> the NAS's clock skew (event time - arrival, s), for the NOC; TTL.
        A NAS's field is in its home bucket's hash: ``nas_skew(nas_id % partitions, T)``."""
        return f"{self.tag(bucket)}nasskew:{tenant_id}"

    def nas(self, ip: str) -> str:
        """msgpack NAS entry by source address (dynamic clients); TTL."""
        return f"{self.p}:nas:{ip}"

    @property
    def nas_directory(self) -> str:
        """HASH source address -> msgpack NAS, every NAS of every shard; kept by the relay
        (see rlm_wificore/directory.py). Bounded by the NAS rows."""
        return f"{self.p}:{{nasdir}}"

    def relay(self, slot: int) -> str:
        """The invalidation relay's lock, one per relay slot: holder id, PX TTL."""
        return f"{self.p}:relay:{slot}"

    def forwarded(self, forwarder: str) -> str:
        """STRING: a spool forwarder's mark, set by live.lua with the records of each call
        (one Redis; rlm_wificore/background.py). Expires a session TTL after the last call."""
        return f"{self.p}:fwd:{forwarder}"

    def stream(self, bucket: int) -> str:
        """Accounting and auth-log records of the bucket's subscribers."""
        return f"{self.tag(bucket)}stream"

    def dead_letter_of(self, bucket: int) -> str:
        """Records of the bucket that cannot be stored (live.lua, batch_writer)."""
        return f"{self.tag(bucket)}dead"

    @property
    def dead_letters(self) -> list[str]:
        """Every dead-letter stream: the buckets', then the one from before 2026-12-01."""
        return [self.dead_letter_of(b) for b in range(self.partitions)] + [self.dead_letter]

    def legacy(self, tenant_id: int, kind: str, name: str) -> str:
        """A state key of the layout before 2026-12-01 (``sess``, ``live``, ``use``): live.lua
        moves it to its bucket's name at the session's first record (one Redis), and from
        there into the subscriber's hash."""
        return f"{self.p}:{{{tenant_id}}}:{kind}:{name}"

    def legacy_stream(self, partition: int) -> str:
        """The stream of partition ``tenant % stream_partitions`` before 2026-12-01: read
        and drained by batch_writer, written by radiusd processes not yet upgraded."""
        return f"{self.p}:stream:{{{partition}}}"

    @property
    def dead_letter(self) -> str:
        """The dead-letter stream before 2026-12-01 (read by the tools, not written)."""
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
