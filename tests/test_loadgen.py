"""Smoke tests for the radload load generator (benchmarks/loadgen)."""
from __future__ import annotations

import hashlib
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pyrad import packet as rpacket  # noqa: E402

from benchmarks.loadgen import mschap, packets, run  # noqa: E402

SECRET = "testing123"

MIXED = """\
# PAP
User-Name = "pap%{n}"
User-Password = "pw%{n}"
NAS-IP-Address = 10.0.0.1
Calling-Station-Id = "02-00-00-00-00-%{n:02X}"
NAS-Port-Type = Wireless-802.11

# CHAP, two attributes on one line
Packet-Type = Access-Request
User-Name = "chap%{n}", CHAP-Password = "chappw"

# MS-CHAPv2
User-Name = "ms%{n}"
MS-CHAP-Password = "clientPass"

Packet-Type = Accounting-Request
User-Name = "pap%{n}"
Acct-Status-Type = Interim-Update
Acct-Session-Id = "s-%{n:04x}"
Acct-Input-Octets = 1000
Event-Timestamp = 1700000000
Mikrotik-Rate-Limit = "10M/10M"
WISPr-Bandwidth-Max-Down = 2000000
"""


@pytest.fixture(scope="module")
def mixed_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A radclient-format file with PAP, CHAP, MS-CHAPv2 and accounting packets."""
    path = tmp_path_factory.mktemp("loadgen") / "mixed.txt"
    path.write_text(MIXED, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def mixed_rld(mixed_file: Path) -> Path:
    """The mixed file encoded into RLD1, 4 packets per template."""
    out = mixed_file.with_suffix(".rld")
    run.prepare_packets(mixed_file, out, SECRET, expand=4)
    return out


@pytest.fixture(scope="module")
def access_rld(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An RLD1 file with PAP Access-Requests only."""
    d = tmp_path_factory.mktemp("loadgen-access")
    src = d / "pap.txt"
    src.write_text('User-Name = "u%{n}"\nUser-Password = "p"\n', encoding="utf-8")
    out = d / "pap.rld"
    run.prepare_packets(src, out, SECRET, expand=8)
    return out


@pytest.fixture
def responder():
    """The trivial C responder on a free loopback port, stopped by PID afterwards."""
    resp = run.Responder(SECRET, max_seconds=60)
    resp.start()
    try:
        yield resp
    finally:
        resp.stop()


def _decode(kind: int, data: bytes, secret: str = SECRET):
    """Decode an encoded request with pyrad and the shipped dictionary."""
    d = packets.load_dictionary()
    cls = rpacket.AuthPacket if kind == packets.KIND_ACCESS else rpacket.AcctPacket
    return cls(packet=data, secret=secret.encode(), dict=d)


def test_parse_mixed_radclient_file(mixed_file: Path) -> None:
    """A radclient file with PAP, CHAP, MS-CHAPv2 and accounting parses into four templates of the right kinds."""
    templates = packets.parse_radclient_file(mixed_file)
    assert [t.kind for t in templates] == [1, 1, 1, 2]
    assert templates[0].get("User-Password") == "pw%{n}"
    assert templates[1].get("CHAP-Password") == "chappw"
    assert templates[2].get("MS-CHAP-Password") == "clientPass"
    assert templates[3].get("Acct-Status-Type") == "Interim-Update"


def test_encoded_packets_carry_valid_credentials(mixed_rld: Path) -> None:
    """Encoded PAP, CHAP, MS-CHAPv2 and accounting packets decode with the secret and carry correct credentials."""
    recs = packets.read_rld1(mixed_rld)
    assert len(recs) == 16
    pap, chap, ms, acct = (_decode(k, data) for k, data in recs[4:8])  # n = 1
    assert pap["User-Name"] == ["pap1"]
    assert pap.PwDecrypt(pap["User-Password"][0]) == "pw1"
    assert pap["Calling-Station-Id"] == ["02-00-00-00-00-01"]
    assert chap.VerifyChapPasswd("chappw")
    challenge = ms["MS-CHAP-Challenge"][0]
    resp = ms["MS-CHAP2-Response"][0]
    assert len(challenge) == 16 and len(resp) == 50
    peer = resp[2:18]
    assert resp[18:26] == b"\x00" * 8
    assert resp[26:] == mschap.generate_nt_response(challenge, peer, "ms1", "clientPass")
    assert acct.VerifyAcctRequest()
    assert acct["Acct-Session-Id"] == ["s-0001"]
    assert acct["Mikrotik-Rate-Limit"] == ["10M/10M"]
    authenticators = {data[4:20] for kind, data in recs if kind == packets.KIND_ACCESS}
    assert len(authenticators) == 12


def test_message_authenticator_is_refused(tmp_path: Path) -> None:
    """A template with Message-Authenticator is refused because radload rewrites the Id it covers."""
    src = tmp_path / "ma.txt"
    src.write_text('User-Name = "a"\nUser-Password = "b"\nMessage-Authenticator = 0x00\n')
    with pytest.raises(packets.PacketFileError):
        run.prepare_packets(src, tmp_path / "ma.rld", SECRET)


def test_mschapv2_rfc2759_vector() -> None:
    """The MS-CHAPv2 NT-Response and authenticator response match the RFC 2759 section 9.2 test vector."""
    auth = bytes.fromhex("5B5D7C7D7B3F2F3E3C2C602132262628")
    peer = bytes.fromhex("21402324255E262A28295F2B3A337C7E")
    nt = mschap.generate_nt_response(auth, peer, "User", "clientPass")
    assert nt.hex().upper() == "82309ECD8D708B5EA08FAA3981CD83544233114A3D85D6DF"
    assert mschap.nt_password_hash("clientPass").hex().upper() == "44EBBA8D5312B8D611474411F56989AE"
    assert (mschap.generate_authenticator_response("clientPass", nt, peer, auth, "User")
            == "S=407A5589115FD0D6209F510FE9C04566932CDA56")


def test_pure_md4_and_des_vectors() -> None:
    """The pure-Python MD4 and DES match the RFC 1320 and FIPS 46 test vectors."""
    assert mschap.md4(b"").hex() == "31d6cfe0d16ae931b73c59d7e0c089c0"
    assert mschap.md4(b"abc").hex() == "a448017aaf21d8525fc10ae87aa6729d"
    assert mschap.md4(b"1234567890" * 8).hex() == "e33b4ddc9c38f2199c3e7b164fcc0536"
    key = bytes.fromhex("133457799BBCDFF1")
    assert mschap.des_encrypt_block(key, bytes.fromhex("0123456789ABCDEF")).hex() == "85e813540f0ab405"


def test_radload_md5_matches_hashlib() -> None:
    """radload's own MD5 gives the RFC 1321 digests."""
    binary = run.build("radload")
    for text in ("", "abc", "message digest", "1234567890" * 8):
        out = subprocess.run([str(binary), "--md5", text], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        assert out == hashlib.md5(text.encode()).hexdigest()


def test_all_accepted_against_responder(mixed_rld: Path, responder: run.Responder) -> None:
    """Against the trivial responder every request of a mixed file is answered, verified and counted, none lost."""
    res = run.run_radload(mixed_rld, responder.target, SECRET, window=16, count=160,
                          duration=10, timeout=2)
    assert res["sent"] == 160
    assert res["received"] == 160
    assert res["accept"] == 120
    assert res["acct_response"] == 40
    assert res["lost"] == 0 and res["bad_auth"] == 0 and res["reject"] == 0
    assert res["p50_ms"] > 0 and res["max_ms"] >= res["p99_ms"] >= res["p50_ms"]
    stats = responder.stop()
    assert stats is not None and stats["requests"] == 160 and stats["bad_acct_auth"] == 0


def test_window_beyond_256_uses_more_sockets(access_rld: Path, responder: run.Responder) -> None:
    """A window above 256 spreads the requests over several sockets, each with its own Ids."""
    res = run.run_radload(access_rld, responder.target, SECRET, window=600, count=3000,
                          duration=10, timeout=2)
    assert res["sockets"] == 3
    assert res["sent"] == res["received"] == res["accept"] == 3000
    assert res["lost"] == 0 and res["bad_auth"] == 0 and res["late"] == 0


def test_open_loop_rate(access_rld: Path, responder: run.Responder) -> None:
    """Open loop sends exactly --count packets at about the requested rate."""
    res = run.run_radload(access_rld, responder.target, SECRET, rate=2000, count=200,
                          duration=10, timeout=2)
    assert res["mode"] == "open"
    assert res["sent"] == res["received"] == res["accept"] == 200
    assert 0.08 <= res["duration_s"] <= 0.5


def test_open_loop_polling_keeps_latencies_exact(access_rld: Path, responder: run.Responder) -> None:
    """--poll-us collects responses every 5 ms instead of on each arrival (bursts every
    5 ms too); latencies come from the kernel's receive timestamps, so they stay well under
    that interval (read at collection time, they would be ~5 ms)."""
    res = run.run_radload(access_rld, responder.target, SECRET, rate=2000, count=400,
                          duration=10, timeout=2, tick_us=5000, poll_us=5000)
    assert res["mode"] == "open" and res["poll_us"] == 5000
    assert res["sent"] == res["received"] == res["accept"] == 400
    assert res["p50_ms"] < 1.0, res


def test_closed_loop_polling_keeps_latencies_exact(access_rld: Path,
                                                  responder: run.Responder) -> None:
    """In closed loop too, --poll-us collects responses every 5 ms and refills the window
    then; the latencies still come from the kernel's receive timestamps (read at
    collection time they would be ~5 ms), and the window bounds what is in flight."""
    res = run.run_radload(access_rld, responder.target, SECRET, window=8, count=400,
                          duration=10, timeout=2, poll_us=5000)
    assert res["mode"] == "closed" and res["poll_us"] == 5000
    assert res["sent"] == res["received"] == res["accept"] == 400
    assert res["p50_ms"] < 1.0, res
    # 400 requests, 8 per 5 ms collection: at least 50 collections
    assert res["duration_s"] >= 0.2, res


def test_polling_without_recvmmsg_is_refused(access_rld: Path) -> None:
    """--poll-us takes its latencies from recvmmsg's timestamps: with --io plain radload
    says so and exits, rather than quietly waking for each response."""
    binary = run.build("radload")
    proc = subprocess.run([str(binary), "--file", str(access_rld), "--target", "127.0.0.1:9",
                           "--secret", SECRET, "--count", "1", "--duration", "1",
                           "--io", "plain", "--poll-us", "500"],
                          capture_output=True, text=True, timeout=10)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "--poll-us needs --io mmsg" in proc.stderr


def test_lost_and_reject_counts(access_rld: Path) -> None:
    """Dropped requests count as lost after the timeout and Access-Rejects as reject."""
    with run.Responder(SECRET, drop_every=5, reject_every=4, max_seconds=60) as resp:
        res = run.run_radload(access_rld, resp.target, SECRET, window=8, count=40,
                              duration=10, timeout=0.3)
    assert res["sent"] == 40
    assert res["lost"] == 8
    assert res["received"] == 32
    assert res["reject"] > 0 and res["accept"] + res["reject"] == 32


def test_wrong_secret_gives_bad_auth(access_rld: Path, responder: run.Responder) -> None:
    """Responses signed with another secret than radload's count as bad_auth, not accept."""
    res = run.run_radload(access_rld, responder.target, "not-the-secret", window=8, count=16,
                          duration=10, timeout=1)
    assert res["bad_auth"] == 16
    assert res["accept"] == 0


def test_refuses_non_loopback_target(access_rld: Path) -> None:
    """radload refuses a target outside 127.0.0.0/8 such as 8.8.8.8 unless --allow-host names it."""
    binary = run.build("radload")
    proc = subprocess.run([str(binary), "--file", str(access_rld), "--target", "8.8.8.8:1812",
                           "--secret", SECRET, "--count", "1", "--duration", "1"],
                          capture_output=True, text=True, timeout=10)
    assert proc.returncode == 3
    assert proc.stdout == ""
    assert "refusing" in proc.stderr
    with pytest.raises(run.RadloadError):
        run.run_radload(access_rld, "8.8.8.8:1812", SECRET, count=1, duration=1,
                        allow_host="8.8.4.4")


def test_acct_port_routes_accounting(mixed_rld: Path) -> None:
    """With --acct-port the Accounting-Requests go to that port and the rest to the target."""
    with run.Responder(SECRET, max_seconds=60) as auth, \
            run.Responder(SECRET, max_seconds=60) as acct:
        res = run.run_radload(mixed_rld, auth.target, SECRET, window=8, count=32,
                              acct_port=acct.port, duration=10, timeout=2)
        auth_stats, acct_stats = auth.stop(), acct.stop()
    assert res["accept"] == 24 and res["acct_response"] == 8 and res["lost"] == 0
    assert auth_stats["access"] == 24 and auth_stats["accounting"] == 0
    assert acct_stats["accounting"] == 8 and acct_stats["access"] == 0


def _python_responder(sock: socket.socket, stop: threading.Event, seen: list[bool],
                      peers: set[str] | None = None) -> None:
    """Answer requests with hashlib-signed replies, recording whether accounting signatures verify."""
    secret = SECRET.encode()
    sock.settimeout(0.05)
    for _ in range(100000):
        if stop.is_set():
            return
        try:
            data, peer = sock.recvfrom(4096)
        except TimeoutError:
            continue
        if peers is not None:
            peers.add(peer[0])
        code, ident, length = struct.unpack("!BBH", data[:4])
        if code == 4:
            expect = hashlib.md5(data[:4] + b"\x00" * 16 + data[20:length] + secret).digest()
            seen.append(expect == data[4:20])
        reply_code = 2 if code == 1 else 5
        head = struct.pack("!BBH", reply_code, ident, 20)
        sock.sendto(head + hashlib.md5(head + data[4:20] + secret).digest(), peer)


def test_signatures_match_independent_implementation(mixed_rld: Path) -> None:
    """radload's accounting signatures and reply checks agree with a hashlib-based responder."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    stop = threading.Event()
    seen: list[bool] = []
    thread = threading.Thread(target=_python_responder, args=(sock, stop, seen), daemon=True)
    thread.start()
    try:
        res = run.run_radload(mixed_rld, f"127.0.0.1:{sock.getsockname()[1]}", SECRET,
                              window=4, count=32, duration=10, timeout=2)
    finally:
        stop.set()
        thread.join(timeout=5)
        sock.close()
    assert res["accept"] == 24 and res["acct_response"] == 8
    assert res["bad_auth"] == 0 and res["lost"] == 0
    assert seen == [True] * 8


def test_source_address_binding(access_rld: Path) -> None:
    """--source makes every request leave from the given loopback address."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    stop = threading.Event()
    peers: set[str] = set()
    thread = threading.Thread(target=_python_responder, args=(sock, stop, [], peers),
                              daemon=True)
    thread.start()
    try:
        res = run.run_radload(access_rld, f"127.0.0.1:{sock.getsockname()[1]}", SECRET,
                              window=4, count=8, duration=10, timeout=2, source="127.0.0.2")
    finally:
        stop.set()
        thread.join(timeout=5)
        sock.close()
    assert res["accept"] == 8
    assert peers == {"127.0.0.2"}
