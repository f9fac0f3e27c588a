"""The saved last good config: what an agent restarted without its controller starts from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.runtime.last_good import LastGoodConfig, SavedConfigError
from agent.state import NodeState
from tests.unit.agent.mesh_config import SHOP, snapshot
from weft.api.convert import ConfigUpdate
from weft.model import Kind, ResourceKey


def test_a_saved_snapshot_and_delta_restore_the_same_node_state(tmp_path: Path) -> None:
    path = tmp_path / "agent" / "config.json"
    saved = LastGoodConfig(path, "node1")
    state = NodeState("node1")
    for update in (
        snapshot(SHOP, 3),
        ConfigUpdate(4, False, (), (ResourceKey(Kind.WORKLOAD, "shop", "reviews-v1"),)),
    ):
        state = state.apply(update)
        saved.record(update)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700

    loaded = LastGoodConfig(path, "node1").load()
    assert loaded is not None
    assert loaded.snapshot
    assert loaded.version == 4
    restored = NodeState("node1").apply(loaded)
    assert restored.version == 4
    assert restored.resources == state.resources
    assert restored.workload_at(state.local_workloads()[0].address) is not None
    assert not any(w.metadata.name == "reviews-v1" for w in restored.workloads())


def test_no_saved_config_is_none(tmp_path: Path) -> None:
    assert LastGoodConfig(tmp_path / "config.json", "node1").load() is None


def test_another_nodes_config_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    LastGoodConfig(path, "node2").record(snapshot(SHOP))
    with pytest.raises(SavedConfigError, match=r"config\.json: saved for node 'node2'"):
        LastGoodConfig(path, "node1").load()


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        json.dumps({"format": 1, "node": "node1", "version": 2}).encode(),
        json.dumps(
            {"format": 1, "node": "node1", "version": 2, "documents": [{"kind": "Nope"}]}
        ).encode(),
        json.dumps({"format": 99, "node": "node1", "version": 2, "documents": []}).encode(),
    ],
)
def test_an_unusable_file_is_refused_not_half_applied(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(content)
    with pytest.raises(SavedConfigError, match=r"config\.json"):
        LastGoodConfig(path, "node1").load()
