"""The CoA sidecar's loop: jobs from the state Redis to the NAS, every attempt recorded.

* **Jobs** (wificore/coa_jobs.py) come from the stream ``Keys.coa_jobs`` through the
  consumer group ``WIFICORE_COA_GROUP``: a job is acknowledged (and deleted) once each
  of its sessions got an ACK, a NAK or its last timeout, so a job taken and not
  finished before a stop or a crash is sent again (by this consumer at its start, by
  another after ``claim_min_idle_ms``).
* **Sessions** of a job: the open rows of the tenant's shard that the live state still
  holds (``coa_jobs.open_sessions`` / ``live_only``); for one subscriber, a live
  session whose row the writer has not written yet is waited for (``resolve_wait_ms``).
* **Sending**: one UDP socket per request to the NAS's address and CoA port, the
  request retransmitted unchanged after each ``timeout_ms`` up to ``max_attempts``;
  every attempt is a row of ``coa_attempts`` in the tenant's shard. Requests run on a
  bounded pool, so a silent NAS holds one worker for at most timeout x attempts and
  the other jobs go on.
* **Dedupe**: before a Disconnect the session's ``Keys.coa_done`` is set (NX, value
  the job id, ``dedupe_ttl_s``); a second job for the same session meanwhile is
  skipped (counted as deduped), the same job delivered again is not. A Disconnect
  that ends without an ACK clears it, so a later trigger tries again.
"""

from __future__ import annotations

import collections
import concurrent.futures
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import redis

from rlm_wificore import policy
from wificore import coa_jobs, roles
from wificore.coa_jobs import LiveSession
from wificore.errors import UnknownTenant
from wificore.keys import Keys
from wificore.log import get_logger
from wificore.settings import Settings
from wificore.shardmap import MapFollower, ShardMap

from . import radius
from .config import CoaConfig
from .stats import CoaStats

log = get_logger("coa_sender")

#: Jobs taken from the stream and not finished (running or waiting for their tenant's
#: turn), at most: a tenant's flood of jobs must not keep the others' from being read.
QUEUED_MAX = 10_000
READ_COUNT = 500
CLAIM_EVERY_S = 10.0
RESOLVE_POLL_S = 0.2


def _unverified(count: int) -> str | None:
    if not count:
        return None
    return (f"{count} answer(s) from the NAS with a wrong authenticator or Message-Authenticator, "
            "ignored: is the NAS's secret the one in `nas list`?")


class Shards:
    """One connection per shard and thread (autocommit; every statement under a
    statement_timeout, SET LOCAL, which holds behind PgBouncer)."""

    def __init__(self, shard_map: ShardMap, timeout_ms: int) -> None:
        self.map = shard_map
        self.timeout_ms = timeout_ms
        self.local = threading.local()

    def run(self, tenant_id: int, fn: Callable[[psycopg.Connection], Any]) -> Any:
        shard = self.map.shard_for(tenant_id)
        conns: dict[tuple[str, str], psycopg.Connection] = self.local.__dict__.setdefault("conns", {})
        key = (shard.name, shard.writer_dsn or shard.dsn)  # a new map may give a shard another DSN
        conn = conns.get(key)
        if conn is None or conn.closed:
            # prepare_threshold=None: PgBouncer (transaction pooling) hands each transaction
            # any server connection, where a prepared statement may exist or not.
            conn = psycopg.connect(shard.writer_dsn or shard.dsn, autocommit=True, prepare_threshold=None,
                                   connect_timeout=max(2, self.timeout_ms // 1000))
            conns[key] = conn
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL statement_timeout = {int(self.timeout_ms)}")
                return fn(conn)
        except psycopg.OperationalError:
            conns.pop(key, None)
            conn.close()
            raise


class Sidecar:
    def __init__(self, settings: Settings, cfg: CoaConfig, *, shard_map: ShardMap | None = None) -> None:
        self.settings = settings
        self.cfg = cfg
        self.keys = Keys(settings.key_prefix, settings.stream_partitions)
        timeout_s = cfg.redis_timeout_ms / 1000
        self.redis = redis.Redis.from_url(roles.redis_url(settings, roles.STATE), socket_timeout=timeout_s,
                                          socket_connect_timeout=timeout_s)
        self.shards = Shards(shard_map or ShardMap.load(settings.shard_map), cfg.db_timeout_ms)
        # A new map written to the file (a tenant move) is followed without a restart, as
        # radiusd and the writer follow it (a map given by the caller is not).
        self._follower = (MapFollower(settings.shard_map, self.shards.map)
                          if shard_map is None and self.shards.map.signature is not None else None)
        self._next_map_check = 0.0
        self.stats = CoaStats()
        # One tenant's trouble (a silent NAS behind thousands of sessions, a flood of jobs)
        # costs that tenant's turn only: a tenant has at most `share` jobs running, a job at
        # most `share` requests in flight, and the sending threads are enough for every
        # running job's requests, so a request never queues behind another tenant's.
        self.share = max(1, cfg.workers // 4)
        self.jobs = concurrent.futures.ThreadPoolExecutor(cfg.workers, thread_name_prefix="coa-job")
        self.sends = concurrent.futures.ThreadPoolExecutor(cfg.workers * self.share,
                                                           thread_name_prefix="coa-send")
        self.inflight: set[str] = set()
        #: Jobs taken, by tenant, waiting for a turn; the tenants with waiting jobs in turn
        #: order; jobs running by tenant, and in all.
        self.waiting: dict[int, collections.deque[tuple[str, dict[str, str]]]] = {}
        self.turns: collections.deque[int] = collections.deque()
        self.running: collections.Counter[int] = collections.Counter()
        self.running_total = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.quota: Any = None

    # ------------------------------------------------------------------ the loop
    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(self.keys.coa_jobs, self.cfg.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> int:
        """Until :meth:`stop`: read, claim, dispatch. Jobs in flight are finished (each
        bounded by its timeouts) before it returns 0."""
        if self.cfg.quota_check:
            from .quota import QuotaWatcher
            self.quota = QuotaWatcher(self)
            self.quota.start()
        # First this consumer's own unfinished jobs (a restart), paged once from "0", then new ones.
        backlog: str | None = "0"
        grouped = False
        last_claim = 0.0
        while not self.stopping.is_set():
            try:
                self.follow_map()
                if not grouped:
                    self.ensure_group()
                    grouped = True
                room = min(READ_COUNT, QUEUED_MAX - len(self.inflight))
                if room <= 0:
                    time.sleep(0.05)
                    continue
                entries: list[Any] = []
                if time.monotonic() - last_claim > CLAIM_EVERY_S:
                    last_claim = time.monotonic()
                    claimed = self.redis.xautoclaim(self.keys.coa_jobs, self.cfg.group, self.cfg.consumer,
                                                    self.cfg.claim_min_idle_ms, "0-0", count=room)
                    entries += claimed[1] if claimed else []
                reply: Any = self.redis.xreadgroup(self.cfg.group, self.cfg.consumer,
                                                   {self.keys.coa_jobs: backlog or ">"}, count=room,
                                                   block=None if backlog else self.cfg.block_ms)
                got = reply[0][1] if reply else []
                if backlog is not None:
                    backlog = got[-1][0] if got else None  # the next page, or done
                entries += got
                for entry_id, fields in entries:
                    self.dispatch(entry_id, fields)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self.stats.errors["redis"] += 1
                log.warning("coa_redis_unavailable", error=str(exc))
                self.stopping.wait(1.0)
            except redis.ResponseError as exc:  # NOGROUP: the stream was deleted (a flush)
                grouped, backlog = False, "0"
                self.stats.errors["redis"] += 1
                log.warning("coa_group_lost", error=str(exc))
                self.stopping.wait(1.0)
            except Exception as exc:  # noqa: BLE001 - the loop must go on
                self.stats.errors["loop"] += 1
                log.error("coa_loop_error", error=repr(exc))
                self.stopping.wait(1.0)
        if self.quota is not None:
            self.quota.stop()
        self.jobs.shutdown(wait=True)
        self.sends.shutdown(wait=True)
        return 0

    def follow_map(self) -> bool:
        """Take a new shard map from the file, at most every MapFollower.CHECK_S; True if taken."""
        if self._follower is None or time.monotonic() < self._next_map_check:
            return False
        self._next_map_check = time.monotonic() + MapFollower.CHECK_S
        new = self._follower.take(log)
        if new is None:
            return False
        self.shards.map.replace(new)
        log.info("shard_map_followed", shards=[s.name for s in new], placed=len(new.placed))
        return True

    def dispatch(self, entry_id: Any, fields: Any) -> None:
        job_id = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        if not fields:  # deleted meanwhile (claimed after an XDEL)
            self.redis.xack(self.keys.coa_jobs, self.cfg.group, job_id)
            return
        with self.lock:
            if job_id in self.inflight:
                return
            self.inflight.add(job_id)
        job = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
               for k, v in fields.items()}
        try:
            tenant_id = int(job.get("tenant", ""))
        except ValueError:
            tenant_id = -1  # a bad job: handle() says so
        with self.lock:
            queue = self.waiting.get(tenant_id)
            if queue is None:
                queue = self.waiting[tenant_id] = collections.deque()
                self.turns.append(tenant_id)
            queue.append((job_id, job))
        self._start_ready()

    def _start_ready(self) -> None:
        """Start waiting jobs, tenants in turn, while threads are free and each tenant
        has fewer than ``share`` running."""
        ready: list[tuple[int, str, dict[str, str]]] = []
        with self.lock:
            progress = True
            while progress and self.running_total < self.cfg.workers:
                progress = False
                for _ in range(len(self.turns)):
                    if self.running_total >= self.cfg.workers:
                        break
                    tenant_id = self.turns.popleft()
                    queue = self.waiting[tenant_id]
                    if self.running[tenant_id] < self.share:
                        job_id, job = queue.popleft()
                        self.running[tenant_id] += 1
                        self.running_total += 1
                        ready.append((tenant_id, job_id, job))
                        progress = True
                    if queue:
                        self.turns.append(tenant_id)
                    else:
                        del self.waiting[tenant_id]
        for tenant_id, job_id, job in ready:
            self.jobs.submit(self._job_task, job_id, job, tenant_id)

    def _job_task(self, job_id: str, job: dict[str, str], tenant_id: int) -> None:
        try:
            self.handle(job_id, job)
            self.redis.xack(self.keys.coa_jobs, self.cfg.group, job_id)
            self.redis.xdel(self.keys.coa_jobs, job_id)
            self.stats.jobs[job.get("op", "?")] += 1
        except (ValueError, KeyError, UnknownTenant) as exc:
            # A job that can never be done: logged, acknowledged, deleted.
            self.stats.errors["bad_job"] += 1
            log.error("coa_bad_job", job=job_id, error=repr(exc))
            try:
                self.redis.xack(self.keys.coa_jobs, self.cfg.group, job_id)
                self.redis.xdel(self.keys.coa_jobs, job_id)
            except redis.RedisError:
                pass
        except Exception as exc:  # noqa: BLE001 - left pending: taken again (restart, claim)
            self.stats.errors["job"] += 1
            log.warning("coa_job_failed", job=job_id, error=repr(exc))
        finally:
            with self.lock:
                self.inflight.discard(job_id)
                self.running[tenant_id] -= 1
                if self.running[tenant_id] <= 0:
                    del self.running[tenant_id]
                self.running_total -= 1
            if not self.stopping.is_set():
                self._start_ready()

    # ------------------------------------------------------------------- jobs
    def handle(self, job_id: str, job: dict[str, str]) -> None:
        op, tenant_id, reason = job["op"], int(job["tenant"]), job.get("reason", "operator")
        user = job.get("user")
        if op == "disconnect":
            sessions = self.resolve_user(tenant_id, str(user), job.get("session"))
            self.send_all(job_id, tenant_id, sessions, "disconnect", reason, lambda s: [])
        elif op == "disconnect_tenant":
            self.send_many(job_id, job, tenant_id, None, "disconnect", reason, lambda s: [])
        elif op == "coa":
            if user is not None:
                sessions = self.resolve_user(tenant_id, user, None)
                rate = self.shards.run(tenant_id, lambda c: c.execute(
                    "SELECT p.rate_up_kbps, p.rate_down_kbps FROM subscribers s JOIN plans p "
                    "USING (tenant_id, plan_id) WHERE s.tenant_id = %s AND s.username = %s",
                    (tenant_id, user)).fetchone())
            else:
                plan_id = int(job["plan"])
                sessions = []
                rate = self.shards.run(tenant_id, lambda c: c.execute(
                    "SELECT rate_up_kbps, rate_down_kbps FROM plans WHERE tenant_id = %s AND plan_id = %s",
                    (tenant_id, plan_id)).fetchone())
            if rate is None:
                return  # the subscriber or plan is gone: nothing to re-rate
            up, down = rate[0] or 0, rate[1] or 0

            def attrs(s: LiveSession) -> list[radius.Attr]:
                return radius.rendered(policy.rate_pairs(s.vendor, up, down))
            if user is not None:
                self.send_all(job_id, tenant_id, sessions, "coa", reason, attrs)
            else:
                self.send_many(job_id, job, tenant_id, int(job["plan"]), "coa", reason, attrs)
        else:
            raise ValueError(f"unknown op {op!r}")

    def resolve_user(self, tenant_id: int, username: str, acct_session_id: str | None) -> list[LiveSession]:
        """The subscriber's live sessions; a live one without its row yet (the writer's
        lag) is waited for, up to resolve_wait_ms."""
        deadline = time.monotonic() + self.cfg.resolve_wait_ms / 1000
        while True:
            live = set(coa_jobs.live_keys(self.redis, self.keys, tenant_id, username))
            rows = self.shards.run(tenant_id, lambda c: coa_jobs.open_sessions(
                c, tenant_id, username=username, acct_session_id=acct_session_id))
            found = [s for s in rows if s.session_key in live]
            missing = live - {s.session_key for s in rows}
            done = not missing if acct_session_id is None else bool(found)
            if done or not live or time.monotonic() >= deadline or self.stopping.is_set():
                if missing and not done:
                    log.warning("coa_session_row_missing", tenant=tenant_id, user=username, sessions=len(missing))
                return found
            time.sleep(RESOLVE_POLL_S)

    def resolve_many(self, tenant_id: int, plan_id: int | None = None) -> list[LiveSession]:
        """The live sessions of the tenant (or of one plan), read page by page."""
        live, complete = coa_jobs.live_pages(lambda fn: self.shards.run(tenant_id, fn), self.redis,
                                             self.keys, tenant_id, plan_id=plan_id)
        if not complete:
            log.warning("coa_sessions_cut", tenant=tenant_id, plan=plan_id, live=len(live),
                        rows=coa_jobs.MAX_PAGES * coa_jobs.MAX_SESSIONS)
        return live

    def send_many(self, job_id: str, job: dict[str, str], tenant_id: int, plan_id: int | None, kind: str,
                  reason: str, attrs: Callable[[LiveSession], list[radius.Attr]]) -> None:
        """A tenant- or plan-wide job: its live sessions now, then, resolve_wait_ms after the
        job was queued, the ones whose rows were still in the writer's lag (a session that
        started just before the job: live in Redis, its row not yet in the shard)."""
        sessions = self.resolve_many(tenant_id, plan_id)
        self.send_all(job_id, tenant_id, sessions, kind, reason, attrs)
        wait = float(job.get("ts") or 0) + self.cfg.resolve_wait_ms / 1000 - time.time()
        if wait <= 0 or self.stopping.wait(min(wait, self.cfg.resolve_wait_ms / 1000)):
            return
        seen = {s.session_key for s in sessions}
        later = [s for s in self.resolve_many(tenant_id, plan_id) if s.session_key not in seen]
        if later:
            log.info("coa_sessions_in_writer_lag", job=job_id, tenant=tenant_id, sessions=len(later))
            self.send_all(job_id, tenant_id, later, kind, reason, attrs)

    def send_all(self, job_id: str, tenant_id: int, sessions: list[LiveSession], kind: str, reason: str,
                 attrs: Callable[[LiveSession], list[radius.Attr]]) -> None:
        work = []
        for s in sessions:
            extra = attrs(s)
            if kind == "coa" and not extra:
                self.stats.skipped[kind] += 1  # a generic NAS: no rate attribute to send
                log.info("coa_nothing_to_send", tenant=tenant_id, user=s.username, vendor=s.vendor)
                continue
            work.append((s, extra))
        # At most `share` requests of this job in flight (each bounded: timeout_ms x
        # max_attempts), the next one sent as one ends.
        futures: list[concurrent.futures.Future[str]] = []
        pending: set[concurrent.futures.Future[str]] = set()
        todo = iter(work)
        claimed = time.monotonic()
        while True:
            while len(pending) < self.share:
                item = next(todo, None)
                if item is None:
                    break
                f = self.sends.submit(self.send, job_id, tenant_id, item[0], kind, reason, item[1])
                futures.append(f)
                pending.add(f)
            if not pending:
                break
            _done, pending = concurrent.futures.wait(pending, timeout=CLAIM_EVERY_S,
                                                     return_when=concurrent.futures.FIRST_COMPLETED)
            if time.monotonic() - claimed >= CLAIM_EVERY_S:
                # A long job: still ours (its idle time reset, so no other sidecar claims it).
                claimed = time.monotonic()
                self.redis.xclaim(self.keys.coa_jobs, self.cfg.group, self.cfg.consumer, 0, [job_id],
                                  justid=True)
        for f in futures:
            f.result()

    # ---------------------------------------------------------------- sending
    def send(self, job_id: str, tenant_id: int, s: LiveSession, kind: str, reason: str,
             extra: list[radius.Attr]) -> str:
        """One session's request, attempts until an ACK, a NAK or the last timeout; the
        final outcome."""
        done_key = self.keys.coa_done(tenant_id, s.session_key)
        if kind == "disconnect":
            if not self.redis.set(done_key, job_id, nx=True, ex=self.cfg.dedupe_ttl_s):
                holder: Any = self.redis.get(done_key)
                if holder is not None and holder.decode() != job_id:
                    self.stats.deduped[kind] += 1
                    log.info("coa_deduped", tenant=tenant_id, user=s.username, session=s.acct_session_id)
                    return "deduped"
        secret = s.secret.encode()
        attrs = radius.identification(s.username, s.acct_session_id, s.framed_ip, s.nas_ip, int(time.time()))
        packet = radius.encode_request(radius.REQUEST_CODES[kind], random.randrange(256), secret, attrs + extra)
        outcome, cause, detail = "error", None, None
        family = socket.AF_INET6 if ":" in s.nas_ip else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM)
        except OSError as exc:
            sock, detail = None, str(exc)
        try:
            for attempt in range(1, self.cfg.max_attempts + 1):
                if sock is None:
                    self.record(job_id, tenant_id, s, kind, reason, attempt, "error", None, detail)
                    break
                outcome, cause, detail = self.attempt(sock, packet, secret, (s.nas_ip, s.coa_port))
                self.stats.attempts[(kind, outcome)] += 1
                self.record(job_id, tenant_id, s, kind, reason, attempt, outcome, cause, detail)
                if outcome in ("ack", "nak") or self.stopping.is_set():
                    break
        finally:
            if sock is not None:
                sock.close()
        self.stats.requests[(kind, outcome)] += 1
        log.info("coa_sent", kind=kind, reason=reason, tenant=tenant_id, user=s.username, outcome=outcome,
                 error_cause=cause, nas=s.nas_ip)
        if kind == "disconnect" and outcome != "ack":
            try:
                if self.redis.get(done_key) == job_id.encode():
                    self.redis.delete(done_key)  # not cut off: a later trigger tries again
            except redis.RedisError:
                pass  # the key expires
        return outcome

    def attempt(self, sock: socket.socket, packet: bytes, secret: bytes,
                addr: tuple[str, int]) -> tuple[str, int | None, str | None]:
        """Send once, wait up to timeout_ms for a valid answer: (outcome, Error-Cause, detail).
        A timeout after answers from the NAS that did not verify says so in the detail
        (the NAS answered, with another secret): the NOC's first question."""
        deadline = time.monotonic() + self.cfg.timeout_ms / 1000
        try:
            sock.sendto(packet, addr)
        except OSError as exc:
            return "error", None, str(exc)
        unverified = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout", None, _unverified(unverified)
            sock.settimeout(left)
            try:
                data, src = sock.recvfrom(4096)
            except TimeoutError:
                return "timeout", None, _unverified(unverified)
            except OSError as exc:  # ICMP port unreachable and the like
                return "error", None, str(exc)
            answer = radius.check_response(data, packet, secret)
            if answer is None:
                if src[0] == addr[0] and len(data) >= 20 and data[1] == packet[1]:
                    unverified += 1  # from the NAS, for this request, and it does not verify
                    self.stats.errors["unverified_answer"] += 1
                continue  # not an answer to this request (or forged): keep waiting
            code, attrs = answer
            cause = radius.error_cause(attrs)
            if code in (radius.DISCONNECT_ACK, radius.COA_ACK):
                return "ack", cause, None
            return "nak", cause, radius.ERROR_CAUSES.get(cause or 0)

    def record(self, job_id: str, tenant_id: int, s: LiveSession, kind: str, reason: str, attempt: int,
               outcome: str, cause: int | None, detail: str | None) -> None:
        """One row of coa_attempts; a shard that cannot take it is logged and counted."""
        try:
            self.shards.run(tenant_id, lambda c: c.execute(
                "INSERT INTO coa_attempts (tenant_id, attempted_at, job_id, username, session_key, "
                "acct_session_id, nas_id, kind, reason, attempt, outcome, error_cause, detail) "
                "VALUES (%s, now(), %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (tenant_id, job_id, s.username, s.session_key, s.acct_session_id, s.nas_id, kind, reason,
                 attempt, outcome, cause, detail)))
        except psycopg.Error as exc:
            self.stats.errors["record"] += 1
            log.warning("coa_attempt_not_recorded", tenant=tenant_id, error=str(exc).strip()[:200])

