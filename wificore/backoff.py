"""The retry vocabulary of the project, in one module: every retry of rlm_wificore and
batch_writer is one of these three, and nothing else sleeps between attempts by hand.

* :class:`Backoff` -- for a loop that retries and may wait (the writer's loops, a shard's
  writer, a deadlock retry, the module's own threads): delay ``first_s``, doubled per
  failure up to ``max_s``, times a jitter in [0.5, 1] (writers that failed together do not
  retry together), with an optional deadline. It never sleeps by itself in a hot loop:
  :meth:`Backoff.ready` says whether the next attempt is due, so one shard that is down
  does not hold up the others; :meth:`Backoff.wait` is for the places where there is
  nothing else to do, and wakes up at once when the stop flag is set.
* :class:`Breaker` -- for a caller that must not wait (a radiusd hook, under rlm_python3's
  mutex): after a failure the backend is skipped (fail fast) for ``retry_s``, then one call
  probes it again; one success closes it. With a ``probe`` the calls are never the probe:
  a thread runs it every ``retry_s`` until it succeeds (a hung backend costs a caller one
  deadline, not one per ``retry_s``).
* :func:`redis_retry` -- the redis-py client's own retry (redis-py's ``Retry``): one
  immediate reconnect on a connection error, so that a pooled connection Redis closed (a
  restart) does not look like an outage; never a wait, never a second attempt.

Words: an *attempt* fails, a *failure* is recorded (``failed()`` / ``fail()``), the
*delay* is what a Backoff waits before the next attempt, a *deadline* bounds how long
failures may go on, a *probe* is the one call an open Breaker lets through.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


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

    def wait(self, stop: threading.Event | None = None) -> None:
        """Sleep until the next attempt is due, or until ``stop`` (if given) is set."""
        if stop is None:
            time.sleep(self.remaining_s())
        else:
            stop.wait(self.remaining_s())


class Breaker:
    """Open after a failure (an error, or a call slower than allowed).

    Without a ``probe`` (the old behaviour) one call is let through again after
    ``retry_s``. With a ``probe`` the breaker stays open until someone calls
    :meth:`ok`: every ``retry_s`` a daemon thread runs ``probe()`` (a success
    closes the breaker), so no caller under the mutex waits on a sick backend.
    ``probe=False`` means another thread calls :meth:`ok` (a shard's lane)."""

    __slots__ = ("name", "retry_s", "open_until", "failures", "_probe", "_probing")

    def __init__(self, name: str, retry_s: float = 1.0,
                 probe: Callable[[], object] | bool | None = None) -> None:
        self.name = name
        self.retry_s = retry_s
        self.open_until = 0.0
        self.failures = 0
        self._probe = probe
        self._probing = False

    def allow(self) -> bool:
        if self.open_until == 0.0:
            return True
        if self._probe is None:
            return time.monotonic() >= self.open_until
        if callable(self._probe) and not self._probing:
            self._probing = True
            threading.Thread(target=self._probe_loop, name=f"wificore-probe-{self.name}",
                             daemon=True).start()
        return False

    def fail(self) -> None:
        self.failures += 1
        self.open_until = time.monotonic() + self.retry_s

    def ok(self) -> None:
        self.open_until = 0.0

    @property
    def is_open(self) -> bool:
        return not self.allow()

    def _probe_loop(self) -> None:
        probe = self._probe
        assert callable(probe)
        try:
            while self.open_until != 0.0:
                time.sleep(max(0.0, min(self.retry_s, self.open_until - time.monotonic())))
                try:
                    probe()
                except Exception:  # still down: the probe tries again after retry_s
                    self.open_until = time.monotonic() + self.retry_s
                else:
                    self.ok()
        finally:
            self._probing = False


#: What a Redis call raises when its server (or a Redis Cluster's node for the key) is
#: away: a connection error, a timeout, or a cluster without a master for the slot yet
#: (CLUSTERDOWN, MASTERDOWN, TRYAGAIN, no node for the slot) while a replica takes over.
REDIS_DOWN: tuple[type[Exception], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterError,
    redis.exceptions.RedisClusterException, redis.exceptions.TryAgainError)


def redis_retry() -> Retry:
    """redis-py's ``retry=``: one immediate retry (no delay) on a connection error, and
    none on a timeout. redis-py's ``Retry`` retries timeouts too unless told otherwise
    (``retry_on_timeout=False`` does not take them out), which made a hung Redis cost
    two deadlines per hook call."""
    return Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
