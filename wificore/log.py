"""Logging, configured once. structlog with cached loggers on the hot path.

Inside radiusd the events go to ``radiusd.radlog`` (stdout is /dev/null in
daemon mode); elsewhere they are JSON lines on stderr. Secrets never appear:
the ``redact`` processor blanks any key that names a password or secret.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

import structlog

_SECRET_WORDS = ("password", "secret", "dsn", "token")
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


def redact(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in list(event):
        if any(w in key.lower() for w in _SECRET_WORDS):
            event[key] = "***"
    return event


def configure(level: str = "info", sink: Callable[[str, str], None] | None = None) -> None:
    """Route events to ``sink(level, line)`` (radlog) or to stderr as JSON."""
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        redact,
    ]
    if sink is None:
        processors += [structlog.processors.TimeStamper(fmt="iso", utc=True),
                       structlog.processors.JSONRenderer()]
        factory: Any = structlog.PrintLoggerFactory(file=sys.stderr)
    else:
        processors += [structlog.processors.KeyValueRenderer(key_order=["event"], sort_keys=False)]
        factory = _SinkLoggerFactory(sink)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


class _SinkLogger:
    def __init__(self, sink: Callable[[str, str], None]) -> None:
        self._sink = sink

    def _emit(self, level: str) -> Callable[[str], None]:
        return lambda line: self._sink(level, line)

    def __getattr__(self, level: str) -> Callable[[str], None]:
        return self._emit(level)


class _SinkLoggerFactory:
    def __init__(self, sink: Callable[[str, str], None]) -> None:
        self._sink = sink

    def __call__(self, *args: Any) -> _SinkLogger:
        return _SinkLogger(self._sink)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


class Throttle:
    """At most one line per key and ``every_s``, counting the lines held back.

    For lines a hot path writes once per bad request (an unknown client, a sick
    shard's rejects): ``admit(key)`` is None when the line is to be held back
    (counted), else how many were held back since the key's last line. ``due()``
    gives ``(key, held, last_detail)`` for keys whose time has come with lines
    held back, for a thread to write their summary. At most ``max_keys`` keys are
    remembered (all are forgotten when that is reached)."""

    def __init__(self, every_s: float, max_keys: int = 4096) -> None:
        self.every_s = every_s
        self.max_keys = max_keys
        self._keys: dict[Hashable, list[Any]] = {}  # key -> [next line at, held, last detail]
        self._lock = threading.Lock()

    def admit(self, key: Hashable = None, detail: str = "") -> int | None:
        now = time.monotonic()
        with self._lock:
            st = self._keys.get(key)
            if st is not None and now < st[0]:
                st[1] += 1
                st[2] = detail
                return None
            if st is None and len(self._keys) >= self.max_keys:
                self._keys.clear()
            held = st[1] if st is not None else 0
            self._keys[key] = [now + self.every_s, 0, ""]
            return held

    def due(self) -> list[tuple[Hashable, int, str]]:
        now = time.monotonic()
        out = []
        with self._lock:
            for key, st in self._keys.items():
                if st[1] and now >= st[0]:
                    out.append((key, st[1], st[2]))
                    st[0], st[1] = now + self.every_s, 0
        return out
