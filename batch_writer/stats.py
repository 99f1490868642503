"""Counters as plain data. The writer bumps them; metrics.py exports them.

Labels stay bounded: record kinds, dead-letter reason classes, shard names
(from the shard map), close reasons, stream partitions. Never a tenant or a user.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, deque
from typing import Any

from wificore.histogram import Histogram

ROWS_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000)
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
AGE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0,
               300.0, 3600.0)
#: |NAS event time - radiusd arrival time| of accounting records, seconds: a NAS with no
#: NTP, or one set to local time (a UTC offset), shows up in the top buckets. Which NAS:
#: sessions.updated_at - received_at in PostgreSQL, or {prefix}:{tenant}:nasskew in Redis.
SKEW_BUCKETS = (1.0, 5.0, 30.0, 120.0, 600.0, 3600.0, 4 * 3600.0, 14 * 3600.0, 86400.0)

# Reason classes of dead letters (the metric label; the full reason is in the entry).
DEAD_DECODE = "decode"              # not a record at all
DEAD_INVALID = "invalid"            # a field is missing, malformed or absurd
DEAD_UNKNOWN_TENANT = "unknown_tenant"
DEAD_ATTEMPTS = "attempts"          # delivered max_attempts times, never acknowledged
DEAD_REJECTED_BY_DB = "db_rejected"  # the shard refused this one record (data or integrity error)


@dataclasses.dataclass
class WriterStats:
    """Everything the writer counts."""

    records: Counter[str] = dataclasses.field(default_factory=Counter)        # by kind
    dead_letters: Counter[str] = dataclasses.field(default_factory=Counter)   # by reason class
    shard_errors: Counter[str] = dataclasses.field(default_factory=Counter)   # by shard name
    #: Records left pending because their tenant was fenced by a move, by shard name.
    fenced: Counter[str] = dataclasses.field(default_factory=Counter)
    sessions_merged: Counter[str] = dataclasses.field(default_factory=Counter)  # rows, by shard
    sessions_closed: Counter[str] = dataclasses.field(default_factory=Counter)  # by close reason
    redis_errors: int = 0
    loop_errors: int = 0
    batches: int = 0
    acked: int = 0
    claimed: int = 0
    # Counter rules: records flagged 'refused' (implausible counter) or 'backwards'.
    counter_flags: Counter[str] = dataclasses.field(default_factory=Counter)
    nas_clock_skew: Histogram = dataclasses.field(default_factory=lambda: Histogram(SKEW_BUCKETS))
    batch_rows: Histogram = dataclasses.field(default_factory=lambda: Histogram(ROWS_BUCKETS))
    batch_seconds: Histogram = dataclasses.field(default_factory=lambda: Histogram(SECONDS_BUCKETS))
    # The last batches' latencies (decode to acknowledgement), for percentiles in benchmarks.
    recent_batch_seconds: deque[float] = dataclasses.field(default_factory=lambda: deque(maxlen=10_000))
    # From radiusd receiving a record to its commit in the shard (clocks of both hosts assumed
    # in sync), and the last ages for exact percentiles in benchmarks.
    record_age_seconds: Histogram = dataclasses.field(default_factory=lambda: Histogram(AGE_BUCKETS))
    recent_record_ages: deque[float] = dataclasses.field(default_factory=lambda: deque(maxlen=200_000))
    # Gauges, refreshed by the writer's housekeeping (not at scrape time: a scrape
    # must not wait on Redis).
    stream_lag: dict[int, int] = dataclasses.field(default_factory=dict)
    stream_pending: dict[int, int] = dataclasses.field(default_factory=dict)
    dead_letter_length: int = 0
    dead_letter_over_bound: bool = False  # length >= dead_maxlen (an alarm; nothing is trimmed)
    auth_log_errors: Counter[str] = dataclasses.field(default_factory=Counter)  # by shard
    shards_down: dict[str, bool] = dataclasses.field(default_factory=dict)

    def note_counter_flags(self, flags: int) -> None:
        """Count a record's counter flags (batch_writer/records.py FLAG_*)."""
        if flags & 1:
            self.counter_flags["refused"] += 1
        if flags & 2:
            self.counter_flags["backwards"] += 1

    def summary(self) -> dict[str, Any]:
        """A small JSON-able view (heartbeat value, logs)."""
        return {"batches": self.batches, "acked": self.acked, "records": dict(self.records),
                "dead_letters": dict(self.dead_letters), "shard_errors": dict(self.shard_errors),
                "shards_down": sorted(k for k, v in self.shards_down.items() if v)}
