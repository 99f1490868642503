"""The live layout's two costs, A/B across commits: Redis bytes per live session and the
forwarder's Python CPU per record (radiusd's GIL).

A throwaway redis-server on a free loopback port; ``--sessions`` subscribers (tenants of
3,000 subscribers and 1,000 NAS, usernames as benchmarks/dataset.py names them), each with one session
(Start + Interim, as compare.py's ``redis_memory`` writes them), appended to a spool as
the accounting hook does and forwarded by the module's own Forwarder. Memory: INFO
used_memory after the forward minus before, the streams trimmed to zero (compare.py's
method). CPU: ``time.thread_time()`` of the forwarder's loop (Redis's own time is not in
it: the thread waits on the socket), divided by the records forwarded (one Redis: one
call per span); with a Redis Cluster the forwarder also groups each span's frames by
bucket, measured on its own (``cluster_grouping_cpu_us_per_record``). Redis's own CPU
per record: INFO commandstats' usec of the script calls, divided by the records.
``--local-day``: the records carry their local day (usage per quota period), as those
of compare.py's ``redis_memory`` (``Engine.accounting`` with the tenant's zone) do.

    .venv/bin/python -m benchmarks.live_layout --sessions 20000
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path

import redis

from rlm_wificore.background import Forwarder
from rlm_wificore.sink import Sink
from rlm_wificore.spool import Spool
from rlm_wificore.stats import Stats
from stack.servers import RedisServer, free_port
from wificore.settings import Settings


def _engine(url: str, spool: Spool) -> types.SimpleNamespace:
    settings = Settings.from_mapping({"redis_url": url, "spool_dir": str(spool.dir),
                                      "shard_map": "/dev/null"}, source="benchmark")
    client = redis.Redis.from_url(url, socket_timeout=600)
    ns = types.SimpleNamespace(settings=settings, redis_bg=client, spool=spool,
                               redis_roles_split=False)
    return ns


def _breakdown(r: redis.Redis) -> None:
    """MEMORY USAGE summed by key kind (the name without tags, tenant and user), to stderr."""
    import collections
    import re
    sums: collections.Counter[str] = collections.Counter()
    counts: collections.Counter[str] = collections.Counter()
    for key in r.scan_iter(count=1000):
        kind = re.sub(rb'\{[^}]*\}|[0-9a-f]{8,}|[0-9]+|:[^:]*-[^:]*$', b'', key).decode(errors='replace')
        sums[kind] += int(r.memory_usage(key, samples=0) or 0)
        counts[kind] += 1
    for kind, total in sums.most_common():
        print(f'{kind:30} {counts[kind]:8} keys {total:10} B', file=sys.stderr)


def _grouping_cpu(spool: Spool) -> dict[str, float]:
    """A Redis Cluster's extra forwarder cost: grouping each span's frames by bucket
    (background.group_frames) over the spool as it stands, per record (absent before it)."""
    try:
        from rlm_wificore.background import group_frames
    except ImportError:
        return {}
    records, cpu, position = 0, 0.0, None
    while True:
        span = spool.read_span(64 * 1024, position)
        if not span.data:
            break
        cpu0 = time.thread_time()
        groups, consumed, ended, _corrupt = group_frames(span.data, 4)
        cpu += time.thread_time() - cpu0
        records += sum(len(f) for f in groups.values())
        position = spool.after(span, consumed, bool(ended))
    return {"cluster_grouping_cpu_us_per_record": round(cpu / max(1, records) * 1e6, 2)}


def run(sessions: int, per_tenant: int = 3000, nas_per_tenant: int = 1000, breakdown: bool = False,
        local_day: bool = False) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="live-layout-"))
    server = RedisServer(work, free_port())
    server.start()
    try:
        r = redis.Redis.from_url(server.url, socket_timeout=600)
        spool = Spool(work / "spool")
        try:  # the hook's own path (the sink tags each frame with its bucket since 2026-12-01)
            sink = Sink(Stats(), 4)  # type: ignore[call-arg]
        except TypeError:
            sink = Sink(Stats())
        sink.spool = spool
        n = 0
        for t in range(1, sessions // per_tenant + 2):
            for i in range(per_tenant):
                if n >= sessions:
                    break
                n += 1
                username = f"{'pppoe' if i % 2 else 'hs'}-{t}-{i}"
                for status, t_s, octets in (("Start", 0, 0), ("Interim-Update", 300, 5_000_000)):
                    req = {"Acct-Status-Type": status, "Acct-Session-Id": f"{0x80000000 + n:08x}",
                           "User-Name": username, "Acct-Session-Time": str(t_s),
                           "Acct-Input-Octets": str(octets // 5), "Acct-Output-Octets": str(octets),
                           "Calling-Station-Id": "02:00:00:00:00:01", "Framed-IP-Address": "100.64.0.1",
                           "NAS-Port": "1"}
                    if local_day:  # the hook's way with a tenant zone known (compare.py's Engine)
                        sink.accounting(req, t, 1 + (n - 1) % nas_per_tenant, 300, lambda ts: int(ts // 86400))
                    else:
                        sink.accounting(req, t, 1 + (n - 1) % nas_per_tenant, 300)
        grouping = _grouping_cpu(spool)
        engine = _engine(server.url, spool)
        r.ping()
        before = int(r.info("memory")["used_memory"])
        forwarder = Forwarder(engine)  # type: ignore[arg-type]
        r.config_resetstat()
        cpu0 = time.thread_time()
        while forwarder.run_once():
            pass
        cpu = time.thread_time() - cpu0
        # Redis's own time in the script calls (INFO commandstats: EVALSHA, EVAL).
        stats = r.info("commandstats")
        redis_usec = sum(float(stats.get(f"cmdstat_{c}", {}).get("usec", 0)) for c in ("evalsha", "eval"))
        calls = sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))
        with_streams = int(r.info("memory")["used_memory"]) - before
        for key in r.scan_iter(match="*stream*", count=1000):
            if r.type(key) == b"stream":
                r.xtrim(key, maxlen=0, approximate=False)
        without = int(r.info("memory")["used_memory"]) - before
        if breakdown:
            _breakdown(r)
        spool.close()
        engine.redis_bg.close()
        r.close()
        return {"sessions": n, "records": forwarder.sent,
                "bytes_per_live_session": round(without / n, 1),
                "bytes_per_stream_record": round((with_streams - without) / forwarder.sent, 1),
                "forwarder_cpu_us_per_record": round(cpu / forwarder.sent * 1e6, 2),
                "redis_cpu_us_per_record": round(redis_usec / forwarder.sent, 2),
                "redis_script_calls": calls,
                **grouping}
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=20000)
    p.add_argument("--breakdown", action="store_true", help="MEMORY USAGE by key kind, to stderr")
    p.add_argument("--local-day", action="store_true",
                   help="records carry their local day (usage per quota period), as compare.py's do")
    a = p.parse_args(argv)
    print(json.dumps(run(a.sessions, breakdown=a.breakdown, local_day=a.local_day)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
