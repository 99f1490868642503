"""Which FreeRADIUS build radiusd runs: Debian 12's 3.2.1 (installed system-wide) or
3.2.7 from bookworm-backports, unpacked beside the project in ``.freeradius/3.2.7/``
(never installed: installing it would replace 3.2.1 and start the system service).

One setting chooses: ``WIFICORE_FREERADIUS=3.2.1|3.2.7`` (default :data:`DEFAULT`),
read by bin/stack, the test fixtures and the benchmarks. ``python -m stack.freeradius
fetch`` (run by bin/setup) downloads and unpacks 3.2.7 when it is missing;
``python -m stack.freeradius show`` prints the build in use.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VERSIONS = ("3.2.1", "3.2.7")
#: bin/stack up's build: 3.2.7 carries upstream's BlastRADIUS work (see README.md).
DEFAULT = "3.2.7"
LOCAL = ROOT / ".freeradius"

BACKPORTS = ("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
             "http://deb.debian.org/debian bookworm-backports main\n")
#: The packages unpacked for 3.2.7; their other dependencies are the system libraries
#: that Debian's 3.2.1 (installed by bin/setup first) already pulled in.
PACKAGES = ("freeradius", "freeradius-common", "freeradius-config", "libfreeradius3",
            "freeradius-python3", "freeradius-utils", "freeradius-postgresql")


@dataclasses.dataclass(frozen=True)
class Build:
    """One FreeRADIUS build: where its binary, modules and dictionaries are."""

    version: str
    root: Path  # "/" for the system's build

    @property
    def local(self) -> bool:
        return self.root != Path("/")

    @property
    def binary(self) -> Path:
        return self.root / "usr/sbin/freeradius"

    @property
    def libdir(self) -> Path:
        return self.root / "usr/lib/freeradius"

    @property
    def dictdir(self) -> Path:
        return self.root / "usr/share/freeradius"

    def tool(self, name: str) -> Path:
        """radclient, radtest, … of this build."""
        return self.root / "usr/bin" / name

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: os.environ) plus what this build needs: its libraries
        first on the loader's path and WIFICORE_FREERADIUS_LIBDIR for radiusd.conf."""
        env = dict(os.environ if base is None else base)
        env["WIFICORE_FREERADIUS"] = self.version
        env["WIFICORE_FREERADIUS_LIBDIR"] = str(self.libdir)
        paths = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p and p != str(self.libdir)]
        if self.local:
            paths.insert(0, str(self.libdir))
        if paths:
            env["LD_LIBRARY_PATH"] = ":".join(paths)
        else:
            env.pop("LD_LIBRARY_PATH", None)
        return env

    def command(self, *args: str) -> list[str]:
        """radiusd's command line with this build's dictionaries."""
        return [str(self.binary), "-D", str(self.dictdir), *args]

    def present(self) -> bool:
        return self.binary.exists() and (self.libdir / "rlm_python3.so").exists()


def build(version: str | None = None) -> Build:
    """The build named by ``version``, else by WIFICORE_FREERADIUS, else :data:`DEFAULT`."""
    version = version or os.environ.get("WIFICORE_FREERADIUS") or DEFAULT
    if version not in VERSIONS:
        raise SystemExit(f"WIFICORE_FREERADIUS={version!r}: one of {', '.join(VERSIONS)}")
    if version == "3.2.1":
        return Build(version, Path("/"))
    b = Build(version, LOCAL / version / "root")
    if not b.present():
        raise SystemExit(f"FreeRADIUS {version} is not unpacked in {b.root} (run bin/setup)")
    return b


def fetch(version: str = "3.2.7", dest: Path = LOCAL) -> Path:
    """Download 3.2.7's .debs from bookworm-backports with a private apt configuration
    (the system's sources, lists and cache stay untouched) and unpack them with
    ``dpkg -x`` into ``dest/<version>/root``. Does nothing when already there; a
    failed step raises SystemExit with one sentence (what failed and apt's last words)
    and leaves no half-unpacked tree behind, so running it again starts clean."""
    target = dest / version
    root = target / "root"
    if Build(version, root).present():
        return root
    try:
        return _fetch(version, target, root)
    except subprocess.CalledProcessError as e:
        lines = [ln.strip() for ln in (e.stderr or "").splitlines() if ln.strip()]
        said = next((ln for ln in lines if ln.startswith(("E:", "W:"))), lines[-1] if lines else "")
        step = " ".join([str(a) for a in e.cmd if not str(a).startswith("-")][:2])
        raise SystemExit(f"bin/setup: could not fetch FreeRADIUS {version} from bookworm-backports "
                         f"({step} exited {e.returncode}{': ' + said if said else ''}); check access "
                         f"to deb.debian.org and run bin/setup again") from None


def _fetch(version: str, target: Path, root: Path) -> Path:
    apt = target / "apt"
    for sub in ("lists/partial", "cache/archives/partial", "debs"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    (apt / "sources.list").write_text(BACKPORTS)
    opts = [f"-oDir::Etc::SourceList={apt / 'sources.list'}", "-oDir::Etc::SourceParts=/dev/null",
            f"-oDir::State::Lists={apt / 'lists'}", f"-oDir::Cache={apt / 'cache'}",
            "-qq"]
    if os.geteuid() == 0:  # the download stays in a folder that apt's _apt user cannot write
        opts.append("-oAPT::Sandbox::User=root")
    subprocess.run(["apt-get", *opts, "update"], check=True, capture_output=True, text=True)
    debs = apt / "debs"
    for old in debs.glob("*.deb"):
        old.unlink()
    subprocess.run(["apt-get", *opts, "download", *(f"{p}/bookworm-backports" for p in PACKAGES)],
                   check=True, cwd=debs, capture_output=True, text=True)
    files = sorted(debs.glob("*.deb"))
    for f in files:
        got = subprocess.run(["dpkg-deb", "-f", str(f), "Version"], check=True, capture_output=True,
                             text=True).stdout.strip()
        if not got.startswith(version + "+"):
            raise SystemExit(f"{f.name}: bookworm-backports has {got}, the project expects {version}")
    tmp = Path(tempfile.mkdtemp(prefix="root.", dir=target))
    try:
        for f in files:
            subprocess.run(["dpkg", "-x", str(f), str(tmp)], check=True, capture_output=True, text=True)
        if not Build(version, tmp).present():
            raise SystemExit(f"unpacked {version} lacks {Build(version, tmp).binary} or rlm_python3.so")
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def version_of(b: Build) -> str:
    """The first line of ``freeradius -v`` of the build."""
    out = subprocess.run([str(b.binary), "-v"], env=b.env(), capture_output=True, text=True, timeout=30)
    return (out.stdout.splitlines() or ["?"])[0]


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "show"
    if cmd == "fetch":
        print(f"FreeRADIUS 3.2.7 in {fetch()}")
        return 0
    if cmd == "show":
        b = build()
        print(f"{b.version}: {b.binary} ({version_of(b)})")
        return 0
    print("usage: python -m stack.freeradius [fetch|show]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
