"""Subscriber profiles and plans, in three tiers: in-process, Redis, the tenant's shard.

The in-process tier (:class:`~rlm_wificore.cache.LocalCache`) answers the warm
path with no I/O. On a miss, one Redis round trip reads the profile with its
live state (two when the cache Redis, ``redis_store`` here, is not the state
Redis of :class:`~rlm_wificore.live.LiveStates`; see wificore/roles.py); on a
Redis miss, one query to the shard reads profile and plan, and both tiers are
filled on the way back (TTL plus jitter). Unknown users are cached negatively
for ``negative_ttl_s``. Plans have their own small cache, and so has each
tenant's status (a suspended tenant's logins are rejected before its
subscribers are looked up): in process, then Redis, then the shard, dropped by
the tenant's invalidation (``["t", tenant]``) like its subscribers.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, cast

import redis
from redis.exceptions import NoScriptError

from wificore import livestate, quota
from wificore.errors import DecodeError, StoreUnavailable
from wificore.keys import Keys
from wificore.log import get_logger
from wificore.profile import PLAN_SQL, PROFILE_SQL, TENANT_SQL, TENANT_UNKNOWN, UNKNOWN, Plan, Profile, from_row
from wificore.quota import ZoneClock
from wificore.settings import Settings

from .cache import Entry, LiveState, LocalCache, ttl_with_jitter
from .live import LiveStates
from .stats import Stats
from .store import RedisStore, Shards

#: Profiles.nas_ends: at most this many NASes remembered; past it, those heard of more than
#: NAS_END_KEEP_S ago are forgotten (every cached state is read again well within that).
MAX_NAS_ENDS = 100_000
NAS_END_KEEP_S = 3600.0

if TYPE_CHECKING:
    from .invalidation import Generation

log = get_logger("rlm_wificore")


class Profiles:
    """Profile, plan and live state of a subscriber, from the nearest tier that has them."""

    def __init__(self, settings: Settings, keys: Keys, redis_store: RedisStore, shards: Shards,
                 stats: Stats, generation: Generation, live: LiveStates) -> None:
        self.settings = settings
        self.keys = keys
        self.redis = redis_store
        self.shards = shards
        self.stats = stats
        self.live = live
        # Bumped by every invalidation. A lookup that saw it change while it was
        # reading Redis or a shard may hold what was just invalidated: it answers
        # with it but does not keep it (the message came before the put).
        self.generation = generation
        self.local = LocalCache(settings.local_cache_max)
        #: (tenant, nas_id) -> when this process heard of the NAS's last Accounting-On/Off
        #: (monotonic): a cached state with a live session on it read before is ended.
        self.nas_ends: dict[tuple[int, int], float] = {}
        self.plans: dict[tuple[int, int], tuple[float, Plan]] = {}
        #: tenant -> (until, status): 'active', 'suspended', or TENANT_UNKNOWN.
        self.tenants: dict[int, tuple[float, str]] = {}
        #: tenant -> its time zone (quota periods), kept across status re-reads: a clock
        #: caches the zone's offset until its next transition.
        self.zones: dict[int, ZoneClock] = live.zones  # one dict: the state thread reads it

    def tenant_status(self, tenant_id: int) -> str:
        """The tenant's status: in-process, else Redis, else the shard (filling both).
        With neither Redis nor the shard answering, the last status known, else
        'active' for a second (the subscriber's own lookup decides then). The tenant's
        time zone comes with it (:meth:`zone`)."""
        cached = self.tenants.get(tenant_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        generation = self.generation.value
        key, zkey = self.keys.tenant(tenant_id), self.keys.tenant_zone(tenant_id)
        status: str | None = None
        zone: str | None = None
        try:
            raw, zraw = self.redis.call(lambda r: r.mget(key, zkey))
            if isinstance(raw, bytes) and isinstance(zraw, bytes):  # both, or the shard
                status, zone = raw.decode("ascii", "replace"), zraw.decode("ascii", "replace")
        except StoreUnavailable:
            pass
        ttl = self.settings.profile_ttl_s
        if status is None:
            try:
                row = self.shards.fetchone(tenant_id, TENANT_SQL, (tenant_id,))
            except StoreUnavailable:
                status = cached[1] if cached is not None else "active"
                self.tenants[tenant_id] = (time.monotonic() + 1.0, status)
                return status
            if row is None:
                # Not on the shard this map names: deleted, or moved by a move this process
                # has not followed yet. Not cached in Redis (every process would take its
                # UTC for the tenant's zone), and for a second here.
                self.tenants[tenant_id] = (time.monotonic() + 1.0, TENANT_UNKNOWN)
                return TENANT_UNKNOWN
            status, zone = str(row[0]), str(row[1])
            redis_ttl = int(ttl_with_jitter(ttl, self.settings.ttl_jitter_pct))

            def fill(r: redis.Redis) -> None:
                pipe = r.pipeline(transaction=False)
                pipe.set(key, status, ex=redis_ttl)
                pipe.set(zkey, zone, ex=redis_ttl)
                pipe.execute()
            try:
                self.redis.call(fill)
            except StoreUnavailable:
                pass
        if generation == self.generation.value:
            self.tenants[tenant_id] = (time.monotonic() + ttl_with_jitter(ttl, self.settings.ttl_jitter_pct),
                                       status)
            clock = self.zones.get(tenant_id)
            if zone is not None and (clock is None or clock.name != zone):
                self.zones[tenant_id] = quota.clock(zone)
        return status

    def zone(self, tenant_id: int) -> ZoneClock | None:
        """The tenant's time zone as last read with its status (None: not read yet)."""
        return self.zones.get(tenant_id)

    def zone_now(self, tenant_id: int) -> ZoneClock | None:
        """The tenant's time zone, read with its status if not known yet (the accounting
        hook, once per tenant and process: Redis, else the shard, both with deadlines)."""
        clock = self.zones.get(tenant_id)
        if clock is None:
            try:
                self.tenant_status(tenant_id)
            except Exception:  # the record is spooled all the same, without its local day
                return None
            clock = self.zones.get(tenant_id)
        return clock

    def entry(self, tenant_id: int, username: str) -> Entry:
        """Profile, plan and live state: in-process, else Redis, else the shard."""
        key = (tenant_id, username)
        entry = self.local.get(key)
        if entry is not None:
            held = entry.state
            if held is not None and held.nas and self.nas_ends and self._ended(tenant_id, held):
                # A NAS of its live sessions announced an Accounting-On/Off since it was
                # read: read again now (a miss), not answered from it once more.
                self.local.drop(key)
                entry = None
        if entry is not None:
            if entry.profile is not None and entry.state_expires < time.monotonic():
                self.live.due(tenant_id, username, entry)
            self.stats.tiers["process"] += 1
            return entry
        s = self.settings
        generation = self.generation.value
        started = time.monotonic()
        pkey = self.keys.profile(tenant_id, username)
        profile: Profile | None = None
        state: LiveState | None = None
        known = False
        reply = None
        try:
            raw, reply = self._read_redis(tenant_id, username)
            if raw == UNKNOWN:
                known = True
            elif raw is not None:
                profile = Profile.unpack(raw)
                known = True
        except StoreUnavailable:
            pass
        except DecodeError as exc:
            log.warning("bad_cached_profile", tenant=tenant_id, error=str(exc))
        if known:
            self.stats.tiers["redis"] += 1
            plan = self.plan(tenant_id, profile.plan_id) if profile else None
            ttl = s.profile_ttl_s if profile else s.negative_ttl_s
        else:
            self.stats.tiers["database"] += 1
            row = self.shards.fetchone(tenant_id, PROFILE_SQL, (tenant_id, username))
            if row is None:  # the tenant is not on the shard this map names (see PROFILE_SQL)
                raise StoreUnavailable(f"tenant {tenant_id} is not on the shard its map names "
                                       "(a move this process has not followed yet)")
            plan = None
            if row[0] is not None:
                profile, plan = from_row(row)
                self.plans[(tenant_id, plan.plan_id)] = (time.monotonic() + s.profile_ttl_s, plan)
            ttl = s.profile_ttl_s if profile else s.negative_ttl_s
            value = profile.pack() if profile else UNKNOWN
            redis_ttl = int(ttl_with_jitter(ttl, s.ttl_jitter_pct))
            def fill(r: redis.Redis) -> None:
                pipe = r.pipeline(transaction=False)
                pipe.set(pkey, value, ex=redis_ttl)
                if plan is not None:
                    pipe.set(self.keys.plan(tenant_id, plan.plan_id), plan.pack(), ex=redis_ttl)
                pipe.execute()
            try:
                self.redis.call(fill)
            except StoreUnavailable:
                pass
        if reply is not None:  # read with the profile; the period is the plan's
            state = self.live.from_reply(reply, plan, self.zones.get(tenant_id), time.time(), started)
        # Without Redis the live state is unknown (policy fails open): the entry is
        # kept for its whole lifetime (a Redis outage must not send the next login
        # to the shard again), its live state is due again at once, re-read by the
        # state thread when Redis is back.
        now = time.monotonic()
        entry = Entry(now + ttl_with_jitter(ttl, s.ttl_jitter_pct), profile, plan, state,
                      now + ttl_with_jitter(s.live_state_ttl_s, s.ttl_jitter_pct)
                      if state is not None else now + 1.0)
        if generation == self.generation.value:
            self.local.put(key, entry)
        return entry

    def _read_redis(self, tenant_id: int, username: str) -> Any:
        """Profile, live count and usage: one round trip, two if the cache Redis is another."""
        pkey = self.keys.profile(tenant_id, username)

        def run(r: redis.Redis, profile: bool) -> Any:
            for attempt in range(2):
                pipe = r.pipeline(transaction=False)
                if profile:
                    pipe.get(pkey)
                self.live.read_into(pipe, tenant_id, username, time.time())
                try:
                    return pipe.execute()
                except NoScriptError:  # a Redis that has not seen the script (restarted)
                    if attempt:
                        raise
                    livestate.READER.load(r)
            raise AssertionError("unreachable")
        if self.live.redis is self.redis:  # one Redis serves both roles
            return self.redis.call(lambda r: run(r, True))
        raw = self.redis.call(lambda r: r.get(pkey))
        try:
            return [raw, *self.live.redis.call(lambda r: run(r, False))]
        except StoreUnavailable:
            # The state Redis is out, the cache Redis answered: keep the profile (the
            # shard is not asked for it), the live state unknown (policy fails open).
            return [raw, None]

    def plan(self, tenant_id: int, plan_id: int) -> Plan | None:
        """A plan: from the plan cache, else Redis, else the shard (filling both)."""
        cached = self.plans.get((tenant_id, plan_id))
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        plan = None
        try:
            raw = self.redis.call(lambda r: r.get(self.keys.plan(tenant_id, plan_id)))
            plan = Plan.unpack(cast(bytes, raw)) if raw else None
        except (StoreUnavailable, DecodeError):
            pass
        if plan is None:
            row = self.shards.fetchone(tenant_id, PLAN_SQL, (tenant_id, plan_id))
            if row is None:
                return None
            plan = Plan(*row)
            try:
                self.redis.call(lambda r: r.set(self.keys.plan(tenant_id, plan_id), plan.pack(),
                                                ex=self.settings.profile_ttl_s))
            except StoreUnavailable:
                pass
        self.plans[(tenant_id, plan_id)] = (time.monotonic() + self.settings.profile_ttl_s, plan)
        return plan

    # ------------------------------------------- dropped by invalidation.py
    def drop(self, tenant_id: int, username: str) -> None:
        """Forget the in-process copy of one subscriber."""
        self.local.drop((tenant_id, username))

    def drop_nas(self, tenant_id: int, nas_id: int) -> None:
        """The NAS's Accounting-On/Off ended its sessions: the cached live states with a
        session on it that were read before now are ended (O(1) here; each is read again at
        its next use, see :meth:`entry`), the tenant's others are kept."""
        ends = self.nas_ends
        if len(ends) >= MAX_NAS_ENDS:
            # Bounded: a state older than that has long been read again (live_state_ttl_s).
            horizon = time.monotonic() - NAS_END_KEEP_S
            for k in [k for k, at in ends.items() if at < horizon]:
                del ends[k]
        ends[(tenant_id, nas_id)] = time.monotonic()

    def _ended(self, tenant_id: int, state: LiveState) -> bool:
        """Whether a NAS of the state's live sessions announced an Accounting-On/Off after
        the state was read."""
        ends = self.nas_ends
        for nas_id in state.nas:
            at = ends.get((tenant_id, nas_id))
            if at is not None and at >= state.read_at:
                return True
        return False

    def drop_plan(self, tenant_id: int, plan_id: int) -> None:
        """Forget a plan and every in-process subscriber on it (O(1): its epoch ends)."""
        self.plans.pop((tenant_id, plan_id), None)
        self.local.drop_plan(tenant_id, plan_id)

    def drop_tenant(self, tenant_id: int) -> None:
        """Forget every in-process subscriber of a tenant (O(1): its epoch ends), and its status."""
        self.tenants.pop(tenant_id, None)
        self.zones.pop(tenant_id, None)
        self.local.drop_tenant(tenant_id)

    def revalidate(self) -> None:
        """Keep every in-process subscriber, but make its live state due for a re-read."""
        for entry in self.local.entries():
            entry.state_expires = 0.0

    def clear(self, *, plans: bool) -> None:
        """Forget every in-process subscriber and tenant status, and every plan if ``plans``."""
        self.local.clear()
        self.tenants.clear()
        if plans:
            self.plans.clear()
