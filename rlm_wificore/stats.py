"""The counters the rooms bump on the hot path; metrics.py exports them."""

from __future__ import annotations

import collections
import dataclasses


@dataclasses.dataclass(slots=True)
class Stats:
    """Counters kept by the engine's rooms; metrics.py exports them."""

    requests: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    tiers: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    errors: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    credential_cache_hits: int = 0
