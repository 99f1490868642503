"""The consumer of change announcements: drops the cached copies a change makes stale.

Two sources announce changes (background.py runs their loops):

* a shard's NOTIFY (a committed change of a subscriber, plan, NAS or tenant):
  :meth:`Invalidation.apply_db_notification` deletes the Redis copy, announces
  the change on the invalidation channel and drops the in-process copies;
* the Redis channel (other processes' announcements, live.lua's):
  :meth:`Invalidation.apply_channel_message`.

Messages are JSON lists: ``["s", tenant, user]`` (a subscriber; ``"l"`` is the
same from live.lua of the previous release), ``["L", [[tenant, user], ...]]``,
``["p", tenant, plan]``, ``["t", tenant]``, ``["n", tenant, ip]`` (a NAS).
Every message bumps the :class:`Generation`, so that a lookup that was reading
meanwhile does not keep what it read.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import redis

from wificore.keys import Keys
from wificore.log import get_logger

log = get_logger("rlm_wificore")


class Copies(Protocol):
    """The in-process copies an invalidation drops (:class:`rlm_wificore.profiles.Profiles`;
    named here, as profiles.py reads the :class:`Generation` of this module)."""

    def drop(self, tenant_id: int, username: str) -> None: ...
    def drop_plan(self, tenant_id: int, plan_id: int) -> None: ...
    def drop_tenant(self, tenant_id: int) -> None: ...
    def clear(self, *, plans: bool) -> None: ...
    def revalidate(self) -> None: ...


class Generation:
    """A counter bumped by every invalidation; lookups compare it before and after I/O."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def bump(self) -> None:
        self.value += 1


class Invalidation:
    """Applies change announcements to the in-process tier (and, for a shard's, to Redis)."""

    def __init__(self, generation: Generation, profiles: Copies, keys: Keys,
                 redis_bg: redis.Redis, cache_bg: redis.Redis | None = None) -> None:
        self.generation = generation
        self.profiles = profiles
        self.keys = keys
        self.redis_bg = redis_bg  # the state Redis: the invalidation channel
        self.cache_bg = redis_bg if cache_bg is None else cache_bg  # the cached copies

    def apply(self, message: list[Any]) -> None:
        """Drop cached copies named by an invalidation message (from PostgreSQL or Redis)."""
        self.generation.bump()
        kind = message[0]
        # The subscriber, or its live state, changed ('l': one subscriber, as live.lua of the
        # previous release announces it, while a rolling upgrade runs both).
        if kind in ("s", "l"):
            self.profiles.drop(int(message[1]), str(message[2]))
        elif kind == "L":  # live states changed by one call of live.lua: [[tenant, user], ...]
            for tenant_id, username in message[1]:
                self.profiles.drop(int(tenant_id), str(username))
        elif kind == "p":
            self.profiles.drop_plan(int(message[1]), int(message[2]))
        elif kind == "t":
            self.profiles.drop_tenant(int(message[1]))
        # 'n' (NAS): radiusd's dynamic client expires after its lifetime.

    def apply_channel_message(self, data: bytes | str) -> None:
        """One message from the invalidation channel; ValueError/IndexError/TypeError if bad."""
        if isinstance(data, bytes):  # one bad name must not lose the others
            data = data.decode("utf-8", "replace")
        self.apply(json.loads(data))

    def apply_db_notification(self, payload: str) -> None:
        """One NOTIFY from a shard: drop the Redis copy, announce, drop locally."""
        msg = json.loads(payload)
        self.apply(msg)
        keys = self.keys
        kind = msg[0]
        doomed = []
        if kind == "s":
            doomed.append(keys.profile(int(msg[1]), str(msg[2])))
        elif kind == "p":
            doomed.append(keys.plan(int(msg[1]), int(msg[2])))
        elif kind == "n":
            doomed.append(keys.nas(str(msg[2])))
        try:
            pipe = self.redis_bg.pipeline(transaction=False)
            if doomed and self.cache_bg is not self.redis_bg:  # the copies live in the cache Redis
                self.cache_bg.delete(*doomed)
            elif doomed:
                pipe.delete(*doomed)
            pipe.publish(keys.invalidation_channel, payload)  # the channel: the state Redis
            pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("invalidation_not_announced", error=str(exc))

    def reset_all(self) -> None:
        """Forget every in-process subscriber and plan (announcements may have been missed)."""
        self.generation.bump()
        self.profiles.clear(plans=True)

    def revalidate(self) -> None:
        """The channel is back after an outage: keep the in-process profiles, re-read
        every live state from Redis (the state thread does, at the entry's next use).

        What the channel carried meanwhile: live-state changes (``L``), re-read here,
        and the shards' changes, which this process also gets from its own LISTEN
        on every shard. So the profiles need not be dropped, and a Redis outage is
        not a stampede on the shards."""
        self.generation.bump()
        self.profiles.revalidate()

    def reset_subscribers(self) -> None:
        """Forget every in-process subscriber (the channel was lost; plans expire by TTL)."""
        self.generation.bump()
        self.profiles.clear(plans=False)
