"""The core's boundaries (pure, no servers).

* ``wificore`` (the core) and ``batch_writer`` never import ``rlm_wificore`` (the
  package radiusd loads); ``wificore`` never imports ``radiusd``.
* Importing any ``wificore`` module does no I/O: no file opened, no socket
  connected, no thread or process started. Checked by importing every module in a
  fresh interpreter whose ``open``/``connect``/``Thread.start``/``Popen`` raise;
  third-party libraries are imported before the guards go up, so what is checked is
  the core's own module-level code.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in one file, at any depth."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((node.lineno, name))
    return out


def _offences(package: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, name in _imports(path):
            if name.split(".")[0] in forbidden:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return bad


@pytest.mark.parametrize("package, forbidden", [
    ("wificore", ("rlm_wificore", "radiusd", "batch_writer")),
    ("batch_writer", ("rlm_wificore", "radiusd")),
])
def test_no_import_of_the_radiusd_package(package: str, forbidden: tuple[str, ...]) -> None:
    assert _offences(package, forbidden) == []


def test_the_scan_sees_relative_and_nested_imports(tmp_path: Path) -> None:
    """The scanner itself: a relative import inside a function counts too."""
    pkg = ROOT / "wificore"
    names = dict((n, line) for line, n in _imports(pkg / "admin.py"))
    assert "wificore.errors" in names  # `from .errors import ...`
    assert "wificore.profile" in names


GUARDED_IMPORT = textwrap.dedent("""
    import builtins, importlib, io, os, pkgutil, socket, subprocess, sys, threading
    # Third-party libraries first: what follows checks the core's own code.
    import msgpack, psycopg, structlog, tomllib  # noqa: F401

    class Forbidden(BaseException):
        pass

    def refuse(what):
        def f(*a, **k):
            raise Forbidden(f"{what} at import: {a[:1]!r}")
        return f

    class NoRadiusd:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("radiusd", "rlm_wificore", "batch_writer"):
                raise Forbidden(f"import of {name}")
            return None

    sys.meta_path.insert(0, NoRadiusd())
    builtins.open = io.open = refuse("open")
    os.open = refuse("os.open")
    socket.socket.connect = refuse("connect")
    socket.create_connection = refuse("create_connection")
    threading.Thread.start = refuse("Thread.start")
    subprocess.Popen.__init__ = refuse("Popen")
    import wificore
    names = sorted(m.name for m in pkgutil.walk_packages(wificore.__path__, "wificore."))
    for name in names:
        importlib.import_module(name)
    print(len(names), "modules")
""")


def test_importing_the_core_does_no_io() -> None:
    out = subprocess.run([sys.executable, "-c", GUARDED_IMPORT], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[0]) >= 10  # every module was imported, not none
