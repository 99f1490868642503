"""Prometheus exposition of :class:`CoaStats` (the sidecar's only prometheus importer).
Labels are bounded: request kind, outcome, job op, quota reason, error kind."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily

from .stats import CoaStats


def _labelled_counter(name: str, doc: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    fam = CounterMetricFamily(name, doc, labels=[label])
    for key, n in sorted(values.items()):
        fam.add_metric([key], n)
    return fam


def _kind_outcome(name: str, doc: str, values: dict[tuple[str, str], int]) -> CounterMetricFamily:
    fam = CounterMetricFamily(name, doc, labels=["kind", "outcome"])
    # Every pair exists from the start, so that rate() sees the first failure.
    for kind in ("disconnect", "coa"):
        for outcome in ("ack", "nak", "timeout", "error"):
            fam.add_metric([kind, outcome], values.get((kind, outcome), 0))
    return fam


class CoaCollector:
    def __init__(self, stats: CoaStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Any]:
        st = self.stats
        yield _kind_outcome("wificore_coa_requests", "Disconnect- and CoA-Requests by kind and final "
                            "outcome (ack, nak, timeout after the last attempt, error), one per session",
                            dict(st.requests))
        yield _kind_outcome("wificore_coa_attempts", "Attempts (each retransmission counts) by kind and outcome",
                            dict(st.attempts))
        yield _labelled_counter("wificore_coa_deduped", "Disconnects not sent: the session's Disconnect is "
                                "in flight or was acknowledged", "kind", dict(st.deduped))
        yield _labelled_counter("wificore_coa_jobs", "Jobs finished, by op", "op", dict(st.jobs))
        yield _labelled_counter("wificore_coa_quota_disconnects", "Disconnect jobs queued for a quota used "
                                "up mid-session, by reason", "reason", dict(st.quota_disconnects))
        yield _labelled_counter("wificore_coa_errors", "Errors: redis, loop, job, bad_job, record, quota, "
                                "unverified_answer", "kind", dict(st.errors))


def serve(stats: CoaStats, addr: str, port: int) -> Any:
    from prometheus_client import start_http_server
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(CoaCollector(stats))
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server
