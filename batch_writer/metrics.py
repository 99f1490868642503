"""Prometheus exposition of :class:`WriterStats` (the writer's only prometheus importer).

The collector reads plain counters at scrape time; it never calls Redis or a
shard (the gauges are refreshed by the writer's housekeeping), so a scrape
cannot stall or be stalled by the loop. Labels are bounded: kind, reason
class, shard name, close reason, partition.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from wificore.histogram import Histogram

from .stats import WriterStats


def _labelled_counter(name: str, doc: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    fam = CounterMetricFamily(name, doc, labels=[label])
    for key, n in sorted(values.items()):
        fam.add_metric([key], n)
    return fam


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(name, doc)
    fam.add_metric([], h.cumulative(), sum_value=h.sum)
    return fam


class WriterCollector:
    """Maps one :class:`WriterStats` to metric families."""

    def __init__(self, stats: WriterStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Any]:
        """The metric families, read from the counters at scrape time."""
        st = self.stats
        yield _labelled_counter("wificore_writer_records", "Records written, by kind "
                                "(start, interim, stop, on, off, auth)", "kind", dict(st.records))
        yield _labelled_counter("wificore_writer_dead_letters", "Entries sent to the dead-letter stream, "
                                "by reason class", "reason", dict(st.dead_letters))
        yield _labelled_counter("wificore_writer_shard_errors",
                                "Failed writes (batch left pending), by shard",
                                "shard", dict(st.shard_errors))
        yield _labelled_counter("wificore_writer_fenced_records",
                                "Records left pending because a tenant move fenced their tenant, by shard",
                                "shard", dict(st.fenced))
        yield _labelled_counter("wificore_writer_sessions_merged", "Session rows merged (after collapse), "
                                "by shard", "shard", dict(st.sessions_merged))
        yield _labelled_counter("wificore_writer_sessions_closed", "Sessions closed by the writer, by reason",
                                "reason", dict(st.sessions_closed))
        yield CounterMetricFamily("wificore_writer_redis_errors", "Failed Redis calls", value=st.redis_errors)
        yield CounterMetricFamily("wificore_writer_loop_errors", "Unexpected errors caught by the loop",
                                  value=st.loop_errors)
        yield CounterMetricFamily("wificore_writer_batches", "Batches processed", value=st.batches)
        yield CounterMetricFamily("wificore_writer_acked", "Stream entries acknowledged", value=st.acked)
        yield CounterMetricFamily("wificore_writer_claimed", "Entries taken over from dead writers",
                                  value=st.claimed)
        yield _labelled_counter("wificore_writer_counter_flags", "Accounting records whose counters the "
                                "counter rules changed: refused (implausible) or backwards", "flag",
                                dict(st.counter_flags))
        yield _histogram("wificore_writer_nas_clock_skew_seconds", "|NAS event time - arrival time| of "
                         "accounting records", st.nas_clock_skew)
        yield _histogram("wificore_writer_batch_rows", "Entries per batch", st.batch_rows)
        yield _histogram("wificore_writer_batch_seconds", "Time to write and acknowledge one batch",
                         st.batch_seconds)
        yield _histogram("wificore_writer_record_age_seconds", "From radiusd receiving a record to "
                         "its commit in the shard (the NAS-to-row latency)", st.record_age_seconds)
        lag = GaugeMetricFamily("wificore_writer_stream_lag", "Entries not yet delivered to the group",
                                labels=["partition"])
        for p, n in sorted(st.stream_lag.items()):
            lag.add_metric([str(p)], n)
        yield lag
        pending = GaugeMetricFamily("wificore_writer_stream_pending", "Entries delivered, not yet "
                                    "acknowledged (all writers)", labels=["partition"])
        for p, n in sorted(st.stream_pending.items()):
            pending.add_metric([str(p)], n)
        yield pending
        yield GaugeMetricFamily("wificore_writer_dead_letter_length", "Entries in the dead-letter stream",
                                value=st.dead_letter_length)
        yield GaugeMetricFamily("wificore_writer_dead_letter_over_bound", "1 while the dead-letter stream "
                                "is at or past WIFICORE_WRITER_DEAD_MAXLEN (never trimmed)",
                                value=int(st.dead_letter_over_bound))
        yield _labelled_counter("wificore_writer_auth_log_errors", "Auth-log writes that failed and wait "
                                "to be retried (accounting is committed without them), by shard", "shard",
                                dict(st.auth_log_errors))
        up = GaugeMetricFamily("wificore_writer_shard_up", "1 when the last write to the shard worked",
                               labels=["shard"])
        for shard, down in sorted(st.shards_down.items()):
            up.add_metric([shard], 0 if down else 1)
        yield up


def serve(stats: WriterStats, addr: str, port: int) -> Any:
    """Start the exporter thread on ``addr:port`` with its own registry; returns the server."""
    from prometheus_client import start_http_server
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(WriterCollector(stats))
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server
