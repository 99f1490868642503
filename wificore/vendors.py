"""The NAS dialects a plan's rate is rendered in (README.md, "Vendor dialects").

A NAS's ``vendor`` (``nas add --vendor``) picks the reply attributes that carry
the plan's rate (rlm_wificore.policy.rate_pairs); the session and idle timeouts
are standard attributes every dialect gets. The database's CHECK on
``nas.vendor`` (migrations 0001 and 0009) holds the same names.
"""

from __future__ import annotations

VENDORS = (
    "mikrotik",   # Mikrotik-Rate-Limit "<up>k/<down>k" (RouterOS PPP, hotspot)
    "wispr",      # WISPr-Bandwidth-Max-Up/Down, bit/s (CoovaChilli, OPNsense, Ruckus, UniFi)
    "cisco",      # IOS-XE ISG: Cisco-AVPair "ip:sub-qos-policy-in/out=<policy-map>"
    "cisco-xr",   # IOS-XR BNG: Cisco-AVPair "subscriber:sub-qos-policy-in/out=<policy-map>"
    "huawei",     # Huawei-Input/Output-Average-Rate and -Peak-Rate, bit/s
    "juniper",    # ERX-Service-Activate:1 "wificore-rate(<down>,<up>)", bit/s
    "accel-ppp",  # Filter-Id "<down>/<up>", kbit/s (its shaper's default attribute)
    "generic",    # no rate attribute: the NAS limits nothing from RADIUS
)

#: The policy-map names of the Cisco dialects: one per direction and rate, which the
#: operator configures on the router once per rate sold (README.md).
CISCO_POLICY_IN = "WIFICORE-IN-{kbps}K"
CISCO_POLICY_OUT = "WIFICORE-OUT-{kbps}K"

#: The Junos / JunosE service the Juniper dialect activates, with its parameters in
#: bit/s: both directions, or one of them when the plan limits only one.
JUNIPER_SERVICE = "wificore-rate"
JUNIPER_SERVICE_DOWN = "wificore-rate-down"
JUNIPER_SERVICE_UP = "wificore-rate-up"

#: A bit/s value in a 32-bit RADIUS integer (WISPr, Huawei) is at most this much
#: (4.29 Gbit/s); a faster plan is sent as this.
MAX_BPS = 2**32 - 1


def bps(kbps: int) -> int:
    """kbit/s -> bit/s (1 kbit = 1000 bit, as every dialect here counts), capped to a
    32-bit RADIUS integer."""
    return min(kbps * 1000, MAX_BPS)
