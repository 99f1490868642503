"""The consumer of change announcements: drops the cached copies a change makes stale.

Two sources announce changes (background.py runs their loops):

* a shard's NOTIFY (a committed change of a subscriber, plan, NAS or tenant),
  heard by the **relay** only: :meth:`Invalidation.apply_db_notification`
  deletes the Redis copy (and, for a NAS or tenant, updates the NAS directory),
  announces the change once on the invalidation channel and drops the
  in-process copies. The relay is elected among the radiusd processes:
  :class:`RelayLock` has :data:`RELAY_SLOTS` slots, each a Redis key with a
  TTL that its holder renews; a process holds at most one. So each shard has
  at most RELAY_SLOTS listening connections and each change RELAY_SLOTS
  announcements, however many processes run (O(shards), not O(processes x
  shards)); with two holders, one dying loses nothing (the other still
  relays), and its slot is taken again within :data:`RELAY_TTL_S`.
* the Redis channel (the relay's announcements, live.lua's), which every
  process subscribes to: :meth:`Invalidation.apply_channel_message`.

Messages are JSON lists: ``["s", tenant, user]`` (a subscriber; ``"l"`` is the
same from live.lua of the previous release), ``["L", [[tenant, user], ...]]``,
``["N", [[tenant, nas_id], ...]]`` (an Accounting-On/Off: that NAS's users' live states),
``["p", tenant, plan]``, ``["t", tenant]``, ``["n", tenant, ip]`` (a NAS: the
directory changed at ``ip``), ``["D"]`` (the directory was rebuilt) and
``["R"]`` (a relay took over with no other relay alive: announcements may
have been missed, drop everything). Every message bumps the
:class:`Generation`, so that a lookup that was reading meanwhile does not keep
what it read.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import uuid
from typing import TYPE_CHECKING, Any, Protocol

import redis

from wificore import announce as announcements
from wificore.backoff import REDIS_DOWN
from wificore.errors import UnknownTenant
from wificore.keys import Keys
from wificore.log import get_logger

if TYPE_CHECKING:
    from wificore.shardmap import Shard

    from .directory import Directory, Query

log = get_logger("rlm_wificore")

#: Relays at once (each LISTENs on every shard); a process holds at most one slot.
RELAY_SLOTS = 2
#: A relay slot's lock lives this long unless renewed (every RELAY_RENEW_S).
RELAY_TTL_S = 3.0
RELAY_RENEW_S = 1.0
#: The holder of slot 0 rebuilds the NAS directory this often (a NOTIFY lost while
#: no relay listened is repaired by then at the latest).
DIRECTORY_REBUILD_S = 600.0
#: Changes kept while Redis is away; beyond it one ``R`` is announced instead.
UNSENT_MAX = 10_000

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RelayLock:
    """One of RELAY_SLOTS relay slots, held through a Redis key with a TTL."""

    def __init__(self, r: redis.Redis, keys: Keys, slots: int = RELAY_SLOTS,
                 ttl_s: float = RELAY_TTL_S) -> None:
        self.r = r
        self.keys = keys
        self.slots = slots
        self.ttl_ms = int(ttl_s * 1000)
        self.ident = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.slot: int | None = None
        self._renew = r.register_script(_RENEW)
        self._release = r.register_script(_RELEASE)

    def acquire(self) -> int | None:
        """Take a free slot (the slot, or None: every slot is held)."""
        for slot in range(self.slots):
            if self.r.set(self.keys.relay(slot), self.ident, nx=True, px=self.ttl_ms):
                self.slot = slot
                return slot
        return None

    def others_alive(self) -> bool:
        """Another slot is held (its relay has been announcing all along)."""
        return any(self.r.exists(self.keys.relay(s)) for s in range(self.slots) if s != self.slot)

    def renew(self) -> bool:
        """Still ours (renewed)? False: lost (expired, or taken by another)."""
        if self.slot is None:
            return False
        return bool(self._renew(keys=[self.keys.relay(self.slot)], args=[self.ident, self.ttl_ms]))

    def release(self) -> None:
        if self.slot is not None:
            try:
                self._release(keys=[self.keys.relay(self.slot)], args=[self.ident])
            except REDIS_DOWN:
                pass  # it expires by itself
            self.slot = None


class Copies(Protocol):
    """The in-process copies an invalidation drops (:class:`rlm_wificore.profiles.Profiles`;
    named here, as profiles.py reads the :class:`Generation` of this module)."""

    def drop(self, tenant_id: int, username: str) -> None: ...
    def drop_nas(self, tenant_id: int, nas_id: int) -> None: ...
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
                 redis_bg: redis.Redis, cache_bg: redis.Redis | None = None, *,
                 directory: Directory | None = None) -> None:
        self.generation = generation
        self.profiles = profiles
        self.keys = keys
        self.redis_bg = redis_bg  # the state Redis: the invalidation channel, the NAS directory
        self.cache_bg = redis_bg if cache_bg is None else cache_bg  # the cached copies
        self.directory = directory
        # Changes of the shards not yet announced (Redis away): (doomed keys, messages).
        self._unsent: list[tuple[list[str], list[str]]] = []
        self._unsent_lock = threading.Lock()  # module threads only (listeners, relay)

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
        elif kind == "N":  # NASes whose Accounting-On/Off ended their sessions: [[tenant, nas_id], ...]
            for tenant_id, nas_id in message[1]:
                self.profiles.drop_nas(int(tenant_id), int(nas_id))
        elif kind == "p":
            self.profiles.drop_plan(int(message[1]), int(message[2]))
        elif kind == "t":
            self.profiles.drop_tenant(int(message[1]))
        elif kind == "R":
            self.profiles.clear(plans=True)
        # 'n' (NAS), 'D' (directory): the known addresses follow (apply_channel_message);
        # radiusd's dynamic client itself expires after its lifetime.

    def apply_channel_message(self, data: bytes | str) -> None:
        """One message from the invalidation channel; ValueError/IndexError/TypeError if bad."""
        if isinstance(data, bytes):  # one bad name must not lose the others
            data = data.decode("utf-8", "replace")
        message = json.loads(data)
        self.apply(message)
        kind = message[0]
        if self.directory is not None and kind in ("n", "D"):
            try:
                if kind == "n":
                    self.directory.address_changed(self.redis_bg, str(message[2]))
                else:
                    self.directory.load_known(self.redis_bg)
            except REDIS_DOWN as exc:
                log.warning("nas_directory_not_followed", error=str(exc))
                self.directory.known = None  # back to reading the directory itself

    def apply_db_notification(self, payload: str, *, shard: Shard | None = None,
                              query: Query | None = None) -> None:
        """One NOTIFY from a shard (the relay): update the NAS directory for a NAS or tenant
        change (``query`` reads the shards), drop the Redis copy, announce, drop locally."""
        msg = json.loads(payload)
        self.apply(msg)
        keys = self.keys
        kind = msg[0]
        announce = [payload]
        if self.directory is not None and query is not None:
            try:
                if kind == "n":
                    self.directory.refresh_address(query, self.redis_bg, str(msg[2]))
                elif kind == "t" and shard is not None:
                    for ip in self.directory.refresh_tenant(query, self.redis_bg, shard, int(msg[1])):
                        announce.append(json.dumps(["n", int(msg[1]), ip]))
            except REDIS_DOWN as exc:
                log.warning("nas_directory_not_updated", error=str(exc))
        doomed = []
        if kind == "s":
            doomed.append(keys.profile(int(msg[1]), str(msg[2])))
        elif kind == "p":
            doomed.append(keys.plan(int(msg[1]), int(msg[2])))
        elif kind == "n":
            doomed.append(keys.nas(str(msg[2])))
        elif kind == "t":
            doomed += (keys.tenant(int(msg[1])), keys.tenant_zone(int(msg[1])))
        with self._unsent_lock:
            self._unsent.append((doomed, announce))
        self.flush_unsent()

    def flush_unsent(self) -> bool:
        """Delete the Redis copies and announce the changes not sent yet (a Redis outage);
        True once nothing is left. The relay's loop calls it every second, so a change
        committed while Redis was away is announced when it is back (its Redis copy
        deleted), not only by an ``R`` that a relay announces if it takes over alone and
        that would refill the in-process tier from the stale Redis copies."""
        with self._unsent_lock:
            if not self._unsent:
                return True
            batch, self._unsent = self._unsent, []
        doomed = [key for d, _ in batch for key in d]
        announce = [m for _, a in batch for m in a]
        if len(batch) > UNSENT_MAX:  # too many to name: every process drops everything
            announce = [json.dumps(["R"])]
        try:
            announcements.announce(self.redis_bg, self.keys, announce, doomed=doomed,
                                   cache=self.cache_bg)
        except REDIS_DOWN as exc:
            with self._unsent_lock:
                if len(self._unsent) == 0:
                    log.warning("invalidation_not_announced", error=str(exc), waiting=len(batch))
                self._unsent[:0] = batch[-UNSENT_MAX - 1:]  # beyond the bound only R is sent
            return False
        # Dropped here again: a login since the NOTIFY (Redis back, the copy not yet
        # deleted) refilled this process from the stale Redis copy.
        for message in announce:
            self.apply(json.loads(message))
        return True

    def follow_moves(self, query: Query) -> None:
        """The relay, once a second: the NAS of tenants the shard map moved since are read
        again from their new shard (their fields written, ``n`` announced for each: every
        process's known addresses and issued clients follow); a change of the ranges reads
        the whole directory again. On a shard error they are kept for the next call."""
        if self.directory is None:
            return
        moved = self.directory.take_moved()
        if not moved:
            return
        try:
            if None in moved:
                self.directory.rebuild(query, self.redis_bg)
                announcements.announce(self.redis_bg, self.keys, [json.dumps(["D"])])
                return
            announce = []
            for tenant_id in sorted(t for t in moved if t is not None):
                try:
                    shard = self.directory.shard_map.shard_for(tenant_id)
                except UnknownTenant:
                    continue
                for ip in self.directory.refresh_tenant(query, self.redis_bg, shard, tenant_id):
                    announce.append(json.dumps(["n", tenant_id, ip]))
        except BaseException:
            self.directory.put_back_moved(moved)
            raise
        if announce:
            with self._unsent_lock:
                self._unsent.append(([], announce))
            self.flush_unsent()

    def take_over(self, query: Query, *, alone: bool) -> None:
        """A relay slot was just taken (the relay LISTENs already): rebuild the NAS directory;
        if no other relay was alive, changes may have gone unannounced: every process drops
        its in-process copies (``["R"]``). Redis copies changed meanwhile live out their TTL."""
        if self.directory is not None:
            moved = self.directory.take_moved()  # the rebuild reads them on the map in use
            try:
                self.directory.rebuild(query, self.redis_bg)
            except BaseException:
                self.directory.put_back_moved(moved)
                raise
        messages = [json.dumps(["D"])] + ([json.dumps(["R"])] if alone else [])
        announcements.announce(self.redis_bg, self.keys, messages)

    def reset_all(self) -> None:
        """Forget every in-process subscriber and plan (announcements may have been missed)."""
        self.generation.bump()
        self.profiles.clear(plans=True)

    def revalidate(self) -> None:
        """The channel is back after an outage: keep the in-process profiles, re-read
        every live state from Redis (the state thread does, at the entry's next use).

        What the channel carried meanwhile: live-state changes (``L``), re-read here,
        and the shards' changes, which the relays could not announce while Redis was
        away: they keep them and announce them when it is back (:meth:`flush_unsent`);
        a relay that then takes its slot alone also announces ``R`` (take_over), and
        the in-process tier refills from Redis. So a Redis outage is not a stampede
        on the shards."""
        self.generation.bump()
        self.profiles.revalidate()

    def reset_subscribers(self) -> None:
        """Forget every in-process subscriber (the channel was lost; plans expire by TTL)."""
        self.generation.bump()
        self.profiles.clear(plans=False)
