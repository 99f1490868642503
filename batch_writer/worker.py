"""The writer: ``run()`` = set up, loop ``run_once()`` until stopped, close in ``finally``.

One ``run_once()`` takes one batch from the first source that has work --
start-up history (our own entries from before a crash), a sweep of our pending
entries after a shard came back, entries of dead writers, then new entries --
decodes and routes it, writes each shard's part (shards in parallel threads,
each with its own connection), then dead-letters and acknowledges. Entries of a
shard that is down are simply not acknowledged: they stay in our pending list,
the other shards go on, and a sweep drains them after the shard answers again.

A signal only sets the stop flag: the batch being read is cut short, written,
committed and acknowledged, then ``run()`` returns.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any

import redis

from wificore import roles
from wificore.backoff import Backoff
from wificore.errors import DecodeError, UnknownTenant
from wificore.keys import Keys
from wificore.log import get_logger
from wificore.settings import Settings
from wificore.shardmap import MapFollower, ShardMap

from . import stats as st
from .config import WriterConfig
from .merge import Item, Outcome, ShardWriter
from .records import Acct, Auth, Limits, Rejected, decode
from .streams import Entry, Streams

log = get_logger("batch_writer")

MEASURE_INTERVAL_S = 5.0
#: How long a batch waits for a shard that was down when the batch was submitted
#: (its retry): a shard that answers again answers in far less; one that does not
#: must not hold up the others. The retry goes on in its thread; its entries stay
#: pending and are swept once it is up.
PROBE_WAIT_S = 0.5
WAIT_TICK_S = 0.1
#: An entry of ours pending this long while no shard is down was delivered to us without
#: reaching us (Streams.unsure): swept. Checked every claim_interval_s.
LOST_IDLE_MS = 5_000
#: After a failed read, the sweep of our pending entries waits this long (a master that
#: is away fails every pass until its replica has taken over).
UNSURE_SWEEP_S = 1.0


#: Young-generation threshold of the cyclic GC in a writer process (CPython's default: 700).
GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """Set up the collector for a writer process (the service and the benchmark call it).

    A batch allocates tens of thousands of short-lived objects, none in a cycle
    (reference counting frees them), and with the default threshold of 700 each
    batch ran dozens of collections, each walking every young object and, now and
    then, the whole heap. ``gc.freeze()`` leaves what exists at start-up (modules,
    settings) out of every later collection; a larger young generation makes
    collections rare. Measured with benchmarks/writer_bench.py: see docs/batch-writer.md.
    """
    gc.freeze()
    _gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


@dataclasses.dataclass
class _Batch:
    """One batch between decoding and acknowledgement."""

    size: int
    started: float
    to_ack: list[Entry] = dataclasses.field(default_factory=list)
    dead: list[tuple[Entry, str, str]] = dataclasses.field(default_factory=list)
    by_shard: dict[str, list[Item]] = dataclasses.field(default_factory=dict)
    futures: dict[str, Future[Outcome]] = dataclasses.field(default_factory=dict)
    probes: set[str] = dataclasses.field(default_factory=set)  # shards that were down at submission


class Writer:
    """Moves records from the stream partitions into the shards."""

    def __init__(self, settings: Settings, cfg: WriterConfig, *, burst: bool = False,
                 shard_map: ShardMap | None = None, redis_client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.cfg = cfg
        self.burst = burst
        self.map = shard_map or ShardMap.load(settings.shard_map)
        # A new map written to the file is followed without a restart (a map given
        # by the caller, not read from a file, is not).
        self._follower = (MapFollower(settings.shard_map, self.map)
                          if self.map.signature is not None else None)
        self._next_map_check = time.monotonic() + MapFollower.CHECK_S
        self.keys = Keys(settings.key_prefix, settings.stream_partitions)
        timeout_s = cfg.redis_timeout_ms / 1000
        self.redis = redis_client or roles.client(  # the state Redis (roles.py; a cluster URL too)
            roles.redis_url(settings, roles.STATE), socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            health_check_interval=30)
        self.streams = Streams(self.redis, self.keys, partitions=settings.stream_partitions,
                               group=cfg.group, consumer=cfg.consumer, dead_maxlen=cfg.dead_maxlen)
        self.shards = {s.name: ShardWriter(s, cfg) for s in self.map}
        self.stats = st.WriterStats(shards_down={name: False for name in self.shards})
        self.stopping = threading.Event()
        # Threads are started as needed; shards added by a new map get theirs.
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.shards)) + 16,
                                        thread_name_prefix="wificore-shard")
        self._ready = False
        self._needs_sweep: set[str] = set()
        self._sweep_shards: set[str] = set()
        self._sweep_failed: set[str] = set()
        self._caught_up = False
        self._idle = False
        self._resweep = False
        self._inflight: _Batch | None = None
        # The last job submitted per shard: while it runs (a hung shard), the shard
        # gets nothing new; its entries stay pending. At most one thread per shard.
        self._running: dict[str, Future[Any]] = {}
        self._stale: dict[str, Future[int]] = {}  # stale closes not collected yet (close_stale)
        self._metrics_server: Any = None
        now = time.monotonic()
        self._next_beat = now
        self._next_claim = now + cfg.claim_interval_s
        self._next_stale = now + cfg.stale_interval_s
        self._next_measure = now
        self._next_dead_alarm = 0.0
        self._next_unsure_sweep = now

    # ------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        """Ask the loop to finish the current batch and return (signal-safe)."""
        self.stopping.set()

    def setup(self) -> None:
        """Groups, heartbeat, history re-read, metrics. Idempotent; Redis errors propagate."""
        if self._ready:
            return
        self.streams.ensure_groups()
        self.streams.start_history()
        self._beat()
        if self.cfg.metrics_port and self._metrics_server is None:
            from . import metrics
            self._metrics_server = metrics.serve(self.stats, self.cfg.metrics_addr, self.cfg.metrics_port)
        self._ready = True
        log.info("writer_started", consumer=self.cfg.consumer, group=self.cfg.group,
                 partitions=len(self.streams.names), shards=sorted(self.shards),
                 metrics_port=self.cfg.metrics_port or None)

    def run(self) -> int:
        """Loop until stopped (or, in burst mode, until there is nothing left); 0 on a clean stop."""
        backoff = Backoff(first_s=0.1, max_s=float(self.cfg.backoff_max_s))
        try:
            while not self.stopping.is_set():
                try:
                    n = self.run_once()
                except redis.RedisError as exc:
                    self.stats.redis_errors += 1
                    if "NOGROUP" in str(exc):
                        self._ready = False  # the stream or group was deleted: create it again
                    log.warning("redis_failed", error=str(exc), retry_in_s=round(backoff.failed(), 2))
                    self.streams.refresh_topology()
                    backoff.wait(self.stopping)
                    continue
                except Exception as exc:  # a failing batch never kills the loop
                    self.stats.loop_errors += 1
                    log.exception("loop_failed", error=str(exc), retry_in_s=round(backoff.failed(), 2))
                    backoff.wait(self.stopping)
                    continue
                backoff.succeeded()
                if self.burst and n == 0 and self.idle():
                    break
        finally:
            self.close()
        return 0

    def close(self) -> None:
        """Finish the batch in flight, then release everything; the heartbeat goes at once
        so --check turns red."""
        try:
            self.flush()
        except Exception as exc:  # its entries stay pending: the next start re-reads them
            log.warning("final_batch_failed", error=str(exc))
        try:
            self.streams.forget_heartbeat()
        except redis.RedisError:
            pass
        for name, fut in self._running.items():
            if not fut.done():
                self.shards[name].abort()  # a hung shard must not hold up the exit
        self._pool.shutdown(wait=True)
        for w in self.shards.values():
            w.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        self.redis.close()
        log.info("writer_stopped", consumer=self.cfg.consumer, **self.stats.summary())

    def idle(self) -> bool:
        """Nothing new, nothing in flight, nothing of ours to re-read, no shard waiting to be
        drained (burst mode)."""
        waiting = {n for n in self._needs_sweep if not self.shards[n].down}
        return (self._idle and self._inflight is None and not self._resweep
                and not self.streams.history_pending and not self.streams.sweeping and not waiting)

    # ------------------------------------------------------------- one step
    def run_once(self) -> int:
        """Housekeeping when due, then one batch; the number of entries taken.

        With ``pipeline`` on, the batch is left writing in the shard threads while
        the next call reads and decodes the next one (its entries are acknowledged
        by that call, or by :meth:`flush`); with it off, it is done on return.
        """
        self.setup()
        self._watch_busy()
        if self._follower is not None and time.monotonic() >= self._next_map_check:
            self._next_map_check = time.monotonic() + MapFollower.CHECK_S
            self.follow_map()
        if self._housekeeping_due():
            self.flush()  # housekeeping uses the shard connections
            self._housekeeping()
        entries = self._next_entries()
        batch = self._prepare(entries) if entries else None
        self.flush()
        if batch is not None:
            self._submit(batch)
            if not self.cfg.pipeline:
                self.flush()
        return len(entries)

    def follow_map(self) -> bool:
        """Take a new shard map from the file (MapFollower); True if one was taken.

        Shards new to the map get a ShardWriter; a shard whose writer DSN changed gets a
        new one once its last job has returned. Routing uses the new map from the next
        batch on; records of a tenant that moved and were deferred by its fence are
        swept again and routed by it."""
        assert self._follower is not None
        new = self._follower.take(log)
        if new is None:
            return False
        for shard in new:
            old = self.shards.get(shard.name)
            if old is not None and old.shard.writer_dsn == shard.writer_dsn:
                old.shard = shard
                continue
            if old is not None:
                if self._busy(shard.name):
                    self._follower.seen = None  # again at the next check
                    return False
                old.close()
            self.shards[shard.name] = ShardWriter(shard, self.cfg)
            self.stats.shards_down.setdefault(shard.name, False)
        self.map.replace(new)
        self._needs_sweep |= {s.name for s in new}  # fenced records: routed again now
        for w in self.shards.values():
            w.fence_backoff.succeeded()
        log.info("shard_map_followed", shards=[s.name for s in new], placed=len(new.placed))
        return True

    def process(self, entries: list[Entry]) -> None:
        """Decode, route, write, dead-letter and acknowledge ``entries``; done on return."""
        self.flush()
        self._submit(self._prepare(entries))
        self.flush()

    def flush(self) -> None:
        """Finish the batch in flight: wait for its shards, dead-letter, acknowledge."""
        batch, self._inflight = self._inflight, None
        if batch is None:
            return
        try:
            outcomes = self._wait_outcomes(batch)
            self._complete(batch, outcomes)
        except BaseException:
            # Whatever was not acknowledged is still in our pending list: re-read it.
            self._resweep = True
            raise

    def _next_entries(self) -> list[Entry]:
        cfg = self.cfg
        self._idle = False
        if self.streams.history_pending:
            self.flush()
            got = self.streams.read_history(max_rows=cfg.batch_max_rows)
            if got:
                return got
        # A sweep starts when a shard that missed entries answers again (its backoff
        # is over), or after a batch whose acknowledgement may not have reached Redis.
        ready = {n for n in self._needs_sweep if self.shards[n].retry_ready() and not self._busy(n)}
        if self.streams.unsure and not self.streams.sweeping and time.monotonic() >= self._next_unsure_sweep:
            # A read failed (a master away): what it delivered to us is in our pending list.
            self.streams.unsure = False
            self._next_unsure_sweep = time.monotonic() + UNSURE_SWEEP_S
            self._resweep = True
        if not self.streams.sweeping and (ready or self._resweep):
            self.flush()
            self.streams.start_sweep()
            self._sweep_shards, self._sweep_failed = ready, set()
            self._resweep = False
        if self.streams.sweeping and self._sweep_shards and self._sweep_shards <= self._sweep_failed:
            # Every shard this pass was for is down again: paging on would only hold
            # up the healthy shards' new entries. The next backoff expiry starts over.
            self.streams.stop_sweep()
            self._sweep_shards = set()
        if self.streams.sweeping:
            self.flush()  # our in-flight entries are in the pending list too
            got, finished = self.streams.read_own_pending(max_rows=cfg.batch_max_rows)
            if finished:
                # Shards that took every entry of the pass have nothing left behind.
                self._needs_sweep -= self._sweep_shards - self._sweep_failed
                self._sweep_shards = set()
            if got:
                return got
        if time.monotonic() >= self._next_claim:
            self._next_claim = time.monotonic() + cfg.claim_interval_s
            if not self.streams.sweeping:
                self.flush()  # the batch in flight is acknowledged (or deferred) first
                if not self._needs_sweep and self.streams.own_stale(LOST_IDLE_MS):
                    # Delivered to us but never returned by a read (redis-py retried a
                    # timed-out XREADGROUP, a master died before its reply): `>` never
                    # gives it again. The sweep starts with the next batch.
                    log.warning("own_pending_lost", idle_ms=LOST_IDLE_MS)
                    self._resweep = True
            got = self.streams.claim_dead(max_rows=cfg.batch_max_rows, min_idle_ms=cfg.claim_min_idle_ms)
            if got:
                self.stats.claimed += len(got)
                log.info("claimed_entries", count=len(got))
                return got
        got = self.streams.read_new(max_rows=cfg.batch_max_rows, max_age_ms=cfg.batch_max_age_ms,
                                    stop=self.stopping)
        self._caught_up = len(got) < cfg.batch_max_rows
        self._idle = not got
        return got

    def limits(self) -> Limits:
        """What counts as absurd for records decoded now."""
        return Limits(now=time.time(), max_age_s=self.cfg.max_event_age_s,
                      max_ahead_s=self.cfg.max_event_ahead_s,
                      default_interim_s=self.settings.default_interim_s)

    def _prepare(self, entries: list[Entry]) -> _Batch:
        """Decode and route (CPU only: overlaps the shards' work on the previous batch)."""
        batch = _Batch(size=len(entries), started=time.perf_counter())
        limits = self.limits()
        shard_for = self.map.shard_for
        for e in entries:
            if e.deleted:
                batch.to_ack.append(e)  # gone from the stream: nothing left to write
                continue
            # e.deliveries (XPENDING's count) is not looked at: restarts, claims and
            # sweeps during an outage raise it, and none of them is the record's fault.
            # Only failures of the record itself dead-letter it (merge.ShardWriter).
            try:
                rec = decode(e.payload, limits)
            except DecodeError as exc:
                batch.dead.append((e, st.DEAD_DECODE, str(exc)))
                continue
            except Rejected as exc:
                batch.dead.append((e, st.DEAD_INVALID, str(exc)))
                continue
            try:
                shard = shard_for(rec.tenant_id)
            except UnknownTenant as exc:
                batch.dead.append((e, st.DEAD_UNKNOWN_TENANT, str(exc)))
                continue
            batch.by_shard.setdefault(shard.name, []).append(Item(e, rec))
        return batch

    def _submit(self, batch: _Batch) -> None:
        """Start the shards' writes (in parallel threads: the wait is the servers')."""
        for name, items in batch.by_shard.items():
            running = self._running.get(name)
            if running is not None and not running.done():
                # The shard's last job has not returned (hung shard, cut at its
                # deadline): nothing new for it; the entries stay pending.
                done: Future[Outcome] = Future()
                done.set_result(Outcome(deferred=list(items), error=self.shards[name].last_error
                                        or "the shard's last job has not returned yet"))
                batch.futures[name] = done
                continue
            if self.shards[name].down:
                batch.probes.add(name)
            batch.futures[name] = self._running[name] = self._pool.submit(self.shards[name].write, items)
        self._inflight = batch

    def _watch_busy(self) -> None:
        """Cut the round trip of a shard job nobody waits for any more (a retry left
        running by _wait_outcomes) once it passes the deadline."""
        deadline_s = float(self.cfg.shard_deadline_s)
        for name in self._running:
            if self._busy(name) and self.shards[name].abort_if_overdue(deadline_s):
                log.warning("shard_deadline_exceeded", shard=name, deadline_s=deadline_s)
        if self._stale:
            self._collect_stale()

    def _busy(self, name: str) -> bool:
        """True while the shard's last job (a write or a close) has not returned."""
        running = self._running.get(name)
        return running is not None and not running.done()

    def _wait_outcomes(self, batch: _Batch) -> dict[str, Outcome]:
        """Each shard's outcome, never waiting on a hung shard past its deadline.

        A round trip older than ``shard_deadline_s`` is cut (``ShardWriter.abort``:
        the thread gets a connection error and returns). A shard that was down at
        submission gets PROBE_WAIT_S; if its retry has not returned by then, its
        entries stay pending (the retry goes on in its thread) and the batch goes on
        without it.
        """
        deadline_s = float(self.cfg.shard_deadline_s)
        probe_until = time.monotonic() + PROBE_WAIT_S
        outcomes: dict[str, Outcome] = {}
        while True:
            waiting = {n: f for n, f in batch.futures.items() if n not in outcomes}
            for n, f in list(waiting.items()):
                if f.done():
                    outcomes[n] = f.result()
                    del waiting[n]
            if not waiting:
                return outcomes
            for n in waiting:
                if self.shards[n].abort_if_overdue(deadline_s):
                    log.warning("shard_deadline_exceeded", shard=n, deadline_s=deadline_s)
            if time.monotonic() >= probe_until and set(waiting) <= batch.probes:
                break
            wait_futures(list(waiting.values()), timeout=WAIT_TICK_S, return_when=FIRST_COMPLETED)
        for n in waiting:
            outcomes[n] = Outcome(deferred=list(batch.by_shard[n]),
                                  error=self.shards[n].last_error or "retry still running")
        return outcomes

    def _complete(self, batch: _Batch, outcomes: dict[str, Outcome]) -> None:
        to_ack, dead = batch.to_ack, batch.dead
        for name, out in outcomes.items():
            to_ack += [it.ref for it in out.done]
            dead += [(it.ref, cls, reason) for it, cls, reason in out.rejected]
            self._account(name, out)
        if dead:
            self.streams.dead_letter([(e, reason) for e, _cls, reason in dead])
            for e, cls, reason in dead:
                self.stats.dead_letters[cls] += 1
                log.warning("dead_letter", source=e.source, reason_class=cls, reason=reason)
        self.stats.acked += self.streams.ack(to_ack)
        self.stats.batches += 1
        self.stats.batch_rows.observe(batch.size)
        seconds = time.perf_counter() - batch.started
        self.stats.batch_seconds.observe(seconds)
        self.stats.recent_batch_seconds.append(seconds)

    def _account(self, name: str, out: Outcome) -> None:
        now = time.time()
        ages, recent = self.stats.record_age_seconds, self.stats.recent_record_ages
        for it in out.done:
            rec = it.record
            if isinstance(rec, Acct):
                self.stats.records[rec.status] += 1
                received = rec.arrival_ts
                if rec.counter_flags:
                    self.stats.note_counter_flags(rec.counter_flags)
                if received:
                    self.stats.nas_clock_skew.observe(abs(rec.event_ts - received))
            else:
                self.stats.records["auth"] += 1
                received = rec.ts
            if received:
                ages.observe(now - received)
                recent.append(now - received)
        self.stats.sessions_merged[name] += out.merged_rows
        if out.fenced:
            self.stats.fenced[name] += out.fenced
        if out.closed:
            self.stats.sessions_closed["nas-restart"] += out.closed
        was_down = self.stats.shards_down.get(name, False)
        if out.auth_error:
            self.stats.auth_log_errors[name] += 1
            log.warning("auth_log_write_failed", shard=name, error=out.auth_error,
                        pending=sum(isinstance(it.record, Auth) for it in out.deferred))
        if out.deferred:
            self._needs_sweep.add(name)
            self._sweep_failed.add(name)
            self.stats.shards_down[name] = self.shards[name].down
            if out.attempted and len(out.deferred) > out.fenced:
                self.stats.shard_errors[name] += 1
            if not was_down and self.shards[name].down:
                log.warning("shard_down", shard=name, error=out.error, pending=len(out.deferred))
        else:
            self.stats.shards_down[name] = False
            if was_down:
                log.info("shard_up", shard=name)

    # --------------------------------------------------------- housekeeping
    def _housekeeping_due(self) -> bool:
        now = time.monotonic()
        return now >= self._next_beat or now >= self._next_measure or now >= self._next_stale

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now >= self._next_beat:
            self._next_beat = now + max(1.0, self.cfg.heartbeat_ttl_s / 3)
            self._beat()
        if now >= self._next_measure:
            self._next_measure = now + MEASURE_INTERVAL_S
            lag, pending, dead_len = self.streams.measure_and_trim()
            self.stats.stream_lag, self.stats.stream_pending = lag, pending
            self.stats.dead_letter_length = dead_len
            self._check_dead_bound(dead_len)
        if now >= self._next_stale:
            self._next_stale = now + self.cfg.stale_interval_s
            self.close_stale(wait_s=PROBE_WAIT_S)

    def _check_dead_bound(self, dead_len: int) -> None:
        """The dead-letter stream is never trimmed: past dead_maxlen, raise the alarm."""
        over = dead_len >= self.cfg.dead_maxlen
        if over and time.monotonic() >= self._next_dead_alarm:
            self._next_dead_alarm = time.monotonic() + 60
            log.error("dead_letter_stream_over_bound", length=dead_len, bound=self.cfg.dead_maxlen,
                      hint="wificore-admin deadletter list / replay; nothing is trimmed")
        self.stats.dead_letter_over_bound = over

    def _beat(self) -> None:
        self.streams.beat(self.cfg.heartbeat_ttl_s, {"ts": round(time.time(), 3), "pid": os.getpid(),
                                                     "acked": self.stats.acked,
                                                     "shards_down": self.stats.summary()["shards_down"]})

    def close_stale(self, wait_s: float | None = None) -> int:
        """Close silent sessions on every shard that is up and has no backlog of ours.

        Each shard's close runs in its thread, all at once; this waits for them at
        most ``wait_s`` (None: until each has returned, its round trips still cut at
        ``shard_deadline_s``). A close still running then is left to its thread, like
        a retry: the shard gets nothing new until it returns (its entries stay
        pending), :meth:`_watch_busy` cuts it at the deadline, and a later call
        collects it -- a shard whose close waits on a lock never holds up the others.
        The number closed by the closes collected.
        """
        if self._caught_up:
            # Not caught up: interims may still be waiting in the stream, and closing
            # now would close sessions whose proof of life is on its way.
            for name, w in self.shards.items():
                if w.down or name in self._needs_sweep or self._busy(name):
                    continue
                self._stale[name] = self._running[name] = self._pool.submit(w.close_stale, self.cfg.stale_grace_s)
        deadline_s = float(self.cfg.shard_deadline_s)
        until = None if wait_s is None else time.monotonic() + wait_s
        while True:
            running = [f for f in self._stale.values() if not f.done()]
            if not running or (until is not None and time.monotonic() >= until):
                break
            for name, fut in self._stale.items():
                if not fut.done():
                    self.shards[name].abort_if_overdue(deadline_s)
            wait_futures(running, timeout=WAIT_TICK_S, return_when=FIRST_COMPLETED)
        return self._collect_stale()

    def _collect_stale(self) -> int:
        """Account for the stale closes that have returned; the number they closed."""
        total = 0
        for name, fut in list(self._stale.items()):
            if not fut.done():
                continue
            del self._stale[name]
            try:
                n = fut.result()
            except Exception as exc:  # the next pass tries again
                self.stats.shard_errors[name] += 1
                log.warning("stale_close_failed", shard=name, error=str(exc))
                continue
            if n:
                self.stats.sessions_closed["stale"] += n
                log.info("stale_sessions_closed", shard=name, count=n)
            total += n
        return total
