"""bin/stack from a clone in a folder only root may enter (mode 0700, like /root): the
servers run as the postgres user (the shards, PgBouncer) keep their files where that
user can reach them, and the whole stack comes up, answers a login and goes down."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from stack.servers import (
    PostgresServer,
    StackError,
    blocked_for,
    free_port,
    pid_alive,
    postgres_home,
    shared_home_of,
)
from tests.radius import send

ROOT = Path(__file__).resolve().parent.parent
AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="the postgres user is only used when run as root")


def clone_into(base: Path) -> Path:
    """A clone of HEAD in ``base`` (a new 0700 folder), using this checkout's .venv and
    .freeradius (bin/setup then has nothing to install)."""
    assert base.stat().st_mode & 0o777 == 0o700
    repo = base / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True, capture_output=True)
    for name in (".venv", ".freeradius"):
        if (ROOT / name).exists():
            (repo / name).symlink_to((ROOT / name).resolve())
    # Older than .venv/.installed: bin/setup keeps the shared virtualenv as it is.
    os.utime(repo / "setup.cfg", (0, 0))
    return repo


def bin_stack(repo: Path, command: str, timeout_s: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "WIFICORE_STACK_PORTS": "free", "WIFICORE_RADIUSD_PROCS": "1"}
    env.pop("WIFICORE_SHARDS", None)  # the default: four shards
    return subprocess.run([str(repo / "bin" / "stack"), command], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=timeout_s)


def status_pids(out: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\S+)\s+running, pid (\d+)$", out, re.M)}


def test_bin_stack_up_and_down_from_a_clone_in_a_0700_folder():
    base = Path(tempfile.mkdtemp(prefix="wificore-clone-", dir="/tmp"))
    repo = base / "repo"
    state = repo / ".state"
    pids: dict[str, int] = {}
    down = None
    try:
        clone_into(base)
        up = bin_stack(repo, "up")
        assert up.returncode == 0, f"bin/stack up failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}"
        assert "rlm_wificore is running" in up.stdout
        if os.geteuid() == 0:
            home = shared_home_of(state)
            assert all((home / f"shard{i}" / "PG_VERSION").exists() for i in (1, 2, 3, 4))
            assert (home / "pgbouncer-shard1" / "pgbouncer.ini").exists()
            assert not (state / "shard1").exists()
            assert str(home) in up.stdout
        status = bin_stack(repo, "status", timeout_s=60)
        pids = status_pids(status.stdout)
        assert set(pids) == {"redis", "radiusd", "batch_writer", "coa_sender",
                             *(f"shard{i}" for i in (1, 2, 3, 4)),
                             *(f"pgbouncer-shard{i}" for i in (1, 2, 3, 4))}, status.stdout
        ports = json.loads((state / "ports.json").read_text())
        ans = send(ports["auth"], "auth", "testing123",
                   {"User-Name": "demo", "User-Password": "demo-password"}, timeout_s=3, retries=3)
        assert ans.accepted, ans.output
    finally:
        if (repo / "bin" / "stack").exists():
            down = bin_stack(repo, "down", timeout_s=120)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(pid_alive(p) for p in pids.values()):
            time.sleep(0.1)
        left = {name: pid for name, pid in pids.items() if pid_alive(pid)}
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(shared_home_of(state), ignore_errors=True)
    assert down is not None and down.returncode == 0, down and down.stderr
    assert not left, f"still running after bin/stack down: {left}"


def test_two_state_folders_never_share_the_postgres_files():
    assert shared_home_of(Path("/root/a/repo/.state")) != shared_home_of(Path("/root/b/repo/.state"))
    assert shared_home_of(Path("/root/a/repo/.state")) == shared_home_of(Path("/root/a/repo/.state"))


@AS_ROOT
def test_a_0700_folder_on_the_way_is_found():
    base = Path(tempfile.mkdtemp(prefix="wificore-private-", dir="/tmp"))
    try:
        (base / "repo").mkdir()
        assert blocked_for(base / "repo" / ".state", "postgres") == base
        assert blocked_for(Path("/tmp"), "postgres") is None
        base.chmod(0o701)
        assert blocked_for(base / "repo" / ".state", "postgres") is None
    finally:
        shutil.rmtree(base)


@AS_ROOT
def test_a_state_folder_the_postgres_user_cannot_reach_any_longer_is_one_sentence():
    """Data left in the state folder by an earlier run, then the way to it closed: the
    shards are not silently started empty elsewhere, and nothing starts."""
    base = Path(tempfile.mkdtemp(prefix="wificore-private-", dir="/tmp"))
    state = base / "repo" / ".state"
    try:
        (state / "shard1").mkdir(parents=True)
        (state / "shard1" / "PG_VERSION").write_text("15\n")
        home = postgres_home(state, fresh=False)
        assert home == state and not shared_home_of(state).exists()
        with pytest.raises(StackError) as e:
            PostgresServer(state, free_port(), "shard1", home=home).start()
        message = str(e.value)
        assert message.count(". ") == 0 and message.endswith(".") and "\n" not in message
        assert f"{state} holds PostgreSQL data that the postgres user cannot reach" in message
        assert f"chmod o+x {base}" in message
        assert not (state / "run").exists()  # nothing was started
    finally:
        shutil.rmtree(base)


@AS_ROOT
def test_a_new_state_folder_starts_with_new_postgres_files():
    """What an earlier state folder at the same path left under /var/lib/wificore-stack/ is
    not taken over by a new one (a new clone, or .state removed)."""
    base = Path(tempfile.mkdtemp(prefix="wificore-private-", dir="/tmp"))
    state = base / "repo" / ".state"
    home = shared_home_of(state)
    try:
        (home / "shard1").mkdir(parents=True)
        (home / "shard1" / "PG_VERSION").write_text("15\n")
        state.mkdir(parents=True)
        assert postgres_home(state, fresh=True) == home
        assert not (home / "shard1").exists()
        assert blocked_for(home, "postgres") is None
        (home / "kept").write_text("")
        assert postgres_home(state, fresh=False) == home and (home / "kept").exists()
    finally:
        shutil.rmtree(base)
        shutil.rmtree(home, ignore_errors=True)
