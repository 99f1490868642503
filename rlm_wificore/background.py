"""Threads the module starts itself: they run outside rlm_python3's mutex.

* ``spool``: forwards the spool (accounting and auth-log records) to Redis,
  one script call per batch (see spool.py and live.lua); the spool lets go of
  them (settles) SETTLE_S later, once Redis surely has them on disk, and what
  a restarted Redis lost of them is sent again (the forwarder's mark). The
  spool's own ``spool-prep`` thread (spool.py) allocates its next segment
  ahead of need.
* ``state``: re-reads, in one round trip per batch, the live state (session
  count, usage) of cached subscribers that the hooks found due, so that no
  hook waits on Redis for it.
* ``inval-redis``: subscribes to the invalidation channel and drops the
  in-process copies the relay and live.lua announce; follows the NAS
  directory's set of known addresses. After an outage the live states of the
  in-process tier are re-read and the profiles kept; a relay that takes over
  alone announces ``R`` (drop every in-process copy, changes may have gone
  unannounced), so the tier refills from Redis, not from the shards.
* ``shardmap``: follows the shard map file (wificore/shardmap.py MapFollower, every
  half second): a new valid map is taken without a restart (``engine.follow_map``).
* ``relay``: tries to take a relay slot (invalidation.RelayLock) and, while it
  holds one, runs ``inval-<shard>``: LISTENs on each shard; a committed change
  of a subscriber, plan, NAS or tenant deletes the Redis copy (updates the NAS
  directory) and is announced on the channel once per relay, so every radiusd
  drops it within a second. At most RELAY_SLOTS processes relay.

Threads only: each loop waits, calls public methods of the engine's rooms
(``engine.live``, ``engine.invalidation``, the spool) and retries with a
backoff; what a message or a due state means is decided in those rooms.
It imports the rooms only for types (and the relay lock of invalidation.py), and the
engine not at all.
"""

from __future__ import annotations

import collections
import struct
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import psycopg
import redis
from redis.cluster import RedisCluster

from wificore import announce as announcements
from wificore import quota, wire
from wificore.backoff import REDIS_DOWN, Backoff
from wificore.keys import TAG_ALL, Keys, bucket_of
from wificore.log import get_logger

from .invalidation import DIRECTORY_REBUILD_S, RELAY_RENEW_S, RelayLock
from .spool import END, LEN_MASK, MAX_RECORD, TAG_SHIFT, Span
from .store import DeadlineExceeded, Watchdog, conninfo

if TYPE_CHECKING:
    from wificore.settings import Settings
    from wificore.shardmap import ShardMap

    from .directory import Directory
    from .invalidation import Invalidation
    from .live import LiveStates
    from .spool import Spool
    from .stats import Stats


class Engine(Protocol):
    """What the threads use of :class:`rlm_wificore.engine.Engine` (which starts them):
    named here, so that this module need not import the engine (no circle)."""

    settings: Settings
    keys: Keys
    shard_map: ShardMap
    stats: Stats
    redis_bg: redis.Redis
    live: LiveStates
    invalidation: Invalidation
    directory: Directory
    stopping: threading.Event
    state_redis_checked: bool
    redis_roles_split: bool
    map_epoch: int

    @property
    def spool(self) -> Spool | None: ...

    def follow_map(self, new: ShardMap) -> None: ...

    def check_state_redis(self, *, at_start: bool = True) -> None: ...

log = get_logger("rlm_wificore.background")

#: A Redis Cluster: how long a forwarded span waits for its master's replica (WAIT), and
#: how many more times while the master still has a connected replica.
REPLICA_WAIT_MS = 1000
REPLICA_WAIT_TRIES = 5


def _has_replica(conn: Any) -> bool:
    """Whether a master reports a connected replica (INFO replication)."""
    return int(conn.info("replication").get("connected_slaves", 0) or 0) > 0
#: Bytes of spool per script call (a few hundred records).
FORWARD_BYTES = 64 * 1024
FORWARD_IDLE_S = 0.02
#: How long forwarded records stay in the spool after Redis answered (one Redis). A Redis
#: with appendfsync everysec answers before it writes while a fsync is still running and
#: holds the write back up to 2 s (flushAppendOnlyFile): killed meanwhile, it comes back
#: without records it answered for. Alive and holding the forwarder's mark this long after
#: a call, it has that call in its append-only file: the spool lets go (settles) then.
SETTLE_S = 5.0


class _Behind(Exception):
    """live.lua did nothing: Redis holds another mark of this forwarder than the one expected."""

    def __init__(self, held: str) -> None:
        super().__init__(held)
        self.held = held


_U32 = struct.Struct("<I")
_LIVE_LUA = (Path(__file__).resolve().parent / "live.lua").read_text(encoding="utf-8")
#: Live-session and per-session keys outlive a session by this much.
SESSION_TTL_S = 2 * 86400
#: The usage hash's sliding expiry (lifetime totals and period counters): wificore/quota.py's.
USAGE_TTL_S = quota.USAGE_TTL_S


def _legacy_tag(payload: bytes, partitions: int) -> int:
    """The bucket tag of a frame from before 2026-12-01 (none in its length word): decoded."""
    try:
        kind, rec = wire.unpack(payload)
        if kind == wire.KIND_ACCT and rec.get("status") in ("on", "off"):
            return TAG_ALL
        return 1 + bucket_of(int(rec.get("tenant_id") or 0), str(rec.get("username") or ""), partitions)
    except Exception:  # undecodable: live.lua dead-letters it in bucket 0
        return 1


def group_frames(data: bytes, partitions: int) -> tuple[dict[int, list[bytes]], int, int, int]:
    """The whole frames at the start of ``data`` by bucket (a Redis Cluster: one script
    call per bucket, one slot each), from the tag in each length word, without decoding
    (rlm_wificore/spool.py); a NAS-wide record (TAG_ALL) goes to every bucket. Returns
    (bucket -> frames in spool order, bytes consumed, segment ended, corrupt), live.lua's
    framing rules."""
    groups: dict[int, list[bytes]] = {}
    unpack = _U32.unpack_from
    off, size, ended, corrupt = 0, len(data), 0, 0
    while off + 4 <= size:
        (w,) = unpack(data, off)
        n = w & LEN_MASK
        if w == END or n == 0 or n > MAX_RECORD:
            ended = 1
            corrupt = int(w not in (0, END))
            break
        end = off + 4 + n
        if end > size:
            break
        tag = w >> TAG_SHIFT
        if tag == 0:
            tag = _legacy_tag(data[off + 4:end], partitions)
        if tag == TAG_ALL:
            frame = data[off:end]
            for b in range(partitions):
                groups.setdefault(b, []).append(frame)
        else:
            b = (tag - 1) % partitions
            frames = groups.get(b)
            if frames is None:
                groups[b] = [data[off:end]]
            else:
                frames.append(data[off:end])
        off = end
    return groups, off, ended, corrupt


class Forwarder:
    """Spool -> Redis: one script call per span of raw frames (split in Redis), then a
    checkpoint; with a Redis Cluster, one call per bucket of the span (one slot each)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.script = engine.redis_bg.register_script(_LIVE_LUA)
        self.cluster = isinstance(engine.redis_bg, RedisCluster)
        self.keys = Keys(engine.settings.key_prefix, engine.settings.stream_partitions)
        self.sent = 0
        self._corrupt_at: tuple[int, int] | None = None
        self.full = False  # the last span was as long as a span can be: more is waiting
        # A cluster: the span at (seg, off) whose later bucket's call failed, its length,
        # and the buckets of it already sent (the retry does not send them again).
        self._done: tuple[tuple[int, int], int, set[int]] | None = None
        # A cluster: masters that reported no connected replica (their WAIT is skipped).
        self._alone: set[str] = set()
        # One Redis: each call sets this forwarder's mark (a number per call) with its
        # records, and expects the one of the last call Redis answered. Calls Redis
        # answered stay unsettled (mark, spool position after the call, when answered)
        # until a later answer came SETTLE_S after theirs; calls that failed since the
        # last answer may have been applied all the same (tried).
        self.id = uuid.uuid4().hex[:16]
        self.calls = 0
        self.mark = ""
        self.tried: set[str] = set()
        self.unsettled: collections.deque[tuple[str, tuple[int, int], float]] = collections.deque()
        self.resent = 0  # times Redis had lost calls it had answered

    def run_once(self) -> int:
        """Forward one span; the number of records forwarded (0: spool empty)."""
        spool = self.engine.spool
        if spool is None:  # closing: detach took the spool
            return 0
        if not spool.has_pending():
            self.full = False
            if not self.cluster:
                self._settle_idle(spool)
            return 0
        span = spool.read_span(FORWARD_BYTES)
        self.full = len(span.data) == FORWARD_BYTES
        send = self._send_grouped if self.cluster else self._send
        try:
            records, consumed, ended, corrupt = send(span) if span.data else (0, 0, 0, 0)
            if span.data and not (consumed or ended) and len(span.data) == FORWARD_BYTES:
                span = spool.read_span(4 + MAX_RECORD)  # one frame larger than a span
                records, consumed, ended, corrupt = send(span)
        except _Behind as behind:
            self._lost(spool, behind.held)
            return 0
        if corrupt and (span.seg, span.off + consumed) != self._corrupt_at:
            # Nothing after it in this segment can be framed; once the writer
            # seals the segment the forwarder moves on to the next one.
            self._corrupt_at = (span.seg, span.off + consumed)
            spool.corrupt += 1
            log.error("spool_corrupt_frame", segment=span.seg, offset=span.off + consumed)
        # A cluster: let go at once (each master's replica has the records: WAIT).
        spool.advance(span, consumed, bool(ended), settle=self.cluster)
        if not self.cluster:
            self._answered(spool, time.monotonic())
        self.sent += records
        return records

    def _answered(self, spool: Spool, now: float) -> None:
        """Redis answered a call (holding every earlier mark): settle the calls answered
        SETTLE_S before."""
        self.unsettled.append((self.mark, spool.position, now))
        upto = None
        while self.unsettled and self.unsettled[0][2] <= now - SETTLE_S:
            upto = self.unsettled.popleft()[1]
        if upto is not None:
            spool.settle(upto)

    def _settle_idle(self, spool: Spool) -> None:
        """Nothing to send: once the last call is SETTLE_S old, ask Redis for the mark (one
        GET) and settle, or send again what it lost."""
        if not self.unsettled or self.unsettled[-1][2] > time.monotonic() - SETTLE_S:
            return
        raw = self.engine.redis_bg.get(self.keys.forwarded(self.id))
        held = raw.decode() if isinstance(raw, bytes) else (raw or "")
        if held != self.mark:
            self._lost(spool, held)
            return
        spool.settle(self.unsettled[-1][1])
        self.unsettled.clear()

    def _lost(self, spool: Spool, held: str) -> None:
        """Redis holds mark ``held``, not the one of the last call it answered: it lost the
        calls after ``held`` (killed before its append-only file had them). The spool is
        read again from there (records it holds again are sent again: harmless)."""
        if held in self.tried:
            # A call whose answer was lost was applied: its span (the next one) goes again.
            self.mark = held
            self.tried.clear()
            return
        at = next((i for i in range(len(self.unsettled) - 1, -1, -1) if self.unsettled[i][0] == held), None)
        if at is not None:
            position = self.unsettled[at][1]
            while len(self.unsettled) > at + 1:
                self.unsettled.pop()
        else:
            # Older than every unsettled call, or none at all (a Redis emptied or replaced):
            # from the checkpoint, the last call known to be in Redis for good.
            position = spool.settled
            self.unsettled.clear()
        self.resent += 1
        self.engine.stats.errors["spool_resent_redis_lost"] += 1
        log.warning("spool_resent_redis_lost", mark=self.mark, held=held, from_segment=position[0],
                    from_offset=position[1], segment=spool.position[0], offset=spool.position[1])
        spool.rewind(position)
        self.mark = held
        self.tried.clear()

    def _args(self, data: bytes, bucket: str, split: bool) -> list[Any]:
        s = self.engine.settings
        return [s.key_prefix, s.stream_partitions, time.time(), s.session_stale_interims,
                SESSION_TTL_S, USAGE_TTL_S, MAX_RECORD, data, 1 if split else 0, bucket]

    def _send(self, span: Span) -> list[int]:
        """One Redis: the whole span in one call, each record to its bucket's keys, and this
        forwarder's mark (:class:`_Behind` if Redis holds another one than expected)."""
        self.calls += 1
        mark = str(self.calls)
        self.tried.add(mark)
        # Nothing unsettled: nothing to send again, whatever Redis holds (its mark may have
        # expired over a long idle time): no expectation.
        expected = self.mark if self.unsettled else ""
        reply = self.script(args=[*self._args(span.data, "", self.engine.redis_roles_split),
                                  self.id, expected, mark])
        if int(reply[0]) < 0:
            held = reply[1]
            raise _Behind(held.decode() if isinstance(held, bytes) else str(held))
        self.mark = mark
        self.tried.clear()
        return reply

    def _call_replicated(self, stream: str, args: list[Any]) -> int:
        """live.lua on the master of ``stream``'s slot, then ``WAIT 1`` on the same connection
        (one pipeline to that node): the spool lets go of the records once the master's
        replica has them too, as a master killed before it replicated would lose them on
        failover (replication is asynchronous). The number of replicas that have them (0: a
        master without a live replica, after REPLICA_WAIT_MS; the records are then on the
        master alone, and the next calls to that master ask INFO for a replica instead of
        waiting on WAIT until one is back). A moved slot, a dead or demoted master: the slot map is read again
        and the error raised (the caller retries the span)."""
        client = cast(RedisCluster, self.engine.redis_bg)
        for _ in range(2):
            node = client.get_node_from_key(stream)
            conn = client.get_redis_connection(node)
            alone = node.name in self._alone
            pipe = conn.pipeline(transaction=False)
            pipe.evalsha(self.script.sha, 1, stream, *args)
            if not alone:
                pipe.execute_command("WAIT", 1, REPLICA_WAIT_MS)
            try:
                replies = pipe.execute()
                if alone:
                    # A master known to have no replica (a promoted one whose master is
                    # dead): WAIT would block REPLICA_WAIT_MS on every call, and the spool
                    # would drain at one bucket a second. Asked first; WAIT once one is back.
                    if not _has_replica(conn):
                        return 0
                    self._alone.discard(node.name)
                    acked = conn.execute_command("WAIT", 1, REPLICA_WAIT_MS)
                else:
                    acked = replies[1]
                for _try in range(REPLICA_WAIT_TRIES):
                    if int(acked):
                        break
                    if not _has_replica(conn):
                        self._alone.add(node.name)
                        break
                    # A replica that lags (a loaded machine): the records are on the master
                    # alone; the span is let go only once the replica has them (or the
                    # master has no replica left), else a kill of the master now loses them.
                    acked = conn.execute_command("WAIT", 1, REPLICA_WAIT_MS)
                return int(acked)
            except redis.exceptions.NoScriptError:
                conn.script_load(_LIVE_LUA)  # a new master (a promoted replica): load it there
            except (*REDIS_DOWN, redis.ResponseError):  # type: ignore[misc]
                client.nodes_manager.initialize()
                raise
        raise redis.exceptions.NoScriptError("live.lua: not loaded on the slot's master")

    def _send_grouped(self, span: Span) -> list[int]:
        """A Redis Cluster: the span's frames grouped by bucket, one call per bucket (its
        stream names the slot). The script never reads the cached profile there (another
        slot): the accept's interval is kept as with split roles."""
        at = (span.seg, span.off)
        data, done = span.data, set()
        if self._done is not None and self._done[0] == at:
            # The retry of a span whose call failed for a later bucket: only the bytes of
            # that attempt. The spool has grown since, and a bucket already sent would have
            # new frames in a longer span, skipped with it and let go (lost).
            data, done = data[:self._done[1]], self._done[2]
        groups, consumed, ended, corrupt = group_frames(data, self.engine.settings.stream_partitions)
        self._done = (at, len(data), done)
        records = 0
        for bucket, frames in groups.items():
            if bucket in done:
                continue
            acked = self._call_replicated(self.keys.stream(bucket),
                                          self._args(b"".join(frames), str(bucket), True))
            if not acked:
                self.engine.stats.errors["spool_forward_unreplicated"] += 1
            done.add(bucket)
            records += len(frames)
        self._done = None
        return [records, consumed, ended, corrupt]


def _forward_loop(engine: Engine) -> None:
    forwarder = Forwarder(engine)
    backoff = Backoff(first_s=0.1, max_s=2.0)
    while not engine.stopping.is_set():
        try:
            if not engine.state_redis_checked:  # Redis did not answer at start
                engine.check_state_redis(at_start=False)
            # Wait unless a whole span went: a few large calls, not many small ones.
            if not forwarder.run_once() or not forwarder.full:
                engine.stopping.wait(FORWARD_IDLE_S)
            backoff.succeeded()
        except REDIS_DOWN as exc:
            engine.stats.errors["spool_forward_redis"] += 1
            log.warning("spool_forward_waiting_for_redis", error=str(exc),
                        pending_bytes=engine.spool.pending() if engine.spool else 0)
            backoff.failed()
            backoff.wait(engine.stopping)
        except Exception as exc:  # logged and retried; the spool keeps the records
            engine.stats.errors["spool_forward"] += 1
            log.error("spool_forward_failed", error=repr(exc))
            backoff.failed()
            backoff.wait(engine.stopping)


STATE_BATCH = 500


def _confirmed(pubsub: Any, channel: str, timeout_s: float = 5.0) -> None:
    """Wait for the SUBSCRIBE's confirmation: from then on every message published on
    ``channel`` reaches this connection. TimeoutError if it does not come."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        msg = pubsub.get_message(timeout=0.5)
        if msg and msg["type"] == "subscribe":
            return
    raise redis.TimeoutError(f"no confirmation of SUBSCRIBE {channel} within {timeout_s} s")


def _caught_up(engine: Engine, mark: str) -> bool:
    """A new subscription is confirmed: apply what was announced after ``mark`` (it may have
    reached no subscription of this process) and make every live state due for a re-read
    (live.lua's messages are not logged). False if the log no longer reaches back to
    ``mark``: the caller drops everything."""
    replay = announcements.since(engine.redis_bg, engine.keys, mark)
    if replay is None:
        return False
    for message in replay[0]:
        _apply(engine, message)
    engine.invalidation.revalidate()
    if replay[0]:
        log.info("invalidation_replayed", messages=len(replay[0]))
    return True


def _apply(engine: Engine, data: bytes | str) -> None:
    try:
        engine.invalidation.apply_channel_message(data)
    except (ValueError, IndexError, TypeError) as exc:
        log.warning("bad_invalidation", error=str(exc))


def _state_loop(engine: Engine) -> None:
    """Re-read the live state of cached subscribers that the hooks found due."""
    live = engine.live
    while not engine.stopping.is_set():
        live.wait_due(0.5)
        while not engine.stopping.is_set():
            batch = live.next_batch(STATE_BATCH)
            if not batch:
                break
            try:
                live.refresh(batch)
            except Exception as exc:  # logged; the entries are queued again by the hooks
                engine.stats.errors["state_refresh"] += 1
                log.error("state_refresh_failed", error=repr(exc))


#: How often a channel listener moves its replay mark (one XREVRANGE).
MARK_EVERY_S = 2.0


def _redis_inval_loop(engine: Engine) -> None:
    """Subscribe to the invalidation channel and apply what it carries.

    After the channel was lost, the announcements logged since the listener's mark
    are replayed once the new SUBSCRIBE is confirmed (wificore/announce.py): one
    published in between reached no subscription of this process. The mark is the
    log's newest id as read one MARK_EVERY_S tick earlier, while the subscription
    was alive (so it covers only messages the open connection has delivered)."""
    backoff = Backoff(first_s=0.1, max_s=2.0)
    channel = engine.keys.invalidation_channel
    lost = False
    mark: str | None = None  # every announcement up to this log id is applied
    while not engine.stopping.is_set():
        pubsub = None
        try:
            pubsub = engine.redis_bg.pubsub(ignore_subscribe_messages=False)
            pubsub.subscribe(channel)
            _confirmed(pubsub, channel)
            newest = announcements.top(engine.redis_bg, engine.keys)
            # The first time start clean; after an outage replay what was announced
            # meanwhile, re-read the live states and keep the other profiles.
            if not (lost and mark is not None and _caught_up(engine, mark)):
                engine.invalidation.reset_all()
            lost = False
            mark, seen, mark_at = newest, newest, time.monotonic() + MARK_EVERY_S
            engine.directory.load_known(engine.redis_bg)
            backoff.succeeded()
            while not engine.stopping.is_set():
                engine.directory.flush_unknown_log()
                msg = pubsub.get_message(timeout=0.5)
                if msg and msg["type"] == "message":
                    _apply(engine, msg["data"])
                elif msg and msg["type"] == "subscribe":
                    # redis-py re-connected and re-subscribed by itself (a killed
                    # connection): what was published in between is replayed.
                    newest = announcements.top(engine.redis_bg, engine.keys)
                    if not _caught_up(engine, mark):
                        engine.invalidation.reset_all()
                    mark, seen, mark_at = newest, newest, time.monotonic() + MARK_EVERY_S
                if time.monotonic() >= mark_at:
                    mark, seen = seen, announcements.top(engine.redis_bg, engine.keys)
                    mark_at = time.monotonic() + MARK_EVERY_S
        except REDIS_DOWN as exc:
            if not lost:
                log.warning("invalidation_channel_lost", error=str(exc))
            # Nothing is cleared here: a Redis outage must not send every login to
            # the shards (each reconnect attempt used to empty the in-process tier).
            lost = True
            backoff.failed()
            backoff.wait(engine.stopping)
        except Exception as exc:
            log.error("invalidation_loop_error", error=repr(exc))
            mark = None  # what was missed is unknown: the next subscription starts clean
            backoff.failed()
            backoff.wait(engine.stopping)
        finally:
            if pubsub is not None:
                try:
                    pubsub.close()
                except Exception:
                    pass


class DirectReads:
    """The relay's own reads of the shards (the NAS directory): one direct connection per
    shard, opened when first needed, off the hooks' pools; a broken one is opened again.

    Every read has a client-side deadline (:class:`Watchdog`, ``TIMEOUT_S``): the listeners
    of every shard share these reads, and a hung shard (socket open, no answer) held one
    for good, and with it every later NAS change of every shard."""

    TIMEOUT_S = 30.0

    def __init__(self) -> None:
        self._conns: dict[str, psycopg.Connection] = {}
        self._lock = threading.Lock()
        self._watchdog = Watchdog()

    def __call__(self, shard, sql: str, params: tuple) -> list[tuple]:
        with self._lock:
            for attempt in (1, 2):
                conn = self._conns.get(shard.name)
                try:
                    if conn is None or conn.closed:
                        conn = psycopg.connect(
                            conninfo(shard.listen_dsn, int(self.TIMEOUT_S * 1000), "rlm_wificore-relay"),
                            autocommit=True, prepare_threshold=None)
                        self._conns[shard.name] = conn
                    token = self._watchdog.arm(conn, self.TIMEOUT_S)
                    try:
                        rows = conn.execute(sql, params).fetchall()
                    finally:
                        if self._watchdog.disarm(token):
                            raise DeadlineExceeded(f"shard {shard.name!r}: no answer within "
                                                   f"{self.TIMEOUT_S:.0f} s")
                    return rows
                except psycopg.OperationalError as exc:
                    self._conns.pop(shard.name, None)
                    if conn is not None:
                        conn.close()
                    if attempt == 2 or isinstance(exc, DeadlineExceeded):
                        raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._watchdog.stop()
        with self._lock:
            for conn in self._conns.values():
                conn.close()
            self._conns = {}


def _pg_listen_loop(engine: Engine, shard, tenure: threading.Event, reads: DirectReads,
                    ready: threading.Event) -> None:
    backoff = Backoff(first_s=0.1, max_s=5.0)
    info = conninfo(shard.listen_dsn, 5000, "rlm_wificore-listen")
    while not (engine.stopping.is_set() or tenure.is_set()):
        try:
            with psycopg.connect(info, autocommit=True) as conn:
                conn.execute("LISTEN wificore_inval")
                ready.set()
                backoff.succeeded()
                while not (engine.stopping.is_set() or tenure.is_set()):
                    for note in conn.notifies(timeout=0.5, stop_after=100):
                        try:
                            engine.invalidation.apply_db_notification(note.payload, shard=shard,
                                                                      query=reads)
                        except psycopg.Error as exc:  # the directory's read: next NOTIFY
                            log.warning("nas_directory_read_failed", shard=shard.name,
                                        error=str(exc).strip())
                        except Exception as exc:  # a bad payload ('{}': KeyError) must not
                            # end this shard's listener for the rest of the tenure
                            log.warning("bad_notification", shard=shard.name, error=repr(exc))
        except Exception as exc:
            if not engine.stopping.is_set():
                log.warning("listen_failed", shard=shard.name, error=str(exc).strip() or repr(exc))
                backoff.failed()
                backoff.wait(engine.stopping)


def _renew_loop(lock: RelayLock, slot: int, tenure: threading.Event, lost: threading.Event) -> None:
    """Renew the slot every RELAY_RENEW_S until the tenure ends; ``lost`` once it is not ours.

    A thread of its own, so that the relay's work (waiting for a shard that is down to
    LISTEN, a directory rebuild that meets a hung shard) cannot outlast the slot's TTL:
    the slot stays held while the other shards' changes are relayed."""
    away = False
    try:
        while not tenure.wait(RELAY_RENEW_S):
            try:
                if not lock.renew():
                    log.warning("relay_lost", slot=slot)
                    return
                away = False
            except REDIS_DOWN as exc:
                # Redis away: the tenure goes on (its listeners keep hearing the shards and
                # keep what they cannot announce); the slot is renewed, or found lost,
                # once Redis is back.
                if not away:
                    log.warning("relay_redis_away", slot=slot, error=str(exc))
                away = True
    except Exception as exc:
        log.error("relay_renew_error", error=repr(exc))
    finally:
        lost.set()


def _relay_loop(engine: Engine) -> None:
    """Hold a relay slot when one is free; while held, LISTEN on every shard."""
    backoff = Backoff(first_s=0.5, max_s=2.0)
    lock = RelayLock(engine.redis_bg, engine.keys)
    while not engine.stopping.is_set():
        try:
            engine.invalidation.flush_unsent()  # a tenure that Redis ended left some
            slot = lock.acquire()
        except REDIS_DOWN:
            backoff.failed()
            backoff.wait(engine.stopping)
            continue
        if slot is None:
            engine.stopping.wait(RELAY_RENEW_S)
            continue
        backoff.succeeded()
        tenure, lost = threading.Event(), threading.Event()
        reads = DirectReads()
        renewer = threading.Thread(target=_renew_loop, args=(lock, slot, tenure, lost),
                                   name="wificore-relay-renew", daemon=True)
        renewer.start()
        listeners = []
        try:
            alone = not lock.others_alive()
            epoch = engine.map_epoch  # a map with other shards: listen again
            log.info("relay_taken", slot=slot, alone=alone)
            readies = []
            for shard in engine.shard_map:
                ready = threading.Event()
                readies.append(ready)
                listeners.append(threading.Thread(
                    target=_pg_listen_loop, args=(engine, shard, tenure, reads, ready),
                    name=f"wificore-inval-{shard.name}", daemon=True))
            for t in listeners:
                t.start()
            ready_by = time.monotonic() + 5.0
            for ready in readies:  # listening before the directory is read: nothing missed
                ready.wait(max(0.0, ready_by - time.monotonic()))
            rebuild_at = 0.0
            while not (engine.stopping.is_set() or lost.is_set() or engine.map_epoch != epoch):
                due = (slot == 0 or alone) and time.monotonic() >= rebuild_at
                try:
                    if due or not engine.redis_bg.exists(engine.keys.nas_directory):  # evicted, flushed
                        try:
                            engine.invalidation.take_over(reads, alone=alone)
                            alone, rebuild_at = False, time.monotonic() + DIRECTORY_REBUILD_S
                        except psycopg.Error as exc:  # a shard is down: try again soon
                            log.warning("nas_directory_rebuild_failed", error=str(exc).strip())
                            rebuild_at = time.monotonic() + 5.0
                    engine.invalidation.follow_moves(reads)
                except psycopg.Error as exc:
                    log.warning("nas_directory_follow_failed", error=str(exc).strip())
                except REDIS_DOWN:
                    # Redis away: not the end of the tenure. Ending it stopped the
                    # listeners, and a change committed meanwhile was never heard: after
                    # Redis's return the processes refilled from the stale Redis copy (the
                    # renewer logs the outage; flush_unsent announces what was heard).
                    pass
                if engine.stopping.wait(RELAY_RENEW_S):
                    break
                engine.invalidation.flush_unsent()
        except REDIS_DOWN as exc:
            log.warning("relay_redis_lost", error=str(exc))
        except Exception as exc:
            log.error("relay_loop_error", error=repr(exc))
        finally:
            tenure.set()
            renewer.join(timeout=3)
            for t in listeners:
                t.join(timeout=3)
            reads.close()
            lock.release()
        backoff.failed()
        backoff.wait(engine.stopping)


def _map_loop(engine: Engine) -> None:
    """Follow the shard map file: a new valid map is taken within MapFollower.CHECK_S."""
    from wificore.shardmap import MapFollower

    if engine.shard_map.signature is None:
        return  # a map given by the caller, not read from a file
    follower = MapFollower(engine.settings.shard_map, engine.shard_map)
    while not engine.stopping.wait(MapFollower.CHECK_S):
        try:
            new = follower.take(log)
            if new is not None:
                engine.follow_map(new)
        except Exception as exc:  # logged; the map in use is kept
            log.error("shard_map_loop_error", error=repr(exc))


def start_background(engine: Engine) -> list[threading.Thread]:
    threads = [
        threading.Thread(target=_forward_loop, args=(engine,), name="wificore-spool", daemon=True),
        threading.Thread(target=_redis_inval_loop, args=(engine,), name="wificore-inval-redis",
                         daemon=True),
        threading.Thread(target=_state_loop, args=(engine,), name="wificore-state", daemon=True),
        threading.Thread(target=_relay_loop, args=(engine,), name="wificore-relay", daemon=True),
        threading.Thread(target=_map_loop, args=(engine,), name="wificore-shardmap", daemon=True),
    ]
    engine.live.refresher_started()
    for t in threads:
        t.start()
    return threads
