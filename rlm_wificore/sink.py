"""The records the hooks leave behind: accounting and auth-log records into the spool.

Each record is packed as a value list in the field order of wire.py and
appended to the spool (durable before the hook returns); the forwarder thread
moves the spool to Redis. Event ids are a random per-process prefix and a
counter: unique and cheap. No password is ever written.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable

from wificore import wire
from wificore.errors import InputError, StoreUnavailable

from . import records, request
from .spool import Spool, SpoolFull
from .stats import Stats

MAX_USERNAME = 253


class Sink:
    """Packs accounting and auth-log records and appends them to the spool."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.spool: Spool | None = None  # opened by Engine.start (never under `freeradius -C`)
        # Auth-log event ids: a random per-process prefix and a counter (unique, cheap).
        self._event_prefix = uuid.uuid4().hex[:16]
        self._event_seq = itertools.count()

    def accounting(self, req: dict[str, str], tenant_id: int, nas_id: int, interim_s: int,
                   day_of: Callable[[float], int] | None = None) -> str:
        """Spool the accounting record of ``req``; its kind (start, interim, ..., invalid).
        ``day_of``: the tenant's local day of an instant (see records.acct_record).

        :class:`SpoolFull` (nothing written) if the spool's disk has no room."""
        if self.spool is None:
            raise StoreUnavailable("the accounting spool is not open")
        try:
            problem = request.accounting_problem(req)  # a repeated Acct-Status-Type, ...
            if problem is not None:
                raise InputError(problem)
            kind, values = records.acct_record(
                req, tenant_id=tenant_id, nas_id=nas_id, interim_s=interim_s, arrival_ts=time.time(),
                record_id=f"{self._event_prefix}{next(self._event_seq):x}", day_of=day_of)
            payload = wire.pack_values(wire.KIND_ACCT, values)
        except InputError as exc:
            # Answered (the NAS must not retry it forever) and kept for the NOC.
            payload = wire.pack(wire.KIND_ACCT, {
                "tenant_id": tenant_id, "nas_id": nas_id, "invalid": str(exc),
                "raw": {k: v[:MAX_USERNAME] for k, v in req.items() if "Password" not in k}})
            kind = "invalid"
        self.spool.append(payload)
        return kind

    def log_auth(self, req: dict[str, str], tenant_id: int, nas_id: int, username: str, *,
                 accepted: bool, reason: str, interim_s: int | None = None) -> None:
        """Spool one auth-log record (the forwarder moves it to Redis); never a password."""
        if self.spool is None:
            self.stats.errors["authlog_no_spool"] += 1
            return
        method = ("pap" if "User-Password" in req else "chap" if "CHAP-Password" in req
                  else "mschap" if "MS-CHAP-Challenge" in req else "other")
        try:  # wire.AUTH_FIELDS order
            self.spool.append(wire.pack_values(wire.KIND_AUTH, [
                tenant_id, nas_id, time.time(), f"{self._event_prefix}{next(self._event_seq):x}",
                username[:MAX_USERNAME], req.get("Calling-Station-Id"),
                "accept" if accepted else "reject", reason, method, interim_s]))
        except SpoolFull:  # a full disk never costs a login: the record is counted as dropped
            self.stats.errors["authlog_dropped"] += 1
