"""The spool on a small or full disk: a real tmpfs mount (root) as the spool's filesystem.

A full disk must never wedge the spool: appends are refused with SpoolFull (nothing
written, the spool stays usable), the pending count stays exact, and appends succeed
again by themselves once space returns. A hook never allocates a segment: the next one
is prepared by the spool's own thread, ahead of need.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from rlm_wificore import spool as spool_mod
from rlm_wificore.spool import Spool, SpoolFull
from stack.servers import wait_for
from tests.test_spool import drain

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def small_disk():
    """Factory: a fresh tmpfs of ``size_mib`` MiB, unmounted at teardown."""
    made: list[Path] = []

    def make(size_mib: int = 8) -> Path:
        d = Path(tempfile.mkdtemp(prefix="wificore-tmpfs-", dir="/tmp"))
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", "tmpfs", str(d)],
                       check=True, capture_output=True)
        made.append(d)
        return d
    yield make
    for d in made:
        subprocess.run(["umount", "-l", str(d)], check=False, capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


def fill(directory: Path, name: str = "filler") -> Path:
    """Write a file until the filesystem is full (to the last byte); its path."""
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 65536, 4096, 512, 1):
            for _ in range(10_000):  # bounded: 10 GiB at most
                try:
                    os.write(fd, b"\xff" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    return path


def append_until_full(sp: Spool, tag: bytes, limit: int = 200_000) -> list[bytes]:
    """Append records until SpoolFull; the records taken (bounded)."""
    taken = []
    for i in range(limit):
        rec = tag + b"-%d-" % i + b"r" * 200
        try:
            sp.append(rec)
        except SpoolFull:
            return taken
        taken.append(rec)
    raise AssertionError(f"{limit} records and the disk is still not full")


def append_until_disk_full(sp: Spool, tag: bytes, limit: int = 200_000) -> list[bytes]:
    """Append until refused for want of room: a refusal while the preparer is merely
    behind (a busy machine) is retried once it has had a few tries."""
    taken: list[bytes] = []
    for _ in range(10_000):
        taken += append_until_full(sp, tag + b"-%d" % len(taken), limit)
        deadline = time.monotonic() + 4 * spool_mod.PREPARE_RETRY_S
        while sp.full and time.monotonic() < deadline:
            time.sleep(0.05)
        if sp.full:
            return taken
    raise AssertionError("never full")


class TestFullDisk:
    def test_refused_while_full_recovers_when_space_returns(self, small_disk):
        """Fill the disk: appends are refused with SpoolFull (not 'mmap closed'), again and
        again; the pending count is exactly what was taken; once the filler is removed,
        appends succeed again without a restart and every record taken comes back once."""
        d = small_disk(8)
        sp = Spool(d / "spool", max_segment_bytes=64 * 1024)
        sp.start_preparer()
        try:
            early = [b"early-%d" % i for i in range(100)]
            for r in early:
                sp.append(r)
            filler = fill(d)
            taken = early + append_until_full(sp, b"a")
            assert sp.full
            for _ in range(50):  # still refused, still usable: never another error
                with pytest.raises(SpoolFull):
                    sp.append(b"refused-" + b"r" * 300)
            assert sp.pending() == sum(4 + len(r) for r in taken)
            filler.unlink()
            wait_for(lambda: not sp.full, 10, "a segment prepared after space returned")
            later = [b"later-%d" % i for i in range(2000)]  # across a few segments
            for r in later:
                sp.append(r)
            assert sp.pending() == sum(4 + len(r) for r in taken + later)
            assert drain(sp) == taken + later
            assert sp.pending() == 0
        finally:
            sp.close()

    def test_forwarding_frees_space_and_wakes_the_preparer(self, small_disk):
        """With the disk full of the spool's own backlog, forwarding it (the checkpoint
        deletes old segments) makes room, and appends resume without help."""
        d = small_disk(4)
        sp = Spool(d / "spool", max_segment_bytes=64 * 1024)
        sp.start_preparer()
        try:
            taken = append_until_disk_full(sp, b"b")
            assert sp.full and len(sp.segments()) > 10
            assert drain(sp) == taken
            wait_for(lambda: not sp.full, 10, "appends accepted after the backlog was forwarded")
            sp.append(b"after")
            assert drain(sp) == [b"after"]
        finally:
            sp.close()

    def test_no_allocation_on_the_append_path(self, small_disk, monkeypatch):
        """With the preparer running, appends across many segments never allocate, map or
        unmap in the appending thread: the preparer thread does it, ahead of need; and every
        record is read back once, in order (no segment lost or replaced on the way)."""
        d = small_disk(16)
        calls: list[str] = []
        real_fallocate = os.posix_fallocate

        def fallocate(fd, off, size):
            calls.append(threading.current_thread().name)
            return real_fallocate(fd, off, size)
        monkeypatch.setattr(spool_mod.os, "posix_fallocate", fallocate)
        sp = Spool(d / "spool", max_segment_bytes=64 * 1024)
        sp.start_preparer()
        try:
            before = len(calls)
            n, records = 0, []
            for _ in range(30):  # 30 segments' worth, waiting for the preparer when needed
                for _ in range(250):
                    rec = b"c-%d" % n + b"x" * 200
                    try:
                        sp.append(rec)
                    except SpoolFull:  # the preparer is behind (a busy machine): try again
                        wait_for(lambda: not sp.full, 10, "the preparer")
                        sp.append(rec)
                    records.append(rec)
                    n += 1
            assert len(sp.segments()) >= 20
            appender = threading.current_thread().name
            assert calls[before:] and appender not in calls[before:], calls
            assert drain(sp) == records
        finally:
            sp.close()


class TestSmallDisk:
    def test_starts_on_a_20_mib_disk(self, small_disk):
        """The default (64 MiB) segments do not fit: segments are sized to the free space."""
        d = small_disk(20)
        sp = Spool(d / "spool")
        sp.start_preparer()
        try:
            sp.append(b"first")
            wait_for(lambda: len(sp.segments()) == 2, 10, "the next segment prepared")
            sizes = [(d / "spool" / f"seg-{s:012d}.wal").stat().st_size for s in sp.segments()]
            assert all(0 < s <= 20 * 1024 * 1024 // spool_mod.SEGMENT_FREE_FRACTION for s in sizes), sizes
            assert drain(sp) == [b"first"]
        finally:
            sp.close()

    def test_starts_on_a_full_disk(self, small_disk):
        """No room at all at start: the spool opens, refuses appends, and takes them as
        soon as space returns."""
        d = small_disk(4)
        (d / "spool").mkdir()
        filler = fill(d)
        sp = Spool(d / "spool")
        sp.start_preparer()
        try:
            with pytest.raises(SpoolFull):
                sp.append(b"too early")
            assert sp.full and sp.pending() == 0
            filler.unlink()
            wait_for(lambda: not sp.full, 10, "the first segment")
            sp.append(b"on time")
            assert drain(sp) == [b"on time"]
        finally:
            sp.close()

    def test_reopen_after_a_full_disk(self, small_disk):
        """A spool closed while the disk was full reopens with its records."""
        d = small_disk(4)
        sp = Spool(d / "spool", max_segment_bytes=64 * 1024)
        sp.start_preparer()
        filler = fill(d)
        taken = append_until_full(sp, b"d")
        sp.close()
        filler.unlink()
        sp = Spool(d / "spool", max_segment_bytes=64 * 1024)
        try:
            sp.append(b"reopened")
            assert drain(sp) == taken + [b"reopened"]
        finally:
            sp.close()


# ----------------------------------------------------------------- radiusd on a tmpfs
def raddb_with(dest: Path, **settings: str) -> Path:
    """A copy of raddb/ whose module block sets ``settings`` (each key must be there)."""
    import re

    from stack.servers import RADDB
    shutil.copytree(RADDB, dest, symlinks=True)
    conf = dest / "mods-available" / "wificore"
    text = conf.read_text()
    for key, value in settings.items():
        text, n = re.subn(rf"(?m)^(\s*{key}\s*=\s*).*$", lambda m, value=value: m.group(1) + value, text)
        assert n == 1, key
    conf.write_text(text)
    return dest


def metric(port: int, name: str) -> float:
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


@pytest.fixture
def small_disk_radiusd(world, small_disk):
    """Factory: a radiusd of its own whose spool_dir is a fresh tmpfs of ``size_mib``."""
    from stack.servers import Radiusd, free_port
    started: list[Radiusd] = []

    def make(size_mib: int = 20, **settings: str) -> tuple[Radiusd, Path]:
        state = world.state / f"smalldisk-{uuid.uuid4().hex[:8]}"
        state.mkdir()
        disk = small_disk(size_mib)
        (state / "spool").symlink_to(disk)
        raddb = raddb_with(state / "raddb", **settings) if settings else None
        r = Radiusd(state, auth_port=free_port(), acct_port=free_port(), shard_map=world.shard_map,
                    redis_url=world.redis.url, metrics_port=free_port(), name="radiusd-smalldisk",
                    **({"raddb": raddb} if raddb else {}))
        started.append(r)
        r.start()
        return r, disk
    yield make
    for r in started:
        r.stop()


class TestRadiusdOnASmallDisk:
    def test_starts_with_the_spool_on_a_20_mib_tmpfs(self, small_disk_radiusd, subscriber):
        """The stock raddb (64 MiB segments at most) starts with its spool on 20 MiB, and
        accounting is answered and spooled there."""
        from tests.conftest import TENANT_A
        from tests.radius import send
        from tests.test_accounting import acct_packet
        r, disk = small_disk_radiusd(20)
        user = subscriber()
        ans = send(r.acct_port, "acct", TENANT_A[2], acct_packet(user, "8b000001", "Start"),
                   source=TENANT_A[1])
        assert ans.code == "Accounting-Response", f"{ans.output}\n{r.log_tail()}"
        assert list(disk.glob("seg-*.wal")), list(disk.iterdir())

    def test_full_disk_unanswered_accounting_logins_kept_then_recovered(
            self, world, small_disk_radiusd, subscriber, shard_conn):
        """Fill the spool's disk: accounting goes unanswered (the NAS retries), PAP logins are
        still accepted and their auth-log records are counted as dropped. Free the space:
        accounting is answered again without a restart, and every answered record reaches
        PostgreSQL through Redis and batch_writer."""
        from stack.servers import BatchWriter
        from tests.conftest import TENANT_A
        from tests.radius import send
        from tests.test_accounting import acct_packet
        from tests.test_batch_writer import writer_env

        prefix = "sd" + uuid.uuid4().hex[:8]
        r, disk = small_disk_radiusd(20, spool_segment_kib="64", key_prefix=prefix)
        writer = BatchWriter(world.state, {**writer_env(world, prefix), "WIFICORE_STREAM_PARTITIONS": "4"},
                             name=f"bw-{prefix}")
        writer.start()
        try:
            user, other = subscriber(), subscriber()  # other logs in (a session limit of 1)
            metrics_port = int(r.env["WIFICORE_METRICS_PORT"])

            def login() -> bool:
                return send(r.auth_port, "auth", TENANT_A[2], {"User-Name": other, "User-Password": "pw-123456"},
                            source=TENANT_A[1]).accepted

            def account(sid: str):
                return send(r.acct_port, "acct", TENANT_A[2],
                            acct_packet(user, sid, "Start", **{"Calling-Station-Id": "C" * 200}),
                            source=TENANT_A[1], timeout_s=1, retries=1)

            assert login(), r.log_tail()
            answered: list[str] = []
            unanswered = None
            for i in range(3000):  # 64 KiB segments of ~0.5 KiB records: a few hundred at most
                fill(disk)  # and keep it full: segments the forwarder frees are taken too
                sid = f"{prefix}-{i:05d}-" + "s" * 200
                if account(sid).code == "Accounting-Response":
                    answered.append(sid)
                else:
                    unanswered = sid
                    break
            assert unanswered is not None, "the disk never filled"
            assert answered, "nothing was answered before the disk was full"
            assert metric(metrics_port, "wificore_spool_full") == 1
            dropped = metric(metrics_port, 'wificore_errors_total{kind="authlog_dropped"}')
            for _ in range(20):  # the first few auth-log records may fit the segment's last bytes
                assert login(), f"a login was refused with the spool's disk full\n{r.log_tail()}"
            assert metric(metrics_port, 'wificore_errors_total{kind="authlog_dropped"}') >= dropped + 10
            assert account(unanswered).code is None, "answered with no room to keep the record"

            (disk / "filler").unlink()
            deadline = time.monotonic() + 30
            while account(unanswered).code != "Accounting-Response":  # the NAS retransmits
                assert time.monotonic() < deadline, f"accounting not answered again\n{r.log_tail()}"
                time.sleep(0.2)
            answered.append(unanswered)
            assert metric(metrics_port, "wificore_spool_full") == 0
            assert login()

            conn = shard_conn(TENANT_A[0])

            def written() -> int:
                return conn.execute("SELECT count(DISTINCT acct_session_id) FROM sessions WHERE tenant_id = %s "
                                    "AND acct_session_id = ANY(%s)", (TENANT_A[0], answered)).fetchone()[0]
            deadline = time.monotonic() + 60
            while written() < len(answered) and time.monotonic() < deadline:
                time.sleep(0.25)
            assert written() == len(answered), f"{written()} of {len(answered)}\n{writer.log_tail()}"
            deadline = time.monotonic() + 30  # the pending metric comes back to 0 with the spool
            while metric(metrics_port, "wificore_spool_pending_bytes") != 0:
                assert time.monotonic() < deadline, metric(metrics_port, "wificore_spool_pending_bytes")
                time.sleep(0.2)
        finally:
            writer.stop()
