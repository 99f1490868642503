"""The core's pure pieces that the boundary moved or added (no servers)."""

from __future__ import annotations

import msgpack
import pytest

from batch_writer.records import Limits, decode
from rlm_wificore import records
from wificore import wire
from wificore.backoff import Backoff, Breaker
from wificore.histogram import Histogram


class TestFieldPositions:
    def test_an_arranger_puts_each_named_value_where_wire_says(self):
        names = tuple(reversed(wire.ACCT_FIELDS))
        body = wire.arranger(wire.KIND_ACCT, names)(names)  # each value is its own name
        assert body == wire.ACCT_FIELDS

    @pytest.mark.parametrize("names", [wire.ACCT_FIELDS[:-1], (*wire.ACCT_FIELDS, "extra"),
                                       (*wire.ACCT_FIELDS[:-1], wire.ACCT_FIELDS[0])])
    def test_an_arranger_refuses_names_that_are_not_the_fields(self, names):
        with pytest.raises(ValueError):
            wire.arranger(wire.KIND_ACCT, names)

    def test_a_picker_reads_by_name(self):
        pick = wire.picker(wire.KIND_AUTH, ("reason", "tenant_id"))
        assert pick(list(wire.AUTH_FIELDS)) == ("reason", "tenant_id")
        with pytest.raises(ValueError):
            wire.picker(wire.KIND_AUTH, ("tenant_id", "octets"))

    def test_the_hooks_record_and_the_writers_fast_path_agree(self):
        """radiusd's builder -> wire -> batch_writer's positional fast path, end to end."""
        req = {"Acct-Status-Type": "Interim-Update", "Acct-Session-Id": "abc", "User-Name": "bob",
               "Acct-Session-Time": "60", "Acct-Input-Octets": "5", "Acct-Output-Octets": "7",
               "Acct-Input-Packets": "3", "Acct-Output-Packets": "4", "Calling-Station-Id": "AA-BB"}
        now = 1.9e9
        _status, values = records.acct_record(req, tenant_id=7, nas_id=3, interim_s=300, arrival_ts=now,
                                              record_id="r1")
        payload = wire.pack_values(wire.KIND_ACCT, values)
        assert msgpack.unpackb(payload)[0] == wire.VERSION
        r = decode(payload, Limits(now=now, max_age_s=86400, max_ahead_s=3600, default_interim_s=300))
        assert (r.tenant_id, r.nas_id, r.username, r.acct_session_id, r.status) == (7, 3, "bob", "abc", "interim")
        assert (r.session_time_s, r.input_octets, r.output_octets) == (60, 5, 7)
        assert (r.input_packets, r.output_packets, r.calling_station_id, r.interim_s) == (3, 4, "AA-BB", 300)


    def test_ipv6_fields_through_the_fast_path(self):
        """Framed-IPv6-Prefix, Delegated-IPv6-Prefix, Framed-Interface-Id as radiusd prints
        them reach the writer's record; a garbled one is dropped, the record kept."""
        req = {"Acct-Status-Type": "Start", "Acct-Session-Id": "abc", "User-Name": "bob",
               "Framed-IPv6-Prefix": "2001:db8:5::/64", "Delegated-IPv6-Prefix": "2001:db8:500::/56",
               "Framed-Interface-Id": "11:22ff:fe33:4455"}
        now = 1.9e9
        limits = Limits(now=now, max_age_s=86400, max_ahead_s=3600, default_interim_s=300)
        _s, values = records.acct_record(req, tenant_id=7, nas_id=3, interim_s=300, arrival_ts=now,
                                         record_id="r1")
        r = decode(wire.pack_values(wire.KIND_ACCT, values), limits)
        assert (r.framed_ipv6_prefix, r.delegated_ipv6_prefix, r.framed_interface_id) == \
            ("2001:db8:5::/64", "2001:db8:500::/56", "11:22ff:fe33:4455")
        bad = {**req, "Framed-IPv6-Prefix": "2001:db8::/129", "Framed-Interface-Id": "zz"}
        _s, values = records.acct_record(bad, tenant_id=7, nas_id=3, interim_s=300, arrival_ts=now,
                                         record_id="r2")
        r = decode(wire.pack_values(wire.KIND_ACCT, values), limits)
        assert (r.framed_ipv6_prefix, r.framed_interface_id, r.username) == (None, None, "bob")

    def test_a_stream_body_from_before_the_ipv6_fields(self):
        """live.lua pads radiusd's part to len(ACCT_FIELDS) before it appends the live fields:
        a body live.lua wrote with 22 (before the IPv6 fields) keeps its live fields."""
        body = [f"v{i}" for i in range(22)] + ["lkey", 1, 2, 3, 0, 60]
        _kind, fields = wire.unpack(msgpack.packb([wire.VERSION, wire.KIND_ACCT, body]))
        assert fields["nas_identifier"] == "v21" and fields["framed_ipv6_prefix"] is None
        assert (fields["live_session_key"], fields["live_interim_s"]) == ("lkey", 60)
        before_days = [f"v{i}" for i in range(25)] + ["lkey", 1, 2, 3, 0, 60]  # before local_day
        _kind, fields = wire.unpack(msgpack.packb([wire.VERSION, wire.KIND_ACCT, before_days]))
        assert fields["framed_interface_id"] == "v24" and fields["local_day"] is None
        assert (fields["live_session_key"], fields["live_interim_s"], fields["live_day"]) == ("lkey", 60, None)
        now = [f"n{i}" for i in range(len(wire.ACCT_FIELDS))] + ["lkey", 1, 2, 3, 0, 60, 20788]
        _kind, fields = wire.unpack(msgpack.packb([wire.VERSION, wire.KIND_ACCT, now]))
        assert fields["framed_interface_id"] == "n24" and fields["local_day"] == "n25"
        assert fields["live_session_key"] == "lkey" and fields["live_day"] == 20788

    def test_live_lua_pads_to_the_acct_fields(self):
        import re
        from pathlib import Path
        lua = (Path(records.__file__).parent / "live.lua").read_text()
        assert int(re.search(r"local ACCT_BODY = (\d+)", lua).group(1)) == len(wire.ACCT_FIELDS)
        assert int(re.search(r"local LIVE_N = (\d+)", lua).group(1)) == len(wire.LIVE_FIELDS)


class TestRetryVocabulary:
    def test_a_backoff_waits_without_a_stop_flag(self):
        t = [0.0]
        b = Backoff(first_s=0.01, max_s=0.01, clock=lambda: t[0], rand=lambda: 1.0)
        assert b.failed() == 0.01 and not b.ready()
        b.wait()  # a real sleep of at most 10 ms
        t[0] = 0.02
        assert b.ready()

    def test_a_breaker_fails_fast_then_lets_one_probe_through(self):
        br = Breaker("x", retry_s=60)
        assert br.allow()
        br.fail()
        assert br.is_open and not br.allow() and br.failures == 1
        br.ok()
        assert br.allow()


class TestHistogram:
    def test_buckets_are_upper_bounds_and_cumulative(self):
        h = Histogram((0.1, 1.0))
        for v in (0.05, 0.1, 0.5, 5.0):
            h.observe(v)
        assert h.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
        assert (h.count, round(h.sum, 2)) == (4, 5.65)

    def test_buckets_must_increase(self):
        with pytest.raises(ValueError):
            Histogram((1.0, 0.1))


class TestThrottle:
    """wificore.log.Throttle: the one rate limit of hot-path log lines."""

    def test_one_line_per_key_and_window_with_the_count_held_back(self, monkeypatch):
        from wificore import log as wlog
        now = [100.0]
        monkeypatch.setattr(wlog.time, "monotonic", lambda: now[0])
        t = wlog.Throttle(1.0)
        assert t.admit(7) == 0
        assert [t.admit(7, f"d{i}") for i in range(5)] == [None] * 5
        assert t.admit(8) == 0  # another key has its own window
        assert t.due() == []  # not yet
        now[0] += 1.0
        assert t.due() == [(7, 5, "d4")]  # the summary, once
        assert t.due() == []
        now[0] += 1.0
        assert t.admit(7) == 0  # held back since the summary: none

    def test_held_back_lines_are_reported_by_the_next_line(self, monkeypatch):
        from wificore import log as wlog
        now = [0.0]
        monkeypatch.setattr(wlog.time, "monotonic", lambda: now[0])
        t = wlog.Throttle(1.0)
        t.admit("a")
        t.admit("a")
        t.admit("a")
        now[0] = 1.5
        assert t.admit("a") == 2

    def test_keys_are_bounded(self):
        from wificore.log import Throttle
        t = Throttle(60.0, max_keys=3)
        for k in range(10):
            assert t.admit(k) == 0
        assert len(t._keys) <= 3


def test_a_subscribers_state_keys_are_its_single_keys():
    """Keys.subscriber_state (the readers' four keys, one bucket computed) names the same
    keys as the single methods, which live.lua builds alike."""
    from wificore.keys import Keys
    keys = Keys("wc", 8)
    for tenant, user in ((1, "alice"), (600, "bob@example"), (7, "é中")):
        b = keys.bucket(tenant, user)
        assert keys.subscriber_state(tenant, user) == (
            keys.subscriber(tenant, user), keys.nas_epoch(b, tenant),
            keys.prior_live(tenant, user), keys.prior_usage(tenant, user))
        assert keys.subscriber(tenant, user) == f"wc:{{b{b}}}:s:{tenant}:{user}"
        assert keys.prior_live(tenant, user) == f"wc:{{b{b}}}:live:{tenant}:{user}"
        assert keys.prior_usage(tenant, user) == f"wc:{{b{b}}}:use:{tenant}:{user}"
