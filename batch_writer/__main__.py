"""``wificore-batch-writer``: the service, its health check and its settings.

    wificore-batch-writer                 run until SIGTERM / SIGINT (exit 0)
    wificore-batch-writer --burst         exit once nothing is left to write
    wificore-batch-writer --check         exit 0 if the writer's heartbeat is fresh, else 1
    wificore-batch-writer --settings      print every environment variable and its default

Configuration is the environment only (``WIFICORE_*``, ``WIFICORE_WRITER_*``);
a bad value exits with status 2 and a message that names the variable.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from collections.abc import Sequence
from types import FrameType

import redis

from wificore import log as wlog
from wificore import roles
from wificore.errors import ConfigError
from wificore.keys import Keys
from wificore.settings import Settings

from .config import SHARED_SETTINGS, WriterConfig, load

SCAN_MAX_CALLS = 1000


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wificore-batch-writer",
                                description="Move accounting and auth-log records from Redis Streams "
                                            "into the PostgreSQL shards.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="exit 0 if the writer's heartbeat key exists in Redis, else 1")
    mode.add_argument("--burst", action="store_true", help="exit 0 once nothing is left to write")
    mode.add_argument("--settings", action="store_true", help="print the environment variables and defaults")
    p.add_argument("--consumer", help="with --check: the writer to check (default: WIFICORE_WRITER_CONSUMER, "
                                      "else any writer of this host)")
    return p


def _print_settings() -> None:
    for name, default, doc in Settings.describe():
        if name in SHARED_SETTINGS:
            print(f"WIFICORE_{name.upper()}={default}\n    {doc}")
    for var, default, doc in WriterConfig.describe():
        print(f"{var}={default}\n    {doc}")


def check(settings: Settings, consumer: str | None, redis_timeout_ms: int) -> int:
    """0 when a fresh heartbeat exists (the named writer's, else any of this host's), else 1."""
    base = Keys(settings.key_prefix).writer_heartbeat
    timeout_s = redis_timeout_ms / 1000
    client = roles.client(roles.redis_url(settings, roles.STATE), socket_timeout=timeout_s,
                          socket_connect_timeout=timeout_s)
    try:
        if consumer:
            return 0 if client.exists(f"{base}:{consumer}") else 1
        # No name: any writer of this host (default names are <hostname>-<pid>).
        # SCAN walks the whole keyspace, so the walk is bounded.
        match = f"{base}:{socket.gethostname()}-*"
        if roles.is_cluster(roles.redis_url(settings, roles.STATE)):
            # A cluster: every master's keyspace (redis-py walks the nodes), until one is found.
            return 0 if next(iter(client.scan_iter(match=match, count=1000)), None) is not None else 1
        cursor = 0
        for _ in range(SCAN_MAX_CALLS):
            cursor, keys = client.scan(cursor=cursor, match=match, count=1000)
            if keys:
                return 0
            if cursor == 0:
                break
        return 1
    except redis.RedisError as exc:
        print(f"wificore-batch-writer: redis: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: 0 on a clean stop or a passing check, 1 failing check, 2 bad settings."""
    args = _parser().parse_args(argv)
    if args.settings:
        _print_settings()
        return 0
    try:
        settings, cfg = load()
    except ConfigError as exc:
        print(f"wificore-batch-writer: {exc}", file=sys.stderr)
        return 2
    wlog.configure(settings.log_level)
    if args.check:
        consumer = args.consumer or os.environ.get("WIFICORE_WRITER_CONSUMER") or None
        return check(settings, consumer, cfg.redis_timeout_ms)

    from .worker import Writer, tune_gc  # here, not at the top: --check and --settings stay light
    try:
        tune_gc()
        writer = Writer(settings, cfg, burst=args.burst)
        try:  # streams, dead letters and heartbeats must never be evicted
            roles.check_state_redis(writer.redis, settings, source="env")
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
            wlog.get_logger("batch_writer").warning("state_redis_not_checked", error=str(exc))
    except ConfigError as exc:
        print(f"wificore-batch-writer: {exc}", file=sys.stderr)
        return 2

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # Only the flag: the loop finishes its batch, commits, acknowledges, returns.
        writer.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return writer.run()


if __name__ == "__main__":
    sys.exit(main())
