"""docker-compose.yml against the Compose specification (no Docker engine needed)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = Path("/usr/lib/python3/dist-packages/compose/config/compose_spec.json")


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


class TestCompose:
    def test_valid_against_compose_spec(self, compose):
        """The file validates against the Compose specification's JSON schema."""
        schema = json.loads(SCHEMA.read_text())
        # Debian's file names draft 2019-09 under an address jsonschema does not know.
        jsonschema.Draft201909Validator(schema).validate(compose)

    def test_services(self, compose):
        """The stack has FreeRADIUS, Redis, two shards, two PgBouncers and the batch writer."""
        assert {"freeradius", "redis", "shard1", "shard2", "pgbouncer1", "pgbouncer2",
                "batch-writer"} <= set(compose["services"])

    def test_pgbouncer_transaction_pooling(self):
        """Each PgBouncer pools by transaction."""
        for n in (1, 2):
            ini = (ROOT / f"docker/pgbouncer/pgbouncer{n}.ini").read_text()
            assert "pool_mode = transaction" in ini

    def test_every_mounted_or_built_file_exists(self, compose):
        """Every bind-mounted file and build context named by a service is in the repository."""
        for name, svc in compose["services"].items():
            build = svc.get("build")
            if build:
                ctx = ROOT / build["context"]
                assert ctx.is_dir(), name
                assert (ctx / build.get("dockerfile", "Dockerfile")).is_file(), name
            for vol in svc.get("volumes", []):
                source = vol.split(":", 1)[0]
                if source.startswith("."):
                    assert (ROOT / source).exists(), f"{name}: {source}"

    def test_ports_on_loopback(self, compose):
        """Every published port is bound to 127.0.0.1."""
        for name, svc in compose["services"].items():
            for port in svc.get("ports", []):
                assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"

    def test_exporters_reachable_in_the_network(self, compose):
        """radiusd and the writer bind their exporters to 0.0.0.0 inside their containers (the
        raddb reads $ENV{WIFICORE_METRICS_ADDR}), on the ports the compose file publishes."""
        module = (ROOT / "raddb/mods-available/wificore").read_text()
        assert 'metrics_addr = "$ENV{WIFICORE_METRICS_ADDR}"' in module
        for name, addr_var, port_var in (("freeradius", "WIFICORE_METRICS_ADDR", "WIFICORE_METRICS_PORT"),
                                         ("batch-writer", "WIFICORE_WRITER_METRICS_ADDR",
                                          "WIFICORE_WRITER_METRICS_PORT"),
                                         ("coa-sender", "WIFICORE_COA_METRICS_ADDR", "WIFICORE_COA_METRICS_PORT")):
            env = compose["services"][name]["environment"]
            assert env[addr_var] == "0.0.0.0", name
            port = env[port_var]
            assert f"127.0.0.1:{port}:{port}" in compose["services"][name]["ports"], name

    def test_prometheus_scrapes_the_compose_services(self, compose):
        """contrib/prometheus/prometheus.yml scrapes the services on their exporter ports, and
        the monitoring profile mounts it with the rules and the Grafana dashboard."""
        prom = yaml.safe_load((ROOT / "contrib/prometheus/prometheus.yml").read_text())
        targets = {j["job_name"]: [t for c in j["static_configs"] for t in c["targets"]]
                   for j in prom["scrape_configs"]}
        svc = compose["services"]
        assert targets["wificore-radiusd"] == [
            f"freeradius:{svc['freeradius']['environment']['WIFICORE_METRICS_PORT']}"]
        assert targets["wificore-writer"] == [
            f"batch-writer:{svc['batch-writer']['environment']['WIFICORE_WRITER_METRICS_PORT']}"]
        assert targets["wificore-coa"] == [
            f"coa-sender:{svc['coa-sender']['environment']['WIFICORE_COA_METRICS_PORT']}"]
        assert svc["prometheus"]["profiles"] == ["monitoring"] == svc["grafana"]["profiles"]
        mounted = " ".join(svc["prometheus"]["volumes"] + svc["grafana"]["volumes"])
        for f in ("contrib/prometheus/prometheus.yml", "contrib/prometheus/wificore-rules.yml",
                  "contrib/grafana/wificore.json", "contrib/grafana/provisioning/dashboards"):
            assert f"./{f}:" in mounted, f

    def test_dockerfile_copies_existing_paths(self):
        """Every path the Dockerfile copies exists."""
        for line in (ROOT / "docker/Dockerfile").read_text().splitlines():
            if line.startswith("COPY "):
                for src in line.split()[1:-1]:
                    assert (ROOT / src).exists(), src
