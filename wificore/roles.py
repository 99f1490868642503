"""The two Redis roles (seed §5, Solution 2): a cache that may evict, and durable state.

* **cache** (``cache_redis_url``): subscriber profiles, plans, NAS entries and
  unknown-user entries. Every key has a TTL and can be read again from PostgreSQL, so
  this Redis may evict (``allkeys-lru`` is the natural choice).
* **state** (``state_redis_url``): live sessions, usage counters, delta bases, the
  accounting streams, dead letters, writer heartbeats and the invalidation channel.
  An evicted delta base double-counts usage, an evicted stream loses accounting: this
  Redis must run with ``maxmemory-policy noeviction``, checked at start-up.

Either URL left empty falls back to ``redis_url``, so one Redis still serves both (it
must then be ``noeviction``). No radiusd, no I/O at import: the module, batch_writer
and wificore-admin share it.

A URL ``redis+cluster://host:port,host:port`` names a Redis Cluster (any reachable
nodes of it; the rest are discovered): :func:`client` then builds a
``redis.cluster.RedisCluster`` with the same timeouts.
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigError

CACHE = "cache"
STATE = "state"
REQUIRED_POLICY = "noeviction"


def setting_name(settings: Any, role: str) -> str:
    """The setting that names ``role``'s Redis: its own URL if set, else ``redis_url``."""
    own = f"{role}_redis_url"
    return own if getattr(settings, own, "") else "redis_url"


def redis_url(settings: Any, role: str) -> str:
    """The URL of ``role``'s Redis (``cache`` or ``state``)."""
    if role not in (CACHE, STATE):
        raise ValueError(f"unknown Redis role {role!r}")
    return getattr(settings, setting_name(settings, role))


CLUSTER_SCHEME = "redis+cluster"


def is_cluster(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://h:p,h:p``)."""
    return url.strip().lower().startswith(CLUSTER_SCHEME + "://")


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The (host, port) list of a ``redis+cluster://`` URL (ValueError if there is none)."""
    rest = url.strip()[len(CLUSTER_SCHEME) + 3:]
    netloc = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    nodes = []
    for item in filter(None, (n.strip() for n in netloc.split(","))):
        host, _, port = item.rpartition(":")
        if not host:
            host, port = item, "6379"
        nodes.append((host.strip("[]"), int(port)))
    if not nodes:
        raise ValueError("no host:port")
    return nodes


def client(url: str, **options: Any) -> Any:
    """A ``redis.Redis`` for a URL, a ``redis.cluster.RedisCluster`` for a cluster URL, with
    ``options`` (socket timeouts, retry, ...). No I/O for a single Redis; a cluster client
    reads the slot map from a node at once (a ConnectionError if none answers)."""
    import redis
    if not is_cluster(url):
        return redis.Redis.from_url(url, **options)
    from redis.cluster import ClusterNode, RedisCluster
    options.pop("health_check_interval", None)
    options.pop("retry_on_error", None)
    options.pop("retry_on_timeout", None)
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry
    options.pop("retry", None)
    # A failed master: the slot map is read again and the command retried, a bounded
    # number of times, on the replica once it has taken over (each try within the socket
    # timeouts; the callers' breakers and backoffs do the rest).
    return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in cluster_nodes(url)],
                        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2), **options)


def eviction_policy(client: Any) -> str:
    """``maxmemory_policy`` as INFO reports it (works where CONFIG is renamed away)."""
    info = client.info("memory")
    if "maxmemory_policy" not in info and info:  # a cluster: {node: info} of every node
        policies = {str(i.get("maxmemory_policy", "")).strip() for i in info.values() if isinstance(i, dict)}
        return policies.pop() if len(policies) == 1 else ",".join(sorted(policies))
    return str(info.get("maxmemory_policy", "")).strip()


def check_state_redis(client: Any, settings: Any, *, source: str = "wificore") -> None:
    """ConfigError (one line, naming the setting) unless the state Redis is ``noeviction``.

    Connection errors propagate: the caller decides whether an unreachable Redis at
    start is fatal (radiusd starts and spools; the check is logged as skipped)."""
    policy = eviction_policy(client)
    if policy != REQUIRED_POLICY:
        name = setting_name(settings, STATE)
        label = f"WIFICORE_{name.upper()}" if source == "env" else f"{source}.{name}"
        raise ConfigError(
            f"{label}: the state Redis runs maxmemory-policy {policy or '?'}; live sessions, "
            f"usage, delta bases and streams need maxmemory-policy {REQUIRED_POLICY} (set it there, or "
            f"point cache_redis_url at an evicting Redis and state_redis_url at a noeviction one)")
