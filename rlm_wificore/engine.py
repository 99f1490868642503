"""The engine: the rooms of rlm_wificore put together, and the three hook flows.

:mod:`rlm_wificore.hooks` turns radiusd's tuples into a dict and calls
these methods; tests and benchmarks call them directly. Results are
:class:`Result` objects with rcode names, never radiusd constants.

Each room owns one thing: :mod:`.directory` the NAS, :mod:`.profiles` the
three tiers of profiles and plans, :mod:`.live` the live states,
:mod:`.credentials` the verified-credential cache, :mod:`.sink` the records
for the spool, :mod:`.invalidation` the change announcements, :mod:`.store`
the Redis and shard access. The flows below (authorize, post_auth,
accounting) walk down through them; the threads are in background.py.
"""

from __future__ import annotations

import hmac
import threading
import time
from typing import Any

import redis

from wificore import roles
from wificore.backoff import REDIS_DOWN
from wificore.errors import ConfigError, StoreUnavailable
from wificore.keys import Keys
from wificore.log import Throttle, get_logger
from wificore.settings import Settings
from wificore.shardmap import ShardMap

from . import policy, request
from .background import start_background
from .credentials import VerifiedCredentials
from .directory import Directory, parse_client  # noqa: F401  (parse_client: its old home)
from .invalidation import Generation, Invalidation
from .live import LiveStates
from .profiles import Profiles
from .result import Pairs, Result, radius_text
from .sink import MAX_USERNAME, Sink
from .spool import Spool, SpoolFull
from .stats import Stats
from .store import RedisStore, Shards, connect_redis

__all__ = ["Engine", "Pairs", "Result", "Stats", "parse_client"]

log = get_logger("rlm_wificore")

#: control:WiFiCore-Logged: authorize already logged the accept, post-auth is skipped.
LOGGED = (("WiFiCore-Logged", "1"),)
BACKGROUND_REDIS_TIMEOUT_S = 5.0
#: A reply that depends on the clock (expiry, time quota) is rendered again after this.
REPLY_REUSE_S = 1.0


class Engine:
    """Owns the rooms and the connections; shared by all radiusd threads."""

    def __init__(self, settings: Settings, shard_map: ShardMap | None = None) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix, settings.stream_partitions)
        self.shard_map = shard_map or ShardMap.load(settings.shard_map)
        self.stats = Stats()
        self._lookup_failed_log = Throttle(1.0)  # one line per tenant and second
        # The state Redis (live state, streams; wificore/roles.py) and the cache Redis:
        # the same clients and breaker when one URL serves both.
        self.redis = connect_redis(settings)
        self.redis_bg = connect_redis(settings, timeout_s=BACKGROUND_REDIS_TIMEOUT_S)
        self.redis_store = RedisStore(self.redis, self.stats.errors)
        self.redis_breaker = self.redis_store.breaker
        split = roles.redis_url(settings, roles.CACHE) != roles.redis_url(settings, roles.STATE)
        # One Redis for both roles: live.lua reads a session's plan from the cached
        # profile, so an accept's interval need not be kept for it (live.lua, ARGV[9]).
        self.redis_roles_split = split
        self.cache_redis = connect_redis(settings, role=roles.CACHE) if split else self.redis
        self.cache_bg = (connect_redis(settings, timeout_s=BACKGROUND_REDIS_TIMEOUT_S, role=roles.CACHE)
                         if split else self.redis_bg)
        self.cache_store = (RedisStore(self.cache_redis, self.stats.errors, name="redis-cache")
                            if split else self.redis_store)
        self.shards = Shards(self.shard_map, timeout_ms=settings.db_timeout_ms,
                             pool_max=settings.db_pool_max, wait_ms=settings.db_wait_ms)
        generation = Generation()
        # The NAS directory is kept in the state Redis: bounded by the NAS rows, and an
        # evicted directory would answer no new client until it is rebuilt.
        self.directory = Directory(self.shard_map, self.shards, self.redis_store, self.keys)
        self.live = LiveStates(settings, self.keys, self.redis_store, self.redis_bg, self.stats,
                               generation)
        self.profiles = Profiles(settings, self.keys, self.cache_store, self.shards, self.stats,
                                 generation, self.live)
        self.credentials = VerifiedCredentials(settings)
        self.sink = Sink(self.stats, settings.stream_partitions)
        self.invalidation = Invalidation(generation, self.profiles, self.keys, self.redis_bg,
                                         self.cache_bg, directory=self.directory)
        self.local = self.profiles.local  # the in-process tier (metrics count it)
        #: Bumped when a new map changes the set of shards (the relay listens again).
        self.map_epoch = 0
        #: Set by close(): every module thread stops.
        self.stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.state_redis_checked = False  # its eviction policy (wificore/roles.py)
        # The rooms' methods the flows call per request, bound once: one lookup, as
        # when they were methods of this class (the warm path is measured).
        self._client = self.directory.lookup
        self._entry = self.profiles.entry
        self._tenant_status = self.profiles.tenant_status
        self._zones = self.profiles.zones
        self._is_verified = self.credentials.is_verified
        self._log_auth = self.sink.log_auth

    @property
    def spool(self) -> Spool | None:
        """The spool the sink writes to (None until :meth:`start`)."""
        return self.sink.spool

    @spool.setter
    def spool(self, spool: Spool | None) -> None:
        self.sink.spool = spool

    # -------------------------------------------------------- dynamic clients
    def client(self, ip: str) -> Result:
        """The NAS at source address ``ip``, as FreeRADIUS-Client-* control pairs."""
        return self.directory.client(ip)

    def _log_lookup_failed(self, tenant_id: int, exc: StoreUnavailable) -> None:
        """One ``lookup_failed`` line per tenant and second at most (with how many were
        left out): a sick shard rejects each of its logins, and every line is written
        by the hook, on the request's path (the counts are in wificore_requests)."""
        left_out = self._lookup_failed_log.admit(tenant_id)
        if left_out is not None:
            log.warning("lookup_failed", tenant=tenant_id, error=str(exc), left_out=left_out)

    # ------------------------------------------------------------ authorize
    def authorize(self, req: dict[str, str]) -> Result:
        """Tenant, profile, policy, credentials and reply for one Access-Request."""
        parsed = self._client(req)
        if parsed is None:
            return self._reject("unknown_client", req)
        tenant_id, nas_id, vendor, kind_check = parsed
        problem = request.access_problem(req)
        if problem is not None:
            log.info("bad_access_request", tenant=tenant_id, nas=nas_id, reason=problem[0],
                     detail=problem[1])
            return self._reject(problem[0], req)
        username = req.get("User-Name")
        if not username or len(username) > MAX_USERNAME or not username.isprintable():
            return self._reject("bad_request", req)

        if self._tenant_status(tenant_id) == "suspended":
            return self._reject("tenant_suspended", req)
        try:
            entry = self._entry(tenant_id, username)
        except StoreUnavailable as exc:
            self._log_lookup_failed(tenant_id, exc)
            return self._reject("backend_unavailable", req)
        profile = entry.profile
        if profile is None or entry.plan is None:
            return self._reject("unknown_user", req)
        now = time.time()
        reason = policy.check(profile, entry.plan, entry.state, now=now,
                              calling_station_id=req.get("Calling-Station-Id"),
                              service=policy.service_kind(req) if kind_check else None)
        if reason is not None:
            return self._reject(reason, req)

        password = req.get("User-Password")
        config: Pairs
        decided = False  # accepted here: post-auth need not run (see docs/decisions.md)
        if profile.password_type == "cleartext":
            if not profile.password and not policy.is_mac_auth(profile, username, password):
                # An empty password is MAC authentication only: PAP, the username a MAC
                # bound to the subscriber (policy.check compared Calling-Station-Id).
                return self._reject("bad_password" if password is not None
                                    else "method_unsupported", req)
            if password is None:  # CHAP, MS-CHAP: rlm_chap / rlm_mschap check it in C
                config = (("Cleartext-Password", radius_text(profile.password)),)
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
            if "CHAP-Password" in req:  # CHAP needs the cleartext
                return self._reject("method_unsupported", req)
            config = (("NT-Password", "0x" + profile.password.lower()),)
        else:  # bcrypt: PAP only; rlm_pap checks it with crypt(3), outside the mutex
            if password is None:
                return self._reject("method_unsupported", req)
            config = (("Crypt-Password", profile.password),)
        # The rendered reply is kept on the entry: for good when it depends on the
        # profile and plan alone, else for REPLY_REUSE_S and the same live state.
        reply_for = entry.reply_for
        if reply_for == vendor or (reply_for.__class__ is tuple and reply_for[0] == vendor
                                   and reply_for[1] > now and reply_for[2] is entry.state):
            reply = entry.reply
        else:
            reply = policy.render_reply(profile, entry.plan, entry.state, vendor, now=now)
            if policy.reply_is_static(profile, entry.plan):
                # One copy for the subscribers of a plan, not one each (memory).
                entry.reply, entry.reply_for = self.local.share_reply(reply), vendor
            else:
                entry.reply, entry.reply_for = reply, (vendor, now + REPLY_REUSE_S, entry.state)
        self.stats.requests["authorize:ok"] += 1
        if decided:
            self._log_auth(req, tenant_id, nas_id, username, accepted=True, reason="ok",
                           interim_s=entry.plan.interim_interval_s)
            config += LOGGED
        return Result("updated", reply=reply, config=config)

    def _reject(self, reason: str, req: dict[str, str]) -> Result:
        self.stats.requests[f"authorize:{reason}"] += 1
        return Result("reject", reply=policy.reject_reply(reason), reason=reason,
                      request=(("WiFiCore-Reason", reason),))

    # -------------------------------------------------------------- post-auth
    def post_auth(self, req: dict[str, str], *, accepted: bool) -> Result:
        """Record the outcome: auth-log record, verified-credential cache."""
        reason = req.get("WiFiCore-Reason") or ("ok" if accepted else "bad_password")
        parsed = self._client(req)
        if parsed is None:
            return Result("noop")
        tenant_id, nas_id, _vendor, _kind_check = parsed
        username = req.get("User-Name") or ""
        interim_s = None
        if accepted:
            entry = self.local.peek((tenant_id, username))
            if entry:
                if "User-Password" in req:
                    self.credentials.remember(tenant_id, username, req["User-Password"], entry.profile)
                if entry.plan is not None:  # for live.lua: the session about to start
                    interim_s = entry.plan.interim_interval_s
        self._log_auth(req, tenant_id, nas_id, username, accepted=accepted, reason=reason,
                       interim_s=interim_s)
        self.stats.requests[f"post_auth:{'accept' if accepted else 'reject'}"] += 1
        result = "ok" if accepted else "noop"
        reply: Pairs = ()
        if not accepted:  # the site filtered the reply (RFC 2865 5.44): the message only
            reply = (("Reply-Message", ":=", policy.MESSAGES.get(reason,
                                                                 policy.MESSAGES["bad_password"])),)
        return Result(result, reply=reply, reason=reason)

    # ------------------------------------------------------------ accounting
    def accounting(self, req: dict[str, str]) -> Result:
        """Normalise, then make the record durable in the spool; ok = send the response."""
        parsed = self._client(req)
        if parsed is None:  # no NAS to book it under (e.g. the tier's balancer named none)
            self.stats.requests["accounting:unknown_client"] += 1
            return Result("fail", reason="unknown_client")  # no response: nothing answered is lost
        tenant_id, nas_id, _vendor, _kind_check = parsed
        username = req.get("User-Name") or ""
        entry = self.local.peek((tenant_id, username))
        interim_s = (entry.plan.interim_interval_s if entry is not None and entry.plan is not None
                     else self.settings.default_interim_s)
        # The tenant's zone: the record's local day (quota periods). Known from the
        # tenant's status; read once per tenant and process otherwise (with deadlines).
        zone = self._zones.get(tenant_id) or self.profiles.zone_now(tenant_id)
        try:
            kind = self.sink.accounting(req, tenant_id, nas_id, interim_s,
                                        zone.day if zone is not None else None)  # raises if no spool
        except SpoolFull:  # no room on the spool's disk: no response, the NAS retries
            self.stats.errors["spool_full"] += 1
            # noop, not fail: the same for radiusd (no Accounting-Response), and the
            # site's fallback for a request rlm_python3 could not hand over (if fail)
            # does not call again.
            return Result("noop", reason="spool_full")
        self.stats.requests[f"accounting:{kind}"] += 1
        return Result("ok")

    # ------------------------------------------------------------ shard map
    def follow_map(self, new: ShardMap) -> None:
        """A new shard map from the file (the map thread): lookups use it at once; the
        in-process copies of the tenants it moved are dropped (all of them when the
        ranges changed); the relay listens again when the set of shards changed."""
        moved = self.shard_map.moved_tenants(new)
        listen = [(s.name, s.listen_dsn) for s in self.shard_map]
        self.shards.set_map(new)
        self.directory.note_moved(moved)
        if moved is None:
            self.invalidation.reset_all()
        else:
            self.invalidation.generation.bump()
            for tenant_id in moved:
                self.profiles.drop_tenant(tenant_id)
                for key in [k for k in self.profiles.plans if k[0] == tenant_id]:
                    self.profiles.plans.pop(key, None)
        if listen != [(s.name, s.listen_dsn) for s in new]:
            self.map_epoch += 1
        log.info("shard_map_followed", shards=[s.name for s in new], placed=len(new.placed),
                 moved=sorted(moved) if moved is not None else "ranges")

    # ---------------------------------------------------------- invalidation
    def invalidate(self, message: list[Any]) -> None:
        """Drop cached copies named by an invalidation message (from PostgreSQL or Redis)."""
        self.invalidation.apply(message)

    # -------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the background threads (never under `freeradius -C`)."""
        self.check_state_redis()
        self.spool = Spool(self.settings.spool_dir,
                           max_segment_bytes=self.settings.spool_segment_kib * 1024)
        self.spool.start_preparer()  # the next segment is allocated ahead, off the hook path
        self._threads = start_background(self)
        self.shards.open()

    def check_state_redis(self, *, at_start: bool = True) -> None:
        """ConfigError unless the state Redis is noeviction; a warning if it cannot be
        asked now (radiusd still starts: Redis down is an outage it rides out). Later
        (``at_start=False``, the forwarder once Redis answers) an evicting one is logged."""
        try:
            roles.check_state_redis(self.redis_bg, self.settings)
        except REDIS_DOWN as exc:
            if at_start:
                log.warning("state_redis_not_checked", error=str(exc))
            return
        except redis.ResponseError as exc:  # INFO not allowed: nothing more to learn
            log.warning("state_redis_not_checked", error=str(exc))
        except ConfigError as exc:
            if at_start:
                raise
            self.stats.errors["state_redis_evicts"] += 1
            log.error("state_redis_evicts", error=str(exc))
        self.state_redis_checked = True

    def close(self) -> None:
        """Stop threads, close every client and pool (radiusd's detach)."""
        self.stopping.set()
        self.live.refresher_stopped()
        for t in self._threads:
            t.join(timeout=3)
        self._threads = []
        if self.spool is not None:
            self.spool.close()
            self.spool = None
        self.shards.close()
        clients = (self.redis, self.redis_bg, self.cache_redis, self.cache_bg)
        for client in {id(c): c for c in clients}.values():  # each once (one Redis: the same)
            try:
                client.close()
            except Exception:  # closing a broken connection must not stop detach
                pass
