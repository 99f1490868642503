"""The engine: every decision of rlm_wificore, as plain Python.

:mod:`rlm_wificore.hooks` turns radiusd's tuples into a dict and calls
these methods; tests and benchmarks call them directly. Results are
:class:`Result` objects with rcode names, never radiusd constants.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import hmac
import itertools
import math
import os
import threading
import time
import uuid
from typing import Any

import redis

from wificore import wire
from wificore.backoff import Breaker
from wificore.errors import DecodeError, InputError, StoreUnavailable, UnknownTenant
from wificore.keys import Keys
from wificore.log import get_logger
from wificore.profile import NAS_SQL, PLAN_SQL, PROFILE_SQL, UNKNOWN, Nas, Plan, Profile, from_row
from wificore.settings import Settings
from wificore.shardmap import ShardMap

from . import policy, records
from .cache import Entry, LiveState, LocalCache, ttl_with_jitter
from .spool import Spool
from .store import Shards, connect_redis

log = get_logger("rlm_wificore")

Pairs = tuple[tuple[str, ...], ...]  # (attr, value) or (attr, op, value)
NAS_TTL_S = 60
#: control:WiFiCore-Logged: authorize already logged the accept, post-auth is skipped.
LOGGED = (("WiFiCore-Logged", "1"),)
BACKGROUND_REDIS_TIMEOUT_S = 5.0
MAX_USERNAME = 253
#: A reply that depends on the clock (expiry, time quota) is rendered again after this.
REPLY_REUSE_S = 1.0
#: A live state queued for a re-read is queued again if not re-read by then.
STATE_RETRY_S = 1.0
MAX_STALE_QUEUE = 100_000


class Result:
    """What a hook returns: an rcode name and the pairs for each list.

    A plain slotted class, not a frozen dataclass: one is made per request,
    and a frozen dataclass's __init__ costs four times as much.
    """

    __slots__ = ("rcode", "reply", "config", "request", "reason")

    def __init__(self, rcode: str, reply: Pairs = (), config: Pairs = (), request: Pairs = (),
                 reason: str | None = None) -> None:
        self.rcode = rcode  # ok, updated, reject, fail, notfound, noop
        self.reply = reply
        self.config = config
        self.request = request
        self.reason = reason

    def __repr__(self) -> str:
        return (f"Result({self.rcode!r}, reply={self.reply!r}, config={self.config!r}, "
                f"request={self.request!r}, reason={self.reason!r})")


@dataclasses.dataclass(slots=True)
class Stats:
    """Counters kept by the engine; metrics.py exports them."""

    requests: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    tiers: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    errors: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    credential_cache_hits: int = 0


def parse_client(shortname: str) -> tuple[int, int, str]:
    """'<tenant>:<nas>:<vendor>' (set by the dynamic client lookup) -> parts."""
    tenant, nas, vendor = shortname.split(":", 2)
    return int(tenant), int(nas), vendor


class Engine:
    """Owns the cache tiers and the connections; shared by all radiusd threads."""

    def __init__(self, settings: Settings, shard_map: ShardMap | None = None) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.shard_map = shard_map or ShardMap.load(settings.shard_map)
        self.redis = connect_redis(settings)
        self.redis_bg = connect_redis(settings, timeout_s=BACKGROUND_REDIS_TIMEOUT_S)
        self.redis_breaker = Breaker("redis")
        self.shards = Shards(self.shard_map, timeout_ms=settings.db_timeout_ms,
                             pool_max=settings.db_pool_max)
        self.local = LocalCache(settings.local_cache_max)
        # Bumped by every invalidation. A lookup that saw it change while it was
        # reading Redis or a shard may hold what was just invalidated: it answers
        # with it but does not keep it (the message came before the put).
        self.generation = 0
        self.plans: dict[tuple[int, int], tuple[float, Plan]] = {}
        self.clients: dict[str, tuple[int, int, str]] = {}
        self.stats = Stats()
        # Verified bcrypt credentials: HMAC under a key that never leaves this process.
        self._cred_key = os.urandom(32)
        self._verified: dict[bytes, float] = {}
        # Auth-log event ids: a random per-process prefix and a counter (unique, cheap).
        self._event_prefix = uuid.uuid4().hex[:16]
        self._event_seq = itertools.count()
        self.spool: Spool | None = None
        # Cached entries whose live state is due for a re-read, for the state thread
        # (background.py); until that thread runs, the hook re-reads it itself.
        self.stale_states: collections.deque[tuple[int, str, Entry]] = collections.deque()
        self.stale_wake = threading.Event()
        self.state_refresher = False
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ---------------------------------------------------------------- redis
    def _redis_call(self, fn):
        """Run ``fn(redis)`` unless the breaker is open; StoreUnavailable on failure."""
        if not self.redis_breaker.allow():
            raise StoreUnavailable("redis is down (retrying in <1 s)")
        try:
            result = fn(self.redis)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self.redis_breaker.fail()
            self.stats.errors["redis"] += 1
            raise StoreUnavailable(f"redis: {exc}") from exc
        self.redis_breaker.ok()
        return result

    # -------------------------------------------------------- dynamic clients
    def client(self, ip: str) -> Result:
        """The NAS at source address ``ip``, as FreeRADIUS-Client-* control pairs."""
        nas = None
        key = self.keys.nas(ip)
        try:
            raw = self._redis_call(lambda r: r.get(key))
            if raw:
                nas = Nas.unpack(raw)
        except (StoreUnavailable, DecodeError):
            pass
        if nas is None:
            try:
                rows = self.shards.fetch_all_shards(NAS_SQL, (ip,))
            except StoreUnavailable as exc:
                log.warning("nas_lookup_failed", ip=ip, error=str(exc))
                return Result("fail", reason="backend_unavailable")
            rows = [r for r in rows if self._owns(r[0])]
            if len(rows) != 1:
                log.warning("unknown_client" if not rows else "ambiguous_client", ip=ip, matches=len(rows))
                return Result("notfound", reason="unknown_client")
            nas = Nas(*rows[0])
            try:
                self._redis_call(lambda r: r.set(key, nas.pack(), ex=NAS_TTL_S))
            except StoreUnavailable:
                pass
        log.info("client_added", ip=ip, tenant=nas.tenant_id, nas=nas.nas_id, vendor=nas.vendor)
        return Result("ok", config=(
            ("FreeRADIUS-Client-IP-Address", ip),
            ("FreeRADIUS-Client-Secret", nas.secret),
            ("FreeRADIUS-Client-Shortname", nas.shortname),
            ("FreeRADIUS-Client-NAS-Type", nas.vendor),
        ))

    def _client(self, req: dict[str, str]) -> tuple[int, int, str] | None:
        """(tenant, NAS, vendor) of the RADIUS client that sent ``req``; None if unknown."""
        client = req.get("WiFiCore-Client")
        if not client:
            return None
        parsed = self.clients.get(client)
        if parsed is None:
            try:
                parsed = parse_client(client)
            except ValueError:
                return None
            self.clients[client] = parsed
        return parsed

    def _owns(self, tenant_id: int) -> bool:
        """A row only counts on the shard the map assigns its tenant to."""
        try:
            self.shard_map.shard_for(tenant_id)
            return True
        except UnknownTenant:
            return False

    # ------------------------------------------------------------ authorize
    def authorize(self, req: dict[str, str]) -> Result:
        """Tenant, profile, policy, credentials and reply for one Access-Request."""
        parsed = self._client(req)
        if parsed is None:
            return self._reject("unknown_client", req)
        tenant_id, nas_id, vendor = parsed
        username = req.get("User-Name")
        if not username or len(username) > MAX_USERNAME or not username.isprintable():
            return self._reject("bad_request", req)

        try:
            entry = self._entry(tenant_id, username)
        except StoreUnavailable as exc:
            log.warning("lookup_failed", tenant=tenant_id, error=str(exc))
            return self._reject("backend_unavailable", req)
        profile = entry.profile
        if profile is None or entry.plan is None:
            return self._reject("unknown_user", req)
        now = time.time()
        reason = policy.check(profile, entry.plan, entry.state, now=now,
                              calling_station_id=req.get("Calling-Station-Id"))
        if reason is not None:
            return self._reject(reason, req)

        password = req.get("User-Password")
        config: Pairs
        decided = False  # accepted here: post-auth need not run (see docs/decisions.md)
        if profile.password_type == "cleartext":
            if password is None:  # CHAP, MS-CHAP: rlm_chap / rlm_mschap check it in C
                config = (("Cleartext-Password", profile.password),)
            elif hmac.compare_digest(password.encode("utf-8", "surrogateescape"),
                                     profile.password.encode("utf-8", "surrogateescape")):
                config, decided = (("Auth-Type", "Accept"),), True
            else:
                return self._reject("bad_password", req)
        elif password is not None and self._is_verified(tenant_id, username, password,
                                                        profile.password):
            # PAP re-auth with a hashed password that rlm_pap verified before.
            self.stats.credential_cache_hits += 1
            config, decided = (("Auth-Type", "Accept"),), True
        elif profile.password_type == "nthash":
            config = (("NT-Password", "0x" + profile.password.lower()),)
        else:  # bcrypt: PAP only; rlm_pap checks it with crypt(3), outside the mutex
            if password is None:
                return self._reject("method_unsupported", req)
            config = (("Crypt-Password", profile.password),)
        # The rendered reply is kept on the entry: for good when it depends on the
        # profile and plan alone, else for REPLY_REUSE_S and the same live state.
        cached = entry.replies.get(vendor) if entry.replies is not None else None
        if cached is not None and cached[1] > now and cached[2] is entry.state:
            reply = cached[0]
        else:
            reply = policy.render_reply(profile, entry.plan, entry.state, vendor, now=now)
            if entry.replies is None:
                entry.replies = {}
            valid = (math.inf if policy.reply_is_static(profile, entry.plan)
                     else now + REPLY_REUSE_S)
            entry.replies[vendor] = (reply, valid, entry.state)
        self.stats.requests["authorize:ok"] += 1
        if decided:
            self._log_auth(req, tenant_id, nas_id, username, accepted=True, reason="ok")
            config += LOGGED
        return Result("updated", reply=reply, config=config)

    def _reject(self, reason: str, req: dict[str, str]) -> Result:
        self.stats.requests[f"authorize:{reason}"] += 1
        return Result("reject", reply=policy.reject_reply(reason), reason=reason,
                      request=(("WiFiCore-Reason", reason),))

    def _entry(self, tenant_id: int, username: str) -> Entry:
        """Profile, plan and live state: in-process, else Redis, else the shard."""
        key = (tenant_id, username)
        entry = self.local.get(key)
        if entry is not None:
            if entry.profile is not None and entry.state_expires < time.monotonic():
                if self.state_refresher:
                    # Answer from the state we have; a module thread re-reads it (no
                    # Redis round trip under the mutex). Asked again if not done soon.
                    entry.state_expires = time.monotonic() + STATE_RETRY_S
                    if len(self.stale_states) < MAX_STALE_QUEUE:  # bounded if Redis hangs
                        self.stale_states.append((tenant_id, username, entry))
                        self.stale_wake.set()
                else:
                    self.refresh_states([(tenant_id, username, entry)], in_hook=True)
            self.stats.tiers["process"] += 1
            return entry
        s = self.settings
        generation = self.generation
        pkey = self.keys.profile(tenant_id, username)
        profile: Profile | None = None
        state: LiveState | None = None
        known = False
        try:
            raw, live, usage = self._redis_call(lambda r: self._read_redis(r, tenant_id, username))
            state = self._state(live, usage)
            if raw == UNKNOWN:
                known = True
            elif raw is not None:
                profile = Profile.unpack(raw)
                known = True
        except StoreUnavailable:
            pass
        except DecodeError as exc:
            log.warning("bad_cached_profile", tenant=tenant_id, error=str(exc))
        if known:
            self.stats.tiers["redis"] += 1
            plan = self._plan(tenant_id, profile.plan_id) if profile else None
            ttl = s.profile_ttl_s if profile else s.negative_ttl_s
        else:
            self.stats.tiers["database"] += 1
            row = self.shards.fetchone(tenant_id, PROFILE_SQL, (tenant_id, username))
            plan = None
            if row is not None:
                profile, plan = from_row(row)
                self.plans[(tenant_id, plan.plan_id)] = (time.monotonic() + s.profile_ttl_s, plan)
            ttl = s.profile_ttl_s if profile else s.negative_ttl_s
            value = profile.pack() if profile else UNKNOWN
            redis_ttl = int(ttl_with_jitter(ttl, s.ttl_jitter_pct))
            def fill(r: redis.Redis) -> None:
                pipe = r.pipeline(transaction=False)
                pipe.set(pkey, value, ex=redis_ttl)
                if plan is not None:
                    pipe.set(self.keys.plan(tenant_id, plan.plan_id), plan.pack(), ex=redis_ttl)
                pipe.execute()
            try:
                self._redis_call(fill)
            except StoreUnavailable:
                pass
        # Without Redis the live state is unknown: cache briefly, fail open.
        local_ttl = ttl if state is not None else min(ttl, 5)
        now = time.monotonic()
        entry = Entry(now + ttl_with_jitter(local_ttl, s.ttl_jitter_pct), profile, plan, state,
                      now + s.live_state_ttl_s)
        if generation == self.generation:
            self.local.put(key, entry)
        return entry

    def _read_state(self, pipe, tenant_id: int, username: str, now: float) -> None:
        """Queue the two reads of a live state on ``pipe`` (see :meth:`_state`)."""
        pipe.zcount(self.keys.live(tenant_id, username), now, "+inf")
        pipe.hmget(self.keys.usage(tenant_id, username), "octets", "time_s")

    @staticmethod
    def _state(live: Any, usage: list[Any]) -> LiveState:
        return LiveState(int(live), int(usage[0] or 0), int(usage[1] or 0))

    def refresh_states(self, batch: list[tuple[int, str, Entry]], *, in_hook: bool = False) -> None:
        """Re-read the live state of cached entries in one round trip: the state thread's
        batches, or one entry in the hook while that thread is not running (through the
        breaker). Unknown (fail open) if Redis is down, asked again after STATE_RETRY_S;
        read while an invalidation came in, used once and asked again at the next use."""
        generation = self.generation

        def read(r: redis.Redis) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            now = time.time()
            for tenant_id, username, _entry in batch:
                self._read_state(pipe, tenant_id, username, now)
            return pipe.execute()
        try:
            replies = self._redis_call(read) if in_hook else read(self.redis_bg)
        except (StoreUnavailable, redis.ConnectionError, redis.TimeoutError):
            self.stats.errors["redis_state"] += 1
            retry = time.monotonic() + STATE_RETRY_S
            for _t, _u, entry in batch:
                entry.state, entry.state_expires = None, retry
            return
        expires = (time.monotonic() + self.settings.live_state_ttl_s
                   if generation == self.generation else 0.0)
        for i, (_t, _u, entry) in enumerate(batch):
            entry.state = self._state(replies[2 * i], replies[2 * i + 1])
            entry.state_expires = expires
        self.stats.tiers["redis_state"] += len(batch)

    def _read_redis(self, r: redis.Redis, tenant_id: int, username: str):
        pipe = r.pipeline(transaction=False)
        pipe.get(self.keys.profile(tenant_id, username))
        self._read_state(pipe, tenant_id, username, time.time())
        return pipe.execute()

    def _plan(self, tenant_id: int, plan_id: int) -> Plan | None:
        cached = self.plans.get((tenant_id, plan_id))
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        plan = None
        try:
            raw = self._redis_call(lambda r: r.get(self.keys.plan(tenant_id, plan_id)))
            plan = Plan.unpack(raw) if raw else None
        except (StoreUnavailable, DecodeError):
            pass
        if plan is None:
            row = self.shards.fetchone(tenant_id, PLAN_SQL, (tenant_id, plan_id))
            if row is None:
                return None
            plan = Plan(*row)
            try:
                self._redis_call(lambda r: r.set(self.keys.plan(tenant_id, plan_id), plan.pack(),
                                                 ex=self.settings.profile_ttl_s))
            except StoreUnavailable:
                pass
        self.plans[(tenant_id, plan_id)] = (time.monotonic() + self.settings.profile_ttl_s, plan)
        return plan

    # ------------------------------------------------- verified credentials
    def _cred_digest(self, tenant_id: int, username: str, password: str, stored: str) -> bytes:
        msg = f"{tenant_id}\0{username}\0{password}\0{stored}".encode("utf-8", "surrogateescape")
        # Keyed BLAKE2b is a MAC in one C call (hmac.new costs twice as much).
        return hashlib.blake2b(msg, key=self._cred_key, digest_size=32).digest()

    def _is_verified(self, tenant_id: int, username: str, password: str, stored: str) -> bool:
        if self.settings.credential_cache_ttl_s <= 0:
            return False
        digest = self._cred_digest(tenant_id, username, password, stored)
        expires = self._verified.get(digest)
        if expires is None:
            return False
        if expires < time.monotonic():
            self._verified.pop(digest, None)
            return False
        return True

    # -------------------------------------------------------------- post-auth
    def post_auth(self, req: dict[str, str], *, accepted: bool) -> Result:
        """Record the outcome: auth-log record, verified-credential cache."""
        reason = req.get("WiFiCore-Reason") or ("ok" if accepted else "bad_password")
        parsed = self._client(req)
        if parsed is None:
            return Result("noop")
        tenant_id, nas_id, _vendor = parsed
        username = req.get("User-Name") or ""
        if accepted and "User-Password" in req and self.settings.credential_cache_ttl_s > 0:
            entry = self.local.peek((tenant_id, username))
            if entry and entry.profile and entry.profile.password_type != "cleartext":
                digest = self._cred_digest(tenant_id, username, req["User-Password"],
                                           entry.profile.password)
                if len(self._verified) > 1_000_000:
                    self._verified.clear()
                self._verified[digest] = time.monotonic() + self.settings.credential_cache_ttl_s
        self._log_auth(req, tenant_id, nas_id, username, accepted=accepted, reason=reason)
        self.stats.requests[f"post_auth:{'accept' if accepted else 'reject'}"] += 1
        result = "ok" if accepted else "noop"
        reply: Pairs = ()
        if not accepted and reason == "bad_password":
            reply = (("Reply-Message", ":=", policy.MESSAGES["bad_password"]),)
        return Result(result, reply=reply, reason=reason)

    # ------------------------------------------------------------ accounting
    def accounting(self, req: dict[str, str]) -> Result:
        """Normalise, then make the record durable in the spool; ok = send the response."""
        parsed = self._client(req)
        if parsed is None:
            self.stats.requests["accounting:unknown_client"] += 1
            return Result("noop", reason="unknown_client")
        tenant_id, nas_id, _vendor = parsed
        if self.spool is None:
            raise StoreUnavailable("the accounting spool is not open")
        username = req.get("User-Name") or ""
        entry = self.local.peek((tenant_id, username))
        interim_s = (entry.plan.interim_interval_s if entry is not None and entry.plan is not None
                     else self.settings.default_interim_s)
        try:
            kind, values = records.acct_record(
                req, tenant_id=tenant_id, nas_id=nas_id, interim_s=interim_s, arrival_ts=time.time(),
                record_id=f"{self._event_prefix}{next(self._event_seq):x}")
            payload = wire.pack_values(wire.KIND_ACCT, values)
        except InputError as exc:
            # Answered (the NAS must not retry it forever) and kept for the NOC.
            payload = wire.pack(wire.KIND_ACCT, {
                "tenant_id": tenant_id, "nas_id": nas_id, "invalid": str(exc),
                "raw": {k: v[:MAX_USERNAME] for k, v in req.items() if "Password" not in k}})
            kind = "invalid"
        self.spool.append(payload)
        self.stats.requests[f"accounting:{kind}"] += 1
        return Result("ok")

    def _log_auth(self, req: dict[str, str], tenant_id: int, nas_id: int, username: str, *,
                  accepted: bool, reason: str) -> None:
        """Spool one auth-log record (the forwarder moves it to Redis); never a password."""
        if self.spool is None:
            self.stats.errors["authlog_no_spool"] += 1
            return
        method = ("pap" if "User-Password" in req else "chap" if "CHAP-Password" in req
                  else "mschap" if "MS-CHAP-Challenge" in req else "other")
        # wire.AUTH_FIELDS order
        self.spool.append(wire.pack_values(wire.KIND_AUTH, [
            tenant_id, nas_id, time.time(), f"{self._event_prefix}{next(self._event_seq):x}",
            username[:MAX_USERNAME], req.get("Calling-Station-Id"),
            "accept" if accepted else "reject", reason, method]))

    # ---------------------------------------------------------- invalidation
    def invalidate(self, message: list[Any]) -> None:
        """Drop cached copies named by an invalidation message (from PostgreSQL or Redis)."""
        self.generation += 1
        kind = message[0]
        # The subscriber, or its live state, changed ('l': one subscriber, as live.lua of the
        # previous release announces it, while a rolling upgrade runs both).
        if kind in ("s", "l"):
            self.local.drop((int(message[1]), str(message[2])))
        elif kind == "L":  # live states changed by one call of live.lua: [[tenant, user], ...]
            for tenant_id, username in message[1]:
                self.local.drop((int(tenant_id), str(username)))
        elif kind == "p":
            tenant_id, plan_id = int(message[1]), int(message[2])
            self.plans.pop((tenant_id, plan_id), None)
            self.local.drop_where(lambda k, e: k[0] == tenant_id and e.profile is not None
                                  and e.profile.plan_id == plan_id)
        elif kind == "t":
            tenant_id = int(message[1])
            self.local.drop_where(lambda k, e: k[0] == tenant_id)
        # 'n' (NAS): radiusd's dynamic client expires after its lifetime.

    # -------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the background threads (never under `freeradius -C`)."""
        from .background import start_background
        self.spool = Spool(self.settings.spool_dir)
        self._threads = start_background(self)

    def close(self) -> None:
        """Stop threads, close every client and pool (radiusd's detach)."""
        self._stop.set()
        self.state_refresher = False
        for t in self._threads:
            t.join(timeout=3)
        self._threads = []
        if self.spool is not None:
            self.spool.close()
            self.spool = None
        self.shards.close()
        for client in (self.redis, self.redis_bg):
            try:
                client.close()
            except Exception:  # closing a broken connection must not stop detach
                pass
