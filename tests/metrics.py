"""Reading the processes' /metrics in tests, with prometheus_client's own parser."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def scrape(port: int | str) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` (e.g. ``x_total``, ``x_count``) whose labels
    include ``labels``."""
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and labels.items() <= s.labels.items())
