"""Logging, configured once. structlog with cached loggers on the hot path.

Inside radiusd the events go to ``radiusd.radlog`` (stdout is /dev/null in
daemon mode); elsewhere they are JSON lines on stderr. Secrets never appear:
the ``redact`` processor blanks any key that names a password or secret.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
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
