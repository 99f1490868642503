"""python -m stack {up,down,status}: the local stack (see README.md)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from .local import Ports, Stack
from .servers import ROOT, StackError, shared_home_of

STATE = ROOT / ".state"
#: The ports `up` used, for the commands after it; removed by `down`.
PORTS_FILE = STATE / "ports.json"

DEMO = {
    "tenant": "1", "nas_ip": "127.0.0.1", "secret": "testing123",
    "user": "demo", "password": "demo-password",
}


def seed(stack: Stack) -> None:
    d = DEMO
    stack.admin("tenant", "add", "--id", d["tenant"], "--name", "Demo ISP")
    stack.admin("nas", "add", "--tenant", d["tenant"], "--name", "demo-nas", "--ip", d["nas_ip"],
                "--secret", d["secret"], "--vendor", "mikrotik", "--replace",
                # Debian 12's radtest (3.2.1) signs no Access-Request (README.md, BlastRADIUS).
                "--require-message-authenticator", "no")
    plan = ("--tenant", d["tenant"], "--name", "home-20m", "--rate-up-kbps", "5000",
            "--rate-down-kbps", "20000", "--simultaneous-use", "2", "--interim-interval-s", "300")
    if stack.admin("plan", "add", *plan, check=False).returncode:  # there from the last start
        stack.admin("plan", "set", *plan)
    if stack.admin("subscriber", "show", "--tenant", d["tenant"], d["user"], check=False).returncode:
        stack.admin("subscriber", "add", "--tenant", d["tenant"], "--username", d["user"],
                    "--password", d["password"], "--plan", "home-20m")


def procs() -> int:
    """radiusd processes: WIFICORE_RADIUSD_PROCS, else one per core (one Python call at a
    time per process; see docs/decisions.md)."""
    raw = os.environ.get("WIFICORE_RADIUSD_PROCS", "")
    if raw:
        if not raw.isdigit() or not 1 <= int(raw) <= 64:
            raise SystemExit(f"WIFICORE_RADIUSD_PROCS={raw!r}: a number from 1 to 64")
        return int(raw)
    return len(os.sched_getaffinity(0))


def procs_on_disk() -> int:
    """How many radiusd processes the last `up` started: process i > 0 has .state/radiusd-<i>/."""
    return 1 + sum(1 for p in STATE.glob("radiusd-*") if p.is_dir())


def shards() -> int:
    """Shards of `up`: WIFICORE_SHARDS, else 4 (the running stack's own count otherwise)."""
    raw = os.environ.get("WIFICORE_SHARDS", "")
    if raw:
        if not raw.isdigit() or not 1 <= int(raw) <= 16:
            raise SystemExit(f"WIFICORE_SHARDS={raw!r}: a number from 1 to 16")
        return int(raw)
    return 4


def shards_on_disk() -> int:
    """How many shards the last `up` started (its ports file), else the shards whose data
    is in the state folder (a stack from before `down`: its tenants' ranges depend on
    the count), else shards()."""
    try:
        return 2 + len(json.loads(PORTS_FILE.read_text()).get("more_shards", []))
    except (FileNotFoundError, ValueError):
        pass
    if not os.environ.get("WIFICORE_SHARDS"):
        for home in (STATE, shared_home_of(STATE)):
            found = [p for p in home.glob("shard*/PG_VERSION") if p.parent.name[5:].isdigit()]
            if found:
                return len(found)
    return shards()


def ports() -> Ports:
    """The ports of the running stack (.state/ports.json), else the fixed ones, or with
    WIFICORE_STACK_PORTS=free, free ports chosen now (e.g. beside another stack)."""
    with_free = os.environ.get("WIFICORE_STACK_PORTS", "")
    if with_free not in ("", "fixed", "free"):
        raise SystemExit(f"WIFICORE_STACK_PORTS={with_free!r}: fixed (the default) or free")
    try:
        return Ports(**json.loads(PORTS_FILE.read_text()))
    except FileNotFoundError:
        return Ports.free(shards()) if with_free == "free" else Ports()


def cluster_asked() -> bool:
    """WIFICORE_REDIS_CLUSTER=1: a Redis Cluster of 3 masters and 3 replicas (stack/rcluster.py)
    instead of the single Redis."""
    raw = os.environ.get("WIFICORE_REDIS_CLUSTER", "")
    if raw not in ("", "0", "1"):
        raise SystemExit(f"WIFICORE_REDIS_CLUSTER={raw!r}: 1 (a cluster) or 0")
    return raw == "1"


def make_stack() -> Stack:
    chosen = ports()
    if cluster_asked():
        chosen = chosen.with_cluster(fixed=os.environ.get("WIFICORE_STACK_PORTS", "") != "free")
    stack = Stack(STATE, chosen, procs=procs(), shards=shards_on_disk())
    PORTS_FILE.write_text(json.dumps(dataclasses.asdict(stack.ports)) + "\n")
    return stack


def up() -> int:
    stack = make_stack()
    stack.start_data()
    seed(stack)
    check = stack.radiusd.check_config()
    if check.returncode != 0:
        print(check.stdout[-3000:], check.stderr[-2000:], sep="\n")
        return 1
    for r in stack.radiusds:
        if not r.running():
            r.start()
    if not stack.writer.running():
        stack.writer.start()
    if not stack.coa.running():
        stack.coa.start()
    d = DEMO
    server = "127.0.0.1" if stack.ports.auth == 1812 else f"127.0.0.1:{stack.ports.auth}"
    redis_line = (f"redis      cluster {stack.redis.url}" if stack.ports.redis_cluster
                  else f"redis      127.0.0.1:{stack.ports.redis}   pid {stack.redis.pid}")
    print(f"""
rlm_wificore is running (state in {STATE}):
  {redis_line}
{shard_lines(stack)}
{radiusd_lines(stack)}
  writer     pid {stack.writer.pid}  (metrics :{stack.ports.writer_metrics})
  coa        pid {stack.coa.pid}  (metrics :{stack.ports.coa_metrics}; Disconnect / CoA to each NAS's CoA port)
  logs       {STATE}/log/{postgres_line(stack)}

Try it:
  radtest {d['user']} {d['password']} {server} 0 {d['secret']}
  radtest -t mschap {d['user']} {d['password']} {server} 0 {d['secret']}

Admin:
  WIFICORE_SHARD_MAP={stack.shard_map} WIFICORE_REDIS_URL={stack.redis.url} \\
    .venv/bin/wificore-admin subscriber show --tenant 1 {d['user']}
  WIFICORE_REDIS_URL={stack.redis.url} .venv/bin/wificore-batch-writer --check --consumer writer-1

Stop everything:
  bin/stack down
""")
    return 0


def shard_lines(stack: Stack) -> str:
    return "\n".join(
        f"  {pg.name:10} 127.0.0.1:{pg.port}   pid {pg.pid}  tenants {first}-{last}, "
        f"pgbouncer :{b.port}" for pg, b, (first, last) in zip(stack.pg, stack.bouncers, stack.ranges(),
                                                              strict=True))


def radiusd_lines(stack: Stack) -> str:
    return "\n".join(
        f"  {r.name:10} 127.0.0.1:{stack.ports.auth}/{stack.ports.acct} pid {r.pid}  "
        f"(metrics :{r.env['WIFICORE_METRICS_PORT']})" for r in stack.radiusds)


def postgres_line(stack: Stack) -> str:
    if stack.postgres_home == stack.state:
        return ""
    return (f"\n  postgres   {stack.postgres_home}/  (the shards, their logs and PgBouncer's files:"
            f" the postgres user cannot reach {STATE})")


def down() -> int:
    stack = Stack(STATE, ports(), procs=procs_on_disk(), shards=shards_on_disk())
    stack.stop_all()
    PORTS_FILE.unlink(missing_ok=True)
    print("stopped")
    return 0


def status() -> int:
    stack = Stack(STATE, ports(), procs=procs_on_disk(), shards=shards_on_disk())
    radiusds = [r for r in stack.radiusds if r is stack.radiusd or r.running()]
    for name, proc in (("redis", stack.redis), *((pg.name, pg) for pg in stack.pg),
                       *((b.name, b) for b in stack.bouncers),
                       *((r.name, r) for r in radiusds), ("batch_writer", stack.writer),
                       ("coa_sender", stack.coa)):
        print(f"{name:13} {'running, pid ' + str(proc.pid) if proc.running() else 'stopped'}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(prog="bin/stack")
    p.add_argument("command", choices=("up", "down", "status"))
    command = {"up": up, "down": down, "status": status}[p.parse_args().command]
    try:
        return command()
    except StackError as e:
        print(f"bin/stack: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
