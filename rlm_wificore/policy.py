"""Policy: pure functions from (profile, plan, live state, request) to a decision.

No I/O here; every reject carries a reason code (for the auth log and the
NOC) and a Reply-Message a hotspot login page can show. Unknown user and
wrong password share one message, so the answer never tells which it was.
"""

from __future__ import annotations

from wificore import vendors
from wificore.profile import Plan, Profile, normalise_mac

from .cache import LiveState
from .result import radius_text

#: reason code -> Reply-Message
MESSAGES = {
    "unknown_user": "Invalid username or password",
    "bad_password": "Invalid username or password",
    "method_unsupported": "Invalid username or password",
    "suspended": "Your account is suspended, please contact your provider",
    "expired": "Your account has expired",
    "tenant_suspended": "Service suspended, please contact your provider",
    "mac_mismatch": "This account is bound to another device",
    "wrong_service": "This account cannot be used for this service",
    "session_limit": "Maximum number of simultaneous sessions reached",
    "data_quota": "Your data quota is used up",
    "time_quota": "Your time quota is used up",
    "bad_request": "Invalid request",
    "duplicate_attribute": "Invalid request",
    "bad_encoding": "Invalid request",
    "two_methods": "Invalid request",
    "malformed_credentials": "Invalid request",
    "unknown_client": "Invalid request",
    # WiFiCore-Proxy-Client from a client that is not the balancer (policy.d/wificore).
    "forged_identity": "Invalid request",
    "backend_unavailable": "Service temporarily unavailable, please try again",
    "internal_error": "Service temporarily unavailable, please try again",
}
REASONS = tuple(MESSAGES)
#: Session-Timeout is a RADIUS integer (RFC 2865 5.27): at most 2^32 - 1 seconds.
MAX_SESSION_TIMEOUT_S = 2**32 - 1

#: NAS-Port-Type values (as radiusd names them: RFC 2865, RFC 4603) that say which kind
#: of service a login is for. Ethernet, Virtual and the rest say nothing on their own: a
#: MikroTik sends Ethernet for PPPoE and for a hotspot profile set to ethernet.
PORT_KINDS = {
    "Wireless-802.11": "hotspot", "Wireless-Other": "hotspot",
    "PPPoA": "pppoe", "PPPoEoA": "pppoe", "PPPoEoE": "pppoe", "PPPoEoVLAN": "pppoe",
    "PPPoEoQinQ": "pppoe",
}


def service_kind(req: dict[str, str]) -> str | None:
    """The subscriber kind an Access-Request is for, as the NAS says it; None when it
    does not say (the kind check then lets the login through).

    ``pppoe``: Framed-Protocol = PPP (MikroTik, Cisco, Juniper, Huawei, accel-ppp send it
    with every PPP login, with Service-Type = Framed-User), or a PPPoE NAS-Port-Type
    (RFC 4603). ``hotspot``: Service-Type = Login-User (CoovaChilli, Cisco WLC web
    auth), or a wireless NAS-Port-Type without PPP (a MikroTik hotspot, 802.1X on
    Wi-Fi). Three dict lookups: it runs on every login of a NAS with the check on."""
    if req.get("Framed-Protocol") == "PPP":
        return "pppoe"
    if req.get("Service-Type") == "Login-User":
        return "hotspot"
    return PORT_KINDS.get(req.get("NAS-Port-Type", ""))


def is_mac_auth(profile: Profile, username: str, password: str | None) -> bool:
    """A MAC-authentication login (``subscriber add --mac-auth``): an empty PAP password
    for a subscriber whose username is a MAC and who is bound to that MAC."""
    return (password == "" and profile.mac_binding is not None
            and normalise_mac(username) == profile.mac_binding)


def reject_reply(reason: str) -> tuple[tuple[str, str], ...]:
    """The reply of a reject: its Reply-Message."""
    return (("Reply-Message", MESSAGES[reason]),)


def check(profile: Profile, plan: Plan, state: LiveState | None, *,
          now: float, calling_station_id: str | None, service: str | None = None) -> str | None:
    """The first policy rule the subscriber breaks, as a reason code; None if none.
    ``service``: the kind the request is for (:func:`service_kind`; None: not known, or
    the NAS's kind check is off)."""
    if profile.status != "active":
        return profile.status  # 'suspended' or 'expired'
    if profile.expires_at is not None and profile.expires_at <= now:
        return "expired"
    if service is not None and service != profile.kind:
        return "wrong_service"
    if profile.mac_binding is not None and normalise_mac(calling_station_id) != profile.mac_binding:
        return "mac_mismatch"
    if state is not None:  # None: Redis is down; counters unknown, fail open
        if state.sessions >= plan.simultaneous_use:
            return "session_limit"
        return quota_used_up(plan, state, now)
    return None


def quota_used_up(plan: Plan, state: LiveState | None, now: float) -> str | None:
    """``data_quota`` or ``time_quota`` when the usage in ``state`` (in the plan's quota
    period current at ``now``) has reached the plan's quota; None otherwise (or when the
    usage is unknown). The login check above and the CoA sidecar's mid-session check
    (coa_sender/quota.py) both ask this."""
    if state is None:
        return None
    octets, time_s = state.used(now)
    if plan.data_quota_bytes is not None and octets >= plan.data_quota_bytes:
        return "data_quota"
    if plan.time_quota_s is not None and time_s >= plan.time_quota_s:
        return "time_quota"
    return None


def reply_is_static(profile: Profile, plan: Plan) -> bool:
    """True when the reply depends on nothing but the profile and plan (not on the clock
    or the usage counters), so it can be rendered once per cache entry."""
    return profile.expires_at is None and plan.time_quota_s is None


def render_reply(profile: Profile, plan: Plan, state: LiveState | None, vendor: str,
                 *, now: float) -> tuple[tuple[str, ...], ...]:
    """The plan as the NAS's vendor understands it: (attribute, value) pairs, and
    (attribute, "+=", value) for an attribute the reply carries more than once."""
    reply: list[tuple[str, ...]] = []
    limits = []
    if plan.session_timeout_s:
        limits.append(plan.session_timeout_s)
    if plan.time_quota_s and state is not None:
        # The time left in the quota's period, and never past the period's end: the reset
        # changes the answer (docs/decisions.md, "Quota periods").
        limits.append(max(1, plan.time_quota_s - state.used(now)[1]))
        if state.resets_at is not None and now < state.resets_at:
            limits.append(max(1, int(state.resets_at - now)))
    if profile.expires_at is not None:
        limits.append(max(1, int(profile.expires_at - now)))
    if limits:
        # A 32-bit integer on the wire: radiusd wraps a larger value around (5e9 s of
        # time quota became 705032704, an expiry in 2200 anything at all).
        reply.append(("Session-Timeout", str(min(min(limits), MAX_SESSION_TIMEOUT_S))))
    if plan.idle_timeout_s:
        reply.append(("Idle-Timeout", str(plan.idle_timeout_s)))
    reply.append(("Acct-Interim-Interval", str(plan.interim_interval_s)))
    if profile.framed_ip and ":" not in profile.framed_ip:  # IPv4 only (radiusd sent 0.0.0.0)
        reply.append(("Framed-IP-Address", profile.framed_ip))
    elif plan.framed_pool:
        reply.append(("Framed-Pool", radius_text(plan.framed_pool)))
    # IPv6 (RFC 3162, RFC 4818): the subscriber's own prefix, else the plan's pool; a
    # delegated prefix (DHCPv6-PD) of its own.
    if profile.framed_ipv6_prefix:
        reply.append(("Framed-IPv6-Prefix", profile.framed_ipv6_prefix))
    elif plan.framed_ipv6_pool:
        reply.append(("Framed-IPv6-Pool", radius_text(plan.framed_ipv6_pool)))
    if profile.delegated_ipv6_prefix:
        reply.append(("Delegated-IPv6-Prefix", profile.delegated_ipv6_prefix))
    up, down = plan.rate_up_kbps, plan.rate_down_kbps
    if up or down:
        reply.extend(rate_pairs(vendor, up or 0, down or 0))
    return tuple(reply)


def rate_pairs(vendor: str, up: int, down: int) -> list[tuple[str, ...]]:
    """A plan's rate (kbit/s; 0: that direction unlimited) as the reply attributes of
    the NAS's dialect (wificore/vendors.py; README.md, "Vendor dialects"). "Up" is
    what the subscriber sends, "down" what it receives. ``generic`` and a vendor not
    known here get none."""
    pairs: list[tuple[str, ...]] = []
    if vendor == "mikrotik":
        # rx/tx as the router sees the client: upload/download; 0 is unlimited.
        return [("Mikrotik-Rate-Limit", f"{up}k/{down}k")]
    if vendor == "wispr":  # bit/s
        if up:
            pairs.append(("WISPr-Bandwidth-Max-Up", str(vendors.bps(up))))
        if down:
            pairs.append(("WISPr-Bandwidth-Max-Down", str(vendors.bps(down))))
        return pairs
    if vendor == "cisco" or vendor == "cisco-xr":
        # Input is what the router receives from the subscriber: upload. "+=": with
        # rlm_python3's default "=", radiusd keeps the first Cisco-AVPair only.
        prefix = "ip" if vendor == "cisco" else "subscriber"
        if up:
            pairs.append(("Cisco-AVPair", "+=",
                          f"{prefix}:sub-qos-policy-in={vendors.CISCO_POLICY_IN.format(kbps=up)}"))
        if down:
            pairs.append(("Cisco-AVPair", "+=",
                          f"{prefix}:sub-qos-policy-out={vendors.CISCO_POLICY_OUT.format(kbps=down)}"))
        return pairs
    if vendor == "huawei":  # bit/s; input is upstream. The peak rate needs the average.
        if up:
            pairs += [("Huawei-Input-Average-Rate", str(vendors.bps(up))),
                      ("Huawei-Input-Peak-Rate", str(vendors.bps(up)))]
        if down:
            pairs += [("Huawei-Output-Average-Rate", str(vendors.bps(down))),
                      ("Huawei-Output-Peak-Rate", str(vendors.bps(down)))]
        return pairs
    if vendor == "juniper":  # a tagged attribute (RFC 2868): tag 1; parameters in bit/s
        if up and down:
            service = f"{vendors.JUNIPER_SERVICE}({down * 1000},{up * 1000})"
        elif down:
            service = f"{vendors.JUNIPER_SERVICE_DOWN}({down * 1000})"
        elif up:
            service = f"{vendors.JUNIPER_SERVICE_UP}({up * 1000})"
        else:  # no rate (a CoA after both were cleared): no service at 0 bit/s
            return pairs
        return [("ERX-Service-Activate:1", service)]
    if vendor == "accel-ppp":  # its shaper's default: Filter-Id "down/up" in kbit/s
        return [("Filter-Id", f"{down}/{up}")]
    return pairs
