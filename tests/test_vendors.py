"""Vendor dialects: a plan's rate in each NAS vendor's reply attributes.

The rendering as pure logic (every dialect, every direction, the 32-bit cap), the
attribute names against the FreeRADIUS build's own dictionaries, and each
dialect's Access-Accept from a real radiusd, decoded from the packet's bytes (an
attribute radiusd's dictionary does not know would be missing or fail there).
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from rlm_wificore import policy
from rlm_wificore.cache import NO_STATE
from tests import rawradius as R
from wificore.profile import Plan, Profile
from wificore.vendors import MAX_BPS, VENDORS

ROOT = Path(__file__).resolve().parent.parent


def plan(up: int | None = 2000, down: int | None = 10000) -> Plan:
    return Plan(7, up, down, 3600, 600, 60, None, None, 1, None)


PROFILE = Profile(1, "pppoe", "cleartext", "pw", "active", None, None, None, 7)


def rate(vendor: str, up: int | None = 2000, down: int | None = 10000) -> list[tuple[str, ...]]:
    """The reply's pairs beyond the standard ones every dialect gets."""
    reply = policy.render_reply(PROFILE, plan(up, down), NO_STATE, vendor, now=0.0)
    standard = {"Session-Timeout", "Idle-Timeout", "Acct-Interim-Interval"}
    assert {p[0] for p in reply} >= standard
    return [p for p in reply if p[0] not in standard]


# The expected rate attributes per dialect: both directions, upload only, download only.
EXPECTED = {
    "mikrotik": ([("Mikrotik-Rate-Limit", "2000k/10000k")],
                 [("Mikrotik-Rate-Limit", "2000k/0k")],
                 [("Mikrotik-Rate-Limit", "0k/10000k")]),
    "wispr": ([("WISPr-Bandwidth-Max-Up", "2000000"), ("WISPr-Bandwidth-Max-Down", "10000000")],
              [("WISPr-Bandwidth-Max-Up", "2000000")],
              [("WISPr-Bandwidth-Max-Down", "10000000")]),
    # "+=": the reply carries Cisco-AVPair twice (radiusd would keep one with "=").
    "cisco": ([("Cisco-AVPair", "+=", "ip:sub-qos-policy-in=WIFICORE-IN-2000K"),
               ("Cisco-AVPair", "+=", "ip:sub-qos-policy-out=WIFICORE-OUT-10000K")],
              [("Cisco-AVPair", "+=", "ip:sub-qos-policy-in=WIFICORE-IN-2000K")],
              [("Cisco-AVPair", "+=", "ip:sub-qos-policy-out=WIFICORE-OUT-10000K")]),
    "cisco-xr": ([("Cisco-AVPair", "+=", "subscriber:sub-qos-policy-in=WIFICORE-IN-2000K"),
                  ("Cisco-AVPair", "+=", "subscriber:sub-qos-policy-out=WIFICORE-OUT-10000K")],
                 [("Cisco-AVPair", "+=", "subscriber:sub-qos-policy-in=WIFICORE-IN-2000K")],
                 [("Cisco-AVPair", "+=", "subscriber:sub-qos-policy-out=WIFICORE-OUT-10000K")]),
    "huawei": ([("Huawei-Input-Average-Rate", "2000000"), ("Huawei-Input-Peak-Rate", "2000000"),
                ("Huawei-Output-Average-Rate", "10000000"), ("Huawei-Output-Peak-Rate", "10000000")],
               [("Huawei-Input-Average-Rate", "2000000"), ("Huawei-Input-Peak-Rate", "2000000")],
               [("Huawei-Output-Average-Rate", "10000000"), ("Huawei-Output-Peak-Rate", "10000000")]),
    "juniper": ([("ERX-Service-Activate:1", "wificore-rate(10000000,2000000)")],
                [("ERX-Service-Activate:1", "wificore-rate-up(2000000)")],
                [("ERX-Service-Activate:1", "wificore-rate-down(10000000)")]),
    "accel-ppp": ([("Filter-Id", "10000/2000")], [("Filter-Id", "0/2000")], [("Filter-Id", "10000/0")]),
    "generic": ([], [], []),
}


class TestRendering:
    def test_every_vendor_has_a_dialect(self):
        assert set(EXPECTED) == set(VENDORS)

    @pytest.mark.parametrize("vendor", VENDORS)
    def test_rate_per_direction(self, vendor):
        """Both directions, upload only, download only, as each vendor documents them."""
        both, up_only, down_only = EXPECTED[vendor]
        assert rate(vendor) == both
        assert rate(vendor, down=None) == up_only
        assert rate(vendor, up=None) == down_only

    @pytest.mark.parametrize("vendor", VENDORS)
    def test_no_rate_no_attribute(self, vendor):
        """A plan without a rate gets no rate attribute in any dialect."""
        assert rate(vendor, up=None, down=None) == []

    def test_unknown_vendor_renders_no_rate(self):
        assert rate("something-else") == []

    def test_bit_rates_capped_to_32_bits(self):
        """WISPr and Huawei integers are 32-bit: a rate over 4.29 Gbit/s is sent as the most."""
        big = 5_000_000  # kbit/s
        assert ("WISPr-Bandwidth-Max-Up", str(MAX_BPS)) in rate("wispr", big, big)
        assert ("Huawei-Output-Peak-Rate", str(MAX_BPS)) in rate("huawei", big, big)
        assert rate("juniper", big, big) == [("ERX-Service-Activate:1",
                                              "wificore-rate(5000000000,5000000000)")]

    def test_rate_reply_stays_static(self):
        """The rate depends on the plan alone: the reply is still rendered once per entry."""
        assert policy.reply_is_static(PROFILE, plan())

    def test_migration_allows_every_vendor(self):
        """The database's CHECK on nas.vendor holds exactly VENDORS."""
        sql = (ROOT / "wificore/migrations/0009_nas_vendors.sql").read_text()
        check = sql.split("CHECK (vendor IN (", 1)[1].split(")", 1)[0]
        assert tuple(re.findall(r"'([^']+)'", check)) == VENDORS


def _dictionary_attributes() -> set[str]:
    """Every attribute name of the FreeRADIUS build's dictionaries and raddb/dictionary,
    following $INCLUDE from the main file as radiusd does."""
    from stack.freeradius import build

    names: set[str] = set()
    seen: set[Path] = set()

    def read(path: Path) -> None:
        if path in seen or not path.exists():
            return
        seen.add(path)
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "$INCLUDE":
                read(path.parent / parts[1])
            elif len(parts) >= 3 and parts[0] == "ATTRIBUTE":
                names.add(parts[1])
    read(build().dictdir / "dictionary")
    read(ROOT / "raddb" / "dictionary")
    return names


@pytest.mark.parametrize("vendor", VENDORS)
def test_attributes_exist_in_freeradius_dictionaries(vendor):
    """Every attribute a dialect renders is in the dictionaries radiusd loads."""
    known = _dictionary_attributes()
    for pair in EXPECTED[vendor][0]:
        assert pair[0].split(":", 1)[0] in known, pair


# ------------------------------------------------------------ through radiusd
TENANT = 170
SECRET = "secret-vendors"
#: One NAS per dialect, in one tenant.
NAS = {vendor: f"127.0.17.{i + 1}" for i, vendor in enumerate(VENDORS)}

MIKROTIK, WISPR, CISCO, HUAWEI, ERX = 14988, 14122, 9, 2011, 4874
FILTER_ID = 11


def vsas(reply: list[tuple[int, bytes]]) -> list[tuple[int, int, bytes]]:
    """(vendor, type, value) of every Vendor-Specific attribute (RFC 2865 layout)."""
    out = []
    for value in R.values(reply, R.VENDOR_SPECIFIC):
        (vendor,) = struct.unpack("!I", value[:4])
        i = 4
        while i + 2 <= len(value):
            vtype, vlen = value[i], value[i + 1]
            out.append((vendor, vtype, value[i + 2:i + vlen]))
            i += vlen
    return out


def u32(value: bytes) -> int:
    return struct.unpack("!I", value)[0]


@pytest.fixture(scope="module")
def vendor_nas(world):
    """A tenant with one NAS per dialect and plans: both directions, download only, fast."""
    world.admin("tenant", "add", "--id", str(TENANT), "--name", "vendors")
    for vendor, ip in NAS.items():
        world.admin("nas", "add", "--tenant", str(TENANT), "--name", f"nas-{vendor}", "--ip", ip,
                    "--secret", SECRET, "--vendor", vendor)
    world.admin("plan", "add", "--tenant", str(TENANT), "--name", "both", "--rate-up-kbps", "2000",
                "--rate-down-kbps", "10000", "--session-timeout-s", "3600", "--simultaneous-use", "5")
    world.admin("plan", "add", "--tenant", str(TENANT), "--name", "down", "--rate-down-kbps", "5000",
                "--simultaneous-use", "5")
    world.admin("plan", "add", "--tenant", str(TENANT), "--name", "fast", "--rate-up-kbps", "5000000",
                "--rate-down-kbps", "5000000", "--simultaneous-use", "5")
    return NAS


def login(radiusd, vendor: str, user: str) -> list[tuple[int, bytes]]:
    code, reply = R.send(radiusd.auth_port, R.ACCESS_REQUEST, SECRET,
                         [(R.USER_NAME, user.encode()), (R.USER_PASSWORD, b"pw-123456")],
                         source=NAS[vendor])
    assert code == "Access-Accept", (vendor, code, radiusd.log_tail())
    return reply


def standard(reply: list[tuple[int, bytes]]) -> tuple[int, ...]:
    return tuple(u32(v) for t in (R.SESSION_TIMEOUT, R.ACCT_INTERIM_INTERVAL) for v in R.values(reply, t))


class TestThroughRadiusd:
    @pytest.fixture
    def user(self, subscriber, vendor_nas):
        def make(plan_name: str) -> str:
            return subscriber(tenant=(TENANT, "", SECRET, ""), plan=plan_name)
        return make

    def test_mikrotik(self, radiusd, user):
        reply = login(radiusd, "mikrotik", user("both"))
        assert [(v, t, x) for v, t, x in vsas(reply) if v == MIKROTIK] == [(MIKROTIK, 8, b"2000k/10000k")]
        assert standard(reply) == (3600, 300)

    def test_wispr(self, radiusd, user):
        reply = login(radiusd, "wispr", user("both"))
        got = {t: u32(x) for v, t, x in vsas(reply) if v == WISPR}
        assert got == {7: 2_000_000, 8: 10_000_000}  # Max-Up, Max-Down in bit/s

    @pytest.mark.parametrize("vendor,prefix", [("cisco", b"ip"), ("cisco-xr", b"subscriber")])
    def test_cisco(self, radiusd, user, vendor, prefix):
        reply = login(radiusd, vendor, user("both"))
        got = [x for v, t, x in vsas(reply) if v == CISCO and t == 1]  # Cisco-AVPair
        assert got == [prefix + b":sub-qos-policy-in=WIFICORE-IN-2000K",
                       prefix + b":sub-qos-policy-out=WIFICORE-OUT-10000K"]

    def test_huawei(self, radiusd, user):
        reply = login(radiusd, "huawei", user("both"))
        got = {t: u32(x) for v, t, x in vsas(reply) if v == HUAWEI}
        # Input-Average, Input-Peak, Output-Average, Output-Peak (bit/s)
        assert got == {2: 2_000_000, 3: 2_000_000, 5: 10_000_000, 6: 10_000_000}

    def test_juniper(self, radiusd, user):
        reply = login(radiusd, "juniper", user("both"))
        got = [x for v, t, x in vsas(reply) if v == ERX and t == 65]  # ERX-Service-Activate
        assert got == [b"\x01wificore-rate(10000000,2000000)"]  # tag 1 (RFC 2868)

    def test_accel_ppp(self, radiusd, user):
        reply = login(radiusd, "accel-ppp", user("both"))
        assert R.values(reply, FILTER_ID) == [b"10000/2000"]
        assert vsas(reply) == []

    def test_generic(self, radiusd, user):
        reply = login(radiusd, "generic", user("both"))
        assert vsas(reply) == [] and R.values(reply, FILTER_ID) == []
        assert standard(reply) == (3600, 300)

    def test_download_only(self, radiusd, user):
        name = user("down")
        assert [x for v, t, x in vsas(login(radiusd, "cisco", name)) if v == CISCO] == [
            b"ip:sub-qos-policy-out=WIFICORE-OUT-5000K"]
        assert {t: u32(x) for v, t, x in vsas(login(radiusd, "huawei", name))} == {5: 5_000_000,
                                                                                   6: 5_000_000}
        assert R.values(login(radiusd, "accel-ppp", name), FILTER_ID) == [b"5000/0"]
        assert [x for v, t, x in vsas(login(radiusd, "juniper", name)) if v == ERX] == [
            b"\x01wificore-rate-down(5000000)"]

    def test_fast_plan_capped(self, radiusd, user):
        """A rate beyond a 32-bit bit/s integer is encoded as the most it holds."""
        name = user("fast")
        assert {t: u32(x) for v, t, x in vsas(login(radiusd, "wispr", name))} == {7: MAX_BPS, 8: MAX_BPS}

    def test_one_subscriber_from_every_vendor(self, radiusd, user):
        """The cached reply is per vendor: the same subscriber, alternating NAS, twice,
        gets each NAS's own dialect every time."""
        name = user("both")
        for _ in range(2):
            for vendor in VENDORS:
                reply = login(radiusd, vendor, name)
                if vendor == "huawei":
                    assert {t for v, t, _ in vsas(reply)} == {2, 3, 5, 6}
                elif vendor == "mikrotik":
                    assert [x for v, t, x in vsas(reply)] == [b"2000k/10000k"]
                elif vendor == "generic":
                    assert vsas(reply) == [] and R.values(reply, FILTER_ID) == []


class TestAdmin:
    def test_unknown_vendor_refused(self, world, vendor_nas):
        """`nas add` names the field and the choices; nothing is written."""
        out = world.admin("nas", "add", "--tenant", str(TENANT), "--name", "nas-bogus", "--ip",
                          "127.0.17.99", "--secret", SECRET, "--vendor", "bogus", check=False)
        assert out.returncode != 0
        assert "vendor: 'bogus' is not one of " + ", ".join(VENDORS) in out.stderr + out.stdout

    def test_database_checks_the_vendor(self, shard_conn, vendor_nas):
        """The CHECK of migration 0009 takes every dialect and refuses another name."""
        import psycopg

        conn = shard_conn(TENANT)
        rows = conn.execute("SELECT vendor FROM nas WHERE tenant_id = %s", (TENANT,)).fetchall()
        assert {r[0] for r in rows} == set(VENDORS)
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE nas SET vendor = 'bogus' WHERE tenant_id = %s", (TENANT,))
