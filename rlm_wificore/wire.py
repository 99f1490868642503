"""The wire format of stream records, shared by rlm_wificore and batch_writer.

A record is a msgpack array ``[version, kind, {field: value}]`` stored in the
``d`` field of a stream entry. Decoding never trusts the payload: anything
malformed raises :class:`DecodeError` from the cause.
"""

from __future__ import annotations

from typing import Any

import msgpack

from .errors import DecodeError

VERSION = 1
KIND_ACCT = "acct"
KIND_AUTH = "auth"
KINDS = (KIND_ACCT, KIND_AUTH)


def pack(kind: str, fields: dict[str, Any]) -> bytes:
    """Encode one record."""
    if kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r}")
    return msgpack.packb([VERSION, kind, fields], use_bin_type=True)


def unpack(payload: bytes) -> tuple[str, dict[str, Any]]:
    """Decode one record into (kind, fields)."""
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise DecodeError(f"undecodable record: {exc}") from exc
    if not (isinstance(obj, list) and len(obj) == 3):
        raise DecodeError("record is not [version, kind, fields]")
    version, kind, fields = obj
    if version != VERSION:
        raise DecodeError(f"unsupported record version {version!r}")
    if kind not in KINDS:
        raise DecodeError(f"unknown record kind {kind!r}")
    if not isinstance(fields, dict):
        raise DecodeError("record fields are not a map")
    return kind, fields
