"""The module's Python work per warm PAP login, without radiusd: CPU microseconds of the
hook (the calling thread) and of the module's threads (forwarder, state refresher, ...).

    .venv/bin/python benchmarks/hook_cost.py                       # this checkout
    .venv/bin/python benchmarks/hook_cost.py --other /tmp/base     # and another, alternating
    .venv/bin/python benchmarks/hook_cost.py --profile             # plus a cProfile of the hook

Starts Redis and two shards (stack/local.py, as the tests do), adds one tenant, one
MikroTik NAS and ``--subscribers`` cleartext subscribers, then runs, for each tree
(``--other``: a checkout, e.g. ``git archive main | tar -x -C /tmp/base``) in turn and
``--rounds`` times, a child process that builds an Engine on those servers, starts its
threads, answers every subscriber once (warm-up: profiles in process), and then calls
``rlm_wificore.hooks.authorize`` (a stand-in ``radiusd`` module supplies the constants)
``--iterations`` times with the tuple rlm_python3 passes for compare.py's warm PAP
request (its attributes, values printed as rlm_python3 prints them, WiFiCore-Client as
the site sets it). Reported per login: ``hook_us``, the calling thread's CPU
(``time.thread_time_ns``); ``threads_us``, the other threads' CPU from
/proc/self/task/*/stat over the loop and until the spool is forwarded (per thread in
``per_thread_us``); their medians over the rounds and the spread (min-max). The
machine is shared: CPU time, not wall time, and trees alternated round by round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: rlm_python3's constants (src/modules/rlm_python3/rlm_python3.c, radiusd.h).
RADIUSD_CONSTANTS = {
    "RLM_MODULE_REJECT": 0, "RLM_MODULE_FAIL": 1, "RLM_MODULE_OK": 2, "RLM_MODULE_HANDLED": 3,
    "RLM_MODULE_INVALID": 4, "RLM_MODULE_USERLOCK": 5, "RLM_MODULE_NOTFOUND": 6,
    "RLM_MODULE_NOOP": 7, "RLM_MODULE_UPDATED": 8, "RLM_MODULE_NUMCODES": 9,
    "L_AUTH": 2, "L_INFO": 3, "L_ERR": 4, "L_WARN": 5, "L_PROXY": 6, "L_ACCT": 7, "L_DBG": 16,
}
NAS_IP = "127.0.0.1"


def tick_s() -> float:
    return 1.0 / os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """benchmarks/procstat.py of this tree (the child's sys.path leads to the tree measured)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    try:
        from benchmarks.procstat import cpu_s as read
    finally:
        sys.path.pop(0)
    return read(pid)


def task_cpu() -> dict[str, float]:
    """CPU seconds of each Python thread of this process, by name (the thread's CPU
    clock, ns resolution; /proc/self/task/*/stat counts in ticks of 10 ms)."""
    import threading
    out = {}
    for t in threading.enumerate():
        try:
            out[t.name] = time.clock_gettime(time.pthread_getcpuclockid(t.ident))
        except (OSError, TypeError):
            continue
    return out


def request_tuple(i: int, client: str) -> tuple[tuple[str, str], ...]:
    """compare.py's hotspot PAP request (auth_text / _common) as rlm_python3 hands it over."""
    sid = 0x80000000 + i
    return (("User-Name", f"bench-{i}"), ("User-Password", f"password{i}"),
            ("NAS-IP-Address", "10.10.0.1"), ("NAS-Identifier", "bench"), ("NAS-Port", str(sid)),
            ("Calling-Station-Id", f"02:00:01:22:{(i >> 8) & 255:02X}:{i & 255:02X}"),
            ("NAS-Port-Type", "Wireless-802.11"), ("Called-Station-Id", "hotspot1"),
            ("Acct-Session-Id", f"{sid:08x}"), ("WiFiCore-Client", client))


def child(a: argparse.Namespace) -> None:
    sys.path.insert(0, os.getcwd())
    stub = types.ModuleType("radiusd")
    stub.__dict__.update(RADIUSD_CONSTANTS)
    stub.config = {}  # type: ignore[attr-defined]
    stub.radlog = lambda level, line: None  # type: ignore[attr-defined]
    sys.modules["radiusd"] = stub
    import threading

    from rlm_wificore import hooks
    from rlm_wificore.engine import Engine
    from wificore.settings import Settings

    spool_dir = tempfile.mkdtemp(prefix="hookcost-spool-", dir="/tmp")
    settings = Settings.from_mapping({"shard_map": a.shard_map, "redis_url": a.redis_url,
                                      "spool_dir": spool_dir}, source="benchmark")
    engine = Engine(settings)
    engine.start()
    try:
        hooks._engine = engine
        end = time.monotonic() + 30
        client = engine.client(NAS_IP)
        while client.rcode != "ok" and time.monotonic() < end:  # the relay builds the directory
            time.sleep(0.1)
            client = engine.client(NAS_IP)
        shortname = next(v for k, *rest in client.config for v in rest[-1:]
                         if k == "FreeRADIUS-Client-Shortname")
        reqs = [request_tuple(i, shortname) for i in range(a.subscribers)]
        for _ in range(2):  # warm: profiles in process, the replies rendered
            for p in reqs:
                r = hooks.authorize(p)
                if not isinstance(r, tuple) or r[0] != RADIUSD_CONSTANTS["RLM_MODULE_UPDATED"]:
                    raise RuntimeError(f"warm-up answered {r!r}")
        wait_forwarded(engine)
        n = a.iterations
        m = len(reqs)
        authorize = hooks.authorize
        me = threading.current_thread().name
        thrash_ns = 0
        if a.thrash_kib:
            # radiusd runs C code (and the machine other processes) between two calls:
            # evict the caches between calls, and take what the eviction alone costs off.
            junk = bytearray(a.thrash_kib * 1024)
            t0 = time.thread_time_ns()
            for _ in range(n):
                bytes(junk)
            thrash_ns = time.thread_time_ns() - t0
        cpu0 = task_cpu()
        redis0 = cpu_s(a.redis_pid)
        t0 = time.thread_time_ns()
        if a.thrash_kib:
            for k in range(n):
                bytes(junk)
                authorize(reqs[k % m])
        else:
            for k in range(n):
                authorize(reqs[k % m])
        hook_ns = time.thread_time_ns() - t0 - thrash_ns
        wait_forwarded(engine)
        cpu1 = task_cpu()
        redis_us = (cpu_s(a.redis_pid) - redis0) / n * 1e6
        per_thread = {name: round((cpu1[name] - cpu0.get(name, 0.0)) / n * 1e6, 3)
                      for name in cpu1 if name != me}
        profile = None
        if a.profile:
            import cProfile
            import io
            import pstats
            prof = cProfile.Profile()
            prof.enable()
            for k in range(n):
                authorize(reqs[k % m])
            prof.disable()
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(30)
            profile = out.getvalue()
        print(json.dumps({"hook_us": round(hook_ns / n / 1e3, 3),
                          "threads_us": round(sum(per_thread.values()), 3),
                          "redis_us": round(redis_us, 3),
                          "per_thread_us": per_thread, "profile": profile}))
    finally:
        hooks._engine = None
        engine.close()
        import shutil
        shutil.rmtree(spool_dir, ignore_errors=True)


def wait_forwarded(engine, timeout_s: float = 30.0) -> None:
    end = time.monotonic() + timeout_s
    while engine.spool.has_pending():
        if time.monotonic() > end:
            raise RuntimeError("the spool was not forwarded")
        time.sleep(0.01)
    time.sleep(0.05)  # the forwarder's last call returns


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--other", type=Path, help="another checkout, measured alternately")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--subscribers", type=int, default=2000)
    ap.add_argument("--iterations", type=int, default=100_000, help="hook calls per round")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of this tree's hook")
    ap.add_argument("--thrash-kib", type=int, default=0,
                    help="copy this many KiB between two calls (cold caches, as inside radiusd)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--shard-map", help=argparse.SUPPRESS)
    ap.add_argument("--redis-url", help=argparse.SUPPRESS)
    ap.add_argument("--redis-pid", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a)
        return
    sys.path.insert(0, str(ROOT))
    from stack.local import temporary_stack
    trees = {"this": ROOT}
    if a.other:
        trees["other"] = a.other.resolve()
    with temporary_stack("wificore-hookcost-") as s:
        s.admin("tenant", "add", "--id", "1", "--name", "bench")
        s.admin("nas", "add", "--tenant", "1", "--name", "nas", "--ip", NAS_IP, "--secret",
                "bench-secret", "--vendor", "mikrotik", "--require-message-authenticator", "no")
        s.admin("plan", "add", "--tenant", "1", "--name", "basic", "--simultaneous-use", "1",
                "--rate-up-kbps", "2000", "--rate-down-kbps", "5000", "--session-timeout-s", "3600",
                "--idle-timeout-s", "600", "--interim-interval-s", "300")  # compare.py's hotspot-1h
        csv = "username,password,kind,plan\n" + "".join(
            f"bench-{i},password{i},hotspot,basic\n" for i in range(a.subscribers))
        s.admin("subscriber", "import", "--tenant", "1", "-", input=csv)
        results: dict[str, list[dict]] = {k: [] for k in trees}
        profiles: dict[str, str] = {}
        for r in range(a.rounds):
            for label, tree in trees.items():
                cmd = [sys.executable, str(Path(__file__).resolve()), "--child",
                       "--shard-map", str(s.shard_map), "--redis-url", s.redis.url,
                       "--redis-pid", str(s.redis.pid),
                       "--subscribers", str(a.subscribers), "--iterations", str(a.iterations),
                       "--thrash-kib", str(a.thrash_kib)]
                if a.profile and r == 0:
                    cmd.append("--profile")
                out = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, timeout=600,
                                     env={**os.environ, "PYTHONPATH": str(tree)})
                try:
                    got = json.loads(out.stdout.strip().splitlines()[-1])
                except (json.JSONDecodeError, IndexError):
                    raise RuntimeError(f"no result from {label}:\n{out.stdout}\n{out.stderr}") from None
                text = got.pop("profile")
                if text:
                    profiles[label] = text
                results[label].append(got)
        for label, text in profiles.items():
            print(f"--- cProfile, {label} ({a.iterations} calls) ---\n{text}", file=sys.stderr)
        summary = {}
        for label, runs in results.items():
            threads = sorted({k for run in runs for k in run["per_thread_us"]})
            summary[label] = {
                "hook_us": spread([run["hook_us"] for run in runs]),
                "threads_us": spread([run["threads_us"] for run in runs]),
                "redis_us": spread([run["redis_us"] for run in runs]),
                "per_thread_us": {t: spread([run["per_thread_us"].get(t, 0.0) for run in runs])
                                  for t in threads
                                  if any(run["per_thread_us"].get(t, 0.0) >= 0.005 for run in runs)},
                "rounds": [[run["hook_us"], run["threads_us"], run["redis_us"]] for run in runs],
            }
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
