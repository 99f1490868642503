"""Start and stop real servers as local processes, on loopback, by PID."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from . import freeradius

ROOT = Path(__file__).resolve().parent.parent
RADDB = ROOT / "raddb"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
VENV = ROOT / ".venv"
REUSEPORT_SRC = ROOT / "contrib" / "reuseport" / "wificore-reuseport.c"
REUSEPORT_LIB = ROOT / "build" / "wificore-reuseport.so"
#: Where a state folder that the postgres user cannot reach keeps what runs as that user.
SHARED_HOMES = Path("/var/lib/wificore-stack")


class StackError(RuntimeError):
    """A server could not be set up or started; the message is one sentence for the operator."""


def reuseport_library() -> Path:
    """build/wificore-reuseport.so, compiled from contrib/reuseport/ when missing or older."""
    if not REUSEPORT_LIB.exists() or REUSEPORT_LIB.stat().st_mtime < REUSEPORT_SRC.stat().st_mtime:
        REUSEPORT_LIB.parent.mkdir(parents=True, exist_ok=True)
        tmp = REUSEPORT_LIB.with_suffix(".so.tmp")
        subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-o", str(tmp), str(REUSEPORT_SRC),
                        "-ldl"], check=True, capture_output=True)
        tmp.replace(REUSEPORT_LIB)
    return REUSEPORT_LIB


_HANDED_OUT: set[int] = set()


def port_range() -> tuple[int, int] | None:
    """WIFICORE_PORT_RANGE=lo-hi as a pair (bin/test gives each pass its own), or None."""
    span = os.environ.get("WIFICORE_PORT_RANGE", "")
    if not span:
        return None
    lo, hi = (int(x) for x in span.split("-", 1))
    return lo, hi


def free_port_between(lo: int, hi: int) -> int:
    """A loopback port of lo..hi free for both TCP and UDP and not handed out before in
    this process (see :func:`free_port`)."""
    for _ in range(200):
        port = random.randint(lo, hi)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, \
                socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            try:
                t.bind(("127.0.0.1", port))
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise OSError(f"no loopback port free for both TCP and UDP in {lo}-{hi}")


def reserve_port(port: int) -> bool:
    """Hand out ``port`` (one a server will bind later, such as a cluster bus port): False
    if it was handed out before in this process."""
    if port in _HANDED_OUT:
        return False
    _HANDED_OUT.add(port)
    return True


def free_port() -> int:
    """A loopback port free for both TCP and UDP (another port when the kernel's free TCP
    port is taken for UDP). With WIFICORE_PORT_RANGE=lo-hi (bin/test gives each pass its
    own, below the kernel's ephemeral range) a port of that range not handed out before in
    this process: two passes side by side never pick the same port, and no outgoing
    connection takes one between its pick and its server's bind."""
    span = port_range()
    if span:
        return free_port_between(*span)
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, \
                socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            try:
                u.bind(("127.0.0.1", port))  # free for both UDP and TCP
            except OSError:
                continue
            return port
    raise OSError("no loopback port free for both TCP and UDP")


def wait_for(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not come up within {timeout_s:.0f} s")


def tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def stop_pid(pid: int, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int | None:
    """Signal ``pid``, wait for it to go, SIGKILL after the timeout."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)
    if pid_alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)
    except ChildProcessError:
        return None


class Process:
    """A child started in its own session, its PID written to ``pidfile``."""

    def __init__(self, name: str, state: Path) -> None:
        self.name = name
        self.state = state
        self.pidfile = state / "run" / f"{name}.pid"
        self.logfile = state / "log" / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        if self.proc is not None:
            return self.proc.pid
        try:
            return int(self.pidfile.read_text())
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        pid = self.pid
        return pid is not None and pid_alive(pid)

    def spawn(self, cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        with open(self.logfile, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                         start_new_session=True)
        self.pidfile.write_text(str(self.proc.pid))

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int | None:
        pid = self.pid
        code = None
        if pid is not None:
            if self.proc is not None:
                try:
                    self.proc.send_signal(sig)
                    code = self.proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    code = self.proc.wait()
                except ProcessLookupError:
                    pass
            else:
                code = stop_pid(pid, sig, timeout_s)
        self.pidfile.unlink(missing_ok=True)
        self.proc = None
        return code

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class RedisServer(Process):
    """``also_on``: addresses besides 127.0.0.1 to listen on (the RADIUS tier's own
    namespace link, stack/cluster.py); never a public interface."""

    def __init__(self, state: Path, port: int, name: str = "redis",
                 also_on: tuple[str, ...] = ()) -> None:
        super().__init__(name, state)
        self.port = port
        self.dir = state / name
        self.also_on = also_on

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if self.running() and self.ready():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.spawn(["redis-server", "--bind", "127.0.0.1", *self.also_on, "--port", str(self.port),
                    "--dir", str(self.dir), "--save", "", "--appendonly", "yes",
                    "--appendfsync", "everysec",
                    # Protected mode lets in loopback only; with ``also_on`` (a namespace
                    # link of this machine, no public interface) the hosts there must reach it.
                    "--protected-mode", "no" if self.also_on else "yes",
                    "--daemonize", "no", "--loglevel", "warning"])
        wait_for(self.ready, 30, f"redis on port {self.port}")

    def ready(self) -> bool:
        """PING answers PONG: listening and done loading its append-only file."""
        return redis_pings(self.port)


def redis_pings(port: int) -> bool:
    """A Redis on loopback ``port`` answers PING with PONG (listening, done loading)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--"] + cmd
    return cmd


def blocked_for(path: Path, user: str) -> Path | None:
    """The first folder on the way to ``path`` (``path`` included, if it exists) that
    ``user`` may not enter (no execute bit for it as owner, group or other); None if
    every one lets it through."""
    pw = pwd.getpwnam(user)
    groups = set(os.getgrouplist(user, pw.pw_gid))
    path = path.absolute()
    for d in (*reversed(path.parents), path):
        try:
            st = d.stat()
        except FileNotFoundError:
            return None
        if pw.pw_uid == 0:
            continue
        if st.st_uid == pw.pw_uid:
            bit = 0o100
        elif st.st_gid in groups:
            bit = 0o010
        else:
            bit = 0o001
        if not st.st_mode & bit:
            return d
    return None


def shared_home_of(state: Path) -> Path:
    """The folder under SHARED_HOMES for ``state``: one per state folder (a hash of its
    path), so two clones never share one."""
    state = state.absolute()
    digest = hashlib.sha256(str(state).encode()).hexdigest()[:16]
    return SHARED_HOMES / f"{state.parent.name or 'root'}-{digest}"


def postgres_home(state: Path, *, fresh: bool) -> Path:
    """Where what runs as the postgres user keeps its files (the shards' data folders and
    logs, their socket folder, PgBouncer's files): ``state`` itself when that user can
    reach it (or when not started as root: then everything runs as the same user), else
    :func:`shared_home_of` ``state``, made for it. Once that folder exists it is kept for
    ``state``; a ``fresh`` (new or empty) state folder finds it left by an earlier one at
    the same path and starts it anew. Shards already in ``state`` stay there even when
    the way to them has closed (``PostgresServer.start`` then says so; stopping them
    still works). Raises StackError (one sentence) when no folder works."""
    if os.geteuid() != 0:
        return state
    shared = shared_home_of(state)
    if shared.exists() and fresh:
        for pidfile in shared.glob("*/postmaster.pid"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int(pidfile.read_text().split()[0])
                if pid_alive(pid):
                    raise StackError(
                        f"{shared} (PostgreSQL's files for {state}) is left from an earlier state "
                        f"folder at this path and its PostgreSQL still runs (pid {pid}): stop it "
                        f"(kill {pid}) or remove {shared}.")
        shutil.rmtree(shared)
    if shared.exists():
        return shared
    blocked = blocked_for(state, "postgres")
    if blocked is None:
        return state
    if any(state.glob("*/PG_VERSION")):
        return state
    try:
        SHARED_HOMES.mkdir(mode=0o755, parents=True, exist_ok=True)
        shared.mkdir(mode=0o755)
    except OSError as e:
        raise StackError(f"the postgres user cannot reach {state} ({blocked} has no execute bit for "
                         f"it) and {shared} cannot be made for it instead: {e.strerror}.") from e
    shared.chmod(0o755)
    (shared / "state-folder").write_text(f"{state.absolute()}\n")
    still = blocked_for(shared, "postgres")
    if still is not None:
        raise StackError(f"the postgres user can reach neither {state} nor {shared} "
                         f"({still} has no execute bit for it).")
    return shared


class PostgresServer(Process):
    """One PostgreSQL cluster (one shard) in ``home/<name>``, its log in
    ``home/log/<name>.log``, its socket in ``home/run``; ``home`` is a folder the postgres
    user can reach (:func:`postgres_home`), ``state`` unless given."""

    def __init__(self, state: Path, port: int, name: str, fast: bool = False,
                 home: Path | None = None, also_on: tuple[str, ...] = (),
                 networks: tuple[str, ...] = (), standby_of: PostgresServer | None = None,
                 statements: bool = False) -> None:
        super().__init__(name, state)
        #: pg_stat_statements loaded (its view in the ``postgres`` database): what a role ran,
        #: counted as each statement ends (see :meth:`statements_of`).
        self.statements = statements
        #: A streaming replica of that primary (pg_basebackup -R), read-only.
        self.standby_of = standby_of
        self.port = port
        #: Addresses besides 127.0.0.1 to listen on, and the networks (CIDR) let in
        #: from them (pg_hba.conf, trust as on loopback): the RADIUS tier's link.
        self.also_on = also_on
        self.networks = networks
        self.home = home or state
        self.datadir = self.home / name
        self.sockdir = self.home / "run"
        self.logfile = self.home / "log" / f"{name}.log"
        self.fast = fast

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/wificore"

    def dsn(self, user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/wificore"

    def _pg(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(_as_postgres([str(PG_BIN / args[0]), *args[1:]]),
                              capture_output=True, text=True)
        if check and done.returncode != 0:
            said = (done.stderr.strip() or done.stdout.strip()).splitlines()
            raise StackError(f"{self.name}: {args[0]} failed with exit code {done.returncode}: "
                             f"{said[-1] if said else 'no output'} (log: {self.logfile}).")
        return done

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def check_reachable(self) -> None:
        """StackError (one sentence) when the postgres user cannot enter ``home``."""
        blocked = blocked_for(self.home, "postgres") if os.geteuid() == 0 else None
        if blocked is not None:
            what = "holds PostgreSQL data that" if (self.datadir / "PG_VERSION").exists() else "is a folder"
            raise StackError(f"{self.home} {what} the postgres user cannot reach ({blocked} has no "
                             f"execute bit for it): run chmod o+x {blocked}, or remove {self.home}.")

    def start(self) -> None:
        self.check_reachable()
        self.sockdir.mkdir(parents=True, exist_ok=True)
        self.sockdir.chmod(0o777 | 0o1000)
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        if not (self.datadir / "PG_VERSION").exists() and self.standby_of is not None:
            self.datadir.mkdir(parents=True, exist_ok=True)
            self.datadir.chmod(0o700)
            self._chown(self.datadir)
            self._pg("pg_basebackup", "-h", "127.0.0.1", "-p", str(self.standby_of.port), "-U",
                     "postgres", "-D", str(self.datadir), "-R", "-X", "stream", "-c", "fast")
        if not (self.datadir / "PG_VERSION").exists():
            self.datadir.mkdir(parents=True, exist_ok=True)
            self.datadir.chmod(0o700)
            self._chown(self.datadir)
            self._pg("initdb", "-D", str(self.datadir), "-U", "postgres", "--auth=trust",
                     "-E", "UTF8", "--locale=C.UTF-8")
        self._allow_networks()
        if self._pg("pg_ctl", "status", "-D", str(self.datadir), check=False).returncode == 0:
            return
        listen = ",".join(("127.0.0.1", *self.also_on))
        opts = (f"-p {self.port} -c listen_addresses={listen} -k {self.sockdir} "
                f"-c max_connections=200 -c shared_buffers=256MB")
        if self.fast:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        if self.statements:
            opts += (" -c shared_preload_libraries=pg_stat_statements"
                     " -c pg_stat_statements.track_utility=off -c pg_stat_statements.max=10000")
        self.logfile.touch()
        self._chown(self.logfile)
        self._pg("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.datadir), "-o", opts,
                 "-l", str(self.logfile))
        self._pg("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres",
                 "-v", "ON_ERROR_STOP=1", "-qAtc", "SELECT 1")
        if self.standby_of is not None:
            return  # read-only: its database is the primary's
        exists = self._pg("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d",
                          "postgres", "-qAtc", "SELECT 1 FROM pg_database WHERE datname='wificore'")
        if exists.stdout.strip() != "1":
            self._pg("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "wificore")
        if self.statements:  # in the postgres database: the product's schema stays as it is
            self._pg("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d",
                     "postgres", "-v", "ON_ERROR_STOP=1", "-qAtc",
                     "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def statements_of(self, role: str) -> tuple[int, int]:
        """(statements ``role`` ran in the wificore database so far, entries pg_stat_statements
        evicted so far): needs ``statements``. Unlike pg_stat_database's transaction counts,
        which a backend reports up to a second late (an idle one at its next transaction or
        exit, seconds or minutes later) and which count every backend's transactions
        (autovacuum's too), a statement is counted as it ends, by its role. Two counts are
        comparable while the evictions stay the same."""
        import psycopg
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres",
                             autocommit=True) as conn:
            row = conn.execute(
                "SELECT (SELECT coalesce(sum(s.calls), 0) FROM pg_stat_statements s"
                "  JOIN pg_roles r ON r.oid = s.userid JOIN pg_database d ON d.oid = s.dbid"
                "  WHERE r.rolname = %s AND d.datname = 'wificore'),"
                " (SELECT dealloc FROM pg_stat_statements_info)", (role,)).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def _allow_networks(self) -> None:
        hba = self.datadir / "pg_hba.conf"
        if not self.networks or not hba.exists():
            return
        text = hba.read_text()
        lines = [f"host all all {net} trust" for net in self.networks]
        missing = [ln for ln in lines if ln not in text.splitlines()]
        if missing:
            hba.write_text(text.rstrip("\n") + "\n" + "\n".join(missing) + "\n")

    def running(self) -> bool:
        return (self.datadir / "postmaster.pid").exists() and \
            self._pg("pg_ctl", "status", "-D", str(self.datadir), check=False).returncode == 0

    @property
    def pid(self) -> int | None:
        try:
            return int((self.datadir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int | None:
        if (self.datadir / "postmaster.pid").exists():
            pid = self.pid
            done = self._pg("pg_ctl", "stop", "-w", "-m", "fast", "-t", str(int(timeout_s)), "-D",
                            str(self.datadir), check=False)
            if done.returncode != 0 and pid is not None and pid_alive(pid):
                # pg_ctl could not do it (e.g. its user can no longer reach the data folder):
                # SIGINT is the same fast shutdown, sent by PID.
                stop_pid(pid, signal.SIGINT, timeout_s)
        return 0

    def kill(self) -> None:
        """Stop immediately (a crash, for failure tests)."""
        self._pg("pg_ctl", "stop", "-w", "-m", "immediate", "-D", str(self.datadir), check=False)


def in_netns(netns: str | None, cmd: list[str]) -> list[str]:
    """``cmd`` run in network namespace ``netns`` (``ip netns exec`` execs it: the PID is
    the command's own), or as it is for None."""
    return ["ip", "netns", "exec", netns, *cmd] if netns else cmd


def start_radiusd(proc: Process, raddb: Path, env: dict[str, str], timeout_s: float,
                  threaded: bool = True, args: tuple[str, ...] = (),
                  netns: str | None = None) -> None:
    """Spawn radiusd (foreground; ``threaded=False``: ``-t``, no thread pool) with ``raddb``
    (and ``args``, e.g. ``-n balancer``), in ``netns`` if given; wait for 'Ready to process
    requests'."""
    proc.logfile.parent.mkdir(parents=True, exist_ok=True)
    mark = proc.logfile.stat().st_size if proc.logfile.exists() else 0
    fr = freeradius.build(env.get("WIFICORE_FREERADIUS"))
    proc.spawn(in_netns(netns, fr.command("-f", *([] if threaded else ["-t"]), "-d", str(raddb),
                                          *args, "-l", "stdout")),
               env=fr.env(env))

    def ready() -> bool:
        if proc.proc is not None and proc.proc.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.proc.returncode}:\n{proc.log_tail()}")
        with open(proc.logfile, "rb") as f:
            f.seek(mark)
            return b"Ready to process requests" in f.read()
    wait_for(ready, timeout_s, proc.name)


class Radiusd(Process):
    """radiusd with the project's raddb, or a copy of it: foreground, without a thread
    pool (``-t``: one event loop, see docs/decisions.md) unless ``threaded``."""

    def __init__(self, state: Path, *, auth_port: int, acct_port: int, shard_map: Path,
                 redis_url: str, metrics_port: int = 0, reject_delay: int = 0,
                 client_lifetime_s: int = 300, name: str = "radiusd", raddb: Path = RADDB,
                 extra_env: dict[str, str] | None = None, reuseport: bool = False,
                 threaded: bool = False, args: tuple[str, ...] = (),
                 netns: str | None = None) -> None:
        super().__init__(name, state)
        self.threaded = threaded
        self.args = args  # e.g. ("-n", "balancer"): raddb/balancer.conf
        self.netns = netns  # a RADIUS host of the tier (stack/cluster.py)
        self.auth_port = auth_port
        self.acct_port = acct_port
        self.raddb = raddb
        self.freeradius = freeradius.build((extra_env or {}).get("WIFICORE_FREERADIUS"))
        self.env = {
            **self.freeradius.env(),
            "WIFICORE_RADDB": str(raddb),
            "WIFICORE_HOME": str(ROOT),
            "WIFICORE_STATE": str(state),
            "WIFICORE_LISTEN_ADDR": "127.0.0.1",
            "WIFICORE_AUTH_PORT": str(auth_port),
            "WIFICORE_ACCT_PORT": str(acct_port),
            "WIFICORE_NAS_NETWORK": "127.0.0.0/8",
            "WIFICORE_CLIENT_LIFETIME": str(client_lifetime_s),
            "WIFICORE_SHARD_MAP": str(shard_map),
            "WIFICORE_REDIS_URL": redis_url,
            "WIFICORE_METRICS_ADDR": "127.0.0.1",
            "WIFICORE_METRICS_PORT": str(metrics_port),
            "WIFICORE_REJECT_DELAY": str(reject_delay),
            **(extra_env or {}),
        }
        self.reuseport = reuseport  # one of several radiusd processes on the same ports

    def _dirs(self) -> None:
        for sub in ("log", "run", "spool"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)

    def check_config(self) -> subprocess.CompletedProcess:
        self._dirs()
        fr = freeradius.build(self.env.get("WIFICORE_FREERADIUS"))
        return subprocess.run(in_netns(self.netns, fr.command("-XC", "-d", str(self.raddb), *self.args)),
                              env=fr.env(self.env), capture_output=True, text=True, timeout=60)

    def start(self, timeout_s: float = 30) -> None:
        self._dirs()
        if self.reuseport:
            self.env["LD_PRELOAD"] = str(reuseport_library())
        start_radiusd(self, self.raddb, self.env, timeout_s, threaded=self.threaded, args=self.args,
                      netns=self.netns)


class RadiusdGroup:
    """Several radiusd processes sharing the same ports (``reuseport=True``), started
    and stopped together; the first one stands for the group where one is needed."""

    def __init__(self, members: list[Radiusd]) -> None:
        self.members = members
        self.auth_port, self.acct_port = members[0].auth_port, members[0].acct_port
        self.logfile = members[0].logfile
        self.name = members[0].name

    @property
    def pid(self) -> int | None:
        return self.members[0].pid

    @property
    def pids(self) -> list[int]:
        return [m.pid for m in self.members if m.pid is not None]

    def start(self, timeout_s: float = 30) -> None:
        try:
            for m in self.members:
                m.start(timeout_s)
        except BaseException:
            self.stop()
            raise

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int | None:
        codes = [m.stop(sig, timeout_s) for m in self.members]
        return next((c for c in codes if c not in (0, None)), codes[0])

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(f"--- {m.name}\n{m.log_tail(n)}" for m in self.members)


def venv_bin(name: str) -> str:
    path = VENV / "bin" / name
    if path.exists():
        return str(path)
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    return found


class BatchWriter(Process):
    def __init__(self, state: Path, env: dict[str, str], name: str = "batch_writer") -> None:
        super().__init__(name, state)
        self.env = {**os.environ, **env}
        # This tree's batch_writer, not the one the venv's editable install points at (a
        # worktree shares its venv with the main tree); radiusd's python_path is ROOT too.
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), self.env.get("PYTHONPATH")) if p)

    def start(self) -> None:
        # This checkout's batch_writer (python -m from ROOT), not the one the virtualenv's
        # console script imports (an editable install may point at another checkout).
        self.spawn([sys.executable, "-m", "batch_writer"], env=self.env, cwd=ROOT)


class CoaSidecar(Process):
    """The CoA sidecar (coa_sender, docs/coa.md), run as ``python -m coa_sender`` from
    this tree (the working directory comes first on sys.path)."""

    def __init__(self, state: Path, env: dict[str, str], name: str = "coa_sender") -> None:
        super().__init__(name, state)
        self.env = {**os.environ, **env}

    def start(self) -> None:
        python = VENV / "bin" / "python"
        self.spawn([str(python) if python.exists() else sys.executable, "-m", "coa_sender"], env=self.env,
                   cwd=ROOT)


class PgBouncer(Process):
    """PgBouncer (Debian's 1.18) in front of one shard, transaction pooling, as the
    compose file deploys it. Runs as the postgres user when started as root (PgBouncer
    refuses root). Trust authentication on loopback, like the test clusters."""

    USERS = ("postgres", "wificore_radiusd", "wificore_batch")

    def __init__(self, state: Path, port: int, pg: PostgresServer, name: str | None = None,
                 also_on: tuple[str, ...] = ()) -> None:
        super().__init__(name or f"pgbouncer-{pg.name}", state)
        self.port = port
        self.pg = pg
        self.also_on = also_on  # addresses besides 127.0.0.1 (stack/cluster.py)
        self.dir = pg.home / self.name  # its files, read and written as the postgres user

    def dsn(self, user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/wificore"

    def start(self) -> None:
        if self.running() and tcp_open(self.port):
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)
        users = self.dir / "users.txt"
        users.write_text("".join(f'"{u}" ""\n' for u in self.USERS))
        ini = self.dir / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"wificore = host=127.0.0.1 port={self.pg.port} dbname=wificore\n"
            "[pgbouncer]\n"
            f"listen_addr = {','.join(('127.0.0.1', *self.also_on))}\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {users}\n"
            "pool_mode = transaction\ndefault_pool_size = 20\nmax_client_conn = 1000\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
            "server_reset_query =\nserver_check_delay = 10\nserver_login_retry = 1\n"
            "log_connections = 0\nlog_disconnections = 0\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\npidfile = {self.dir / 'pgbouncer.pid'}\n")
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            for p in (self.dir, users, ini):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        (self.dir / "pgbouncer.pid").unlink(missing_ok=True)
        self.spawn(_as_postgres(["/usr/sbin/pgbouncer", str(ini)]))
        wait_for(lambda: tcp_open(self.port), 30, f"pgbouncer on port {self.port}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int | None:
        # runuser stops itself when its child is stopped (a test's SIGSTOP of pgbouncer)
        # and stays stopped after the child's SIGCONT: the SIGTERM would wait, and the
        # SIGKILL after the timeout left pgbouncer running, orphaned. Continued first,
        # runuser passes the SIGTERM on to pgbouncer.
        # pgbouncer itself is a grandchild (runuser's child): should it outlive runuser
        # (runuser killed after the timeout, or gone before it could pass the signal
        # on), it is stopped by its own PID, read before anything stops.
        servers = self.server_pids()
        signal_all([p for p in (self.pid, *servers) if p is not None], signal.SIGCONT)
        code = super().stop(sig, timeout_s)
        for pid in servers:
            if pid_alive(pid):
                stop_pid(pid, sig, timeout_s)
        return code

    def server_pids(self) -> list[int]:
        """The pgbouncer process itself (the child of runuser), e.g. to SIGSTOP it."""
        try:
            return [int((self.dir / "pgbouncer.pid").read_text().split()[0])]
        except (OSError, ValueError, IndexError):
            return []


def cluster_pids(postmaster_pid: int | None) -> list[int]:
    """A PostgreSQL cluster's postmaster and every process it started (backends included)."""
    if postmaster_pid is None:
        return []
    pids = [postmaster_pid]
    for task in Path(f"/proc/{postmaster_pid}/task").glob("*/children"):
        pids += [int(p) for p in task.read_text().split()]
    return pids


def signal_all(pids: list[int], sig: int) -> None:
    """Send ``sig`` to each of ``pids``; a process already gone is skipped."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


@contextlib.contextmanager
def stopped(pids: list[int]) -> Iterator[None]:
    """SIGSTOP ``pids`` (a hung peer: sockets open, no answer); SIGCONT at the end, in reverse
    order, even when the body raises. E.g. ``with stopped(cluster_pids(pg.pid)):``."""
    pids = [p for p in pids if p]
    if not pids:
        raise ValueError("no process to stop")
    try:
        signal_all(pids, signal.SIGSTOP)
        yield
    finally:
        signal_all(list(reversed(pids)), signal.SIGCONT)
