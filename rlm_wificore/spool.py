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
checkpoints how far Redis surely has them (settled: see background.py, a
Redis with ``appendfsync everysec`` may answer before it writes). When Redis
is down the spool simply grows and drains when Redis returns. After a crash
the records forwarded but not settled (a few seconds) are sent again; the
Redis script and the batch writer's merge make a replay harmless. It
protects against process crashes, not against power loss.

The next segment is allocated and mapped ahead of need by the spool's own
thread (:meth:`Spool.start_preparer`), so a hook never allocates, maps or
unmaps: when the current segment is full it switches to the prepared one
(a few attribute stores). Each segment is sized to the free space
(``free / SEGMENT_FREE_FRACTION``, between ``MIN_SEGMENT_BYTES`` and
``SEGMENT_BYTES``), so a small disk is used in small steps. When the disk is
full there is no prepared segment: :meth:`Spool.append` raises
:class:`SpoolFull` (nothing written, the spool stays usable), the caller
answers accordingly (accounting: no response, the NAS retries; auth-log: the
record is counted as dropped), and the thread keeps trying, so appends
succeed again as soon as space returns (the forwarder deleting forwarded
segments wakes it at once).

Layout of ``spool_dir``: ``lock`` (flock: one radiusd per spool),
``seg-<n>.wal`` segments (allocated in full before they get that name;
sizes may differ) holding frames ``<u32 length><payload>``, and
``checkpoint`` = ``<segment> <offset>`` (one fixed-width line, rewritten in
place). The length word's low 21 bits are the length (``LEN_MASK``), its high 11 bits
the record's bucket tag (``wificore.keys``: bucket + 1, ``TAG_ALL`` for every bucket, 0
in frames from before 2026-12-01), so the forwarder groups frames by Redis Cluster slot
without decoding them. The length is stored after the payload, so a frame is either whole
or absent; length 0 = nothing written yet, ``END`` = the rest of the segment
is unused. A prepared segment not yet written to is all zeros.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import mmap
import os
import struct
import threading
from pathlib import Path

from wificore.errors import ConfigError, StoreUnavailable
from wificore.log import get_logger

log = get_logger("rlm_wificore.spool")

_LEN = struct.Struct("<I")
#: The largest segment, used while the disk has plenty of room.
SEGMENT_BYTES = 64 * 1024 * 1024
#: The smallest segment allocated (it holds a record of MAX_RECORD).
MIN_SEGMENT_BYTES = (1 << 20) + 4096
#: Free space a new segment leaves to everything else on the disk (logs, the checkpoint).
RESERVE_BYTES = 256 * 1024
#: A new segment takes at most this fraction (1/n) of the free space.
SEGMENT_FREE_FRACTION = 8
MAX_RECORD = 1 << 20
END = 0xFFFFFFFF
#: The length bits of a frame's length word; the bits above are its bucket tag.
LEN_MASK = (1 << 21) - 1
TAG_SHIFT = 21
#: How often the preparer retries while the disk is full (a commit wakes it sooner).
PREPARE_RETRY_S = 0.5
_PAGE = mmap.PAGESIZE


class SpoolFull(StoreUnavailable):
    """No room on the spool's disk for the record: nothing was written."""


@dataclasses.dataclass(frozen=True, slots=True)
class Span:
    """Bytes of one segment from ``off``: whole frames, maybe a partial one at the end."""

    seg: int
    off: int
    data: bytes
    sealed: bool  # the writer has moved on to a later segment
    size: int = 0  # the segment's length in bytes


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


def _scan_end(m: mmap.mmap) -> int:
    """The offset of the first frame not (wholly) written."""
    size = len(m)
    off = 0
    while off + 4 <= size:
        (w,) = _LEN.unpack_from(m, off)
        n = w & LEN_MASK
        if w == END or n == 0 or n > MAX_RECORD or off + 4 + n > size:
            break
        off += 4 + n
    return off


class Spool:
    """Append from the hooks; read and checkpoint from one forwarder thread; segments
    allocated ahead by a preparer thread (:meth:`start_preparer`)."""

    def __init__(self, directory: str | Path, *, max_segment_bytes: int | None = None) -> None:
        self.dir = Path(directory)
        self.max_segment_bytes = max_segment_bytes  # None: SEGMENT_BYTES
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
        for tmp in self.dir.glob("*.tmp"):  # a preparation cut short by a crash
            tmp.unlink(missing_ok=True)
        segs = self.segments()
        # Bytes written into each segment before the current one (pending()); segments
        # left from before a restart count whole until the preparer has scanned them.
        self._used: dict[int, int] = {}
        self._unscanned: list[int] = []
        self._wmap: mmap.mmap | None = None
        self._wsize = 0  # 0: no segment to write into (the disk was full)
        self.write_seg, self.write_off = (segs[-1] if segs else 0), 0
        while segs:
            seg = segs.pop()
            m = self._open_map(seg)
            if m is not None:
                self.write_seg, self._wmap, self._wsize = seg, m, len(m)
                # Where the last writer stopped: the first frame not (wholly) written.
                self.write_off = _scan_end(m)
                break
        for seg in segs:
            self._used[seg] = self._file_size(seg)
            self._unscanned.append(seg)
        self._next: tuple[int, mmap.mmap] | None = None  # the prepared segment
        self._retired: list[mmap.mmap] = []  # full segments, unmapped by the preparer
        self.read_seg, self.read_off = _checkpoint(self.dir, self.segments())
        self.settled = (self.read_seg, self.read_off)  # the checkpoint (on disk)
        if self._wmap is None:  # never write where the checkpoint says data was read
            self.write_seg = max(self.write_seg, self.read_seg + (1 if self.read_off else 0))
        self._checkpoint_fd = os.open(self.dir / "checkpoint", os.O_RDWR | os.O_CREAT, 0o600)
        try:  # take the checkpoint's block now, not on a full disk later
            if os.fstat(self._checkpoint_fd).st_size == 0:
                os.pwrite(self._checkpoint_fd, self._checkpoint_line(*self.settled), 0)
        except OSError:
            pass
        self._rmap: tuple[int, mmap.mmap] | None = None
        self.corrupt = 0
        self.refused = 0  # appends refused for want of room (SpoolFull)
        self._refusing = False
        self.prepare_failures = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._preparer: threading.Thread | None = None
        if self._wmap is None and self._prepare_quietly():  # the first segment, if there is room
            self._switch()

    # ------------------------------------------------------------- layout
    def _path(self, seg: int) -> Path:
        return _segment_path(self.dir, seg)

    def segments(self) -> list[int]:
        return _segments(self.dir)

    def _file_size(self, seg: int) -> int:
        try:
            return self._path(seg).stat().st_size
        except OSError:
            return 0

    def _open_map(self, seg: int) -> mmap.mmap | None:
        """Map an existing segment for writing; None (and removed) if it is empty."""
        fd = os.open(self._path(seg), os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if size < 8:  # an allocation that failed before this version named files last
                self._path(seg).unlink(missing_ok=True)
                return None
            return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)

    def segment_size(self) -> int:
        """The size of the next segment: a fraction of the free space, within bounds."""
        st = os.statvfs(self.dir)
        free = st.f_bavail * st.f_frsize
        largest = self.max_segment_bytes or SEGMENT_BYTES
        smallest = min(largest, MIN_SEGMENT_BYTES)
        size = min(largest, max(smallest, free // SEGMENT_FREE_FRACTION), free - RESERVE_BYTES)
        size = size - size % _PAGE if size >= _PAGE else size
        if size < smallest:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return size

    def prepare(self, *, mutex_held: bool = False) -> bool:
        """Allocate and map the next segment unless one is ready; False if there is no
        need, OSError if there is no room. Runs on the preparer thread, never in a hook
        while that thread runs."""
        if mutex_held:
            seg = self._next_seg()
        else:
            with self._mutex:  # the writer's position, not half-way through a switch
                seg = self._next_seg()
        # The mutex is not held while allocating (appends go on): no switch can happen
        # until _next is set, so ``seg`` stays the right number.
        return seg is not None and self._allocate(seg)

    def _next_seg(self) -> int | None:
        if self._next is not None:
            return None
        return self.write_seg + 1 if self._wmap is not None else self.write_seg

    def _allocate(self, seg: int) -> bool:
        if self._checkpoint_fd >= 0 and os.fstat(self._checkpoint_fd).st_size == 0:
            # The checkpoint's block first (the disk was full at start).
            os.pwrite(self._checkpoint_fd, self._checkpoint_line(*self.settled), 0)
        size = self.segment_size()
        tmp = self.dir / f"seg-{seg:012d}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            # Reserve every block now: a full disk fails here, with an error, instead
            # of as SIGBUS on a later store into a sparse mapping.
            os.posix_fallocate(fd, 0, size)
            m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        if self._path(seg).exists():  # never replace a segment (cannot happen; be sure)
            m.close()
            tmp.unlink(missing_ok=True)
            raise OSError(errno.EEXIST, f"spool segment {seg} exists")
        os.rename(tmp, self._path(seg))  # a .wal file is always allocated in full
        self._next = (seg, m)
        return True

    def _prepare_quietly(self, mutex_held: bool = False) -> bool:
        try:
            return self.prepare(mutex_held=mutex_held)
        except OSError as exc:
            self.prepare_failures += 1
            if self.prepare_failures == 1 or self.prepare_failures % 120 == 0:
                log.warning("spool_no_room", spool_dir=str(self.dir), error=exc.strerror,
                            failures=self.prepare_failures)
            return False

    # --------------------------------------------------------- the preparer
    def start_preparer(self) -> None:
        """Start the thread that keeps the next segment ready (radiusd: engine.start)."""
        if self._preparer is None:
            self._preparer = threading.Thread(target=self._prepare_loop, name="wificore-spool-prep",
                                              daemon=True)
            self._preparer.start()

    def _prepare_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                while self._retired:
                    self._retired.pop().close()
                if self._next is None:
                    self._prepare_quietly()
                with self._mutex:  # no segment at all yet (a full disk at start): adopt it
                    if self._wmap is None and self._next is not None:
                        self._switch()
                if self._unscanned:
                    self._scan_old(self._unscanned.pop(0))
            except Exception as exc:  # logged and retried: this thread must not die
                self.prepare_failures += 1
                log.error("spool_prepare_failed", error=repr(exc))
            self._wake.wait(PREPARE_RETRY_S if self._next is None or self._unscanned else 5.0)

    def _scan_old(self, seg: int) -> None:
        """Count the bytes written into a segment left from before a restart."""
        try:
            with open(self._path(seg), "rb") as f:
                if os.fstat(f.fileno()).st_size >= 8:
                    with mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED, mmap.PROT_READ) as m:
                        used = _scan_end(m)
                    if seg in self._used:
                        self._used[seg] = used
        except OSError:
            pass

    # -------------------------------------------------------------- write
    def append(self, payload: bytes, tag: int = 0) -> None:
        """Put one record where a crash of this process cannot take it; :class:`SpoolFull`
        (nothing written) if there is no room for it. ``tag``: its bucket tag (see above)."""
        n = len(payload)
        if n == 0 or n > MAX_RECORD:
            raise ValueError(f"spool record of {n} bytes")
        with self._mutex:
            off = self.write_off
            if off + 4 + n > self._wsize:
                off = self._switch(n)
            m = self._wmap
            assert m is not None  # _switch mapped one, or raised SpoolFull
            m[off + 4:off + 4 + n] = payload
            m[off:off + 4] = _LEN.pack(n | tag << TAG_SHIFT)  # the frame exists once its length does
            self.write_off = off + 4 + n

    def _switch(self, n: int = 0) -> int:
        """Move on to the prepared segment (under the mutex); the offset to write at."""
        nxt = self._next
        if nxt is None and self._preparer is None:
            self._prepare_quietly(mutex_held=True)  # no preparer thread (tools, tests): here
            nxt = self._next
        if nxt is None:
            self.refused += 1
            self._refusing = True
            self._wake.set()
            raise SpoolFull(f"spool {self.dir}: no room for another segment")
        old = self._wmap
        if old is not None:
            off = self.write_off
            if off + 4 <= self._wsize:
                old[off:off + 4] = _LEN.pack(END)
            self._used[self.write_seg] = off
            self._retired.append(old)  # unmapped off the hook path
        seg, m = nxt
        self._next = None
        self._refusing = False
        self._wmap, self._wsize = m, len(m)
        self.write_off = 0
        self.write_seg = seg
        if self._preparer is not None:
            self._wake.set()
        else:
            while self._retired:
                self._retired.pop().close()
        if 4 + n > len(m):
            raise SpoolFull(f"spool {self.dir}: a record of {n} bytes is larger than a segment")
        return 0

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
            size = os.fstat(fd).st_size
            if size < 8:
                return None
            m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)
        self._rmap = (seg, m)
        return m

    def read_span(self, max_bytes: int, position: tuple[int, int] | None = None) -> Span:
        """The bytes after the read position (or ``position``), up to ``max_bytes``, from
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
            size = len(m)
            limit = write_off if seg == write_seg else size
            return Span(seg, off, m[off:min(limit, off + max_bytes)], seg < write_seg, size)

    @staticmethod
    def after(span: Span, consumed: int, ended: bool) -> tuple[int, int]:
        """The position after ``consumed`` bytes of ``span``: the next segment once a
        sealed one is used up (an end mark, or less room left than a frame needs)."""
        if span.sealed and (ended or span.off + consumed + 4 > span.size):
            return span.seg + 1, 0
        return span.seg, span.off + consumed

    def advance(self, span: Span, consumed: int, ended: bool, *, settle: bool = True) -> None:
        """Read on past ``consumed`` bytes of ``span`` (see :meth:`after`); ``settle``: and
        checkpoint there (else :meth:`settle` does, later)."""
        position = self.after(span, consumed, ended)
        if not settle:
            self.read_seg, self.read_off = position
        elif position != (self.read_seg, self.read_off) or position != self.settled:
            self.commit(position)

    @property
    def position(self) -> tuple[int, int]:
        """Where the next span starts (forwarded up to here)."""
        return self.read_seg, self.read_off

    def rewind(self, position: tuple[int, int]) -> None:
        """Read again from ``position`` (not before the checkpoint: older segments are gone):
        Redis lost records it had answered for."""
        if position < self.settled:
            raise ValueError(f"spool {self.dir}: {position} is before the checkpoint {self.settled}")
        self.read_seg, self.read_off = position

    @staticmethod
    def _checkpoint_line(seg: int, off: int) -> bytes:
        return b"%012d %012d\n" % (seg, off)

    def commit(self, position: tuple[int, int]) -> None:
        """Everything before ``position`` reached Redis for good: read on and checkpoint there."""
        self.settle(position)
        self.read_seg, self.read_off = position

    def settle(self, position: tuple[int, int]) -> None:
        """Everything before ``position`` is in Redis for good: checkpoint (a restart reads
        on from there), drop the segments before it. The read position may be ahead."""
        seg, off = position
        # One pwrite of a fixed-width line over the last one: a crash of this
        # process cannot tear it (the kernel holds the page), and it costs one
        # system call per batch instead of a write, a rename and a scan.
        os.pwrite(self._checkpoint_fd, self._checkpoint_line(seg, off), 0)
        if seg != self.settled[0]:
            if self._rmap is not None and self._rmap[0] < seg:
                self._rmap[1].close()
                self._rmap = None
            freed = False
            for old in self.segments():
                if old < seg:
                    self._path(old).unlink(missing_ok=True)
                    freed = True
            for old in list(self._used):  # list(): atomic against the hook's inserts
                if old < seg:
                    self._used.pop(old, None)
            if freed and self._next is None:
                self._wake.set()  # room again: prepare the next segment now
        self.settled = (seg, off)

    def pending(self) -> int:
        """Bytes appended but not yet forwarded."""
        write_seg, write_off = self.write_seg, self.write_off
        seg, off = self.read_seg, self.read_off
        if seg >= write_seg:
            return max(0, write_off - off) if seg == write_seg else 0
        used = self._used
        return sum(used.get(s, 0) for s in range(seg, write_seg)) - off + write_off

    @property
    def full(self) -> bool:
        """The last append was refused and no segment has been prepared since."""
        return self._refusing and self._next is None

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._preparer is not None:
            self._preparer.join(timeout=5)
            self._preparer = None
        if self._rmap is not None:
            self._rmap[1].close()
            self._rmap = None
        with self._mutex:
            if self._wmap is not None:
                self._wmap.close()
                self._wmap = None
            self._wsize = 0
            if self._next is not None:  # prepared, never written: give the space back
                seg, m = self._next
                self._next = None
                m.close()
                self._path(seg).unlink(missing_ok=True)
            while self._retired:
                self._retired.pop().close()
        os.close(self._checkpoint_fd)
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)


def _word_at(path: Path, off: int) -> int | None:
    try:
        with open(path, "rb") as f:
            f.seek(off)
            word = f.read(4)
    except FileNotFoundError:
        return None
    return _LEN.unpack(word)[0] if len(word) == 4 else None


def drained(directory: str | Path) -> bool:
    """Whether everything appended to the spool in ``directory`` has been forwarded and
    settled (its checkpoint: a few seconds after the forwarder sent it, see background.py).

    Reads only the checkpoint and the length word after it (and the first word of each
    later segment: a prepared one is still empty), so it is safe beside the radiusd that
    owns the spool (for tools and benchmarks; the forwarder has its own view).
    """
    d = Path(directory)
    segs = _segments(d)
    seg, off = _checkpoint(d, segs)
    for s in segs:
        if s < seg:
            continue
        word = _word_at(_segment_path(d, s), off if s == seg else 0)
        if word is not None and word not in (0, END) and 0 < (word & LEN_MASK) <= MAX_RECORD:
            return False
    return True
