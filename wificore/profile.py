"""Subscriber profiles and plans as cached: small, immutable, msgpack-able.

The Redis form is a positional msgpack array (no field names) so that a
cached profile stays well under 200 bytes.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import msgpack

from .errors import DecodeError

STATUS = ("active", "suspended", "expired")
PW_TYPES = ("cleartext", "nthash", "bcrypt")
KINDS = ("pppoe", "hotspot")
#: A NAS's subscriber-kind check (``nas add/set --kind-check``): ``strict`` rejects a
#: login whose request says it is for the other kind (wrong_service), ``off`` never.
KIND_CHECKS = ("strict", "off")
#: The client shortname's suffix of a NAS whose kind check is off.
KIND_OFF = "kind-off"
#: RFC 5176 §3.1: the CoA / Disconnect port a NAS listens on unless told otherwise.
COA_PORT = 3799

#: Redis value of a negatively cached (unknown) user.
UNKNOWN = b"\x00"

_MAC = re.compile(r"[0-9a-f]{2}([:-])[0-9a-f]{2}(?:\1[0-9a-f]{2}){4}"
                  r"|[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}|[0-9a-f]{12}")
_SEPARATORS = re.compile(r"[:.-]")


def normalise_mac(raw: str | None) -> str | None:
    """'AA:BB:CC:DD:EE:FF', 'AA-BB-CC-DD-EE-FF', 'aabb.ccdd.eeff', 'aabbccddeeff' ->
    'aa:bb:cc:dd:ee:ff'; None for anything else (only these real MAC formats)."""
    if not raw:
        return None
    raw = raw.lower()
    if _MAC.fullmatch(raw) is None:
        return None
    digits = _SEPARATORS.sub("", raw)
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    plan_id: int
    rate_up_kbps: int | None
    rate_down_kbps: int | None
    session_timeout_s: int | None
    idle_timeout_s: int | None
    interim_interval_s: int
    data_quota_bytes: int | None
    time_quota_s: int | None
    simultaneous_use: int
    framed_pool: str | None
    #: Framed-IPv6-Pool (2026-12-01, appended: a cached plan of 10 fields still reads).
    framed_ipv6_pool: str | None = None
    #: What the quotas count over (wificore/quota.py; 2026-12-01, appended and left out
    #: when 'none', so a cached plan of 11 fields reads and an older module reads ours).
    quota_period: str = "none"

    def pack(self) -> bytes:
        values = dataclasses.astuple(self)
        return msgpack.packb(values[:-1] if self.quota_period == "none" else values)

    @classmethod
    def unpack(cls, raw: bytes) -> Plan:
        try:
            return cls(*msgpack.unpackb(raw))
        except Exception as exc:
            raise DecodeError(f"bad cached plan: {exc}") from exc


@dataclasses.dataclass(frozen=True, slots=True)
class Profile:
    subscriber_id: int
    kind: str
    password_type: str
    password: str
    status: str
    expires_at: int | None  # epoch seconds
    mac_binding: str | None  # normalised aa:bb:cc:dd:ee:ff
    framed_ip: str | None
    plan_id: int
    #: Framed-IPv6-Prefix and Delegated-IPv6-Prefix ('2001:db8:1::/64'), 2026-12-01:
    #: appended after plan_id (live.lua reads plan_id as the 9th), left out when unset,
    #: so a cached profile of 9 fields still reads and most stay that size.
    framed_ipv6_prefix: str | None = None
    delegated_ipv6_prefix: str | None = None

    def pack(self) -> bytes:
        values = [
            self.subscriber_id, KINDS.index(self.kind), PW_TYPES.index(self.password_type),
            self.password, STATUS.index(self.status), self.expires_at, self.mac_binding,
            self.framed_ip, self.plan_id]
        if self.framed_ipv6_prefix is not None or self.delegated_ipv6_prefix is not None:
            values += [self.framed_ipv6_prefix, self.delegated_ipv6_prefix]
        return msgpack.packb(values)

    @classmethod
    def unpack(cls, raw: bytes) -> Profile:
        try:
            sid, kind, pwt, pw, st, exp, mac, ip, plan, *v6 = msgpack.unpackb(raw)
            return cls(sid, KINDS[kind], PW_TYPES[pwt], pw, STATUS[st], exp, mac, ip, plan, *v6)
        except Exception as exc:
            raise DecodeError(f"bad cached profile: {exc}") from exc


#: One round trip on a miss: the subscriber and its plan. No row: the tenant is not on
#: that shard (a process whose map is behind a tenant move read the source after its
#: cleanup: no answer, never an "unknown user" cached for every process); a row of NULLs:
#: the user is unknown.
PROFILE_SQL = """
SELECT s.subscriber_id, s.kind, s.password_type, s.password, s.status,
       extract(epoch FROM s.expires_at)::bigint, s.mac_binding::text, host(s.framed_ip),
       p.plan_id, p.rate_up_kbps, p.rate_down_kbps, p.session_timeout_s, p.idle_timeout_s,
       p.interim_interval_s, p.data_quota_bytes, p.time_quota_s, p.simultaneous_use,
       p.framed_pool, p.framed_ipv6_pool, p.quota_period,
       s.framed_ipv6_prefix::text, s.delegated_ipv6_prefix::text
  FROM (VALUES (%s::integer, %s::text)) AS q (tenant_id, username)
  JOIN tenants t ON t.tenant_id = q.tenant_id
  LEFT JOIN (subscribers s JOIN plans p USING (tenant_id, plan_id))
         ON s.tenant_id = q.tenant_id AND s.username = q.username
"""

PLAN_SQL = """
SELECT plan_id, rate_up_kbps, rate_down_kbps, session_timeout_s, idle_timeout_s,
       interim_interval_s, data_quota_bytes, time_quota_s, simultaneous_use, framed_pool,
       framed_ipv6_pool, quota_period
  FROM plans WHERE tenant_id = %s AND plan_id = %s
"""


def from_row(row: tuple[Any, ...]) -> tuple[Profile, Plan]:
    """Split a PROFILE_SQL row into the profile and its plan."""
    # plan_id (the 9th) ends the profile's first columns and starts the plan's; the
    # profile's IPv6 prefixes are the last two.
    profile = Profile(*row[:9], *row[-2:])
    return profile, Plan(*row[8:-2])


@dataclasses.dataclass(frozen=True, slots=True)
class Nas:
    """A RADIUS client as rlm_wificore knows it."""

    tenant_id: int
    nas_id: int
    ip: str
    secret: str
    vendor: str
    #: BlastRADIUS: radiusd drops this NAS's Access-Requests without a Message-Authenticator.
    require_message_authenticator: bool = False
    #: The subscriber-kind check: 'strict' (the default) or 'off' (KIND_CHECKS).
    kind_check: str = "strict"
    #: The UDP port of the NAS's CoA / Disconnect server (RFC 5176; the CoA sidecar).
    coa_port: int = COA_PORT

    @property
    def shortname(self) -> str:
        """The client shortname radiusd hands back in WiFiCore-Client: the module reads
        the tenant, the NAS, the vendor and whether the kind check is off from it."""
        base = f"{self.tenant_id}:{self.nas_id}:{self.vendor}"
        return base if self.kind_check != "off" else f"{base}:{KIND_OFF}"

    def pack(self) -> bytes:
        values = list(dataclasses.astuple(self))
        # Trailing defaults are left out: a directory entry of a strict NAS on the default
        # CoA port stays the 6 fields an older module reads.
        if values[-1] == COA_PORT:
            values.pop()
            if values[-1] == "strict":
                values.pop()
        return msgpack.packb(values)

    @classmethod
    def unpack(cls, raw: bytes) -> Nas:
        try:
            return cls(*msgpack.unpackb(raw))
        except Exception as exc:
            raise DecodeError(f"bad cached NAS: {exc}") from exc


#: A NAS of a suspended tenant stays a known client: its logins are rejected
#: (``tenant_suspended``), its accounting is still answered and stored.
NAS_SQL = """
SELECT n.tenant_id, n.nas_id, host(n.ip), n.secret, n.vendor, n.require_message_authenticator,
       n.kind_check, n.coa_port
  FROM nas n JOIN tenants t USING (tenant_id)
 WHERE n.ip = %s::inet
"""

#: The tenant's status ('active' or 'suspended') and time zone (quota periods).
TENANT_SQL = "SELECT status, time_zone FROM tenants WHERE tenant_id = %s"
#: A tenant the shard its map names does not hold (deleted, or moved by a move not yet
#: followed): for a second in process, never in Redis; its logins get "try again".
TENANT_UNKNOWN = "unknown"
