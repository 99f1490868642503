"""The RADIUS tier (stack/cluster.py, docs/cluster.md): warm PAP throughput through the
FreeRADIUS balancer with 1, 2 and 3 RADIUS hosts (network namespaces, one radiusd
each), the balancer's own CPU per request, and the gap when a host is killed.

    .venv/bin/python benchmarks/cluster.py [--duration 5] [--users 3000] [--out benchmarks/results]

Root (ip netns). Every host, the balancer, Redis, the shards and the load generator
share this machine's cores (two here): the total is bounded by them, whatever the
number of hosts; the host count shows what the balancer's hop costs and whether the
tier spreads the load, not a scale-out. Writes ``cluster`` into
``<out>/latest.json`` (other keys untouched; ``cluster.failover_s.redis_master`` is
kept as it is, measured elsewhere):

    {"rps_by_hosts": {"1": .., "2": .., "3": ..}, "balancer_cpu_us_per_request": ..,
     "failover_s": {"host": ..}, ...details}
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.loadgen import run as loadgen  # noqa: E402
from benchmarks.procstat import cpu_s  # noqa: E402
from stack import cluster as tier  # noqa: E402
from stack.local import Ports  # noqa: E402
from tests import rawradius as raw  # noqa: E402

TENANTS = ((21, "127.0.43.1", "bench-tier-a"), (621, "127.0.43.2", "bench-tier-b"))
PASSWORD = "bench-pw-1"
#: A bound on the packets of a measured run per sender (the duration ends it first).
MAX_PACKETS_PER_S = 50_000


class Load(threading.Thread):
    """PAP logins at ``rate`` per second for ``duration_s``, round-robin over ``users``,
    from the NAS's address ``tenant[1]`` (secret ``tenant[2]``) to ``target``, never
    retransmitted; ``results`` = sorted (sent at, user, answered within ANSWER_S)."""

    ANSWER_S = 1.0
    SOCKETS = 16  # x 256 identifiers: no identifier reused within ~25 s at 150/s

    def __init__(self, target: tuple[str, int], tenant: tuple, users: list[str], *, rate: float,
                 duration_s: float, password: str) -> None:
        super().__init__(daemon=True)
        self.target, self.tenant, self.users = target, tenant, users
        self.rate, self.duration_s, self.password = rate, duration_s, password
        self.results: list[tuple[float, str, bool]] = []

    def run(self) -> None:
        socks = []
        for _ in range(self.SOCKETS):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((self.tenant[1], 0))
            s.setblocking(False)
            socks.append(s)
        sent: dict[tuple[int, int], tuple[float, str]] = {}
        done: set[tuple[int, int]] = set()
        secret = self.tenant[2].encode()
        start = time.monotonic()
        total = int(self.rate * self.duration_s)
        k = 0
        try:
            while True:
                now = time.monotonic()
                due = min(total, int((now - start) * self.rate) + 1)
                while k < due:
                    si, ident = k % self.SOCKETS, (k // self.SOCKETS) % 256
                    user = self.users[k % len(self.users)]
                    pkt = raw.encode(raw.ACCESS_REQUEST, ident, secret,
                                     [(raw.USER_NAME, user.encode()),
                                      (raw.USER_PASSWORD, self.password.encode())],
                                     message_authenticator=True)
                    socks[si].sendto(pkt, self.target)
                    sent[(si, ident)] = (time.monotonic(), user)
                    done.discard((si, ident))
                    k += 1
                if k >= total and now > start + self.duration_s + self.ANSWER_S:
                    break
                ready, _, _ = select.select(socks, [], [], 0.002)
                for s in ready:
                    si = socks.index(s)
                    while True:
                        try:
                            data = s.recv(4096)
                        except BlockingIOError:
                            break
                        key = (si, data[1])
                        if key in sent and key not in done:
                            done.add(key)
                            t0, user = sent[key]
                            self.results.append((t0, user, time.monotonic() - t0 <= self.ANSWER_S))
                for key, (t0, user) in list(sent.items()):
                    if key not in done and now - t0 > self.ANSWER_S:
                        self.results.append((t0, user, False))
                        done.add(key)
        finally:
            for s in socks:
                s.close()
        self.results.sort()


def failover_gap(results: list[tuple[float, str, bool]], theirs: set[str], t_kill: float) -> float:
    """Seconds from the kill to the last unanswered request of the dead host's users."""
    return max((t - t_kill for t, u, ok in results if u in theirs and t >= t_kill and not ok),
               default=0.0)


def seed(users: int):
    def go(st) -> None:
        for tenant, ip, secret in TENANTS:
            st.admin("tenant", "add", "--id", str(tenant), "--name", f"bench tier {tenant}")
            # radload signs no Access-Request (benchmarks/README.md).
            st.admin("nas", "add", "--tenant", str(tenant), "--name", f"nas-{tenant}", "--ip", ip,
                     "--secret", secret, "--vendor", "mikrotik", "--require-message-authenticator", "no")
            st.admin("plan", "add", "--tenant", str(tenant), "--name", "p")
            st.admin("subscriber", "import", "--tenant", str(tenant), "-",
                     input="username,password,plan\n"
                     + "".join(f"u{tenant}-{i},{PASSWORD},p\n" for i in range(users)))
    return go


def packets(folder: Path, users: int) -> list[tuple[Path, str, str]]:
    """One RLD1 file of PAP requests per tenant: (file, secret, source)."""
    out = []
    for tenant, ip, secret in TENANTS:
        txt = folder / f"auth-{tenant}.txt"
        txt.write_text("\n".join(f'User-Name = "u{tenant}-{i}"\nUser-Password = "{PASSWORD}"\n'
                                 f"NAS-IP-Address = {ip}\nNAS-Port = {i}\n" for i in range(users)))
        rld = folder / f"auth-{tenant}.rld"
        loadgen.prepare_packets(txt, rld, secret)
        out.append((rld, secret, ip))
    return out


def blast(c: tier.Cluster, files, *, duration_s: float, window: int) -> dict[str, Any]:
    """Closed loop from both NAS at once; rps and the balancer's CPU per answered request."""
    import concurrent.futures
    target = f"127.0.0.1:{c.stack.ports.auth}"
    pid = c.balancer.pid
    assert pid is not None
    cpu0, t0 = cpu_s(pid), time.monotonic()

    def one(f):
        rld, secret, ip = f
        # The file over and over until the duration ends (each run bounded by both).
        return loadgen.run_radload(rld, target, secret, source=ip, window=window // len(files),
                                   count=int(MAX_PACKETS_PER_S * duration_s), duration=duration_s,
                                   timeout=2.0, poll_us=500, tick_us=500)
    with concurrent.futures.ThreadPoolExecutor(len(files)) as pool:
        parts = list(pool.map(one, files))
    wall, cpu1 = time.monotonic() - t0, cpu_s(pid)
    received = sum(p.get("received", 0) for p in parts)
    return {"rps": round(sum(p.get("rps", 0.0) for p in parts), 1), "received": received,
            "accept": sum(p.get("accept", 0) for p in parts),
            "lost": sum(p.get("lost", 0) for p in parts), "wall_s": round(wall, 2),
            "p99_ms": max((p.get("p99_ms") or 0) for p in parts),
            "balancer_cpu_us_per_request": round(1e6 * (cpu1 - cpu0) / received, 1) if received else None}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    why = tier.netns_available()
    if why:
        raise SystemExit(f"benchmarks/cluster.py: {why}")
    state = Path(tempfile.mkdtemp(prefix="wificore-bench-tier-", dir="/tmp"))
    c = tier.Cluster(state, Ports.free(), hosts=3, fast=True)
    out: dict[str, Any] = {}
    try:
        c.up(after_data=seed(args.users), writer=False)
        files = packets(state, args.users)
        by_hosts: dict[str, Any] = {}
        for n in (1, 2, 3):
            c.restart_balancer(c.hosts[:n])
            # Warm-up: every subscriber once (the balancer learns the NAS, the hosts cache
            # the profiles), then the measured run.
            for rld, secret, ip in files:
                loadgen.run_radload(rld, f"127.0.0.1:{c.stack.ports.auth}", secret, source=ip,
                                    window=32, count=args.users, duration=30, timeout=2.0)
            by_hosts[str(n)] = blast(c, files, duration_s=args.duration, window=args.window)
            print(f"{n} host(s): {by_hosts[str(n)]}", file=sys.stderr)
        out["rps_by_hosts"] = {k: v["rps"] for k, v in by_hosts.items()}
        out["balancer_cpu_us_per_request"] = by_hosts["3"]["balancer_cpu_us_per_request"]
        out["runs"] = by_hosts
        out["failover"] = failover(c, args)
        out["failover_s"] = {"host": out["failover"]["gap_s"]}
    finally:
        c.down()
    out["settings"] = {"users_per_tenant": args.users, "duration_s": args.duration, "window": args.window,
                       "radiusd_per_host": 1, "cores": len(os.sched_getaffinity(0)),
                       "response_window_s": tier.RESPONSE_WINDOW_S, "detection_s": tier.DETECTION_S}
    return out


def failover(c: tier.Cluster, args: argparse.Namespace) -> dict[str, Any]:
    """A login load at --failover-rate over 60 subscribers of one tenant; host 2 is
    SIGKILLed after 2 s: the gap until its subscribers are answered by the others."""
    tenant = TENANTS[0]
    users = [f"u{tenant[0]}-{i}" for i in range(60)]
    load = Load(("127.0.0.1", c.stack.ports.auth), tenant, users, rate=args.failover_rate,
                duration_s=tier.DETECTION_S + 5.5, password=PASSWORD)
    victim = c.hosts[1]
    # Which users the victim serves: those unanswered right after the kill.
    load.start()
    time.sleep(2.0)
    t_kill = time.monotonic()
    victim.kill()
    load.join()
    theirs = {u for t, u, ok in load.results if t_kill + 0.2 <= t <= t_kill + 0.8 and not ok}
    gap = failover_gap(load.results, theirs, t_kill)
    others = [ok for t, u, ok in load.results if u not in theirs]
    return {"gap_s": round(gap, 2), "victim_users": len(theirs), "rate": args.failover_rate,
            "others_answered": round(sum(others) / max(1, len(others)), 4)}


def write(out_dir: Path, result: dict[str, Any]) -> None:
    """``cluster`` in latest.json; every other key, and cluster.failover_s.redis_master, kept."""
    path = out_dir / "latest.json"
    doc = json.loads(path.read_text()) if path.exists() else {}
    old = doc.get("cluster") or {}
    failover_s = dict(old.get("failover_s") or {})
    failover_s.update(result["failover_s"])
    doc["cluster"] = {**old, **result, "failover_s": failover_s,
                      "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measured run")
    p.add_argument("--users", type=int, default=3000, help="subscribers per tenant (two tenants)")
    p.add_argument("--window", type=int, default=128, help="requests in flight, in total")
    p.add_argument("--failover-rate", type=float, default=300.0, help="logins/s during the kill")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results",
                   help="folder of latest.json (- = print only)")
    args = p.parse_args(argv)
    result = measure(args)
    print(json.dumps(result, indent=2))
    if str(args.out) != "-":
        write(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
