"""Live state of cached subscribers: session count and usage, read from Redis.

A cached entry carries the live state read with it; after ``live_state_ttl_s``
it is due for a re-read. While the module's state thread runs (see
background.py), the hook answers from what it has and queues the entry for
that thread, which re-reads many in one script call per bucket outside the
mutex (wificore/livestate.py); until
then the hook re-reads the one entry itself, through the breaker.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis

from wificore import livestate, quota
from wificore.backoff import REDIS_DOWN
from wificore.errors import StoreUnavailable
from wificore.keys import Keys
from wificore.profile import Plan
from wificore.settings import Settings

from .cache import NO_STATE, Entry, LiveState, ttl_with_jitter
from .stats import Stats
from .store import RedisStore

if TYPE_CHECKING:
    from .invalidation import Generation

#: A live state queued for a re-read is queued again if not re-read by then.
STATE_RETRY_S = 1.0
MAX_STALE_QUEUE = 100_000

Due = tuple[int, str, Entry]  # (tenant, username, cached entry)

#: The live states of several subscribers of one bucket (their keys share the bucket's
#: tag: one slot, wificore/keys.py) are read in one call of wificore.livestate's script: a
#: redis-py pipeline of commands per subscriber cost ~13 us of Python per subscriber in
#: the state thread, holding the GIL the hook needs, against ~1.5 us for one call.
#: The usage fields a live state reads: the lifetime totals, then each quota period's id
#: and counters (wificore/quota.py FIELDS), in PERIOD_ORDER.
PERIOD_ORDER = ("daily", "weekly", "monthly")
USAGE_FIELDS = ("octets", "time_s", *(f"{quota.FIELDS[p]}{x}" for p in PERIOD_ORDER for x in ("", "o", "t")))
assert USAGE_FIELDS == livestate.USAGE_FIELDS
#: The idle live states of periods ending at one instant, shared (see NO_STATE).
_IDLE: dict[float, LiveState] = {}
#: A tenant whose zone is not known yet (its status not read in this process): UTC.
_UTC = quota.ZoneClock("UTC")


def queue_reads(pipe: Any, keys: Keys, tenant_id: int, username: str, now: float) -> None:
    """The read of one subscriber's live state, queued on ``pipe``; its reply makes the
    state (:meth:`LiveStates.from_reply`)."""
    livestate.READER.queue(pipe, keys, tenant_id, username, now)


def read_states(r: redis.Redis, keys: Keys,
                subscribers: list[tuple[int, str, Plan | None, quota.ZoneClock | None]]) -> list[LiveState]:
    """The live states of (tenant, username, plan, tenant's zone), one call per bucket,
    outside the hooks (the CoA sidecar's mid-session quota check); the same reads and the
    same reading of them as the hooks': the usage of the plan's quota period current now."""
    now = time.time()
    snaps = livestate.READER.read(r, keys, [(t, u) for t, u, _p, _c in subscribers], now=now)
    return [LiveStates.state(s.sessions, s.values, plan, clock, now, s.nas)
            for s, (_t, _u, plan, clock) in zip(snaps, subscribers, strict=True)]


class LiveStates:
    """Reads and refreshes of live states; the queue of those due for the state thread."""

    def __init__(self, settings: Settings, keys: Keys, redis_store: RedisStore,
                 redis_bg: redis.Redis, stats: Stats, generation: Generation) -> None:
        self.settings = settings
        self.keys = keys
        self.redis = redis_store
        self.redis_bg = redis_bg
        self.stats = stats
        self.generation = generation
        # Cached entries whose live state is due for a re-read, for the state thread;
        # until that thread runs, the hook re-reads it itself.
        self.stale_states: collections.deque[Due] = collections.deque()
        self.stale_wake = threading.Event()
        self.refresher = False
        #: tenant -> its zone (quota periods); Profiles fills it with the tenant's status.
        self.zones: dict[int, quota.ZoneClock] = {}

    # ------------------------------------------------ the state thread's side
    def refresher_started(self) -> None:
        """The state thread runs: hooks queue due states instead of reading them."""
        self.refresher = True

    def refresher_stopped(self) -> None:
        """No state thread (any more): hooks re-read due states themselves."""
        self.refresher = False

    def wait_due(self, timeout_s: float) -> None:
        """Wait until a hook queued a due state, or ``timeout_s``."""
        self.stale_wake.wait(timeout_s)
        self.stale_wake.clear()

    def next_batch(self, max_entries: int) -> list[Due]:
        """Up to ``max_entries`` queued due states, oldest first (empty: none queued)."""
        queue = self.stale_states
        return [queue.popleft() for _ in range(min(max_entries, len(queue)))]

    # ------------------------------------------------------ the hooks' side
    def due(self, tenant_id: int, username: str, entry: Entry) -> None:
        """The cached ``entry``'s live state is due: queue it, or re-read it now."""
        if self.refresher:
            # Answer from the state we have; a module thread re-reads it (no
            # Redis round trip under the mutex). Asked again if not done soon.
            entry.state_expires = time.monotonic() + STATE_RETRY_S
            if len(self.stale_states) < MAX_STALE_QUEUE:  # bounded if Redis hangs
                self.stale_states.append((tenant_id, username, entry))
                if not self.stale_wake.is_set():  # one wake-up per batch, not per hook
                    self.stale_wake.set()
        else:
            self.refresh([(tenant_id, username, entry)], in_hook=True)

    def read_into(self, pipe: Any, tenant_id: int, username: str, now: float) -> None:
        """Queue the read of a live state on ``pipe`` (see :meth:`from_reply`)."""
        queue_reads(pipe, self.keys, tenant_id, username, now)

    @classmethod
    def from_reply(cls, reply: Any, plan: Plan | None, clock: quota.ZoneClock | None, now: float,
                   read_at: float | None = None) -> LiveState:
        """The live state from the reply of the read :meth:`read_into` queued (the script's:
        one subscriber's part in a list), begun at ``read_at`` (monotonic)."""
        snap = livestate.parse(reply[0])
        return cls.state(snap.sessions, snap.values, plan, clock, now, snap.nas, read_at)

    @staticmethod
    def state(live: Any, usage: Sequence[Any], plan: Plan | None, clock: quota.ZoneClock | None,
              now: float, nas: tuple[int, ...] = (), read_at: float | None = None) -> LiveState:
        """The live state from a read (count, USAGE_FIELDS values, the NASes of the live
        sessions): the usage of the plan's quota period current at ``now`` in the tenant's zone (``clock``;
        None: not known yet, UTC), or the lifetime totals. A period id other than the
        current one means nothing was counted in the current period yet."""
        sessions = int(live)
        period = plan.quota_period if plan is not None else "none"
        resets_at = None
        if period in quota.FIELDS:
            current = (clock or _UTC).current(period, now)
            assert current is not None
            i = 2 + 3 * PERIOD_ORDER.index(period)
            stored = usage[i]
            if stored is not None and int(stored) == current[0]:
                octets, time_s = int(usage[i + 1] or 0), int(usage[i + 2] or 0)
            else:
                octets = time_s = 0
            resets_at = current[2]
        else:
            octets, time_s = int(usage[0] or 0), int(usage[1] or 0)
        if not (sessions or octets or time_s):
            # Shared: the in-process tier holds one per idle subscriber otherwise.
            if resets_at is None:
                return NO_STATE
            idle = _IDLE.get(resets_at)
            if idle is None:
                if len(_IDLE) > 1000:
                    _IDLE.clear()
                idle = _IDLE[resets_at] = LiveState(0, 0, 0, resets_at)
            return idle
        if not sessions:
            return LiveState(sessions, octets, time_s, resets_at)
        return LiveState(sessions, octets, time_s, resets_at, nas,
                         time.monotonic() if read_at is None else read_at)

    def refresh(self, batch: list[Due], *, in_hook: bool = False) -> None:
        """Re-read the live state of cached entries in one round trip: the state thread's
        batches, or one entry in the hook while that thread is not running (through the
        breaker). Unknown (fail open) if Redis is down, asked again after STATE_RETRY_S;
        read while an invalidation came in, used once and asked again at the next use."""
        generation = self.generation.value
        started = time.monotonic()

        def read(r: redis.Redis) -> list[livestate.Snapshot]:
            return livestate.READER.read(r, self.keys, [(t, u) for t, u, _e in batch])
        try:
            replies = self.redis.call(read) if in_hook else read(self.redis_bg)
        except (StoreUnavailable, *REDIS_DOWN):  # type: ignore[misc]
            self.stats.errors["redis_state"] += 1
            retry = time.monotonic() + STATE_RETRY_S
            for _t, _u, entry in batch:
                entry.state, entry.state_expires = None, retry
            return
        # Each its own expiry (ttl plus jitter): entries read together would all be
        # due together again, and every hook meeting one wakes this thread.
        now = time.monotonic()
        ttl, jitter = self.settings.live_state_ttl_s, self.settings.ttl_jitter_pct
        current = generation == self.generation.value
        wall = time.time()
        for snap, (tenant_id, _u, entry) in zip(replies, batch, strict=True):
            entry.state = self.state(snap.sessions, snap.values, entry.plan, self.zones.get(tenant_id), wall,
                                     snap.nas, started)
            entry.state_expires = now + ttl_with_jitter(ttl, jitter) if current else 0.0
        self.stats.tiers["redis_state"] += len(batch)
