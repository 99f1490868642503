"""What a hook flow hands back to hooks.py: an rcode name and the pairs for each list."""

from __future__ import annotations

Pairs = tuple[tuple[str, ...], ...]  # (attr, value) or (attr, op, value)


class Result:
    """What a hook returns: an rcode name and the pairs for each list.

    A plain slotted class, not a frozen dataclass: one is made per request,
    and a frozen dataclass's __init__ costs four times as much.
    """

    __slots__ = ("rcode", "reply", "config", "request", "reason")

    def __init__(self, rcode: str, reply: Pairs = (), config: Pairs = (), request: Pairs = (),
                 reason: str | None = None) -> None:
        self.rcode = rcode  # ok, updated, reject, fail, notfound, noop
        self.reply = reply
        self.config = config
        self.request = request
        self.reason = reason

    def __repr__(self) -> str:
        return (f"Result({self.rcode!r}, reply={self.reply!r}, config={self.config!r}, "
                f"request={self.request!r}, reason={self.reason!r})")


def radius_text(value: str) -> str:
    """A string value as radiusd must be handed it. rlm_python3 parses every value it
    is given as the inside of a double-quoted string (value_data_from_str with '"'):
    a backslash starts an escape (``\\\\``, ``\\n``, ``\\"``, octal ``\\101``), and one at
    the very end made radiusd read past the string (SIGSEGV). So each backslash is
    doubled: the value arrives as typed. For the values an operator or a subscriber
    chose (a NAS secret, a cleartext password, a pool name); fixed and numeric ones
    hold none."""
    return value.replace("\\", "\\\\") if "\\" in value else value
