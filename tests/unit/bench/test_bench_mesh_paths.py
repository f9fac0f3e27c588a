"""bench.mesh_testbed and the meshed paths: what they enroll, how they prove the mesh is used."""

from __future__ import annotations

import pytest

from bench.mesh_testbed import acquire_mesh, bench_resources, meshed_layout, opened_in_exposition
from bench.paths import ALL_LOADS, MeshPath, make_path
from bench.testbed import BenchLayout
from vm.lab.topology import MAX_WORKLOAD_NAME
from weft.errors import UnavailableError

EXPOSITION = """\
# HELP istio_tcp_connections_opened_total TCP connections opened
# TYPE istio_tcp_connections_opened_total counter
istio_tcp_connections_opened_total{reporter="source",destination_workload="mesh-server"} 3.0
istio_tcp_connections_opened_total{reporter="source",destination_workload="echo"} 2.0
istio_tcp_connections_opened_total{reporter="destination",source_workload="mesh-client"} 7.0
istio_tcp_connections_closed_total{reporter="source",destination_workload="echo"} 40.0
"""


def test_opened_connections_are_summed_per_reporter_only() -> None:
    assert opened_in_exposition(EXPOSITION, "source") == 5.0
    assert opened_in_exposition(EXPOSITION, "destination") == 7.0


def test_an_agent_without_connections_reports_zero_opened() -> None:
    assert opened_in_exposition("# nothing yet\n", "source") == 0.0


def test_meshed_workloads_are_new_lab_workloads_on_the_same_nodes() -> None:
    layout = BenchLayout(client_node="node1", server_node="node2")
    meshed = meshed_layout(layout)
    names = (meshed.client, meshed.local_server, meshed.remote_server)
    assert not set(names) & {layout.client, layout.local_server, layout.remote_server}
    assert all(len(name) <= MAX_WORKLOAD_NAME for name in names)
    assert meshed.servers == (("mesh-local", "node1"), ("mesh-server", "node2"))


class MockTestbed:
    """A mock: not a vm.lab Lab, so no controller or agent can run in it."""


def test_a_mesh_needs_a_real_lab_and_says_how_to_get_one() -> None:
    layout = BenchLayout(client_node="node1", server_node="node2")
    with pytest.raises(UnavailableError, match=r"vm\.lab Lab"):
        acquire_mesh(MockTestbed(), layout, "weft-cross-node")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["weft-same-node", "weft-cross-node"])
def test_l4_meshed_paths_run_now_that_the_agent_exists(name: str) -> None:
    path = make_path(name)
    assert isinstance(path, MeshPath)
    assert path.availability() is None


def test_bench_resources_opt_the_namespace_in_and_select_each_server_by_its_app_label() -> None:
    meshed = meshed_layout(BenchLayout(client_node="node1", server_node="node2"))
    documents = bench_resources(meshed)
    namespace = documents[0]
    assert namespace["kind"] == "Namespace"
    assert namespace["metadata"]["labels"] == {"weft.io/dataplane-mode": "ambient"}
    services = {d["metadata"]["name"]: d["spec"] for d in documents if d["kind"] == "Service"}
    assert set(services) == {"mesh-local", "mesh-server"}
    assert services["mesh-server"]["selector"] == {"app": "mesh-server"}
    assert len({spec["clusterIP"] for spec in services.values()}) == 2
    http = [p for p in services["mesh-server"]["ports"] if p["port"] == 8080]
    assert http == [{"name": "tcp-http", "port": 8080, "targetPort": 8080}]


@pytest.mark.parametrize("name", ["weft-same-node", "weft-cross-node"])
def test_l4_meshed_paths_run_every_load_grpc_included(name: str) -> None:
    # connect6 capture sees grpcio's v4-mapped AF_INET6 sockets, so gRPC goes through the mesh.
    assert make_path(name).loads == ALL_LOADS
