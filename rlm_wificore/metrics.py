"""Prometheus exposition of the engine's counters (the only prometheus importer).

The hot path only bumps plain counters in :class:`stats.Stats` and
:class:`Latency`; a collector turns them into metrics at scrape time. Labels
are bounded: hook, result (reason codes), tier, error kind. Never a username,
never a tenant.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from wificore.histogram import Histogram

if TYPE_CHECKING:
    from .engine import Engine

BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Latency:
    """One :class:`wificore.histogram.Histogram` per hook; observe() is a dict get and an observe."""

    def __init__(self) -> None:
        self.hooks: dict[str, Histogram] = {}

    def observe(self, hook: str, seconds: float) -> None:
        h = self.hooks.get(hook)
        if h is None:
            h = self.hooks[hook] = Histogram(BUCKETS_S)
        h.observe(seconds)


class EngineCollector:
    def __init__(self, engine: Engine, latency: Latency) -> None:
        self.engine = engine
        self.latency = latency

    def collect(self) -> Iterator[Any]:
        st = self.engine.stats
        req = CounterMetricFamily("wificore_requests", "Hook calls by hook and result",
                                  labels=["hook", "result"])
        for key, n in list(st.requests.items()):
            hook, _, result = key.partition(":")
            req.add_metric([hook, result], n)
        yield req
        tiers = CounterMetricFamily("wificore_cache_hits", "Profile lookups answered by tier",
                                    labels=["tier"])
        for tier, n in list(st.tiers.items()):
            tiers.add_metric([tier], n)
        yield tiers
        yield CounterMetricFamily("wificore_db_fallbacks", "Lookups that went to a shard",
                                  value=st.tiers["database"])
        yield CounterMetricFamily("wificore_credential_cache_hits",
                                  "bcrypt checks answered by the verified-credential cache",
                                  value=st.credential_cache_hits)
        err = CounterMetricFamily("wificore_errors", "Errors by kind", labels=["kind"])
        for kind, n in list(st.errors.items()):
            err.add_metric([kind], n)
        yield err
        yield GaugeMetricFamily("wificore_local_cache_entries", "Profiles held in process",
                                value=len(self.engine.local))
        directory = self.engine.directory
        yield CounterMetricFamily("wificore_unknown_clients",
                                  "Dynamic-client lookups of addresses that are no NAS",
                                  value=directory.unknown_seen)
        known = directory.known
        yield GaugeMetricFamily("wificore_known_nas_addresses",
                                "NAS addresses in this process's copy of the directory (-1: not loaded)",
                                value=len(known) if known is not None else -1)
        spool = getattr(self.engine, "spool", None)
        if spool is not None:
            yield GaugeMetricFamily("wificore_spool_pending_bytes",
                                    "Spooled records not yet forwarded to Redis", value=spool.pending())
            yield GaugeMetricFamily("wificore_spool_full",
                                    "1 while the spool's disk has no room (accounting unanswered)",
                                    value=int(spool.full))
        lanes = CounterMetricFamily(
            "wificore_shard_lane", "Shard lookups by lane event (waited: hook calls that "
            "could block the process; not_waited: answered at once while the shard is sick)",
            labels=["shard", "event"])
        shards = getattr(self.engine, "shards", None)
        for name, lane in (list(shards.lanes.items()) if shards is not None else []):
            for event, n in list(lane.counts.items()):
                lanes.add_metric([name, event], n)
        yield lanes
        replica = CounterMetricFamily(
            "wificore_shard_replica_lookups", "Shard lookups answered by the shard's replica "
            "(replica_dsn) while its primary did not answer", labels=["shard"])
        down = GaugeMetricFamily("wificore_shard_primary_down",
                                 "1 while a shard's lookups go to its replica", labels=["shard"])
        if shards is not None:
            for name, n in list(shards.replica_lookups.items()):
                replica.add_metric([name], n)
            for shard in list(shards.map):
                if shard.replica_dsn:
                    down.add_metric([shard.name], int(shard.name in shards.primary_down))
        yield replica
        yield down
        hist = HistogramMetricFamily("wificore_hook_seconds", "Hook latency", labels=["hook"])
        for hook, h in list(self.latency.hooks.items()):
            hist.add_metric([hook], h.cumulative(), sum_value=h.sum)
        yield hist


def serve(engine: Engine, latency: Latency, addr: str, port: int) -> Any:
    """Start the exporter thread on ``addr:port``; returns the server."""
    from prometheus_client import start_http_server
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine, latency))
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server
