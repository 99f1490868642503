"""The Redis side: the consumer group over every stream partition.

The streams are the buckets' (``wificore.keys``: ``{prefix}:{b<N>}:stream``), and the
partitions of the layout before 2026-12-01 (``{prefix}:stream:{N}``) while they exist (a
single Redis upgraded with records in them, or radiusd processes not yet upgraded): read
and drained like the others, looked for again at each measurement. One Redis: one
XREADGROUP over all of them. A Redis Cluster: one per stream (each its own slot), none
blocking; the writer waits between empty rounds instead. Each session's records are in
one stream (its subscriber's bucket), read in order.

Where an entry comes from, and what that does to its delivery count (the
count XPENDING reports; since 2026-12-01 the writer no longer dead-letters by
it -- restarts and claims during an outage raise it, and that is never the
record's fault -- it is kept on :class:`Entry` for logs only):

* :meth:`Streams.read_new` -- ``XREADGROUP >``: count 1.
* :meth:`Streams.read_history` -- at start-up, ``XREADGROUP`` from id 0 re-reads
  the entries this consumer name held when it stopped (a crash): count + 1.
* :meth:`Streams.claim_dead` -- entries of a consumer whose heartbeat has expired,
  idle for ``claim_min_idle_ms``: ``XCLAIM``, count + 1.
* :meth:`Streams.read_own_pending` -- our own entries left pending while their
  shard was down (``XPENDING`` + ``XRANGE``): count unchanged. Also after a read
  failed (``unsure``: a cluster master killed after its XREADGROUP ran, a timed-out
  reply that redis-py asked again) and when one of ours has been pending for
  ``LOST_IDLE_MS`` with no shard down (:meth:`Streams.own_stale`): delivered to us,
  it never reached us, and ``>`` does not give it again.

A cluster's stream whose master is away (killed, its replica not yet promoted) fails
alone: the others are read on, and what was read from them is returned.

Claims are not a blanket ``XAUTOCLAIM``: it would also take the entries a
live writer keeps pending for a down shard, away from the writer that will
drain them when the shard answers again.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

import redis
from redis.cluster import RedisCluster

from wificore.keys import Keys
from wificore.log import get_logger
from wificore.wire import stream_id

log = get_logger("batch_writer")

LAG_SCAN_MAX = 10_000  # bound of the fallback lag count when Redis cannot tell the lag
#: A cluster's reads do not block: the wait between two empty rounds.
CLUSTER_POLL_S = 0.02
#: A stream keeps at most this many entries for groups other than the writers' (read by
#: them, not yet by the CoA sidecar's quota watcher) before it is trimmed regardless.
OTHER_GROUPS_KEEP = 500_000


@dataclasses.dataclass(slots=True)
class Entry:
    """One stream entry. ``payload`` is the ``d`` field (None if absent)."""

    partition: int
    id: bytes
    payload: bytes | None
    deliveries: int = 1
    deleted: bool = False  # pending, but no longer in the stream (trimmed by someone)

    @property
    def source(self) -> str:
        """``partition/id``, for logs."""
        return f"{self.partition}/{self.id.decode()}"


def _raw_reply(response: Any, **_options: Any) -> Any:
    """XREADGROUP reply as the parser gave it: redis-py's conversion builds a dict per
    entry, a third of the writer's Redis time at 5,000 entries a batch."""
    return response


def _field(fields: list[bytes], name: bytes) -> bytes | None:
    for i in range(0, len(fields) - 1, 2):
        if fields[i] == name:
            return fields[i + 1]
    return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Streams:
    """One consumer of the group ``group`` on streams ``keys.stream(0..partitions-1)``."""

    def __init__(self, client: redis.Redis, keys: Keys, *, partitions: int, group: str, consumer: str,
                 dead_maxlen: int) -> None:
        self.r = client
        client.set_response_callback("XREADGROUP", _raw_reply)
        self.keys = keys
        self.group = group
        self.consumer = consumer
        self.dead_maxlen = dead_maxlen
        self.partitions = partitions
        self.cluster = isinstance(client, RedisCluster)
        self.names = [keys.stream(i) for i in range(partitions)]
        self._index = {name.encode(): i for i, name in enumerate(self.names)}
        self._history: dict[int, bytes] | None = None   # partition -> last id read, until done
        self._sweep: dict[int, str] | None = None       # partition -> XPENDING cursor, during a sweep
        self._legacy_checked = False
        #: A read of the group failed (or a sweep could not look at a stream): entries may
        #: have been delivered to this consumer without reaching it (a master killed after
        #: XREADGROUP ran, a reply timed out and redis-py asked again). They sit in our
        #: pending list, never delivered again by ``>``: the writer sweeps it.
        self.unsure = False

    def _add_legacy(self) -> None:
        """Add the streams of the layout before 2026-12-01 that exist (one Redis only)."""
        if self.cluster:
            return
        for p in range(self.partitions):
            name = self.keys.legacy_stream(p)
            if name.encode() in self._index or not self.r.exists(name):
                continue
            try:
                self.r.xgroup_create(name, self.group, id="0")
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._index[name.encode()] = len(self.names)
            self.names.append(name)
            if self._history is not None:
                self._history[len(self.names) - 1] = b"0"
            if self._sweep is not None:
                self._sweep[len(self.names) - 1] = "-"

    def refresh_topology(self) -> None:
        """A Redis Cluster: read the slot map again after an error (a master that died is
        replaced by its replica; redis-py keeps asking the dead one otherwise)."""
        if not self.cluster:
            return
        try:
            cast(RedisCluster, self.r).nodes_manager.initialize()
        except Exception:  # every node away: the next error asks again
            pass

    def dead_stream(self, partition: int) -> str:
        """The dead-letter stream of a stream's entries: its bucket's."""
        return self.keys.dead_letter_of(partition % self.partitions)

    def _xreadgroup(self, streams: dict[Any, Any], count: int, block: int | None = None) -> Any:
        """XREADGROUP over ``streams``: one call (one Redis), or one per stream without
        blocking (a cluster: each stream its own slot), polled until ``block`` ms passed."""
        if not self.cluster:
            try:
                return self.r.xreadgroup(self.group, self.consumer, streams, count=count, block=block)
            except redis.RedisError:
                self.unsure = True
                raise
        deadline = time.monotonic() + (block or 0) / 1000
        away: set[Any] = set()  # streams whose master did not answer: not asked again in this call
        failed: redis.RedisError | None = None
        while True:
            out: list[Any] = []
            for name, cursor in streams.items():
                if name in away:
                    continue
                try:
                    resp = self.r.xreadgroup(self.group, self.consumer, {name: cursor}, count=count)
                except redis.RedisError as exc:
                    # What this call (or redis-py's retry of it) delivered may never have
                    # reached us: it is in our pending list, read again by a sweep.
                    self.unsure = True
                    if "NOGROUP" in str(exc):
                        raise
                    # One master away (killed, being replaced): the other streams are
                    # read on; what was read from them is returned, not dropped.
                    if failed is None:
                        self.refresh_topology()
                    failed = exc
                    away.add(name)
                    continue
                for item in (resp.items() if isinstance(resp, dict) else resp or ()):
                    out.append(list(item))
            left = deadline - time.monotonic()
            if out:
                return out
            if failed is not None:
                raise failed
            if block is None or left <= 0:
                return out
            time.sleep(min(CLUSTER_POLL_S, left))

    # -------------------------------------------------------------- set-up
    def ensure_groups(self) -> None:
        """Create the group on every partition (from id 0: entries already there are read too)."""
        for name in self.names[:self.partitions]:
            try:
                self.r.xgroup_create(name, self.group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._add_legacy()

    def heartbeat_key(self, consumer: str | None = None) -> str:
        """``{prefix}:writer:heartbeat:{consumer}`` (ours by default)."""
        return f"{self.keys.writer_heartbeat}:{consumer or self.consumer}"

    def beat(self, ttl_s: int, info: dict[str, Any]) -> None:
        """Refresh our heartbeat key with a TTL; ``info`` is its JSON value."""
        self.r.set(self.heartbeat_key(), json.dumps(info, separators=(",", ":")), ex=ttl_s)

    def alive(self, consumer: str) -> bool:
        """True while ``consumer``'s heartbeat key exists."""
        return bool(self.r.exists(self.heartbeat_key(consumer)))

    def forget_heartbeat(self) -> None:
        """Delete our heartbeat key (a clean stop)."""
        self.r.delete(self.heartbeat_key())

    # ------------------------------------------------------------- reading
    def _entries(self, resp: Any, deliveries: int = 1) -> list[Entry]:
        # Raw reply (see _raw_reply): RESP3 {stream: [[id, [field, value, ...] | None], ...]}
        # or RESP2 [[stream, [...]], ...].
        out: list[Entry] = []
        index = self._index
        for name, rows in (resp.items() if isinstance(resp, dict) else resp or ()):
            part = index[name]
            for entry_id, fields in rows:
                if fields is None:
                    out.append(Entry(part, entry_id, None, deliveries, deleted=True))
                elif isinstance(fields, dict):  # parsed (a cluster's nodes keep redis-py's parser)
                    out.append(Entry(part, entry_id, fields.get(b"d"), deliveries))
                elif fields[0] == b"d":  # the one field radiusd writes
                    out.append(Entry(part, entry_id, fields[1], deliveries))
                else:
                    out.append(Entry(part, entry_id, _field(fields, b"d"), deliveries))
        return out

    def read_new(self, *, max_rows: int, max_age_ms: int, stop: threading.Event) -> list[Entry]:
        """Entries never delivered before: up to ``max_rows``, waiting at most ``max_age_ms``
        for the first one and then until the batch is that old."""
        out: list[Entry] = []
        first_at: float | None = None
        per_stream = len(self.names)
        while len(out) < max_rows and not stop.is_set():
            if first_at is None:
                block_ms = max_age_ms
            else:
                block_ms = int(max_age_ms - (time.monotonic() - first_at) * 1000)
                if block_ms <= 0:
                    break
            # COUNT is per stream: ask each for its share, so the batch stays near max_rows.
            count = max(1, (max_rows - len(out)) // per_stream)
            resp = self._xreadgroup({n: ">" for n in self.names}, count, max(1, block_ms))
            got = self._entries(resp)
            if not got:
                break
            if first_at is None:
                first_at = time.monotonic()
            out += got
        return out

    def start_history(self) -> None:
        """Arm :meth:`read_history` (at start-up)."""
        self._history = {i: b"0" for i in range(len(self.names))}

    @property
    def history_pending(self) -> bool:
        """True until the start-up re-read of our own entries is done."""
        return bool(self._history)

    def read_history(self, *, max_rows: int) -> list[Entry]:
        """The next page of this consumer's own pending entries (re-delivered: count + 1)."""
        if not self._history:
            return []
        cursors = self._history
        count = max(1, max_rows // len(cursors))
        resp = self._xreadgroup({self.names[p]: cid for p, cid in cursors.items()}, count)
        got = self._entries(resp)
        seen: dict[int, list[Entry]] = {}
        for e in got:
            seen.setdefault(e.partition, []).append(e)
        for p in list(cursors):
            rows = seen.get(p)
            if not rows:
                del cursors[p]
            else:
                cursors[p] = rows[-1].id
        self._fill_deliveries(seen)
        return got

    def _fill_deliveries(self, by_partition: dict[int, list[Entry]]) -> None:
        """Set each entry's delivery count from XPENDING (one call per partition)."""
        if not by_partition:
            return
        pipe = self.r.pipeline(transaction=False)
        order = []
        for p, rows in by_partition.items():
            pipe.xpending_range(self.names[p], self.group, rows[0].id, rows[-1].id, len(rows) + 16,
                                consumername=self.consumer)
            order.append(p)
        for p, pending in zip(order, pipe.execute(), strict=True):
            counts = {row["message_id"]: row["times_delivered"] for row in pending}
            for e in by_partition[p]:
                e.deliveries = counts.get(e.id, e.deliveries)

    def _fetch(self, wanted: list[tuple[int, bytes, int]]) -> list[Entry]:
        """Read entries by id without touching the group: (partition, id, deliveries)."""
        if not wanted:
            return []
        pipe = self.r.pipeline(transaction=False)
        for p, eid, _n in wanted:
            pipe.xrange(self.names[p], eid, eid, count=1)
        out = []
        for (p, eid, n), rows in zip(wanted, pipe.execute(), strict=True):
            if rows:
                out.append(Entry(p, eid, rows[0][1].get(b"d"), n))
            else:
                out.append(Entry(p, eid, None, n, deleted=True))
        return out

    # ------------------------------------------------------------- sweeps
    def start_sweep(self) -> None:
        """Arm :meth:`read_own_pending` for one pass over our pending entries."""
        self._sweep = {i: "-" for i in range(len(self.names))}

    def stop_sweep(self) -> None:
        """Abandon the current sweep pass."""
        self._sweep = None

    @property
    def sweeping(self) -> bool:
        """True during a sweep pass."""
        return self._sweep is not None

    def read_own_pending(self, *, max_rows: int) -> tuple[list[Entry], bool]:
        """The next page of our own pending entries (count unchanged); (entries, pass finished)."""
        if self._sweep is None:
            return [], True
        cursors = self._sweep
        count = max(1, max_rows // max(1, len(cursors)))
        wanted = []
        for p in list(cursors):
            try:
                rows = cast(list[dict[str, Any]],
                            self.r.xpending_range(self.names[p], self.group, cursors[p], "+", count,
                                                  consumername=self.consumer))
            except redis.RedisError:
                if not self.cluster:
                    raise
                # A cluster: that stream's master is away; the others are swept, this one
                # by a later pass (``unsure``).
                self.unsure = True
                self.refresh_topology()
                del cursors[p]
                continue
            wanted += [(p, row["message_id"], row["times_delivered"]) for row in rows]
            if len(rows) < count:
                del cursors[p]
            else:
                cursors[p] = "(" + _text(rows[-1]["message_id"])
        done = not cursors
        if done:
            self._sweep = None
        try:
            return self._fetch(wanted), done
        except redis.RedisError:
            self.unsure = True  # the page is skipped by this pass: a later one reads it
            raise

    def own_stale(self, min_idle_ms: int) -> bool:
        """Whether an entry of ours has been pending for ``min_idle_ms`` or longer on some
        stream (one ``XPENDING … IDLE`` per stream): with no shard down and no batch that
        old in flight, it was delivered to us without reaching us (see ``unsure``)."""
        found = False
        for name in self.names:
            try:
                if self.r.xpending_range(name, self.group, "-", "+", 1, consumername=self.consumer,
                                         idle=min_idle_ms):
                    found = True
                    break
            except redis.RedisError as exc:
                if "NOGROUP" in str(exc):
                    continue  # created again by the next read
                if not self.cluster:
                    raise
                self.unsure = True  # that stream's master is away: looked at again later
        return found

    # -------------------------------------------------------------- claims
    def claim_dead(self, *, max_rows: int, min_idle_ms: int) -> list[Entry]:
        """Take over entries of consumers whose heartbeat expired (count + 1).

        Consumers without a heartbeat and with nothing pending are removed from
        the group, so the consumer list stays bounded across restarts.
        """
        out: list[Entry] = []
        for p, name in enumerate(self.names):
            for c in self.r.xinfo_consumers(name, self.group):
                other = _text(c["name"])
                if other == self.consumer or self.alive(other):
                    continue
                if int(c["pending"]) == 0:
                    if int(c.get("idle", 0)) >= min_idle_ms:
                        self.r.xgroup_delconsumer(name, self.group, other)
                    continue
                room = max_rows - len(out)
                if room <= 0:
                    return out
                rows = cast(list[dict[str, Any]],
                            self.r.xpending_range(name, self.group, "-", "+", room, consumername=other,
                                                  idle=min_idle_ms))
                if not rows:
                    continue
                before = {row["message_id"]: row["times_delivered"] for row in rows}
                claimed = cast(list[tuple[bytes, dict[bytes, bytes] | None]],
                               self.r.xclaim(name, self.group, self.consumer, min_idle_ms, list(before)))
                for entry_id, fields in claimed:
                    if fields is None:
                        out.append(Entry(p, entry_id, None, before.get(entry_id, 0) + 1, deleted=True))
                    else:
                        out.append(Entry(p, entry_id, fields.get(b"d"), before.get(entry_id, 0) + 1))
        return out

    # ---------------------------------------------------------------- acks
    def ack(self, entries: Iterable[Entry]) -> int:
        """XACK, one call per partition."""
        by_part: dict[int, list[bytes]] = {}
        for e in entries:
            by_part.setdefault(e.partition, []).append(e.id)
        if not by_part:
            return 0
        pipe = self.r.pipeline(transaction=False)
        for p, ids in by_part.items():
            pipe.xack(self.names[p], self.group, *ids)
        return sum(pipe.execute())

    def dead_letter(self, rejected: list[tuple[Entry, str]], *, now: Callable[[], float] = time.time) -> int:
        """Copy each entry to the dead-letter stream with its reason, then acknowledge it.

        Two round trips on purpose: an entry is acknowledged only when its copy
        is known to be stored (a crash in between leaves a duplicate dead letter,
        never a lost record).
        """
        if not rejected:
            return 0
        pipe = self.r.pipeline(transaction=False)
        for e, reason in rejected:
            pipe.xadd(self.dead_stream(e.partition),
                      {"d": e.payload or b"", "reason": reason[:1000],
                       "source": f"{self.names[e.partition]}/{e.id.decode()}", "ts": f"{now():.3f}"})
            # Never trimmed: dead letters wait for `wificore-admin deadletter replay`.
            # dead_maxlen is an alarm (worker: log + metric), not a silent loss.
        results = pipe.execute(raise_on_error=False)
        stored = [e for (e, _), res in zip(rejected, results, strict=True) if not isinstance(res, Exception)]
        self.ack(stored)
        return len(stored)

    # ------------------------------------------------------------- gauges
    def measure_and_trim(self) -> tuple[dict[int, int], dict[int, int], int]:
        """(lag, pending) per partition and the dead-letter length; trims acknowledged entries.

        Trimming: entries older than the oldest pending one (or than the last one
        delivered, when nothing is pending) are acknowledged and can go; ``MINID ~``
        lets Redis drop whole nodes cheaply. Other groups on a stream (the CoA
        sidecar's quota watcher) keep what they have not read, up to a bound
        (:meth:`_floor_of_other_groups`).
        """
        self._add_legacy()  # a radiusd not yet upgraded may have created one since
        lag: dict[int, int] = {}
        pending: dict[int, int] = {}
        for p, name in enumerate(self.names):
            try:
                groups = self.r.xinfo_groups(name)
            except redis.ResponseError:
                continue  # the stream is gone: the next read fails with NOGROUP and recreates it
            info = next((g for g in groups if _text(g["name"]) == self.group), None)
            if info is None:
                continue
            summary = self.r.xpending(name, self.group)
            pending[p] = int(summary["pending"])
            last = info.get("last-delivered-id")
            value = info.get("lag")
            if value is None:
                # Redis cannot tell after deletions; count (bounded) what follows the last delivered.
                value = len(cast(list[Any], self.r.xrange(name, "(" + _text(last), "+", count=LAG_SCAN_MAX)))
            lag[p] = int(value)
            floor = summary["min"] if pending[p] else last
            if floor:
                floor = self._floor_of_other_groups(name, groups, _text(floor))
                self.r.xtrim(name, minid=floor, approximate=True)
        return lag, pending, sum(int(self.r.xlen(name)) for name in self.keys.dead_letters)

    def _floor_of_other_groups(self, name: str, groups: list[Any], floor: str) -> str:
        """The trim floor lowered to what the other groups on the stream (the CoA sidecar's
        quota watcher) have not read or acknowledged yet; but a stream that keeps over
        OTHER_GROUPS_KEEP entries for them is trimmed to the writers' floor (logged): a
        sidecar that is down must not fill Redis. The quota check of a subscriber still
        online comes again with its next record."""
        lowest = floor
        behind = []
        for g in groups:
            gname = _text(g["name"])
            if gname == self.group:
                continue
            theirs = _text(g.get("last-delivered-id") or "0-0")
            if int(g.get("pending") or 0):
                summary = self.r.xpending(name, gname)
                if summary["min"]:
                    theirs = _text(summary["min"])
            if stream_id(theirs) < stream_id(lowest):
                lowest = theirs
                behind.append(gname)
        if lowest == floor:
            return floor
        if int(self.r.xlen(name)) > OTHER_GROUPS_KEEP:
            log.warning("stream_trimmed_past_group", stream=name, groups=behind, kept=OTHER_GROUPS_KEEP)
            return floor
        return lowest
