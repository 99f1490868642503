"""The accounting spool: a write-ahead log on local disk.

The accounting hook appends each record here (one ``write(2)``, a few
microseconds) and only then returns ok, so the Accounting-Response goes out
once the record is in the kernel: it survives a ``kill -9`` of radiusd.
Auth-log records take the same path. A thread of the module (outside
rlm_python3's mutex) forwards records to Redis, one script call per batch
(live.lua), and checkpoints how far it got. When Redis is
down the spool simply grows and is drained when Redis returns. After a crash
at most the last batch is sent again; the Redis script and the batch
writer's merge make a replay harmless.

Layout of ``spool_dir``: ``lock`` (flock: one radiusd per spool),
``seg-<n>.wal`` segments of frames ``<u32 length><msgpack record>``, and
``checkpoint`` = ``<segment n> <offset>`` (written by rename).
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
from pathlib import Path

from .errors import ConfigError

_LEN = struct.Struct("<I")
SEGMENT_MAX_BYTES = 64 * 1024 * 1024
MAX_RECORD = 1 << 20


class Spool:
    """Append from the hook (any thread), read and checkpoint from one forwarder."""

    def __init__(self, directory: str | Path, *, fsync: bool = False) -> None:
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
        self.fsync = fsync
        self._mutex = threading.Lock()
        segs = self.segments()
        self.write_seg = segs[-1] if segs else 0
        self._wfd = os.open(self._path(self.write_seg), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.write_off = os.fstat(self._wfd).st_size
        self.read_seg, self.read_off = self._load_checkpoint(segs)
        self.appended = 0
        self._rfile: tuple[int, object] | None = None  # (segment, open file) of the reader

    # ------------------------------------------------------------- layout
    def _path(self, seg: int) -> Path:
        return self.dir / f"seg-{seg:012d}.wal"

    def segments(self) -> list[int]:
        return sorted(int(p.name[4:16]) for p in self.dir.glob("seg-*.wal"))

    def _load_checkpoint(self, segs: list[int]) -> tuple[int, int]:
        try:
            seg, off = (self.dir / "checkpoint").read_text().split()
            return int(seg), int(off)
        except (OSError, ValueError):
            return (segs[0] if segs else self.write_seg), 0

    # -------------------------------------------------------------- write
    def append(self, payload: bytes) -> None:
        """Make one record durable against a crash of this process."""
        frame = _LEN.pack(len(payload)) + payload
        with self._mutex:
            if self.write_off + len(frame) > SEGMENT_MAX_BYTES and self.write_off > 0:
                os.close(self._wfd)
                self.write_seg += 1
                self._wfd = os.open(self._path(self.write_seg),
                                    os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                self.write_off = 0
            os.write(self._wfd, frame)
            if self.fsync:
                os.fdatasync(self._wfd)
            self.write_off += len(frame)
            self.appended += 1

    # --------------------------------------------------------------- read
    def read_batch(self, max_records: int) -> tuple[list[bytes], tuple[int, int]]:
        """Up to ``max_records`` records after the checkpoint, and the position after them."""
        seg, off = self.read_seg, self.read_off
        out: list[bytes] = []
        self.corrupt = 0
        while len(out) < max_records:
            f = self._reader(seg)
            if f is None:
                data = b""
            else:
                f.seek(off)
                data = f.read(min(8 << 20, max(64 << 10, max_records * 512)))
            pos = 0
            while len(out) < max_records and pos + 4 <= len(data):
                (n,) = _LEN.unpack_from(data, pos)
                if n > MAX_RECORD:
                    # A corrupt frame: nothing after it in this segment can be framed.
                    self.corrupt += 1
                    pos = len(data)
                    break
                if pos + 4 + n > len(data):
                    break
                out.append(data[pos + 4:pos + 4 + n])
                pos += 4 + n
            off += pos
            if pos == 0:
                with self._mutex:
                    newer = seg < self.write_seg
                if not newer:
                    break
                seg, off = seg + 1, 0  # this segment is finished
        return out, (seg, off)

    def _reader(self, seg: int):
        """The reader's open file of segment ``seg`` (kept open between batches)."""
        if self._rfile is not None and self._rfile[0] == seg:
            return self._rfile[1]
        if self._rfile is not None:
            self._rfile[1].close()
            self._rfile = None
        try:
            f = open(self._path(seg), "rb")
        except FileNotFoundError:
            return None
        self._rfile = (seg, f)
        return f

    def has_pending(self) -> bool:
        """Anything appended after the checkpoint (cheap: no I/O)."""
        return (self.read_seg, self.read_off) != (self.write_seg, self.write_off)

    def commit(self, position: tuple[int, int]) -> None:
        """Everything before ``position`` reached Redis: checkpoint, drop old segments."""
        seg, off = position
        tmp = self.dir / "checkpoint.tmp"
        tmp.write_text(f"{seg} {off}")
        os.replace(tmp, self.dir / "checkpoint")
        for old in self.segments():
            if old < seg:
                self._path(old).unlink(missing_ok=True)
        self.read_seg, self.read_off = seg, off

    def pending(self) -> int:
        """Bytes not yet forwarded (approximate across segments)."""
        with self._mutex:
            if self.read_seg == self.write_seg:
                return max(0, self.write_off - self.read_off)
            return (self.write_seg - self.read_seg) * SEGMENT_MAX_BYTES + self.write_off - self.read_off

    def close(self) -> None:
        if self._rfile is not None:
            self._rfile[1].close()
            self._rfile = None
        with self._mutex:
            os.close(self._wfd)
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)
