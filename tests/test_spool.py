"""The spool as a unit: append, read back, checkpoint, recover, rotate."""

from __future__ import annotations

import multiprocessing
import os
import signal
import struct

import pytest

from rlm_wificore import spool as spool_mod
from rlm_wificore.spool import Spool
from wificore.errors import ConfigError


def take(sp: Spool, max_records: int) -> list[bytes]:
    """Up to ``max_records`` whole frames of the next span, then checkpoint past them:
    the forwarder's read_span/advance, with the frames split here as live.lua splits them."""
    span = sp.read_span(4 + spool_mod.MAX_RECORD)
    out, off, ended = [], 0, False
    while off + 4 <= len(span.data) and len(out) < max_records:
        (n,) = struct.unpack_from("<I", span.data, off)
        if n in (0, spool_mod.END) or n > spool_mod.MAX_RECORD:
            ended = True
            break
        if off + 4 + n > len(span.data):
            break
        out.append(span.data[off + 4:off + 4 + n])
        off += 4 + n
    sp.advance(span, off, ended)
    return out


def drain(sp: Spool, batch: int = 7) -> list[bytes]:
    out: list[bytes] = []
    for _ in range(100_000):
        got = take(sp, batch)
        out += got
        if not got and not sp.has_pending():
            return out
    raise AssertionError("the spool never drained")


class TestSpool:
    def test_append_then_read_in_order(self, tmp_path):
        """Records come back in the order they were appended, each once."""
        sp = Spool(tmp_path)
        recs = [f"record-{i}".encode() * (i % 5 + 1) for i in range(100)]
        for r in recs:
            sp.append(r)
        assert drain(sp) == recs
        assert not sp.has_pending()
        sp.close()

    def test_checkpoint_survives_reopen(self, tmp_path):
        """After a reopen only records past the checkpoint are read again."""
        sp = Spool(tmp_path)
        for i in range(10):
            sp.append(b"a%d" % i)
        assert take(sp, 4) == [b"a%d" % i for i in range(4)]
        sp.close()
        sp = Spool(tmp_path)
        sp.append(b"late")
        assert drain(sp) == [b"a%d" % i for i in range(4, 10)] + [b"late"]
        sp.close()

    def test_rotation_across_segments(self, tmp_path, monkeypatch):
        """Records spanning several segments are all read, and finished segments are deleted."""
        monkeypatch.setattr(spool_mod, "SEGMENT_BYTES", 4096)
        sp = Spool(tmp_path)
        recs = [os.urandom(100 + i % 300) for i in range(200)]
        for r in recs:
            sp.append(r)
        assert len(sp.segments()) > 5
        assert drain(sp, batch=13) == recs
        assert len(sp.segments()) == 1
        sp.close()

    def test_drained_seen_from_outside(self, tmp_path, monkeypatch):
        """spool.drained() (read-only, for tools beside radiusd) follows the checkpoint,
        across a segment change too."""
        monkeypatch.setattr(spool_mod, "SEGMENT_BYTES", 4096)
        sp = Spool(tmp_path)
        assert spool_mod.drained(tmp_path)
        sp.append(b"a" * 100)
        assert not spool_mod.drained(tmp_path)
        assert drain(sp) == [b"a" * 100] and spool_mod.drained(tmp_path)
        for _ in range(60):  # past the end of the segment
            sp.append(b"b" * 100)
        assert len(sp.segments()) == 2 and not spool_mod.drained(tmp_path)
        assert len(take(sp, 1000)) > 0 and not spool_mod.drained(tmp_path)
        assert len(drain(sp)) > 0 and spool_mod.drained(tmp_path)
        sp.close()

    def test_second_process_refused(self, tmp_path):
        """A spool directory in use is refused with the key named."""
        sp = Spool(tmp_path)
        with pytest.raises(ConfigError, match="spool_dir"):
            Spool(tmp_path)
        sp.close()

    def test_kill_9_keeps_appended_records(self, tmp_path):
        """Records appended by a process killed with SIGKILL are read by the next one."""
        def child(path):
            sp = Spool(path)
            for i in range(1000):
                sp.append(b"rec-%d" % i)
            os.kill(os.getpid(), signal.SIGKILL)
        p = multiprocessing.get_context("fork").Process(target=child, args=(str(tmp_path),))
        p.start()
        p.join(10)
        assert p.exitcode == -signal.SIGKILL
        sp = Spool(tmp_path)
        assert drain(sp) == [b"rec-%d" % i for i in range(1000)]
        sp.close()


class TestForwarderFraming:
    """The forwarder sends raw spans; live.lua splits them exactly as split_frames does."""

    def _engine(self, stack, tmp_path, prefix):
        from rlm_wificore.engine import Engine
        from wificore.settings import Settings
        from wificore.shardmap import ShardMap
        shard_map = ShardMap.from_dict({"shard": [{"name": "s", "first_tenant": 1, "last_tenant": 9,
                                                   "dsn": "postgresql://x@127.0.0.1:1/x"}]})
        e = Engine(Settings(redis_url=stack.redis.url, key_prefix=prefix, stream_partitions=1),
                   shard_map)
        e.spool = Spool(tmp_path)
        return e

    def _forward_all(self, engine):
        from rlm_wificore.background import Forwarder
        f = Forwarder(engine)
        for _ in range(10_000):
            f.run_once()
            if not engine.spool.has_pending():
                return f
        raise AssertionError("the spool never drained")

    def _usernames(self, redis, prefix):
        from wificore import wire
        from wificore.keys import Keys
        entries = redis.xrange(Keys(prefix, 1).stream(0))
        return [wire.unpack(fields[b"d"])[1]["username"] for _id, fields in entries]

    def test_records_across_segments_arrive_once_in_order(self, stack, redis, tmp_path, monkeypatch):
        """Many small segments (end marks, and ends with less room than a frame header):
        every record reaches its stream once, in order, and old segments are removed."""
        import random
        import uuid

        from rlm_wificore import background
        from wificore import wire
        monkeypatch.setattr(spool_mod, "SEGMENT_BYTES", 4096)
        monkeypatch.setattr(background, "SETTLE_S", 0.0)  # each call settled when answered
        prefix = f"t{uuid.uuid4().hex[:8]}"
        e = self._engine(stack, tmp_path, prefix)
        rng = random.Random(7)
        names = [f"u{i}-" + "x" * rng.randrange(0, 400) for i in range(300)]
        try:
            for name in names:
                e.spool.append(wire.pack(wire.KIND_AUTH, {"tenant_id": 1, "nas_id": 1, "ts": 1.0e9,
                                               "event_id": name[:8], "username": name,
                                               "result": "accept", "reason": "ok"}))
            assert len(e.spool.segments()) > 10
            f = self._forward_all(e)
            assert self._usernames(redis, prefix) == names
            assert f.sent == len(names) and len(e.spool.segments()) == 1
        finally:
            e.close()  # closes the spool too

    def test_a_record_longer_than_a_span(self, stack, redis, tmp_path):
        """A record larger than one script call's span is sent on its own, not stuck."""
        import uuid

        from rlm_wificore import background
        from wificore import wire
        prefix = f"t{uuid.uuid4().hex[:8]}"
        e = self._engine(stack, tmp_path, prefix)
        names = ["small-1", "big-" + "y" * (background.FORWARD_BYTES + 1000), "small-2"]
        try:
            for name in names:
                e.spool.append(wire.pack(wire.KIND_AUTH, {"tenant_id": 1, "nas_id": 1, "ts": 1.0e9,
                                               "event_id": name[:8], "username": name,
                                               "result": "accept", "reason": "ok"}))
            self._forward_all(e)
            assert self._usernames(redis, prefix) == names
        finally:
            e.close()  # closes the spool too


def _acct(user: str, status: str, t: int, ev: float) -> bytes:
    """An accounting record as the hook packs it (the e2e test's: the Interim and the Stop
    say their session began 60 s and 120 s before they arrived, moments after the Start)."""
    from wificore import wire
    octets = {"start": 0, "interim": 1, "stop": 2}[status] * (2**32 + 1000)
    return wire.pack(wire.KIND_ACCT, {
        "tenant_id": 1, "nas_id": 7, "session_key": f"k-{user}", "acct_session_id": "81000001",
        "username": user, "status": status, "event_ts": ev, "arrival_ts": ev, "session_time_s": t,
        "input_octets": octets, "output_octets": 3 * octets, "input_packets": 0, "output_packets": 0,
        "interim_s": 60, "record_id": f"{user}-{status}"})


def _auth(user: str) -> bytes:
    from wificore import wire
    return wire.pack(wire.KIND_AUTH, {"tenant_id": 1, "nas_id": 1, "ts": 1.0e9, "event_id": user,
                                      "username": user, "result": "accept", "reason": "ok"})


class _Snapshot:
    """The keys of a prefix as they are now; :meth:`restore` puts Redis back to it: a Redis
    killed before its append-only file had what it answered since, and started again."""

    def __init__(self, redis, prefix: str) -> None:
        self.redis, self.prefix = redis, prefix
        self.keys = {k: redis.dump(k) for k in redis.scan_iter(match=f"{prefix}:*")}

    def restore(self) -> None:
        now = list(self.redis.scan_iter(match=f"{self.prefix}:*"))
        if now:
            self.redis.delete(*now)
        for k, v in self.keys.items():
            self.redis.restore(k, 0, v)


class TestForwarderRedisLoss:
    """One Redis that answered calls and then lost them (appendfsync everysec: a write held
    back behind a running fsync, the process killed): the forwarder's mark tells, and the
    spool keeps what was forwarded until it is settled."""

    def _engine(self, stack, tmp_path):
        import uuid
        prefix = f"t{uuid.uuid4().hex[:8]}"
        return TestForwarderFraming._engine(self, stack, tmp_path, prefix), prefix

    @staticmethod
    def _forward_all(forwarder, engine) -> None:
        for _ in range(1000):
            if not forwarder.run_once() and not engine.spool.has_pending():
                return
        raise AssertionError("the spool never drained")

    @staticmethod
    def _stream(redis, prefix) -> list[dict]:
        from wificore import wire
        from wificore.keys import Keys
        return [wire.unpack(fields[b"d"])[1] for _id, fields in redis.xrange(Keys(prefix, 1).stream(0))]

    def test_a_start_redis_lost_is_sent_again_and_the_session_keeps_one_row(self, stack, redis, tmp_path):
        """Redis answered the call with a session's Start, batch_writer stored its row, and
        Redis lost it: the forwarder sends the Start again before the session's Interim and
        Stop, so all three carry the Start's row key and the usage counts once (before:
        the Interim, finding no session, opened it under its own start, a second row)."""
        from rlm_wificore.background import Forwarder
        e, prefix = self._engine(stack, tmp_path)
        t0 = 1_900_000_000.0
        try:
            f = Forwarder(e)
            before = _Snapshot(redis, prefix)
            e.spool.append(_acct("alice", "start", 0, t0))
            self._forward_all(f, e)
            stored = self._stream(redis, prefix)[0]["live_session_key"]  # batch_writer has it
            before.restore()
            e.spool.append(_acct("alice", "interim", 60, t0 + 0.02))
            e.spool.append(_acct("alice", "stop", 120, t0 + 0.04))
            self._forward_all(f, e)
            stream = self._stream(redis, prefix)
            assert [(r["status"], r["live_session_key"]) for r in stream] == [
                ("start", stored), ("interim", stored), ("stop", stored)]
            assert stream[-1]["live_input_octets"] == 2 * (2**32 + 1000) and f.resent == 1
        finally:
            e.close()

    def test_only_the_calls_redis_lost_are_sent_again(self, stack, redis, tmp_path):
        """Redis kept the first of three answered calls: the two after it go again, once
        each, before the next record; the first one does not."""
        from rlm_wificore.background import Forwarder
        e, prefix = self._engine(stack, tmp_path)
        try:
            f = Forwarder(e)
            e.spool.append(_auth("u1"))
            self._forward_all(f, e)
            kept = _Snapshot(redis, prefix)
            for user in ("u2", "u3"):
                e.spool.append(_auth(user))
                self._forward_all(f, e)
            kept.restore()
            e.spool.append(_auth("u4"))
            self._forward_all(f, e)
            assert [r["username"] for r in self._stream(redis, prefix)] == ["u1", "u2", "u3", "u4"]
            assert f.resent == 1
        finally:
            e.close()

    def test_a_call_applied_whose_answer_was_lost_is_no_loss(self, stack, redis, tmp_path):
        """The connection broke after Redis ran the call: its span goes again (a replay, as
        before), nothing earlier does."""
        import redis as redis_lib

        from rlm_wificore.background import Forwarder
        e, prefix = self._engine(stack, tmp_path)
        try:
            f = Forwarder(e)
            e.spool.append(_auth("u1"))
            self._forward_all(f, e)
            script = f.script

            def applied_then_cut(**kw):
                script(**kw)
                f.script = script
                raise redis_lib.ConnectionError("connection reset after the call")
            f.script = applied_then_cut
            e.spool.append(_auth("u2"))
            with pytest.raises(redis_lib.ConnectionError):
                f.run_once()
            self._forward_all(f, e)
            assert [r["username"] for r in self._stream(redis, prefix)] == ["u1", "u2", "u2"]
            assert f.resent == 0
        finally:
            e.close()

    def test_forwarded_records_settle_once_redis_held_them_long_enough(self, stack, redis, tmp_path,
                                                                       monkeypatch):
        """The checkpoint moves SETTLE_S after the call (an idle forwarder asks Redis for its
        mark); an idle forwarder finding the mark gone sends the records again."""
        import time

        from rlm_wificore import background
        monkeypatch.setattr(background, "SETTLE_S", 0.3)
        e, prefix = self._engine(stack, tmp_path)
        try:
            f = background.Forwarder(e)
            empty = _Snapshot(redis, prefix)
            e.spool.append(_auth("u1"))
            self._forward_all(f, e)
            assert not e.spool.has_pending() and not spool_mod.drained(tmp_path)
            empty.restore()  # lost while nothing else was sent
            time.sleep(0.35)
            self._forward_all(f, e)
            assert [r["username"] for r in self._stream(redis, prefix)] == ["u1"] and f.resent == 1
            assert not spool_mod.drained(tmp_path)
            time.sleep(0.35)
            f.run_once()
            assert spool_mod.drained(tmp_path) and len(self._stream(redis, prefix)) == 1
        finally:
            e.close()

    def test_a_mark_expired_over_a_long_idle_time_sends_nothing_again(self, stack, redis, tmp_path,
                                                                      monkeypatch):
        """Everything settled (the idle forwarder found its mark), then the mark expired (two
        days without a call): the next call sends its own records only, once, and nothing
        is counted as lost."""
        import time

        from rlm_wificore import background
        from wificore.keys import Keys
        monkeypatch.setattr(background, "SETTLE_S", 0.2)
        e, prefix = self._engine(stack, tmp_path)
        try:
            f = background.Forwarder(e)
            e.spool.append(_auth("u1"))
            self._forward_all(f, e)
            time.sleep(0.25)
            f.run_once()  # idle: the mark is there, everything settles
            assert spool_mod.drained(tmp_path)
            redis.delete(Keys(prefix, 1).forwarded(f.id))  # its TTL ran out
            e.spool.append(_auth("u2"))
            self._forward_all(f, e)
            assert [r["username"] for r in self._stream(redis, prefix)] == ["u1", "u2"]
            assert f.resent == 0
        finally:
            e.close()


class TestClusterGrouping:
    """background.group_frames: a span's frames by bucket, from the tag in their length word."""

    @staticmethod
    def frame(rec: dict, tag: int | None, parts: int = 4) -> bytes:
        import struct

        from wificore import wire
        payload = wire.pack(wire.KIND_ACCT, rec)
        return struct.pack("<I", len(payload) | (tag or 0) << 21) + payload

    def test_tagged_untagged_and_nas_wide_frames(self):
        from rlm_wificore.background import group_frames
        from wificore.keys import TAG_ALL, bucket_of

        def rec(user: str, status: str = "interim") -> dict:
            return {"tenant_id": 7, "nas_id": 3, "session_key": "k", "username": user, "status": status}
        users = ["alice", "bob", "carol", "dave", "erin"]
        tagged = [self.frame(rec(u), 1 + bucket_of(7, u, 4)) for u in users]
        untagged = [self.frame(rec(u), None) for u in users]  # spooled before the tag existed
        on = self.frame(rec("", "on"), TAG_ALL)
        data = b"".join(tagged[:2] + [on] + untagged + tagged[2:]) + b"\x00\x00\x00\x00" + b"junk"
        groups, consumed, ended, corrupt = group_frames(data, 4)
        assert consumed == len(data) - 8 and ended == 1 and corrupt == 0
        assert sorted(groups) == [0, 1, 2, 3]  # the Accounting-On goes to every bucket
        for b, frames in groups.items():
            assert on in frames
            mine = [u for u in users if bucket_of(7, u, 4) == b]
            expected = ([t for t, u in zip(tagged[:2], users[:2], strict=True) if u in mine] + [on]
                        + [f for f, u in zip(untagged, users, strict=True) if u in mine]
                        + [t for t, u in zip(tagged[2:], users[2:], strict=True) if u in mine])
            assert frames == expected  # in spool order within the bucket

    def test_a_cut_frame_waits_and_a_corrupt_length_ends_the_segment(self):
        import struct

        from rlm_wificore.background import group_frames
        f = self.frame({"tenant_id": 1, "username": "u", "status": "interim"}, 1)
        groups, consumed, ended, corrupt = group_frames(f + f[:-3], 4)
        assert consumed == len(f) and not ended and sum(map(len, groups.values())) == 1
        bad = struct.pack("<I", (1 << 20) + 5)
        assert group_frames(f + bad + f, 4)[1:] == (len(f), 1, 1)

    def test_a_retried_span_sends_each_frame_once_though_the_spool_grew(self, tmp_path):
        """A cluster: the span's call for one bucket fails after another bucket's went; the
        retry, with more records spooled meanwhile, sends the failed buckets' frames and
        then the rest, each frame once (the buckets already sent had new frames in the
        longer span: they were skipped with them and let go)."""
        import types
        from collections import Counter

        import redis

        from rlm_wificore.background import Forwarder
        from wificore import wire
        from wificore.keys import bucket_of

        sp = Spool(tmp_path)
        settings = types.SimpleNamespace(key_prefix="wc", stream_partitions=4, session_stale_interims=3)
        engine = types.SimpleNamespace(settings=settings, spool=sp, stats=types.SimpleNamespace(errors=Counter()),
                                       redis_bg=types.SimpleNamespace(register_script=lambda _src: None))
        fw = Forwarder(engine)  # type: ignore[arg-type]
        fw.cluster = True
        users = [f"u{i}" for i in range(40)]
        first, second = users[:20], users[20:]
        failing = bucket_of(7, first[-1], 4)  # a bucket that comes after others in the span
        sent: list[str] = []
        fail = [True]

        def call(stream: str, args: list) -> int:
            if fail[0] and stream == fw.keys.stream(failing):
                fail[0] = False
                for u in second:  # spooled while the master was away
                    sp.append(wire.pack(wire.KIND_ACCT, {"tenant_id": 7, "username": u, "status": "interim"}),
                              1 + bucket_of(7, u, 4))
                raise redis.ConnectionError("the master is away")
            data, off = args[7], 0
            while off < len(data):
                (w,) = struct.unpack_from("<I", data, off)
                n = w & spool_mod.LEN_MASK
                sent.append(wire.unpack(data[off + 4:off + 4 + n])[1]["username"])
                off += 4 + n
            return 1

        fw._call_replicated = call  # type: ignore[method-assign]
        for u in first:
            sp.append(wire.pack(wire.KIND_ACCT, {"tenant_id": 7, "username": u, "status": "interim"}),
                      1 + bucket_of(7, u, 4))
        with pytest.raises(redis.ConnectionError):
            fw.run_once()
        for _ in range(5):
            fw.run_once()
        assert not sp.has_pending()
        assert sorted(sent) == sorted(users)
        sp.close()

