"""Spool.append on the hot path: nanoseconds per record, one tree against another.

    .venv/bin/python benchmarks/spool_append.py                  # this checkout
    .venv/bin/python benchmarks/spool_append.py --other /tmp/main # and another, alternating

``--other`` is a checkout (for example ``git archive main | tar -x -C /tmp/main``) whose
rlm_wificore/spool.py is timed in the same process, round by round alternating with this
one's, so both see the same machine. Each round appends 200,000 records of 300 bytes to
a fresh spool in a temporary folder (``--dir``), after one untimed pass over the same
pages (their first-touch page faults are the same in both and are not the append).
The machine is shared and noisy: compare medians of many rounds.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import sys
import tempfile
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def load(tree: Path, name: str):
    spec = importlib.util.spec_from_file_location(f"rlm_wificore.{name}", tree / "rlm_wificore" / "spool.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def one_round(module, directory: str, n: int, record: bytes) -> float:
    d = tempfile.mkdtemp(dir=directory)
    try:
        sp = module.Spool(d)
        for _ in range(n):  # touch the pages once
            sp.append(record)
        sp.write_off = 0
        seconds = timeit.Timer("sp.append(record)", globals={"sp": sp, "record": record}).timeit(n)
        sp.close()
        return seconds / n * 1e9
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--other", type=Path, help="another checkout to time against this one")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--records", type=int, default=200_000, help="per round (x 304 B < one 64 MiB segment)")
    p.add_argument("--dir", default="/tmp", help="where the spools go (the filesystem matters)")
    args = p.parse_args()
    import wificore.errors  # noqa: F401  the modules spool.py imports
    import wificore.log  # noqa: F401
    trees = {"this": load(ROOT, "spool_this")}
    if args.other:
        trees["other"] = load(args.other, "spool_other")
    record = b"x" * 300
    times: dict[str, list[float]] = {k: [] for k in trees}
    for _ in range(args.rounds):
        for label, module in trees.items():
            times[label].append(one_round(module, args.dir, args.records, record))
    for label, ts in times.items():
        print(f"{label}: median {statistics.median(ts):.0f} ns, min {min(ts):.0f} ns per append "
              f"({args.rounds} rounds of {args.records})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
