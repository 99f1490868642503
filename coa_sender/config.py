"""The CoA sidecar's settings: ``WIFICORE_COA_<KEY>`` (its own) and the shared
``WIFICORE_<KEY>`` ones (shard map, state Redis, key prefix, stream partitions, log
level). An unknown ``WIFICORE_COA_`` variable is an error that names it."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

from wificore.errors import ConfigError
from wificore.settings import Settings, describe_fields, int_in_range, ip_address, prefixed_values, setting_field

ENV_PREFIX = "WIFICORE_COA_"


def _name(var: str, raw: str) -> str:
    value = raw.strip()
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", value):
        raise ConfigError(f"{var}: {raw!r} must be 1..64 of letters, digits, '_', '.', ':' or '-'")
    return value


@dataclasses.dataclass(frozen=True)
class CoaConfig:
    """Every knob of the CoA sidecar, with units in the names."""

    consumer: str = setting_field("", _name, "Consumer name in the job group (default <hostname>-<pid>); a "
                                  "stable name takes its own unfinished jobs back at once after a restart.")
    group: str = setting_field("coa", _name, "Consumer group on the job stream, shared by all sidecars.")
    quota_group: str = setting_field("coa-quota", _name, "Consumer group on the accounting streams for the "
                                     "mid-session quota check.")
    quota_check: int = setting_field(1, int_in_range(0, 1), "1: disconnect a subscriber whose data or time "
                                     "quota is used up mid-session; 0: off.")
    timeout_ms: int = setting_field(3000, int_in_range(50, 60_000), "How long one attempt waits for the "
                                    "NAS's ACK or NAK.")
    max_attempts: int = setting_field(3, int_in_range(1, 10), "Attempts per session (a timeout is tried "
                                      "again, an ACK or NAK is final).")
    workers: int = setting_field(16, int_in_range(1, 256), "Jobs running at once; a tenant runs at most "
                                 "workers/4 of them, each with at most workers/4 requests in flight (a "
                                 "silent NAS holds its tenant's turn for timeout_ms x max_attempts, not "
                                 "the other tenants').")
    resolve_wait_ms: int = setting_field(5000, int_in_range(0, 600_000), "How long a job waits for a live "
                                         "session's row to reach the shard (the writer's lag) before it "
                                         "is sent without that session; a tenant- or plan-wide job looks "
                                         "again this long after it was queued.")
    dedupe_ttl_s: int = setting_field(600, int_in_range(1, 86_400), "A session acknowledged as disconnected "
                                      "(or being disconnected) gets no second Disconnect for this long.")
    claim_min_idle_ms: int = setting_field(60_000, int_in_range(100, 86_400_000), "Jobs another sidecar "
                                           "took and left unfinished this long are taken over.")
    redis_timeout_ms: int = setting_field(2000, int_in_range(100, 60_000), "Socket timeout of Redis calls "
                                          "(must exceed block_ms).")
    block_ms: int = setting_field(500, int_in_range(10, 10_000), "How long one read of the streams blocks.")
    db_timeout_ms: int = setting_field(3000, int_in_range(100, 60_000), "Connect and statement timeout of "
                                       "the shard reads and attempt rows.")
    metrics_addr: str = setting_field("127.0.0.1", ip_address, "Address of the Prometheus exporter.")
    metrics_port: int = setting_field(0, int_in_range(0, 65535), "Port of the Prometheus exporter (0 = off).")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CoaConfig:
        values = prefixed_values(cls, ENV_PREFIX, os.environ if env is None else env)
        cfg = cls(**values)
        if cfg.redis_timeout_ms <= cfg.block_ms:
            raise ConfigError(f"{ENV_PREFIX}REDIS_TIMEOUT_MS: {cfg.redis_timeout_ms} must exceed "
                              f"{ENV_PREFIX}BLOCK_MS ({cfg.block_ms})")
        return cfg

    @classmethod
    def describe(cls) -> list[tuple[str, Any, str]]:
        return describe_fields(cls, ENV_PREFIX)


SHARED_SETTINGS = ("shard_map", "redis_url", "state_redis_url", "key_prefix", "stream_partitions", "log_level")


def load(env: Mapping[str, str] | None = None) -> tuple[Settings, CoaConfig]:
    return Settings.from_env(env), CoaConfig.from_env(env)
