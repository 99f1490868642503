"""The noisy_neighbour scenario of compare.py: a sick shard must cost its own tenants only.

Two tenants on two shards, the module's radiusd processes as compare.py runs them
(``--radiusd-procs``, one pair of ports). Tenant A sends warm logins (in process)
at a fixed rate (``--noisy-rate-a``, 2,000/s), tenant B cold logins (users no tier
has cached: a fresh slice of B's subscribers per phase) at ``--noisy-rate-b``
(100/s), both open loop, for ``--noisy-duration`` seconds per phase:

* ``baseline``: both shards healthy;
* ``hung``: every process of B's PostgreSQL cluster SIGSTOPped (sockets open, no answer);
* ``slow``: B's subscriber reads take ~0.3 s and succeed (a row-level security policy
  that sleeps, for the radius role only): longer than the hooks' wait (``db_wait_ms``,
  200 ms), shorter than the radius role's ``statement_timeout`` (400 ms, stack/local.py),
  which would cancel them and make it a failing shard;
* ``stopped``: B's PostgreSQL stopped (``pg_ctl stop -m immediate``), PgBouncer up.

Per variant: A's answered ratio and p99 divided by A's own baseline in the same round
(``noisy_neighbour = {variant: {"answered_ratio", "p99_ratio"}}``: the median over
``--noisy-rounds`` rounds, 3 by default, each a baseline followed by every variant;
``per_round`` keeps each round's), plus the raw figures of both tenants.
Target (issue 13): answered_ratio >= 0.95, p99_ratio <= 2.
After each variant B's shard is made healthy again and given a few seconds.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import psycopg

from stack.servers import cluster_pids, stopped

VARIANTS = ("hung", "slow", "stopped")


@contextlib.contextmanager
def _sick(variant: str, pg: Any) -> Iterator[None]:
    variant = variant.split("#")[0]
    if variant.startswith("baseline"):
        yield
    elif variant == "hung":
        with stopped(cluster_pids(pg.pid)):
            yield
    elif variant == "slow":
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            conn.execute("ALTER TABLE subscribers ENABLE ROW LEVEL SECURITY")
            conn.execute("CREATE POLICY bench_slow ON subscribers FOR SELECT TO wificore_radius "
                         "USING ((SELECT true FROM pg_sleep(0.3)))")
            conn.execute("CREATE POLICY bench_writer ON subscribers TO wificore_writer USING (true)")
        try:
            yield
        finally:
            with psycopg.connect(pg.dsn(), autocommit=True) as conn:
                conn.execute("DROP POLICY IF EXISTS bench_slow ON subscribers")
                conn.execute("DROP POLICY IF EXISTS bench_writer ON subscribers")
                conn.execute("ALTER TABLE subscribers DISABLE ROW LEVEL SECURITY")
    elif variant == "stopped":
        pg.kill()
        try:
            yield
        finally:
            pg.start()
    else:
        raise ValueError(variant)


def _healthy(dsn: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(dsn, connect_timeout=2, prepare_threshold=None) as conn:
                conn.execute("SELECT count(*) FROM subscribers WHERE tenant_id = 0").fetchone()
                return
        except psycopg.Error:
            time.sleep(0.2)
    raise RuntimeError(f"shard behind {dsn} did not come back within {timeout_s:.0f} s")


def run(bench: Any, c: ModuleType) -> dict[str, Any]:
    """The scenario on ``bench`` (a compare.Bench after setup); ``c`` is compare.py."""
    a = bench.args
    by_shard: dict[str, Any] = {}
    for t in c.ds.place_tenants(bench.spec, bench.shard_map):
        if t.shard not in by_shard:
            by_shard[t.shard] = c.make_sender(bench.spec, t)
    if len(by_shard) < 2:
        return {"skipped": "needs tenants on two shards (--tenants >= 2)"}
    sender_a, sender_b = list(by_shard.values())[:2]
    pg_b = next(pg for pg in bench.stack.pg if pg.name == sender_b.tenant.shard)
    bouncer_b = next(b for b in bench.stack.bouncers if b.pg is pg_b)
    # Each round: a baseline, then each variant; a last baseline shows whether the machine
    # stayed the same meanwhile. A variant's ratio is against its own round's baseline; the
    # figure reported is the median over the rounds (a shared two-core machine: one
    # neighbour's burst in one phase is not the module's doing).
    rounds = max(1, int(getattr(a, "noisy_rounds", 1)))
    phases = tuple(f"{p}#{r}" if rounds > 1 else p
                   for r in range(rounds) for p in ("baseline", *VARIANTS)) + ("baseline_end",)
    per_phase = max(1, len(sender_b.auth_users) // len(phases))
    need_b = int(a.noisy_rate_b * a.noisy_duration) + 1
    if per_phase < need_b:
        c.log(f"noisy_neighbour: tenant B has {per_phase} cold users per phase for {need_b} "
              "requests: some are sent twice (then warm)")
    server = bench.use_server("wificore")
    port = server.auth_port
    secret_a, secret_b = sender_a.tenant.bench_secret, sender_b.tenant.bench_secret
    rld_a, n_a = bench.packets.get(f"auth-{sender_a.tenant.tenant_id}", secret_a,
                                   lambda: c.auth_text(sender_a))
    target_a = c.Target(rld_a, n_a, port, secret_a, sender_a.tenant.bench_ip)
    # A warm: every subscriber once, so that the phases measure the in-process tier.
    w = c.blast([target_a], window=64, duration_s=max(30.0, a.duration), poll_us=a.poll_us)
    c.log(f"noisy_neighbour: tenant A warm-up {w['received']} answers, {w['reject']} rejects")
    out: dict[str, Any] = {"settings": {"rate_a": a.noisy_rate_a, "rate_b": a.noisy_rate_b,
                                        "duration_s": a.noisy_duration,
                                        "radiusd_procs": a.radiusd_procs,
                                        "tenant_a": sender_a.tenant.tenant_id,
                                        "tenant_b": sender_b.tenant.tenant_id,
                                        "shard_b": pg_b.name}, "phases": {}}
    for i, phase in enumerate(phases):
        users = sender_b.auth_users[i * per_phase:(i + 1) * per_phase]
        cold = c.Sender(sender_b.tenant, users, [])
        rld_b, n_b = bench.packets.get(f"noisy-b-{phase}", secret_b,
                                       lambda cold=cold: c.auth_text(cold))
        target_b = c.Target(rld_b, n_b, port, secret_b, sender_b.tenant.bench_ip)
        results: dict[str, dict[str, Any]] = {}

        def go(name: str, target: Any, rate: float,
               results: dict[str, dict[str, Any]] = results) -> None:
            results[name] = c.blast([target], rate=rate, count=int(rate * a.noisy_duration),
                                    duration_s=a.noisy_duration, poll_us=a.poll_us,
                                    server_pids=c._pids(server))
        with _sick(phase, pg_b):
            if not phase.startswith("baseline"):
                time.sleep(0.5)
            threads = [threading.Thread(target=go, args=("a", target_a, a.noisy_rate_a)),
                       threading.Thread(target=go, args=("b", target_b, a.noisy_rate_b))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        ra, rb = results["a"], results["b"]
        out["phases"][phase] = {
            "a": {k: ra.get(k) for k in ("sent", "received", "accept", "reject", "lost",
                                         "p50_ms", "p99_ms", "rps")},
            "b": {k: rb.get(k) for k in ("sent", "received", "accept", "reject", "lost",
                                         "p50_ms", "p99_ms", "rps")}}
        c.log(f"noisy_neighbour {phase}: A {ra['received']}/{ra['sent']} answered, "
              f"p99 {ra['p99_ms']} ms; B {rb['received']}/{rb['sent']} answered "
              f"({rb['accept']} accepts, {rb['reject']} rejects), p99 {rb['p99_ms']} ms")
        if not phase.startswith("baseline"):
            _healthy(bouncer_b.dsn("wificore_radiusd"))
            time.sleep(3)  # the lanes' probes close the shard's breakers
    per_round: dict[str, list[dict[str, float | None]]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        tag = f"#{r}" if rounds > 1 else ""
        base = out["phases"][f"baseline{tag}"]["a"]
        base_answered = base["received"] / base["sent"] if base["sent"] else None
        for v in VARIANTS:
            ph = out["phases"][f"{v}{tag}"]["a"]
            answered = ph["received"] / ph["sent"] if ph["sent"] else None
            per_round[v].append({
                "answered_ratio": (round(answered / base_answered, 3)
                                   if answered is not None and base_answered else None),
                "p99_ratio": (round(ph["p99_ms"] / base["p99_ms"], 2)
                              if ph.get("p99_ms") is not None and base.get("p99_ms") else None)})

    def median(vals: list[float | None]) -> float | None:
        got = [x for x in vals if x is not None]
        return statistics.median_low(got) if got else None
    ratios: dict[str, dict[str, float | None]] = {
        v: {"answered_ratio": median([x["answered_ratio"] for x in per_round[v]]),
            "p99_ratio": median([x["p99_ratio"] for x in per_round[v]])} for v in VARIANTS}
    out["per_round"] = per_round
    out["ratios"] = ratios
    # A's ratios mean something only if B's logins reached B's shard (accepted while healthy).
    if not out["phases"]["baseline#0" if rounds > 1 else "baseline"]["b"]["accept"]:
        msg = "noisy_neighbour: tenant B's baseline logins were not accepted: B's shard was never used"
        c.log(msg)
        bench.warnings.append(msg)
    return out
