"""Settings: one frozen dataclass, parsed once at the edge.

radiusd hands the module's ``config { }`` block over as strings
(:meth:`Settings.from_mapping`); batch_writer and wificore-admin read the
same keys from the environment as ``WIFICORE_<KEY>`` (:meth:`Settings.from_env`).
Every error names the key: ``wificore.redis_url: invalid scheme 'http'``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ConfigError

_LOG_LEVELS = ("debug", "info", "warning", "error")


def int_in_range(lo: int, hi: int) -> Callable[[str, str], int]:
    def parse(key: str, raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {raw!r}") from None
        if not lo <= value <= hi:
            raise ConfigError(f"{key}: {value} is out of range {lo}..{hi}")
        return value

    return parse


def _redis_url(key: str, raw: str) -> str:
    url = raw.strip()
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("redis", "rediss", "unix", "redis+cluster"):
        raise ConfigError(f"{key}: invalid scheme {scheme!r} (use redis://, rediss://, unix:// "
                          "or redis+cluster://host:port,host:port)")
    if scheme == "redis+cluster":
        from .roles import cluster_nodes
        try:
            cluster_nodes(url)
        except ValueError:
            raise ConfigError(f"{key}: expected redis+cluster://host:port[,host:port...]") from None
    return url


def _optional_redis_url(key: str, raw: str) -> str:
    return _redis_url(key, raw) if raw.strip() else ""


def _path(key: str, raw: str) -> str:
    path = raw.strip()
    if not path:
        raise ConfigError(f"{key}: must not be empty")
    return path


def _prefix(key: str, raw: str) -> str:
    value = raw.strip()
    if not value or not value.replace("_", "").isalnum():
        raise ConfigError(f"{key}: {raw!r} must be letters, digits or '_'")
    return value


def ip_address(key: str, raw: str) -> str:
    try:
        return str(ipaddress.ip_address(raw.strip()))
    except ValueError:
        raise ConfigError(f"{key}: {raw!r} is not an IP address") from None


def _metrics_addr(key: str, raw: str) -> str:
    # Empty (an unset $ENV{WIFICORE_METRICS_ADDR} in the raddb): loopback.
    return ip_address(key, raw) if raw.strip() else "127.0.0.1"


def _level(key: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in _LOG_LEVELS:
        raise ConfigError(f"{key}: {raw!r} is not one of {', '.join(_LOG_LEVELS)}")
    return value


def setting_field(default: Any, parse: Callable[[str, str], Any], doc: str) -> Any:
    return dataclasses.field(default=default, metadata={"parse": parse, "doc": doc})


def prefixed_values(cls: type, prefix: str, env: Mapping[str, str]) -> dict[str, Any]:
    """The fields of the settings dataclass ``cls`` set in ``env`` as ``<prefix><FIELD>``
    (an empty value: the default), each parsed by its :func:`setting_field` parser; an
    unknown ``<prefix>`` variable is an error that names it. Also ``consumer``, when a
    field of ``cls`` and not set: ``<hostname>-<pid>`` (unique per process)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for var in sorted(env):
        if not var.startswith(prefix):
            continue
        name = var[len(prefix):].lower()
        if name not in fields:
            raise ConfigError(f"{var}: unknown setting")
        if env[var] == "":
            continue
        values[name] = fields[name].metadata["parse"](var, env[var])
    if "consumer" in fields and not values.get("consumer"):
        values["consumer"] = default_consumer()
    return values


def describe_fields(cls: type, prefix: str) -> list[tuple[str, Any, str]]:
    """(variable, default, doc) of every field of the settings dataclass ``cls``."""
    return [(prefix + f.name.upper(), f.default, f.metadata["doc"]) for f in dataclasses.fields(cls)]


def default_consumer() -> str:
    """``<hostname>-<pid>``: unique per process, so two consumers never share a PEL."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every setting of rlm_wificore, with units in the names."""

    shard_map: str = setting_field("/etc/freeradius/3.0/mods-config/wificore/shards.toml", _path,
                                   "Shard map file: tenant ranges (and tenants placed by `tenant move`) "
                                   "to PostgreSQL DSNs; followed without a restart (below).")
    redis_url: str = setting_field("redis://127.0.0.1:6379/0", _redis_url,
                                   "Redis for each role without a URL of its own (the two below).")
    cache_redis_url: str = setting_field("", _optional_redis_url,
                                         "Redis for profiles, plans, tenant status, NAS and unknown-user entries; may "
                                         "evict (allkeys-lru). Empty: redis_url.")
    state_redis_url: str = setting_field("", _optional_redis_url,
                                         "Redis for live sessions, usage, delta bases, streams and dead "
                                         "letters; must be maxmemory-policy noeviction (checked at start). "
                                         "Empty: redis_url.")
    key_prefix: str = setting_field("wc", _prefix, "Prefix of every Redis key and stream.")
    profile_ttl_s: int = setting_field(600, int_in_range(1, 86400 * 7),
                                       "Lifetime of a cached subscriber profile (Redis and in-process).")
    ttl_jitter_pct: int = setting_field(10, int_in_range(0, 50),
                                        "Random extra lifetime, in percent, against stampedes.")
    live_state_ttl_s: int = setting_field(30, int_in_range(0, 3600),
                                          "How long a process trusts its copy of a subscriber's session "
                                          "count and usage (plus up to ttl_jitter_pct); starts and stops "
                                          "invalidate it at once.")
    negative_ttl_s: int = setting_field(30, int_in_range(1, 3600), "Lifetime of an 'unknown user' entry.")
    local_cache_max: int = setting_field(500000, int_in_range(0, 50_000_000), "Most profiles kept in process.")
    credential_cache_ttl_s: int = setting_field(900, int_in_range(0, 86400),
                                                "Lifetime of a verified bcrypt or NT-hash PAP credential (0 = off).")
    redis_timeout_ms: int = setting_field(250, int_in_range(1, 60000), "Socket timeout of every Redis call.")
    db_timeout_ms: int = setting_field(500, int_in_range(1, 60000),
                                       "Connect, pool-wait and statement timeout of a shard.")
    db_wait_ms: int = setting_field(200, int_in_range(0, 60000),
                                    "The longest a hook waits for its shard query while the shard "
                                    "is healthy (less once the shard's answers are known: 4x their "
                                    "p90, at least 50 ms); a slower answer marks the shard sick (no "
                                    "waiting) until 3 fast ones in a row.")
    db_pool_max: int = setting_field(4, int_in_range(1, 256), "Connections per shard and radiusd process.")
    stream_partitions: int = setting_field(4, int_in_range(1, 256), "Accounting stream partitions.")
    spool_dir: str = setting_field("/var/spool/wificore", _path,
                                   "Write-ahead spool: each accounting record lands here before its response.")
    spool_segment_kib: int = setting_field(65536, int_in_range(64, 1048576),
                                           "Largest spool segment; each is sized to a fraction of the "
                                           "free space, so a small disk is used in small steps.")
    session_stale_interims: int = setting_field(2, int_in_range(1, 100),
                                                "Missed interims after which a live session is dropped.")
    default_interim_s: int = setting_field(300, int_in_range(10, 86400),
                                           "Interim interval assumed when the plan names none.")
    metrics_addr: str = setting_field("127.0.0.1", _metrics_addr,
                                      "Address of the Prometheus exporter; empty: 127.0.0.1 (0.0.0.0 "
                                      "in a container, so that Prometheus can reach it).")
    metrics_port: int = setting_field(9812, int_in_range(0, 65535), "Port of the Prometheus exporter (0 = off).")
    log_level: str = setting_field("info", _level, "debug, info, warning or error.")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None, *, source: str = "wificore") -> Settings:
        """Parse a mapping of strings (radiusd's ``config { }``); unknown keys are errors."""
        raw = dict(raw or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(fields))
        if unknown:
            raise ConfigError(f"{source}.{unknown[0]}: unknown setting")
        values: dict[str, Any] = {}
        for name, value in raw.items():
            parse = fields[name].metadata["parse"]
            values[name] = parse(f"{source}.{name}", str(value))
        return cls(**values)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read ``WIFICORE_<KEY>`` variables; the rest keep their defaults."""
        env = os.environ if env is None else env
        raw = {}
        for f in dataclasses.fields(cls):
            var = "WIFICORE_" + f.name.upper()
            if var in env and env[var] != "":
                raw[f.name] = env[var]
        return cls.from_mapping(raw, source="env")

    @classmethod
    def describe(cls) -> list[tuple[str, Any, str]]:
        """(key, default, doc) of every setting, for the README and --help."""
        return [(f.name, f.default, f.metadata["doc"]) for f in dataclasses.fields(cls)]


#: radiusd's options that take a value (freeradius -h, 3.2): -d -D -l -n -i -p.
_RADIUSD_VALUE_OPTIONS = frozenset(b"dDlnip")


def is_config_check(argv: list[bytes]) -> bool:
    """True if radiusd's command line (``/proc/self/cmdline`` split at NUL) has ``-C``:
    `freeradius -C` only checks the configuration, so the module must start no thread
    and bind no port. Options may be grouped (``-XC``); a value may follow its option
    in the same word (``-d/etc/raddb``) or in the next one (``-d -C`` names a folder)."""
    skip = False
    for arg in argv[1:]:
        if skip:
            skip = False
            continue
        if not arg.startswith(b"-") or arg.startswith(b"--") or len(arg) < 2:
            continue
        for i, flag in enumerate(arg[1:]):
            if flag == ord("C"):
                return True
            if flag in _RADIUSD_VALUE_OPTIONS:
                skip = i == len(arg) - 2  # the value is the next word
                break
    return False
