"""A Redis Cluster on loopback: 3 masters with 1 replica each (Debian's redis-server).

Each node is a :class:`stack.servers.RedisServer`-like process with ``cluster-enabled
yes``, its own ``nodes.conf`` and append-only file (``appendonly yes``, ``appendfsync
everysec``, as the stack's single Redis), and a short ``cluster-node-timeout``
(``NODE_TIMEOUT_MS``): a master that stops answering is failed over to its replica
after about that long. The cluster is created with ``redis-cli --cluster create``.
Used by ``bin/stack up`` with ``WIFICORE_REDIS_CLUSTER=1`` and by the cluster tests'
own fixture (tests/test_redis_cluster.py), not by the rest of the suite.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from .servers import Process, StackError, free_port, free_port_between, port_range, redis_pings, reserve_port, wait_for

#: How long a master may be silent before its replica takes over (redis.conf's
#: cluster-node-timeout). Short: the failover tests wait for it.
NODE_TIMEOUT_MS = 2000
MASTERS = 3
REPLICAS = 1
#: A node's cluster bus listens on its port + 10000.
BUS_OFFSET = 10000


def free_cluster_port(taken: set[int]) -> int:
    """A loopback port free for the node and for its cluster bus (port + 10000). With
    WIFICORE_PORT_RANGE (bin/test: one range per pass, side by side) both lie in the
    pass's range: a bus port picked above it could be a port the other pass hands out."""
    span = port_range()
    for _ in range(200):
        if span:
            lo, hi = span
            if hi - lo < BUS_OFFSET:
                raise StackError(f"WIFICORE_PORT_RANGE {lo}-{hi} is narrower than a node "
                                 f"port and its cluster bus port ({BUS_OFFSET} apart)")
            port = free_port_between(lo, hi - BUS_OFFSET)
        else:
            port = free_port()
        bus = port + BUS_OFFSET
        if port in taken or bus > 65535 or bus in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", bus))
            except OSError:
                continue
        if reserve_port(bus):
            return port
    raise StackError("no loopback port free with its cluster bus port")


def _command(port: int, *args: str, timeout_s: float = 1.0) -> str:
    """One command to a node through redis-cli (no cluster redirection); '' if no answer."""
    try:
        out = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
                             capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return ""
    return out.stdout


class ClusterNode(Process):
    def __init__(self, state: Path, port: int, name: str) -> None:
        super().__init__(name, state)
        self.port = port
        self.dir = state / name

    def start(self) -> None:
        if self.running() and self.ready():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.spawn(["redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
                    "--dir", str(self.dir), "--save", "", "--appendonly", "yes",
                    "--appendfsync", "everysec", "--protected-mode", "yes",
                    "--daemonize", "no", "--loglevel", "warning",
                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                    # A lone master whose replica is gone keeps serving its slots.
                    "--cluster-require-full-coverage", "no",
                    "--cluster-allow-replica-migration", "no"])
        wait_for(self.ready, 30, f"redis cluster node on port {self.port}")

    def ready(self) -> bool:
        return redis_pings(self.port)

    def info(self, section: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in _command(self.port, "CLUSTER" if section == "cluster" else "INFO",
                             "INFO" if section == "cluster" else section).splitlines():
            key, sep, value = line.strip().partition(":")
            if sep:
                out[key] = value
        return out

    def role(self) -> str:
        return self.info("replication").get("role", "")


class RedisCluster:
    """``MASTERS`` masters and ``REPLICAS`` replicas each, on the given ports."""

    def __init__(self, state: Path, ports: list[int], name: str = "redis-cluster") -> None:
        if len(ports) != MASTERS * (1 + REPLICAS):
            raise ValueError(f"a cluster of {MASTERS} masters and {REPLICAS} replica each "
                             f"needs {MASTERS * (1 + REPLICAS)} ports")
        self.state = state
        self.name = name
        self.nodes = [ClusterNode(state, p, f"{name}-{p}") for p in ports]

    @staticmethod
    def free_ports() -> list[int]:
        taken: set[int] = set()
        out = []
        for _ in range(MASTERS * (1 + REPLICAS)):
            port = free_cluster_port(taken)
            taken |= {port, port + BUS_OFFSET}
            out.append(port)
        return out

    @property
    def port(self) -> int:
        return self.nodes[0].port

    @property
    def url(self) -> str:
        """The URL the settings take (wificore/roles.py): every node, any may answer."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    @property
    def pid(self) -> int | None:
        return self.nodes[0].pid

    def running(self) -> bool:
        return all(n.running() for n in self.nodes)

    def ready(self) -> bool:
        """Every running node sees the cluster ``ok`` with every slot assigned."""
        live = [n for n in self.nodes if n.running()]
        return bool(live) and all(
            n.info("cluster").get("cluster_state") == "ok"
            and n.info("cluster").get("cluster_slots_assigned") == "16384" for n in live)

    def start(self) -> None:
        for n in self.nodes:
            n.start()
        if _command(self.nodes[0].port, "CLUSTER", "INFO").find("cluster_slots_assigned:16384") < 0:
            if shutil.which("redis-cli") is None:
                raise StackError("redis-cli not found (Debian's redis-tools)")
            out = subprocess.run(
                ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                 "--cluster-replicas", str(REPLICAS), "--cluster-yes"],
                capture_output=True, text=True, timeout=60)
            if out.returncode != 0:
                raise StackError(f"redis-cli --cluster create: {out.stdout[-2000:]} {out.stderr[-1000:]}")
        wait_for(self.ready, 30, "the redis cluster's slots")
        wait_for(self.replicas_in_sync, 30, "the redis cluster's replicas")

    def masters(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.running() and n.role() == "master"]

    def replicas_in_sync(self) -> bool:
        """Every running master has a replica whose link is up."""
        masters = self.masters()
        return len(masters) >= 1 and all(
            int(m.info("replication").get("connected_slaves", "0")) >= REPLICAS for m in masters)

    def replica_of(self, master: ClusterNode) -> ClusterNode | None:
        for n in self.nodes:
            if n is master or not n.running():
                continue
            info = n.info("replication")
            if info.get("role") == "slave" and info.get("master_port") == str(master.port):
                return n
        return None

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL a node (a crash: no shutdown, no last write of its append-only file)."""
        node.stop(signal.SIGKILL)

    def wait_promoted(self, node: ClusterNode, timeout_s: float) -> float:
        """Seconds until ``node`` reports itself a master (its master failed)."""
        t0 = time.monotonic()
        wait_for(lambda: node.role() == "master"
                 and node.info("cluster").get("cluster_state") == "ok", timeout_s,
                 f"node {node.port} promoted")
        return time.monotonic() - t0

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
        for n in self.nodes:
            n.stop(sig, timeout_s)

    def log_tail(self, n: int = 20) -> str:
        return "\n".join(f"--- {node.name}\n{node.log_tail(n)}" for node in self.nodes)
