"""The CoA sidecar's counters (plain dicts, read by the exporter at scrape time)."""

from __future__ import annotations

import collections


class CoaStats:
    def __init__(self) -> None:
        #: (kind, final outcome) -> requests: one per session and job.
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        #: (kind, outcome) -> attempts (each retransmission counts).
        self.attempts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.deduped: collections.Counter[str] = collections.Counter()
        self.skipped: collections.Counter[str] = collections.Counter()
        self.jobs: collections.Counter[str] = collections.Counter()
        self.quota_disconnects: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
