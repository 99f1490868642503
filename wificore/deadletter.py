"""``wificore-admin deadletter``: list, inspect, count and replay dead letters.

The dead-letter stream ``{prefix}:dead`` (batch_writer) holds records the writer
could never store: each entry has ``d`` (the payload as received), ``reason``,
``source`` (``<stream>/<id>`` it came from) and ``ts``. After a fix (a tenant
created, a writer bug fixed), ``replay`` puts them back:

* each payload is re-added (XADD) to the stream partition of its tenant
  (``tenant_id % partitions``, as radiusd chooses it), or, when it cannot be
  decoded, to the stream named in ``source``;
* only then is the dead-letter entry deleted (XDEL). A crash in between leaves
  the record in both places; replaying it again is harmless, because the
  writer's merge is idempotent (sessions: monotonic rules; auth log: ON
  CONFLICT DO NOTHING on the event id): the record is stored exactly once.

Text output never prints raw control characters from packets: CR, LF, ESC and
the rest are written as escapes (``\\r``, ``\\n``, ``\\x1b``), so a crafted
User-Name cannot forge or hide lines of the output.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
from collections.abc import Iterable
from typing import Any

import redis

from . import roles, wire
from .errors import DecodeError, InputError, WiFiCoreError
from .keys import Keys
from .settings import Settings

PAGE = 500
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape(value: Any) -> str:
    """Text safe for a terminal and a log: non-UTF-8 bytes and control characters escaped."""
    text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)
    return _CONTROL.sub(lambda m: {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(
        m.group(), f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}"), text)


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _when(ts: bytes | None) -> str:
    try:
        return dt.datetime.fromtimestamp(float(_text(ts)), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return escape(_text(ts)) or "-"


def _decoded(payload: bytes) -> tuple[str, dict[str, Any]] | None:
    try:
        return wire.unpack(payload)
    except DecodeError:
        return None


class DeadLetters:
    """The dead-letter stream of one key prefix."""

    def __init__(self, client: redis.Redis, keys: Keys, partitions: int) -> None:
        self.r = client
        self.keys = keys
        self.partitions = partitions

    @property
    def name(self) -> str:
        """The first dead-letter stream (bucket 0's); see :attr:`names`."""
        return self.names[0]

    @property
    def names(self) -> list[str]:
        """Every dead-letter stream: the buckets', then the one from before 2026-12-01."""
        return self.keys.dead_letters

    def count(self) -> int:
        return sum(int(self.r.xlen(name)) for name in self.names)

    def entries(self, limit: int | None = None) -> Iterable[tuple[Any, dict[Any, Any]]]:
        """Oldest first within each stream, stream by stream, paged."""
        seen = 0
        for name in self.names:
            start = "-"
            while limit is None or seen < limit:
                n = PAGE if limit is None else min(PAGE, limit - seen)
                rows = self.r.xrange(name, start, "+", count=n)
                if not rows:
                    break
                for entry_id, fields in rows:
                    yield entry_id, fields or {}
                    seen += 1
                start = "(" + _text(rows[-1][0])

    def _find(self, entry_id: str) -> tuple[str, dict[Any, Any]] | None:
        for name in self.names:
            rows = self.r.xrange(name, entry_id, entry_id, count=1)
            if rows:
                return name, rows[0][1] or {}
        return None

    def get(self, entry_id: str) -> dict[Any, Any] | None:
        found = self._find(entry_id)
        return found[1] if found else None

    def target(self, fields: dict[bytes, bytes]) -> str:
        """The stream a dead letter goes back to: the bucket stream it came from (batch_writer's),
        else its subscriber's bucket's (live.lua's, or one from a stream before 2026-12-01)."""
        source = _text(fields.get(b"source")).rsplit("/", 1)[0]
        known = {self.keys.stream(p) for p in range(self.partitions)}
        if source in known:
            return source
        rec = _decoded(fields.get(b"d", b""))
        if rec is not None and isinstance(rec[1].get("tenant_id"), int) and rec[1]["tenant_id"] >= 0:
            return self.keys.stream(self.keys.bucket(rec[1]["tenant_id"], str(rec[1].get("username") or "")))
        raise InputError(f"no stream to replay to (source {escape(source)!r}, payload not decodable)")

    def replay(self, entry_id: str, fields: dict[bytes, bytes]) -> str:
        """XADD to its stream, then XDEL here; the stream and new id."""
        payload = fields.get(b"d")
        if not payload:
            raise InputError(f"{entry_id}: empty payload, nothing to replay")
        stream = self.target(fields)
        new_id = self.r.xadd(stream, {"d": payload})
        found = self._find(entry_id)
        if found:
            self.r.xdel(found[0], entry_id)  # only once the record is back in its stream
        return f"{stream}/{_text(new_id)}"


class RedisFailed(WiFiCoreError):
    """Redis could not be reached or refused a command (exit 1, one line)."""


def _redis_errors(fn: Any) -> Any:
    def run(admin: Any, args: argparse.Namespace) -> None:
        try:
            fn(admin, args)
        except redis.RedisError as exc:
            raise RedisFailed(f"redis: {exc}") from None
    run.__doc__ = fn.__doc__
    return run


def _open(args: argparse.Namespace) -> DeadLetters:
    client = roles.client(args.redis_url, socket_timeout=10, socket_connect_timeout=5)
    return DeadLetters(client, Keys(args.key_prefix, args.partitions), args.partitions)


def cmd_list(_admin: Any, args: argparse.Namespace) -> None:
    dl = _open(args)
    print("id\tdead_at\tsource\tbytes\treason")
    for entry_id, f in dl.entries(args.limit):
        print("\t".join((escape(entry_id), _when(f.get(b"ts")), escape(f.get(b"source", b"")),
                         str(len(f.get(b"d", b""))), escape(f.get(b"reason", b"")))))


def cmd_show(_admin: Any, args: argparse.Namespace) -> None:
    dl = _open(args)
    f = dl.get(args.id)
    if f is None:
        raise InputError(f"id: no dead letter {escape(args.id)!r} in {dl.name}")
    payload = f.get(b"d", b"")
    print(f"id: {escape(args.id)}")
    print(f"dead_at: {_when(f.get(b'ts'))}")
    print(f"source: {escape(f.get(b'source', b''))}")
    print(f"reason: {escape(f.get(b'reason', b''))}")
    print(f"bytes: {len(payload)}")
    rec = _decoded(payload)
    if rec is None:
        print(f"payload (not decodable): {payload.hex()}")
    else:
        kind, fields = rec
        print(f"kind: {kind}")
        for k, v in fields.items():
            print(f"  {escape(k)}: {escape(json.dumps(v, ensure_ascii=False, default=repr))}")
    try:
        print(f"replays to: {dl.target(f)}")
    except InputError as exc:
        print(f"replays to: - ({exc})")


def cmd_count(_admin: Any, args: argparse.Namespace) -> None:
    print(_open(args).count())


def cmd_replay(_admin: Any, args: argparse.Namespace) -> None:
    if bool(args.ids) == bool(args.all):
        raise InputError("replay: give dead-letter ids or --all (not both)")
    dl = _open(args)
    if args.all:
        # Bounded by the length at the start: what the writer dead-letters again
        # meanwhile is not replayed in a loop.
        todo = list(dl.entries(dl.count()))
    else:
        todo = []
        for entry_id in args.ids:
            f = dl.get(entry_id)
            if f is None:
                raise InputError(f"id: no dead letter {escape(entry_id)!r} in {dl.name}")
            todo.append((entry_id, f))
    done = failed = 0
    for entry_id, f in todo:
        eid = _text(entry_id)
        try:
            where = dl.replay(eid, f)
        except InputError as exc:
            failed += 1
            print(f"skipped {escape(eid)}: {escape(str(exc))}")
            continue
        done += 1
        print(f"replayed {escape(eid)} -> {escape(where)}")
    print(f"replayed {done}, skipped {failed}, left {dl.count()}")
    if failed:
        raise InputError(f"replay: {failed} dead letters could not be replayed")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``deadletter list|show|count|replay`` to wificore-admin's parser."""
    env = os.environ
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--key-prefix", default=env.get("WIFICORE_KEY_PREFIX", Settings.key_prefix),
                        help="Redis key prefix (env WIFICORE_KEY_PREFIX)")
    common.add_argument("--partitions", type=int,
                        default=int(env.get("WIFICORE_STREAM_PARTITIONS") or Settings.stream_partitions),
                        help="stream partitions (env WIFICORE_STREAM_PARTITIONS)")
    d = sub.add_parser("deadletter", help="list, show, count and replay dead letters") \
        .add_subparsers(dest="action", required=True)
    x = d.add_parser("list", parents=[common], help="oldest first")
    x.add_argument("--limit", type=int, default=100)
    x.set_defaults(fn=_redis_errors(cmd_list))
    x = d.add_parser("show", parents=[common])
    x.add_argument("id")
    x.set_defaults(fn=_redis_errors(cmd_show))
    d.add_parser("count", parents=[common]).set_defaults(fn=_redis_errors(cmd_count))
    x = d.add_parser("replay", parents=[common], help="back into the stream partitions, then removed here")
    x.add_argument("ids", nargs="*", metavar="ID")
    x.add_argument("--all", action="store_true")
    x.set_defaults(fn=_redis_errors(cmd_replay))
