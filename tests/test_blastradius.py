"""BlastRADIUS (CVE-2024-3596) with real packets, on the FreeRADIUS build under test
(WIFICORE_FREERADIUS: 3.2.1 or 3.2.7): every Access-Accept and Access-Reject carries a
valid Message-Authenticator as its first attribute, and a NAS set to require one gets
its Access-Requests without one dropped. Packets are built here byte by byte (raw UDP),
so nothing hides what is on the wire."""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct

import pytest

from tests.conftest import TENANT_A
from tests.rawradius import encrypt_password

ACCESS_REQUEST, ACCESS_ACCEPT, ACCESS_REJECT, STATUS_SERVER = 1, 2, 3, 12
USER_NAME, USER_PASSWORD, MESSAGE_AUTHENTICATOR, REPLY_MESSAGE = 1, 2, 80, 18

#: Two NAS of tenant A, one requiring a Message-Authenticator (the CLI's default), one not.
NAS_REQUIRES = ("127.0.15.1", "secret-ma-yes")
NAS_OPTIONAL = ("127.0.15.2", "secret-ma-no")


def _attr(kind: int, value: bytes) -> bytes:
    return bytes([kind, 2 + len(value)]) + value


def access_request(user: str, password: str, secret: str, *, ma: str | None = "good",
                   ident: int = 7) -> tuple[bytes, bytes]:
    """(packet, Request Authenticator); ``ma``: "good", "bad" (wrong value) or None."""
    key = secret.encode()
    authenticator = os.urandom(16)
    attrs = _attr(USER_NAME, user.encode()) + \
        _attr(USER_PASSWORD, encrypt_password(password.encode(), key, authenticator))
    if ma is not None:
        attrs = _attr(MESSAGE_AUTHENTICATOR, b"\0" * 16) + attrs
    header = struct.pack("!BBH", ACCESS_REQUEST, ident, 20 + len(attrs))
    packet = header + authenticator + attrs
    if ma is not None:
        mac = hmac.new(key, packet, hashlib.md5).digest()
        if ma == "bad":
            mac = bytes(16)
        packet = header + authenticator + _attr(MESSAGE_AUTHENTICATOR, mac) + attrs[18:]
    return packet, authenticator


def exchange(port: int, source: str, packet: bytes, timeout_s: float = 3.0) -> bytes | None:
    """Send one datagram from ``source``; the answer, or None after the timeout."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(timeout_s)
        s.sendto(packet, ("127.0.0.1", port))
        try:
            return s.recv(4096)
        except TimeoutError:
            return None


def attributes(packet: bytes) -> list[tuple[int, int, bytes]]:
    """(offset, type, value) of each attribute."""
    out, i = [], 20
    while i < len(packet):
        kind, length = packet[i], packet[i + 1]
        assert length >= 2 and i + length <= len(packet), f"bad attribute at {i}"
        out.append((i, kind, packet[i + 2:i + length]))
        i += length
    return out


def check_reply(reply: bytes, request_authenticator: bytes, secret: str) -> list[tuple[int, int, bytes]]:
    """Assert the Response Authenticator and the Message-Authenticator (RFC 3579 3.2:
    HMAC-MD5 over the reply with the Request Authenticator and the attribute zeroed)
    are right and that Message-Authenticator comes first; the attributes."""
    key = secret.encode()
    code, ident, length = struct.unpack("!BBH", reply[:4])
    assert length == len(reply)
    expected = hashlib.md5(reply[:4] + request_authenticator + reply[20:] + key).digest()
    assert reply[4:20] == expected, "Response Authenticator"
    attrs = attributes(reply)
    mas = [(off, value) for off, kind, value in attrs if kind == MESSAGE_AUTHENTICATOR]
    assert len(mas) == 1, f"{len(mas)} Message-Authenticator in the reply (code {code})"
    off, value = mas[0]
    assert len(value) == 16
    zeroed = reply[:4] + request_authenticator + reply[20:off + 2] + bytes(16) + reply[off + 18:]
    assert hmac.compare_digest(value, hmac.new(key, zeroed, hashlib.md5).digest()), \
        "Message-Authenticator does not verify"
    assert attrs[0][1] == MESSAGE_AUTHENTICATOR, "Message-Authenticator is not the first attribute"
    return attrs


@pytest.fixture(scope="module")
def nas_pair(world):
    for (ip, secret), flag in ((NAS_REQUIRES, None), (NAS_OPTIONAL, "no")):
        args = ["nas", "add", "--tenant", str(TENANT_A[0]), "--name", f"ma-{ip}", "--ip", ip,
                "--secret", secret, "--replace"]
        if flag:
            args += ["--require-message-authenticator", flag]
        world.admin(*args)
    return NAS_REQUIRES, NAS_OPTIONAL


class TestRepliesAreSigned:
    @pytest.mark.parametrize("nas", [NAS_REQUIRES, NAS_OPTIONAL], ids=["requires", "optional"])
    def test_accept_carries_message_authenticator(self, radiusd, nas_pair, subscriber, nas):
        user = subscriber()
        packet, auth = access_request(user, "pw-123456", nas[1])
        reply = exchange(radiusd.auth_port, nas[0], packet)
        assert reply is not None, radiusd.log_tail()
        assert reply[0] == ACCESS_ACCEPT, reply
        check_reply(reply, auth, nas[1])

    def test_reject_wrong_password_carries_message_authenticator(self, radiusd, nas_pair, subscriber):
        """A reject by rlm_pap (Post-Auth-Type REJECT)."""
        user = subscriber()
        packet, auth = access_request(user, "wrong", NAS_OPTIONAL[1])
        reply = exchange(radiusd.auth_port, NAS_OPTIONAL[0], packet)
        assert reply is not None and reply[0] == ACCESS_REJECT, reply
        check_reply(reply, auth, NAS_OPTIONAL[1])

    def test_reject_by_policy_carries_message_authenticator(self, radiusd, nas_pair):
        """A reject decided by the module in authorize (unknown user), with its Reply-Message."""
        packet, auth = access_request("nobody-here", "x", NAS_OPTIONAL[1], ma=None)
        reply = exchange(radiusd.auth_port, NAS_OPTIONAL[0], packet)
        assert reply is not None and reply[0] == ACCESS_REJECT, reply
        attrs = check_reply(reply, auth, NAS_OPTIONAL[1])
        assert any(kind == REPLY_MESSAGE for _, kind, _ in attrs)

    def test_status_server_reply_carries_message_authenticator(self, radiusd, nas_pair):
        """Status-Server (RFC 5997, status_server = yes) is answered with a signed Access-Accept."""
        key = NAS_OPTIONAL[1].encode()
        authenticator = os.urandom(16)
        header = struct.pack("!BBH", STATUS_SERVER, 9, 20 + 18)
        mac = hmac.new(key, header + authenticator + _attr(MESSAGE_AUTHENTICATOR, bytes(16)),
                       hashlib.md5).digest()
        packet = header + authenticator + _attr(MESSAGE_AUTHENTICATOR, mac)
        reply = exchange(radiusd.auth_port, NAS_OPTIONAL[0], packet)
        assert reply is not None and reply[0] == ACCESS_ACCEPT, reply
        check_reply(reply, authenticator, NAS_OPTIONAL[1])


class TestRequireMessageAuthenticator:
    def test_request_without_one_is_dropped(self, radiusd, nas_pair, subscriber):
        """The NAS requires it: an unsigned request gets no answer; a signed one does."""
        user = subscriber()
        packet, _ = access_request(user, "pw-123456", NAS_REQUIRES[1], ma=None)
        assert exchange(radiusd.auth_port, NAS_REQUIRES[0], packet, timeout_s=2) is None
        packet, auth = access_request(user, "pw-123456", NAS_REQUIRES[1])
        reply = exchange(radiusd.auth_port, NAS_REQUIRES[0], packet)
        assert reply is not None and reply[0] == ACCESS_ACCEPT, radiusd.log_tail()
        check_reply(reply, auth, NAS_REQUIRES[1])

    def test_optional_nas_is_answered_without_one(self, radiusd, nas_pair, subscriber):
        user = subscriber()
        packet, auth = access_request(user, "pw-123456", NAS_OPTIONAL[1], ma=None)
        reply = exchange(radiusd.auth_port, NAS_OPTIONAL[0], packet)
        assert reply is not None and reply[0] == ACCESS_ACCEPT, radiusd.log_tail()
        check_reply(reply, auth, NAS_OPTIONAL[1])

    @pytest.mark.parametrize("nas", [NAS_REQUIRES, NAS_OPTIONAL], ids=["requires", "optional"])
    def test_wrong_message_authenticator_is_dropped(self, radiusd, nas_pair, subscriber, nas):
        user = subscriber()
        packet, _ = access_request(user, "pw-123456", nas[1], ma="bad")
        assert exchange(radiusd.auth_port, nas[0], packet, timeout_s=2) is None


class TestWarnings:
    def test_327_asks_only_about_nas_that_do_not_require_it(self, radiusd, nas_pair, subscriber, world):
        """3.2.7 logs "Please set require_message_authenticator = true" for a dynamic client
        whose requests carry one while it does not require it; a NAS set to require it (the
        CLI's default) gets no such line. 3.2.1 logs none."""
        user = subscriber()
        for ip, secret in nas_pair:
            packet, _ = access_request(user, "pw-123456", secret)
            assert exchange(radiusd.auth_port, ip, packet) is not None, radiusd.log_tail()
        listed = world.admin("nas", "list", "--tenant", str(TENANT_A[0])).stdout
        ids = {line.split()[2]: line.split()[0] for line in listed.splitlines()[1:] if len(line.split()) > 2}
        log = radiusd.logfile.read_text(errors="replace")
        asks = {ip: f'require_message_authenticator = true" for client {TENANT_A[0]}:{ids[ip]}:' in log
                for ip, _ in nas_pair}
        assert not asks[NAS_REQUIRES[0]], "asked about a NAS that already requires it"
        assert asks[NAS_OPTIONAL[0]] == (radiusd.freeradius.version == "3.2.7"), asks


class TestCli:
    def test_default_set_and_list(self, world):
        """`nas add` requires it unless told otherwise; `nas set` changes it; `nas list` shows it."""
        tenant = str(TENANT_A[0])
        world.admin("nas", "add", "--tenant", tenant, "--name", "ma-cli", "--ip", "127.0.15.3",
                    "--secret", "secret-cli", "--replace")
        listed = world.admin("nas", "list", "--tenant", tenant).stdout
        assert any("ma-cli" in line and line.rstrip().endswith("yes") for line in listed.splitlines()), listed
        world.admin("nas", "set", "--tenant", tenant, "--name", "ma-cli",
                    "--require-message-authenticator", "no")
        listed = world.admin("nas", "list", "--tenant", tenant).stdout
        assert any("ma-cli" in line and line.rstrip().endswith("no") for line in listed.splitlines()), listed
        bad = world.admin("nas", "set", "--tenant", tenant, "--name", "ma-cli",
                          "--require-message-authenticator", "auto", check=False)
        assert bad.returncode != 0 and "require_message_authenticator" in bad.stderr
