"""The wire format of stream records, shared by rlm_wificore and batch_writer.

A record is a msgpack array ``[version, kind, {field: value}]`` stored in the
``d`` field of a stream entry. Decoding never trusts the payload: anything
malformed raises :class:`DecodeError` from the cause.

Streams (see keys.py): ``{prefix}:stream:{N}``, N = tenant_id %
stream_partitions (so one session's records stay in order in one partition),
for accounting and auth-log records alike. Each entry
has one field ``d`` = the packed record. Bad entries go to the dead-letter
stream ``{prefix}:dead`` with fields ``d`` (the payload as received),
``reason``, ``source`` and ``ts``.

``acct`` fields (all present; None where the NAS sent nothing):
  tenant_id int, nas_id int, session_key str (stable: same session -> same
  key), acct_session_id str, username str,
  status str: 'start' | 'interim' | 'stop' | 'on' | 'off' (on/off: NAS-wide,
  session_key/acct_session_id/username are '' then),
  event_ts float (epoch s; Event-Timestamp, else arrival - Acct-Delay-Time),
  arrival_ts float, session_time_s int, input_octets int, output_octets int
  (64-bit, Gigawords folded in), input_packets int, output_packets int,
  calling_station_id str|None, framed_ip str|None, terminate_cause str|None,
  nas_port str|None, interim_s int (the interval the NAS was told),
  record_id str (unique per Accounting-Request received; a retransmission
  gets a new one: idempotence comes from the merge rules, not from it).

``auth`` fields:
  tenant_id int, nas_id int, ts float, event_id str (unique; the auth log's
  key, so a replay inserts nothing twice), username str,
  calling_station_id str|None, result 'accept'|'reject', reason str,
  method 'pap'|'chap'|'mschap'|'other'.
"""

from __future__ import annotations

from typing import Any

import msgpack

from .errors import DecodeError

VERSION = 1
KIND_ACCT = "acct"
KIND_AUTH = "auth"
KINDS = (KIND_ACCT, KIND_AUTH)


#: One packer for every record: packb() builds a new one per call. Packer.pack
#: runs in C without releasing the GIL, so sharing it between threads is safe.
_packer = msgpack.Packer(use_bin_type=True)


def pack(kind: str, fields: dict[str, Any]) -> bytes:
    """Encode one record."""
    if kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r}")
    return _packer.pack((VERSION, kind, fields))


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
