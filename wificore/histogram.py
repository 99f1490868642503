"""The one histogram of the project: fixed buckets, plain counters, no locks, no I/O.

The radiusd module (per hook latency, :mod:`rlm_wificore.metrics`) and batch_writer
(batch sizes, batch times, record ages, :mod:`batch_writer.stats`) observe into it on
their hot paths; their collectors turn it into a Prometheus histogram at scrape time
(``cumulative()`` gives the bucket pairs ``HistogramMetricFamily.add_metric`` takes).
"""

from __future__ import annotations

import bisect


class Histogram:
    """Fixed buckets; observe() is a bisect and three adds."""

    __slots__ = ("buckets", "counts", "sum", "count")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        if list(buckets) != sorted(set(buckets)):
            raise ValueError(f"histogram buckets must increase: {buckets}")
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, cumulative count) pairs, Prometheus style, ending with +Inf."""
        out, running = [], 0
        for bound, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out
