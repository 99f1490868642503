#!/usr/bin/env python3
"""Benchmark of batch_writer: records merged per second across the shards.

Pre-fills the stream partitions with a mix of 10% Start, 80% Interim and 10%
Stop records over many sessions of tenants on every shard of the map, then
runs the writer in this process (the same ``Writer.run_once()`` the service
loops on) until every record is acknowledged or ``--duration`` is over, checks
the result in the shards and prints one JSON object:

    records_per_s      records acknowledged per second of writing
    batch_p50_ms/p99   time of one ``run_once()`` that handled entries
    verified           every session is present once, stopped, with exact counters

    .venv/bin/python benchmarks/writer_bench.py --redis redis://127.0.0.1:16379/0 \\
        --shard-map .state/shards.toml --records 200000 --duration 120
    .venv/bin/python benchmarks/writer_bench.py --smoke --redis ... --shard-map ...

The tenants used are the last few of each shard's range; they are created if
missing (``tenants`` table, through the shard's ``dsn``). Streams get a fresh
key prefix per run and are deleted afterwards, with the run's session rows
(unless ``--keep``). Bounded: ``--records`` and ``--duration``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import redis  # noqa: E402

from wificore import wire  # noqa: E402
from wificore.keys import Keys  # noqa: E402
from wificore.shardmap import ShardMap  # noqa: E402

GIGA = 2**32
STEP_S = 60


def partition_of(tenant_id: int, partitions: int) -> int:
    """The stream partition of a tenant's accounting records (see wificore/wire.py)."""
    return tenant_id % partitions


def acct(tenant_id: int, key: str, status: str, ts: float, *, session_time_s: int = 0, in_octets: int = 0,
         out_octets: int = 0, nas_id: int = 1, username: str = "", interim_s: int = STEP_S,
         terminate_cause: str | None = None, **extra: Any) -> dict[str, Any]:
    """The fields of one ``acct`` record, every field of the wire format present."""
    fields = {
        "tenant_id": tenant_id, "nas_id": nas_id, "session_key": key, "acct_session_id": key[-16:],
        "username": username or f"u-{key[-12:]}", "status": status, "event_ts": ts, "arrival_ts": ts + 0.01,
        "session_time_s": session_time_s, "input_octets": in_octets, "output_octets": out_octets,
        "input_packets": in_octets // 1000, "output_packets": out_octets // 1000,
        "calling_station_id": "AA-BB-CC-00-00-01", "framed_ip": "10.0.0.1",
        "terminate_cause": terminate_cause, "nas_port": "1", "interim_s": interim_s,
        "record_id": secrets.token_hex(8),
    }
    fields.update(extra)
    return fields


def workload(tenants: list[int], sessions: int, *, run_id: str, base_ts: float, interims: int = 8,
             nas_id: int = 1, auth_every: int = 0,
             ) -> tuple[list[tuple[int, bytes]], dict[tuple[int, str], dict]]:
    """Records in arrival order, and each session's expected final row.

    Session i has a Start, ``interims`` Interims and a Stop, one STEP_S apart
    (8 interims: 10% / 80% / 10%). Its counters grow by a per-session step;
    every tenth session is past 4 GiB (Gigawords). Records go out step by step
    across all sessions, as many concurrent sessions would send them.
    With ``auth_every`` = k, every k-th record is followed by an auth-log record.
    """
    expected: dict[tuple[int, str], dict] = {}
    plans = []
    for i in range(sessions):
        tenant = tenants[i % len(tenants)]
        key = f"{run_id}-{i:07d}"
        in_step = 1000 + 7 * i + (5 * GIGA if i % 10 == 0 else 0)
        out_step = 5000 + 13 * i
        start_ts = round(base_ts + (i % 997) * 0.01, 3)
        plans.append((tenant, key, in_step, out_step, start_ts))
        last = interims + 1
        expected[(tenant, key)] = {"input_octets": last * in_step, "output_octets": last * out_step,
                                   "session_time_s": last * STEP_S, "started_at": start_ts,
                                   "stopped_at": start_ts + last * STEP_S}
    out: list[tuple[int, bytes]] = []
    n = 0
    for k in range(interims + 2):
        status = "start" if k == 0 else "stop" if k == interims + 1 else "interim"
        for tenant, key, in_step, out_step, start_ts in plans:
            rec = acct(tenant, key, status, start_ts + k * STEP_S, session_time_s=k * STEP_S,
                       in_octets=k * in_step, out_octets=k * out_step, nas_id=nas_id,
                       terminate_cause="User-Request" if status == "stop" else None)
            out.append((tenant, wire.pack(wire.KIND_ACCT, rec)))
            n += 1
            if auth_every and n % auth_every == 0:
                out.append((tenant, wire.pack(wire.KIND_AUTH, {
                    "tenant_id": tenant, "nas_id": nas_id, "ts": start_ts + k * STEP_S,
                    "event_id": f"{run_id}-a{n}", "username": f"u-{key[-12:]}",
                    "calling_station_id": None, "result": "accept", "reason": "ok", "method": "pap"})))
    return out, expected


def push(client: redis.Redis, prefix: str, records: list[tuple[int, bytes]], partitions: int,
         chunk: int = 2000) -> None:
    """XADD every record to its tenant's partition, pipelined."""
    keys = Keys(prefix)
    for i in range(0, len(records), chunk):
        pipe = client.pipeline(transaction=False)
        for tenant, payload in records[i:i + chunk]:
            pipe.xadd(keys.stream(partition_of(tenant, partitions)), {"d": payload})
        pipe.execute()


def ensure_tenants(shard_map: ShardMap, per_shard: int) -> list[int]:
    """The last ``per_shard`` tenant ids of each shard's range, created if missing."""
    tenants = []
    for shard in shard_map:
        ids = [t for t in range(shard.last_tenant, shard.last_tenant - per_shard, -1)
               if t >= shard.first_tenant]
        with psycopg.connect(shard.dsn, autocommit=True) as conn:
            for t in ids:
                conn.execute("INSERT INTO tenants (tenant_id, name) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                             (t, f"bench tenant {t}"))
        tenants += ids
    return tenants


def verify(shard_map: ShardMap, run_id: str, expected: dict[tuple[int, str], dict]) -> tuple[bool, str]:
    """Every expected session present once, stopped by its Stop, with exact counters."""
    found: dict[tuple[int, str], tuple] = {}
    for shard in shard_map:
        with psycopg.connect(shard.dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT tenant_id, session_key, input_octets, output_octets, session_time_s, close_reason,"
                " extract(epoch FROM stopped_at)::float8 FROM sessions WHERE session_key LIKE %s",
                (run_id + "-%",)).fetchall()
        for r in rows:
            if (r[0], r[1]) in found:
                return False, f"session {r[1]} of tenant {r[0]} appears twice"
            found[(r[0], r[1])] = r[2:]
    if len(found) != len(expected):
        return False, f"{len(found)} sessions found, {len(expected)} expected"
    for key, exp in expected.items():
        got = found.get(key)
        if got is None:
            return False, f"session {key} missing"
        if (got[0], got[1], got[2], got[3]) != (exp["input_octets"], exp["output_octets"],
                                                exp["session_time_s"], "stop") \
                or abs(got[4] - exp["stopped_at"]) > 0.001:
            return False, f"session {key}: {got} != {exp}"
    return True, "ok"


def backend_cpu(shard_map: ShardMap) -> dict[int, float]:
    """CPU seconds (user + system) of the writer's backends, when the shards run on this host."""
    out: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for shard in shard_map:
        try:
            with psycopg.connect(shard.dsn, autocommit=True, connect_timeout=5) as conn:
                pids = [r[0] for r in conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = 'wificore-batch-writer'")]
        except psycopg.Error:
            continue
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # a remote shard: not measurable from here
            out[pid] = (int(fields[11]) + int(fields[12])) / tick
    return out


def cleanup(client: redis.Redis, shard_map: ShardMap, prefix: str, partitions: int, run_id: str,
            keep: bool) -> None:
    keys = Keys(prefix)
    client.delete(*[keys.stream(p) for p in range(partitions)], keys.dead_letter)
    if keep:
        return
    for shard in shard_map:
        with psycopg.connect(shard.dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM sessions WHERE session_key LIKE %s", (run_id + "-%",))
            conn.execute("DELETE FROM auth_log WHERE event_id LIKE %s", (run_id + "-%",))


def remaining(client: redis.Redis, prefix: str, partitions: int, group: str = "writers") -> int:
    """Entries the group has not acknowledged yet (never delivered + pending)."""
    keys, total = Keys(prefix), 0
    for p in range(partitions):
        info = next((g for g in client.xinfo_groups(keys.stream(p)) if g["name"] == group.encode()), None)
        if info is None or info.get("lag") is None:
            return -1  # not known yet
        total += int(info["lag"]) + int(info["pending"])
    return total


def _writer_env(args: argparse.Namespace, prefix: str, consumer: str) -> dict[str, str]:
    return {"WIFICORE_SHARD_MAP": args.shard_map, "WIFICORE_REDIS_URL": args.redis,
            "WIFICORE_KEY_PREFIX": prefix, "WIFICORE_STREAM_PARTITIONS": str(args.partitions),
            "WIFICORE_WRITER_CONSUMER": consumer, "WIFICORE_WRITER_BATCH_MAX_ROWS": str(args.batch_max_rows),
            "WIFICORE_WRITER_BATCH_MAX_AGE_MS": "50", "WIFICORE_WRITER_STALE_INTERVAL_S": "3600",
            "WIFICORE_WRITER_PIPELINE": str(args.pipeline)}


def _child(args: argparse.Namespace, prefix: str, consumer: str, ready: Any, go: Any, stop: Any,
           results: Any) -> None:
    """One writer process of a --writers N run: loop run_once() until told to stop."""
    from batch_writer.config import load
    from batch_writer.worker import Writer, tune_gc

    settings, cfg = load(_writer_env(args, prefix, consumer))
    tune_gc()  # as the service does
    writer = Writer(settings, cfg)
    try:
        writer.setup()
        for w in writer.shards.values():
            w._connection()  # connect before the clock starts
        ready.release()
        go.wait(60)
        cpu0 = time.process_time()
        deadline = time.monotonic() + args.duration
        while not stop.is_set() and time.monotonic() < deadline:
            writer.run_once()
        writer.flush()
        cpu = time.process_time() - cpu0
    finally:
        writer.close()
    results.put((writer.stats.acked, list(writer.stats.recent_batch_seconds), cpu,
                 sum(writer.stats.dead_letters.values())))


def _drive_processes(args: argparse.Namespace, prefix: str, client: redis.Redis, total: int,
                     shard_map: ShardMap) -> tuple[float, int, list[float], float, int, dict[int, float]]:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    ready, go, stop, results = ctx.Semaphore(0), ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_child, args=(args, prefix, f"bench-{i}", ready, go, stop, results))
             for i in range(args.writers)]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            if not ready.acquire(timeout=60):
                raise RuntimeError("a writer process did not start")
        backends = backend_cpu(shard_map)
        start = time.perf_counter()
        go.set()
        deadline = start + args.duration
        while time.perf_counter() < deadline and remaining(client, prefix, args.partitions) != 0:
            time.sleep(0.02)
        elapsed = time.perf_counter() - start
        shard_cpu = {pid: backend_cpu(shard_map).get(pid, cpu) - cpu for pid, cpu in backends.items()}
        stop.set()
        got = [results.get(timeout=120) for _ in procs]
    finally:
        stop.set()
        go.set()
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    acked = sum(g[0] for g in got)
    latencies = [x for g in got for x in g[1]]
    return elapsed, acked, latencies, sum(g[2] for g in got), sum(g[3] for g in got), shard_cpu


def _drive_in_process(args: argparse.Namespace, prefix: str, total: int,
                      shard_map: ShardMap) -> tuple[float, int, list[float], float, int, dict[int, float]]:
    from batch_writer.config import load
    from batch_writer.worker import Writer, tune_gc

    settings, cfg = load(_writer_env(args, prefix, "bench"))
    tune_gc()  # as the service does
    writer = Writer(settings, cfg)
    try:
        writer.setup()
        for w in writer.shards.values():
            w._connection()  # connect now: the backends' CPU is measured from here
        backends = backend_cpu(shard_map)
        start, cpu0 = time.perf_counter(), time.process_time()
        deadline = start + args.duration
        while writer.stats.acked < total and time.perf_counter() < deadline:
            writer.run_once()
        writer.flush()
        elapsed, writer_cpu = time.perf_counter() - start, time.process_time() - cpu0
        shard_cpu = {pid: backend_cpu(shard_map).get(pid, cpu) - cpu for pid, cpu in backends.items()}
    finally:
        writer.close()
    return (elapsed, writer.stats.acked, list(writer.stats.recent_batch_seconds), writer_cpu,
            sum(writer.stats.dead_letters.values()), shard_cpu)


def run(args: argparse.Namespace) -> dict[str, Any]:
    shard_map = ShardMap.load(args.shard_map)
    client = redis.Redis.from_url(args.redis)
    run_id = "bench" + secrets.token_hex(4)
    prefix = "bench_" + run_id[5:]
    tenants = ensure_tenants(shard_map, args.tenants_per_shard)
    sessions = max(1, args.records // 10)
    records, expected = workload(tenants, sessions, run_id=run_id, base_ts=time.time() - 3600)
    t0 = time.perf_counter()
    push(client, prefix, records, args.partitions)
    prefill_s = time.perf_counter() - t0
    if args.writers > 1:
        elapsed, acked, latencies, writer_cpu, dead, shard_cpu = _drive_processes(
            args, prefix, client, len(records), shard_map)
    else:
        elapsed, acked, latencies, writer_cpu, dead, shard_cpu = _drive_in_process(
            args, prefix, len(records), shard_map)
    ok, detail = verify(shard_map, run_id, expected)
    cleanup(client, shard_map, prefix, args.partitions, run_id, args.keep)
    client.close()
    lat = sorted(latencies) or [0.0]
    backend = sum(shard_cpu.values())
    return {
        "records": len(records), "acked": acked, "sessions": sessions, "writers": args.writers,
        "shards": [s.name for s in shard_map], "tenants": len(tenants), "partitions": args.partitions,
        "batch_max_rows": args.batch_max_rows, "pipeline": args.pipeline, "seconds": round(elapsed, 3),
        "records_per_s": round(acked / elapsed, 1) if elapsed > 0 else None,
        "batches": len(latencies),
        "batch_p50_ms": round(statistics.median(lat) * 1000, 2),
        "batch_p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 2),
        "prefill_records_per_s": round(len(records) / prefill_s, 1) if prefill_s > 0 else None,
        "dead_letters": dead, "verified": ok, "verify_detail": detail,
        # CPU per record, robust to a busy machine: what one core of writer (or of
        # shard backend) does per second, whatever else runs beside it.
        "writer_cpu_s": round(writer_cpu, 2),
        "records_per_writer_cpu_s": round(acked / writer_cpu) if writer_cpu > 0 else None,
        "shard_backend_cpu_s": round(backend, 2) if shard_cpu else None,
        "records_per_backend_cpu_s": round(acked / backend) if backend > 0 else None,
        "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--redis", required=True, help="Redis URL (the streams go under a fresh prefix)")
    p.add_argument("--shard-map", required=True, help="shard map file")
    p.add_argument("--records", type=int, default=200_000, help="records to pre-fill (default 200000)")
    p.add_argument("--duration", type=float, default=120.0, help="stop writing after this many seconds")
    p.add_argument("--batch-max-rows", type=int, default=5000)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--writers", type=int, default=1,
                   help="writer processes in one consumer group (default 1: in this process)")
    p.add_argument("--tenants-per-shard", type=int, default=10)
    p.add_argument("--smoke", action="store_true", help="tiny run (2000 records, 30 s at most)")
    p.add_argument("--pipeline", type=int, choices=(0, 1), default=1,
                   help="WIFICORE_WRITER_PIPELINE for the run (default 1)")
    p.add_argument("--keep", action="store_true", help="keep the run's session rows")
    args = p.parse_args(argv)
    if args.smoke:
        args.records, args.duration = min(args.records, 2000), min(args.duration, 30.0)
    if not 10 <= args.records <= 10_000_000:
        p.error("--records must be 10..10000000")
    if not 1 <= args.writers <= 16:
        p.error("--writers must be 1..16")
    result = run(args)
    print(json.dumps(result))
    return 0 if result["verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
