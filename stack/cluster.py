"""The RADIUS tier on one machine: N RADIUS hosts behind a FreeRADIUS load balancer.

Each RADIUS host is a network namespace (``ip netns``) with its own address, its own
radiusd process(es) with the module and its own state folder (spool, logs); the
balancer (``radiusd -n balancer``, raddb/balancer.conf) runs in the root namespace on
127.0.0.1, where the NAS devices talk to it. All hosts share one Redis and the shards
(through their PgBouncers), as RADIUS hosts of one deployment do. docs/cluster.md.

The link: a bridge in the root namespace with two addresses, ``<net>.1`` (the
balancer's source address towards the hosts) and ``<net>.2`` (Redis, PostgreSQL and
PgBouncer listen there besides 127.0.0.1; nothing listens on a public interface), and
one veth pair per host (``<net>.1<i>`` inside the host's namespace). Separate addresses
for RADIUS and data let a test cut one host off the data servers (a ``prohibit``
route to ``<net>.2`` in its namespace) while the balancer still reaches it.

``python -m stack.cluster up|down|status`` (bin/cluster) runs it with state in
``.cluster/``; the test suite and benchmarks/cluster.py use :class:`Cluster` directly.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from .local import Ports, Stack
from .servers import ROOT, Radiusd, StackError, pid_alive

#: The balancer's pools (``_auth``, ``_acct``): keyed-balance, so that a subscriber's
#: requests stay on one host.
POOL = "wificore_hosts"
#: The hosts' client for the balancer (raddb/policy.d/wificore, wificore_client).
BALANCER_SHORTNAME = "wificore-balancer"
#: Health checks (the balancer's home_server sections; docs/cluster.md "Detection"). A
#: host that leaves a proxied request unanswered for RESPONSE_WINDOW_S (its last answer
#: as old) is a zombie: the keyed-balance pool passes it over from then on, its
#: subscribers go to the next host of the pool, and the balancer sends it Status-Server
#: every CHECK_INTERVAL_S (radiusd's least: it forces a smaller one up to 6), each given
#: CHECK_TIMEOUT_S; a zombie that answers none for ZOMBIE_PERIOD_S is marked dead; it is
#: back in the pool after NUM_ANSWERS_TO_ALIVE answered checks in a row (12-18 s).
RESPONSE_WINDOW_S = 1
ZOMBIE_PERIOD_S = 2
CHECK_INTERVAL_S = 6
CHECK_TIMEOUT_S = 1
NUM_ANSWERS_TO_ALIVE = 3
#: The detection time: from a host's death to its subscribers' requests going to another
#: host under load: the response window and up to 1.5 s for the balancer's timers
#: (measured: 1.2-1.7 s in all; tests/test_cluster.py holds it to this bound).
DETECTION_S = RESPONSE_WINDOW_S + 1.5

STATE = ROOT / ".cluster"
CONFIG_FILE = STATE / "cluster.json"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise StackError(f"ip {' '.join(args)} failed: {done.stderr.strip() or done.returncode}")
    return done


def netns_available() -> str | None:
    """None when this process can make network namespaces and veth pairs, else why not."""
    if os.geteuid() != 0:
        return "the RADIUS tier needs root (ip netns, veth pairs)"
    if shutil.which("ip") is None:
        return "no ip command (iproute2)"
    probe = f"wcprobe{os.getpid() % 100000}"
    done = ip("netns", "add", probe, check=False)
    if done.returncode != 0:
        return f"ip netns add failed: {done.stderr.strip()}"
    try:
        veth = ip("-n", probe, "link", "add", "a0", "type", "veth", "peer", "name", "b0", check=False)
        if veth.returncode != 0:
            return f"no veth pairs: {veth.stderr.strip()}"
    finally:
        ip("netns", "del", probe, check=False)
    return None


@dataclasses.dataclass
class Network:
    """The bridge and the hosts' namespaces; names carry ``tag`` so that two tiers (a
    test and bin/cluster) never share one. ``prefix`` is the /24's first three octets."""

    tag: str
    prefix: str
    hosts: int

    @property
    def bridge(self) -> str:
        return f"wcbr{self.tag}"

    def netns(self, i: int) -> str:
        return f"wc{self.tag}h{i}"

    def veth(self, i: int) -> str:
        return f"wc{self.tag}v{i}"

    @property
    def cidr(self) -> str:
        return f"{self.prefix}.0/24"

    @property
    def balancer_addr(self) -> str:
        return f"{self.prefix}.1"

    @property
    def data_addr(self) -> str:
        return f"{self.prefix}.2"

    def host_addr(self, i: int) -> str:
        return f"{self.prefix}.{10 + i}"

    def up(self) -> None:
        try:
            ip("link", "add", self.bridge, "type", "bridge")
            ip("addr", "add", f"{self.balancer_addr}/24", "dev", self.bridge)
            ip("addr", "add", f"{self.data_addr}/24", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
            for i in range(1, self.hosts + 1):
                ns = self.netns(i)
                ip("netns", "add", ns)
                ip("link", "add", self.veth(i), "type", "veth", "peer", "name", "eth0", "netns", ns)
                ip("link", "set", self.veth(i), "master", self.bridge, "up")
                ip("-n", ns, "addr", "add", f"{self.host_addr(i)}/24", "dev", "eth0")
                ip("-n", ns, "link", "set", "eth0", "up")
                ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Remove the namespaces (their veth pairs go with them) and the bridge."""
        for i in range(1, self.hosts + 1):
            ip("netns", "del", self.netns(i), check=False)
            ip("link", "del", self.veth(i), check=False)
        ip("link", "del", self.bridge, check=False)

    def exists(self) -> bool:
        return ip("link", "show", self.bridge, check=False).returncode == 0

    def set_link(self, i: int, up: bool) -> None:
        """Host i's cable plugged in or pulled (its veth end on the bridge)."""
        ip("link", "set", self.veth(i), "up" if up else "down")

    def cut_data(self, i: int, cut: bool) -> None:
        """Host i cut off Redis and the shards (a ``prohibit`` route to the data address
        in its namespace: every packet there fails at once), or connected again."""
        ip("-n", self.netns(i), "route", "add" if cut else "del", "prohibit", f"{self.data_addr}/32")


class Host:
    """One RADIUS host: radiusd in its namespace, state in ``state``, listening on its own
    address (auth 1812, acct 1813); the balancer is its only trusted proxy."""

    def __init__(self, cluster: Cluster, i: int) -> None:
        self.i = i
        self.cluster = cluster
        net = cluster.net
        self.name = f"host{i}"
        self.addr = net.host_addr(i)
        self.state = cluster.state / self.name
        self.shard_map = self.state / "shards.toml"
        st = cluster.stack
        self.metrics_port = st.ports.metrics
        self.radiusd = Radiusd(
            self.state, auth_port=1812, acct_port=1813, shard_map=self.shard_map,
            redis_url=f"redis://{net.data_addr}:{st.ports.redis}/0", metrics_port=self.metrics_port,
            name="radiusd", netns=net.netns(i),
            extra_env={"WIFICORE_LISTEN_ADDR": self.addr, "WIFICORE_METRICS_ADDR": self.addr,
                       **cluster.extra_env})

    @property
    def pid(self) -> int | None:
        return self.radiusd.pid

    def write_files(self) -> None:
        """Its shard map (the data address instead of loopback) and the balancer's client."""
        self.state.mkdir(parents=True, exist_ok=True)
        text = self.cluster.stack.shard_map.read_text()
        self.shard_map.write_text(text.replace("@127.0.0.1:", f"@{self.cluster.net.data_addr}:"))
        (self.state / "balancer-client.conf").write_text(
            "# Written by stack/cluster.py: the RADIUS tier's balancer, this host's only proxy.\n"
            "client wificore_balancer {\n"
            f"\tipaddr = {self.cluster.net.balancer_addr}\n"
            f"\tsecret = {self.cluster.secret}\n"
            f"\tshortname = {BALANCER_SHORTNAME}\n"
            "\trequire_message_authenticator = yes\n"
            "}\n")

    def start(self, timeout_s: float = 60) -> None:
        self.radiusd.start(timeout_s)

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        return self.radiusd.stop(sig)

    def kill(self) -> None:
        """SIGKILL its radiusd (a host crash); its spool stays in its state folder."""
        pid = self.radiusd.pid
        if pid is not None and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        self.radiusd.stop(timeout_s=5)  # reaps it

    def running(self) -> bool:
        return self.radiusd.running()

    def scrape(self, timeout_s: float = 2.0) -> str:
        """Its metrics (the module's exporter on its address)."""
        import urllib.request
        with urllib.request.urlopen(f"http://{self.addr}:{self.metrics_port}/metrics",
                                    timeout=timeout_s) as resp:
            return resp.read().decode()


class Cluster:
    """Redis, the shards, PgBouncer and batch_writer (one :class:`Stack`), N hosts and
    the balancer. ``up`` starts everything, ``down`` stops every process by PID and
    removes the namespaces and the bridge, also after a failed ``up``."""

    def __init__(self, state: Path, ports: Ports, *, hosts: int = 3, tag: str | None = None,
                 prefix: str | None = None, fast: bool = False, secret: str | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        if hosts < 1:
            raise StackError("a RADIUS tier needs at least one host")
        tag = tag or f"{os.getpid() % 10000:04d}"
        prefix = prefix or f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}"
        self.state = state
        self.net = Network(tag, prefix, hosts)
        self.secret = secret or secrets.token_hex(16)
        self.extra_env = dict(extra_env or {})
        self.stack = Stack(state, ports, fast=fast, also_on=(self.net.data_addr,),
                           networks=(self.net.cidr,))
        self.hosts = [Host(self, i) for i in range(1, hosts + 1)]
        self.balancer = Radiusd(
            state / "balancer", auth_port=ports.auth, acct_port=ports.acct,
            shard_map=self.stack.shard_map, redis_url=self.stack.redis.url,
            metrics_port=ports.metrics, name="balancer", args=("-n", "balancer"),
            extra_env=self.extra_env)

    # ------------------------------------------------------------------ files
    def home_servers_conf(self, hosts: list[Host] | None = None) -> str:
        """Two home servers per host (auth on 1812, acct on 1813; each checked with
        Status-Server on its own port) and two keyed-balance pools with the hosts in the
        same order: a subscriber's logins and accounting go to the same host."""
        lines = ["# Written by stack/cluster.py: the RADIUS hosts and their pools (docs/cluster.md)."]
        members = hosts if hosts is not None else self.hosts
        for h in members:
            for kind, port in (("auth", 1812), ("acct", 1813)):
                lines += [
                    f"home_server {h.name}-{kind} {{",
                    f"\ttype = {kind}",
                    f"\tipaddr = {h.addr}",
                    f"\tport = {port}",
                    f"\tsrc_ipaddr = {self.net.balancer_addr}",
                    "\tproto = udp",
                    f"\tsecret = {self.secret}",
                    *(["\trequire_message_authenticator = yes"] if kind == "auth" else []),
                    f"\tresponse_window = {RESPONSE_WINDOW_S}",
                    f"\tzombie_period = {ZOMBIE_PERIOD_S}",
                    "\tstatus_check = status-server",
                    f"\tcheck_interval = {CHECK_INTERVAL_S}",
                    f"\tcheck_timeout = {CHECK_TIMEOUT_S}",
                    f"\tnum_answers_to_alive = {NUM_ANSWERS_TO_ALIVE}",
                    "\tmax_outstanding = 65536",
                    "}"]
        for kind in ("auth", "acct"):
            lines += [f"home_server_pool {POOL}_{kind} {{", "\ttype = keyed-balance"]
            lines += [f"\thome_server = {h.name}-{kind}" for h in members]
            lines += ["}"]
        return "\n".join(lines) + "\n"

    def write_balancer_files(self, hosts: list[Host] | None = None) -> None:
        self.balancer.state.mkdir(parents=True, exist_ok=True)
        (self.balancer.state / "home-servers.conf").write_text(self.home_servers_conf(hosts))

    # -------------------------------------------------------------- lifecycle
    def up(self, *, writer: bool = True, hosts: list[Host] | None = None,
           after_data=None) -> None:
        """Everything; ``hosts``: only these RADIUS hosts start and are in the pool;
        ``after_data(stack)``: run once the data servers are up (e.g. the demo seed)."""
        if self.net.exists():
            raise StackError(f"bridge {self.net.bridge} exists already: run bin/cluster down")
        try:
            self.net.up()
            self.stack.start_data()
            if after_data is not None:
                after_data(self.stack)
            for h in self.hosts:
                h.write_files()
            starting = hosts if hosts is not None else self.hosts
            with concurrent.futures.ThreadPoolExecutor(len(starting)) as pool:
                for f in [pool.submit(h.start) for h in starting]:
                    f.result()
            self.write_balancer_files(hosts)
            self.balancer.start(60)
            if writer:
                self.stack.writer.start()
        except BaseException:
            self.down()
            raise

    def restart_balancer(self, hosts: list[Host]) -> None:
        """The balancer again with ``hosts`` in its pool (the benchmark's 1, 2, 3)."""
        self.balancer.stop()
        self.write_balancer_files(hosts)
        self.balancer.start(60)

    def down(self) -> None:
        def stop(proc: Radiusd) -> None:
            try:
                proc.stop()
            except Exception as exc:  # keep going: everything else must stop too
                print(f"stopping {proc.name} ({proc.state}): {exc}", file=sys.stderr)
        try:
            with concurrent.futures.ThreadPoolExecutor(1 + len(self.hosts)) as pool:
                list(pool.map(stop, (self.balancer, *(h.radiusd for h in self.hosts))))
            self.stack.stop_all()
        finally:
            self.net.down()


# ---------------------------------------------------------------- bin/cluster
def _saved() -> dict:
    try:
        return json.loads(CONFIG_FILE.read_text())
    except FileNotFoundError:
        raise SystemExit("bin/cluster: no tier was started here (bin/cluster up)") from None


def _cluster(saved: dict) -> Cluster:
    return Cluster(STATE, Ports(**saved["ports"]), hosts=saved["hosts"], tag=saved["tag"],
                   prefix=saved["prefix"], secret=saved["secret"])


def cmd_up(hosts: int) -> int:
    from .__main__ import DEMO, seed
    if CONFIG_FILE.exists():
        print("bin/cluster: a tier is up already (bin/cluster down first)", file=sys.stderr)
        return 1
    why = netns_available()
    if why:
        print(f"bin/cluster: {why}", file=sys.stderr)
        return 1
    STATE.mkdir(parents=True, exist_ok=True)
    # WIFICORE_STACK_PORTS=free, as for bin/stack: free ports beside another stack.
    ports = Ports.free() if os.environ.get("WIFICORE_STACK_PORTS") == "free" else Ports()
    c = Cluster(STATE, ports, hosts=hosts, tag="0", prefix="10.231.0")
    CONFIG_FILE.write_text(json.dumps({"ports": dataclasses.asdict(c.stack.ports), "hosts": hosts,
                                       "tag": c.net.tag, "prefix": c.net.prefix,
                                       "secret": c.secret}) + "\n")
    try:
        c.up(after_data=seed)
    except BaseException:
        CONFIG_FILE.unlink(missing_ok=True)
        raise
    d = DEMO
    server = "127.0.0.1" if c.stack.ports.auth == 1812 else f"127.0.0.1:{c.stack.ports.auth}"
    print(f"The RADIUS tier is running (state in {STATE}):")
    print(f"  balancer   127.0.0.1:{c.stack.ports.auth}/{c.stack.ports.acct}  pid {c.balancer.pid}")
    for h in c.hosts:
        print(f"  {h.name:10} {h.addr}:1812/1813 in netns {c.net.netns(h.i)}  pid {h.pid}  "
              f"(metrics {h.addr}:{h.metrics_port})")
    print(f"  redis      127.0.0.1 and {c.net.data_addr}:{c.stack.ports.redis}  pid {c.stack.redis.pid}")
    print(f"  writer     pid {c.stack.writer.pid}")
    print(f"\nTry it:\n  radtest {d['user']} {d['password']} {server} 0 {d['secret']}\n"
          f"Kill a host:  kill -9 {c.hosts[0].pid}; start it again (drains its spool): "
          "bin/cluster start-host 1\n"
          "Stop everything:\n  bin/cluster down")
    return 0


def cmd_down() -> int:
    c = _cluster(_saved())
    c.down()
    CONFIG_FILE.unlink(missing_ok=True)
    print("stopped")
    return 0


def cmd_start_host(i: int) -> int:
    """radiusd of host ``i`` again on its state folder (after a crash: this drains its
    spool, docs/cluster.md); a running one is stopped first."""
    c = _cluster(_saved())
    if not 1 <= i <= len(c.hosts):
        print(f"bin/cluster: no host {i} (1..{len(c.hosts)})", file=sys.stderr)
        return 1
    h = c.hosts[i - 1]
    h.stop()
    h.start()
    print(f"{h.name} running, pid {h.pid} (state {h.state})")
    return 0


def cmd_status() -> int:
    c = _cluster(_saved())
    rows = [("balancer", c.balancer), *((h.name, h.radiusd) for h in c.hosts),
            ("redis", c.stack.redis), ("shard1", c.stack.pg[0]), ("shard2", c.stack.pg[1]),
            *((b.name, b) for b in c.stack.bouncers), ("batch_writer", c.stack.writer)]
    for name, proc in rows:
        print(f"{name:20} {'running, pid ' + str(proc.pid) if proc.running() else 'stopped'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bin/cluster", description="the RADIUS tier (docs/cluster.md)")
    p.add_argument("command", choices=("up", "down", "status", "start-host"))
    p.add_argument("host", nargs="?", type=int, help="start-host: which host (1..N)")
    p.add_argument("--hosts", type=int, default=3, help="up: RADIUS hosts (namespaces), default 3")
    a = p.parse_args(argv)
    try:
        if a.command == "up":
            return cmd_up(a.hosts)
        if a.command == "start-host":
            if a.host is None:
                p.error("start-host needs the host's number")
            return cmd_start_host(a.host)
        return cmd_down() if a.command == "down" else cmd_status()
    except StackError as e:
        print(f"bin/cluster: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
