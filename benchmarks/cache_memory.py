"""local_cache.bytes_per_profile: what one cached subscriber costs in a radiusd process.

Builds ``n`` (200,000 by default) in-process entries as the warm path does: the profile
decoded from its Redis form (msgpack), the plan shared, the live state read from Redis
(an idle subscriber: no session, no usage yet), the key's username as a string of its
own, the reply rendered for a MikroTik NAS and kept on the entry (engine.authorize).
The figure is the growth of the Python heap (tracemalloc) divided by ``n``.
"""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

from rlm_wificore import policy
from rlm_wificore.cache import NO_STATE, Entry, LocalCache
from wificore.profile import Plan, Profile

PLANS = [Plan(p, 2000 * p, 10000 * p, 3600, 600, 300, None, None, 1, None) for p in range(1, 6)]


def measure(n: int = 200_000) -> dict[str, Any]:
    packed = [Profile(100_000 + i, "pppoe" if i % 2 else "hotspot", "cleartext",
                      f"pw-{i:010d}", "active", None, None, None, 1 + i % len(PLANS)).pack()
              for i in range(n)]
    names = [f"sub{i:07d}@isp-{i % 20}".encode() for i in range(n)]  # as bytes until "received"
    plans = {p.plan_id: p for p in PLANS}
    tracemalloc.start()
    try:
        cache = LocalCache(n + 1)
        before = tracemalloc.get_traced_memory()[0]
        now = time.monotonic()
        for i in range(n):
            profile = Profile.unpack(packed[i])
            plan = plans[profile.plan_id]
            entry = Entry(now + 600.0 + i * 1e-6, profile, plan, NO_STATE, now + 30.0 + i * 1e-6)
            cache.put((1 + i % 20, names[i].decode()), entry)
            reply = policy.render_reply(profile, plan, entry.state, "mikrotik", now=time.time())
            entry.reply, entry.reply_for = cache.share_reply(reply), "mikrotik"
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return {"bytes_per_profile": round((after - before) / n, 1), "profiles": n,
            "method": "tracemalloc growth of the Python heap per cached entry"}


if __name__ == "__main__":
    print(measure())
