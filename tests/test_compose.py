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

    def test_dockerfile_copies_existing_paths(self):
        """Every path the Dockerfile copies exists."""
        for line in (ROOT / "docker/Dockerfile").read_text().splitlines():
            if line.startswith("COPY "):
                for src in line.split()[1:-1]:
                    assert (ROOT / src).exists(), src
