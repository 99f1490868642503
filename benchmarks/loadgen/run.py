"""Build and run the radload RADIUS load generator.

Importable API:

* :func:`build` compiles radload.c / responder.c with gcc into
  ``benchmarks/loadgen/build/`` when the binary is missing or older than
  its sources.
* :func:`prepare_packets` encodes a radclient-format file into RLD1.
* :func:`run_radload` runs radload on an RLD1 file and returns its JSON
  result as a dict; :func:`run` does preparation and run in one call.
* :class:`Responder` starts the trivial C responder on 127.0.0.1 (a free
  port unless one is given) and stops it by PID.

CLI (prints radload's JSON)::

    python -m benchmarks.loadgen.run --packets FILE --secret S \\
        (--target 127.0.0.1:1812 [--acct-port 1813] | --responder) \\
        [--window N | --rate PPS] [--count N] [--duration S] [--expand N]

``--responder`` measures the generator's own ceiling against the trivial
responder instead of a real server.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from benchmarks.loadgen import packets as packets_mod  # noqa: E402
else:
    from . import packets as packets_mod

__all__ = [
    "LOADGEN_DIR",
    "BUILD_DIR",
    "RadloadError",
    "build",
    "prepare_packets",
    "run_radload",
    "run",
    "Responder",
    "main",
]

LOADGEN_DIR = Path(__file__).resolve().parent
BUILD_DIR = LOADGEN_DIR / "build"
_SOURCES = {
    "radload": ("radload.c", "md5.h"),
    "responder": ("responder.c", "md5.h"),
}


class RadloadError(RuntimeError):
    """radload (or the build) failed; the message carries its stderr."""


def build(name: str = "radload", force: bool = False, cc: str | None = None) -> Path:
    """Compile build/<name> from its C source if missing or older than the sources.

    name is "radload" or "responder"; the compiler is cc, $CC or gcc. The
    binary is written to a temporary name (per process and thread) and renamed,
    so concurrent builds never expose a half-written file.
    """
    if name not in _SOURCES:
        raise ValueError(f"unknown program {name!r}")
    sources = [LOADGEN_DIR / s for s in _SOURCES[name]]
    binary = BUILD_DIR / name
    if not force and binary.exists():
        newest = max(s.stat().st_mtime for s in sources)
        if binary.stat().st_mtime >= newest:
            return binary
    compiler = cc or os.environ.get("CC") or "gcc"
    if shutil.which(compiler) is None:
        raise RadloadError(f"C compiler {compiler!r} not found (apt-get install gcc)")
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    tmp = BUILD_DIR / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
    cmd = [compiler, "-O2", "-Wall", "-o", str(tmp), str(sources[0]), "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RadloadError(f"build of {name} failed:\n{proc.stderr}")
    os.replace(tmp, binary)
    return binary


def prepare_packets(source: str | os.PathLike[str], output: str | os.PathLike[str],
                    secret: str, expand: int = 1) -> dict[str, int]:
    """Encode a radclient-format file into an RLD1 file; returns the packet counts."""
    return packets_mod.prepare(source, output, secret, expand)


def _is_rld1(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == packets_mod.MAGIC


def run_radload(rld_file: str | os.PathLike[str], target: str, secret: str, *,
                window: int | None = None, rate: float | None = None,
                count: int | None = None, duration: float = 60.0,
                timeout: float = 2.0, sockets: int | None = None,
                source: str | None = None, acct_port: int | None = None,
                allow_host: str | None = None, io: str | None = None, batch: int | None = None,
                tick_us: int | None = None, poll_us: int | None = None,
                extra_args: Sequence[str] = ()) -> dict[str, Any]:
    """Run radload on an RLD1 file against target ("ADDR:PORT"); return its JSON dict.

    Closed loop with window (default 256), or open loop with rate.
    acct_port sends the Accounting-Requests to that port of the target host.
    Raises RadloadError when radload exits non-zero (e.g. a refused target).
    """
    binary = build("radload")
    cmd = [str(binary), "--file", str(rld_file), "--target", target, "--secret", secret,
           "--duration", repr(float(duration)), "--timeout", repr(float(timeout))]
    if window is not None and rate is not None:
        raise ValueError("give either window or rate")
    if rate is not None:
        cmd += ["--rate", repr(float(rate))]
    elif window is not None:
        cmd += ["--window", str(int(window))]
    optional = {"--count": count, "--sockets": sockets, "--source": source,
                "--acct-port": acct_port, "--allow-host": allow_host, "--io": io,
                "--batch": batch, "--tick-us": tick_us, "--poll-us": poll_us}
    for flag, value in optional.items():
        if value is not None:
            cmd += [flag, str(value)]
    cmd += list(extra_args)
    # radload bounds itself to duration + timeout; the margin covers start-up
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          timeout=float(duration) + float(timeout) + 60.0)
    if proc.returncode != 0:
        raise RadloadError(f"radload exited {proc.returncode}: {proc.stderr.strip()}")
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise RadloadError(f"radload printed no JSON: {proc.stdout!r} {proc.stderr!r}") from exc


def run(packets: str | os.PathLike[str], target: str, secret: str, *,
        expand: int = 1, **kwargs: Any) -> dict[str, Any]:
    """Prepare packets (radclient-format or already RLD1) and run radload on them.

    Keyword arguments go to :func:`run_radload`.
    """
    path = Path(packets)
    if _is_rld1(path):
        return run_radload(path, target, secret, **kwargs)
    with tempfile.TemporaryDirectory(prefix="radload-") as tmp:
        rld = Path(tmp) / "packets.rld"
        prepare_packets(path, rld, secret, expand)
        return run_radload(rld, target, secret, **kwargs)


class Responder:
    """The trivial C RADIUS responder on a loopback address, as a context manager.

    Accepts every Access-Request and answers every Accounting-Request,
    signed with secret. port=0 picks a free port (see .port once started).
    stop() ends the process by its PID and returns its counters.
    """

    def __init__(self, secret: str, port: int = 0, bind: str = "127.0.0.1",
                 max_seconds: float = 600.0, reject_every: int = 0,
                 drop_every: int = 0) -> None:
        self.secret = secret
        self.bind = bind
        self.port = port
        self.max_seconds = max_seconds
        self.reject_every = reject_every
        self.drop_every = drop_every
        self.proc: subprocess.Popen[str] | None = None
        self.stats: dict[str, Any] | None = None

    @property
    def target(self) -> str:
        """The "ADDR:PORT" string to give radload."""
        return f"{self.bind}:{self.port}"

    @property
    def pid(self) -> int | None:
        """PID of the running responder, or None."""
        return self.proc.pid if self.proc else None

    def start(self) -> Responder:
        """Start the responder and wait (at most 10 s) until it reports its port."""
        binary = build("responder")
        cmd = [str(binary), "--secret", self.secret, "--bind", self.bind,
               "--port", str(self.port), "--max-seconds", repr(float(self.max_seconds))]
        if self.reject_every:
            cmd += ["--reject-every", str(self.reject_every)]
        if self.drop_every:
            cmd += ["--drop-every", str(self.drop_every)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 10.0)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("PORT "):
            self.stop()
            raise RadloadError(f"responder did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def stop(self) -> dict[str, Any] | None:
        """Stop the responder by PID (SIGTERM, then SIGKILL) and return its counters."""
        proc = self.proc
        if proc is None:
            return self.stats
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        err = proc.stderr.read() if proc.stderr else ""
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
        for line in reversed(err.splitlines()):
            if line.startswith("{"):
                try:
                    self.stats = json.loads(line)
                except json.JSONDecodeError:
                    pass
                break
        self.proc = None
        return self.stats

    def __enter__(self) -> Responder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """CLI: prepare packets, run radload, print its JSON result."""
    ap = argparse.ArgumentParser(description="Run the radload RADIUS load generator.")
    ap.add_argument("--packets", required=True,
                    help="radclient-format packet file, or an RLD1 file")
    ap.add_argument("--secret", required=True, help="RADIUS shared secret")
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--target", help="server ADDR:PORT (loopback unless --allow-host)")
    where.add_argument("--responder", action="store_true",
                       help="start the trivial responder on 127.0.0.1 and target it")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--window", type=int, help="closed loop: requests in flight (default 256)")
    mode.add_argument("--rate", type=float, help="open loop: packets per second")
    ap.add_argument("--count", type=int, help="packets to send (default: the file once)")
    ap.add_argument("--duration", type=float, default=60.0, help="max seconds of sending")
    ap.add_argument("--timeout", type=float, default=2.0, help="response timeout, seconds")
    ap.add_argument("--expand", type=int, default=1, help="packets per template (%%{n})")
    ap.add_argument("--sockets", type=int)
    ap.add_argument("--source", help="bind the sockets to this local address")
    ap.add_argument("--acct-port", type=int,
                    help="send Accounting-Requests to this port of the target host")
    ap.add_argument("--allow-host", help="allow this exact non-loopback target address")
    ap.add_argument("--io", choices=("mmsg", "plain"))
    ap.add_argument("--batch", type=int)
    ap.add_argument("--tick-us", type=int)
    args = ap.parse_args(argv)

    kwargs: dict[str, Any] = dict(
        expand=args.expand, window=args.window, rate=args.rate, count=args.count,
        duration=args.duration, timeout=args.timeout, sockets=args.sockets,
        source=args.source, acct_port=args.acct_port, allow_host=args.allow_host,
        io=args.io, batch=args.batch, tick_us=args.tick_us)
    try:
        if args.responder:
            with Responder(args.secret, max_seconds=args.duration + args.timeout + 30) as resp:
                result = run(args.packets, resp.target, args.secret, **kwargs)
                time.sleep(0.05)
            result["responder"] = resp.stats
        else:
            result = run(args.packets, args.target, args.secret, **kwargs)
    except (RadloadError, packets_mod.PacketFileError, OSError, ValueError) as exc:
        print(f"run: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
