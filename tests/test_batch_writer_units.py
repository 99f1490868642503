"""batch_writer's pure logic: record checks, the collapse, settings, backoff. No servers."""

from __future__ import annotations

import itertools
import math
import random
import time

import msgpack
import pytest

from batch_writer.config import WriterConfig
from batch_writer.records import SESSION_COLUMNS, Acct, Limits, NasEvent, Rejected, collapse, decode
from benchmarks.writer_bench import acct
from wificore import wire
from wificore.backoff import Backoff
from wificore.errors import ConfigError, DecodeError

NOW = 1_800_000_000.0
LIMITS = Limits(now=NOW, max_age_s=30 * 86400, max_ahead_s=86400, default_interim_s=300)


def rec(status: str, ts: float, key: str = "k1", **kw: object) -> Acct:
    out = decode(wire.pack(wire.KIND_ACCT, acct(7, key, status, ts, **kw)), LIMITS)
    assert isinstance(out, Acct)
    return out


class TestDecode:
    def test_a_complete_record_decodes(self):
        """A record with every field of the wire format comes back checked and typed."""
        r = rec("interim", NOW - 60, session_time_s=60, in_octets=5 * 2**32 + 7, out_octets=9)
        assert (r.tenant_id, r.status, r.session_time_s, r.input_octets, r.output_octets) == \
            (7, "interim", 60, 5 * 2**32 + 7, 9)
        assert r.framed_ip == "10.0.0.1" and r.interim_s == 60

    def test_garbage_raises_decode_error(self):
        """Bytes that are not a record raise DecodeError, not a random exception."""
        for payload in (b"\xc1", b"not msgpack at all", msgpack.packb([2, "acct", {}]),
                        msgpack.packb([1, "bogus", {}]), msgpack.packb({"a": 1})):
            with pytest.raises(DecodeError):
                decode(payload, LIMITS)

    @pytest.mark.parametrize("field,value,words", [
        ("session_time_s", True, "session_time_s"),
        ("session_key", "", "session_key"),
        ("session_key", None, "session_key"),
        ("tenant_id", 0, "tenant_id"),
        ("tenant_id", "7", "tenant_id"),
        ("nas_id", None, "nas_id"),
        ("event_ts", 100.0, "event_ts"),
        ("event_ts", NOW + 2 * 86400, "future"),
        ("event_ts", NOW - 31 * 86400, "past"),
        ("event_ts", math.nan, "event_ts"),
        ("username", "bob\x00", "NUL"),
        ("username", "x" * 300, "username"),
        ("status", "restart", "status"),
    ])
    def test_a_bad_field_is_rejected_by_name(self, field, value, words):
        """Each malformed or absurd field raises Rejected with a message that names it."""
        fields = acct(7, "k1", "interim", NOW - 60)
        fields[field] = value
        with pytest.raises(Rejected, match=words):
            decode(wire.pack(wire.KIND_ACCT, fields), LIMITS)

    @pytest.mark.parametrize("field,value", [
        ("input_octets", -1), ("output_octets", 2**63), ("output_octets", 2**64 - 1),
        ("input_octets", ((2**31 - 1) << 32) | 5), ("session_time_s", 10**12),
        ("session_time_s", 2**32 - 1),
    ])
    def test_an_implausible_counter_is_refused_and_the_record_kept(self, field, value):
        """The counter rule (as live.lua's): above its plausible maximum (or negative) a
        counter is taken as not reported (0: the stored value stays) and flagged; the record
        is stored (before: Gigawords 2^31-1 stored 2^63-1, Session-Time 2^32-1 dead-lettered)."""
        fields = acct(7, "k1", "interim", NOW - 60)
        fields[field] = value
        r = decode(wire.pack(wire.KIND_ACCT, fields), LIMITS)
        assert getattr(r, field) == 0 and r.counter_flags == 1

    def test_live_totals_and_key_are_stored(self):
        """What live.lua appends (the generation's key, the totals after the counter rules)
        wins over the NAS's raw values; a version 2 body of the first 19 fields still decodes."""
        fields = acct(7, "k1", "interim", NOW - 60)
        body = [fields.get(n) for n in wire.ACCT_FIELDS] + ["k1:abc", 120, 5000, 6000, 2, 3600]
        r = decode(msgpack.packb([2, "acct", body]), LIMITS)
        assert (r.session_key, r.session_time_s, r.input_octets, r.output_octets, r.counter_flags,
                r.interim_s) == ("k1:abc", 120, 5000, 6000, 2, 3600)
        old = decode(msgpack.packb([2, "acct", body[:19]]), LIMITS)
        assert old.session_key == "k1" and old.nas_port_id is None and old.counter_flags == 0

    def test_a_garbled_address_and_interval_are_dropped_not_fatal(self):
        """A bad Framed-IP or interim interval loses that value, never the session's counters."""
        r = rec("interim", NOW - 60, framed_ip="10.0.0.300", interim_s=-5)
        assert r.framed_ip is None and r.interim_s == LIMITS.default_interim_s

    def test_nas_wide_records_need_no_session(self):
        """Accounting-On/Off carry no session key and still decode."""
        fields = acct(7, "", "on", NOW - 5)
        fields.update(session_key="", acct_session_id="", username="")
        r = decode(wire.pack(wire.KIND_ACCT, fields), LIMITS)
        assert isinstance(r, Acct) and r.status == "on" and r.nas_id == 1

    @pytest.mark.parametrize("extra", [
        {}, {"framed_ip": "10.0.0.300", "interim_s": -5}, {"framed_ip": None, "calling_station_id": None},
        {"terminate_cause": "User-Request", "status": "stop"}, {"arrival_ts": None},
        {"input_octets": -1}, {"username": "x" * 300},
    ])
    def test_both_wire_versions_decode_alike(self, extra):
        """A record sent as a version 1 map and as version 2 values decodes to the same record
        (or is refused with the same reason)."""
        fields = {**acct(7, "k1", "interim", NOW - 60, session_time_s=60), **extra}
        v1 = msgpack.packb([wire.MAP_VERSION, wire.KIND_ACCT, fields], use_bin_type=True)
        v2 = wire.pack(wire.KIND_ACCT, fields)
        assert msgpack.unpackb(v2)[0] == wire.VERSION
        try:
            expected = decode(v1, LIMITS)
        except Rejected as exc:
            with pytest.raises(Rejected, match=str(exc).split(":")[0]):
                decode(v2, LIMITS)
        else:
            assert decode(v2, LIMITS) == expected

    def test_version_2_bodies_must_have_the_first_fields(self):
        """A value list shorter than the first version 2 bodies is not a record; fields
        appended later (or by a newer radiusd) are read by position or dropped."""
        values = [1] * wire.V2_BASE[wire.KIND_ACCT]
        with pytest.raises(DecodeError, match="fields"):
            decode(msgpack.packb([wire.VERSION, wire.KIND_ACCT, values[:-1]]), LIMITS)
        long = [1] * (len(wire.STREAM_ACCT_FIELDS) + 3)
        assert len(wire.unpack_body(msgpack.packb([wire.VERSION, wire.KIND_ACCT, long]))[1]) \
            == len(wire.STREAM_ACCT_FIELDS)

    def test_records_outside_the_fixed_fields_stay_maps(self):
        """An Accounting-Request that could not be normalised keeps its own fields (version 1)."""
        fields = {"tenant_id": 7, "nas_id": 1, "invalid": "Acct-Status-Type: 'x'", "raw": {"a": "b"}}
        payload = wire.pack(wire.KIND_ACCT, fields)
        assert msgpack.unpackb(payload)[0] == wire.MAP_VERSION
        assert wire.unpack(payload) == (wire.KIND_ACCT, fields)

    def test_auth_records_decode_and_check(self):
        """An auth-log record needs an event id and a known result."""
        good = {"tenant_id": 7, "nas_id": 1, "ts": NOW - 1, "event_id": "e1", "username": "bob",
                "calling_station_id": None, "result": "reject", "reason": "bad_password", "method": "pap"}
        assert decode(wire.pack(wire.KIND_AUTH, good), LIMITS).result == "reject"
        with pytest.raises(Rejected, match="event_id"):
            decode(wire.pack(wire.KIND_AUTH, {**good, "event_id": ""}), LIMITS)
        with pytest.raises(Rejected, match="result"):
            decode(wire.pack(wire.KIND_AUTH, {**good, "result": "maybe"}), LIMITS)


class TestCollapse:
    def sequence(self) -> list[Acct]:
        t0 = NOW - 3600
        return [rec("start", t0),
                rec("interim", t0 + 60, session_time_s=60, in_octets=100, out_octets=1000),
                rec("interim", t0 + 120, session_time_s=120, in_octets=5 * 2**32, out_octets=2000),
                rec("stop", t0 + 180, session_time_s=180, in_octets=5 * 2**32 + 9, out_octets=3000,
                    terminate_cause="Lost-Carrier")]

    def test_one_row_per_session_with_the_final_values(self):
        """Start, Interims and Stop fold into one row: earliest start, greatest counters, the Stop."""
        rows, events = collapse(self.sequence())
        assert events == [] and len(rows) == 1
        row = rows[0]
        t0 = NOW - 3600
        assert row[7] == t0 and row[8] == t0 + 180 and row[10] == t0 + 180
        assert row[11:14] == (180, 5 * 2**32 + 9, 3000) and row[16] == "Lost-Carrier"

    def test_order_and_duplicates_do_not_matter(self):
        """Every permutation, with duplicates, collapses to the same row."""
        seq = self.sequence()
        expected = collapse(seq)[0]
        for perm in itertools.permutations(seq):
            assert collapse(list(perm) + [perm[0], perm[-1]])[0] == expected

    def test_a_session_seen_once_gives_the_row_a_fold_gives(self):
        """The shortcut for a single record builds the same row as folding it with its duplicate."""
        for r in self.sequence():
            assert collapse([r])[0] == collapse([r, r])[0]

    def test_a_lost_start_is_recreated_from_the_session_time(self):
        """Without a Start, started = event time minus session time."""
        rows, _ = collapse([rec("interim", NOW - 100, session_time_s=600)])
        assert rows[0][7] == NOW - 700 and rows[0][10] is None

    def test_stale_deadline_is_two_interims_after_the_last_event(self):
        """stale = last arrival + 2 x the interval the NAS was told."""
        rows, _ = collapse([rec("interim", NOW - 100, interim_s=60), rec("interim", NOW - 200, interim_s=60)])
        assert rows[0][9] == pytest.approx(NOW - 100 + 0.01 + 120)

    def test_liveness_runs_on_the_arrival_clock_not_the_nas_clock(self):
        """A NAS whose clock is 7 h behind (a UTC offset): stale_at from the arrival time, so
        its sessions are not closed as soon as they open; the event time stays data."""
        r = rec("interim", NOW - 7 * 3600, interim_s=60, arrival_ts=NOW)
        rows, _ = collapse([r])
        cols = [c for c, _t in SESSION_COLUMNS]
        row = dict(zip(cols, rows[0], strict=True))
        assert row["stale"] == NOW + 120 and row["updated"] == NOW - 7 * 3600 and row["received"] == NOW

    def test_rows_come_in_key_order_and_nas_events_in_time_order(self):
        """Key order keeps lock order the same in every writer; NAS events apply oldest first."""
        recs = [rec("interim", NOW - 10, key=k) for k in ("b", "a", "c")]
        on = [dict(acct(7, "", s, ts), session_key="") for s, ts in (("on", NOW - 5), ("off", NOW - 50))]
        recs += [decode(wire.pack(wire.KIND_ACCT, f), LIMITS) for f in on]
        rows, events = collapse(random.Random(1).sample(recs, len(recs)))
        assert [r[1] for r in rows] == ["a", "b", "c"]
        assert events == [NasEvent(NOW - 50, 7, 1), NasEvent(NOW - 5, 7, 1)]


class TestConfig:
    def test_defaults(self):
        """With no variables every knob has its documented default."""
        cfg = WriterConfig.from_env({})
        assert (cfg.group, cfg.batch_max_rows, cfg.batch_max_age_ms, cfg.max_attempts, cfg.metrics_port) == \
            ("writers", 5000, 200, 5, 0)
        assert cfg.consumer.endswith(f"-{__import__('os').getpid()}")

    @pytest.mark.parametrize("var,value,words", [
        ("WIFICORE_WRITER_BATCH_MAX_ROWS", "0", "WIFICORE_WRITER_BATCH_MAX_ROWS: 0 is out of range"),
        ("WIFICORE_WRITER_MAX_ATTEMPTS", "five", "WIFICORE_WRITER_MAX_ATTEMPTS: expected an integer"),
        ("WIFICORE_WRITER_CONSUMER", "a b", "WIFICORE_WRITER_CONSUMER"),
        ("WIFICORE_WRITER_METRICS_ADDR", "localhost", "WIFICORE_WRITER_METRICS_ADDR"),
        ("WIFICORE_WRITER_BATCH_ROWS", "10", "WIFICORE_WRITER_BATCH_ROWS: unknown setting"),
        ("WIFICORE_WRITER_REDIS_TIMEOUT_MS", "150", "must exceed"),
    ])
    def test_errors_name_the_variable(self, var, value, words):
        """A bad or unknown variable is refused with its name in the message."""
        with pytest.raises(ConfigError, match=words):
            WriterConfig.from_env({var: value})


class TestBackoff:
    def test_capped_jittered_and_reset(self):
        """Delays double up to the cap, jitter keeps them in [half, full], success resets."""
        clock = [0.0]
        b = Backoff(first_s=0.1, max_s=1.0, clock=lambda: clock[0], rand=lambda: 1.0)
        assert [round(b.failed(), 3) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
        assert not b.ready()
        clock[0] += 1.0
        assert b.ready()
        b.succeeded()
        low = Backoff(first_s=0.1, max_s=1.0, clock=lambda: clock[0], rand=lambda: 0.0)
        assert b.failed() == 0.1 and low.failed() == 0.05

    def test_deadline(self):
        """expired() turns true once failures have lasted the deadline."""
        clock = [0.0]
        b = Backoff(first_s=0.1, max_s=1.0, deadline_s=5.0, clock=lambda: clock[0])
        b.failed()
        clock[0] = 4.9
        assert not b.expired()
        clock[0] = 5.0
        assert b.expired()

    def test_wait_returns_at_once_when_stopping(self):
        """wait() does not sleep out the delay once the stop flag is set."""
        import threading
        stop = threading.Event()
        stop.set()
        b = Backoff(first_s=5.0, max_s=5.0)
        b.failed()
        t = time.monotonic()
        b.wait(stop)
        assert time.monotonic() - t < 1.0


def test_tune_gc_in_a_fresh_process():
    """A writer process freezes what exists at start-up and collects young objects rarely."""
    import subprocess
    import sys
    code = ("import gc; from batch_writer.worker import tune_gc, GC_GEN0_THRESHOLD; tune_gc(); "
            "assert gc.get_threshold()[0] == GC_GEN0_THRESHOLD and gc.get_freeze_count() > 1000")
    out = subprocess.run([sys.executable, "-c", code], cwd=str(__import__("pathlib").Path(__file__).parent.parent),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr

