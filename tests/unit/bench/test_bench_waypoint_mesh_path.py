"""The weft-waypoint-mesh bench path: what it deploys in the bench's mesh and how it proves the
waypoint carries the traffic (the lab run itself is `weft bench weft-waypoint-mesh`)."""

from __future__ import annotations

from bench.mesh_testbed import (
    L7_VIP,
    SERVICE_VIPS,
    l7_service,
    meshed_layout,
    requests_in_exposition,
    waypoint_deployment,
)
from bench.paths import PATH_NAMES, MeshPath, WeftWaypointMeshPath, make_path
from bench.session import expand_paths
from bench.testbed import BenchLayout
from vm.lab.topology import MAX_WORKLOAD_NAME

L7 = "mesh-l7.bench-mesh.svc.cluster.local"
METRICS = f"""\
# TYPE istio_requests_total counter
istio_requests_total{{reporter="waypoint",destination_service="{L7}",response_code="200"}} 41.0
istio_requests_total{{reporter="waypoint",destination_service="{L7}",response_code="503"}} 1.0
istio_requests_total{{reporter="waypoint",destination_service="x.bench-mesh.svc.cluster.local"}} 9.0
istio_request_duration_milliseconds_count{{reporter="waypoint",destination_service="{L7}"}} 42.0
"""
MESHED = meshed_layout(BenchLayout(client_node="node1", server_node="node2"))


def test_the_path_is_registered_meshed_and_runs_the_http_loads() -> None:
    assert "weft-waypoint-mesh" in PATH_NAMES
    path = make_path("weft-waypoint-mesh")
    assert isinstance(path, WeftWaypointMeshPath)
    assert isinstance(path, MeshPath)
    assert path.loads == {"http1", "http16"}
    assert path.availability() is None  # agent and waypoint both exist


def test_its_figures_come_with_the_l4_mesh_and_the_unmeshed_path_beside_them() -> None:
    assert expand_paths(["weft-waypoint-mesh"]) == (
        "direct",
        "weft-cross-node",
        "weft-waypoint-mesh",
    )


def test_the_waypoint_runs_on_the_servers_node_and_serves_the_l7_service() -> None:
    wp = waypoint_deployment(MESHED)
    assert (wp.node, wp.namespace, wp.services) == ("node2", "bench-mesh", ("mesh-l7",))
    assert len(wp.workload) <= MAX_WORKLOAD_NAME


def test_the_l7_service_selects_the_remote_server_and_uses_the_waypoint() -> None:
    service = l7_service(MESHED)
    assert service["metadata"]["labels"] == {"weft.io/use-waypoint": "bench-waypoint"}
    assert service["spec"]["selector"] == {"app": "mesh-server"}
    assert service["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": 8080}]
    assert service["spec"]["clusterIP"] == L7_VIP
    assert L7_VIP not in SERVICE_VIPS.values()


def test_waypoint_requests_are_summed_for_the_l7_service_only() -> None:
    assert requests_in_exposition(METRICS, L7) == 42.0
    assert requests_in_exposition("# nothing yet\n", L7) == 0.0
