"""The in-process tier: no I/O, bounded, dropped by invalidation messages.

Keys are ``(tenant_id, username)``. An entry holds the profile (or None for
an unknown user), its plan and the live state (session count and usage)
read together from Redis. Eviction is oldest-inserted first.
"""

from __future__ import annotations

import dataclasses
import random
import time

from wificore.profile import Plan, Profile


@dataclasses.dataclass(slots=True)
class LiveState:
    """What the accounting path keeps in Redis for one subscriber."""

    sessions: int = 0
    octets: int = 0
    time_s: int = 0


@dataclasses.dataclass(slots=True)
class Entry:
    expires: float  # time.monotonic()
    profile: Profile | None
    plan: Plan | None
    state: LiveState | None  # None: unknown (Redis down), policy fails open
    state_expires: float = 0.0  # time.monotonic(); the live state is re-read after it
    # vendor -> (rendered reply, valid until (epoch s), the live state it was rendered for)
    replies: dict[str, tuple] | None = None


def ttl_with_jitter(ttl_s: float, jitter_pct: int) -> float:
    """``ttl_s`` plus up to ``jitter_pct`` percent, so entries do not expire together."""
    return ttl_s * (1 + random.random() * jitter_pct / 100)


class LocalCache:
    """A dict with a size bound and per-entry expiry."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._d: dict[tuple[int, str], Entry] = {}

    def get(self, key: tuple[int, str]) -> Entry | None:
        entry = self._d.get(key)
        if entry is not None and entry.expires < time.monotonic():
            self._d.pop(key, None)
            return None
        return entry

    def peek(self, key: tuple[int, str]) -> Entry | None:
        """The entry, expired or not, without counting a hit or miss."""
        return self._d.get(key)

    def put(self, key: tuple[int, str], entry: Entry) -> None:
        if self.max_entries <= 0:
            return
        d = self._d
        d.pop(key, None)
        while len(d) >= self.max_entries:
            d.pop(next(iter(d)))
        d[key] = entry

    def drop(self, key: tuple[int, str]) -> None:
        self._d.pop(key, None)

    def drop_where(self, predicate) -> int:
        """Drop every entry for which ``predicate(key, entry)`` holds (rare events)."""
        doomed = [k for k, e in list(self._d.items()) if predicate(k, e)]
        for k in doomed:
            self._d.pop(k, None)
        return len(doomed)

    def clear(self) -> None:
        self._d.clear()

    def entries(self) -> list[Entry]:
        """A snapshot of the entries (list() of a dict's values is atomic under the GIL)."""
        return list(self._d.values())

    def __len__(self) -> int:
        return len(self._d)
