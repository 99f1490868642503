"""The in-process tier: no I/O, bounded, dropped by invalidation messages.

Keys are ``(tenant_id, username)``. An entry holds the profile (or None for
an unknown user), its plan and the live state (session count and usage)
read together from Redis, and the reply last rendered for it.

Thread-safe and O(1) everywhere (see docs/decisions.md, "The in-process cache"):

* the hooks and the invalidation thread both mutate it: every mutation holds
  one lock, and nothing iterates over the entries (no ``dictionary changed
  size during iteration``); a get is one dict lookup and three comparisons,
  without the lock;
* eviction is oldest-inserted first, through an ``OrderedDict``'s linked
  list (``popitem(last=False)``), not ``next(iter(dict))``, which walks the
  holes that deletions leave at the front of a dict;
* a tenant or plan change drops no entry one by one: each tenant has its own
  dict (:meth:`LocalCache.drop_tenant` lets it go), each entry points at the
  :class:`Epoch` of its plan (:meth:`LocalCache.drop_plan` ends it, a get
  finds the entry dead). Dead entries leave the FIFO by eviction, so the size
  bound holds;
* about 450 B per cached profile (benchmarks/cache_memory.py measures it):
  no key tuple per entry, one shared live state for idle subscribers, one
  shared reply per plan and vendor.
"""

from __future__ import annotations

import collections
import dataclasses
import random
import threading
import time

from wificore.profile import Plan, Profile


@dataclasses.dataclass(slots=True)
class LiveState:
    """What the accounting path keeps in Redis for one subscriber (never mutated).

    ``octets`` and ``time_s`` are the usage that counts against the plan's quotas: over
    the plan's quota period current when read (wificore/quota.py), or the lifetime
    totals for a plan without one. ``resets_at``: when that period ends (epoch s; None:
    lifetime); from then on the usage counts as 0 (:meth:`used`) until re-read."""

    sessions: int = 0
    octets: int = 0
    time_s: int = 0
    resets_at: float | None = None
    #: The NASes of the live sessions: an Accounting-On/Off of one of them ends this state.
    nas: tuple[int, ...] = ()
    #: When its read began (time.monotonic(); states with sessions only): an Accounting-On/Off
    #: of one of ``nas`` announced after it ends the state (profiles.Profiles.drop_nas).
    read_at: float = 0.0

    def used(self, now: float) -> tuple[int, int]:
        """(octets, seconds) counting against the quotas at ``now``."""
        if self.resets_at is not None and now >= self.resets_at:
            return 0, 0
        return self.octets, self.time_s


#: The live state of a subscriber with no session and no usage (shared: most are).
NO_STATE = LiveState()


class Epoch:
    """Validity of every cached entry of one plan of a tenant: ended by an invalidation."""

    __slots__ = ("alive",)

    def __init__(self) -> None:
        self.alive = True


#: The plan epoch of entries without a plan (unknown users): never ended.
FOREVER = Epoch()


class Tenant:
    """One tenant's entries, by username. Dropping a tenant replaces this object."""

    __slots__ = ("d", "tenant_id")

    def __init__(self, tenant_id: int) -> None:
        self.tenant_id = tenant_id
        self.d: dict[str, Entry] = {}


@dataclasses.dataclass(slots=True)
class Entry:
    expires: float  # time.monotonic()
    profile: Profile | None
    plan: Plan | None
    state: LiveState | None  # None: unknown (Redis down), policy fails open
    state_expires: float = 0.0  # time.monotonic(); the live state is re-read after it
    # The reply last rendered, and what it is good for: the vendor (a reply that
    # depends on the profile and plan alone), or (vendor, valid until (epoch s),
    # the live state it was rendered for).
    reply: tuple[tuple[str, ...], ...] = ()
    reply_for: str | tuple | None = None
    plan_epoch: Epoch = FOREVER  # set by LocalCache.put
    username: str = ""
    tenant: Tenant | None = None


def ttl_with_jitter(ttl_s: float, jitter_pct: int) -> float:
    """``ttl_s`` plus up to ``jitter_pct`` percent, so entries do not expire together."""
    return ttl_s * (1 + random.random() * jitter_pct / 100)


#: Distinct rendered replies shared between entries (most subscribers of a plan get
#: the same reply): beyond this many, a reply is kept unshared.
MAX_SHARED_REPLIES = 20_000


class LocalCache:
    """Per-tenant dicts of entries, a FIFO of insertions for the size bound, plan epochs.

    Keys are ``(tenant_id, username)`` tuples in the interface; inside, each tenant
    has its own dict by username (no key tuple is kept per entry: memory)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._tenants: dict[int, Tenant] = {}
        self._fifo: collections.deque[Entry] = collections.deque()
        self._plans: dict[tuple[int, int], Epoch] = {}
        self._replies: dict[tuple[tuple[str, ...], ...], tuple[tuple[str, ...], ...]] = {}

    def get(self, key: tuple[int, str]) -> Entry | None:
        tenant = self._tenants.get(key[0])
        if tenant is None:
            return None
        entry = tenant.d.get(key[1])
        if entry is not None and (entry.expires < time.monotonic() or not entry.plan_epoch.alive):
            with self._lock:
                if tenant.d.get(key[1]) is entry:
                    del tenant.d[key[1]]
            return None
        return entry

    def peek(self, key: tuple[int, str]) -> Entry | None:
        """The entry, expired or not (but not invalidated), without counting a hit or miss."""
        tenant = self._tenants.get(key[0])
        entry = tenant.d.get(key[1]) if tenant is not None else None
        if entry is not None and not entry.plan_epoch.alive:
            return None
        return entry

    def put(self, key: tuple[int, str], entry: Entry) -> None:
        if self.max_entries <= 0:
            return
        tenant_id, username = key
        with self._lock:
            tenant = self._tenants.get(tenant_id)
            if tenant is None:
                tenant = self._tenants[tenant_id] = Tenant(tenant_id)
            if entry.plan is not None:
                pkey = (tenant_id, entry.plan.plan_id)
                epoch = self._plans.get(pkey)
                if epoch is None:
                    epoch = self._plans[pkey] = Epoch()
                entry.plan_epoch = epoch
            entry.username, entry.tenant = username, tenant
            fifo = self._fifo
            while len(fifo) >= self.max_entries:  # O(1) each: oldest insertion first
                old = fifo.popleft()
                owner = old.tenant
                if owner is not None and owner.d.get(old.username) is old:
                    del owner.d[old.username]
            tenant.d[username] = entry
            fifo.append(entry)

    def share_reply(self, reply: tuple[tuple[str, ...], ...]) -> tuple[tuple[str, ...], ...]:
        """An equal reply already held by another entry, else ``reply`` (kept for sharing)."""
        shared = self._replies.get(reply)
        if shared is not None:
            return shared
        if len(self._replies) < MAX_SHARED_REPLIES:
            self._replies[reply] = reply
        return reply

    def drop(self, key: tuple[int, str]) -> None:
        with self._lock:
            tenant = self._tenants.get(key[0])
            if tenant is not None:
                tenant.d.pop(key[1], None)

    def drop_tenant(self, tenant_id: int) -> None:
        """Forget every entry of the tenant: O(1) (its dict is let go)."""
        with self._lock:
            self._tenants.pop(tenant_id, None)

    def drop_plan(self, tenant_id: int, plan_id: int) -> None:
        """Every entry on the tenant's plan is dead from now on: O(1)."""
        with self._lock:
            epoch = self._plans.pop((tenant_id, plan_id), None)
            if epoch is not None:
                epoch.alive = False

    def clear(self) -> None:
        with self._lock:
            self._tenants = {}
            self._fifo = collections.deque()
            for epoch in self._plans.values():
                epoch.alive = False
            self._plans = {}
            self._replies = {}

    def entries(self) -> list[Entry]:
        """A snapshot of the entries (list() of a dict's values is atomic under the GIL)."""
        return [e for t in list(self._tenants.values()) for e in list(t.d.values())]

    def __len__(self) -> int:
        """Entries held (those of an ended plan epoch until evicted or filled again)."""
        return sum(len(t.d) for t in list(self._tenants.values()))
