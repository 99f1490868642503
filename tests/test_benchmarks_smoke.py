"""The benchmark scripts, run with tiny counts so that they never rot.

benchmarks/compare.py and benchmarks/dataset.py are scripts, not tests; here
they run end to end in their smoke modes (seconds), each starting and
stopping its own servers, and their output is checked for shape, not speed.
"""

from __future__ import annotations

import ipaddress
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import compare, dataset  # noqa: E402
from wificore.shardmap import ShardMap  # noqa: E402

CONFIGURATIONS = {"stock_files", "stock_sql", "stock_sql_acct", "python_floor", "python_floor_acct",
                  "wificore_warm", "wificore_acct", "wificore_redis", "wificore_cold"}
RATIOS = {"wificore_warm/stock_sql", "wificore_warm/stock_files", "wificore_redis/stock_sql",
          "wificore_cold/stock_sql", "wificore_acct/stock_sql_acct", "wificore_warm/python_floor",
          "wificore_acct/python_floor_acct", "python_floor/stock_files"}

TWO_SHARDS = ShardMap.from_dict({"shard": [
    {"name": "shard1", "first_tenant": 1, "last_tenant": 499, "dsn": "postgresql://x@h/db"},
    {"name": "shard2", "first_tenant": 500, "last_tenant": 999999, "dsn": "postgresql://x@h/db"},
]})


class TestDatasetGeneration:
    """What the dataset promises, checked without any server."""

    def test_tenants_alternate_over_the_shards(self):
        """Tenants are placed round-robin, each id inside its shard's range."""
        tenants = dataset.place_tenants(dataset.Spec(tenants=5), TWO_SHARDS)
        assert [t.tenant_id for t in tenants] == [1, 500, 2, 501, 3]
        assert [t.shard for t in tenants] == ["shard1", "shard2"] * 2 + ["shard1"]

    def test_nas_addresses_are_unique_and_bench_nas_are_loopback(self):
        """Every NAS address is unique in the deployment; the bench NAS are 127.0.0.x."""
        spec = dataset.Spec(tenants=30, nas_per_tenant=50)
        ips = {dataset.nas_ip(spec, k, j) for k in range(30) for j in range(50)}
        assert len(ips) == 30 * 50
        assert all(ipaddress.ip_address(ip) in ipaddress.ip_network("10.0.0.0/8") for ip in ips)
        bench = [dataset.bench_nas_ip(k) for k in range(30)]
        assert len(set(bench)) == 30 and "127.0.0.1" not in bench
        assert all(ip.startswith("127.0.0.") for ip in bench)

    def test_usernames_unique_and_password_mix(self):
        """Usernames are unique across tenants; 60/30/10 cleartext, NT hash, bcrypt."""
        spec = dataset.Spec(tenants=3, pppoe_per_tenant=50, hotspot_per_tenant=50)
        subs = [s for t in (1, 2, 500) for s in dataset.subscribers(spec, t)]
        assert len({s.username for s in subs}) == len(subs) == 300
        kinds = [s.password_type for s in subs]
        assert (kinds.count("cleartext"), kinds.count("nthash"), kinds.count("bcrypt")) == (180, 90, 30)

    def test_shared_hashes_verify(self):
        """The few hashes computed once match the cleartext each subscriber is given."""
        import bcrypt

        from wificore.md4 import nt_hash
        hashes = dataset.Hashes.compute()
        spec = dataset.Spec(tenants=1, pppoe_per_tenant=20, hotspot_per_tenant=0)
        for s in dataset.subscribers(spec, 7, hashes):
            if s.password_type == "nthash":
                assert s.password == nt_hash(s.cleartext)
            elif s.password_type == "bcrypt":
                assert bcrypt.checkpw(s.cleartext.encode(), s.password.encode())
            else:
                assert s.password == s.cleartext

    def test_packet_files_parse(self, tmp_path):
        """The auth and accounting packet texts are valid radclient format for the encoder."""
        from benchmarks.loadgen import packets
        spec = dataset.Spec(tenants=1, pppoe_per_tenant=10, hotspot_per_tenant=10)
        tenant = dataset.place_tenants(spec, TWO_SHARDS)[0]
        sender = compare.make_sender(spec, tenant)
        assert {s.password_type for s in sender.acct_users} == {"bcrypt"}
        auth = packets.parse_radclient(compare.auth_text(sender))
        acct = packets.parse_radclient(compare.acct_text(sender, 4, epoch=1))
        assert len(auth) == 18 and all(t.kind == packets.KIND_ACCESS for t in auth)
        assert [t.get("Acct-Status-Type") for t in acct] == ["Start"] * 4 + ["Interim-Update"] * 32 \
            + ["Stop"] * 4
        first = acct[0].get("Acct-Session-Id")
        times = [int(t.get("Acct-Session-Time")) for t in acct if t.get("Acct-Session-Id") == first]
        assert times == sorted(times) and len(times) == compare.ACCT_PER_SESSION
        assert len({t.get("Acct-Session-Id") for t in acct}) == 4


def _run(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


class TestScriptsSmoke:
    """The scripts run end to end with tiny counts."""

    def test_dataset_loader_local(self):
        """dataset.py --local loads every sink through COPY and reports counts and times."""
        # No folder given: it makes one in /tmp that the postgres user can enter.
        out = _run(["benchmarks/dataset.py", "--local", "--tenants", "2",
                    "--nas-per-tenant", "3", "--subscribers-per-tenant", "20"], timeout=180)
        assert out.returncode == 0, out.stderr[-3000:]
        result = json.loads(out.stdout)
        assert result["subscribers"] == 40
        shards = [v for k, v in result["rows"].items() if k.startswith("wificore:")]
        assert sum(s["subscribers"] for s in shards) == 40
        assert sum(s["nas"] for s in shards) == 2 * (3 + 1)
        assert result["rows"]["stock_sql"]["radcheck"] == 40
        assert result["rows"]["users_file"] == 40
        assert result["seconds"]["total"] > 0

    def test_hook_cost_smoke(self):
        """hook_cost.py answers every warm-up login and reports the hook's CPU per login and
        the forwarder's (its records did reach Redis)."""
        out = _run(["benchmarks/hook_cost.py", "--rounds", "1", "--subscribers", "20",
                    "--iterations", "500"], timeout=180)
        assert out.returncode == 0, out.stderr[-3000:]
        this = json.loads(out.stdout.strip().splitlines()[-1])["this"]
        assert this["hook_us"]["median"] > 0
        assert this["per_thread_us"]["wificore-spool"]["median"] > 0, this

    def test_compare_smoke(self, tmp_path):
        """compare.py --smoke measures every configuration and writes the report files."""
        out = _run(["benchmarks/compare.py", "--smoke", "--out", str(tmp_path)], timeout=280)
        assert out.returncode == 0, out.stderr[-4000:]
        result = json.loads((tmp_path / "latest.json").read_text())
        assert result["machine"]["cpu_model"] and result["machine"]["cores"] >= 1
        assert result["date"]
        by_name = {c["name"]: c for c in result["configurations"]}
        assert set(by_name) == CONFIGURATIONS
        for name, c in by_name.items():
            assert c["rps"] > 0, name
            for key in ("p50_ms", "p99_ms", "cpu_generator"):
                assert isinstance(c[key], (int, float)), (name, key)
            assert c["points"] and c["points"][0]["rps"] > 0, name
        assert set(result["ratios"]) == RATIOS
        assert all(v > 0 for v in result["ratios"].values())
        mem = result["redis_memory"]
        assert mem["bytes_per_profile"] > 0 and mem["bytes_per_live_session"] > 0
        assert "batch_writer" in result
        assert result["settings"]["radiusd_procs"] >= 1
        e2e = result["end_to_end"]  # a running batch_writer wrote every answered record
        assert e2e["answered"] > 0 and e2e["written"] == e2e["answered"], e2e
        assert 0 < e2e["row_p50_s"] <= e2e["row_p99_s"], e2e
        # Tenant A (hung, slow, stopped) or the valid NAS (flood) against its own baseline.
        noisy = result["noisy_neighbour"]
        assert set(noisy) == {"hung", "slow", "stopped", "flood"}, result["noisy_detail"]
        assert result["local_cache"]["bytes_per_profile"] > 0, result["local_cache"]
        assert all(v["answered_ratio"] > 0 for v in noisy.values()), noisy
        assert noisy["flood"]["junk_sent_per_s"] > 0, noisy["flood"]  # the flood did happen
        b = result["noisy_detail"]["phases"]["baseline"]["b"]  # B's logins used B's shard
        assert b["accept"] > 0, result["noisy_detail"]
        assert (tmp_path / "latest.md").read_text().startswith("# rlm_wificore")
        assert (tmp_path / "latest.png").stat().st_size > 0  # matplotlib is a test dependency


class TestHistogramQuantile:
    """compare.py's reading of a Prometheus histogram (pure logic)."""

    def test_linear_inside_the_bucket(self):
        from benchmarks.compare import _quantile
        buckets = [(0.1, 50.0), (0.5, 90.0), (1.0, 100.0), (math.inf, 100.0)]
        assert _quantile(buckets, 0.5) == 0.1
        assert _quantile(buckets, 0.7) == 0.3
        assert _quantile(buckets, 0.99) == 0.95

    def test_several_processes_add_up(self):
        """Scrapes of several writers, one after the other, give one histogram of their sum."""
        from benchmarks.compare import _histogram_buckets
        one = 'h_bucket{le="1.0"} 9.0\nh_bucket{le="+Inf"} 10.0\n'
        two = 'h_bucket{le="1.0"} 1.0\nh_bucket{le="+Inf"} 5.0\n'
        assert _histogram_buckets(one + two, "h") == [(1.0, 10.0), (math.inf, 15.0)]

    def test_rank_beyond_the_last_bound_and_empty(self):
        from benchmarks.compare import _histogram_buckets, _quantile
        text = ('h_bucket{le="1.0"} 9.0\nh_bucket{le="+Inf"} 10.0\nh_count 10.0\n')
        buckets = _histogram_buckets(text, "h")
        assert buckets == [(1.0, 9.0), (math.inf, 10.0)]
        assert _quantile(buckets, 0.99) == 1.0  # somewhere above 1 s: the last finite bound
        assert _quantile([(1.0, 0.0), (math.inf, 0.0)], 0.5) is None
