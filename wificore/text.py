"""Text from packets, made safe for line-oriented output. No I/O, no imports.

Values a NAS or a user sends (User-Name, Calling-Station-Id, ...) are stored
as they came; every text output (logs, the admin CLI's tables and CSV) runs
them through :func:`printable`, so that a CR or LF in a packet can never
forge a line.
"""

from __future__ import annotations

import re

_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\\]")


def _escape(m: re.Match) -> str:
    ch = m.group()
    if ch == "\\":
        return "\\\\"
    return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"


def printable(value: str) -> str:
    """``value`` with control characters (C0, DEL, C1, the Unicode line and paragraph
    separators) written as Python escapes and backslashes doubled; unchanged (the same
    object) when there is none, which is the common case."""
    if _UNSAFE.search(value) is None:
        return value
    return _UNSAFE.sub(_escape, value)
