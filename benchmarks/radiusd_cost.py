"""What each part of a warm PAP login costs radiusd (and Redis): one radiusd per variant
of the site, the policy or the module, alternated under the same load in one run.

    .venv/bin/python benchmarks/radiusd_cost.py --rounds 5 --count 40000
    .venv/bin/python benchmarks/radiusd_cost.py --variants full,hook_floor --other /tmp/base

Starts Redis and two shards (stack/local.py), one tenant, one MikroTik NAS (no
Message-Authenticator required: radload signs nothing) and ``--subscribers`` cleartext
hotspot subscribers, then one radiusd (``-t``, as bin/stack and compare.py run each
process) per variant on its own ports, all started before the first round and stopped by
PID at the end. Each round sends ``--count`` of compare.py's hotspot PAP requests
(closed loop, 64 in flight) to each variant in turn; what is reported per variant is
radiusd's CPU (utime + stime from /proc/<pid>/stat; ``module_threads_cpu_us``: the part
of it in threads other than the main one, i.e. the module's), the authorize hook's own
wall time per call (its ``wificore_hook_seconds`` histogram, when the hook is called) and
Redis's CPU, per answered request, in microseconds: the median over the rounds and the spread (min-max). Variants
(``--variants``, comma-separated; each is the project's raddb and code with one change):

=============  =================================================================
full           as shipped
no_view        the site without ``wificore_view`` (the request view's regexes)
no_msgauth     the site without ``update reply { &Message-Authenticator := 0x00 }``
no_client      ``WiFiCore-Client`` set to a constant, not ``%{client:shortname}``
no_authlog     ``Sink.log_auth`` returns at once (no auth-log record, no Redis work)
no_append      ``Sink.log_auth`` packs the record but does not append it to the spool
no_forward     the forwarder thread forwards nothing (the records stay in the spool)
hook_cached    ``hooks.authorize`` answers each User-Name as it did the first time (the
               reply's conversion kept, the module's work and auth log left out)
hook_floor     ``hooks.authorize`` answers a fixed accept, logged (the site, rlm_python3's
               conversion of the request, and the reply's: what the module adds is
               ``full`` minus this)
other          ``--other``'s tree (a checkout, e.g. ``git archive HEAD~1 | tar -x -C
               /tmp/base``): its raddb and code as they are
=============  =================================================================

The machine is shared: CPU per request, not requests per second (printed too), and
compare variants within one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.loadgen import run as loadgen  # noqa: E402
from benchmarks.procstat import cpu_s  # noqa: E402
from stack.local import temporary_stack  # noqa: E402
from stack.servers import RADDB, Radiusd, free_port  # noqa: E402

SECRET = "bench-secret"
#: compare.py's hotspot PAP request (auth_text / _common), one per subscriber.
PACKET = '''User-Name = "bench-%{n}"
User-Password = "password%{n}"
NAS-IP-Address = 10.10.0.1
NAS-Identifier = "bench"
NAS-Port = 2147483648
Calling-Station-Id = "02:00:01:22:%{n:04X}"
NAS-Port-Type = Wireless-802.11
Called-Station-Id = "hotspot1"
Acct-Session-Id = "8%{n:07x}"
'''


def threads_cpu_s(pid: int) -> tuple[float, float]:
    """(main thread, every other thread) CPU seconds of a process: the module's threads
    (forwarder, state refresher, ...) against the thread that runs radiusd and the hooks."""
    main = other = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            t = cpu_s(pid, int(tid))
        except OSError:
            continue
        if int(tid) == pid:
            main += t
        else:
            other += t
    return main, other


def switches(pid: int) -> tuple[int, int]:
    """(main thread, other threads) context switches so far (voluntary + involuntary)."""
    main = other = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            lines = Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines()
        except OSError:
            continue
        n = sum(int(line.split()[1]) for line in lines if "ctxt_switches:" in line)
        if int(tid) == pid:
            main += n
        else:
            other += n
    return main, other


def hook_seconds(port: int) -> tuple[float, float]:
    """(sum of seconds, count) of the authorize hook's latency histogram (metrics)."""
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith('wificore_hook_seconds_sum{hook="authorize"}'):
            total = float(line.split()[-1])
        elif line.startswith('wificore_hook_seconds_count{hook="authorize"}'):
            count = float(line.split()[-1])
    return total, count


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    if old not in text:
        raise RuntimeError(f"{path}: {old!r} not found (the variant no longer applies)")
    path.write_text(text.replace(old, new, 1))


AUTHZ_MSGAUTH = "\t\tupdate reply {\n\t\t\t&Message-Authenticator := 0x00\n\t\t}\n\t\t# The NAS"
#: variant -> (raddb edit, code edit); each edit gets the copied folder.
VARIANTS: dict[str, tuple[Callable[[Path], None] | None, Callable[[Path], None] | None]] = {
    "full": (None, None),
    "no_view": (lambda d: _edit(d / "sites-available" / "wificore",
                                "\t\twificore_view\n\t\t# Sets control", "\t\t# Sets control"), None),
    "no_msgauth": (lambda d: _edit(d / "sites-available" / "wificore", AUTHZ_MSGAUTH,
                                   "\t\t# The NAS"), None),
    "no_client": None,  # filled in main(): needs the NAS's shortname
    "no_authlog": (None, lambda h: _edit(
        h / "rlm_wificore" / "sink.py",
        '"""Spool one auth-log record (the forwarder moves it to Redis); never a password."""\n',
        '"""Spool one auth-log record (the forwarder moves it to Redis); never a password."""\n'
        "        return\n")),
    "no_forward": (None, lambda h: _edit(
        h / "rlm_wificore" / "background.py",
        '"""Forward one span; the number of records forwarded (0: spool empty)."""\n',
        '"""Forward one span; the number of records forwarded (0: spool empty)."""\n'
        "        return 0\n")),
    "no_append": (None, lambda h: _edit(
        h / "rlm_wificore" / "sink.py", "            self.spool.append(wire.pack_values(wire.KIND_AUTH, [",
        "            (wire.pack_values(wire.KIND_AUTH, [")),
    "hook_cached": (None, lambda h: _edit(
        h / "rlm_wificore" / "hooks.py", "def authorize(p):\n",
        "_ANSWERS: dict = {}\n\n\ndef authorize(p):\n"
        "    user = dict(p).get('User-Name')\n"
        "    answer = _ANSWERS.get(user)\n"
        "    if answer is None:\n"
        "        answer = _ANSWERS[user] = _guard('authorize', _authorize, p, 'reject')\n"
        "    return answer\n\n\ndef _authorize_uncached(p):\n")),
    "hook_floor": (None, lambda h: _edit(
        h / "rlm_wificore" / "hooks.py", "def authorize(p):\n",
        "_FLOOR = (radiusd.RLM_MODULE_UPDATED, (), (('Auth-Type', 'Accept'), ('WiFiCore-Logged', '1')))\n\n\n"
        "def authorize(p):\n    if dict(p).get('User-Name'):\n        return _FLOOR\n")),
}


def copy_home(src: Path, dest: Path) -> Path:
    """The code radiusd imports (WIFICORE_HOME): rlm_wificore/ and wificore/, the venv linked."""
    dest.mkdir(parents=True)
    for name in ("rlm_wificore", "wificore"):
        shutil.copytree(src / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / ".venv").symlink_to((ROOT / ".venv").resolve())
    return dest


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="full,no_view,no_msgauth,no_client,no_authlog,hook_floor")
    ap.add_argument("--other", type=Path, help="a checkout, measured as the variant 'other'")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--count", type=int, default=40_000, help="requests per variant and round")
    ap.add_argument("--duration", type=float, default=20.0, help="max seconds per run")
    ap.add_argument("--subscribers", type=int, default=2000)
    ap.add_argument("--perf", type=Path, help="also `perf record` each variant's radiusd during "
                    "the first round, into this folder (perf report -i DIR/<variant>.data)")
    a = ap.parse_args()
    names = [v for v in a.variants.split(",") if v]
    if a.other:
        names.append("other")
    with temporary_stack("wificore-rdcost-") as s, tempfile.TemporaryDirectory() as tmp:
        s.admin("tenant", "add", "--id", "1", "--name", "bench")
        s.admin("nas", "add", "--tenant", "1", "--name", "nas", "--ip", "127.0.0.1", "--secret",
                SECRET, "--vendor", "mikrotik", "--require-message-authenticator", "no")
        s.admin("plan", "add", "--tenant", "1", "--name", "basic", "--simultaneous-use", "1",
                "--rate-up-kbps", "2000", "--rate-down-kbps", "5000", "--session-timeout-s", "3600",
                "--idle-timeout-s", "600", "--interim-interval-s", "300")  # compare.py's hotspot-1h
        csv = "username,password,kind,plan\n" + "".join(
            f"bench-{i},password{i},hotspot,basic\n" for i in range(a.subscribers))
        s.admin("subscriber", "import", "--tenant", "1", "-", input=csv)
        shortname = "1:1:mikrotik"  # tenant 1, NAS 1 (the site's WiFiCore-Client)
        VARIANTS["no_client"] = (lambda d: _edit(
            d / "policy.d" / "wificore", '\t\t\t&WiFiCore-Client := "%{client:shortname}"\n',
            f'\t\t\t&WiFiCore-Client := "{shortname}"\n'), None)
        tmpd = Path(tmp)
        packets = tmpd / "pap.txt"
        packets.write_text(PACKET)
        rld = tmpd / "pap.rld"
        loadgen.prepare_packets(packets, rld, SECRET, a.subscribers)
        procs: dict[str, Radiusd] = {}
        mports: dict[str, int] = {}
        for name in names:
            raddb, home = RADDB, ROOT
            if name == "other":
                raddb, home = a.other.resolve() / "raddb", copy_home(a.other.resolve(), tmpd / "home-other")
            else:
                raddb_edit, code_edit = VARIANTS[name]
                if raddb_edit:
                    raddb = tmpd / f"raddb-{name}"
                    shutil.copytree(RADDB, raddb, symlinks=True)
                    raddb_edit(raddb)
                if code_edit:
                    home = copy_home(ROOT, tmpd / f"home-{name}")
                    code_edit(home)
            mports[name] = free_port()
            procs[name] = Radiusd(s.state / f"rd-{name}", auth_port=free_port(), acct_port=free_port(),
                                  shard_map=s.shard_map, redis_url=s.redis.url, raddb=raddb,
                                  name=f"radiusd-{name}", extra_env={"WIFICORE_HOME": str(home)},
                                  metrics_port=mports[name])
        cpu: dict[str, list[float]] = {n: [] for n in procs}
        rcpu: dict[str, list[float]] = {n: [] for n in procs}
        rates: dict[str, list[float]] = {n: [] for n in procs}
        threads: dict[str, list[float]] = {n: [] for n in procs}
        hook: dict[str, list[float]] = {n: [] for n in procs}
        sw_main: dict[str, list[float]] = {n: [] for n in procs}
        sw_other: dict[str, list[float]] = {n: [] for n in procs}
        try:
            for p in procs.values():
                p.start()
                # Warm: every subscriber once, twice (the NAS known, profiles in process).
                loadgen.run_radload(rld, f"127.0.0.1:{p.auth_port}", SECRET, window=64,
                                    count=2 * a.subscribers, duration=20, source="127.0.0.1")
            for _ in range(a.rounds):
                for name, p in procs.items():
                    c0, r0 = cpu_s(p.pid), cpu_s(s.redis.pid)
                    t0, h0 = threads_cpu_s(p.pid), hook_seconds(mports[name])
                    s0 = switches(p.pid)
                    recorder = None
                    if a.perf and not cpu[name]:
                        a.perf.mkdir(parents=True, exist_ok=True)
                        recorder = subprocess.Popen(
                            ["perf", "record", "-q", "-F", "2000", "-p", str(p.pid), "-o",
                             str(a.perf / f"{name}.data")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
                    r = loadgen.run_radload(rld, f"127.0.0.1:{p.auth_port}", SECRET, window=64,
                                            count=a.count, duration=a.duration, source="127.0.0.1")
                    got = r.get("received") or 1
                    if recorder is not None:
                        recorder.send_signal(signal.SIGINT)
                        recorder.wait(timeout=60)
                    if r.get("accept", 0) < 0.99 * got:
                        raise RuntimeError(f"{name}: not accepted: {r}")
                    cpu[name].append((cpu_s(p.pid) - c0) / got * 1e6)
                    rcpu[name].append((cpu_s(s.redis.pid) - r0) / got * 1e6)
                    rates[name].append(r["rps"])
                    t1, h1 = threads_cpu_s(p.pid), hook_seconds(mports[name])
                    s1 = switches(p.pid)
                    sw_main[name].append((s1[0] - s0[0]) / got)
                    sw_other[name].append((s1[1] - s0[1]) / got)
                    threads[name].append((t1[1] - t0[1]) / got * 1e6)
                    if h1[1] > h0[1]:
                        hook[name].append((h1[0] - h0[0]) / (h1[1] - h0[1]) * 1e6)
        finally:
            for p in procs.values():
                p.stop()
        out = {n: {"radiusd_cpu_us": spread(cpu[n]), "module_threads_cpu_us": spread(threads[n]),
                   "authorize_wall_us": spread(hook[n]) if hook[n] else None,
                   "switches_per_request": {"main": spread(sw_main[n]), "threads": spread(sw_other[n])},
                   "redis_cpu_us": spread(rcpu[n]), "req_per_s": spread(rates[n])} for n in procs}
        base = statistics.median(cpu["full"]) if "full" in cpu else None
        for n in procs:
            if base is not None and n != "full":
                out[n]["full_minus_this_us"] = round(base - statistics.median(cpu[n]), 1)
        print(json.dumps(out))


if __name__ == "__main__":
    main()
