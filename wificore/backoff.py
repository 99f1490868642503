"""The one retry object of rlm_wificore and batch_writer: capped, jittered, with an optional deadline.

It never sleeps by itself in the hot loop: :meth:`Backoff.ready` says whether the
next attempt is due, so one shard that is down does not hold up the others.
:meth:`Backoff.wait` is for the places where there is nothing else to do (Redis
down), and it wakes up at once when the stop flag is set.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable


class Backoff:
    """Delay ``first_s``, doubled per failure up to ``max_s``, times a jitter in [0.5, 1]."""

    __slots__ = ("first_s", "max_s", "deadline_s", "failures", "_next_at", "_started_at", "_clock", "_rand")

    def __init__(self, *, first_s: float = 0.1, max_s: float = 10.0, deadline_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 rand: Callable[[], float] = random.random) -> None:
        if not 0 < first_s <= max_s:
            raise ValueError(f"backoff: need 0 < first_s <= max_s, got {first_s} and {max_s}")
        self.first_s = first_s
        self.max_s = max_s
        self.deadline_s = deadline_s
        self.failures = 0
        self._clock = clock
        self._rand = rand
        self._next_at = 0.0
        self._started_at: float | None = None

    def ready(self) -> bool:
        """True when no failure is waiting out its delay."""
        return self._clock() >= self._next_at

    def failed(self) -> float:
        """Record a failure; the delay (seconds) before the next attempt."""
        now = self._clock()
        if self._started_at is None:
            self._started_at = now
        delay = min(self.max_s, self.first_s * (2 ** min(self.failures, 30)))
        delay *= 0.5 + self._rand() / 2  # jitter: writers that failed together do not retry together
        self.failures += 1
        self._next_at = now + delay
        return delay

    def succeeded(self) -> None:
        """Back to the first delay."""
        self.failures = 0
        self._next_at = 0.0
        self._started_at = None

    def expired(self) -> bool:
        """True once failures have gone on for longer than the deadline (if any)."""
        return (self.deadline_s is not None and self._started_at is not None
                and self._clock() - self._started_at >= self.deadline_s)

    def remaining_s(self) -> float:
        """Seconds until the next attempt is due (0 when it is)."""
        return max(0.0, self._next_at - self._clock())

    def wait(self, stop: threading.Event) -> None:
        """Sleep until the next attempt is due, or until ``stop`` is set."""
        stop.wait(self.remaining_s())
