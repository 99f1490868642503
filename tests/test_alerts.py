"""The Prometheus alert rules and the Grafana dashboard (contrib/) against promtool and
the exporters: the rules load and their unit tests pass (``promtool check rules``,
``promtool test rules``), the dashboard's PromQL parses, and every metric and label they
name is one that the module's and the writer's exporters really serve (read from the
code, and scraped from a real radiusd and a real batch_writer)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from rlm_wificore.policy import MESSAGES
from stack.servers import BatchWriter, free_port
from tests import metrics
from tests.conftest import TENANT_A
from tests.test_accounting import acct_packet, wait_until

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "contrib/prometheus"
RULES = PROM / "wificore-rules.yml"
RULE_TESTS = PROM / "wificore-rules.test.yml"
PROM_CONFIG = PROM / "prometheus.yml"
DASHBOARD = ROOT / "contrib/grafana/wificore.json"
EXPORTER_SOURCES = {"wificore-radiusd": ROOT / "rlm_wificore/metrics.py",
                    "wificore-writer": ROOT / "batch_writer/metrics.py",
                    "wificore-coa": ROOT / "coa_sender/metrics.py"}
#: Prometheus's own series, not an exporter's.
PROMETHEUS_SERIES = {"up"}
#: Labels Prometheus attaches to every scraped series, and the histogram bucket label.
TARGET_LABELS = {"job", "instance"}
#: What the dashboard's variables stand for, to turn its queries into plain PromQL.
GRAFANA_VARS = {"$__rate_interval": "5m", "$radiusd_job": "wificore-radiusd",
                "$writer_job": "wificore-writer", "$radiusd_instance": ".*", "$writer_instance": ".*",
                "$coa_job": "wificore-coa", "$coa_instance": ".*"}

SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is not installed (bin/setup installs Debian's prometheus package)")
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def load_rules(path: Path = RULES) -> list[dict]:
    return [r for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]


def dashboard_panels(panels: list[dict]) -> list[dict]:
    out = []
    for p in panels:
        out.append(p)
        out += dashboard_panels(p.get("panels", []))
    return out


def dashboard_exprs(dash: dict) -> list[str]:
    """Every query of the dashboard, its variables substituted: plain PromQL."""
    raw = [t["expr"] for p in dashboard_panels(dash["panels"]) for t in p.get("targets", [])]
    raw += [v["definition"] for v in dash["templating"]["list"] if v["type"] == "query"]
    out = []
    for e in raw:
        for var, value in GRAFANA_VARS.items():
            e = e.replace(var, value)
        assert "$" not in e, f"unknown dashboard variable in {e!r}"
        out.append(e)
    return out


def all_exprs() -> list[tuple[str, str]]:
    """(where, PromQL) of every rule and dashboard query."""
    return ([(f"rule {r['alert']}", r["expr"]) for r in load_rules()]
            + [("dashboard", e) for e in dashboard_exprs(json.loads(DASHBOARD.read_text()))])


def selectors(expr: str) -> list[tuple[str, dict[str, tuple[str, str]]]]:
    """(metric name, {label: (operator, value)}) of each selector; a wificore_* name used
    without a selector is an error (every query names its job)."""
    found = [(m.group(1), {k: (op, v) for k, op, v in MATCHER.findall(m.group(2))})
             for m in SELECTOR.finditer(expr)]
    bare = set(re.findall(r"\bwificore_[a-zA-Z0-9_:]*\b(?!\s*\{)", STRING.sub('""', expr)))
    assert not bare, f"metric without a job selector in {expr!r}: {sorted(bare)}"
    return found


def sample_names(family: str, kind: str) -> set[str]:
    """The sample names an exposition family serves."""
    if kind == "counter":
        return {family + "_total"}
    if kind == "histogram":
        return {family + "_bucket", family + "_count", family + "_sum"}
    return {family}


def families_in_code(source: Path) -> dict[str, str]:
    """{family: type} of every metric family the exporter module defines."""
    text = source.read_text()
    kinds = {"Counter": "counter", "Gauge": "gauge", "Histogram": "histogram",
             "_labelled_counter": "counter", "_histogram": "histogram", "_kind_outcome": "counter"}
    found = {}
    for call, name in re.findall(r"\b(Counter|Gauge|Histogram)MetricFamily\(\s*\"(\w+)\"", text):
        found[name] = kinds[call]
    for call, name in re.findall(r"\b(_labelled_counter|_histogram|_kind_outcome)\(\s*\"(\w+)\"", text):
        found[name] = kinds[call]
    return found


def names_in_code() -> dict[str, set[str]]:
    return {job: {s for fam, kind in families_in_code(src).items() for s in sample_names(fam, kind)}
            for job, src in EXPORTER_SOURCES.items()}


def unknown_names(exprs: list[tuple[str, str]], served: dict[str, set[str]]) -> list[str]:
    """Metric names used under a job that the job's exporter does not serve."""
    bad = []
    for where, expr in exprs:
        for name, matchers in selectors(expr):
            if name in PROMETHEUS_SERIES:
                continue
            job = matchers.get("job", ("", ""))[1]
            if job not in served:
                bad.append(f"{where}: {name} without job=wificore-radiusd|wificore-writer|wificore-coa")
            elif name not in served[job]:
                bad.append(f"{where}: {name} is not served by {job}")
    return bad


# ------------------------------------------------------------------ promtool


class TestPromtool:
    def test_check_rules(self):
        """`promtool check rules` accepts the rule file."""
        out = promtool("check", "rules", str(RULES))
        assert out.returncode == 0, out.stdout + out.stderr

    def test_rule_unit_tests(self):
        """`promtool test rules`: the recorded series fire each alert, and the near misses do not."""
        out = promtool("test", "rules", RULE_TESTS.name)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "SUCCESS" in out.stdout + out.stderr

    def test_prometheus_config(self):
        """The sample prometheus.yml (the two scrape jobs, the rule file) is valid."""
        out = promtool("check", "config", str(PROM_CONFIG))
        assert out.returncode == 0, out.stdout + out.stderr
        jobs = {j["job_name"] for j in yaml.safe_load(PROM_CONFIG.read_text())["scrape_configs"]}
        assert jobs == set(EXPORTER_SOURCES)

    def test_dashboard_promql_parses(self, tmp_path):
        """Every dashboard query is valid PromQL (checked by promtool as recording rules)."""
        exprs = dashboard_exprs(json.loads(DASHBOARD.read_text()))
        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)
            if not e.startswith("label_values(")]}]}
        path = tmp_path / "dashboard-rules.yml"
        path.write_text(yaml.safe_dump(rules))
        out = promtool("check", "rules", str(path))
        assert out.returncode == 0, out.stdout + out.stderr

    def test_a_broken_rule_fails(self, tmp_path):
        """The checks catch a broken rule: a misspelt metric makes its unit test fail and is
        reported as unknown; a syntax error fails `promtool check rules`."""
        shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
        text = RULES.read_text()
        assert "wificore_spool_full{" in text
        (tmp_path / RULES.name).write_text(text.replace("wificore_spool_full{", "wificore_spool_ful{"))
        out = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
        assert out.returncode != 0 and "WificoreSpoolFull" in out.stdout + out.stderr
        broken = [(r["alert"], r["expr"]) for r in load_rules(tmp_path / RULES.name)]
        assert unknown_names(broken, names_in_code()) == [
            "WificoreSpoolFull: wificore_spool_ful is not served by wificore-radiusd"]
        (tmp_path / RULES.name).write_text(text.replace("> 0.1", "> > 0.1"))
        out = promtool("check", "rules", RULES.name, cwd=tmp_path)
        assert out.returncode != 0


# ------------------------------------------------------------------ the rules themselves


class TestRules:
    def test_each_alert_complete(self):
        """Each alert has `for:`, a severity and a summary and description."""
        rules = load_rules()
        assert {r["alert"] for r in rules} >= {
            "WificoreRadiusdDown", "WificoreBackendUnavailable", "WificoreSpoolGrowing",
            "WificoreWriterLag", "WificoreDeadLetters", "WificoreCoaFailures"}
        for r in rules:
            assert r.get("for"), r["alert"]
            assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
            assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]

    def test_each_alert_fires_and_stays_quiet_in_the_unit_tests(self):
        """Every alert has a unit-test case where it fires and one where it does not."""
        cases = [c for t in yaml.safe_load(RULE_TESTS.read_text())["tests"] for c in t["alert_rule_test"]]
        for r in load_rules():
            mine = [c for c in cases if c["alertname"] == r["alert"]]
            assert any(c["exp_alerts"] for c in mine), f"{r['alert']} never fires in a test"
            assert any(not c["exp_alerts"] for c in mine), f"{r['alert']} has no quiet case"

    def test_the_radiusd_down_alert_is_up_of_the_module_job(self):
        rule = next(r for r in load_rules() if r["alert"] == "WificoreRadiusdDown")
        assert rule["expr"].replace(" ", "") == 'up{job="wificore-radiusd"}==0'

    def test_writer_lag_threshold_is_10_seconds(self):
        rule = next(r for r in load_rules() if r["alert"] == "WificoreWriterLag")
        assert "wificore_writer_record_age_seconds_bucket" in rule["expr"]
        assert rule["expr"].rstrip().endswith("> 10")


class TestDashboard:
    def test_provisioning_ready(self):
        """A dashboard Grafana can provision: fixed uid, no database id, a Prometheus
        data-source variable that every query uses, unique panel ids."""
        dash = json.loads(DASHBOARD.read_text())
        assert dash["uid"] == "wificore" and dash.get("id") is None
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        panels = dashboard_panels(dash["panels"])
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids))
        for p in panels:
            for t in p.get("targets", []):
                assert t["datasource"]["uid"] == "${datasource}", p["title"]
            if p["type"] not in ("row", "text"):
                assert p.get("targets"), p["title"]

    def test_sections(self):
        """Rows for requests, cache tiers, hook latency, spool, writer, dead letters and CoA
        (its outcomes from the CoA sidecar's exporter)."""
        dash = json.loads(DASHBOARD.read_text())
        rows = {p["title"]: p for p in dash["panels"] if p["type"] == "row"}
        for word in ("Requests", "Cache tiers", "Hook latency", "Spool", "batch_writer", "Dead letters", "CoA"):
            assert any(word in t for t in rows), word
        assert not any("placeholder" in t for t in rows)
        exprs = dashboard_exprs(dash)
        assert any("wificore_coa_requests_total" in e and "outcome" in e for e in exprs)
        quantiles = [e for e in dashboard_exprs(dash) if "wificore_hook_seconds_bucket" in e]
        assert quantiles and all("histogram_quantile(" in e for e in quantiles)


# ------------------------------------------------------------------ names against the exporters


class TestNamesInCode:
    def test_families_found_in_code(self):
        """The code scan finds the exporters' families (a guard on the scan itself)."""
        names = names_in_code()
        assert {"wificore_requests_total", "wificore_hook_seconds_bucket",
                "wificore_spool_pending_bytes"} <= names["wificore-radiusd"]
        assert {"wificore_writer_acked_total", "wificore_writer_dead_letter_length",
                "wificore_writer_record_age_seconds_bucket"} <= names["wificore-writer"]
        assert {"wificore_coa_requests_total", "wificore_coa_deduped_total"} <= names["wificore-coa"]

    def test_every_name_defined_by_its_exporter(self):
        """Every metric in the rules and the dashboard is defined by the exporter of its job."""
        assert unknown_names(all_exprs(), names_in_code()) == []


@pytest.fixture(scope="module")
def writer_metrics(world):
    """A real batch_writer with its exporter on a free loopback port (its own key prefix)."""
    from tests.test_batch_writer import writer_env

    prefix = "al" + uuid.uuid4().hex[:8]
    port = free_port()
    writer = BatchWriter(world.state, {**writer_env(world, prefix),
                                       "WIFICORE_WRITER_METRICS_PORT": str(port)}, name=f"bw-{prefix}")
    writer.start()
    try:
        def served():
            try:
                text = metrics.scrape(port)
            except OSError:
                return None
            return text if 'wificore_writer_stream_lag{' in text else None
        assert wait_until(served, timeout_s=30), writer.log_tail()
        yield writer, port
    finally:
        writer.stop()


@pytest.fixture(scope="module")
def coa_metrics(world):
    """A real CoA sidecar with its exporter on a free loopback port (its own key prefix)."""
    from stack.servers import CoaSidecar

    prefix = "ac" + uuid.uuid4().hex[:8]
    port = free_port()
    sidecar = CoaSidecar(world.state, {"WIFICORE_SHARD_MAP": str(world.shard_map),
                                       "WIFICORE_REDIS_URL": world.redis.url, "WIFICORE_KEY_PREFIX": prefix,
                                       "WIFICORE_COA_METRICS_PORT": str(port)}, name=f"coa-{prefix}")
    sidecar.start()
    try:
        def served():
            try:
                text = metrics.scrape(port)
            except OSError:
                return None
            return text if "wificore_coa_requests_total{" in text else None
        assert wait_until(served, timeout_s=30), sidecar.log_tail()
        yield sidecar, port
    finally:
        sidecar.stop()


def scraped(text: str) -> tuple[set[str], dict[str, dict[str, set[str]]]]:
    """(sample names served, {sample name: {label: values seen}})."""
    names: set[str] = set()
    labels: dict[str, dict[str, set[str]]] = {}
    for fam in text_string_to_metric_families(text):
        names |= sample_names(fam.name, fam.type)
        for s in fam.samples:
            names.add(s.name)
            seen = labels.setdefault(s.name, {})
            for k, v in s.labels.items():
                seen.setdefault(k, set()).add(v)
    return names, labels


class TestNamesScraped:
    def test_every_name_and_label_served(self, auth, acct, subscriber, radiusd, writer_metrics, coa_metrics):
        """Scrape a real radiusd (after logins and accounting) and a real batch_writer: every
        metric the rules and the dashboard name is served by the exporter of its job, every
        label they match on is one its samples carry, and every value they match exactly is
        one it serves (or, for `result`, a documented reason code)."""
        user = subscriber()
        auth(TENANT_A, {"User-Name": user, "User-Password": "pw-123456"})
        auth(TENANT_A, {"User-Name": user, "User-Password": "wrong"})
        # A profile read while an invalidation came in (other tests' changes reach this
        # radiusd too) is used once and not kept: log in again until one is answered from
        # the process (bounded).
        for _ in range(20):
            if 'tier="process"' in metrics.scrape(radiusd.env["WIFICORE_METRICS_PORT"]):
                break
            auth(TENANT_A, {"User-Name": user, "User-Password": "pw-123456"})
        ans = acct(TENANT_A, acct_packet(user, "al-" + uuid.uuid4().hex[:8], "Start"))
        assert ans.code == "Accounting-Response"
        _writer, port = writer_metrics
        served = {"wificore-radiusd": scraped(metrics.scrape(radiusd.env["WIFICORE_METRICS_PORT"])),
                  "wificore-writer": scraped(metrics.scrape(port)),
                  "wificore-coa": scraped(metrics.scrape(coa_metrics[1]))}
        assert unknown_names(all_exprs(), {job: s[0] for job, s in served.items()}) == []
        reasons = set(MESSAGES) | {"ok", "accept", "reject"}
        bad = []
        for where, expr in all_exprs():
            for name, matchers in selectors(expr):
                if name in PROMETHEUS_SERIES:
                    continue
                seen = served[matchers["job"][1]][1].get(name)
                if not seen:  # a labelled family without samples yet: names checked above
                    continue
                for label, (op, value) in matchers.items():
                    if label in TARGET_LABELS:
                        continue
                    if label not in seen:
                        bad.append(f"{where}: {name} has no label {label!r}")
                    elif op == "=" and value not in seen[label] and not (
                            name == "wificore_requests_total" and label == "result" and value in reasons):
                        bad.append(f"{where}: {name}{{{label}={value!r}}} is never served")
        assert bad == []

    def test_local_exporters_on_loopback(self, radiusd, writer_metrics, coa_metrics):
        """The local stack's exporters listen on 127.0.0.1 only."""
        _writer, port = writer_metrics
        for p in (radiusd.env["WIFICORE_METRICS_PORT"], port, coa_metrics[1]):
            out = subprocess.run(["ss", "-ltnH", f"sport = :{p}"], capture_output=True, text=True,
                                 check=True).stdout
            addrs = {line.split()[3].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()}
            assert addrs == {"127.0.0.1"}, (p, out)


class TestExporterAddress:
    """metrics_addr comes from $ENV{WIFICORE_METRICS_ADDR}: unset is loopback, the compose
    file sets 0.0.0.0 (`freeradius -XC`: nothing is bound)."""

    def check(self, world, value: str | None) -> subprocess.CompletedProcess:
        from tests.test_raddb import checker

        r = checker(world)
        if value is None:
            r.env.pop("WIFICORE_METRICS_ADDR", None)
        else:
            r.env["WIFICORE_METRICS_ADDR"] = value
        return r.check_config()

    @pytest.mark.parametrize("value", [None, "", "0.0.0.0", "::"])
    def test_accepted(self, world, value):
        out = self.check(world, value)
        assert out.returncode == 0, out.stdout[-2000:]

    def test_invalid_names_key(self, world):
        out = self.check(world, "everywhere")
        assert out.returncode != 0
        assert "wificore.metrics_addr: 'everywhere' is not an IP address" in out.stdout + out.stderr

    def test_unset_is_loopback(self):
        from wificore.settings import Settings

        assert Settings.from_mapping({"metrics_addr": ""}).metrics_addr == "127.0.0.1"
        assert Settings.from_mapping({"metrics_addr": "0.0.0.0"}).metrics_addr == "0.0.0.0"

