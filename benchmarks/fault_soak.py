"""Fault soak of the accounting path, through radiusd: nothing answered is lost,
doubled, dead-lettered or miscounted.

A stack of its own (free loopback ports, a temporary folder; every process
stopped by its PID): Redis, two shards, one radiusd, one batch_writer. NAS
senders (raw UDP, one socket per NAS address, retransmitting every 2 s like a
NAS) send Start, Interims and Stop for ``--sessions`` sessions over
``--duration`` s at a steady rate. Meanwhile:

* shard2 is stopped for ``--outage`` s (``--outage-mode stop``: pg_ctl stop;
  ``freeze``: SIGSTOP of its postmaster and every backend, a hung shard), and
  the writer is killed ``--restarts`` times during it, SIGKILL and SIGTERM in
  turn, and restarted;
* with ``--redis-outage S``, Redis is stopped for S s later in the run and
  radiusd is SIGKILLed (and restarted) during it: the records it answered are
  in its spool.

After the senders finish, the spools drain and the writer has acknowledged
everything, it checks, per session: the row is present once (``doubled``
otherwise), with the counters of the last answered record and, if the Stop
was answered, its stop time and terminate cause (``sessions_exact``); ``lost`` = sessions with an
answered record and no row; ``dead_letters`` = the dead-letter stream's
length; ``redis_mismatches`` = subscribers whose Redis usage (octets,
time_s) differs from the sum of their rows in PostgreSQL. It prints JSON:
``{"fault_soak": {...}, "details": {...}}``.

    .venv/bin/python benchmarks/fault_soak.py --sessions 4000 --duration 60 --outage 40 --restarts 6
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import socket
import struct
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import redis as redis_lib  # noqa: E402

from rlm_wificore.spool import drained as spool_drained  # noqa: E402
from stack.local import temporary_stack  # noqa: E402
from stack.servers import BatchWriter, cluster_pids, signal_all  # noqa: E402
from wificore import livestate  # noqa: E402
from wificore.keys import Keys  # noqa: E402

# (tenant, NAS source address, secret): tenant 1 on shard1, 600 on shard2.
NASES = [(1, "127.0.0.1", "soak-a"), (600, "127.0.0.3", "soak-c")]
STEP_S = 60
RETRY_S = 2.0
GIVE_UP_S = 120.0
SOCKETS_PER_NAS = 4
CODE_ACCT_REQUEST, CODE_ACCT_RESPONSE = 4, 5
STOP_CAUSE = (1, "User-Request")  # Acct-Terminate-Cause of each Stop, and its name as stored


def _attr(t: int, value: bytes) -> bytes:
    return struct.pack("!BB", t, len(value) + 2) + value


def _int(t: int, n: int) -> bytes:
    return _attr(t, struct.pack("!I", n & 0xFFFFFFFF))


def acct_request(ident: int, secret: bytes, *, user: str, sid: str, status: int, ts: int, t: int,
                 inp: int, out: int, cause: int | None) -> bytes:
    attrs = (_attr(1, user.encode()) + _int(40, status) + _attr(44, sid.encode()) + _int(46, t)
             + _int(42, inp) + _int(52, inp >> 32) + _int(43, out) + _int(53, out >> 32)
             + _int(5, 1) + _int(55, ts) + _attr(31, b"AA-BB-CC-00-00-01"))
    if cause is not None:
        attrs += _int(49, cause)
    length = 20 + len(attrs)
    head = struct.pack("!BBH", CODE_ACCT_REQUEST, ident, length)
    auth = hashlib.md5(head + b"\0" * 16 + attrs + secret).digest()
    return head + auth + attrs


class Plan:
    """Every session's records (step-major, as many concurrent sessions send them)."""

    def __init__(self, sessions: int, interims: int, run_id: str, base_ts: int) -> None:
        self.sessions = []
        for i in range(sessions):
            tenant, ip, secret = NASES[i % len(NASES)]
            self.sessions.append({"i": i, "tenant": tenant, "ip": ip, "secret": secret.encode(),
                                  "user": f"{run_id}-u{i % max(1, sessions // 3)}", "sid": f"{run_id}-{i:06d}",
                                  "in_step": 1000 + 7 * i + (5 << 32 if i % 10 == 0 else 0),
                                  "out_step": 5000 + 13 * i, "start": base_ts + i % 600})
        self.records = []  # (session index, k, status)
        for k in range(interims + 2):
            status = 1 if k == 0 else 2 if k == interims + 1 else 3
            for s in self.sessions:
                self.records.append((s["i"], k, status))

    def values(self, i: int, k: int) -> dict[str, int]:
        s = self.sessions[i]
        return {"t": k * STEP_S, "inp": k * s["in_step"], "out": k * s["out_step"], "ts": s["start"] + k * STEP_S}


class Senders:
    """One UDP socket per NAS address and slot; retransmits until answered or GIVE_UP_S."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.socks: dict[tuple[str, int], socket.socket] = {}
        self.free: dict[tuple[str, int], list[int]] = {}
        self.pending: dict[tuple[str, int, int], list[Any]] = {}  # (ip, slot, id) -> [pkt, first, last, rec]
        for _t, ip, _s in NASES:
            for slot in range(SOCKETS_PER_NAS):
                so = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                so.bind((ip, 0))
                so.setblocking(False)
                self.socks[(ip, slot)] = so
                self.free[(ip, slot)] = list(range(256))
        self.answered: list[int] = []
        self.given_up = 0

    def send(self, ip: str, build, rec: int) -> bool:
        for slot in range(SOCKETS_PER_NAS):
            ids = self.free[(ip, slot)]
            if ids:
                ident = ids.pop()
                pkt = build(ident)
                now = time.monotonic()
                self.pending[(ip, slot, ident)] = [pkt, now, now, rec]
                self.socks[(ip, slot)].sendto(pkt, ("127.0.0.1", self.port))
                return True
        return False

    def poll(self) -> None:
        for (ip, slot), so in self.socks.items():
            while True:
                try:
                    data = so.recv(4096)
                except BlockingIOError:
                    break
                if len(data) >= 20 and data[0] == CODE_ACCT_RESPONSE:
                    entry = self.pending.pop((ip, slot, data[1]), None)
                    if entry is not None:
                        self.answered.append(entry[3])
                        self.free[(ip, slot)].append(data[1])
        now = time.monotonic()
        for (ip, slot, ident), entry in list(self.pending.items()):
            if now - entry[1] > GIVE_UP_S:
                del self.pending[(ip, slot, ident)]
                self.free[(ip, slot)].append(ident)
                self.given_up += 1
            elif now - entry[2] > RETRY_S:
                entry[2] = now
                self.socks[(ip, slot)].sendto(entry[0], ("127.0.0.1", self.port))

    def close(self) -> None:
        for so in self.socks.values():
            so.close()


def _remaining(r: redis_lib.Redis, keys: Keys, partitions: int) -> int:
    total = 0
    for p in range(partitions):
        name = keys.stream(p)
        if not r.exists(name):
            continue
        groups = r.xinfo_groups(name)
        g = next((g for g in groups if g["name"] == b"writers"), None)
        if g is None:
            total += r.xlen(name)
            continue
        lag = g.get("lag")
        if lag is None:
            lag = len(r.xrange(name, b"(" + g["last-delivered-id"], "+"))
        total += int(lag) + int(g["pending"])
    return total


def _spool_empty(stack) -> bool:
    return spool_drained(stack.radiusd.state / "spool")


def _progress(pg, run_id: str) -> int:
    """Sum of session_time_s of this run's rows on one shard (grows while it takes records)."""
    with psycopg.connect(pg.dsn(), autocommit=True, connect_timeout=5) as conn:
        return int(conn.execute("SELECT coalesce(sum(session_time_s), 0) FROM sessions"
                                " WHERE acct_session_id LIKE %s", (run_id + "-%",)).fetchone()[0])


def run(args: argparse.Namespace) -> dict[str, Any]:
    run_id = "fs" + uuid.uuid4().hex[:6]
    with temporary_stack("wificore-soak-") as stack:
        for tenant, ip, secret in NASES:
            stack.admin("tenant", "add", "--id", str(tenant), "--name", f"soak {tenant}")
            stack.admin("nas", "add", "--tenant", str(tenant), "--name", f"soak-{tenant}", "--ip", ip,
                        "--secret", secret, "--vendor", "generic")
        stack.radiusd.start()
        r = redis_lib.Redis.from_url(stack.redis.url)
        keys, partitions = Keys("wc"), 4
        wenv = {**stack.writer_env(), "WIFICORE_WRITER_METRICS_PORT": "0",
                "WIFICORE_WRITER_BACKOFF_MAX_S": "2", "WIFICORE_WRITER_SHARD_DEADLINE_S": "5"}

        def new_writer() -> BatchWriter:
            w = BatchWriter(stack.state, wenv)
            w.start()
            return w

        plan = Plan(args.sessions, args.interims, run_id, int(time.time()))
        senders = Senders(stack.radiusd.acct_port)
        writer = new_writer()
        frozen: list[int] = []
        stopped = False
        events: list[str] = []
        progress: dict[str, int] = {}
        term_codes: list[int | None] = []
        kills = 0
        t0 = time.monotonic()
        outage_at, outage_end = args.outage_at, args.outage_at + args.outage
        kill_times = [outage_at + args.outage * (k + 1) / (args.restarts + 1) for k in range(args.restarts)]
        redis_at = outage_end + 5 if args.redis_outage else None
        rate = len(plan.records) / args.duration
        sent = 0
        try:
            while sent < len(plan.records) or senders.pending:
                el = time.monotonic() - t0
                if el > args.duration + GIVE_UP_S + 60:
                    break
                while sent < len(plan.records) and sent < rate * el:
                    i, k, status = plan.records[sent]
                    s, v = plan.sessions[i], plan.values(i, k)

                    def build(ident: int, s=s, v=v, status=status) -> bytes:
                        return acct_request(ident, s["secret"], user=s["user"], sid=s["sid"], status=status,
                                            cause=STOP_CAUSE[0] if status == 2 else None, **v)
                    if not senders.send(s["ip"], build, sent):
                        break  # every id in flight: wait for answers
                    sent += 1
                senders.poll()
                if not frozen and not stopped and outage_at <= el < outage_end:
                    if args.outage_mode == "freeze":
                        frozen = cluster_pids(stack.pg[1].pid)
                        signal_all(frozen, signal.SIGSTOP)
                    else:
                        stack.pg[1].stop()
                        stopped = True
                    events.append(f"{el:.1f}s shard2 {args.outage_mode}")
                    progress["shard1_at_outage_start"] = _progress(stack.pg[0], run_id)
                if kill_times and el >= kill_times[0]:
                    kill_times.pop(0)
                    sig = signal.SIGKILL if kills % 2 == 0 else signal.SIGTERM
                    kills += 1
                    code = writer.stop(sig, timeout_s=30)
                    if sig == signal.SIGTERM:
                        term_codes.append(code)
                    events.append(f"{el:.1f}s writer {sig.name} -> {code}")
                    writer = new_writer()
                if (frozen or stopped) and el >= outage_end:
                    progress["shard1_at_outage_end"] = _progress(stack.pg[0], run_id)
                    if frozen:
                        signal_all(list(reversed(frozen)), signal.SIGCONT)
                        frozen = []
                    else:
                        stack.pg[1].start()
                        stopped = False
                    events.append(f"{el:.1f}s shard2 back")
                if redis_at is not None and el >= redis_at:
                    stack.redis.stop()
                    events.append(f"{el:.1f}s redis stopped")
                    time.sleep(min(2.0, args.redis_outage / 2))
                    code = stack.radiusd.stop(signal.SIGKILL)
                    stack.radiusd.start()
                    events.append(f"{time.monotonic() - t0:.1f}s radiusd SIGKILL -> {code}, restarted")
                    time.sleep(max(0.0, args.redis_outage - 2.0))
                    stack.redis.start()
                    events.append(f"{time.monotonic() - t0:.1f}s redis back")
                    redis_at = None
                time.sleep(0.001)
        finally:
            if frozen:
                signal_all(list(reversed(frozen)), signal.SIGCONT)
            if stopped:
                stack.pg[1].start()
            senders.close()
        # Drain: radiusd's spool into Redis, the streams into the shards.
        deadline = time.monotonic() + args.drain_timeout
        while time.monotonic() < deadline and not (_spool_empty(stack) and _remaining(r, keys, partitions) == 0):
            time.sleep(0.5)
        time.sleep(2)
        while time.monotonic() < deadline and _remaining(r, keys, partitions) != 0:
            time.sleep(0.5)
        term_codes.append(writer.stop(signal.SIGTERM, timeout_s=30))
        result = _verify(stack, r, keys, plan, senders, run_id, events, term_codes)
        result["details"]["session_time_written"] = progress
        return result


def _verify(stack, r, keys: Keys, plan: Plan, senders: Senders, run_id: str, events: list[str],
            term_codes: list[int | None]) -> dict[str, Any]:
    last: dict[int, int] = {}
    stop_answered: set[int] = set()
    for rec in senders.answered:
        i, k, status = plan.records[rec]
        last[i] = max(last.get(i, -1), k)
        if status == 2:
            stop_answered.add(i)
    rows: dict[str, list[tuple]] = {}
    for pg in stack.pg:
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            for row in conn.execute(
                    "SELECT acct_session_id, username, input_octets, output_octets, session_time_s,"
                    " extract(epoch FROM stopped_at)::float8, close_reason, terminate_cause FROM sessions"
                    " WHERE acct_session_id LIKE %s", (run_id + "-%",)):
                rows.setdefault(row[0], []).append(row)
    exact = lost = doubled = 0
    bad: list[str] = []
    for i, k in last.items():
        s = plan.sessions[i]
        got = rows.get(s["sid"], [])
        if not got:
            lost += 1
            continue
        if len(got) > 1:
            doubled += 1
            continue
        v = plan.values(i, k)
        row = got[0]
        ok = (row[2], row[3], row[4]) == (v["inp"], v["out"], v["t"])
        if i in stop_answered:
            ok = (ok and row[6] == "stop" and row[5] is not None and abs(row[5] - v["ts"]) < 1.0
                  and row[7] == STOP_CAUSE[1])
        exact += ok
        if not ok and len(bad) < 5:
            bad.append(f"{s['sid']}: row {row[2:]} expected {v} stop={i in stop_answered}")
    # Redis usage against PostgreSQL, per subscriber.
    users: dict[tuple[int, str], list[int]] = {}
    for sid_rows in rows.values():
        for row in sid_rows:
            i = int(row[0].rsplit("-", 1)[1])
            key = (plan.sessions[i]["tenant"], row[1])
            tot = users.setdefault(key, [0, 0])
            tot[0] += row[2] + row[3]
            tot[1] += row[4]
    mismatches = 0
    for (tenant, user), (octets, time_s) in users.items():
        h = livestate.usage(r, keys, tenant, user)
        if h.get("octets", 0) != octets or h.get("time_s", 0) != time_s:
            mismatches += 1
    result = {"answered": len(senders.answered), "sessions_expected": len(last), "sessions_exact": exact,
              "lost": lost, "doubled": doubled, "dead_letters": int(r.xlen(keys.dead_letter)),
              "redis_mismatches": mismatches}
    return {"fault_soak": result,
            "details": {"records": len(plan.records), "unanswered": senders.given_up + len(senders.pending),
                        "events": events, "writer_sigterm_exit_codes": term_codes, "examples": bad}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=4000)
    p.add_argument("--interims", type=int, default=8)
    p.add_argument("--duration", type=float, default=60.0, help="seconds over which the records are sent")
    p.add_argument("--outage-at", type=float, default=5.0)
    p.add_argument("--outage", type=float, default=40.0, help="seconds shard2 is down")
    p.add_argument("--outage-mode", choices=("stop", "freeze"), default="stop")
    p.add_argument("--restarts", type=int, default=6, help="writer kills during the outage (SIGKILL/SIGTERM)")
    p.add_argument("--redis-outage", type=float, default=0.0,
                   help="seconds Redis is down after the shard outage, radiusd SIGKILLed during it (0: none)")
    p.add_argument("--drain-timeout", type=float, default=180.0)
    p.add_argument("--output", help="also write the JSON here")
    args = p.parse_args(argv)
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    f = result["fault_soak"]
    good = (f["lost"] == f["doubled"] == f["dead_letters"] == f["redis_mismatches"] == 0
            and f["sessions_exact"] == f["sessions_expected"])
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
