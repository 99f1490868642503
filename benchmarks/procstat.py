"""CPU time of processes, from /proc (the benchmarks' one reader)."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_s(pid: int, tid: int | None = None) -> float:
    """User + system CPU seconds of a process (all its threads), or of its thread ``tid``,
    from /proc/<pid>[/task/<tid>]/stat (in clock ticks, 10 ms). OSError if it is gone."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
