"""The project's raddb on FreeRADIUS 3.2.1 as Debian ships it and 3.2.7 (backports)."""

from __future__ import annotations

import os

import pytest

from stack.freeradius import build, version_of
from stack.servers import Radiusd, free_port


def checker(world, **env) -> Radiusd:
    base = world.radiusd
    r = Radiusd(world.state, auth_port=base.auth_port, acct_port=base.acct_port,
                shard_map=world.shard_map, redis_url=world.redis.url, metrics_port=base.env["WIFICORE_METRICS_PORT"],
                name="radiusd-check")
    r.env.update(env)
    return r


class TestConfigCheck:
    def test_config_check_passes(self, world):
        """`freeradius -XC` accepts the raddb with the module enabled."""
        out = checker(world).check_config()
        assert out.returncode == 0, out.stdout[-2000:]
        assert "Configuration appears to be OK" in out.stdout

    def test_config_check_starts_nothing(self, world, radiusd):
        """`freeradius -XC` beside a running radiusd: no spool lock taken, no port bound."""
        out = checker(world).check_config()
        assert out.returncode == 0, out.stdout[-2000:]

    def test_invalid_setting_names_key(self, world):
        """An invalid setting stops radiusd at start-up with a message naming the key."""
        out = checker(world, WIFICORE_REDIS_URL="http://127.0.0.1:1/").check_config()
        assert out.returncode != 0
        assert "wificore.redis_url: invalid scheme 'http'" in out.stdout + out.stderr

    def test_missing_shard_map_names_key(self, world):
        """A shard map that does not exist stops radiusd with a message naming it."""
        out = checker(world, WIFICORE_SHARD_MAP="/nonexistent/shards.toml").check_config()
        assert out.returncode != 0
        assert "shard_map: file '/nonexistent/shards.toml' does not exist" in out.stdout + out.stderr

    def test_bad_number_names_key(self, world):
        """A non-numeric port stops radiusd with the key in the message."""
        out = checker(world, WIFICORE_METRICS_PORT="eighty").check_config()
        assert out.returncode != 0
        assert "wificore.metrics_port: expected an integer" in out.stdout + out.stderr


class TestStartUp:
    def test_invalid_setting_stops_radiusd(self, world):
        """Beyond the check: radiusd itself does not start with a bad setting, on every
        build (3.2.7 no longer runs instantiate under -C, so the check alone proves less)."""
        r = Radiusd(world.state / "bad-setting", auth_port=free_port(), acct_port=free_port(),
                    shard_map=world.shard_map, redis_url="http://127.0.0.1:1/", name="radiusd-bad")
        try:
            with pytest.raises(RuntimeError, match="exited with"):
                r.start(timeout_s=60)
        finally:
            r.stop()
        assert "wificore.redis_url: invalid scheme 'http'" in r.log_tail(200)

    def test_runs_the_build_of_this_pass(self, radiusd):
        """radiusd is the FreeRADIUS build WIFICORE_FREERADIUS names (bin/test: one pass each)."""
        b = build()
        assert os.readlink(f"/proc/{radiusd.pid}/exe") == str(b.binary.resolve())
        assert f"Version {b.version}," in version_of(b)

    def test_shard_map_in_utf8(self, world, tmp_path):
        """A shard map with non-ASCII text (a comment, a shard's name) loads on every build:
        3.2.7 starts Python isolated, in the C locale, where files default to ASCII."""
        shard_map = tmp_path / "shards.toml"
        shard_map.write_text("# Zürich and São Paulo\n" + world.shard_map.read_text(), encoding="utf-8")
        r = Radiusd(world.state / "utf8-map", auth_port=free_port(), acct_port=free_port(),
                    shard_map=shard_map, redis_url=world.redis.url, name="radiusd-utf8")
        try:
            r.start(timeout_s=60)
        finally:
            code = r.stop()
        assert code == 0, r.log_tail()
