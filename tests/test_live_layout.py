"""live.lua against the one definition of the record fields (wificore.wire) and of the
Redis key layout (wificore.keys). Pure: the script is read and parsed, not run.

live.lua reads version 2 bodies by position and builds key names from the prefix
itself (a Redis script cannot call Python). These tests fail as soon as either side
changes without the other: a field moved in ``wire.ACCT_FIELDS`` / ``AUTH_FIELDS``,
a key renamed in ``Keys``, or a position or key literal edited in live.lua.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from wificore import wire
from wificore.keys import Keys

LUA = (Path(__file__).resolve().parent.parent / "rlm_wificore" / "live.lua").read_text()
CODE = "\n".join(line.split("--", 1)[0] for line in LUA.splitlines())  # comments dropped

# ------------------------------------------------------------------ field positions


def _fields_function() -> str:
    m = re.search(r"local function fields\(rec\)\n(.*?)\nend\n", CODE, re.S)
    assert m, "live.lua: local function fields(rec) not found"
    return m.group(1)


def _positions(kind: str) -> dict[str, int]:
    """name -> 1-based position of each field that fields() reads for ``kind``."""
    body = _fields_function()
    auth = re.search(r"if rec\[2\] == '(\w+)' then return (\{.*?\}) end", body)
    assert auth, "live.lua: the auth branch of fields() not found"
    assert auth.group(1) == wire.KIND_AUTH
    table = auth.group(2) if kind == wire.KIND_AUTH else body[auth.end():]
    acct = re.findall(r"(\w+)\s*=\s*v\[(\d+)\]", table)
    assert acct, f"live.lua: no {kind} field positions found"
    return {name: int(pos) for name, pos in acct}


@pytest.mark.parametrize("kind", wire.KINDS)
def test_field_positions_are_those_of_wire(kind: str) -> None:
    positions = _positions(kind)
    expected = {name: wire.FIELDS[kind].index(name) + 1 for name in positions if name in wire.FIELDS[kind]}
    assert positions == expected, f"live.lua reads {kind} fields at other positions than wire.{kind.upper()}_FIELDS"


def test_every_field_the_script_uses_is_read() -> None:
    """Each ``f.<name>`` in the script is a field fields() provides (or ``invalid``, which
    only version 1 maps carry): a field dropped from fields() would read nil silently."""
    used = set(re.findall(r"\bf\.(\w+)", CODE))
    provided = set(_positions(wire.KIND_ACCT)) | set(_positions(wire.KIND_AUTH))
    assert used - provided == {"invalid"}
    assert {"tenant_id", "status", "session_key", "username", "input_octets"} <= used


def test_kind_and_version_literals_are_those_of_wire() -> None:
    assert wire.VERSION == 2 and wire.MAP_VERSION == 1
    assert "(rec[1] ~= 1 and rec[1] ~= 2)" in CODE and "if rec[1] == 1 then return v end" in CODE
    assert set(re.findall(r"rec\[2\] == '(\w+)'", CODE)) == {wire.KIND_AUTH}


# ------------------------------------------------------------------ key names
# A tiny evaluator for the script's key expressions: concatenations (``..``) of string
# literals, local variables and a few calls, with each record value replaced by a
# marker; the results are compared with what Keys builds from the same markers.
P, TENANT, USER, SKEY, NAS, BUCKET = "PFX", "<tenant>", "<user>", "<skey>", "<nas>", "<bucket>"
PLAN, FORWARDER = "<plan>", "<forwarder>"
CALLS = {
    "int(tonumber(f.tenant_id) or 0)": TENANT, "int(f.nas_id)": NAS,
    "string.sub(m, 1, sep - 1)": USER, "string.sub(m, sep + 1)": SKEY,
    "string.match(skey, '^([^:]*)')": SKEY, "int(plan_id)": PLAN,
    "f.session_key": SKEY, "f.username": USER, "prefix": P, "ARGV[1]": P, "int(nas)": NAS,
    "int(b)": BUCKET, "int(nb)": BUCKET, "ARGV[11]": FORWARDER,
}
# dead_of(tag) returns the bucket's dead-letter stream (checked below).
CALLS["dead_of(tag)"] = f"{P}:{{b{BUCKET}}}:dead"


class _BucketKeys(Keys):
    """Keys with the bucket a marker (the script takes it from the frame, not a hash)."""

    def bucket(self, tenant_id: int, username: str) -> int:
        return BUCKET  # type: ignore[return-value]


def _split(expr: str, sep: str) -> list[str]:
    """Split at ``sep`` outside parentheses, brackets and quotes."""
    parts, depth, quote, cur, i = [], 0, None, "", 0
    while i < len(expr):
        c = expr[i]
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and expr.startswith(sep, i):
            parts.append(cur.strip())
            cur, i = "", i + len(sep)
            continue
        cur += c
        i += 1
    parts.append(cur.strip())
    return parts


def _eval(expr: str, env: dict[str, str]) -> str | None:
    out = ""
    for part in _split(expr, ".."):
        if re.fullmatch(r"'[^']*'", part):
            out += part[1:-1]
        elif part in env:
            out += env[part]
        elif part in CALLS:
            out += CALLS[part]
        else:
            return None  # not a key expression
    return out


def _script_keys() -> set[str]:
    """Every key (or channel) that a redis.call of the script names."""
    env: dict[str, str] = {}
    keys: set[str] = set()
    for line in CODE.splitlines():
        m = re.match(r"\s*local ([\w, ]+?) = (.+)$", line)
        if m and not m.group(2).startswith("function"):
            names = [n.strip() for n in m.group(1).split(",")]
            exprs = _split(m.group(2), ",")
            for name, expr in zip(names, exprs, strict=False):  # Lua allows fewer values
                value = _eval(expr, env)
                if value is not None:
                    env[name] = value
                elif name in env:
                    del env[name]
        for call in re.finditer(r"redis\.call\((.*)\)", line):
            args = _split(call.group(1), ",")
            if len(args) >= 2:
                value = _eval(args[1], env)
                assert value is not None, f"live.lua: cannot read the key of {line.strip()!r}"
                keys.add(value)
    return keys


def test_every_key_the_script_touches_is_one_keys_builds() -> None:
    k = _BucketKeys(P)
    b: int = BUCKET  # type: ignore[assignment]
    layout = {
        k.subscriber(TENANT, USER): "subscriber", k.nas_epoch(b, TENANT): "nas_epoch",
        k.stream(b): "stream", k.dead_letter_of(b): "dead_letter",
        k.invalidation_channel: "invalidation_channel",
        k.profile(TENANT, USER): "profile", k.plan(TENANT, PLAN): "plan",
        k.interim(TENANT, USER): "interim", k.interim_max(b, TENANT): "interim_max",
        k.nas_skew(b, TENANT): "nas_skew", k.forwarded(FORWARDER): "forwarder's mark",
        # A session of the layout before 2026-12-01, moved at its first record (one Redis).
        k.legacy(TENANT, "sess", SKEY): "legacy session", k.legacy(TENANT, "live", USER): "legacy live",
        k.legacy(TENANT, "use", USER): "legacy usage",
        # The layout before 2026-12-02, moved into the subscriber's hash at the next record.
        k.prior_live(TENANT, USER): "prior live", k.prior_usage(TENANT, USER): "prior usage",
        k.prior_session(TENANT, USER, SKEY): "prior session", k.prior_nas_live(b, TENANT, NAS): "prior nas_live",
    }
    script = _script_keys()
    assert script - set(layout) == set(), "live.lua builds keys that wificore.keys.Keys does not"
    assert set(layout) - script == set(), "keys live.lua should touch are not built as Keys builds them"


def test_dead_of_returns_the_buckets_dead_letter_stream() -> None:
    m = re.search(r"local function dead_of\(tag\)\n(.*?)\nend\n", CODE, re.S)
    assert m, "live.lua: local function dead_of(tag) not found"
    ret = re.search(r"return (.+)", m.group(1))
    assert ret and _eval(ret.group(1), {}) == CALLS["dead_of(tag)"] == _BucketKeys(P).dead_letter_of(BUCKET)  # type: ignore[arg-type]


def test_the_evaluator_reads_what_it_should() -> None:
    """The evaluator itself: a key expression of the script's shape, and one that is not."""
    env = {"tp": f"{P}:{{{TENANT}}}:"}
    assert _eval("tp .. 'live:' .. f.username", env) == f"{P}:{{{TENANT}}}:live:{USER}"
    assert _eval("prefix .. ':{b' .. int(b) .. '}:stream'", env) == f"{P}:{{b{BUCKET}}}:stream"
    assert _eval("math.max(0, ni - li)", env) is None
