"""The weft-waypoint bench path on loopback: the real `weft waypoint run` in front of the C HTTP
server, driven by the bench's own loads (wrk, curl), and the target that reads its memory."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from bench import testbed
from bench.loads.http import HTTP_16CONN
from bench.loads.stream import STREAM_1MIB, peak_growth_kib, reset_peaks
from bench.measurement import LoadContext, LoadError
from bench.native import NativeTools, build_tools
from bench.paths import WAYPOINT_RESOURCES, WAYPOINT_SERVICE, WeftWaypointPath, make_path
from bench.result import BenchResult, PathInfo
from bench.runner import Figure
from bench.targets import TARGETS, Measure, check_target
from bench.testbed import BenchLayout
from waypoint.compiler import compile_resources
from waypoint.workers import default_workers
from weft.resources import parse_documents, read_documents


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "the process exited before it listened"
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail(f"nothing listens on {port}")


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> NativeTools:
    return build_tools(tmp_path_factory.mktemp("build"))


@pytest.fixture(scope="module")
def waypoint(
    tools: NativeTools, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[int, int]]:
    """(waypoint port, waypoint pid): the bench's resources, routing to the C HTTP server."""
    backend_port, port = _free_port(), _free_port()
    server = subprocess.Popen([str(tools.http_server), "127.0.0.1", str(backend_port)])
    resources = tmp_path_factory.mktemp("waypoint") / "waypoint.yaml"
    resources.write_text(WAYPOINT_RESOURCES)
    argv = [sys.executable, "-m", "weft.cli", "waypoint", "run", "-f", str(resources),
            "--name", "bench-waypoint", "--namespace", "bench", "--admin", "off", "--quiet",
            "--endpoint", f"{WAYPOINT_SERVICE}=127.0.0.1:{backend_port}",
            "--listen", f"127.0.0.1:{port}", "--max-seconds", "120"]  # fmt: skip
    proxy = subprocess.Popen(argv)
    try:
        _wait_port(port, proxy)
        yield port, proxy.pid
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        server.kill()
        server.wait(timeout=5)


class _LocalTestbed:
    """Runs a load's client on this machine (the loopback stands in for the lab's workloads)."""

    def exec(
        self, workload: str, argv: list[str], timeout: float = 30, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check)


def _ctx(tools: NativeTools, port: int, pids: tuple[int, ...], host: str | None) -> LoadContext:
    return LoadContext(
        cast(testbed.Testbed, _LocalTestbed()), "client", "127.0.0.1", port, 1.0, 0, tools,
        http_host=host, pids=pids,
    )  # fmt: skip


def test_the_bench_resources_route_the_service_host_to_its_backend(tmp_path: Path) -> None:
    (tmp_path / "waypoint.yaml").write_text(WAYPOINT_RESOURCES)
    parsed = parse_documents(read_documents([str(tmp_path / "waypoint.yaml")]))
    compiled = compile_resources([p.resource for p in parsed], "bench-waypoint", "bench")
    (service,) = compiled.config.services
    assert (service.hostname, service.port) == ("bench-http.bench.svc.cluster.local", 8080)
    (route,) = service.routes
    assert [b.authority for b in route.backends] == [WAYPOINT_SERVICE]


def test_the_waypoint_path_runs_beside_haproxy_on_the_same_loads() -> None:
    path = make_path("weft-waypoint")
    assert isinstance(path, WeftWaypointPath)
    assert path.availability() is None
    assert path.peer == "haproxy"
    assert path.loads <= make_path("haproxy").loads | {"stream1m"}
    assert "stream1m" in make_path("haproxy").loads


class _SpawnRecorder:
    """A mock testbed that records what setup would start (no lab here)."""

    def __init__(self) -> None:
        self.spawned: list[tuple[str, list[str]]] = []

    def node_ip(self, node: str) -> str:
        return {"node1": "10.88.0.2", "node2": "10.88.0.3"}[node]

    def workload_ip(self, name: str) -> str:
        return "10.88.2.10"

    def node_spawn(self, node: str, argv: list[str], name: str) -> int:
        self.spawned.append((node, argv))
        return 4242

    def node_exec(
        self, node: str, argv: list[str], **_: object
    ) -> subprocess.CompletedProcess[str]:
        # One listening socket per worker process (SO_REUSEPORT), as `ss` shows them.
        listening = f"LISTEN 0 128 10.88.0.3:{WeftWaypointPath.HTTP_PORT} 0.0.0.0:*\n"
        return subprocess.CompletedProcess(argv, 0, listening * default_workers(), "")


def test_setup_starts_the_waypoint_on_the_server_node_and_names_the_service_in_host(
    tmp_path: Path,
) -> None:
    recorder = _SpawnRecorder()
    path = WeftWaypointPath()
    layout = BenchLayout(client_node="node1", server_node="node2")
    target = path.setup(cast(testbed.Testbed, recorder), layout, tmp_path)
    ((node, argv),) = recorder.spawned
    assert node == "node2"  # where haproxy runs its hop
    assert argv[:3] == ["nice", "-n", "-5"]
    assert f"{WAYPOINT_SERVICE}=10.88.2.10:8080" in argv
    assert "--quiet" not in argv  # the access log stays on, as deployed
    assert target.addresses == {"http": ("10.88.0.3", WeftWaypointPath.HTTP_PORT)}
    assert target.http_host == WAYPOINT_SERVICE
    assert path.mesh_processes() == {4242: "bench-waypoint"}


def test_wrk_through_the_waypoint_gets_only_2xx(
    tools: NativeTools, waypoint: tuple[int, int]
) -> None:
    port, pid = waypoint
    outcome = HTTP_16CONN.run(_ctx(tools, port, (pid,), WAYPOINT_SERVICE))  # non-2xx would raise
    assert outcome.values["req_s"] > 0


def test_a_wrong_host_is_a_404_and_the_http_load_fails_loudly(
    tools: NativeTools, waypoint: tuple[int, int]
) -> None:
    port, pid = waypoint
    with pytest.raises(LoadError, match="not 2xx"):
        HTTP_16CONN.run(_ctx(tools, port, (pid,), "nobody.bench:8080"))


def test_a_1_mib_response_streams_through_the_waypoint_in_bounded_memory(
    tools: NativeTools, waypoint: tuple[int, int]
) -> None:
    port, pid = waypoint
    growth = [STREAM_1MIB.run(_ctx(tools, port, (pid,), WAYPOINT_SERVICE)) for _ in range(3)]
    assert all(0 <= g.values["rss_growth_kib"] < 4096 for g in growth), [g.values for g in growth]


def test_the_stream_load_needs_a_process_to_watch(tools: NativeTools) -> None:
    with pytest.raises(LoadError, match="adds no process"):
        STREAM_1MIB.run(_ctx(tools, 1, (), None))


def test_peak_growth_is_read_after_resetting_the_peak(tmp_path: Path) -> None:
    # A fake /proc: reset_peaks writes clear_refs and reads VmRSS; the growth is VmHWM - VmRSS.
    (tmp_path / "7" / "task" / "7").mkdir(parents=True)
    (tmp_path / "7" / "task" / "7" / "children").write_text("")
    (tmp_path / "7" / "status").write_text("VmHWM:\t  90000 kB\nVmRSS:\t  50000 kB\n")
    (tmp_path / "7" / "clear_refs").write_text("")
    before = reset_peaks((7,), tmp_path)
    assert (tmp_path / "7" / "clear_refs").read_text() == "5"
    assert before == {7: 50000}
    (tmp_path / "7" / "status").write_text("VmHWM:\t  51200 kB\nVmRSS:\t  50100 kB\n")
    assert peak_growth_kib(before, tmp_path) == 1200


def _stream_result(rounds: list[float]) -> BenchResult:
    info = PathInfo("weft-waypoint", "", "direct", "haproxy", ["stream1m"])
    figure = Figure("weft-waypoint", "stream1m", "rss_growth_kib", "KiB", False, rounds,
                    list(range(1, len(rounds) + 1)))  # fmt: skip
    return BenchResult("t0", "t1", {}, {}, {}, [info], [figure])


def test_the_memory_target_takes_the_worst_round() -> None:
    target = next(t for t in TARGETS if t.load == "stream1m")
    assert target.measure is Measure.WORST
    passed = check_target(_stream_result([300.0, 1200.0, 500.0]), target)
    assert (passed.verdict, passed.measured) == ("PASS", 1200.0)
    assert check_target(_stream_result([300.0, 5000.0, 500.0]), target).verdict == "FAIL"
