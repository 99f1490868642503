"""The spool: a write-ahead log on local disk, written through a shared mmap.

The accounting hook appends each record here and only then returns ok, so
the Accounting-Response goes out once the record is in the kernel's page
cache: it survives a ``kill -9`` of radiusd. Auth-log records take the same
path. Appending is a memory copy into a ``MAP_SHARED`` mapping: no system
call, so the hook never lets go of the interpreter lock (a ``write(2)``
would, and then wait to get it back from the module's own threads). A thread
of the module (outside rlm_python3's mutex) forwards the spool to Redis as
raw bytes, one script call per span of up to ``FORWARD_BYTES`` (live.lua
splits the frames, so the forwarder spends no Python time per record), and
checkpoints how far the script got. When Redis
is down the spool simply grows and drains when Redis returns. After a crash
at most the last batch is sent again; the Redis script and the batch
writer's merge make a replay harmless. Like Redis's ``appendfsync
everysec``, this protects against process crashes, not against power loss.

Layout of ``spool_dir``: ``lock`` (flock: one radiusd per spool),
``seg-<n>.wal`` segments of ``SEGMENT_BYTES`` (allocated up front) holding frames
``<u32 length><payload>``, and ``checkpoint`` = ``<segment> <offset>`` (one
fixed-width line, rewritten in place). The length is stored after the
payload, so a frame is either whole or absent; length 0 = nothing written
yet, ``END`` = the rest of the segment is unused.
"""

from __future__ import annotations

import dataclasses
import fcntl
import mmap
import os
import struct
import threading
from pathlib import Path

from wificore.errors import ConfigError

_LEN = struct.Struct("<I")
SEGMENT_BYTES = 64 * 1024 * 1024
MAX_RECORD = 1 << 20
END = 0xFFFFFFFF


@dataclasses.dataclass(frozen=True, slots=True)
class Span:
    """Bytes of one segment from ``off``: whole frames, maybe a partial one at the end."""

    seg: int
    off: int
    data: bytes
    sealed: bool  # the writer has moved on to a later segment


def _segment_path(directory: Path, seg: int) -> Path:
    return directory / f"seg-{seg:012d}.wal"


def _segments(directory: Path) -> list[int]:
    return sorted(int(p.name[4:16]) for p in directory.glob("seg-*.wal"))


def _checkpoint(directory: Path, segs: list[int]) -> tuple[int, int]:
    """The position the forwarder has reached; the start of the oldest segment if none."""
    try:
        seg, off = (directory / "checkpoint").read_text().split()
        return int(seg), int(off)
    except (OSError, ValueError):
        return (segs[0] if segs else 0), 0


class Spool:
    """Append from the hooks; read and checkpoint from one forwarder thread."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(f"wificore.spool_dir: {self.dir}: {exc.strerror}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise ConfigError(f"wificore.spool_dir: {self.dir} is in use by another radiusd "
                              "(give each radiusd process its own spool_dir)") from None
        self._mutex = threading.Lock()
        segs = self.segments()
        self.write_seg = segs[-1] if segs else 0
        self._wmap = self._map(self.write_seg)
        # Where the last writer stopped: the first frame not (wholly) written.
        self.write_off = self._scan_end(self._wmap)
        self.read_seg, self.read_off = _checkpoint(self.dir, segs)
        self._checkpoint_fd = os.open(self.dir / "checkpoint", os.O_RDWR | os.O_CREAT, 0o600)
        self._rmap: tuple[int, mmap.mmap] | None = None
        self.corrupt = 0

    # ------------------------------------------------------------- layout
    def _path(self, seg: int) -> Path:
        return _segment_path(self.dir, seg)

    def segments(self) -> list[int]:
        return _segments(self.dir)

    def _map(self, seg: int) -> mmap.mmap:
        fd = os.open(self._path(seg), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            # Reserve the blocks now: a full disk then fails here, with an error,
            # instead of as SIGBUS on a later store into a sparse mapping.
            os.posix_fallocate(fd, 0, SEGMENT_BYTES)
            return mmap.mmap(fd, SEGMENT_BYTES, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)

    @staticmethod
    def _scan_end(m: mmap.mmap) -> int:
        off = 0
        while off + 4 <= SEGMENT_BYTES:
            (n,) = _LEN.unpack_from(m, off)
            if n == 0 or n == END or n > MAX_RECORD or off + 4 + n > SEGMENT_BYTES:
                break
            off += 4 + n
        return off

    # -------------------------------------------------------------- write
    def append(self, payload: bytes) -> None:
        """Put one record where a crash of this process cannot take it."""
        n = len(payload)
        if n == 0 or n > MAX_RECORD:
            raise ValueError(f"spool record of {n} bytes")
        with self._mutex:
            off = self.write_off
            if off + 4 + n > SEGMENT_BYTES:
                if off + 4 <= SEGMENT_BYTES:
                    self._wmap[off:off + 4] = _LEN.pack(END)
                self._wmap.close()
                self.write_seg += 1
                self._wmap = self._map(self.write_seg)
                off = 0
            m = self._wmap
            m[off + 4:off + 4 + n] = payload
            m[off:off + 4] = _LEN.pack(n)  # the frame exists once its length does
            self.write_off = off + 4 + n

    # --------------------------------------------------------------- read
    def has_pending(self) -> bool:
        """Anything appended after the checkpoint (cheap: no I/O)."""
        return (self.read_seg, self.read_off) != (self.write_seg, self.write_off)

    def _reader(self, seg: int) -> mmap.mmap | None:
        if self._rmap is not None and self._rmap[0] == seg:
            return self._rmap[1]
        if self._rmap is not None:
            self._rmap[1].close()
            self._rmap = None
        try:
            fd = os.open(self._path(seg), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            if os.fstat(fd).st_size < SEGMENT_BYTES:
                return None
            m = mmap.mmap(fd, SEGMENT_BYTES, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)
        self._rmap = (seg, m)
        return m

    def read_span(self, max_bytes: int, position: tuple[int, int] | None = None) -> Span:
        """The bytes after the checkpoint (or ``position``), up to ``max_bytes``, from
        one segment; empty and not sealed when there is nothing.

        A span may end inside a frame; whoever reads it (live.lua, in Redis)
        takes the whole frames at its start and commits how far it got with
        :meth:`advance`. A length of 0 (never written) or ``END`` ends the
        frames of a segment, and so does a length over ``MAX_RECORD`` (corrupt).
        """
        write_seg, write_off = self.write_seg, self.write_off  # a consistent snapshot (GIL)
        seg, off = position or (self.read_seg, self.read_off)
        while True:
            m = self._reader(seg) if (seg, off) != (write_seg, write_off) else None
            if m is None:
                if seg < write_seg:  # a finished segment that is gone: nothing left in it
                    seg, off = seg + 1, 0
                    continue
                return Span(seg, off, b"", False)
            limit = write_off if seg == write_seg else SEGMENT_BYTES
            return Span(seg, off, m[off:min(limit, off + max_bytes)], seg < write_seg)

    @staticmethod
    def after(span: Span, consumed: int, ended: bool) -> tuple[int, int]:
        """The position after ``consumed`` bytes of ``span``: the next segment once a
        sealed one is used up (an end mark, or less room left than a frame needs)."""
        if span.sealed and (ended or span.off + consumed + 4 > SEGMENT_BYTES):
            return span.seg + 1, 0
        return span.seg, span.off + consumed

    def advance(self, span: Span, consumed: int, ended: bool) -> None:
        """Checkpoint past ``consumed`` bytes of ``span`` (see :meth:`after`)."""
        position = self.after(span, consumed, ended)
        if position != (self.read_seg, self.read_off):
            self.commit(position)

    def commit(self, position: tuple[int, int]) -> None:
        """Everything before ``position`` reached Redis: checkpoint, drop old segments."""
        seg, off = position
        # One pwrite of a fixed-width line over the last one: a crash of this
        # process cannot tear it (the kernel holds the page), and it costs one
        # system call per batch instead of a write, a rename and a scan.
        os.pwrite(self._checkpoint_fd, b"%012d %012d\n" % (seg, off), 0)
        if seg != self.read_seg:
            if self._rmap is not None and self._rmap[0] < seg:
                self._rmap[1].close()
                self._rmap = None
            for old in self.segments():
                if old < seg:
                    self._path(old).unlink(missing_ok=True)
        self.read_seg, self.read_off = seg, off

    def pending(self) -> int:
        """Bytes appended but not yet forwarded."""
        return (self.write_seg - self.read_seg) * SEGMENT_BYTES + self.write_off - self.read_off

    def close(self) -> None:
        if self._rmap is not None:
            self._rmap[1].close()
            self._rmap = None
        with self._mutex:
            self._wmap.close()
        os.close(self._checkpoint_fd)
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)


def drained(directory: str | Path) -> bool:
    """Whether everything appended to the spool in ``directory`` has been forwarded.

    Reads only the checkpoint and the length word after it, so it is safe beside the
    radiusd that owns the spool (for tools and benchmarks; the forwarder has its own view).
    """
    d = Path(directory)
    segs = _segments(d)
    seg, off = _checkpoint(d, segs)
    if any(s > seg for s in segs):
        return False  # the writer has moved on to a later segment
    try:
        with open(_segment_path(d, seg), "rb") as f:
            f.seek(off)
            word = f.read(4)
    except FileNotFoundError:
        return True
    return len(word) < 4 or _LEN.unpack(word)[0] == 0
