"""rlm_wificore against stock FreeRADIUS: one command, one run, one machine.

Starts everything it measures as local processes on 127.0.0.1 (Redis, two
PostgreSQL shards, radiusd in four set-ups), loads the dataset
(benchmarks/dataset.py), then measures, each configuration in turn:

==================  ============================================================
stock_files         stock radiusd, ``files`` + ``pap``, minimal site: the ceiling
stock_sql           stock radiusd, rlm_sql -> PostgreSQL, FreeRADIUS's own schema
wificore_warm       rlm_wificore, profiles in process (the steady state)
wificore_redis      rlm_wificore with ``local_cache_max = 0``: every request reads
                    Redis (what a freshly restarted radiusd does)
wificore_cold       rlm_wificore, Redis flushed and no process cache, users never
                    seen: one shard query per request
stock_sql_acct      stock rlm_sql accounting into radacct (Start/Interim/Stop)
python_floor        rlm_python3 with a module that decides nothing (benchmarks/stock/
                    floor.py): the most any rlm_python3 module can answer here
python_floor_acct   the same for the accounting mix
wificore_acct       rlm_wificore accounting (spool, Lua script into Redis)
==================  ============================================================

The closed-loop maximum (``--window`` requests in flight) is measured
``--repeat`` times, round-robin over the configurations (so that whatever else
the machine does weighs on all of them alike), each run after a warm-up pass;
then open-loop points at fractions of that maximum (``--points``) for the
latency-against-throughput plot. The median of the repeats is reported, and
ratios between configurations of this same run. Also: Redis bytes per cached profile and per live session, and
batch_writer ingestion (benchmarks/writer_bench.py, when present).

Access-Requests are PAP for every subscriber with a cleartext or NT-hash
password (bcrypt subscribers are in the data but not in the request mix: one
crypt(3) costs ~50 ms of CPU in every configuration and would measure bcrypt,
not the data path); accounting runs over the bcrypt subscribers, so sessions
left open never trip Simultaneous-Use in an auth run. Packets come from every sender tenant's own loopback NAS
address for rlm_wificore (radiusd picks the tenant by source address) and
from 127.0.0.1 for the stock baselines (one static client).

Prerequisites (Debian 12): ``bin/setup``, then
``apt-get install -y freeradius-postgresql`` (the rlm_sql driver and the
schema) and ``.venv/bin/pip install -e '.[bench]'`` (matplotlib for the plot).

Usage::

    .venv/bin/python benchmarks/compare.py                # moderate defaults
    .venv/bin/python benchmarks/compare.py --smoke --out /tmp/r   # seconds
    .venv/bin/python benchmarks/compare.py --tenants 20 --duration 15 --repeat 3

Writes ``latest.json``, ``latest.md`` and ``latest.png`` into ``--out``
(default benchmarks/results/). Every server it starts is stopped by PID.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime as dt
import functools
import hashlib
import json
import math
import os
import platform
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from benchmarks import dataset as ds  # noqa: E402
from benchmarks import noisy, report  # noqa: E402
from benchmarks.loadgen import run as loadgen  # noqa: E402
from benchmarks.procstat import cpu_s  # noqa: E402
from rlm_wificore.background import Forwarder  # noqa: E402
from rlm_wificore.engine import Engine  # noqa: E402
from rlm_wificore.spool import Spool  # noqa: E402
from rlm_wificore.spool import drained as spool_drained  # noqa: E402
from stack import freeradius  # noqa: E402
from stack.local import Ports, Stack  # noqa: E402
from stack.servers import RADDB, BatchWriter, Process, Radiusd, RadiusdGroup, free_port, start_radiusd  # noqa: E402
from wificore.keys import Keys  # noqa: E402
from wificore.profile import Profile  # noqa: E402
from wificore.settings import Settings  # noqa: E402
from wificore.shardmap import ShardMap  # noqa: E402

STOCK_DIR = Path(__file__).resolve().parent / "stock"
WRITER_BENCH = Path(__file__).resolve().parent / "writer_bench.py"
STOCK_SECRET = "stock-bench-secret"
#: Accounting packets are sent in blocks of sessions: the Starts of a block, its Interims
#: round by round, its Stops.
ACCT_BLOCK = 500
ACCT_INTERIMS = 8
ACCT_PER_SESSION = ACCT_INTERIMS + 2
#: Upper bound of packets per sender in a closed-loop auth run (the file is cycled).
#: Warm in process: at most this many warm-up passes, until one reads at most
#: WARM_MISSES of its answers' profiles from Redis (see Bench.warm_up).
WARM_PASSES = 8
WARM_MISSES = 0.01
MAX_PACKETS_PER_S = 200_000


def _retry_ports(make: Callable[[], Any], attempts: int = 5) -> Any:
    """stack.servers.free_port can lose a race for the UDP half of a port: try again."""
    for i in range(attempts):
        try:
            return make()
        except OSError:
            if i == attempts - 1:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ machine
def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {"cpu_model": model, "cores": os.cpu_count(), "memory_gb": mem_gb,
            "kernel": platform.release(), "python": platform.python_version(),
            "freeradius": _freeradius_version()}


def _freeradius_version() -> str | None:
    try:
        fr = freeradius.build()  # WIFICORE_FREERADIUS (stack/freeradius.py)
        out = subprocess.run([str(fr.binary), "-v"], env=fr.env(), capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"Version (\S+)", out.stdout + out.stderr)
    return m.group(1).rstrip(",") if m else None


def _proc_cpu_s(pids: list[int]) -> float | None:
    """User + system CPU seconds of processes (all their threads), summed."""
    total = 0.0
    for pid in pids:
        try:
            total += cpu_s(pid)
        except (OSError, IndexError, ValueError):
            return None
    return total if pids else None


def _scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return resp.read().decode()
    except OSError:
        return None


def _scrape_all(ports: list[int]) -> str | None:
    """The metrics of several processes one after the other; None unless all answer."""
    texts = [_scrape(p) for p in ports]
    return None if None in texts else "\n".join(texts)


def _samples(text: str, name: str) -> list[Any]:
    """Every sample called ``name`` (prometheus_client's parser; the scrapes of several
    processes one after the other in ``text`` give one family each)."""
    return [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]


def _metric_sum(text: str, name: str) -> float:
    """Sum of every sample of ``name`` (all label sets)."""
    return sum(s.value for s in _samples(text, name))


def _histogram_buckets(text: str, name: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of a Prometheus histogram, +Inf last; the samples of
    several processes (their scrapes one after the other in ``text``) are added up."""
    out: dict[float, float] = {}
    for s in _samples(text, name + "_bucket"):
        bound = float(s.labels["le"])  # "+Inf" -> inf
        out[bound] = out.get(bound, 0.0) + s.value
    return sorted(out.items())


def _quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus's histogram_quantile: linear inside the bucket that holds rank q."""
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return round(lower_bound + (bound - lower_bound) * share, 3)
        lower_bound, lower_count = bound, count
    return None


def _pids(server: Any) -> list[int]:
    """The radiusd processes of a server (a RadiusdGroup has several)."""
    return list(getattr(server, "pids", None) or [server.pid])


def _process_tree(roots: list[int]) -> list[int]:
    """``roots`` and all their descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [r for r in roots if r]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def _cpu_jiffies(pids: list[int]) -> dict[int, int]:
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
            out[pid] = int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return out


def _machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return sum(parts) - idle, sum(parts)


# ------------------------------------------------------------------ servers
class StockRadiusd(Process):
    """Stock radiusd with benchmarks/stock/ (``files`` or ``sql`` baseline)."""

    def __init__(self, state: Path, baseline: str, *, users_file: Path | None = None,
                 sql: dict[str, str] | None = None) -> None:
        super().__init__(f"stock-{baseline}", state)
        self.auth_port, self.acct_port = _retry_ports(lambda: (free_port(), free_port()))
        self.dir = state / f"stock-{baseline}"
        self.env = {
            **os.environ,
            "STOCK_BASELINE": baseline, "STOCK_RADDB": str(STOCK_DIR), "STOCK_STATE": str(self.dir),
            "STOCK_AUTH_PORT": str(self.auth_port), "STOCK_ACCT_PORT": str(self.acct_port),
            "STOCK_SECRET": STOCK_SECRET, "STOCK_USERS_FILE": str(users_file or "/dev/null"),
        }
        for key, value in (sql or {}).items():
            self.env[f"STOCK_SQL_{key.upper()}"] = value

    def start(self, timeout_s: float = 120) -> None:
        for sub in ("log", "run"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        start_radiusd(self, STOCK_DIR, self.env, timeout_s)


def raddb_without_local_cache(dest: Path) -> Path:
    """A copy of raddb/ whose module keeps no profile in process (local_cache_max = 0)."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(RADDB, dest, symlinks=True)
    conf = dest / "mods-available" / "wificore"
    text, n = re.subn(r"(?m)^(\s*local_cache_max\s*=\s*)\d+", r"\g<1>0", conf.read_text())
    if n != 1:
        raise RuntimeError(f"{RADDB}/mods-available/wificore: no local_cache_max setting to change")
    conf.write_text(text)
    return dest


# ------------------------------------------------------------------ packets
@dataclasses.dataclass
class Sender:
    """One sending tenant: its bench NAS, its subscribers for each request kind."""

    tenant: ds.Tenant
    auth_users: list[ds.Subscriber]
    acct_users: list[ds.Subscriber]


def make_sender(spec: ds.Spec, tenant: ds.Tenant) -> Sender:
    """The tenant's subscribers split between the two request mixes.

    Access-Requests: every subscriber with a cleartext or NT-hash password.
    Accounting: the others (bcrypt), so that sessions a run leaves open (cut
    short by its duration) never count against Simultaneous-Use in an auth run.
    """
    subs = list(ds.subscribers(spec, tenant.tenant_id, None))
    auth = [s for s in subs if s.password_type != "bcrypt"]
    return Sender(tenant, auth, [s for s in subs if s.password_type == "bcrypt"] or auth)


def _mac(s: ds.Subscriber) -> str:
    n = int(s.username.rsplit("-", 1)[1])
    kind = 0x11 if s.kind == "pppoe" else 0x22
    return (f"02:{(s.tenant_id >> 8) & 255:02X}:{s.tenant_id & 255:02X}:{kind:02X}:"
            f"{(n >> 8) & 255:02X}:{n & 255:02X}")


def _q(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _common(s: ds.Subscriber, nas_ip: str, sid: int) -> list[str]:
    """What a MikroTik NAS puts in every request of a PPPoE or hotspot session."""
    lines = [f"User-Name = {_q(s.username)}", f"NAS-IP-Address = {nas_ip}",
             'NAS-Identifier = "bench"', f"NAS-Port = {sid}",
             f"Calling-Station-Id = {_q(_mac(s))}"]
    if s.kind == "pppoe":
        lines += ["NAS-Port-Type = Ethernet", "Service-Type = Framed-User", "Framed-Protocol = PPP",
                  'Called-Station-Id = "pppoe-service"']
    else:
        lines += ["NAS-Port-Type = Wireless-802.11", 'Called-Station-Id = "hotspot1"']
    return lines


def auth_text(sender: Sender, seed: int = 1) -> str:
    """One PAP Access-Request per subscriber of the sender, in a fixed random order."""
    users = list(sender.auth_users)
    random.Random(seed + sender.tenant.tenant_id).shuffle(users)
    out = []
    for i, s in enumerate(users):
        sid = 0x80000000 + i
        lines = _common(s, sender.tenant.bench_ip, sid)
        lines.insert(1, f"User-Password = {_q(s.cleartext)}")
        if s.kind == "hotspot":  # RouterOS sends the session id in the hotspot login already
            lines.append(f'Acct-Session-Id = "{sid:08x}"')
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def acct_text(sender: Sender, sessions: int, epoch: int) -> str:
    """Start, ACCT_INTERIMS Interim-Updates and Stop of ``sessions`` sessions, in blocks of
    ACCT_BLOCK sessions: 10% Start, 80% Interim, 10% Stop, the mix of the writer benchmark
    (an ISP's sessions last hours and send an Interim every few minutes).

    Session ids are unique per (epoch, session): every run gets new sessions,
    so a Start never follows the Stop of the same session.
    """
    users = sender.acct_users
    step = 300
    now = int(time.time()) - step * (ACCT_INTERIMS + 2)
    blocks = []
    for first in range(0, sessions, ACCT_BLOCK):
        starts, stops = [], []
        interims: list[list[list[str]]] = [[] for _ in range(ACCT_INTERIMS)]
        for k in range(first, min(sessions, first + ACCT_BLOCK)):
            s = users[k % len(users)]
            sid = 0x80000000 + ((epoch << 20) + k) % 0x80000000
            base = ["Packet-Type = Accounting-Request"] + _common(s, sender.tenant.bench_ip, sid) + [
                f'Acct-Session-Id = "{sid:08x}"',
                f"Framed-IP-Address = 100.{64 + (k >> 16) % 64}.{(k >> 8) & 255}.{k & 255}",
                "Acct-Delay-Time = 0"]
            if s.kind == "pppoe":
                base.append("Acct-Authentic = RADIUS")
            starts.append(base + ["Acct-Status-Type = Start", f"Event-Timestamp = {now}",
                                  "Acct-Session-Time = 0", "Acct-Input-Octets = 0",
                                  "Acct-Output-Octets = 0"])
            for j in range(1, ACCT_INTERIMS + 1):
                interims[j - 1].append(base + [
                    "Acct-Status-Type = Interim-Update", f"Event-Timestamp = {now + j * step}",
                    f"Acct-Session-Time = {j * step}", f"Acct-Input-Octets = {j * 1_000_000 + k}",
                    f"Acct-Output-Octets = {j * 10_000_000 + 3 * k}", f"Acct-Input-Packets = {j * 1200}",
                    f"Acct-Output-Packets = {j * 9000}", "Acct-Input-Gigawords = 0",
                    "Acct-Output-Gigawords = 0"])
            end = ACCT_INTERIMS + 1
            stops.append(base + [
                "Acct-Status-Type = Stop", f"Event-Timestamp = {now + end * step}",
                f"Acct-Session-Time = {end * step}", f"Acct-Input-Octets = {end * 1_000_000 + k}",
                f"Acct-Output-Octets = {end * 10_000_000 + 3 * k}", f"Acct-Input-Packets = {end * 1200}",
                f"Acct-Output-Packets = {end * 9000}", "Acct-Input-Gigawords = 0",
                f"Acct-Output-Gigawords = {1 if k % 50 == 0 else 0}",
                "Acct-Terminate-Cause = User-Request"])
        blocks += starts + [p for rnd in interims for p in rnd] + stops
    return "\n\n".join("\n".join(b) for b in blocks) + "\n"


class PacketCache:
    """Encoded RLD1 files, by name and secret."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._made: dict[tuple[str, str], tuple[Path, int]] = {}

    def get(self, name: str, secret: str, text: Callable[[], str]) -> tuple[Path, int]:
        """(RLD1 path, packet count) of the text ``text()`` encoded with ``secret``."""
        key = (name, secret)
        if key not in self._made:
            src = self.folder / f"{name}.txt"
            if not src.exists():
                src.write_text(text())
            tag = hashlib.sha1(secret.encode()).hexdigest()[:8]
            rld = self.folder / f"{name}.{tag}.rld"
            counts = loadgen.prepare_packets(src, rld, secret)
            self._made[key] = (rld, counts["packets"])
        return self._made[key]

    def drop(self, name: str) -> None:
        for key in [k for k in self._made if k[0] == name]:
            self._made.pop(key)[0].unlink(missing_ok=True)
        (self.folder / f"{name}.txt").unlink(missing_ok=True)


# -------------------------------------------------------------- measurement
@dataclasses.dataclass
class Target:
    """One radload process: a packet file, where to send it, from where."""

    rld: Path
    packets: int
    port: int
    secret: str
    source: str


#: The end-to-end run's senders: bursts and response collection every millisecond.
E2E_POLL_US = 1000
#: Closed-loop and open-loop points: each sender collects responses (and in open loop
#: sends) every 500 µs. The generator shares the server's two cores; woken for every
#: response it cost 18-21 µs of CPU per request and radiusd's replies paid for waking
#: it (benchmarks/README.md).
POLL_US = 500


def blast(targets: list[Target], *, window: int | None = None, rate: float | None = None,
          count: int | None = None, duration_s: float, server_pids: list[int] | None = None,
          own_roots: list[int] | None = None, timeout_s: float = 2.0,
          sockets: int | None = None, poll_us: int | None = None) -> dict[str, Any]:
    """Run one radload per target at once; their results merged into one.

    ``window`` and ``rate`` are totals, split evenly over the targets;
    ``count`` is per target (default: each file once). Rates and counts add
    up; a percentile is the mean of the senders' percentiles weighted by
    the responses each received (the senders share one server, so their
    distributions are alike); ``p99_ms_max`` keeps the worst sender's.
    ``cpu_other`` (percent of one core) is the machine's CPU time used by
    anything but the processes under ``own_roots`` and the generator: other
    work sharing the machine. ``poll_us``: each radload collects responses
    (and, in open loop, sends) every that many microseconds instead of waking
    for each response; kernel receive timestamps keep the latencies exact.
    """
    k = len(targets)
    own = _process_tree(own_roots or [])
    own0 = _cpu_jiffies(own)
    cpu0, busy0, t0 = _proc_cpu_s(server_pids or []), _machine_busy(), time.monotonic()

    def one(t: Target) -> dict[str, Any]:
        return loadgen.run_radload(
            t.rld, f"127.0.0.1:{t.port}", t.secret, source=t.source,
            window=max(1, window // k) if window else None,
            rate=rate / k if rate else None,
            count=count if count is not None else t.packets,
            duration=duration_s, timeout=timeout_s, sockets=sockets,
            tick_us=poll_us or None, poll_us=poll_us or None)

    with concurrent.futures.ThreadPoolExecutor(max_workers=k) as pool:
        parts = list(pool.map(one, targets))
    wall = time.monotonic() - t0
    cpu1, busy1 = _proc_cpu_s(server_pids or []), _machine_busy()
    received = sum(p.get("received", 0) for p in parts)

    def weighted(key: str) -> float | None:
        vals = [(p.get(key), p.get("received", 0)) for p in parts if p.get(key) is not None]
        total = sum(w for _, w in vals)
        if not vals or total == 0:
            return None
        return round(sum(v * w for v, w in vals) / total, 3)

    merged: dict[str, Any] = {
        "rps": round(sum(p.get("rps", 0.0) for p in parts), 1),
        "p50_ms": weighted("p50_ms"), "p90_ms": weighted("p90_ms"),
        "p99_ms": weighted("p99_ms"), "p999_ms": weighted("p999_ms"),
        "p99_ms_max": max((p.get("p99_ms") or 0) for p in parts),
        "sent": sum(p.get("sent", 0) for p in parts), "received": received,
        "accept": sum(p.get("accept", 0) for p in parts),
        "reject": sum(p.get("reject", 0) for p in parts),
        "acct_response": sum(p.get("acct_response", 0) for p in parts),
        "lost": sum(p.get("lost", 0) for p in parts),
        "duration_s": round(max(p.get("duration_s", 0.0) for p in parts), 3),
        "cpu_generator": round(sum(p.get("cpu_pct", 0.0) for p in parts), 1),
        "senders": k,
    }
    if cpu0 is not None and cpu1 is not None and wall > 0:
        merged["cpu_server"] = round(100 * (cpu1 - cpu0) / wall, 1)
    if busy1[1] > busy0[1]:
        merged["cpu_machine"] = round(100 * (busy1[0] - busy0[0]) / (busy1[1] - busy0[1]), 1)
    if own_roots and wall > 0:
        own1 = _cpu_jiffies(own)
        hz = os.sysconf("SC_CLK_TCK")
        ours = sum(own1[p] - own0[p] for p in own1 if p in own0) / hz / wall * 100
        machine_pct = (busy1[0] - busy0[0]) / hz / wall * 100
        merged["cpu_other"] = round(max(0.0, machine_pct - ours - merged["cpu_generator"]), 1)
    return merged


_MEDIAN_KEYS = ("rps", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "p99_ms_max", "cpu_generator",
                "cpu_server", "cpu_machine", "sent", "received", "accept", "reject",
                "acct_response", "lost", "cpu_other")


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per key, the median over the repeats."""
    out: dict[str, Any] = {}
    for key in _MEDIAN_KEYS:
        vals = [r[key] for r in runs if r.get(key) is not None]
        if vals:
            med = statistics.median(vals)
            out[key] = round(med, 3) if isinstance(med, float) else med
    return out


@dataclasses.dataclass
class Config:
    name: str
    kind: str  # auth | acct
    server: str  # key of the server that answers it
    description: str
    before_each: Callable[[], None] | None = None  # e.g. flush the caches (cold)
    warm: bool = True
    once_per_user: bool = False  # cold: never send a user twice between flushes
    # Warm in process: the warm-up goes on until a pass reads (almost) no profile from
    # Redis (see Bench.warm_up).
    in_process: bool = False


class Bench:
    """The whole run: servers, data, packets, measurements."""

    def __init__(self, args: argparse.Namespace, state: Path) -> None:
        self.args = args
        self.state = state
        # fsync=off unless --durable-shards: the stock rlm_sql baselines and the writer
        # run against the same shards, so the ratios hold either way.
        self.stack = Stack(state, _retry_ports(Ports.free), fast=not args.durable_shards)
        self.packets = PacketCache(state / "packets")
        self.servers: dict[str, Any] = {}
        self.running: Any = None
        self.epoch = 0
        self.warnings: list[str] = []
        self.results: list[dict[str, Any]] = []
        self.senders: list[Sender] = []
        self.dataset: dict[str, Any] = {}

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        a = self.args
        t0 = time.monotonic()
        self.stack.start_data()
        log(f"Redis and shards up in {time.monotonic() - t0:.1f} s (state in {self.state})")
        self.shard_map = ShardMap.load(self.stack.shard_map)
        self.spec = ds.Spec(tenants=a.tenants, nas_per_tenant=a.nas_per_tenant,
                            pppoe_per_tenant=a.pppoe_per_tenant,
                            hotspot_per_tenant=a.hotspot_per_tenant)
        pg1 = self.stack.pg[0]
        self.stock_sql = {"host": "127.0.0.1", "port": str(pg1.port), "user": "postgres",
                          "db": "radius"}
        stock_dsn = f"postgresql://postgres@127.0.0.1:{pg1.port}/radius"
        self.users_file = self.state / "users"
        self.dataset = ds.load(self.spec, self.shard_map, stock_dsn=stock_dsn,
                               users_file=self.users_file, replace=True, log=log)
        tenants = ds.place_tenants(self.spec, self.shard_map)
        # Sender tenants alternate over the shards (place_tenants is round-robin).
        for t in tenants[:min(a.senders, len(tenants))]:
            self.senders.append(make_sender(self.spec, t))
        self.servers = {
            "stock_files": lambda: StockRadiusd(self.state, "files", users_file=self.users_file),
            "stock_sql": lambda: StockRadiusd(self.state, "sql", sql=self.stock_sql),
            "stock_python": lambda: StockRadiusd(self.state, "python"),
            "wificore": lambda: self._wificore("wificore", RADDB),
            "wificore_nolocal": lambda: self._wificore(
                "wificore-nolocal", raddb_without_local_cache(self.state / "raddb-nolocal")),
        }

    def _wificore(self, name: str, raddb: Path) -> RadiusdGroup:
        """``--radiusd-procs`` processes on one pair of ports, as bin/stack runs them."""
        auth, acct = _retry_ports(lambda: (free_port(), free_port()))
        n = self.args.radiusd_procs
        return RadiusdGroup([
            Radiusd(self.state / f"{name}-{i}", raddb=raddb, auth_port=auth, acct_port=acct,
                    shard_map=self.stack.shard_map, redis_url=self.stack.redis.url,
                    metrics_port=0, name=f"{name}-{i}", reuseport=n > 1,
                    threaded=self.args.radiusd_threaded)
            for i in range(n)])

    def redis(self, timeout_s: float = 60.0) -> redis.Redis:
        """A client of the stack's Redis; FLUSHDB of a million keys takes seconds."""
        return redis.Redis.from_url(self.stack.redis.url, socket_timeout=timeout_s)

    def flush_redis(self) -> None:
        r = self.redis()
        try:
            r.flushdb()
            # The NAS directory went too: a running rlm_wificore's relay rebuilds it within
            # a few seconds; until then no new dynamic client is answered.
            if self.running is not None and self.running[0].startswith("wificore"):
                deadline = time.monotonic() + 30
                while not r.exists("wc:{nasdir}") and time.monotonic() < deadline:
                    time.sleep(0.1)
        finally:
            r.close()

    def trim_streams(self) -> None:
        """Drop stream entries between runs: no batch_writer drains them here."""
        r = self.redis()
        try:
            for match in ("wc:{b*}:stream", "wc:stream:*"):  # the buckets', the layout before
                for key in r.scan_iter(match=match, count=1000):
                    r.xtrim(key, maxlen=0, approximate=False)  # exact: "~" trims at most 10,000 a call
        finally:
            r.close()

    # -------------------------------------------------------------- servers
    def use_server(self, key: str) -> Any:
        if self.running is not None and self.running[0] == key:
            return self.running[1]
        self.stop_server()
        server = self.servers[key]()
        t0 = time.monotonic()
        server.start()
        log(f"{key}: radiusd up in {time.monotonic() - t0:.1f} s, pid "
            + ", ".join(map(str, _pids(server))))
        self.running = (key, server)
        return server

    def stop_server(self) -> None:
        if self.running is None:
            return
        key, server = self.running
        self.running = None
        code = server.stop()
        if code not in (0, None):
            self.warnings.append(f"{key}: radiusd exited with {code} on SIGTERM")
            log(f"{key}: radiusd exited with {code}:\n{server.log_tail(20)}")

    def _own_roots(self) -> list[int]:
        """This process (radiusd, Redis, radload are its children) and the shards' postmasters."""
        return [os.getpid(), *(pg.pid for pg in self.stack.pg if pg.pid)]

    # -------------------------------------------------------------- targets
    def _auth_targets(self, stock: bool, port: int) -> list[Target]:
        out = []
        for s in self.senders:
            secret = STOCK_SECRET if stock else s.tenant.bench_secret
            rld, n = self.packets.get(f"auth-{s.tenant.tenant_id}", secret, lambda s=s: auth_text(s))
            out.append(Target(rld, n, port, secret, "127.0.0.1" if stock else s.tenant.bench_ip))
        return out

    def _acct_targets(self, stock: bool, port: int, packets_per_sender: int) -> list[Target]:
        self.epoch += 1
        sessions = max(1, math.ceil(packets_per_sender / ACCT_PER_SESSION))
        out = []
        for s in self.senders:
            secret = STOCK_SECRET if stock else s.tenant.bench_secret
            name = f"acct-{s.tenant.tenant_id}-e{self.epoch}"
            rld, n = self.packets.get(name, secret,
                                      lambda s=s: acct_text(s, sessions, self.epoch))
            out.append(Target(rld, n, port, secret, "127.0.0.1" if stock else s.tenant.bench_ip))
        return out

    def _release_acct(self) -> None:
        for s in self.senders:
            self.packets.drop(f"acct-{s.tenant.tenant_id}-e{self.epoch}")

    # ---------------------------------------------------------- measuring
    def _serve(self, cfg: Config) -> tuple[Any, bool, int]:
        """The server of ``cfg``, started if needed: (server, stock?, port)."""
        server = self.use_server(cfg.server)
        port = server.acct_port if cfg.kind == "acct" else server.auth_port
        return server, cfg.server.startswith("stock"), port

    def _auth_run(self, cfg: Config, **kw: Any) -> dict[str, Any]:
        server, stock, port = self._serve(cfg)
        if cfg.before_each:
            cfg.before_each()
        targets = self._auth_targets(stock, port)
        if cfg.once_per_user:
            per = min(t.packets for t in targets)
            kw["count"] = min(kw.get("count") or per, per)
        return blast(targets, server_pids=_pids(server), own_roots=self._own_roots(),
                     sockets=self.args.sender_sockets, **kw)

    def _acct_run(self, cfg: Config, packets_per_sender: int, **kw: Any) -> dict[str, Any]:
        server, stock, port = self._serve(cfg)
        targets = self._acct_targets(stock, port, packets_per_sender)
        try:
            return blast(targets, server_pids=_pids(server), own_roots=self._own_roots(),
                     sockets=self.args.sender_sockets, **kw)
        finally:
            self._release_acct()
            self.trim_streams()

    def warm_up(self, cfg: Config) -> None:
        """Every subscriber once (fills what the configuration caches); fails on silence."""
        a = self.args
        if not cfg.warm:
            return
        window = min(a.window, 32 * len(self.senders))
        bound_s = max(30.0, a.duration)
        # A pass cut short by its time bound (a cold start from the shards) left subscribers
        # unwarmed: another pass, up to three, so that the measured run is warm. Warm in
        # process: each radiusd process caches the subscribers it answered, and the kernel
        # spreads the senders' source ports over the processes anew at each pass (each
        # round starts its radiusd processes afresh): passes go on, up to WARM_PASSES,
        # until one reads under WARM_MISSES of its answers' profiles from Redis.
        passes = WARM_PASSES if cfg.in_process else 3
        for _ in range(passes):
            gets = self._redis_gets() if cfg.in_process else None
            if cfg.kind == "auth":
                w = self._auth_run(cfg, window=window, duration_s=bound_s, poll_us=a.poll_us)
            else:
                w = self._acct_run(cfg, min(3 * ACCT_BLOCK, a.acct_packets), window=window,
                                   duration_s=bound_s, poll_us=a.poll_us)
            misses = ""
            if gets is not None:
                read = self._redis_gets() - gets
                misses = f", {read} profiles read from Redis"
            log(f"{cfg.name}: warm-up {w['received']} answers, {w['rps']:.0f} req/s, "
                f"{w['lost']} lost, {w['reject']} rejects{misses}")
            if w["received"] == 0:
                raise RuntimeError(f"{cfg.name}: no answer during the warm-up "
                                   f"(see {self.running[1].logfile})")
            if w.get("duration_s", 0.0) < 0.95 * bound_s and (
                    gets is None or read <= WARM_MISSES * w["received"]):
                break
        self.trim_streams()

    def _redis_gets(self) -> int:
        """GET commands the stack's Redis has run (a profile read from Redis is one)."""
        r = self.redis()
        try:
            return int(r.info("commandstats").get("cmdstat_get", {}).get("calls", 0))
        finally:
            r.close()

    def closed_run(self, cfg: Config, i: int) -> dict[str, Any]:
        """One closed-loop maximum run, after a warm-up."""
        a = self.args
        self.warm_up(cfg)
        if cfg.kind == "auth":
            r = self._auth_run(cfg, window=a.window, duration_s=a.duration,
                               count=int(MAX_PACKETS_PER_S * a.duration), poll_us=a.poll_us)
        else:
            r = self._acct_run(cfg, a.acct_packets, window=a.window, duration_s=a.duration,
                               poll_us=a.poll_us)
        self.trim_streams()
        self._check(cfg, [r])
        log(f"{cfg.name}: run {i + 1}/{a.repeat}: {r['rps']:,.0f} req/s, p50 {r['p50_ms']} ms, "
            f"p99 {r['p99_ms']} ms, lost {r['lost']}, reject {r['reject']}, "
            f"generator {r['cpu_generator']}%, radiusd {r.get('cpu_server')}%, "
            f"others {r.get('cpu_other')}%")
        return r

    def open_points(self, cfg: Config, top: float) -> list[dict[str, Any]]:
        """Open-loop runs at fractions of the closed-loop maximum ``top``."""
        a = self.args
        k = len(self.senders)
        points: list[dict[str, Any]] = []
        if top <= 0 or not a.points:
            return points
        self.warm_up(cfg)
        for frac in a.points:
            rate = max(1.0, round(frac * top, 1))
            count = max(1, math.ceil(rate / k * a.point_duration))
            reps = []
            for _ in range(a.point_repeat):
                if cfg.kind == "auth":
                    reps.append(self._auth_run(cfg, rate=rate, duration_s=a.point_duration,
                                               count=count, poll_us=a.poll_us))
                else:
                    reps.append(self._acct_run(cfg, count, rate=rate, duration_s=a.point_duration,
                                               count=count, poll_us=a.poll_us))
            p = {"offered_rps": rate, "fraction": frac, **median_of(reps)}
            points.append(p)
            log(f"{cfg.name}: open loop {rate:,.0f}/s -> {p.get('rps', 0):,.0f} req/s, "
                f"p50 {p.get('p50_ms')} ms, p99 {p.get('p99_ms')} ms")
        return points

    def measure_all(self, configs: list[Config]) -> list[dict[str, Any]]:
        """Closed-loop repeats round-robin over the configurations, then the open-loop points.

        Round-robin: whatever else the machine does at some moment weighs on
        every configuration alike, so their ratios hold better than if each
        were measured in one block.
        """
        runs: dict[str, list[dict[str, Any]]] = {c.name: [] for c in configs}
        warn_at = {c.name: [] for c in configs}
        for i in range(self.args.repeat):
            for cfg in configs:
                before = len(self.warnings)
                runs[cfg.name].append(self.closed_run(cfg, i))
                warn_at[cfg.name] += self.warnings[before:]
        results = []
        for cfg in configs:
            before = len(self.warnings)
            result: dict[str, Any] = {"name": cfg.name, "kind": cfg.kind,
                                      "description": cfg.description, **median_of(runs[cfg.name])}
            result["points"] = self.open_points(cfg, result.get("rps") or 0)
            result["runs"] = runs[cfg.name]
            result["warnings"] = warn_at[cfg.name] + self.warnings[before:]
            results.append(result)
        return results

    def _check(self, cfg: Config, runs: list[dict[str, Any]]) -> None:
        for r in runs:
            expected = r["accept"] if cfg.kind == "auth" else r["acct_response"]
            if r["received"] and expected < r["received"]:
                self.warnings.append(f"{cfg.name}: {r['received'] - expected} of {r['received']} "
                                     "answers were not accepts / Accounting-Responses")
            if r["sent"] and r["lost"] > 0.01 * r["sent"]:
                self.warnings.append(f"{cfg.name}: {r['lost']} of {r['sent']} requests lost")

    # ------------------------------------------------------------ memory
    def redis_memory(self) -> dict[str, Any]:
        """INFO used_memory delta over profiles and live sessions written as the module does."""
        a = self.args
        keys = Keys("wc")
        r = self.redis(timeout_s=600.0)  # a million profiles and sessions to flush
        try:
            r.flushdb()
            subs: list[ds.Subscriber] = []
            hashes = ds.Hashes.compute()
            for t in ds.place_tenants(self.spec, self.shard_map):
                for s in ds.subscribers(self.spec, t.tenant_id, hashes):
                    subs.append(s)
                    if len(subs) >= a.memory_samples:
                        break
                if len(subs) >= a.memory_samples:
                    break
            expires = int(time.time()) + 30 * 86400

            def used() -> int:
                return int(r.info("memory")["used_memory"])

            before = used()
            pipe = r.pipeline(transaction=False)
            packed = 0
            for i, s in enumerate(subs):
                value = Profile(i + 1, s.kind, s.password_type, s.password, "active",
                                expires if s.kind == "hotspot" else None, None, None,
                                s.plan_id).pack()
                packed += len(value)
                pipe.set(keys.profile(s.tenant_id, s.username), value, ex=600 + i % 60)
                if len(pipe) >= 1000:
                    pipe.execute()
            pipe.execute()
            per_profile = (used() - before) / len(subs)
            r.flushdb()

            # Live sessions through the module's own accounting path: Engine.accounting()
            # appends each record to a spool, the Forwarder moves them into Redis.
            engine = self._spool_sessions(subs)
            try:
                engine.redis.ping()  # its connection is not part of the figure
                before = used()
                forwarder = Forwarder(engine)
                while forwarder.run_once():
                    pass
                records_n = forwarder.sent
            finally:
                engine.close()
                shutil.rmtree(self.state / "memory-spool", ignore_errors=True)
            with_streams = used() - before
            for match in ("wc:{b*}:stream", "wc:stream:*"):  # the buckets', the layout before
                for key in r.scan_iter(match=match, count=1000):
                    r.xtrim(key, maxlen=0, approximate=False)  # exact: "~" trims at most 10,000 a call
            without_streams = used() - before
            r.flushdb()
        finally:
            r.close()
        return {
            "profiles": len(subs), "sessions": len(subs),
            "bytes_per_profile": round(per_profile, 1),
            "packed_profile_bytes": round(packed / len(subs), 1),
            "bytes_per_live_session": round(without_streams / len(subs), 1),
            "bytes_per_stream_record": round((with_streams - without_streams) / records_n, 1),
        }

    def _spool_sessions(self, subs: list[ds.Subscriber]) -> Engine:
        """Start + Interim of one session per subscriber through ``Engine.accounting``.

        The records wait in the engine's spool; its Forwarder moves them to Redis.
        """
        spool_dir = self.state / "memory-spool"
        settings = Settings.from_mapping({"shard_map": str(self.stack.shard_map),
                                          "redis_url": self.stack.redis.url,
                                          "spool_dir": str(spool_dir)}, source="benchmark")
        engine = Engine(settings)
        try:
            engine.spool = Spool(spool_dir)
            nas_per_tenant = max(1, self.spec.nas_per_tenant)
            for i, s in enumerate(subs):
                client = f"{s.tenant_id}:{1 + i % nas_per_tenant}:mikrotik"
                for status, t_s, octets in (("Start", 0, 0), ("Interim-Update", 300, 5_000_000)):
                    result = engine.accounting({
                        "WiFiCore-Client": client, "Acct-Status-Type": status,
                        "Acct-Session-Id": f"{0x80000000 + i:08x}", "User-Name": s.username,
                        "Acct-Session-Time": str(t_s), "Acct-Input-Octets": str(octets // 5),
                        "Acct-Output-Octets": str(octets), "Calling-Station-Id": _mac(s),
                        "Framed-IP-Address": "100.64.0.1", "NAS-Port": "1"})
                    if result.rcode != "ok":
                        raise RuntimeError(f"accounting answered {result.rcode} ({result.reason})")
        except BaseException:
            engine.close()
            raise
        return engine

    # -------------------------------------------------- NAS -> PostgreSQL
    def end_to_end(self) -> dict[str, Any]:
        """Accounting at a fixed rate through radiusd, Redis and a running batch_writer:
        how long from radiusd receiving a record to its commit in the shard.

        The writer's ``wificore_writer_record_age_seconds`` histogram gives the
        percentiles (linear within a bucket, as Prometheus does); radload's own
        latencies are the NAS's side.
        """
        a = self.args
        rate, duration = a.e2e_rate, a.e2e_duration
        cfg = next(c for c in self.configs() if c.name == "wificore_acct")
        server, _stock, port = self._serve(cfg)
        # What earlier runs left in the radiusd spools would reach the writer during this
        # run with ages of a minute: wait until it is in Redis, then drop it.
        spools = [m.state / "spool" for m in getattr(server, "members", [server])]
        wait_for_spools = time.monotonic() + 120
        while not all(spool_drained(d) for d in spools):
            if time.monotonic() > wait_for_spools:
                log("end to end: the radiusd spools did not drain in 120 s; older records count too")
                break
            time.sleep(0.2)
        self.trim_streams()
        writers, ports = self._e2e_writers(a.e2e_writers)
        scrape = functools.partial(_scrape_all, ports)
        for w in writers:
            w.start()
        try:
            wait_for_metrics = time.monotonic() + 30
            while scrape() is None:
                if time.monotonic() > wait_for_metrics or not all(w.running() for w in writers):
                    raise RuntimeError("batch_writer did not start:\n"
                                       + "\n".join(w.log_tail() for w in writers))
                time.sleep(0.2)
            # The writer may still be merging what it read before the trim; the
            # measurement counts only what comes after that.
            before_text = self._writer_settled(scrape)
            before = _histogram_buckets(before_text, "wificore_writer_record_age_seconds")
            written_before = _metric_sum(before_text, "wificore_writer_records_total")
            per_sender = math.ceil(rate * duration / len(self.senders))
            targets = self._acct_targets(False, port, per_sender)
            log(f"end to end: sending accounting at {rate:,.0f}/s for {duration:g} s")
            try:
                # Every sender wakes once a millisecond, not for each response: the
                # generator shares the two cores with the whole pipeline it measures.
                sent = blast(targets, rate=rate, duration_s=duration, server_pids=_pids(server),
                             own_roots=self._own_roots(), sockets=a.sender_sockets,
                             poll_us=E2E_POLL_US)
            finally:
                self._release_acct()
            expected = sent["acct_response"]
            deadline = time.monotonic() + 120
            written = 0.0
            while time.monotonic() < deadline:
                text = scrape() or ""
                written = _metric_sum(text, "wificore_writer_records_total") - written_before
                if written >= expected:
                    break
                time.sleep(0.5)
            text = scrape() or ""  # the histogram and the count from the same scrape
            written = _metric_sum(text, "wificore_writer_records_total") - written_before
        finally:
            for w in writers:
                w.stop()
            self.trim_streams()
        after = _histogram_buckets(text, "wificore_writer_record_age_seconds")
        counted = dict(before)
        buckets = [(bound, count - counted.get(bound, 0.0)) for bound, count in after]
        out = {"rate": rate, "duration_s": duration, "writers": len(writers), "nas_rps": sent["rps"],
               "answered": expected, "written": int(written), "lost": sent["lost"],
               "written_before": int(written_before),
               "nas_p50_ms": sent["p50_ms"], "nas_p99_ms": sent["p99_ms"],
               "row_p50_s": _quantile(buckets, 0.5), "row_p99_s": _quantile(buckets, 0.99),
               "records_in_histogram": int(buckets[-1][1]) if buckets else 0}
        log(f"end to end at {rate:,.0f}/s: {out['nas_rps']:,.0f} answered/s, {int(written):,} of "
            f"{expected:,} written, NAS->row p50 {out['row_p50_s']} s, p99 {out['row_p99_s']} s")
        return out

    def _e2e_writers(self, n: int) -> tuple[list[Any], list[int]]:
        """The stack's batch_writer and ``n - 1`` more in the same consumer group."""
        writers, ports = [self.stack.writer], [self.stack.ports.writer_metrics]
        for i in range(2, n + 1):
            port = free_port()
            env = {**self.stack.writer_env(), "WIFICORE_WRITER_CONSUMER": f"writer-{i}",
                   "WIFICORE_WRITER_METRICS_PORT": str(port)}
            writers.append(BatchWriter(self.state / f"writer-{i}", env, name=f"batch_writer-{i}"))
            ports.append(port)
        return writers, ports

    def _writer_settled(self, scrape: Callable[[], str | None], quiet_s: float = 2.0,
                        timeout_s: float = 60.0) -> str:
        """The writers' metrics once their record count has not moved for ``quiet_s``."""
        deadline = time.monotonic() + timeout_s
        last, since = -1.0, time.monotonic()
        while True:
            text = scrape() or ""
            n = _metric_sum(text, "wificore_writer_records_total")
            if n != last:
                last, since = n, time.monotonic()
            elif time.monotonic() - since >= quiet_s or time.monotonic() > deadline:
                return text
            time.sleep(0.25)

    # ------------------------------------------------------- batch_writer
    def writer_bench(self) -> dict[str, Any]:
        """benchmarks/writer_bench.py (another part of the project), run as it documents."""
        a = self.args
        if not WRITER_BENCH.exists():
            return {"skipped": "benchmarks/writer_bench.py is not there"}
        self.flush_redis()
        cmd = [sys.executable, str(WRITER_BENCH), "--redis", self.stack.redis.url,
               "--shard-map", str(self.stack.shard_map), *shlex.split(a.writer_args)]
        runs = []
        for i in range(a.repeat):
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                                     timeout=a.writer_timeout)
            except subprocess.TimeoutExpired:
                return {"skipped": f"writer_bench.py took longer than {a.writer_timeout} s",
                        "command": shlex.join(cmd)}
            if out.returncode != 0:
                return {"skipped": f"writer_bench.py exited {out.returncode}: "
                                   f"{out.stderr.strip()[-500:]}", "command": shlex.join(cmd)}
            try:
                data = json.loads(out.stdout.strip().splitlines()[-1])
            except (json.JSONDecodeError, IndexError):
                return {"skipped": "writer_bench.py printed no JSON", "command": shlex.join(cmd)}
            runs.append(data)
            log(f"batch_writer: run {i + 1}/{a.repeat}: {data.get('records_per_s')} records/s")
        self.flush_redis()
        rates = [float(r["records_per_s"]) for r in runs if r.get("records_per_s") is not None]
        return {"records_per_s": round(statistics.median(rates), 1) if rates else None,
                "runs": runs, "command": shlex.join(cmd)}

    # ----------------------------------------------------------------- all
    def configs(self) -> list[Config]:
        cold = self.flush_redis
        return [
            Config("stock_files", "auth", "stock_files", "stock radiusd, files + pap (ceiling)"),
            Config("stock_sql", "auth", "stock_sql", "stock radiusd, rlm_sql -> PostgreSQL"),
            Config("stock_sql_acct", "acct", "stock_sql", "stock rlm_sql accounting -> radacct"),
            Config("python_floor", "auth", "stock_python",
                   "rlm_python3 that decides nothing (floor)"),
            Config("python_floor_acct", "acct", "stock_python",
                   "rlm_python3 accounting that decides nothing (floor)"),
            Config("wificore_warm", "auth", "wificore", "rlm_wificore, warm in process",
                   in_process=True),
            Config("wificore_acct", "acct", "wificore", "rlm_wificore accounting (spool + Redis)"),
            Config("wificore_redis", "auth", "wificore_nolocal",
                   "rlm_wificore, process cold, warm in Redis"),
            Config("wificore_cold", "auth", "wificore_nolocal",
                   "rlm_wificore, cold: one shard query each", before_each=cold, warm=False,
                   once_per_user=True),
        ]

    def run(self) -> dict[str, Any]:
        a = self.args
        started = dt.datetime.now(dt.UTC)
        self.setup()
        # noisy_neighbour (flood, then hung/slow/stopped) runs unless --no-noisy; --noisy: alone.
        noisy_on = a.noisy or not a.no_noisy
        neighbours: dict[str, Any] = {}
        mem: dict[str, Any] = {}
        local_cache: dict[str, Any] = {"skipped": "--noisy"}
        e2e: dict[str, Any] = {"skipped": "--noisy"}
        writer: dict[str, Any] = {"skipped": "--noisy"}
        if not a.noisy:
            mem = self.redis_memory()
            log(f"Redis: {mem['bytes_per_profile']:.0f} B per profile, "
                f"{mem['bytes_per_live_session']:.0f} B per live session")
            wanted = set(a.configs) if a.configs else None
            self.results = self.measure_all([c for c in self.configs()
                                             if wanted is None or c.name in wanted])
            self.stop_server()
        if noisy_on and a.flood_duration > 0:
            neighbours["flood"] = self.noisy_flood()
            self.stop_server()
        if not a.noisy:
            from benchmarks import cache_memory
            local_cache = cache_memory.measure(a.local_cache_profiles)
            log(f"in-process cache: {local_cache['bytes_per_profile']:.0f} B per profile")
            e2e = (self.end_to_end() if a.e2e_rate > 0 and not a.no_writer
                   else {"skipped": "--e2e-rate 0" if a.e2e_rate <= 0 else "--no-writer"})
            self.stop_server()
            writer = self.writer_bench() if not a.no_writer else {"skipped": "--no-writer"}
        noisy_run: dict[str, Any] = {"skipped": "--no-noisy"}
        if noisy_on:
            self.flush_redis()
            noisy_run = noisy.run(self, sys.modules[__name__])
            self.stop_server()
        neighbours.update(noisy_run.get("ratios", {}))
        by = {c["name"]: c for c in self.results}
        ratios = {}
        for num, den in (("wificore_warm", "stock_sql"), ("wificore_warm", "stock_files"),
                         ("wificore_redis", "stock_sql"), ("wificore_cold", "stock_sql"),
                         ("wificore_acct", "stock_sql_acct"),
                         ("wificore_warm", "python_floor"), ("wificore_acct", "python_floor_acct"),
                         ("python_floor", "stock_files")):
            if by.get(num, {}).get("rps") and by.get(den, {}).get("rps"):
                ratios[f"{num}/{den}"] = round(by[num]["rps"] / by[den]["rps"], 2)
        return {
            "machine": machine(),
            "date": started.isoformat(timespec="seconds"),
            "command": shlex.join([os.path.relpath(sys.executable, ROOT)
                                   if sys.executable.startswith(str(ROOT)) else sys.executable,
                                   os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
            "settings": {"repeat": a.repeat, "duration_s": a.duration, "window": a.window,
                         "senders": len(self.senders), "radiusd_procs": a.radiusd_procs,
                         "radiusd_threaded": a.radiusd_threaded,
                         "durable_shards": a.durable_shards,
                         "sender_sockets": a.sender_sockets, "poll_us": a.poll_us, "points": a.points,
                         "point_duration_s": a.point_duration, "acct_packets": a.acct_packets,
                         "auth_packets_per_sender": [len(s.auth_users) for s in self.senders]},
            "dataset": self.dataset,
            "configurations": self.results,
            "ratios": ratios,
            "redis_memory": mem,
            # {variant: {"answered_ratio", "p99_ratio"}}: tenant A's (hung, slow, stopped:
            # benchmarks/noisy.py) or the valid NAS's (flood: benchmarks/flood.py) figures
            # against their own baseline in this run; the raw figures under noisy_detail.
            "noisy_neighbour": neighbours,
            "noisy_detail": noisy_run,
            "local_cache": local_cache,
            "batch_writer": writer,
            "end_to_end": e2e,
            "warnings": self.warnings,
        }

    # ------------------------------------------------------- noisy neighbours
    def noisy_flood(self) -> dict[str, Any]:
        """noisy_neighbour["flood"] (benchmarks/flood.py): one valid NAS at a fixed rate, alone
        and beside junk from random unknown loopback addresses."""
        from benchmarks import flood

        a = self.args
        server = self.use_server("wificore")
        targets = self._auth_targets(False, server.auth_port)[:1]

        def valid(duration_s: float) -> dict[str, Any]:
            return blast(targets, rate=a.flood_rate, count=int(a.flood_rate * duration_s) + 1,
                         duration_s=duration_s, server_pids=_pids(server),
                         own_roots=self._own_roots(), sockets=a.sender_sockets)
        # Warm: every subscriber of the valid NAS once, so that both phases measure the
        # in-process tier, not the first cold lookups of a large dataset.
        w = blast(targets, window=64, duration_s=max(120.0, a.duration), poll_us=a.poll_us)
        log(f"flood: valid NAS warm-up {w['received']} answers, {w['reject']} rejects")
        result = flood.measure(valid, server.auth_port, junk_rate=a.flood_junk_rate,
                               duration_s=a.flood_duration)
        result["target_rate"] = a.flood_rate
        if result["junk_sent_per_s"] < a.flood_junk_rate / 2:
            # Without the junk the ratios compare two quiet runs: no flood was measured.
            self.warnings.append(f"flood: {result['junk_sent_per_s']} junk/s sent of "
                                 f"{a.flood_junk_rate:.0f}/s asked")
        log(f"flood: answered {result['answered_ratio']}, p99 x{result['p99_ratio']} of the "
            f"baseline, {result['junk_sent_per_s']} junk/s")
        return result

    def close(self) -> None:
        try:
            self.stop_server()
        finally:
            self.stack.stop_all()


def write_packets(args: argparse.Namespace) -> int:
    """Write the radclient-format packet files of the sender tenants, and a manifest."""
    shard_map = ShardMap.load(args.shard_map)
    spec = ds.Spec(tenants=args.tenants, nas_per_tenant=args.nas_per_tenant,
                   pppoe_per_tenant=args.pppoe_per_tenant,
                   hotspot_per_tenant=args.hotspot_per_tenant)
    out: Path = args.write_packets
    out.mkdir(parents=True, exist_ok=True)
    sessions = max(1, math.ceil(args.acct_packets / ACCT_PER_SESSION))
    manifest = []
    for t in ds.place_tenants(spec, shard_map)[:args.senders]:
        sender = make_sender(spec, t)
        auth, acct = out / f"auth-{t.tenant_id}.txt", out / f"acct-{t.tenant_id}.txt"
        auth.write_text(auth_text(sender))
        acct.write_text(acct_text(sender, sessions, epoch=1))
        manifest.append({"tenant_id": t.tenant_id, "nas_ip": t.bench_ip, "secret": t.bench_secret,
                         "auth_file": auth.name, "auth_packets": len(sender.auth_users),
                         "acct_file": acct.name, "acct_packets": ACCT_PER_SESSION * sessions})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest, indent=2))
    return 0


# ----------------------------------------------------------------------- cli
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="tiny data and counts, seconds in all: checks that everything still runs")
    g = p.add_argument_group("dataset (see benchmarks/dataset.py)")
    g.add_argument("--tenants", type=int, default=20)
    g.add_argument("--nas-per-tenant", type=int, default=1000)
    g.add_argument("--pppoe-per-tenant", type=int, default=1500)
    g.add_argument("--hotspot-per-tenant", type=int, default=1500)
    g.add_argument("--subscribers-per-tenant", type=int, help="shorthand: half PPPoE, half hotspot")
    g = p.add_argument_group("load")
    g.add_argument("--senders", type=int, default=8,
                   help="tenants sending at once, one radload each (default 8: enough source "
                        "addresses for the kernel to spread them over the radiusd processes)")
    g.add_argument("--sender-sockets", type=int,
                   help="UDP sockets (source ports) per sender (default: radload's own choice, "
                        "enough for the Ids in flight); more measured slower here")
    g.add_argument("--radiusd-procs", type=int, default=len(os.sched_getaffinity(0)),
                   help="rlm_wificore radiusd processes sharing the ports, as bin/stack runs "
                        "them (default: one per core)")
    g.add_argument("--durable-shards", action="store_true",
                   help="run the PostgreSQL shards with fsync, synchronous_commit and "
                        "full_page_writes on, as a deployment would (default: off, as the tests)")
    g.add_argument("--radiusd-threaded", action="store_true",
                   help="run the rlm_wificore radiusd processes with their thread pool "
                        "(default: -t, one event loop each, as bin/stack runs them)")
    g.add_argument("--window", type=int, default=256,
                   help="closed loop: requests in flight over all senders (default 256)")
    g.add_argument("--poll-us", type=int, default=POLL_US,
                   help="each sender collects responses every US microseconds rather than "
                        "waking for each one, and in open loop sends every US microseconds "
                        f"(default {POLL_US}; 0 = wake for each response, send every 200 µs; "
                        f"the end-to-end run keeps {E2E_POLL_US}; see benchmarks/README.md)")
    g.add_argument("--duration", type=float, default=15.0, help="seconds per closed-loop run")
    g.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median counts")
    g.add_argument("--points", default="0.25,0.5,0.75,0.9",
                   help="open-loop rates as fractions of the closed-loop maximum ('' = none)")
    g.add_argument("--point-duration", type=float, default=5.0, help="seconds per open-loop run")
    g.add_argument("--point-repeat", type=int, help="runs per open-loop point (default --repeat)")
    g.add_argument("--acct-packets", type=int,
                   help="accounting packets per sender and closed-loop run (default: 10,000/s x "
                        "duration over all senders; a faster server ends the run early)")
    g.add_argument("--configs", help="only these configurations, comma-separated")
    g = p.add_argument_group("other measurements")
    g.add_argument("--memory-samples", type=int, default=20000,
                   help="profiles and sessions written for the Redis memory figures")
    g.add_argument("--no-writer", action="store_true", help="skip batch_writer ingestion")
    g.add_argument("--flood-rate", type=float, default=2000.0,
                   help="noisy_neighbour flood: the valid NAS's logins per second")
    g.add_argument("--flood-junk-rate", type=float, default=20_000.0,
                   help="noisy_neighbour flood: junk Access-Requests per second")
    g.add_argument("--flood-duration", type=float, default=10.0,
                   help="noisy_neighbour flood: seconds per run (0: skip)")
    g.add_argument("--local-cache-profiles", type=int, default=200_000,
                   help="profiles built to measure local_cache.bytes_per_profile")
    g.add_argument("--writer-args", default="--writers 2",
                   help="arguments for writer_bench.py (default --writers 2: one writer process per "
                        "shard, as a two-shard deployment runs them)")
    g.add_argument("--writer-timeout", type=float, default=600.0)
    g.add_argument("--e2e-rate", type=float, default=10_000.0,
                   help="accounting requests/s for the NAS-to-row measurement (0 = skip)")
    g.add_argument("--e2e-writers", type=int, default=2,
                   help="batch_writer processes during the end-to-end run (default 2: one per shard)")
    g.add_argument("--e2e-duration", type=float, default=20.0,
                   help="seconds of that load")
    g = p.add_argument_group("noisy_neighbour (benchmarks/noisy.py)")
    g.add_argument("--noisy", action="store_true",
                   help="run only the noisy_neighbour scenario, flood included (it is part of the "
                        "full run too)")
    g.add_argument("--no-noisy", action="store_true",
                   help="skip the noisy_neighbour scenario, flood included")
    g.add_argument("--noisy-duration", type=float, default=10.0, help="seconds per phase")
    g.add_argument("--noisy-rounds", type=int, default=3,
                   help="rounds of baseline + variants; each ratio is the median over them")
    g.add_argument("--noisy-rate-a", type=float, default=2000.0,
                   help="tenant A's warm logins per second")
    g.add_argument("--noisy-rate-b", type=float, default=100.0,
                   help="tenant B's cold logins per second (its shard is the sick one)")
    g = p.add_argument_group("packet files only (for a load test elsewhere; see README.md)")
    g.add_argument("--write-packets", type=Path, metavar="DIR",
                   help="write the sender tenants' packet files and manifest.json into DIR, "
                        "start nothing")
    g.add_argument("--shard-map", type=Path, default=RADDB / "mods-config" / "wificore" / "shards.toml",
                   help="--write-packets: the shard map the dataset was loaded with")
    p.add_argument("--out", type=Path, default=report.RESULTS, help="folder for latest.{json,md,png}")
    p.add_argument("--state", type=Path, help="state folder (default: a temporary one, removed)")
    p.add_argument("--keep-state", action="store_true", help="keep the state folder (logs, data)")
    args = p.parse_args(argv)
    if args.smoke:
        args.tenants, args.nas_per_tenant = 2, 3
        args.pppoe_per_tenant = args.hotspot_per_tenant = 30
        args.subscribers_per_tenant = None
        args.senders, args.window, args.duration, args.repeat = 1, 16, 1.0, 1
        args.points, args.point_duration = "0.5", 1.0
        args.acct_packets = args.acct_packets or 300
        args.memory_samples = 200
        args.writer_args = f"{args.writer_args} --smoke"
        args.writer_timeout = min(args.writer_timeout, 120.0)
        args.e2e_rate, args.e2e_duration = 200.0, 2.0
        args.noisy_duration, args.noisy_rate_a, args.noisy_rate_b = 1.0, 200.0, 10.0
        args.noisy_rounds = 1
        args.flood_rate, args.flood_junk_rate, args.flood_duration = 100.0, 1000.0, 2.0
        args.local_cache_profiles = 2000
    if args.subscribers_per_tenant is not None:
        args.pppoe_per_tenant = args.subscribers_per_tenant // 2
        args.hotspot_per_tenant = args.subscribers_per_tenant - args.pppoe_per_tenant
    args.points = [float(x) for x in args.points.split(",") if x.strip()]
    args.point_repeat = args.point_repeat or args.repeat
    args.acct_packets = args.acct_packets or math.ceil(10_000 * args.duration / args.senders)
    args.configs = [c.strip() for c in args.configs.split(",")] if args.configs else None
    for name in ("senders", "window", "repeat", "memory_samples", "radiusd_procs", "e2e_writers",
                 "noisy_rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: must be at least 1")
    if not 0 <= args.poll_us <= 100_000:
        p.error("--poll-us: must be 0..100000")
    if args.sender_sockets is not None and args.sender_sockets < 1:
        p.error("--sender-sockets: must be at least 1")
    if args.duration <= 0 or args.point_duration <= 0:
        p.error("--duration and --point-duration: must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.write_packets:
        return write_packets(args)

    def stop(signum: int, _frame: Any) -> None:
        # Unwind through the finally blocks: every server started is stopped by PID.
        raise SystemExit(128 + signum)
    # SIGINT too: a background job of a non-interactive shell starts with it ignored.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    state = args.state or Path(tempfile.mkdtemp(prefix="wificore-bench-", dir="/tmp"))
    bench = Bench(args, state)
    try:
        results = bench.run()
    finally:
        bench.close()
        if not args.state and not args.keep_state:
            shutil.rmtree(state, ignore_errors=True)
    paths = report.write(results, args.out)
    print(report.markdown(results, plot_name=None))
    log("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
