"""MS-CHAPv2 (RFC 2759) client computations in pure Python.

OpenSSL 3 disables MD4 and single DES by default and the standard library
has no DES at all. MD4 comes from :mod:`wificore.md4`; this module
carries a small DES (FIPS 46-3, encryption of single blocks only) and builds
on both:

* :func:`nt_password_hash` - MD4 of the UTF-16LE password,
* :func:`generate_nt_response` - the 24-octet NT-Response,
* :func:`generate_authenticator_response` - the "S=..." string a server
  returns in MS-CHAP2-Success,
* :func:`ms_chap2_response` - the 50-octet MS-CHAP2-Response attribute
  value (RFC 2548 section 2.3.2).
"""
from __future__ import annotations

import functools
import hashlib

__all__ = [
    "md4",
    "des_encrypt_block",
    "nt_password_hash",
    "challenge_hash",
    "challenge_response",
    "generate_nt_response",
    "generate_authenticator_response",
    "ms_chap2_response",
]

# --------------------------------------------------------------------- MD4

from wificore.md4 import md4  # noqa: E402  (OpenSSL 3 offers no md4 to hashlib)

_M32 = 0xFFFFFFFF


# --------------------------------------------------------------------- DES

_IP = (58, 50, 42, 34, 26, 18, 10, 2, 60, 52, 44, 36, 28, 20, 12, 4,
       62, 54, 46, 38, 30, 22, 14, 6, 64, 56, 48, 40, 32, 24, 16, 8,
       57, 49, 41, 33, 25, 17, 9, 1, 59, 51, 43, 35, 27, 19, 11, 3,
       61, 53, 45, 37, 29, 21, 13, 5, 63, 55, 47, 39, 31, 23, 15, 7)
_FP = tuple(_IP.index(i) + 1 for i in range(1, 65))
_P = (16, 7, 20, 21, 29, 12, 28, 17, 1, 15, 23, 26, 5, 18, 31, 10,
      2, 8, 24, 14, 32, 27, 3, 9, 19, 13, 30, 6, 22, 11, 4, 25)
_PC1 = (57, 49, 41, 33, 25, 17, 9, 1, 58, 50, 42, 34, 26, 18,
        10, 2, 59, 51, 43, 35, 27, 19, 11, 3, 60, 52, 44, 36,
        63, 55, 47, 39, 31, 23, 15, 7, 62, 54, 46, 38, 30, 22,
        14, 6, 61, 53, 45, 37, 29, 21, 13, 5, 28, 20, 12, 4)
_PC2 = (14, 17, 11, 24, 1, 5, 3, 28, 15, 6, 21, 10,
        23, 19, 12, 4, 26, 8, 16, 7, 27, 20, 13, 2,
        41, 52, 31, 37, 47, 55, 30, 40, 51, 45, 33, 48,
        44, 49, 39, 56, 34, 53, 46, 42, 50, 36, 29, 32)
_SHIFTS = (1, 1, 2, 2, 2, 2, 2, 2, 1, 2, 2, 2, 2, 2, 2, 1)
_SBOX = (
    (14, 4, 13, 1, 2, 15, 11, 8, 3, 10, 6, 12, 5, 9, 0, 7,
     0, 15, 7, 4, 14, 2, 13, 1, 10, 6, 12, 11, 9, 5, 3, 8,
     4, 1, 14, 8, 13, 6, 2, 11, 15, 12, 9, 7, 3, 10, 5, 0,
     15, 12, 8, 2, 4, 9, 1, 7, 5, 11, 3, 14, 10, 0, 6, 13),
    (15, 1, 8, 14, 6, 11, 3, 4, 9, 7, 2, 13, 12, 0, 5, 10,
     3, 13, 4, 7, 15, 2, 8, 14, 12, 0, 1, 10, 6, 9, 11, 5,
     0, 14, 7, 11, 10, 4, 13, 1, 5, 8, 12, 6, 9, 3, 2, 15,
     13, 8, 10, 1, 3, 15, 4, 2, 11, 6, 7, 12, 0, 5, 14, 9),
    (10, 0, 9, 14, 6, 3, 15, 5, 1, 13, 12, 7, 11, 4, 2, 8,
     13, 7, 0, 9, 3, 4, 6, 10, 2, 8, 5, 14, 12, 11, 15, 1,
     13, 6, 4, 9, 8, 15, 3, 0, 11, 1, 2, 12, 5, 10, 14, 7,
     1, 10, 13, 0, 6, 9, 8, 7, 4, 15, 14, 3, 11, 5, 2, 12),
    (7, 13, 14, 3, 0, 6, 9, 10, 1, 2, 8, 5, 11, 12, 4, 15,
     13, 8, 11, 5, 6, 15, 0, 3, 4, 7, 2, 12, 1, 10, 14, 9,
     10, 6, 9, 0, 12, 11, 7, 13, 15, 1, 3, 14, 5, 2, 8, 4,
     3, 15, 0, 6, 10, 1, 13, 8, 9, 4, 5, 11, 12, 7, 2, 14),
    (2, 12, 4, 1, 7, 10, 11, 6, 8, 5, 3, 15, 13, 0, 14, 9,
     14, 11, 2, 12, 4, 7, 13, 1, 5, 0, 15, 10, 3, 9, 8, 6,
     4, 2, 1, 11, 10, 13, 7, 8, 15, 9, 12, 5, 6, 3, 0, 14,
     11, 8, 12, 7, 1, 14, 2, 13, 6, 15, 0, 9, 10, 4, 5, 3),
    (12, 1, 10, 15, 9, 2, 6, 8, 0, 13, 3, 4, 14, 7, 5, 11,
     10, 15, 4, 2, 7, 12, 9, 5, 6, 1, 13, 14, 0, 11, 3, 8,
     9, 14, 15, 5, 2, 8, 12, 3, 7, 0, 4, 10, 1, 13, 11, 6,
     4, 3, 2, 12, 9, 5, 15, 10, 11, 14, 1, 7, 6, 0, 8, 13),
    (4, 11, 2, 14, 15, 0, 8, 13, 3, 12, 9, 7, 5, 10, 6, 1,
     13, 0, 11, 7, 4, 9, 1, 10, 14, 3, 5, 12, 2, 15, 8, 6,
     1, 4, 11, 13, 12, 3, 7, 14, 10, 15, 6, 8, 0, 5, 9, 2,
     6, 11, 13, 8, 1, 4, 10, 7, 9, 5, 0, 15, 14, 2, 3, 12),
    (13, 2, 8, 4, 6, 15, 11, 1, 10, 9, 3, 14, 5, 0, 12, 7,
     1, 15, 13, 8, 10, 3, 7, 4, 12, 5, 6, 11, 0, 14, 9, 2,
     7, 11, 4, 1, 9, 12, 14, 2, 0, 6, 10, 13, 15, 3, 5, 8,
     2, 1, 14, 7, 4, 10, 8, 13, 15, 12, 9, 0, 3, 5, 6, 11),
)


def _permute_bits(x: int, table: tuple[int, ...], in_bits: int) -> int:
    """Bit permutation: output bit j (from the MSB) is input bit table[j] (1-based)."""
    out = 0
    for src in table:
        out = (out << 1) | ((x >> (in_bits - src)) & 1)
    return out


def _byte_tables(table: tuple[int, ...], in_bits: int) -> list[list[int]]:
    """Per input byte position and byte value, the permuted output bits."""
    tables = []
    for pos in range(in_bits // 8):
        shift = in_bits - 8 - 8 * pos
        tables.append([_permute_bits(v << shift, table, in_bits) for v in range(256)])
    return tables


_IP_T = _byte_tables(_IP, 64)
_FP_T = _byte_tables(_FP, 64)
_PC1_T = _byte_tables(_PC1, 64)
_PC2_T = _byte_tables(_PC2, 56)


def _apply(tables: list[list[int]], x: int, in_bits: int) -> int:
    out = 0
    shift = in_bits - 8
    for t in tables:
        out |= t[(x >> shift) & 0xFF]
        shift -= 8
    return out


def _make_sp() -> list[list[int]]:
    sp = []
    for i, box in enumerate(_SBOX):
        row = []
        for v in range(64):
            s = box[(((v >> 5) & 1) << 1 | (v & 1)) * 16 + ((v >> 1) & 0xF)]
            row.append(_permute_bits(s << (28 - 4 * i), _P, 32))
        sp.append(row)
    return sp


_SP = _make_sp()


@functools.lru_cache(maxsize=4096)
def _key_schedule(key: bytes) -> tuple[tuple[int, ...], ...]:
    """The 16 round keys of an 8-octet key, each split into eight 6-bit chunks."""
    k56 = _apply(_PC1_T, int.from_bytes(key, "big"), 64)
    c, d = k56 >> 28, k56 & 0xFFFFFFF
    rounds = []
    for s in _SHIFTS:
        c = ((c << s) | (c >> (28 - s))) & 0xFFFFFFF
        d = ((d << s) | (d >> (28 - s))) & 0xFFFFFFF
        k48 = _apply(_PC2_T, (c << 28) | d, 56)
        rounds.append(tuple((k48 >> (42 - 6 * i)) & 0x3F for i in range(8)))
    return tuple(rounds)


def des_encrypt_block(key: bytes, block: bytes) -> bytes:
    """Encrypt one 8-octet block with single DES (ECB), key of 8 octets (parity ignored)."""
    if len(key) != 8 or len(block) != 8:
        raise ValueError("DES needs an 8-octet key and an 8-octet block")
    x = _apply(_IP_T, int.from_bytes(block, "big"), 64)
    left, right = x >> 32, x & _M32
    sp = _SP
    for rk in _key_schedule(bytes(key)):
        # E expansion: eight overlapping 6-bit windows of right, wrapping around
        e = ((right & 1) << 33) | (right << 1) | (right >> 31)
        f = 0
        for i in range(8):
            f |= sp[i][((e >> (28 - 4 * i)) & 0x3F) ^ rk[i]]
        left, right = right, left ^ f
    y = _apply(_FP_T, (right << 32) | left, 64)
    return y.to_bytes(8, "big")


def _des_key_from_7(k7: bytes) -> bytes:
    """Spread 56 key bits over 8 octets (the low bit of each octet is parity)."""
    v = int.from_bytes(k7, "big")
    return bytes(((v >> (49 - 7 * i)) & 0x7F) << 1 for i in range(8))


# ----------------------------------------------------------------- MS-CHAP


def nt_password_hash(password: str) -> bytes:
    """NtPasswordHash: MD4 of the password in UTF-16LE (RFC 2759 section 8.3)."""
    return md4(password.encode("utf-16-le"))


def challenge_hash(peer_challenge: bytes, authenticator_challenge: bytes,
                   username: str) -> bytes:
    """ChallengeHash: first 8 octets of SHA1(Peer+Authenticator+UserName) (section 8.2)."""
    return hashlib.sha1(peer_challenge + authenticator_challenge
                        + username.encode("utf-8")).digest()[:8]


def challenge_response(challenge: bytes, password_hash: bytes) -> bytes:
    """ChallengeResponse: DES of the challenge under three 7-octet key parts (section 8.5)."""
    z = password_hash + b"\x00" * (21 - len(password_hash))
    return b"".join(des_encrypt_block(_des_key_from_7(z[i:i + 7]), challenge)
                    for i in (0, 7, 14))


def _strip_domain(username: str) -> str:
    """The user part of DOMAIN\\user, as MS-CHAPv2 peers hash it."""
    return username.rsplit("\\", 1)[-1]


def generate_nt_response(authenticator_challenge: bytes, peer_challenge: bytes,
                         username: str, password: str) -> bytes:
    """GenerateNTResponse (RFC 2759 section 8.1): the 24-octet NT-Response."""
    ch = challenge_hash(peer_challenge, authenticator_challenge, _strip_domain(username))
    return challenge_response(ch, nt_password_hash(password))


def generate_authenticator_response(password: str, nt_response: bytes,
                                    peer_challenge: bytes,
                                    authenticator_challenge: bytes,
                                    username: str) -> str:
    """GenerateAuthenticatorResponse (RFC 2759 section 8.7): the "S=<40 hex>" string."""
    magic1 = bytes.fromhex("4D616769632073657276657220746F20636C69656E74207369676E696E6720636F6E7374616E74")
    magic2 = bytes.fromhex("50616420746F206D616B6520697420646F206D6F7265207468616E206F6E6520697465726174696F6E")
    hash_hash = md4(nt_password_hash(password))
    digest = hashlib.sha1(hash_hash + nt_response + magic1).digest()
    ch = challenge_hash(peer_challenge, authenticator_challenge, _strip_domain(username))
    digest = hashlib.sha1(digest + ch + magic2).digest()
    return "S=" + digest.hex().upper()


def ms_chap2_response(ident: int, peer_challenge: bytes, nt_response: bytes,
                      flags: int = 0) -> bytes:
    """MS-CHAP2-Response value: Ident, Flags, Peer-Challenge, 8 reserved octets, Response."""
    if len(peer_challenge) != 16 or len(nt_response) != 24:
        raise ValueError("peer challenge must be 16 octets and NT-Response 24")
    return bytes((ident & 0xFF, flags & 0xFF)) + peer_challenge + b"\x00" * 8 + nt_response
