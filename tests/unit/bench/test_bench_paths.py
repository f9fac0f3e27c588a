"""bench.paths: which paths exist, what they are compared with, and why a path cannot run."""

from __future__ import annotations

import pytest

from bench.paths import PATH_NAMES, WeftCrossNodePath, WeftWaypointPath, make_path


def test_the_issue_paths_all_exist() -> None:
    for name in ("direct", "weft-same-node", "weft-cross-node", "weft-waypoint", "stunnel",
                 "haproxy"):  # fmt: skip
        assert make_path(name).name == name


def test_every_baseline_and_peer_is_a_path() -> None:
    for name in PATH_NAMES:
        path = make_path(name)
        assert path.baseline in PATH_NAMES
        assert path.peer is None or path.peer in PATH_NAMES


def test_meshed_paths_compare_with_the_proxy_a_user_would_pick_instead() -> None:
    assert WeftCrossNodePath.peer == "stunnel"
    assert WeftWaypointPath.peer == "haproxy"
    assert make_path("weft-same-node").baseline == "direct-same-node"


def test_haproxy_runs_only_the_http_loads_and_the_streaming_memory_check() -> None:
    assert make_path("haproxy").loads == {"http1", "http16", "grpc", "stream1m"}


def test_unknown_path_name_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        make_path("linkerd")
