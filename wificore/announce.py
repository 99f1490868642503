"""Change announcements on the invalidation channel, with a log that a listener
which was away can replay.

Redis pub/sub delivers a message to the connections subscribed at that instant
only. A radiusd process whose channel connection was lost (a Redis restart, a
``CLIENT KILL``, an output-buffer limit) and that subscribes again a moment
after a relay announced a change would keep the stale in-process copy until
its TTL. So every announcement of a shard's change (the relay's, the admin
CLI's) is first appended to a capped stream, :attr:`Keys.invalidation_log`,
and only then published; a listener that subscribes again replays the log's
entries after its mark (:func:`since`), and drops everything when the log no
longer reaches back that far. live.lua's live-state messages (``L``) are not
logged: a listener that was away re-reads every live state anyway.

The order (copies deleted, log appended, then published) is what makes the
replay complete: a message published before the listener's SUBSCRIBE took
effect is in the log before the listener reads it (two round trips, so that a
Redis Cluster, whose pipeline groups commands by node, keeps the order too).
"""

from __future__ import annotations

from typing import Any

from redis.cluster import RedisCluster

from wificore.keys import Keys
from wificore.wire import stream_id

#: Entries kept in the log (``MAXLEN ~``): a listener away for more announcements than
#: this drops every cached copy instead of replaying.
LOG_MAX = 10_000


def announce(client: Any, keys: Keys, messages: list[str], *, doomed: list[str] | None = None,
             cache: Any = None) -> None:
    """Delete the stale Redis copies ``doomed`` (from ``cache``, default ``client``), log the
    messages, then publish them on the invalidation channel. Raises redis's errors."""
    if doomed and cache is not None and cache is not client:  # the copies live in the cache Redis
        _delete(cache, doomed)
        doomed = []
    pipe = client.pipeline(transaction=False)
    for key in doomed or ():  # one key per command: a cluster's pipeline splits by slot
        pipe.delete(key)
    pipe.xadd(keys.invalidation_log, {"m": "\n".join(messages)}, maxlen=LOG_MAX, approximate=True)
    pipe.execute()
    if isinstance(client, RedisCluster):  # its pipelines refuse PUBLISH: one call each, in order
        for message in messages:
            client.publish(keys.invalidation_channel, message)
        return
    pipe = client.pipeline(transaction=False)
    for message in messages:
        pipe.publish(keys.invalidation_channel, message)
    pipe.execute()


def _delete(client: Any, doomed: list[str]) -> None:
    pipe = client.pipeline(transaction=False)
    for key in doomed:
        pipe.delete(key)
    pipe.execute()


def top(client: Any, keys: Keys) -> str:
    """The id of the log's newest entry ("0-0" if it has none): a listener's next mark."""
    last = client.xrevrange(keys.invalidation_log, count=1)
    return _text(last[0][0]) if last else "0-0"


def since(client: Any, keys: Keys, mark: str) -> tuple[list[str], str] | None:
    """The messages logged after ``mark`` and the newest id, or None when the log does not
    reach back to ``mark`` any longer (trimmed past it: drop everything instead)."""
    try:
        info = client.xinfo_stream(keys.invalidation_log)
    except Exception as exc:  # no log (a Redis that came back empty): nothing to replay
        if "no such key" in str(exc).lower():
            return [], mark
        raise
    first = info.get("first-entry")
    trimmed = int(info.get("entries-added", 0)) > int(info.get("length", 0))
    if trimmed and first and stream_id(_text(first[0])) > stream_id(mark):
        return None  # entries after the mark may be gone
    messages: list[str] = []
    newest = mark
    start = f"({mark}"
    while True:
        entries = client.xrange(keys.invalidation_log, min=start, max="+", count=1000)
        if not entries:
            break
        for entry_id, fields in entries:
            newest = _text(entry_id)
            body = fields.get(b"m", fields.get("m", b""))
            messages += [m for m in _text(body).split("\n") if m]
        if len(entries) < 1000:
            break
        start = f"({newest}"
    return messages, newest


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
