"""The mid-session quota check: a subscriber whose data or time quota is used up while
online is disconnected.

A thread of the sidecar reads the accounting streams (``Keys.stream``) through a
consumer group of its own (``WIFICORE_COA_QUOTA_GROUP``, created at the stream's end:
no history), off the hook path. live.lua has counted a record's usage before it added
the record to the stream, so for each subscriber with a Start or Interim in a read,
the usage read then (rlm_wificore.live.read_states, the hooks' reads of the live
state) is the usage with that record. The plan comes from the tenant's shard (cached
here for ``PLAN_TTL_S``) and the decision from rlm_wificore.policy.quota_used_up, the
check logins go through. A subscriber over quota gets one ``disconnect`` job
(reason ``data_quota`` / ``time_quota``), then none for ``REQUEUE_S``; the job's
sessions are deduped again by the sender.

The batch writer trims the streams for its own group only: entries this group has
not read while the sidecar was down may be gone; the next Interim of the session
(every interim interval) is checked instead.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import redis

from rlm_wificore import live, policy
from wificore import coa_jobs, quota, wire
from wificore.errors import DecodeError
from wificore.log import get_logger
from wificore.profile import PLAN_SQL, Plan

if TYPE_CHECKING:
    from .service import Sidecar

log = get_logger("coa_sender")

SUBSCRIBER_PLAN_SQL = "SELECT plan_id FROM subscribers WHERE tenant_id = %s AND username = %s"
#: The tenant's time zone: the calendar its plans' quota periods follow.
TENANT_ZONE_SQL = "SELECT time_zone FROM tenants WHERE tenant_id = %s"
PLAN_TTL_S = 30.0
#: A tenant whose shard did not answer a plan read is not asked again for this long:
#: one tenant's hung shard costs one deadline, not one per subscriber of it.
TENANT_RETRY_S = 5.0
REQUEUE_S = 60.0
READ_COUNT = 1000
#: Most subscribers remembered (plans, queued disconnects) before the oldest are dropped.
MEMORY_MAX = 100_000


class QuotaWatcher:
    def __init__(self, sidecar: Sidecar) -> None:
        self.s = sidecar
        self.streams = [sidecar.keys.stream(p) for p in range(sidecar.settings.stream_partitions)]
        self.plans: dict[tuple[int, str], tuple[float, Plan | None]] = {}
        #: tenant -> (until, its zone's clock), read with a plan (the quota period's calendar).
        self.zones: dict[int, tuple[float, quota.ZoneClock]] = {}
        self.queued: dict[tuple[int, str], float] = {}
        #: tenant -> until when its shard is not asked (a plan read failed).
        self.failed: dict[int, float] = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="coa-quota", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)

    def ensure_groups(self) -> None:
        for name in self.streams:
            try:
                self.s.redis.xgroup_create(name, self.s.cfg.quota_group, id="$", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def run(self) -> None:
        ready = False
        while not self.stopping.is_set():
            try:
                if not ready:
                    self.ensure_groups()
                    ready = True
                self.step()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self.s.stats.errors["redis"] += 1
                log.warning("coa_quota_redis_unavailable", error=str(exc))
                self.stopping.wait(1.0)
            except redis.ResponseError as exc:  # NOGROUP: a stream deleted
                ready = False
                log.warning("coa_quota_group_lost", error=str(exc))
                self.stopping.wait(0.5)
            except Exception as exc:  # noqa: BLE001 - the thread must go on
                self.s.stats.errors["quota"] += 1
                log.error("coa_quota_error", error=repr(exc))
                self.stopping.wait(1.0)

    def step(self) -> None:
        cfg = self.s.cfg
        reply: Any = self.s.redis.xreadgroup(cfg.quota_group, cfg.consumer, dict.fromkeys(self.streams, ">"),
                                        count=READ_COUNT, block=cfg.block_ms)
        seen: set[tuple[int, str]] = set()
        for stream, entries in reply or []:
            ids = []
            for entry_id, fields in entries:
                ids.append(entry_id)
                payload = (fields or {}).get(b"d")
                if payload is None:
                    continue
                try:
                    kind, rec = wire.unpack(payload)
                except DecodeError:
                    continue
                if kind == wire.KIND_ACCT and rec.get("status") in ("start", "interim") and rec.get("username"):
                    seen.add((int(rec["tenant_id"]), str(rec["username"])))
            if ids:
                self.s.redis.xack(stream, cfg.quota_group, *ids)
        if seen:
            self.check(sorted(seen))

    def plan_of(self, tenant_id: int, username: str) -> Plan | None:
        now = time.monotonic()
        cached = self.plans.get((tenant_id, username))
        if cached is not None and cached[0] > now:
            return cached[1]
        def read(c: Any) -> Plan | None:
            # The subscriber's plan id, then the plan as radiusd reads it (PLAN_SQL).
            found = c.execute(SUBSCRIBER_PLAN_SQL, (tenant_id, username)).fetchone()
            row = found and c.execute(PLAN_SQL, (tenant_id, found[0])).fetchone()
            return Plan(*row) if row else None
        plan = self.s.shards.run(tenant_id, read)
        if len(self.plans) >= MEMORY_MAX:
            self.plans.clear()
        self.plans[(tenant_id, username)] = (now + PLAN_TTL_S, plan)
        return plan

    def zone_of(self, tenant_id: int) -> quota.ZoneClock:
        """The tenant's time zone (cached for ``PLAN_TTL_S``; UTC if the tenant is gone)."""
        now = time.monotonic()
        cached = self.zones.get(tenant_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        row = self.s.shards.run(tenant_id, lambda c: c.execute(TENANT_ZONE_SQL, (tenant_id,)).fetchone())
        name = str(row[0]) if row else "UTC"
        clock = cached[1] if cached is not None and cached[1].name == name else quota.clock(name)
        if len(self.zones) >= MEMORY_MAX:
            self.zones.clear()
        self.zones[tenant_id] = (now + PLAN_TTL_S, clock)
        return clock

    def check(self, subscribers: list[tuple[int, str]]) -> None:
        now = time.monotonic()
        candidates: list[tuple[tuple[int, str], Plan, quota.ZoneClock]] = []
        for sub in subscribers:
            if self.queued.get(sub, 0.0) > now or self.failed.get(sub[0], 0.0) > time.monotonic():
                continue
            try:
                plan = self.plan_of(*sub)
                zone = self.zone_of(sub[0]) if plan is not None else None
            except Exception as exc:  # noqa: BLE001 - that tenant's shard: the others go on
                self.s.stats.errors["quota"] += 1
                log.warning("coa_quota_plan_unread", tenant=sub[0], error=repr(exc))
                if len(self.failed) >= MEMORY_MAX:
                    self.failed.clear()
                self.failed[sub[0]] = time.monotonic() + TENANT_RETRY_S
                continue
            if plan is not None and zone is not None and (plan.data_quota_bytes is not None
                                                          or plan.time_quota_s is not None):
                candidates.append((sub, plan, zone))
        if not candidates:
            return
        states = live.read_states(self.s.redis, self.s.keys,
                                  [(sub[0], sub[1], plan, zone) for sub, plan, zone in candidates])
        wall = time.time()
        for (sub, plan, _zone), state in zip(candidates, states, strict=True):
            reason = policy.quota_used_up(plan, state, wall)
            if reason is None:
                continue
            coa_jobs.queue(self.s.redis, self.s.keys, "disconnect", tenant=sub[0], user=sub[1], reason=reason)
            if len(self.queued) >= MEMORY_MAX:
                self.queued = {k: t for k, t in self.queued.items() if t > now}
            self.queued[sub] = now + REQUEUE_S
            self.s.stats.quota_disconnects[reason] += 1
            log.info("coa_quota_used_up", tenant=sub[0], user=sub[1], reason=reason)
