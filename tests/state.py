"""The live state as radiusd's readers see it (wificore/livestate.py), for assertions:
the count Simultaneous-Use reads, the usage fields as the usage hash of before held them
(``hget`` and ``hgetall`` give bytes, so assertions read as they did), and a session
written by hand in live.lua's format."""

from __future__ import annotations

import time
from typing import Any

import msgpack

from wificore import livestate
from wificore.keys import Keys


def sessions(r: Any, keys: Keys, tenant_id: int, username: str, now: float | None = None) -> int:
    return livestate.sessions(r, keys, tenant_id, username, now=now)


def usage_all(r: Any, keys: Keys, tenant_id: int, username: str) -> dict[bytes, bytes]:
    return {k.encode(): str(v).encode() for k, v in livestate.usage(r, keys, tenant_id, username).items()}


def usage_field(r: Any, keys: Keys, tenant_id: int, username: str, field: str) -> bytes | None:
    return usage_all(r, keys, tenant_id, username).get(field.encode())


def rows(r: Any, keys: Keys, tenant_id: int, username: str, now: float | None = None) -> tuple[str, ...]:
    return livestate.read(r, keys, tenant_id, username, rows=True, now=now).rows


def put_session(r: Any, keys: Keys, tenant_id: int, username: str, row_key: str, deadline: float,
                nas_id: int = 1, interval_s: int = 300) -> None:
    """A live session as live.lua keeps it (its row key ``<session_key>:<suffix>``)."""
    skey, _, suffix = row_key.partition(":")
    born = time.time()
    # The NAS's epoch as live.lua would have seen it (an earlier Accounting-On of the NAS).
    epoch = r.hget(keys.nas_epoch(keys.bucket(tenant_id, username), tenant_id), str(nas_id))
    seen = int(epoch.split()[0]) if epoch else 0
    value = [0, 0, 0, False, False, int(deadline), int(born), suffix, born, 0, False, interval_s, nas_id, seen]
    r.hset(keys.subscriber(tenant_id, username), skey, msgpack.packb(value))


def put_usage(r: Any, keys: Keys, tenant_id: int, username: str, octets: int = 0, time_s: int = 0) -> None:
    """The subscriber's lifetime usage as live.lua keeps it (no quota period counted)."""
    r.hset(keys.subscriber(tenant_id, username), "u", msgpack.packb([octets, time_s, int(time.time()) + 3600]))
