"""What the site's request-view test (raddb/policy.d/wificore, wificore_view) costs
on the normal path: the same warm PAP load against radiusd with the project's
raddb and against a copy without the wificore_view call, alternated in one run.

    .venv/bin/python benchmarks/request_view_cost.py --rounds 3 --duration 8

Starts its own Redis, shards and two radiusd processes (one at a time under
load) on loopback ports; stops every one by PID. Prints req/s per round and
the medians,
and radiusd's CPU time per request (steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stack.local import temporary_stack  # noqa: E402
from stack.servers import RADDB, Radiusd, free_port  # noqa: E402

PACKET = '''User-Name = "bench%{n}"
User-Password = "password%{n}"
NAS-IP-Address = 10.10.0.1
NAS-Identifier = "ap-01"
NAS-Port-Type = Wireless-802.11
Service-Type = Login-User
Called-Station-Id = "00-11-22-33-44-55:hotspot"
Calling-Station-Id = "02-00-00-%{n:06X}"
Acct-Session-Id = "8%{n:07x}"
Framed-Protocol = PPP
'''


#: --variants: other bodies of wificore_view, measured in the same run.
VARIANTS = {
    "class_regex": '\tif (("%{pairs:request:}" =~ /[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f-\\xff]/) '
                   '|| (&User-Name =~ /\\x00/)) {\n\t\twificore_reencode\n\t}\n',
    "pairs_only": '\tif ("%{pairs:request:}" == "x") {\n\t\twificore_reencode\n\t}\n',
    "per_attribute": "".join(
        f'\tif (&{n} =~ /[\\x00\\x80-\\xff]/) {{\n\t\twificore_reencode\n\t}}\n'
        for n in ("User-Name", "User-Password", "Calling-Station-Id", "Called-Station-Id",
                  "NAS-Identifier", "NAS-Port-Id", "Acct-Session-Id", "Connect-Info")),
}


def cpu_s(pid: int) -> float:
    """utime + stime of a process, seconds (the machine is shared: CPU per request is
    steadier than requests per second)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(port: int, packets: Path, duration: float, secret: str, count: int = 2_000_000) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.loadgen.run", "--packets", str(packets), "--secret", secret,
         "--target", f"127.0.0.1:{port}", "--window", "64", "--count", str(count),
         "--duration", str(duration), "--expand", "200", "--source", "127.0.0.1"],
        cwd=ROOT, capture_output=True, text=True, timeout=duration + 60)
    try:
        result = json.loads(out.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise RuntimeError(f"no result from radload:\n{out.stdout}\n{out.stderr}") from None
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=8.0, help="max seconds per run")
    ap.add_argument("--variants", action="store_true", help="also measure VARIANTS")
    ap.add_argument("--count", type=int, default=80_000, help="requests per run")
    a = ap.parse_args()
    with temporary_stack("wificore-viewcost-") as s, tempfile.TemporaryDirectory() as tmp:
        s.admin("tenant", "add", "--id", "1", "--name", "bench")
        s.admin("nas", "add", "--tenant", "1", "--name", "nas", "--ip", "127.0.0.1", "--secret",
                "bench-secret", "--vendor", "mikrotik", "--require-message-authenticator", "no")
        s.admin("plan", "add", "--tenant", "1", "--name", "basic", "--simultaneous-use", "100")
        csv = "username,password,plan\n" + "".join(f"bench{i},password{i},basic\n" for i in range(200))
        s.admin("subscriber", "import", "--tenant", "1", "-", input=csv)
        before = Path(tmp) / "raddb-before"
        shutil.copytree(RADDB, before, symlinks=True)
        site = before / "sites-available" / "wificore"
        site.write_text(site.read_text().replace("\t\twificore_view\n", ""))
        packets = Path(tmp) / "pap.txt"
        packets.write_text(PACKET)
        raddbs = [("after", RADDB), ("before", before)]
        for name, body in VARIANTS.items() if a.variants else ():
            d = Path(tmp) / f"raddb-{name}"
            shutil.copytree(RADDB, d, symlinks=True)
            pol = d / "policy.d" / "wificore"
            text = pol.read_text()
            start = text.index("wificore_view {")
            end = text.index("wificore_reencode {")
            pol.write_text(text[:start] + "wificore_view {\n" + body + "}\n\n" + text[end:])
            raddbs.append((name, d))
        procs = {}
        for name, raddb in raddbs:
            procs[name] = Radiusd(s.state / f"rd-{name}", auth_port=free_port(), acct_port=free_port(),
                                  shard_map=s.shard_map, redis_url=s.redis.url, raddb=raddb,
                                  name=f"radiusd-{name}")
        rates: dict[str, list[float]] = {n: [] for n in procs}
        cpu_us: dict[str, list[float]] = {n: [] for n in procs}
        try:
            for p in procs.values():
                p.start()
                run_load(p.auth_port, packets, 2.0, "bench-secret")  # warm the caches
            for _ in range(a.rounds):
                for name, p in procs.items():
                    cpu0 = cpu_s(p.pid)
                    r = run_load(p.auth_port, packets, a.duration, "bench-secret", a.count)
                    got = r.get("received") or 1
                    rates[name].append(round(r["rps"], 1))
                    cpu_us[name].append(round((cpu_s(p.pid) - cpu0) / got * 1e6, 2))
        finally:
            for p in procs.values():
                p.stop()
        med = {n: statistics.median(v) for n, v in rates.items()}
        cpu = {n: statistics.median(v) for n, v in cpu_us.items()}
        print(json.dumps({"req_per_s": rates, "radiusd_cpu_us_per_request": cpu_us,
                          "median_req_per_s": med, "median_cpu_us": cpu,
                          "extra_cpu_us_per_request": round(cpu["after"] - cpu["before"], 2)}))


if __name__ == "__main__":
    main()
