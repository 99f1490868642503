"""Authentication methods through a real radiusd with rlm_wificore loaded."""

from __future__ import annotations

from tests.conftest import TENANT_A, TENANT_B, TENANT_C


class TestMethods:
    def test_pap_cleartext_accepts(self, auth, subscriber):
        """PAP against a cleartext password gets Access-Accept."""
        user = subscriber(password="s3cret-pap")
        ans = auth(TENANT_A, {"User-Name": user, "User-Password": "s3cret-pap"})
        assert ans.accepted, ans.output

    def test_chap_cleartext_accepts(self, auth, subscriber):
        """CHAP against a cleartext password gets Access-Accept."""
        user = subscriber(password="s3cret-chap")
        ans = auth(TENANT_A, {"User-Name": user, "CHAP-Password": "s3cret-chap"})
        assert ans.accepted, ans.output

    def test_mschap_cleartext_accepts(self, auth, subscriber):
        """MS-CHAP (radclient computes it from MS-CHAP-Password) gets Access-Accept."""
        user = subscriber(password="s3cret-ms")
        ans = auth(TENANT_A, {"User-Name": user, "MS-CHAP-Password": "s3cret-ms"})
        assert ans.accepted, ans.output

    def test_mschap_nthash_accepts(self, auth, subscriber):
        """MS-CHAP against a stored NT hash gets Access-Accept."""
        user = subscriber(password="nt-pass-1", password_type="nthash")
        ans = auth(TENANT_A, {"User-Name": user, "MS-CHAP-Password": "nt-pass-1"})
        assert ans.accepted, ans.output

    def test_pap_wrong_password_rejects(self, auth, subscriber):
        """A wrong PAP password gets Access-Reject with the generic message."""
        user = subscriber(password="right")
        ans = auth(TENANT_A, {"User-Name": user, "User-Password": "wrong"})
        assert ans.code == "Access-Reject", ans.output
        assert ans.pairs["Reply-Message"] == ["Invalid username or password"]

    def test_chap_wrong_password_rejects(self, auth, subscriber):
        """A wrong CHAP password (checked by rlm_chap) gets one generic Reply-Message."""
        user = subscriber(password="right")
        ans = auth(TENANT_A, {"User-Name": user, "CHAP-Password": "wrong"})
        assert ans.code == "Access-Reject", ans.output
        assert ans.pairs["Reply-Message"] == ["Invalid username or password"]

    def test_unknown_user_same_message(self, auth):
        """An unknown user gets the same Reply-Message as a wrong password."""
        ans = auth(TENANT_A, {"User-Name": "nobody-here", "User-Password": "x"})
        assert ans.code == "Access-Reject"
        assert ans.get("Reply-Message") == "Invalid username or password"

    def test_pap_bcrypt_accepts(self, auth, subscriber):
        """PAP against a bcrypt hash gets Access-Accept, a wrong password a reject."""
        user = subscriber(password="bcrypt-pass", password_type="bcrypt")
        assert auth(TENANT_A, {"User-Name": user, "User-Password": "bcrypt-pass"}).accepted
        assert auth(TENANT_A, {"User-Name": user, "User-Password": "nope"}).code == "Access-Reject"

    def test_tenant_on_second_shard(self, auth, subscriber):
        """A tenant on shard2 authenticates through its own NAS."""
        user = subscriber(tenant=TENANT_C, password="on-shard-2")
        assert auth(TENANT_C, {"User-Name": user, "User-Password": "on-shard-2"}).accepted


class TestTenancy:
    def test_cross_tenant_rejected(self, auth, subscriber):
        """A subscriber of tenant A is rejected on tenant B's NAS, right password too."""
        user = subscriber(tenant=TENANT_A, password="mine")
        ans = auth(TENANT_B, {"User-Name": user, "User-Password": "mine"})
        assert ans.code == "Access-Reject", ans.output

    def test_wrong_secret_gets_no_answer(self, auth, subscriber):
        """A packet signed with another tenant's secret is not answered."""
        user = subscriber(tenant=TENANT_A, password="mine")
        ans = auth(TENANT_A, {"User-Name": user, "User-Password": "mine"}, secret=TENANT_B[2])
        assert ans.code is None, ans.output


def mschapv2_attrs(user: str, password: str) -> dict[str, str]:
    """MS-CHAP-Challenge and MS-CHAP2-Response for radclient, computed per RFC 2759."""
    import os

    from benchmarks.loadgen import mschap
    auth_challenge, peer_challenge = os.urandom(16), os.urandom(16)
    nt = mschap.generate_nt_response(auth_challenge, peer_challenge, user, password)
    return {"User-Name": user, "MS-CHAP-Challenge": "0x" + auth_challenge.hex(),
            "MS-CHAP2-Response": "0x" + mschap.ms_chap2_response(1, peer_challenge, nt).hex()}


class TestMsChapV2:
    def test_cleartext_accepts(self, auth, subscriber):
        """MS-CHAPv2 against a cleartext password gets Access-Accept with MS-CHAP2-Success."""
        user = subscriber(password="v2-clear")
        ans = auth(TENANT_A, mschapv2_attrs(user, "v2-clear"))
        assert ans.accepted, ans.output
        assert ans.get("MS-CHAP2-Success")

    def test_nthash_accepts(self, auth, subscriber):
        """MS-CHAPv2 against a stored NT hash gets Access-Accept."""
        user = subscriber(password="v2-nt", password_type="nthash")
        assert auth(TENANT_A, mschapv2_attrs(user, "v2-nt")).accepted

    def test_wrong_password_rejects(self, auth, subscriber):
        """MS-CHAPv2 with a wrong password gets Access-Reject."""
        user = subscriber(password="v2-right")
        assert auth(TENANT_A, mschapv2_attrs(user, "v2-wrong")).code == "Access-Reject"


class TestDynamicClients:
    def test_nas_added_while_running_is_served(self, world, radiusd, auth):
        """A NAS added to the database after radiusd started is served from its first packet."""
        tenant = (3, "127.0.0.4", "secret-late", "mikrotik")
        world.admin("tenant", "add", "--id", "3", "--name", "late tenant")
        world.admin("nas", "add", "--tenant", "3", "--name", "late-nas", "--ip", tenant[1],
                    "--secret", tenant[2], "--vendor", "mikrotik")
        world.admin("plan", "add", "--tenant", "3", "--name", "basic")
        world.admin("subscriber", "add", "--tenant", "3", "--username", "late-user", "--password",
                    "late-pw", "--plan", "basic")
        ans = auth(tenant, {"User-Name": "late-user", "User-Password": "late-pw"})
        assert ans.accepted, ans.output
