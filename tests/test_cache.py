"""The in-process tier on its own: thread safety, O(1) bound and invalidation, epochs."""

from __future__ import annotations

import sys
import threading
import time

from rlm_wificore.cache import Entry, LiveState, LocalCache
from wificore.profile import Plan, Profile

PLAN = Plan(1, 2000, 10000, 3600, 600, 60, None, None, 1, None)
PLAN2 = Plan(2, 1000, 1000, 3600, 600, 60, None, None, 1, None)


def entry(plan=PLAN, ttl=60.0):
    profile = Profile(7, "pppoe", "cleartext", "pw", "active", None, None, None, plan.plan_id)
    now = time.monotonic()
    return Entry(now + ttl, profile, plan, LiveState(), now + ttl)


def test_hooks_and_the_invalidation_thread_at_once():
    """Puts, gets and drops (a hook) beside tenant, plan and subscriber drops and clears (the
    invalidation thread), with a very short switch interval: no KeyError, no 'dictionary
    changed size during iteration', and the bound holds."""
    cache = LocalCache(500)
    errors: list[BaseException] = []
    stop = threading.Event()

    def hook():
        i = 0
        try:
            while not stop.is_set():
                i += 1
                key = (i % 7, f"u{i % 2000}")
                cache.put(key, entry(PLAN if i % 3 else PLAN2))
                cache.get(key)
                cache.peek((i % 7, f"u{(i * 13) % 2000}"))
                if i % 11 == 0:
                    cache.drop(key)
        except BaseException as exc:  # noqa: BLE001 - what the test looks for
            errors.append(exc)

    def invalidation():
        i = 0
        try:
            while not stop.is_set():
                i += 1
                cache.drop_tenant(i % 7)
                cache.drop_plan(i % 7, 1 + i % 2)
                cache.drop((i % 7, f"u{i % 2000}"))
                if i % 50 == 0:
                    cache.clear()
                len(cache)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=hook) for _ in range(2)] + [
            threading.Thread(target=invalidation)]
        for t in threads:
            t.start()
        time.sleep(3)
        stop.set()
        for t in threads:
            t.join(30)
    finally:
        sys.setswitchinterval(old)
    assert not errors, repr(errors[:3])
    assert len(cache) <= 500


def test_bound_evicts_oldest_insertion_first():
    cache = LocalCache(3)
    for name in "abcd":
        cache.put((1, name), entry())
    assert cache.peek((1, "a")) is None
    assert [cache.peek((1, n)) is not None for n in "bcd"] == [True, True, True]
    cache.put((1, "b"), entry())  # filled again: now the newest
    cache.put((1, "e"), entry())
    assert cache.peek((1, "c")) is None and cache.peek((1, "b")) is not None
    assert len(cache) == 3


def test_tenant_and_plan_drops_touch_only_what_they_name():
    cache = LocalCache(100)
    cache.put((1, "on-plan-1"), entry(PLAN))
    cache.put((1, "on-plan-2"), entry(PLAN2))
    cache.put((2, "other-tenant"), entry(PLAN))
    cache.drop_plan(1, 1)
    assert cache.get((1, "on-plan-1")) is None and cache.peek((1, "on-plan-1")) is None
    assert cache.get((1, "on-plan-2")) is not None and cache.get((2, "other-tenant")) is not None
    cache.put((1, "on-plan-1"), entry(PLAN))  # filled again after the change: a new epoch
    assert cache.get((1, "on-plan-1")) is not None
    cache.drop_tenant(1)
    assert cache.get((1, "on-plan-1")) is None and cache.get((1, "on-plan-2")) is None
    assert cache.get((2, "other-tenant")) is not None


def test_expired_entries_are_misses():
    cache = LocalCache(10)
    cache.put((1, "a"), entry(ttl=-1))
    assert cache.peek((1, "a")) is not None  # peek: expired or not
    assert cache.get((1, "a")) is None and cache.peek((1, "a")) is None


def test_equal_replies_are_shared():
    cache = LocalCache(10)
    a = (("Session-Timeout", str(3600)), ("Mikrotik-Rate-Limit", f"{2000}k/{10000}k"))
    b = (("Session-Timeout", str(3600)), ("Mikrotik-Rate-Limit", f"{2000}k/{10000}k"))
    assert a is not b and cache.share_reply(a) is a and cache.share_reply(b) is a
