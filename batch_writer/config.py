"""The writer's settings: one frozen dataclass, parsed once from the environment.

The shared settings (shard map, Redis URL, key prefix, stream partitions,
default interim, log level) come from :meth:`wificore.settings.Settings.from_env`,
the same ``WIFICORE_<KEY>`` variables radiusd's tooling reads. The writer's own
knobs are ``WIFICORE_WRITER_<KEY>``; an unknown ``WIFICORE_WRITER_`` variable is
an error, so a typo cannot silently leave a default in place. Every error
names the variable: ``WIFICORE_WRITER_BATCH_MAX_ROWS: 0 is out of range 1..100000``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

from wificore.errors import ConfigError
from wificore.settings import Settings, describe_fields, int_in_range, ip_address, prefixed_values, setting_field

ENV_PREFIX = "WIFICORE_WRITER_"


def _name(var: str, raw: str) -> str:
    value = raw.strip()
    # Consumer and group names end up in Redis key names and log lines.
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", value):
        raise ConfigError(f"{var}: {raw!r} must be 1..64 of letters, digits, '_', '.', ':' or '-'")
    return value


@dataclasses.dataclass(frozen=True)
class WriterConfig:
    """Every knob of the batch writer, with units in the names."""

    consumer: str = setting_field("", _name, "Consumer name in the group (default <hostname>-<pid>); "
                                  "a stable name lets a restarted writer take its own pending entries back at once.")
    group: str = setting_field("writers", _name, "Consumer group shared by all writers.")
    batch_max_rows: int = setting_field(5000, int_in_range(1, 100_000),
                                        "A batch is written when it has this many entries ...")
    batch_max_age_ms: int = setting_field(200, int_in_range(1, 60_000), "... or when its first entry is this old.")
    max_attempts: int = setting_field(5, int_in_range(1, 1000),
                                      "Failures of one record written alone with an error that is neither a data "
                                      "error nor the shard's, after which it goes to the dead-letter stream. "
                                      "Deliveries, restarts, claims and shard outages never count.")
    shard_deadline_s: int = setting_field(15, int_in_range(1, 3600),
                                          "Client-side deadline of one round trip with a shard: past it the writer "
                                          "stops waiting, cuts the connection and backs the shard off.")
    claim_min_idle_ms: int = setting_field(60_000, int_in_range(100, 86_400_000),
                                           "Entries of a writer without a heartbeat are claimed once this idle.")
    claim_interval_s: int = setting_field(10, int_in_range(1, 3600), "How often to look for dead writers' entries.")
    stale_grace_s: int = setting_field(120, int_in_range(0, 86_400),
                                       "An open session is closed as stale when it has not been updated for "
                                       "2 x its interim interval plus this.")
    stale_interval_s: int = setting_field(30, int_in_range(1, 3600), "How often to look for stale sessions.")
    close_batch_rows: int = setting_field(5000, int_in_range(1, 100_000),
                                          "Rows per UPDATE when closing stale or NAS-restart sessions.")
    close_max_loops: int = setting_field(200, int_in_range(1, 100_000),
                                         "UPDATE rounds per close job per pass (bounds one pass).")
    statement_timeout_ms: int = setting_field(30_000, int_in_range(100, 3_600_000), "statement_timeout of every writer "
                                              "transaction (SET LOCAL: works behind PgBouncer).")
    connect_timeout_s: int = setting_field(3, int_in_range(2, 60), "Connect timeout of a shard (libpq's floor is 2 s).")
    redis_timeout_ms: int = setting_field(5000, int_in_range(100, 60_000),
                                          "Socket timeout of Redis calls (must exceed batch_max_age_ms).")
    heartbeat_ttl_s: int = setting_field(30, int_in_range(3, 3600),
                                         "Lifetime of the heartbeat key; refreshed every third.")
    backoff_max_s: int = setting_field(10, int_in_range(1, 600), "Longest wait before retrying a shard or Redis.")
    dead_maxlen: int = setting_field(100_000, int_in_range(100, 100_000_000),
                                     "Alarm threshold of the dead-letter stream's length (an error log and "
                                     "wificore_writer_dead_letter_over_bound = 1); the stream is never trimmed.")
    max_event_age_s: int = setting_field(30 * 86_400, int_in_range(60, 3650 * 86_400),
                                         "A record whose event time is older than this is absurd (dead letter).")
    max_event_ahead_s: int = setting_field(86_400, int_in_range(0, 365 * 86_400),
                                           "A record whose event time is this far in the future is absurd.")
    pipeline: int = setting_field(1, int_in_range(0, 1), "1: decode the next batch while the shards write this one; "
                                  "0: one batch at a time.")
    metrics_addr: str = setting_field("127.0.0.1", ip_address, "Address of the Prometheus exporter.")
    metrics_port: int = setting_field(0, int_in_range(0, 65535), "Port of the Prometheus exporter (0 = off).")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WriterConfig:
        """Read ``WIFICORE_WRITER_<KEY>``; unknown ones are errors that name the variable."""
        values = prefixed_values(cls, ENV_PREFIX, os.environ if env is None else env)
        cfg = cls(**values)
        redis_ms = cfg.redis_timeout_ms
        if redis_ms <= cfg.batch_max_age_ms:
            raise ConfigError(f"{ENV_PREFIX}REDIS_TIMEOUT_MS: {redis_ms} must exceed "
                              f"{ENV_PREFIX}BATCH_MAX_AGE_MS ({cfg.batch_max_age_ms}): reads block that long")
        return cfg

    @classmethod
    def describe(cls) -> list[tuple[str, Any, str]]:
        """(variable, default, doc) of every writer setting, for the docs and --help."""
        return describe_fields(cls, ENV_PREFIX)


SHARED_SETTINGS = ("shard_map", "redis_url", "state_redis_url", "key_prefix", "stream_partitions",
                   "default_interim_s", "log_level")
"""The fields of :class:`Settings` the writer uses (``WIFICORE_<KEY>``)."""


def load(env: Mapping[str, str] | None = None) -> tuple[Settings, WriterConfig]:
    """Both halves of the configuration, from one environment."""
    return Settings.from_env(env), WriterConfig.from_env(env)
