"""The shard map's placements, its rewrite by tenant move and the follower (pure logic:
files in a temporary folder, no server)."""

from __future__ import annotations

import os

import pytest

from wificore.errors import ConfigError, UnknownTenant
from wificore.shardmap import MapFollower, ShardMap, write_placement

MAP = """# the operator's comment stays
[[shard]]
name = "shard1"
first_tenant = 1
last_tenant = 499
dsn = "postgresql://a@127.0.0.1:1/w"

[[shard]]
name = "shard2"
first_tenant = 500
last_tenant = 999
dsn = "postgresql://a@127.0.0.1:2/w"
replica_dsn = "postgresql://a@127.0.0.1:3/w"
"""


@pytest.fixture
def path(tmp_path):
    p = tmp_path / "shards.toml"
    p.write_text(MAP)
    return p


def test_a_placement_comes_before_the_ranges():
    m = ShardMap.from_dict({"shard": [{"name": "a", "first_tenant": 1, "last_tenant": 9, "dsn": "x=1"},
                                      {"name": "b", "first_tenant": 10, "last_tenant": 19, "dsn": "x=2"}],
                            "tenant": [{"id": 3, "shard": "b"}, {"id": 42, "shard": "a"}]})
    assert [m.shard_for(t).name for t in (2, 3, 12, 42)] == ["a", "b", "b", "a"]
    assert m.range_shard(3).name == "a" and m.placed == {3: "b", 42: "a"}
    with pytest.raises(UnknownTenant):
        m.shard_for(20)


@pytest.mark.parametrize("tenants, words", [
    ([{"id": 3, "shard": "nope"}], "not in the map"),
    ([{"id": 3, "shard": "a"}, {"id": 3, "shard": "a"}], "placed twice"),
    ([{"id": 0, "shard": "a"}], "tenant[0].id"),
    ([{"id": 3, "shard": "a", "x": 1}], "tenant[0].x: unknown key"),
])
def test_a_bad_placement_is_refused(tenants, words):
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        ShardMap.from_dict({"shard": [{"name": "a", "first_tenant": 1, "last_tenant": 9, "dsn": "x=1"}],
                            "tenant": tenants})


def test_replica_dsn_is_read(path):
    m = ShardMap.load(path)
    assert m.by_name("shard2").replica_dsn.endswith(":3/w") and m.by_name("shard1").replica_dsn == ""


def test_write_placement_adds_replaces_and_removes(path):
    inode = path.stat().st_ino
    m = write_placement(path, 7, "shard2")
    assert m.shard_for(7).name == "shard2" and path.stat().st_ino != inode  # a rename
    assert "# the operator's comment stays" in path.read_text()
    m = write_placement(path, 8, "shard2")
    assert m.placed == {7: "shard2", 8: "shard2"}
    m = write_placement(path, 7, "shard1")  # home again: the entry goes
    assert m.placed == {8: "shard2"} and path.read_text().count("[[tenant]]") == 1
    with pytest.raises(ConfigError, match="no shard named"):
        write_placement(path, 8, "shard9")


def test_a_hand_written_placement_is_not_guessed(path):
    path.write_text(MAP + '\n[[tenant]]\nshard = "shard2"\nid = 7\n')
    with pytest.raises(ConfigError, match="edit it by hand"):
        write_placement(path, 7, "shard1")


def test_the_follower_sees_a_new_map_and_keeps_the_old_one_when_invalid(path):
    m = ShardMap.load(path)
    f = MapFollower(path, m)
    assert f.check() is None
    write_placement(path, 7, "shard2")
    new = f.check()
    assert new is not None and new.shard_for(7).name == "shard2"
    moved = m.moved_tenants(new)
    m.replace(new)
    assert moved == {7} and m.shard_for(7).name == "shard2"
    tmp = path.with_suffix(".new")
    tmp.write_text("[[shard]]\nname = 1\n")
    os.replace(tmp, path)
    assert f.check() is None and "missing" in (f.error or "")
    assert m.shard_for(7).name == "shard2"  # the map in use is kept
