"""Render a comparison run: JSON, Markdown and a latency-against-throughput plot.

compare.py calls :func:`write` at the end of a run. Run on its own, this
re-renders the Markdown and the plot from a saved JSON file, and with
``--readme`` the performance section of the project README::

    python benchmarks/report.py [benchmarks/results/latest.json] [--out DIR] [--readme README.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown(results: dict[str, Any], plot_name: str | None = "latest.png") -> str:
    """The run as a Markdown page: configurations, ratios, memory, ingestion."""
    m = results.get("machine", {})
    s = results.get("settings", {})
    d = results.get("dataset", {})
    lines = [
        "# rlm_wificore against stock FreeRADIUS",
        "",
        f"Run of {results.get('date', '?')} on {m.get('cpu_model', '?')} "
        f"({m.get('cores', '?')} cores, {m.get('memory_gb', '?')} GiB), "
        f"load generator on the same cores, loopback only.",
        "",
        f"Command: `{results.get('command', '?')}`",
        "",
        f"Dataset: {_fmt(d.get('tenants'))} tenants, {_fmt(d.get('subscribers'))} subscribers, "
        f"{_fmt(d.get('nas'))} NAS; loaded in {_fmt(d.get('seconds', {}).get('total'), 1)} s. "
        f"Each measurement: closed loop, window {s.get('window')}, {s.get('senders')} sender(s), "
        f"{s.get('duration_s')} s, median of {s.get('repeat')}.",
        "",
        "| configuration | what | req/s | p50 ms | p90 ms | p99 ms | lost | generator CPU % "
        "| radiusd CPU % | machine busy % | others' CPU % |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in results.get("configurations", []):
        lines.append(
            f"| `{c['name']}` | {c.get('description', '')} | {_fmt(c.get('rps'))} "
            f"| {_fmt(c.get('p50_ms'))} | {_fmt(c.get('p90_ms'))} | {_fmt(c.get('p99_ms'))} "
            f"| {_fmt(c.get('lost'))} | {_fmt(c.get('cpu_generator'), 0)} "
            f"| {_fmt(c.get('cpu_server'), 0)} | {_fmt(c.get('cpu_machine'), 0)} "
            f"| {_fmt(c.get('cpu_other'), 0)} |")
    others = [c["cpu_other"] for c in results.get("configurations", []) if "cpu_other" in c]
    if others:
        lines += ["", f"CPU used by other work on the machine during the closed-loop runs: "
                      f"{min(others):.0f} to {max(others):.0f} % of one core (median per "
                      "configuration); the more, the less the absolute numbers mean."]
    ratios = results.get("ratios", {})
    if ratios:
        lines += ["", "Throughput ratios (same run):", "", "| ratio | value |", "| --- | ---: |"]
        for name, value in ratios.items():
            lines.append(f"| {name} | {_fmt(value)} |")
    points = [c for c in results.get("configurations", []) if c.get("points")]
    if points:
        lines += ["", "Open loop (offered rate -> achieved req/s, p50 / p99 ms, others' CPU %):", ""]
        for c in points:
            cells = ", ".join(
                f"{_fmt(p.get('offered_rps'))} -> {_fmt(p.get('rps'))} "
                f"({_fmt(p.get('p50_ms'))} / {_fmt(p.get('p99_ms'))}, {_fmt(p.get('cpu_other'), 0)})"
                for p in c["points"])
            lines.append(f"- `{c['name']}`: {cells}")
    mem = results.get("redis_memory")
    if mem:
        lines += ["", "Redis memory (INFO used_memory delta, the module's own encoding and keys):", ""]
        for key, label in (("bytes_per_profile", "per cached profile"),
                           ("bytes_per_live_session", "per live session (without stream entries)"),
                           ("bytes_per_stream_record", "per accounting stream entry, until drained")):
            if key in mem:
                lines.append(f"- {label}: {_fmt(mem[key], 0)} bytes")
        if "profiles" in mem:
            lines.append(f"- measured over {_fmt(mem['profiles'])} profiles and "
                         f"{_fmt(mem.get('sessions'))} sessions")
    bw = results.get("batch_writer")
    if bw:
        if bw.get("records_per_s") is not None:
            lines += ["", f"batch_writer ingestion: {_fmt(bw['records_per_s'])} records/s "
                          f"(median of {len(bw.get('runs', [])) or 1}{_writers(bw)})."]
        else:
            lines += ["", f"batch_writer ingestion: not measured ({bw.get('skipped', 'no result')})."]
    e2e = results.get("end_to_end")
    if e2e:
        lines += ["", _e2e_line(e2e)]
    warnings = results.get("warnings") or []
    if warnings:
        lines += ["", "Warnings:", ""] + [f"- {w}" for w in warnings]
    if plot_name:
        lines += ["", f"![latency against throughput]({plot_name})"]
    lines += _robustness_lines(results)
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> bool:
    """Latency (p50 and p99) against achieved throughput, one line per configuration.

    False when matplotlib is not installed (pip install -e '.[bench]').
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), sharex=False)
    for c in results.get("configurations", []):
        # Open-loop points in the order of the offered rate: past the knee the
        # achieved rate falls back while the latency climbs.
        pts = sorted((p for p in c.get("points", []) if p.get("rps")),
                     key=lambda p: p.get("offered_rps", p["rps"]))
        style = "--" if c.get("kind") == "acct" else "-"
        for ax, key in zip(axes, ("p50_ms", "p99_ms"), strict=True):
            xs = [p["rps"] for p in pts if p.get(key)]
            ys = [p[key] for p in pts if p.get(key)]
            line, = ax.plot(xs, ys, style, marker="o", markersize=4, label=c["name"])
            if c.get("rps") and c.get(key):
                # The closed-loop maximum: its latency is mostly window / throughput.
                ax.plot([c["rps"]], [c[key]], linestyle="none", marker="*", markersize=12,
                        color=line.get_color())
    for ax, title in zip(axes, ("median latency (p50)", "tail latency (p99)"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("achieved requests/s")
        ax.set_ylabel("ms")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 7) or 1, fontsize=8,
               frameon=False)
    m = results.get("machine", {})
    fig.suptitle(f"Latency against throughput ({results.get('date', '')}, "
                 f"{m.get('cores', '?')} cores): open-loop rates, star = closed-loop maximum "
                 f"(window {results.get('settings', {}).get('window', '?')}), dashed = accounting",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(results: dict[str, Any], out_dir: Path, stem: str = "latest") -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` (if matplotlib is there)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md",
             "png": out_dir / f"{stem}.png"}
    paths["json"].write_text(json.dumps(results, indent=2) + "\n")
    has_plot = plot(results, paths["png"])
    if not has_plot:
        paths.pop("png")
    paths["md"].write_text(markdown(results, paths["png"].name if has_plot else None))
    return paths


README_START = "<!-- perf:start -->"
README_END = "<!-- perf:end -->"


def readme_section(results: dict[str, Any]) -> str:
    """The short form for the project README: throughput, latency, ratios of one run."""
    m = results.get("machine", {})
    lines = [
        f"Run of {results.get('date', '?')} on {m.get('cpu_model', '?')} "
        f"({m.get('cores', '?')} cores), load generator on the same cores; "
        "closed loop, window 256, median of the repeats "
        "([full report](benchmarks/results/latest.md)).",
        "",
        "| configuration | req/s | p50 ms | p99 ms | generator CPU % |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for c in results.get("configurations", []):
        lines.append(f"| `{c['name']}` | {_fmt(c.get('rps'))} | {_fmt(c.get('p50_ms'))} | "
                     f"{_fmt(c.get('p99_ms'))} | {_fmt(c.get('cpu_generator'), 0)} |")
    ratios = results.get("ratios", {})
    if ratios:
        lines += ["", "| ratio (same run) | value |", "| --- | ---: |"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in ratios.items()]
    mem = results.get("redis_memory") or {}
    if mem.get("bytes_per_profile") is not None:
        lines += ["", f"Redis: {_fmt(mem['bytes_per_profile'], 0)} bytes per cached profile, "
                      f"{_fmt(mem.get('bytes_per_live_session'), 0)} per live session."]
    writer = results.get("batch_writer") or {}
    if writer.get("records_per_s") is not None:
        lines += ["", f"batch_writer: {_fmt(writer['records_per_s'], 0)} records/s into two shards"
                      f"{_writers(writer)}."]
    e2e = results.get("end_to_end") or {}
    if e2e.get("row_p99_s") is not None:
        lines += ["", _e2e_line(e2e)]
    lines += _robustness_lines(results)
    return "\n".join(lines)


def _robustness_lines(results: dict[str, Any]) -> list[str]:
    """noisy_neighbour, local_cache and fault_soak, where the results hold them (their
    runs' commands are under ``supplementary`` when they came from a separate run)."""
    lines: list[str] = []
    noisy = results.get("noisy_neighbour") or {}
    if noisy:
        lines += ["", "Noisy neighbour (tenant A's, or for `flood` the valid NAS's, figure divided by "
                      "its own baseline in the same run):", "",
                  "| variant | answered ratio | p99 ratio |", "| --- | ---: | ---: |"]
        lines += [f"| {v} | {_fmt(r.get('answered_ratio'))} | {_fmt(r.get('p99_ratio'))} |"
                  for v, r in noisy.items()]
    cache = results.get("local_cache") or {}
    if cache.get("bytes_per_profile") is not None:
        lines += ["", f"In-process cache: {_fmt(cache['bytes_per_profile'], 0)} bytes per profile."]
    cluster = results.get("cluster") or {}
    if cluster.get("rps_by_hosts"):
        by_hosts = ", ".join(f"{n} host{'s' if n != '1' else ''} {_fmt(v, 0)}"
                             for n, v in sorted(cluster["rps_by_hosts"].items()))
        failover = cluster.get("failover_s") or {}
        gaps = ", ".join(f"{k} {_fmt(v)} s" for k, v in failover.items())
        lines += ["", f"RADIUS tier behind the balancer (benchmarks/cluster.py, every host on these "
                      f"cores): warm PAP req/s with {by_hosts}; balancer CPU "
                      f"{_fmt(cluster.get('balancer_cpu_us_per_request'), 1)} µs per request"
                      + (f"; failover gap: {gaps}" if gaps else "") + "."]
    soak = results.get("fault_soak") or {}
    if soak:
        lines += ["", "Fault soak (accounting through shard and Redis outages, writer and radiusd "
                      "restarts): " + ", ".join(f"{k} {_fmt(v, 0)}" for k, v in soak.items()) + "."]
    supp = results.get("supplementary") or {}
    speed = supp.get("speed_check") or {}
    if speed.get("ratios"):
        r = speed["ratios"]
        lines += ["", f"Speed check (a separate run, {speed.get('date', '?')}, "
                      f"{speed.get('build', '?')}, commit {speed.get('commit', '?')}): warm PAP "
                      f"{_fmt(r.get('wificore_warm/stock_files'))} × `stock_files` and "
                      f"{_fmt(r.get('wificore_warm/stock_sql'))} × `stock_sql`; accounting "
                      f"{_fmt(r.get('wificore_acct/stock_sql_acct'))} × `stock_sql_acct`."]
    if supp:
        lines += ["", "Separate runs: " + "; ".join(f"{k}: `{v.get('command')}` ({v.get('date', '?')})"
                                                    for k, v in supp.items()) + "."]
    return lines


def _writers(bw: dict[str, Any]) -> str:
    """", N writer processes" from the runs of writer_bench.py, when it says."""
    n = {r.get("writers") for r in bw.get("runs", [])} - {None}
    return f", {n.pop()} writer processes" if len(n) == 1 else ""


def _e2e_line(e2e: dict[str, Any]) -> str:
    """The NAS-to-row measurement in one sentence."""
    if e2e.get("row_p99_s") is None:
        return f"NAS to PostgreSQL row: not measured ({e2e.get('skipped', 'no result')})."
    held = ("records the spools held from earlier runs are written first and not counted"
            if "written_before" in e2e else "with any the spools still held from earlier runs")
    return (f"NAS to PostgreSQL row, accounting offered at {_fmt(e2e['rate'], 0)}/s for "
            f"{_fmt(e2e['duration_s'], 0)} s with {e2e.get('writers', 1)} batch_writer process(es) running: "
            f"{_fmt(e2e['nas_rps'], 0)} answered/s; {_fmt(e2e['answered'])} records answered, "
            f"{_fmt(e2e['written'])} written ({held}); from radiusd receiving a "
            f"record to its commit p50 {_fmt(e2e['row_p50_s'], 3)} s, p99 {_fmt(e2e['row_p99_s'], 3)} s "
            f"(the NAS saw p99 {_fmt(e2e['nas_p99_ms'])} ms for its response).")


def update_readme(readme: Path, results: dict[str, Any]) -> None:
    """Replace the text between the README's perf markers with :func:`readme_section`."""
    text = readme.read_text()
    head, sep, rest = text.partition(README_START)
    _old, sep2, tail = rest.partition(README_END)
    if not sep or not sep2:
        raise SystemExit(f"{readme}: no {README_START} ... {README_END} markers")
    readme.write_text(f"{head}{README_START}\n{readme_section(results)}\n{README_END}{tail}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", nargs="?", type=Path, default=RESULTS / "latest.json")
    p.add_argument("--out", type=Path, help="folder for the Markdown and the plot "
                                             "(default: beside the JSON)")
    p.add_argument("--readme", type=Path,
                   help="also regenerate the performance section of this README")
    args = p.parse_args(argv)
    results = json.loads(args.json.read_text())
    out = args.out or args.json.parent
    paths = write(results, out, stem=args.json.stem)
    if args.readme:
        update_readme(args.readme, results)
        paths["readme"] = args.readme
    print("\n".join(str(v) for v in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
